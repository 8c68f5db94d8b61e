-- sandbox.process_data: TR-03151 processType / processData from a transaction
-- schema, as fiskaly builds them (fiskaly-api.md §8.3, DSFinV-K Anhang I).
--   standard_v1.receipt -> "Kassenbeleg-V1", "Beleg^<5 VAT totals>^<payments>"
--   standard_v1.order   -> "Bestellung-V1", lines `<qty>;"<text>";<price>` joined by "\r"
--   standard_v1.other   -> "SonstigerVorgang" (content unspecified by fiskaly: we sign
--                          the empty string)
--   raw                 -> process_type as given, process_data base64-decoded
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local errors = require "sandbox.errors"

local M = {}

M.VORGANGSTYP = {
  RECEIPT = "Beleg", TRAINING = "AVTraining", TRANSFER = "AVTransfer", ORDER = "AVBestellung",
  CANCELLATION = "AVBelegabbruch", ABORT = "AVBelegabbruch", BENEFIT_IN_KIND = "AVSachbezug",
  INVOICE = "AVRechnung", OTHER = "AVSonstige", ANNULATION = "AVBelegstorno",
}

-- VAT slot 1..5: 19 %, 7 %, 10.7 %, 5.5 %, 0 % (names and deprecated decimals).
M.VAT_SLOT = {
  NORMAL = 1, REDUCED_1 = 2, SPECIAL_RATE_1 = 3, SPECIAL_RATE_2 = 4, NULL = 5,
  ["19"] = 1, ["7"] = 2, ["10.7"] = 3, ["5.5"] = 4, ["0"] = 5,
}

-- A validated decimal string ("-12.34567") as an integer count of 1e-5 units.
local function to_units(s)
  local neg, int, frac = s:match("^(%-?)(%d+)%.?(%d*)$")
  assert(int, "process_data: bad decimal " .. tostring(s))
  frac = (frac .. "00000"):sub(1, 5)
  local v = math.tointeger(tonumber(int)) * 100000 + math.tointeger(tonumber(frac))
  return neg == "-" and -v or v
end

-- 1e-5 units to a 2-decimal string, rounding half away from zero.
local function format2(units)
  local neg = units < 0
  local a = neg and -units or units
  local cents = (a + 500) // 1000
  local s = string.format("%d.%02d", cents // 100, cents % 100)
  if neg and cents ~= 0 then s = "-" .. s end
  return s
end
M.format2 = function(s) return format2(to_units(s)) end

function M.receipt(r)
  local slots = { 0, 0, 0, 0, 0 }
  for _, a in ipairs(r.amounts_per_vat_rate or {}) do
    local i = M.VAT_SLOT[a.vat_rate]
    slots[i] = slots[i] + to_units(a.amount)
  end
  local vat = {}
  for i = 1, 5 do vat[i] = format2(slots[i]) end
  -- One entry per (payment type, currency) in first-seen order, as DSFinV-K lists them.
  local pays, index = {}, {}
  for _, p in ipairs(r.amounts_per_payment_type or {}) do
    local cur = (p.currency_code or "EUR"):upper()
    local key = p.payment_type .. ":" .. cur
    if not index[key] then
      pays[#pays + 1] = { type = p.payment_type, cur = cur, units = 0 }
      index[key] = pays[#pays]
    end
    index[key].units = index[key].units + to_units(p.amount)
  end
  local parts = {}
  for i, p in ipairs(pays) do
    local s = format2(p.units) .. ":" .. (p.type == "CASH" and "Bar" or "Unbar")
    if p.cur ~= "EUR" then s = s .. ":" .. p.cur end
    parts[i] = s
  end
  return "Kassenbeleg-V1",
    M.VORGANGSTYP[r.receipt_type] .. "^" .. table.concat(vat, "_") .. "^" .. table.concat(parts, "_")
end

function M.order(o)
  local lines = {}
  for i, li in ipairs(o.line_items or {}) do
    lines[i] = string.format('%s;"%s";%s', li.quantity, (li.text:gsub('"', '""')), format2(to_units(li.price_per_unit)))
  end
  return "Bestellung-V1", table.concat(lines, "\r")
end

-- Returns process_type, process_data (raw bytes) for a validated TxSchema.
function M.build(schema)
  if schema.raw then
    local data, err = core.crypto.b64decode(schema.raw.process_data)
    if not data then
      errors.schema("body/schema/raw/process_data must be base64: " .. tostring(err))
    end
    return schema.raw.process_type, data
  end
  if schema.dsfinvtw_v1 then
    errors.schema("body/schema/dsfinvtw_v1 is not emulated by the sandbox")
  end
  local s = schema.standard_v1
  if s.receipt then return M.receipt(s.receipt) end
  if s.order then return M.order(s.order) end
  return "SonstigerVorgang", ""
end

-- The schema as echoed in responses: defaults filled in (currency_code "EUR").
function M.echo(schema)
  local function copy(v)
    if type(v) ~= "table" then return v end
    local c = {}
    for k, x in pairs(v) do c[k] = copy(x) end
    return c
  end
  local out = copy(schema)
  local r = out.standard_v1 and out.standard_v1.receipt
  if r then
    r.amounts_per_vat_rate = json.array(r.amounts_per_vat_rate)
    if r.amounts_per_payment_type then
      r.amounts_per_payment_type = json.array(r.amounts_per_payment_type)
      for _, p in ipairs(r.amounts_per_payment_type) do
        p.currency_code = p.currency_code or "EUR"
      end
    end
  end
  local o = out.standard_v1 and out.standard_v1.order
  if o then o.line_items = json.array(o.line_items) end
  return out
end

return M
