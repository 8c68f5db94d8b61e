-- fiskaly.receipt.standard_v1: the SIGN DE `standard_v1` receipt body
-- (ProcessDataStandardV1Receipt, DSFinV-K based): validation and the
-- `Kassenbeleg-V1` process_data string fiskaly builds from it
-- (reference: fiskaly-api.md sections 8.2 and 8.3).
local M = {}

local fmt, concat = string.format, table.concat
local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local math_type = math.type

M.PROCESS_TYPE = "Kassenbeleg-V1"

-- receipt_type -> DSFinV-K Vorgangstyp (BON_TYP)
M.VORGANGSTYP = {
  RECEIPT = "Beleg", TRAINING = "AVTraining", TRANSFER = "AVTransfer", ORDER = "AVBestellung",
  CANCELLATION = "AVBelegabbruch", ABORT = "AVBelegabbruch", BENEFIT_IN_KIND = "AVSachbezug",
  INVOICE = "AVRechnung", OTHER = "AVSonstige", ANNULATION = "AVBelegstorno",
}
M.RECEIPT_TYPES = { "RECEIPT", "TRAINING", "TRANSFER", "ORDER", "CANCELLATION", "ABORT",
  "BENEFIT_IN_KIND", "INVOICE", "OTHER", "ANNULATION" }

-- The five rates, in the fixed process_data order (19 %, 7 %, 10.7 %, 5.5 %, 0 %).
M.VAT_RATES = { "NORMAL", "REDUCED_1", "SPECIAL_RATE_1", "SPECIAL_RATE_2", "NULL" }
M.VAT_PERCENT = { NORMAL = "19", REDUCED_1 = "7", SPECIAL_RATE_1 = "10.7", SPECIAL_RATE_2 = "5.5", NULL = "0" }
M.VAT_INDEX = {}
for i, r in ipairs(M.VAT_RATES) do M.VAT_INDEX[r] = i end
local DEPRECATED_RATE = { ["19"] = "NORMAL", ["7"] = "REDUCED_1", ["10.7"] = "SPECIAL_RATE_1",
  ["5.5"] = "SPECIAL_RATE_2", ["0"] = "NULL" }
M.DEPRECATED_RATE = DEPRECATED_RATE

M.PAYMENT_TYPES = { CASH = "Bar", NON_CASH = "Unbar" }

local function one_of_list(t)
  return concat(t, ", ")
end

-- ^-?\d+(\.\d{2,5})$
function M.is_amount(s)
  if type(s) ~= "string" then return false end
  local frac = s:match("^%-?%d+%.(%d+)$")
  return frac ~= nil and #frac >= 2 and #frac <= 5
end

-- ^[a-zA-Z]{3}$
function M.is_currency(s)
  return type(s) == "string" and s:match("^%a%a%a$") ~= nil
end

local function is_array(t)
  if type(t) ~= "table" then return false end
  local n = #t
  for k in pairs(t) do
    if math_type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

local function unknown_keys(t, allowed, path, errs)
  local extra = {}
  for k in pairs(t) do
    if not allowed[k] then extra[#extra + 1] = tostring(k) end
  end
  table.sort(extra)
  for _, k in ipairs(extra) do
    errs[#errs + 1] = { field = path .. k, message = "unknown property" }
  end
end

-- Validates a receipt body { receipt_type, amounts_per_vat_rate,
-- amounts_per_payment_type? }. Returns true, or nil and an array of
-- { field =, message = }. Stricter than the schema in two places, on purpose:
-- deprecated numeric rates ("19") and duplicate rates are refused.
function M.validate(r)
  local errs = {}
  local function fail(field, msg) errs[#errs + 1] = { field = field, message = msg } end
  if type(r) ~= "table" then
    return nil, { { field = "receipt", message = "expected an object" } }
  end
  unknown_keys(r, { receipt_type = true, amounts_per_vat_rate = true, amounts_per_payment_type = true },
    "", errs)
  if r.receipt_type == nil then
    fail("receipt_type", "required")
  elseif not M.VORGANGSTYP[r.receipt_type] then
    fail("receipt_type", fmt("%q is not one of %s", tostring(r.receipt_type), one_of_list(M.RECEIPT_TYPES)))
  end
  local vats = r.amounts_per_vat_rate
  if vats == nil then
    fail("amounts_per_vat_rate", "required")
  elseif not is_array(vats) then
    fail("amounts_per_vat_rate", "expected an array")
  else
    local seen = {}
    for i, e in ipairs(vats) do
      local p = fmt("amounts_per_vat_rate[%d]", i)
      if type(e) ~= "table" then
        fail(p, "expected an object")
      else
        unknown_keys(e, { vat_rate = true, amount = true }, p .. ".", errs)
        local rate = e.vat_rate
        if rate == nil then
          fail(p .. ".vat_rate", "required")
        elseif DEPRECATED_RATE[rate] then
          fail(p .. ".vat_rate", fmt("numeric rate %q is deprecated; use %s", rate, DEPRECATED_RATE[rate]))
        elseif not M.VAT_INDEX[rate] then
          fail(p .. ".vat_rate", fmt("%q is not one of %s", tostring(rate), one_of_list(M.VAT_RATES)))
        elseif seen[rate] then
          fail(p .. ".vat_rate", fmt("%s appears more than once", rate))
        else
          seen[rate] = true
        end
        if e.amount == nil then
          fail(p .. ".amount", "required")
        elseif not M.is_amount(e.amount) then
          fail(p .. ".amount", fmt("%q does not match ^-?\\d+(\\.\\d{2,5})$", tostring(e.amount)))
        end
      end
    end
  end
  local pays = r.amounts_per_payment_type
  if pays ~= nil then
    if not is_array(pays) then
      fail("amounts_per_payment_type", "expected an array")
    else
      for i, e in ipairs(pays) do
        local p = fmt("amounts_per_payment_type[%d]", i)
        if type(e) ~= "table" then
          fail(p, "expected an object")
        else
          unknown_keys(e, { payment_type = true, amount = true, currency_code = true }, p .. ".", errs)
          if e.payment_type == nil then
            fail(p .. ".payment_type", "required")
          elseif not M.PAYMENT_TYPES[e.payment_type] then
            fail(p .. ".payment_type", fmt("%q is not one of CASH, NON_CASH", tostring(e.payment_type)))
          end
          if e.amount == nil then
            fail(p .. ".amount", "required")
          elseif not M.is_amount(e.amount) then
            fail(p .. ".amount", fmt("%q does not match ^-?\\d+(\\.\\d{2,5})$", tostring(e.amount)))
          end
          if e.currency_code ~= nil and not M.is_currency(e.currency_code) then
            fail(p .. ".currency_code", fmt("%q does not match ^[a-zA-Z]{3}$", tostring(e.currency_code)))
          end
        end
      end
    end
  end
  if #errs > 0 then return nil, errs end
  return true
end

-- "12.50" / "12.50000" -> "12.50"; nil for amounts with a non-zero 3rd-5th
-- decimal (how fiskaly rounds those is undocumented, so we refuse to guess).
local function two_decimals(s)
  local int, frac = s:match("^(%-?%d+)%.(%d+)$")
  if frac:sub(3):match("[^0]") then return nil end
  return int .. "." .. frac:sub(1, 2)
end

local function add_amount(a, b)
  -- both "[-]d+.dd": add as integer cents (exact; magnitudes fit 2^63)
  local function cents(s)
    local neg, i, f = s:match("^(%-?)(%d+)%.(%d%d)$")
    local v = math.tointeger(tonumber(i)) * 100 + math.tointeger(tonumber(f))
    return neg == "-" and -v or v
  end
  local v = cents(a) + cents(b)
  local neg = v < 0
  if neg then v = -v end
  return (neg and "-" or "") .. fmt("%d.%02d", v // 100, v % 100)
end

-- Builds the Kassenbeleg-V1 process_data string for a valid receipt body:
-- <Vorgangstyp>^<NORMAL>_<REDUCED_1>_<SPECIAL_RATE_1>_<SPECIAL_RATE_2>_<NULL>^<Zahlungen>
-- Zahlung = <amount>:<Bar|Unbar>[:<CUR> when not EUR], in the body's order.
-- Returns the string, or nil, err.
function M.process_data(r)
  local ok, errs = M.validate(r)
  if not ok then return nil, errs[1].field .. ": " .. errs[1].message end
  local totals = { "0.00", "0.00", "0.00", "0.00", "0.00" }
  for _, e in ipairs(r.amounts_per_vat_rate) do
    local a = two_decimals(e.amount)
    if not a then return nil, fmt("amount %s has more than 2 significant decimals", e.amount) end
    totals[M.VAT_INDEX[e.vat_rate]] = add_amount(totals[M.VAT_INDEX[e.vat_rate]], a)
  end
  local pays = {}
  for _, e in ipairs(r.amounts_per_payment_type or {}) do
    local a = two_decimals(e.amount)
    if not a then return nil, fmt("amount %s has more than 2 significant decimals", e.amount) end
    local p = a .. ":" .. M.PAYMENT_TYPES[e.payment_type]
    local cur = e.currency_code and e.currency_code:upper() or "EUR"
    if cur ~= "EUR" then p = p .. ":" .. cur end
    pays[#pays + 1] = p
  end
  return M.VORGANGSTYP[r.receipt_type] .. "^" .. concat(totals, "_") .. "^" .. concat(pays, "_")
end

return M
