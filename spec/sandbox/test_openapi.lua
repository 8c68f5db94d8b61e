-- The sandbox's SIGN DE responses validate against the response schemas of
-- fiskaly's OpenAPI document (fiskaly-sign-de-openapi-v2.1.35.json), for every
-- endpoint of the flow and for the documented error responses it produces; and the
-- validator itself rejects deliberately broken bodies.
local lu = require "luaunit"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local jsonschema = require "helpers.jsonschema"
local api = require "sandbox.api"

local SPEC, V = jsonschema.load_openapi()

-- fiskaly's "Known issues": signature.counter is typed string but the middleware
-- sends a number; clients must accept both. Nothing else is relaxed.
local KNOWN_ISSUES = {
  ["/signature/counter$"] = { anyOf = { { type = "string", format = "bigint" }, { type = "integer", minimum = 0 } } },
}
-- Observed behaviour (fiskaly-api.md §5.1, MewsSystems ErrorResult.cs): bad
-- credentials on POST /auth come back with "code": null although the 401 schema
-- types code as a string. The sandbox does the same so clients handle it; this
-- allowance applies to that one response only.
local AUTH_401_ISSUES = {
  ["/signature/counter$"] = KNOWN_ISSUES["/signature/counter$"],
  ["^/code$"] = { type = "string", nullable = true },
}

local function response_schema(path, method, status)
  local op = SPEC.paths[path] and SPEC.paths[path][method:lower()]
  assert(op, "no operation " .. method .. " " .. path .. " in the spec")
  local r = op.responses[tostring(status)]
  assert(r, "no " .. status .. " response for " .. method .. " " .. path)
  return assert(r.content["application/json"].schema, "no JSON schema")
end

local A = api.start()
local checked = {}   -- "METHOD path status" -> count

-- Calls the sandbox and validates the raw body against the spec's schema for
-- (spec_path, method, status). Returns the decoded body.
local function call(method, url, body, tok, spec_path, want_status)
  local st, _, _, raw = A:call(method, url, body, tok)
  lu.assertEquals(st, want_status or 200, method .. " " .. url .. ": " .. raw)
  local v = assert(jsonschema.decode(raw))
  local issues = (spec_path == "/api/v2/auth" and st == 401) and AUTH_401_ISSUES or KNOWN_ISSUES
  local ok, err = V:check(response_schema(spec_path, method, st), v, { known_issues = issues })
  lu.assertTrue(ok, method .. " " .. spec_path .. " " .. st .. ": " .. tostring(err) .. "\nbody: " .. raw)
  local key = method .. " " .. spec_path .. " " .. st
  checked[key] = (checked[key] or 0) + 1
  return v
end

TestOpenApi = {}

function TestOpenApi.test_flow_responses_follow_the_spec()
  local tok = A:sign_token()
  local T = "/api/v2/tss/{tss_id}"
  call("POST", "/api/v2/auth", { api_key = A.sb.api_key, api_secret = A.sb.api_secret }, nil, "/api/v2/auth")
  local tss_id = core.crypto.uuid4()
  local base = "/api/v2/tss/" .. tss_id
  local tss = call("PUT", base, { metadata = { k = "v" } }, tok, T)
  call("PUT", base, {}, tok, T)                                  -- idempotent repeat
  call("GET", base, nil, tok, T)
  call("PATCH", base, { state = "UNINITIALIZED" }, tok, T)
  call("PATCH", base .. "/admin", { admin_puk = tss.admin_puk, new_admin_pin = api.PIN }, tok, T .. "/admin")
  call("POST", base .. "/admin/auth", { admin_pin = api.PIN }, tok, T .. "/admin/auth")
  call("PATCH", base, { state = "INITIALIZED" }, tok, T)
  local cid = core.crypto.uuid4()
  local C = T .. "/client/{client_id}"
  call("PUT", base .. "/client/" .. cid, { serial_number = "ERS " .. cid, metadata = { till = "1" } }, tok, C)
  call("GET", base .. "/client/" .. cid, nil, tok, C)
  call("PATCH", base .. "/client/" .. cid, { state = "REGISTERED", metadata = { till = "2" } }, tok, C)
  call("GET", base .. "/client", nil, tok, T .. "/client")
  call("GET", "/api/v2/client", nil, tok, "/api/v2/client")
  call("POST", base .. "/admin/logout", {}, tok, T .. "/admin/logout")

  local TX = T .. "/tx/{tx_id_or_number}"
  local tx = core.crypto.uuid4()
  local p = { tok = tok, tss_id = tss_id, client_id = cid }
  local function put(id, rev, state, schema)
    return call("PUT", base .. "/tx/" .. id .. "?tx_revision=" .. rev,
      { state = state, client_id = cid, schema = schema }, tok, TX)
  end
  put(tx, 1, "ACTIVE")
  put(tx, 2, "ACTIVE", api.RECEIPT)
  local fin = put(tx, 3, "FINISHED", api.RECEIPT)
  lu.assertIsString(fin.qr_code_data)
  put(tx, 3, "FINISHED", api.RECEIPT)                            -- idempotent repeat
  call("GET", base .. "/tx/" .. tx, nil, tok, TX)
  call("GET", base .. "/tx/" .. tx .. "?tx_revision=1", nil, tok, TX)
  call("GET", base .. "/tx/1", nil, tok, TX)
  -- cancel, order, raw
  local t2 = core.crypto.uuid4()
  put(t2, 1, "ACTIVE")
  put(t2, 2, "CANCELLED", { standard_v1 = { receipt = { receipt_type = "CANCELLATION",
    amounts_per_vat_rate = json.array{} } } })
  local t3 = core.crypto.uuid4()
  put(t3, 1, "ACTIVE")
  put(t3, 2, "FINISHED", { standard_v1 = { order = { line_items = {
    { quantity = "1", text = "Kaffee", price_per_unit = "2.50" } } } } })
  local t4 = core.crypto.uuid4()
  put(t4, 1, "ACTIVE")
  put(t4, 2, "FINISHED", { raw = { process_type = "Kassenbeleg-V1", process_data = core.crypto.b64encode("Beleg^1.00_0.00_0.00_0.00_0.00^1.00:Bar") } })
  A:tx(p, core.crypto.uuid4(), 1, "ACTIVE")                      -- one left ACTIVE

  local l = call("GET", base .. "/tx", nil, tok, T .. "/tx")
  lu.assertEquals(l.count, 5)
  call("GET", base .. "/tx?states[]=FINISHED&limit=2", nil, tok, T .. "/tx")
  call("GET", base .. "/client/" .. cid .. "/tx", nil, tok, C .. "/tx")
  call("GET", "/api/v2/tx?states[0]=ACTIVE", nil, tok, "/api/v2/tx")
  call("GET", "/api/v2/tss", nil, tok, "/api/v2/tss")

  -- teardown: DISABLED
  call("POST", base .. "/admin/auth", { admin_pin = api.PIN }, tok, T .. "/admin/auth")
  call("PATCH", base, { state = "DISABLED" }, tok, T)
  call("GET", "/api/v2/tss?states[]=DISABLED", nil, tok, "/api/v2/tss")

  -- every operation of the flow was checked at least once
  for _, k in ipairs{
    "POST /api/v2/auth 200", "PUT /api/v2/tss/{tss_id} 200", "GET /api/v2/tss/{tss_id} 200",
    "PATCH /api/v2/tss/{tss_id} 200", "PATCH /api/v2/tss/{tss_id}/admin 200",
    "POST /api/v2/tss/{tss_id}/admin/auth 200", "POST /api/v2/tss/{tss_id}/admin/logout 200",
    "PUT /api/v2/tss/{tss_id}/client/{client_id} 200", "GET /api/v2/tss/{tss_id}/client/{client_id} 200",
    "PATCH /api/v2/tss/{tss_id}/client/{client_id} 200", "GET /api/v2/tss/{tss_id}/client 200",
    "GET /api/v2/client 200", "PUT /api/v2/tss/{tss_id}/tx/{tx_id_or_number} 200",
    "GET /api/v2/tss/{tss_id}/tx/{tx_id_or_number} 200", "GET /api/v2/tss/{tss_id}/tx 200",
    "GET /api/v2/tss/{tss_id}/client/{client_id}/tx 200", "GET /api/v2/tx 200", "GET /api/v2/tss 200",
  } do
    lu.assertNotNil(checked[k], "not checked: " .. k)
  end
end

-- Error bodies follow the error schema the spec declares for that operation and
-- status (including its code enum).
function TestOpenApi.test_error_responses_follow_the_spec()
  local T = "/api/v2/tss/{tss_id}"
  local tok = A:sign_token()
  call("GET", "/api/v2/tss/" .. core.crypto.uuid4(), nil, tok, T, 404)
  call("POST", "/api/v2/auth", { api_key = A.sb.api_key, api_secret = "wrong" }, nil, "/api/v2/auth", 401)
  local p = A:provision("CREATED", tok)
  local base = "/api/v2/tss/" .. p.tss_id
  call("PATCH", base, { state = "INITIALIZED" }, tok, T, 400)              -- E_ILLEGAL_TSS_STATE_CHANGE
  call("PUT", base, {}, (A:sign_token()), T, 409)                          -- another org: E_TSS_CONFLICT
  A:ok("PATCH", base, { state = "UNINITIALIZED" }, tok)
  call("PATCH", base .. "/admin", { admin_puk = "0000000000", new_admin_pin = api.PIN }, tok, T .. "/admin", 400)
  call("PUT", base, {}, tok, T, 409)                                       -- no longer CREATED
  call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = "ERS 9" }, tok,
    T .. "/client/{client_id}", 400)                                       -- E_TSS_NOT_INITIALIZED
  A:ok("PATCH", base .. "/admin", { admin_puk = p.puk, new_admin_pin = api.PIN }, tok)
  call("POST", base .. "/admin/auth", { admin_pin = "wrong-pin" }, tok, T .. "/admin/auth", 401)
  call("PATCH", base, { state = "INITIALIZED" }, tok, T, 403)              -- no admin session
  A:ok("POST", base .. "/admin/auth", { admin_pin = api.PIN }, tok)
  A:ok("PATCH", base, { state = "INITIALIZED" }, tok)
  local cid = core.crypto.uuid4()
  A:ok("PUT", base .. "/client/" .. cid, { serial_number = "ERS 1" }, tok)
  call("PUT", base .. "/client/" .. cid, { serial_number = "ERS 2" }, tok, T .. "/client/{client_id}", 409)
  call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = "ERS/2" }, tok, T .. "/client/{client_id}", 400)
  call("GET", base .. "/client/" .. core.crypto.uuid4(), nil, tok, T .. "/client/{client_id}", 404)
  local TX = T .. "/tx/{tx_id_or_number}"
  local tx = core.crypto.uuid4()
  A:ok("PUT", base .. "/tx/" .. tx .. "?tx_revision=1", { state = "ACTIVE", client_id = cid }, tok)
  call("PUT", base .. "/tx/" .. tx .. "?tx_revision=5", { state = "ACTIVE", client_id = cid }, tok, TX, 400)
  call("PUT", base .. "/tx/" .. tx .. "?tx_revision=2", { state = "FINISHED", client_id = cid }, tok, TX, 409)
  call("PUT", base .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1",
    { state = "ACTIVE", client_id = core.crypto.uuid4() }, tok, TX, 400)   -- E_CLIENT_NOT_FOUND
  call("GET", base .. "/tx/" .. tx .. "?tx_revision=7", nil, tok, TX, 400)
  call("GET", base .. "/tx/" .. core.crypto.uuid4(), nil, tok, TX, 404)
end

-- The validator is proven: broken versions of valid bodies are rejected, each for
-- the reason introduced.
function TestOpenApi.test_validator_rejects_broken_bodies()
  local p = A:provision("CLIENT")
  local tx = core.crypto.uuid4()
  A:tx(p, tx, 1, "ACTIVE")
  local _, _, _, raw = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=2",
    { state = "FINISHED", client_id = p.client_id, schema = api.RECEIPT }, p.tok)
  local schema = response_schema("/api/v2/tss/{tss_id}/tx/{tx_id_or_number}", "PUT", 200)
  local opts = { known_issues = KNOWN_ISSUES }
  lu.assertTrue(V:check(schema, jsonschema.decode(raw), opts))

  local function broken(mutate, want)
    local v = jsonschema.decode(raw)
    mutate(v)
    local ok, err = V:check(schema, v, opts)
    lu.assertFalse(ok, "accepted a body broken for: " .. want)
    lu.assertStrContains(err, want)
  end
  broken(function(v) v.signature = nil end, "missing required property signature")
  broken(function(v) v.log.operation = nil end, "/log: missing required property operation")
  broken(function(v) v.revision = "2" end, "/revision: expected integer, got string")
  broken(function(v) v.revision = 0 end, "/revision: below minimum")
  broken(function(v) v.state = "DONE" end, "/state: DONE is not one of the enum values")
  broken(function(v) v.log.operation = "Stop" end, "/log/operation")
  broken(function(v) v.signature.algorithm = "ecdsa-plain-SHA384" end, "/signature/algorithm")
  broken(function(v) v.signature.counter = true end, "/signature/counter")
  broken(function(v) v.signature.counter = "12a" end, "/signature/counter")
  broken(function(v) v._id = "not-a-uuid" end, "/_id: not a valid uuid")
  broken(function(v) v._type = "TSS" end, "/_type")
  broken(function(v) v.time_start = -1 end, "/time_start: below minimum")
  broken(function(v) v.schema.standard_v1.receipt.amounts_per_vat_rate[1].amount = "10.0" end,
    '/schema/standard_v1/receipt/amounts_per_vat_rate/0/amount: "10.0" does not match')
  broken(function(v) v.schema.standard_v1.receipt.amounts_per_payment_type[1].currency_code = "EURO" end,
    "currency_code")
  broken(function(v) v.schema.standard_v1.receipt.amounts_per_vat_rate = {} end,   -- {} is an object
    "/schema/standard_v1/receipt/amounts_per_vat_rate: expected array, got object")
  broken(function(v) v.client_serial_number = "ERS #1" end, "/client_serial_number")
  broken(function(v) v.metadata = { k = 1 } end, "/metadata/k: expected string")

  -- the list envelope
  local _, _, _, lraw = A:call("GET", "/api/v2/tss/" .. p.tss_id .. "/tx", nil, p.tok)
  local ls = response_schema("/api/v2/tss/{tss_id}/tx", "GET", 200)
  lu.assertTrue(V:check(ls, jsonschema.decode(lraw), opts))
  local v = jsonschema.decode(lraw)
  v.count = nil
  local ok, err = V:check(ls, v, opts)
  lu.assertFalse(ok)
  lu.assertStrContains(err, "count")
  v = jsonschema.decode(lraw)
  v.data[1].number = "1"
  ok, err = V:check(ls, v, opts)
  lu.assertFalse(ok)
  lu.assertStrContains(err, "/data/0/number")

  -- without the known-issue allowance, the number counter is reported
  ok, err = V:check(schema, jsonschema.decode(raw))
  lu.assertFalse(ok)
  lu.assertStrContains(err, "/signature/counter: expected string, got integer")

  -- an error body with a code outside the operation's enum
  local es = response_schema("/api/v2/tss/{tss_id}/tx/{tx_id_or_number}", "PUT", 400)
  lu.assertTrue(V:check(es, jsonschema.decode('{"status_code":400,"error":"Bad Request","code":"E_TX_UPSERT","message":"m"}')))
  ok, err = V:check(es, jsonschema.decode('{"status_code":400,"error":"Bad Request","code":"E_NOPE","message":"m"}'))
  lu.assertFalse(ok)
  lu.assertStrContains(err, "/code")
end

function TestOpenApi.test_validator_keywords()
  local root = {}
  local W = jsonschema.new(root)
  local D = jsonschema.decode
  lu.assertTrue(W:check({ type = "array" }, D("[]")))
  lu.assertFalse(W:check({ type = "array" }, D("{}")))
  lu.assertTrue(W:check({ type = "object" }, D("{}")))
  lu.assertFalse(W:check({ type = "object" }, D("[]")))
  lu.assertTrue(W:check({ type = "object" }, D('{"a":"[]"}')))       -- "[]" inside a string stays a string
  lu.assertEquals(D('{"a":"[ ]","b":[ ]}').a, "[ ]")
  local one = { oneOf = { { type = "string" }, { type = "string", enum = { "x" } } } }
  lu.assertTrue(W:check(one, D('"y"')))
  lu.assertFalse(W:check(one, D('"x"')))                             -- two branches match
  lu.assertFalse(W:check({ anyOf = { { type = "integer" }, { type = "boolean" } } }, D('"x"')))
  lu.assertFalse(W:check({ allOf = { { type = "string" }, { minLength = 3 } } }, D('"ab"')))
  lu.assertFalse(W:check({ type = "array", uniqueItems = true }, D('["a","a"]')))
  lu.assertError(function() W:check({ pattern = "^[0-9]+x$" }, "1x") end)   -- unknown pattern: loud
  local P = jsonschema.patterns
  lu.assertTrue(P["^-?\\d+(\\.\\d{2,5})$"]("-0.12345"))
  lu.assertFalse(P["^-?\\d+(\\.\\d{2,5})$"]("10.0"))
  lu.assertFalse(P["^-?\\d+(\\.\\d{2,5})$"]("10"))
  lu.assertFalse(P["^-?\\d+(\\.\\d{2,5})$"]("10.123456"))
  lu.assertFalse(P["^-?\\d+(\\.\\d{2,5})$"]("1e3.00"))
  lu.assertTrue(P["^-?\\d+(\\.\\d{1,5})?$"]("3"))
  lu.assertFalse(P["^-?\\d+(\\.\\d{1,5})?$"]("3."))
  lu.assertTrue(P["^[A-Za-z0-9 '()+,-./:=?]{0,70}$"]("ERS 1/(a),b-c.d:e=f?'+"))
  lu.assertFalse(P["^[A-Za-z0-9 '()+,-./:=?]{0,70}$"]("ERS_1"))
  lu.assertFalse(P["^[^_\\/^]+$"]("a^b"))
  lu.assertTrue(P["gw\\d+-(live|test)$"]("eu-gw12-test"))
end

local rc = lu.LuaUnit.run()
A:stop()
os.exit(rc)
