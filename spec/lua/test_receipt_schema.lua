-- Plugin schemas: the metaschema's load-time errors and configuration
-- validation errors, each asserted exactly (one claim per case).
local lu = require "luaunit"
local schema = require "fiskaly.receipt.schema"
local receipt = require "fiskaly.receipt"

local function F(name, def) return { fields = { { [name] = def } } } end

TestMetaschema = {}

local BAD = {
  { F("rate", { type = "str" }),
    'field "rate": type "str" is not one of string, integer, number, boolean, array, record, map' },
  { F("rate", {}), 'field "rate": type is required' },
  { F("rate", { type = "string", requird = true }), 'field "rate": unknown attribute "requird"' },
  { F("rate", { type = "string", required = "yes" }), 'field "rate": required must be a boolean' },
  { F("n", { type = "integer", between = { 10, 1 } }),
    'field "n": between must be {min, max} of type integer with min <= max' },
  { F("n", { type = "integer", between = { 1, 2.5 } }),
    'field "n": between must be {min, max} of type integer with min <= max' },
  { F("s", { type = "string", between = { 1, 2 } }),
    'field "s": between is only valid for integer and number fields' },
  { F("s", { type = "string", one_of = {} }), 'field "s": one_of must be a non-empty array' },
  { F("s", { type = "string", one_of = { "a", 1 } }), 'field "s": one_of[2] is not a string' },
  { F("b", { type = "boolean", one_of = { true } }),
    'field "b": one_of is only valid for string, integer and number fields' },
  { F("s", { type = "string", len_min = -1 }), 'field "s": len_min must be a non-negative integer' },
  { F("s", { type = "string", len_min = 3, len_max = 2 }),
    'field "s": len_min must not be greater than len_max' },
  { F("n", { type = "integer", len_max = 2 }), 'field "n": len_max is only valid for string and array fields' },
  { F("s", { type = "string", match = "[a-" }), 'field "s": match must be a valid Lua pattern' },
  { F("a", { type = "array" }), 'field "a": array fields need elements' },
  { F("a", { type = "array", elements = { type = "nope" } }),
    'field "a[]": type "nope" is not one of string, integer, number, boolean, array, record, map' },
  { F("r", { type = "record" }), 'field "r": record fields need fields' },
  { F("r", { type = "record", fields = { { x = { type = "integer", default = "1" } } } }),
    'field "r.x": default: expected an integer' },
  { F("m", { type = "map" }), 'field "m": map fields need values' },
  { F("m", { type = "map", values = { type = "string" }, elements = { type = "string" } }),
    'field "m": elements is only valid for array fields' },
  { F("n", { type = "integer", between = { 1, 10 }, default = 11 }),
    'field "n": default: value should be between 1 and 10' },
  { F("s", { type = "string", one_of = { "a", "b" }, default = "c" }),
    'field "s": default: expected one of: a, b' },
  { F("s", { type = "string", custom_validator = "no" }), 'field "s": custom_validator must be a function' },
  { { fields = { { a = { type = "string" }, b = { type = "string" } } } }, "fields[1] must hold exactly one field" },
  { { fields = { { a = { type = "string" } }, { a = { type = "integer" } } } }, 'field "a" is defined twice' },
  { { fields = { { ["bad name"] = { type = "string" } } } }, 'fields[1]: invalid field name "bad name"' },
  { { fields = { a = { type = "string" } } }, "fields must be an array of { name = definition } entries" },
  { { fields = {}, version = 1 }, 'unknown schema attribute "version"' },
  { { custom_validator = 1 }, "custom_validator must be a function" },
}

function TestMetaschema.test_errors_exact()
  for i, c in ipairs(BAD) do
    local ok, err = schema.check(c[1])
    lu.assertNil(ok, "case " .. i)
    lu.assertEquals(err, c[2], "case " .. i)
  end
end

function TestMetaschema.test_valid_schemas()
  lu.assertTrue(schema.check { fields = {} })
  lu.assertTrue(schema.check {})
  lu.assertTrue(schema.check(F("m", { type = "map", default = { a = { x = 1 } },
    values = { type = "record", fields = { { x = { type = "integer", between = { 0, 5 } } } } } })))
end

TestConfValidation = {}

local S = {
  fields = {
    { mode = { type = "string", one_of = { "a", "b" }, default = "a" } },
    { n = { type = "integer", between = { 1, 10 }, required = true } },
    { code = { type = "string", match = "^%u%u%u$" } },
    { tags = { type = "array", len_max = 2, elements = { type = "string", len_min = 1 } } },
    { rates = { type = "map", values = { type = "number", between = { 0, 1 } } } },
    { addr = { type = "record", fields = { { zip = { type = "string", len_min = 5, len_max = 5 } } } } },
    { flag = { type = "boolean", default = false } },
  },
}

function TestConfValidation.test_defaults_applied()
  local conf = assert(schema.validate(S, { n = 3 }))
  lu.assertEquals(conf, { mode = "a", n = 3, flag = false })
end

function TestConfValidation.test_every_error_reported_in_order()
  local conf, errs = schema.validate(S, {
    mode = "c", n = 11, code = "eur", tags = { "x", "", "z" }, rates = { CHF = 2 },
    addr = { zip = "123" }, flag = "yes", extra = 1,
  })
  lu.assertNil(conf)
  lu.assertEquals(errs, {
    { field = "mode", message = "expected one of: a, b" },
    { field = "n", message = "value should be between 1 and 10" },
    { field = "code", message = "value must match the pattern ^%u%u%u$" },
    { field = "tags", message = "length must be at most 2" },
    { field = "tags[2]", message = "length must be at least 1" },
    { field = "rates.CHF", message = "value should be between 0 and 1" },
    { field = "addr.zip", message = "length must be at least 5" },
    { field = "flag", message = "expected a boolean" },
    { field = "extra", message = "unknown field" },
  })
end

function TestConfValidation.test_required_and_types()
  local _, errs = schema.validate(S, { n = "3" })
  lu.assertEquals(errs, { { field = "n", message = "expected an integer" } })
  _, errs = schema.validate(S, {})
  lu.assertEquals(errs, { { field = "n", message = "required field missing" } })
  _, errs = schema.validate(S, { n = 1.5 })
  lu.assertEquals(errs, { { field = "n", message = "expected an integer" } })
end

-- Through the engine: plugin name and conf. prefix, custom validators run sandboxed.
local function plugin_dir(files)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir .. "/p"))
  for name, text in pairs(files) do
    local f = assert(io.open(dir .. "/p/" .. name, "wb"))
    f:write(text)
    f:close()
  end
  return dir
end

local HANDLER = [[return { VERSION = "1.2.3", map = function(sale, conf)
  return { receipt_type = "RECEIPT", total = 0, vat = {}, payments = {} } end }]]

function TestConfValidation.test_engine_messages()
  local dir = plugin_dir { ["handler.lua"] = HANDLER, ["schema.lua"] = [[
    return { fields = { { limit = { type = "integer", between = { 1, 5 }, default = 2,
      custom_validator = function(v) if v == 4 then return nil, "4 is unlucky" end return true end } } },
      custom_validator = function(conf) if conf.limit == 5 then error("validator crashed") end return true end }]] }
  local e = receipt.new { paths = { dir } }
  local r, err = e:map("p", {}, { limit = 9 })
  lu.assertNil(r)
  lu.assertEquals(err.kind, "validation")
  lu.assertEquals(err.field, "conf.limit")
  lu.assertEquals(tostring(err), 'plugin "p": conf.limit: value should be between 1 and 5')
  r, err = e:map("p", {}, { limit = 4 })
  lu.assertEquals(tostring(err), 'plugin "p": conf.limit: 4 is unlucky')
  r, err = e:map("p", {}, { limit = 5 })
  lu.assertStrContains(tostring(err), 'plugin "p": conf: custom validator failed: ')
  lu.assertStrContains(tostring(err), "validator crashed")
  r, err = e:map("p", {}, { limit = 9, other = true })
  lu.assertEquals(tostring(err),
    'plugin "p": conf.limit: value should be between 1 and 5; conf.other: unknown field')
  lu.assertEquals(#err.errors, 2)
  lu.assertNotNil(e:map("p", {}, {}))
  os.execute("rm -rf " .. dir)
end

function TestConfValidation.test_typedefs()
  local dir = plugin_dir { ["handler.lua"] = HANDLER, ["schema.lua"] = [[
    return { fields = {
      { rate = typedefs.vat_rate { default = "NORMAL" } },
      { pay = typedefs.payment_type() },
      { cur = typedefs.currency { default = "EUR" } },
      { limit = typedefs.cents() },
      { pct = typedefs.percent { required = true } },
    } }]] }
  local e = receipt.new { paths = { dir } }
  local _, err = e:map("p", {}, { rate = "19", pay = "CARD", cur = "eur", limit = 1 << 60, pct = 101 })
  lu.assertEquals(tostring(err), 'plugin "p": conf.rate: expected one of: NORMAL, REDUCED_1, SPECIAL_RATE_1, '
    .. "SPECIAL_RATE_2, NULL; conf.pay: expected one of: CASH, NON_CASH; "
    .. "conf.cur: value must match the pattern ^%u%u%u$; "
    .. "conf.limit: value should be between -9007199254740992 and 9007199254740992; "
    .. "conf.pct: value should be between 0 and 100")
  _, err = e:map("p", {}, {})
  lu.assertEquals(tostring(err), 'plugin "p": conf.pct: required field missing')
  lu.assertNotNil(e:map("p", {}, { pct = 5 }))
  -- a typedef with a misspelt extra attribute is caught by the metaschema
  dir = plugin_dir { ["handler.lua"] = HANDLER,
    ["schema.lua"] = [[return { fields = { { r = typedefs.vat_rate { defualt = "NORMAL" } } } }]] }
  local p
  p, err = receipt.new({ paths = { dir } }):load("p")
  lu.assertNil(p)
  lu.assertEquals(tostring(err), 'plugin "p": cannot be loaded: schema.lua: field "r": unknown attribute "defualt"')
end

function TestConfValidation.test_engine_schema_load_error_names_plugin_and_field()
  local dir = plugin_dir { ["handler.lua"] = HANDLER,
    ["schema.lua"] = [[return { fields = { { tip = { type = "string", one_of = { "a" }, defualt = "a" } } } }]] }
  local e = receipt.new { paths = { dir } }
  local p, err = e:load("p")
  lu.assertNil(p)
  lu.assertEquals(err.kind, "plugin")
  lu.assertEquals(tostring(err), 'plugin "p": cannot be loaded: schema.lua: field "tip": unknown attribute "defualt"')
  os.execute("rm -rf " .. dir)
end

function TestConfValidation.test_engine_handler_contract()
  local cases = {
    { [[return { map = function() end }]],
      'plugin "p": cannot be loaded because its VERSION field is not a semantic version string like "1.0.0"' },
    { [[return { VERSION = "1.0.0", map = 1 }]],
      'plugin "p": cannot be loaded because its map field is not a function' },
    { [[return 42]], 'plugin "p": cannot be loaded: handler.lua returned number, expected a table' },
    { [[return {]], 'plugin "p": cannot be loaded: ' },
  }
  for _, c in ipairs(cases) do
    local dir = plugin_dir { ["handler.lua"] = c[1], ["schema.lua"] = "return {}" }
    local p, err = receipt.new({ paths = { dir } }):load("p")
    lu.assertNil(p)
    if c[2]:sub(-2) == ": " then
      lu.assertStrContains(tostring(err), c[2])
      lu.assertStrContains(tostring(err), "handler.lua:1:")
    else
      lu.assertEquals(tostring(err), c[2])
    end
    os.execute("rm -rf " .. dir)
  end
  local dir = plugin_dir { ["handler.lua"] = HANDLER }
  local p, err = receipt.new({ paths = { dir } }):load("p")
  lu.assertNil(p)
  lu.assertEquals(tostring(err), ('plugin "p": cannot be loaded: %s/p/schema.lua is missing'):format(dir))
  os.execute("rm -rf " .. dir)
end

os.exit(lu.LuaUnit.run())
