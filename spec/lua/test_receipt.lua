-- fiskaly.receipt engine: standard_v1 validation and process_data, the checks
-- on a handler's draft (shape and balance), reload, list, api and budgets.
local lu = require "luaunit"
local receipt = require "fiskaly.receipt"
local json = require "fiskaly.json"

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function tmpdir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  return dir
end

local function add_plugin(dir, name, handler, schema)
  assert(os.execute("mkdir -p " .. dir .. "/" .. name))
  write(dir .. "/" .. name .. "/handler.lua", handler)
  write(dir .. "/" .. name .. "/schema.lua", schema or "return { fields = {} }")
end

TestStandardV1 = {}

function TestStandardV1.test_postman_example()
  local body = { receipt_type = "RECEIPT",
    amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "21.42" } },
    amounts_per_payment_type = { { payment_type = "NON_CASH", amount = "21.42" } } }
  lu.assertTrue(receipt.validate(body))
  lu.assertEquals(receipt.process_data(body), "Beleg^21.42_0.00_0.00_0.00_0.00^21.42:Unbar")
end

function TestStandardV1.test_dsfinvk_reference_example()
  local body = { receipt_type = "RECEIPT",
    amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "75.33" }, { vat_rate = "REDUCED_1", amount = "7.99" } },
    amounts_per_payment_type = {
      { payment_type = "CASH", amount = "10.00" },
      { payment_type = "CASH", amount = "5.00", currency_code = "CHF" },
      { payment_type = "CASH", amount = "5.00", currency_code = "USD" },
      { payment_type = "NON_CASH", amount = "64.30", currency_code = "EUR" } } }
  lu.assertEquals(receipt.process_data(body),
    "Beleg^75.33_7.99_0.00_0.00_0.00^10.00:Bar_5.00:Bar:CHF_5.00:Bar:USD_64.30:Unbar")
end

function TestStandardV1.test_vorgangstyp_and_decimals()
  local body = { receipt_type = "ANNULATION",
    amounts_per_vat_rate = { { vat_rate = "NULL", amount = "-3.50000" }, { vat_rate = "SPECIAL_RATE_2", amount = "1.10" } } }
  lu.assertEquals(receipt.process_data(body), "AVBelegstorno^0.00_0.00_0.00_1.10_-3.50^")
  body.amounts_per_vat_rate[1].amount = "-3.50001"
  lu.assertTrue(receipt.validate(body))      -- valid for the schema (up to 5 decimals) ...
  local pd, err = receipt.process_data(body) -- ... but fiskaly's rounding is undocumented
  lu.assertNil(pd)
  lu.assertEquals(err, "amount -3.50001 has more than 2 significant decimals")
  for rt, vt in pairs { TRAINING = "AVTraining", TRANSFER = "AVTransfer", ORDER = "AVBestellung",
      CANCELLATION = "AVBelegabbruch", ABORT = "AVBelegabbruch", BENEFIT_IN_KIND = "AVSachbezug",
      INVOICE = "AVRechnung", OTHER = "AVSonstige" } do
    lu.assertEquals(receipt.process_data { receipt_type = rt, amounts_per_vat_rate = {} },
      vt .. "^0.00_0.00_0.00_0.00_0.00^")
  end
end

function TestStandardV1.test_errors_exact()
  local ok, err = receipt.validate {
    receipt_type = "SALE",
    amounts_per_vat_rate = {
      { vat_rate = "19", amount = "10.00" },
      { vat_rate = "HALF", amount = "10.0" },
      { vat_rate = "NORMAL", amount = "1e3" },
      { vat_rate = "NORMAL", amount = 10 },
      { amount = "1.00", note = "x" } },
    amounts_per_payment_type = {
      { payment_type = "CARD", amount = "10.000001" },
      { payment_type = "CASH", amount = "1.00", currency_code = "EURO" },
      { payment_type = "CASH" } },
    total = "10.00",
  }
  lu.assertNil(ok)
  lu.assertEquals(err.kind, "validation")
  local lines = {}
  for i, e in ipairs(err.errors) do lines[i] = e.field .. ": " .. e.message end
  lu.assertEquals(lines, {
    "total: unknown property",
    'receipt_type: "SALE" is not one of RECEIPT, TRAINING, TRANSFER, ORDER, CANCELLATION, ABORT, '
      .. "BENEFIT_IN_KIND, INVOICE, OTHER, ANNULATION",
    'amounts_per_vat_rate[1].vat_rate: numeric rate "19" is deprecated; use NORMAL',
    'amounts_per_vat_rate[2].vat_rate: "HALF" is not one of NORMAL, REDUCED_1, SPECIAL_RATE_1, SPECIAL_RATE_2, NULL',
    'amounts_per_vat_rate[2].amount: "10.0" does not match ^-?\\d+(\\.\\d{2,5})$',
    'amounts_per_vat_rate[3].amount: "1e3" does not match ^-?\\d+(\\.\\d{2,5})$',
    "amounts_per_vat_rate[4].vat_rate: NORMAL appears more than once",
    'amounts_per_vat_rate[4].amount: "10" does not match ^-?\\d+(\\.\\d{2,5})$',
    "amounts_per_vat_rate[5].note: unknown property",
    "amounts_per_vat_rate[5].vat_rate: required",
    'amounts_per_payment_type[1].payment_type: "CARD" is not one of CASH, NON_CASH',
    'amounts_per_payment_type[1].amount: "10.000001" does not match ^-?\\d+(\\.\\d{2,5})$',
    'amounts_per_payment_type[2].currency_code: "EURO" does not match ^[a-zA-Z]{3}$',
    "amounts_per_payment_type[3].amount: required",
  })
  ok, err = receipt.validate { receipt_type = "RECEIPT" }
  lu.assertEquals(tostring(err), "amounts_per_vat_rate: required")
end

-- A plugin that returns sale.draft unchanged, to test the engine's checks.
local ECHO = [[return { VERSION = "0.1.0", map = function(sale, conf, api)
  api.log("echo " .. tostring(sale.id)); print("printed", 1)
  if sale.fn then sale.draft.payments[1].pay = print end
  return sale.draft end }]]

TestDraft = {}

function TestDraft.setUp()
  TestDraft.dir = tmpdir()
  add_plugin(TestDraft.dir, "echo", ECHO)
  TestDraft.e = receipt.new { paths = { TestDraft.dir } }
end

function TestDraft.tearDown() os.execute("rm -rf " .. TestDraft.dir) end

local function draft_err(d)
  local r, err = TestDraft.e:map("echo", { draft = d })
  lu.assertNil(r)
  return tostring(err), err
end

function TestDraft.test_good_draft_and_log()
  local r = assert(TestDraft.e:map("echo", { id = 7, draft = {
    receipt_type = "RECEIPT", total = 1250, vat = { NORMAL = 1000, NULL = 250 },
    payments = { { type = "CASH", amount = 2000 }, { type = "NON_CASH", amount = 0 } }, change = 750 } }))
  lu.assertEquals(r.process_data, "Beleg^10.00_0.00_0.00_0.00_2.50^12.50:Bar")
  lu.assertEquals(r.log, { "echo 7", "printed\t1" })
  lu.assertEquals(r.version, "0.1.0")
  lu.assertEquals(r.totals, { total = 1250, change = 750,
    vat = { NORMAL = 1000, REDUCED_1 = 0, SPECIAL_RATE_1 = 0, SPECIAL_RATE_2 = 0, NULL = 250 },
    payments = { { payment_type = "CASH", currency_code = "EUR", amount = 1250, base_amount = 1250 } } })
  local okc, core = pcall(require, "fiskaly.core")
  if okc then
    lu.assertEquals(core.crypto.b64decode(r.process_data_base64), r.process_data)
  end
end

function TestDraft.test_shape_errors()
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = 100 },
      payments = { { type = "CASH", amount = 100 } }, tip = 5 },
    'plugin "echo": tip: unknown field in the mapped receipt')
  lu.assertEquals(draft_err { receipt_type = "SALE", total = 0, vat = {} },
    'plugin "echo": receipt_type: expected one of RECEIPT, TRAINING, TRANSFER, ORDER, CANCELLATION, ABORT, '
      .. 'BENEFIT_IN_KIND, INVOICE, OTHER, ANNULATION, got "SALE"')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 1.5, vat = {} },
    'plugin "echo": total: expected integer cents')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { ["19"] = 100 } },
    'plugin "echo": vat.19: unknown VAT rate (expected one of NORMAL, REDUCED_1, SPECIAL_RATE_1, SPECIAL_RATE_2, NULL)')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = "1.00" } },
    'plugin "echo": vat.NORMAL: expected integer cents')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = 100 },
      payments = { { type = "CARD", amount = 100 } } },
    'plugin "echo": payments[1].type: expected CASH or NON_CASH, got "CARD"')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = 100 },
      payments = { { type = "CASH", amount = 100, currency = "CHF" } } },
    'plugin "echo": payments[1].base_amount: required for non-EUR payments: the amount\'s value in EUR cents')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = 100 },
      payments = { { type = "CASH", amount = 100, currency = "EURO" } } },
    'plugin "echo": payments[1].currency: expected a 3-letter ISO 4217 code')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = 100 },
      payments = { { type = "CASH", amount = 100 } }, change = -1 },
    'plugin "echo": change: expected non-negative integer cents')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = 100 },
      payments = { { type = "CASH", amount = 100, base_amount = 99 } } },
    'plugin "echo": payments[1].base_amount: must equal amount for EUR payments')
  local msg, err = draft_err { receipt_type = "RECEIPT", total = 100, vat = {}, payments = {} }
  lu.assertEquals(msg, 'plugin "echo": vat: VAT buckets sum to 0.00 but the sale total is 1.00; '
    .. 'payments: a RECEIPT of 1.00 needs payments')
  lu.assertEquals(#err.errors, 2)
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = 100 },
      payments = { { type = "CASH", amount = 99 } } },
    'plugin "echo": payments: payments 0.99 minus change 0.00 = 0.99, but the sale total is 1.00')
  lu.assertEquals(draft_err { receipt_type = "CANCELLATION", total = 100, vat = { NORMAL = 100 }, change = 5 },
    'plugin "echo": change: change given without payments')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = 100 },
      payments = { { type = "NON_CASH", amount = 140 }, { type = "CASH", amount = 10 } }, change = 50 },
    'plugin "echo": change: change 0.50 given but only 0.10 was tendered in EUR cash')
  local r, err = TestDraft.e:map("echo", { fn = true, draft = { receipt_type = "RECEIPT", total = 100,
    vat = { NORMAL = 100 }, payments = { { type = "CASH", amount = 100 } } } })
  lu.assertNil(r)
  lu.assertEquals(tostring(err),
    'plugin "echo": map returned an invalid value: receipt.payments[1].pay: function values are not allowed')
  lu.assertEquals(draft_err { receipt_type = "RECEIPT", total = 2 ^ 53 + 2, vat = {} },
    'plugin "echo": total: expected integer cents')
end

function TestDraft.test_sale_must_be_plain_data()
  local r, err = TestDraft.e:map("echo", "sale")
  lu.assertNil(r)
  lu.assertEquals(tostring(err), 'plugin "echo": sale: expected a table, got string')
  local cyclic = { items = {} }
  cyclic.items[1] = cyclic
  r, err = TestDraft.e:map("echo", cyclic)
  lu.assertNil(r)
  lu.assertEquals(tostring(err), 'plugin "echo": sale.items[1]: cyclic table')
  r, err = TestDraft.e:map("echo", { cb = print })
  lu.assertEquals(tostring(err), 'plugin "echo": sale.cb: function values are not allowed')
  local deep = {}
  local t = deep
  for _ = 1, 40 do t.x = {}; t = t.x end
  r, err = TestDraft.e:map("echo", deep)
  lu.assertStrContains(tostring(err), ": nested too deeply")
  -- JSON nulls are absent values
  r = assert(TestDraft.e:map("echo", json.decode(
    '{"id": null, "x": [null, 1], "draft": {"receipt_type": "OTHER", "total": 0, "vat": {}, "change": null}}')))
  lu.assertEquals(r.log[1], "echo nil")
  r, err = TestDraft.e:map("echo", {}, 5)
  lu.assertEquals(tostring(err), 'plugin "echo": conf: expected a table, got number')
  -- a shared (non-cyclic) subtable is fine, and json.array metatables are dropped
  local shared = json.array { 1 }
  r = TestDraft.e:map("echo", { a = shared, b = shared, draft = { receipt_type = "OTHER", total = 0, vat = {} } })
  lu.assertNotNil(r)
end

TestEngine = {}

function TestEngine.test_reload_on_change_and_keep_last_good()
  local dir = tmpdir()
  local v1 = [[return { VERSION = "1.0.0", map = function()
    return { receipt_type = "RECEIPT", total = 100, vat = { NORMAL = 100 }, payments = { { type = "CASH", amount = 100 } } } end }]]
  add_plugin(dir, "shop", v1)
  local e = receipt.new { paths = { dir } }
  local r = assert(e:map("shop", {}))
  lu.assertEquals(r.version, "1.0.0")
  lu.assertEquals(r.process_data, "Beleg^1.00_0.00_0.00_0.00_0.00^1.00:Bar")
  -- a changed file is picked up on the next call, without a new engine
  write(dir .. "/shop/handler.lua", (v1:gsub("1%.0%.0", "1.1.0"):gsub("NORMAL", "REDUCED_1")))
  r = assert(e:map("shop", {}))
  lu.assertEquals(r.version, "1.1.0")
  lu.assertEquals(r.process_data, "Beleg^0.00_1.00_0.00_0.00_0.00^1.00:Bar")
  lu.assertEquals(r.warnings, {})
  -- a broken edit keeps the last good version in service and says so
  write(dir .. "/shop/handler.lua", "return { VERSION = 'x' ")
  r = assert(e:map("shop", {}))
  lu.assertEquals(r.version, "1.1.0")
  lu.assertEquals(#r.warnings, 1)
  lu.assertStrContains(r.warnings[1], 'reload failed, still using version 1.1.0: plugin "shop": cannot be loaded: ')
  lu.assertStrContains(r.warnings[1], "/shop/handler.lua:1: '}' expected near <eof>")
  local list = e:list()
  lu.assertEquals(#list, 1)
  lu.assertEquals(list[1].name, "shop")
  lu.assertEquals(list[1].version, "1.1.0")
  lu.assertStrContains(list[1].error, "cannot be loaded")
  -- schema changes count too
  write(dir .. "/shop/handler.lua", (v1:gsub("1%.0%.0", "1.2.0")))
  write(dir .. "/shop/schema.lua", "return { fields = { { x = { type = 'integer', default = 1 } } } }")
  r = assert(e:map("shop", {}))
  lu.assertEquals(r.version, "1.2.0")
  lu.assertEquals(r.warnings, {})
  local _, err = e:map("shop", {}, { x = "1" })
  lu.assertEquals(tostring(err), 'plugin "shop": conf.x: expected an integer')
  os.execute("rm -rf " .. dir)
end

function TestEngine.test_reload_disabled()
  local dir = tmpdir()
  add_plugin(dir, "a", [[return { VERSION = "1.0.0", map = function() return {} end }]])
  local e = receipt.new { paths = { dir }, reload = false }
  lu.assertEquals(assert(e:load("a")).version, "1.0.0")
  write(dir .. "/a/handler.lua", [[return { VERSION = "2.0.0", map = function() return {} end }]])
  lu.assertEquals(assert(e:load("a")).version, "1.0.0")
  os.execute("rm -rf " .. dir)
end

function TestEngine.test_paths_searched_in_order_and_list()
  local d1, d2 = tmpdir(), tmpdir()
  add_plugin(d1, "b", [[return { VERSION = "1.0.0", map = function() end }]])
  add_plugin(d2, "b", [[return { VERSION = "9.0.0", map = function() end }]])
  add_plugin(d2, "a", [[return { VERSION = "2.0.0", map = function() end }]])
  add_plugin(d2, "broken", [[return 1]])
  assert(os.execute("mkdir -p " .. d2 .. "/not_a_plugin"))
  local e = receipt.new { paths = { d1, d2 } }
  local list = e:list()
  lu.assertEquals(#list, 3)
  lu.assertEquals({ list[1].name, list[1].version }, { "a", "2.0.0" })
  lu.assertEquals({ list[2].name, list[2].version }, { "b", "1.0.0" })
  lu.assertEquals(list[3].name, "broken")
  lu.assertEquals(list[3].error, 'plugin "broken": cannot be loaded: handler.lua returned number, expected a table')
  os.execute("rm -rf " .. d1 .. " " .. d2)
end

function TestEngine.test_names_and_not_found()
  local e = receipt.new { paths = { "plugins" } }
  local p, err = e:load("../etc")
  lu.assertNil(p)
  lu.assertEquals(tostring(err),
    'plugin "../etc": invalid plugin name (letters, digits, \'_\' and \'-\', starting with a letter)')
  p, err = e:load("nope")
  lu.assertNil(p)
  lu.assertEquals(tostring(err), 'plugin "nope": not found in plugins')
  lu.assertEquals(err.kind, "plugin")
end

function TestEngine.test_budget_option()
  local dir = tmpdir()
  add_plugin(dir, "busy", [[return { VERSION = "1.0.0", map = function()
    local s = 0
    for i = 1, 200000 do s = s + i end
    return { receipt_type = "RECEIPT", total = 0, vat = {} } end }]])
  local small = receipt.new { paths = { dir }, budget = { instructions = 100000 } }
  local r, err = small:map("busy", {})
  lu.assertNil(r)
  lu.assertEquals(tostring(err), 'plugin "busy": map failed: instruction budget exceeded (100000 instructions)')
  lu.assertEquals(err.reason, "limit")
  local big = receipt.new { paths = { dir } }
  lu.assertNotNil(big:map("busy", {}))
  os.execute("rm -rf " .. dir)
end

function TestEngine.test_misuse_raises()
  lu.assertErrorMsgContains("paths must be a non-empty array", receipt.new, { paths = {} })
  lu.assertErrorMsgContains("paths must hold strings", receipt.new, { paths = { 1 } })
  lu.assertErrorMsgContains("budget.instructions must be an integer >= 1000", receipt.new,
    { budget = { instructions = 10 } })
  lu.assertErrorMsgContains("budget.memory_kb must be an integer >= 64", receipt.new,
    { budget = { memory_kb = 1.5 } })
end

function TestEngine.test_api_is_narrow()
  local dir = tmpdir()
  add_plugin(dir, "probe", [[return { VERSION = "1.0.0", map = function(sale, conf, api)
    local keys = {}
    for k in pairs(api) do keys[#keys + 1] = k end
    table.sort(keys)
    local g = {}
    for k in pairs(_G) do g[#g + 1] = k end
    table.sort(g)
    api.log(table.concat(keys, ","))
    api.log(table.concat(g, ","))
    api.log(table.concat(api.rates, ","))
    api.log(api.vat_rate("7") .. " " .. api.money.format(api.money.parse("-1.05")))
    sale.items = nil                                 -- mutating the copy only
    return { receipt_type = "RECEIPT", total = 0, vat = {} } end }]])
  local e = receipt.new { paths = { dir } }
  local sale = { items = { 1 } }
  local r = assert(e:map("probe", sale))
  lu.assertEquals(r.log[1], "log,money,plugin,rate_percent,rates,receipt_types,vat_rate")
  lu.assertEquals(r.log[2], "_G,_VERSION,assert,error,getmetatable,ipairs,math,next,pairs,pcall,print,"
    .. "rawequal,rawget,rawlen,rawset,select,setmetatable,string,table,tonumber,tostring,type,typedefs,utf8,xpcall")
  lu.assertEquals(r.log[3], "NORMAL,REDUCED_1,SPECIAL_RATE_1,SPECIAL_RATE_2,NULL")
  lu.assertEquals(r.log[4], "REDUCED_1 -1.05")
  lu.assertEquals(sale.items, { 1 })
  os.execute("rm -rf " .. dir)
end

os.exit(lu.LuaUnit.run())
