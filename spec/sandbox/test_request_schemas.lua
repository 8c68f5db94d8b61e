-- The sandbox's request validation agrees with fiskaly's OpenAPI request schemas:
-- for a corpus of request bodies (valid ones and systematic mutations), the
-- sandbox answers 400 E_FAILED_SCHEMA_VALIDATION exactly when the spec's schema
-- (checked by spec/helpers/jsonschema.lua) rejects the body.
local lu = require "luaunit"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local jsonschema = require "helpers.jsonschema"
local api = require "sandbox.api"

local SPEC, V = jsonschema.load_openapi()

local function request_schema(path, method)
  return SPEC.paths[path][method:lower()].requestBody.content["application/json"].schema
end

local A = api.start()
local P = A:provision("CLIENT")
A:ok("POST", "/api/v2/tss/" .. P.tss_id .. "/admin/auth", { admin_pin = api.PIN }, P.tok)

local function deep_copy(t)
  if type(t) ~= "table" then return t end
  local c = setmetatable({}, getmetatable(t))
  for k, v in pairs(t) do c[k] = deep_copy(v) end
  return c
end

-- Sends body; compares the sandbox's verdict with the spec's. Returns both verdicts.
local function compare(label, spec_path, method, url, body)
  local text = assert(json.encode(body))
  local spec_ok, spec_err = V:check(request_schema(spec_path, method), assert(jsonschema.decode(text)))
  local st, b = A:call(method, url, text, P.tok)
  local sandbox_schema_error = st == 400 and type(b) == "table" and b.code == "E_FAILED_SCHEMA_VALIDATION"
  lu.assertEquals(sandbox_schema_error, not spec_ok, string.format(
    "%s: spec says %s, sandbox answered %d %s\nbody: %s", label,
    spec_ok and "valid" or ("invalid (" .. tostring(spec_err) .. ")"), st,
    type(b) == "table" and tostring(b.code) .. " " .. tostring(b.message) or "", text))
  return spec_ok
end

local function receipt_body(mut)
  local body = {
    state = "ACTIVE", client_id = P.client_id,
    schema = { standard_v1 = { receipt = {
      receipt_type = "RECEIPT",
      amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "10.00" } },
      amounts_per_payment_type = { { payment_type = "CASH", amount = "10.00", currency_code = "EUR" } },
    } } },
  }
  mut(body, body.schema.standard_v1.receipt)
  return body
end

local counts = { valid = 0, invalid = 0 }
local function tx(label, body)
  local url = "/api/v2/tss/" .. P.tss_id .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1"
  local ok = compare(label, "/api/v2/tss/{tss_id}/tx/{tx_id_or_number}", "PUT", url, body)
  counts[ok and "valid" or "invalid"] = counts[ok and "valid" or "invalid"] + 1
end

TestRequestSchemas = {}

function TestRequestSchemas.test_transaction_bodies()
  tx("base", receipt_body(function() end))
  for _, a in ipairs{ "10.00", "-1.50", "0.12345", "10.0", "10", "1.123456", "1,00", "+1.00", " 1.00", "1.00 ", "", ".50", "1e2.00" } do
    tx("vat amount " .. a, receipt_body(function(_, r) r.amounts_per_vat_rate[1].amount = a end))
    tx("payment amount " .. a, receipt_body(function(_, r) r.amounts_per_payment_type[1].amount = a end))
  end
  tx("amount as number", receipt_body(function(_, r) r.amounts_per_vat_rate[1].amount = 10 end))
  for _, v in ipairs{ "NORMAL", "REDUCED_1", "SPECIAL_RATE_1", "SPECIAL_RATE_2", "NULL", "19", "7", "10.7", "5.5", "0",
      "19.0", "normal", "NORMAL ", "16" } do
    tx("vat_rate " .. v, receipt_body(function(_, r) r.amounts_per_vat_rate[1].vat_rate = v end))
  end
  tx("vat_rate missing", receipt_body(function(_, r) r.amounts_per_vat_rate[1].vat_rate = nil end))
  tx("amount missing", receipt_body(function(_, r) r.amounts_per_vat_rate[1].amount = nil end))
  for _, v in ipairs{ "CASH", "NON_CASH", "CARD", "cash" } do
    tx("payment_type " .. v, receipt_body(function(_, r) r.amounts_per_payment_type[1].payment_type = v end))
  end
  for _, v in ipairs{ "EUR", "usd", "EURO", "E1R", "" } do
    tx("currency " .. v, receipt_body(function(_, r) r.amounts_per_payment_type[1].currency_code = v end))
  end
  for _, v in ipairs{ "RECEIPT", "TRAINING", "TRANSFER", "ORDER", "CANCELLATION", "ABORT", "BENEFIT_IN_KIND",
      "INVOICE", "OTHER", "ANNULATION", "SALE", "receipt" } do
    tx("receipt_type " .. v, receipt_body(function(_, r) r.receipt_type = v end))
  end
  tx("receipt_type missing", receipt_body(function(_, r) r.receipt_type = nil end))
  tx("amounts_per_vat_rate missing", receipt_body(function(_, r) r.amounts_per_vat_rate = nil end))
  tx("amounts_per_vat_rate empty", receipt_body(function(_, r) r.amounts_per_vat_rate = json.array{} end))
  tx("amounts_per_vat_rate object", receipt_body(function(_, r) r.amounts_per_vat_rate = { vat_rate = "NORMAL" } end))
  tx("payments missing", receipt_body(function(_, r) r.amounts_per_payment_type = nil end))
  tx("payments empty", receipt_body(function(_, r) r.amounts_per_payment_type = json.array{} end))
  tx("state FINISHED", receipt_body(function(b) b.state = "FINISHED" end))
  tx("state DONE", receipt_body(function(b) b.state = "DONE" end))
  tx("state missing", receipt_body(function(b) b.state = nil end))
  tx("client_id missing", receipt_body(function(b) b.client_id = nil end))
  tx("client_id not uuid", receipt_body(function(b) b.client_id = "till-1" end))
  tx("client_id upper case", receipt_body(function(b) b.client_id = b.client_id:upper() end))
  tx("schema empty", receipt_body(function(b) b.schema = {} end))
  tx("schema two kinds", receipt_body(function(b) b.schema.raw = { process_type = "x", process_data = "" } end))
  tx("standard_v1 empty", receipt_body(function(b) b.schema.standard_v1 = {} end))
  tx("standard_v1 two kinds", receipt_body(function(b) b.schema.standard_v1.other = {} end))
  tx("other", receipt_body(function(b) b.schema.standard_v1 = { other = { anything = 1 } } end))
  tx("raw", receipt_body(function(b) b.schema = { raw = { process_type = "Kassenbeleg-V1", process_data = "QmVsZWc=" } } end))
  tx("raw without data", receipt_body(function(b) b.schema = { raw = { process_type = "Kassenbeleg-V1" } } end))
  tx("raw data not a string", receipt_body(function(b) b.schema = { raw = { process_type = "K", process_data = 5 } } end))
  local function order(li)
    return receipt_body(function(b) b.schema = { standard_v1 = { order = { line_items = { li } } } } end)
  end
  for _, q in ipairs{ "1", "1.5", "-2", "1.12345", "1.123456", "1.", "1e2", "" } do
    tx("quantity " .. q, order{ quantity = q, text = "Kaffee", price_per_unit = "2.50" })
  end
  tx("price 2.5", order{ quantity = "1", text = "Kaffee", price_per_unit = "2.5" })
  tx("text 255", order{ quantity = "1", text = string.rep("x", 255), price_per_unit = "2.50" })
  tx("text 256", order{ quantity = "1", text = string.rep("x", 256), price_per_unit = "2.50" })
  tx("text missing", order{ quantity = "1", price_per_unit = "2.50" })
  tx("line_items missing", receipt_body(function(b) b.schema = { standard_v1 = { order = {} } } end))
  local md = {}
  for i = 1, 40 do md["k" .. i] = "v" end
  tx("metadata 40 keys", receipt_body(function(b) b.metadata = deep_copy(md) end))
  md.k41 = "v"
  tx("metadata 41 keys", receipt_body(function(b) b.metadata = md end))
  tx("metadata value 500", receipt_body(function(b) b.metadata = { k = string.rep("v", 500) } end))
  tx("metadata value 501", receipt_body(function(b) b.metadata = { k = string.rep("v", 501) } end))
  tx("metadata value number", receipt_body(function(b) b.metadata = { k = 1 } end))
  tx("extra top-level property", receipt_body(function(b) b.foo = "bar" end))
  -- the corpus really has both kinds
  lu.assertTrue(counts.valid >= 30, "valid bodies: " .. counts.valid)
  lu.assertTrue(counts.invalid >= 40, "invalid bodies: " .. counts.invalid)
end

function TestRequestSchemas.test_tss_client_and_admin_bodies()
  local tss_path = "/api/v2/tss/" .. P.tss_id
  for _, b in ipairs{
    { state = "INITIALIZED" }, { state = "INITIALIZED", metadata = { a = "b" } }, { state = "CREATED" },
    { state = "INITIALIZED", extra = 1 }, {}, { state = 1 },
    { state = "INITIALIZED", description = "bad_description" }, { state = "INITIALIZED", description = string.rep("d", 101) },
  } do
    compare("updateTss " .. json.encode(b), "/api/v2/tss/{tss_id}", "PATCH", tss_path, b)
  end
  for _, b in ipairs{
    { serial_number = "ERS 1" }, { serial_number = "" }, { serial_number = "ERS#1" }, { serial_number = "ERS_1" },
    { serial_number = string.rep("S", 70) }, { serial_number = string.rep("S", 71) }, { serial_number = 12 }, {},
    { serial_number = "ERS (1) +,-./:=?'" }, { serial_number = "ERS 2", metadata = { k = 5 } },
  } do
    compare("createClient " .. json.encode(b), "/api/v2/tss/{tss_id}/client/{client_id}", "PUT",
      tss_path .. "/client/" .. core.crypto.uuid4(), b)
  end
  for _, b in ipairs{ { admin_pin = "123" }, { admin_pin = 123456 }, {}, { admin_pin = "12345" } } do
    compare("adminAuth " .. json.encode(b), "/api/v2/tss/{tss_id}/admin/auth", "POST", tss_path .. "/admin/auth", b)
  end
  for _, b in ipairs{ { admin_puk = "123456789", new_admin_pin = "123456" }, { admin_puk = "1234567890" },
      { new_admin_pin = "123456" }, { admin_puk = "1234567890", new_admin_pin = "12345" },
      { admin_puk = "1234567890", new_admin_pin = "123456" } } do
    compare("changeAdminPin " .. json.encode(b), "/api/v2/tss/{tss_id}/admin", "PATCH", tss_path .. "/admin", b)
  end
  for _, b in ipairs{ { state = "DEREGISTERED" }, { state = "GONE" }, {}, { state = "REGISTERED", metadata = { a = "b" } } } do
    compare("updateClient " .. json.encode(b), "/api/v2/tss/{tss_id}/client/{client_id}", "PATCH",
      tss_path .. "/client/" .. P.client_id, b)
  end
end

local rc = lu.LuaUnit.run()
A:stop()
os.exit(rc)
