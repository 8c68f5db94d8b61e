-- Every main rejection of fiskaly-sandbox, with fiskaly's status, error code and a
-- message naming the problem (raw HTTP through core.http).
local lu = require "luaunit"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local api = require "sandbox.api"

local A = api.start()
local err = function(...) return api.assert_error(lu, ...) end

TestRejections = {}

function TestRejections.test_wrong_api_secret()
  local st, b = A:call("POST", "/api/v2/auth", { api_key = A.sb.api_key, api_secret = A.sb.api_secret .. "x" })
  local msg = err(st, b, 401, json.null)          -- fiskaly sends code null here
  lu.assertStrContains(msg, "Invalid credentials")
  lu.assertNotStrContains(msg, A.sb.api_secret)
  st, b = A:call("POST", "/api/v0/auth", { api_key = "test_unknown", api_secret = "whatever" })
  err(st, b, 401, json.null)
  st, b = A:call("POST", "/api/v2/auth", { api_key = A.sb.api_key })
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "api_secret")
end

function TestRejections.test_missing_and_bad_token()
  local st, b = A:call("GET", "/api/v2/tss")
  lu.assertStrContains(err(st, b, 401, "E_UNAUTHORIZED"), "Authorization")
  st, b = A:call("GET", "/api/v2/tss", nil, "eyJnope.nope.nope")
  lu.assertStrContains(err(st, b, 401, "E_UNAUTHORIZED"), "Invalid access token")
end

function TestRejections.test_expired_token()
  local tok = A:sign_token()
  lu.assertEquals(A:call("GET", "/api/v2/tss", nil, tok), 200)
  local r = A:ok("POST", "/_sandbox/expire-tokens", {})
  lu.assertTrue(r.expired >= 1)
  local st, b = A:call("GET", "/api/v2/tss", nil, tok)
  lu.assertStrContains(err(st, b, 401, "E_UNAUTHORIZED"), "expired")
  -- a fresh login works again
  lu.assertEquals(A:call("GET", "/api/v2/tss", nil, (A:sign_token())), 200)
end

function TestRejections.test_token_ttl_and_clock()
  local S = api.start{ "--token-ttl", "60" }
  local a = S:ok("POST", "/api/v2/auth", { api_key = S.sb.api_key, api_secret = S.sb.api_secret })
  lu.assertEquals(a.access_token_expires_in, 60)
  lu.assertEquals(S:call("GET", "/api/v2/tss", nil, a.access_token), 200)
  S:ok("POST", "/_sandbox/clock", { offset_seconds = 61 })
  local st, b = S:call("GET", "/api/v2/tss", nil, a.access_token)
  err(st, b, 401, "E_UNAUTHORIZED")
  -- the refresh token (2 x ttl) still works
  local r = S:ok("POST", "/api/v2/auth", { refresh_token = a.refresh_token })
  lu.assertEquals(S:call("GET", "/api/v2/tss", nil, r.access_token), 200)
  S:stop()
end

function TestRejections.test_wrong_puk()
  local p = A:provision("UNINITIALIZED")
  local st, b = A:call("PATCH", "/api/v2/tss/" .. p.tss_id .. "/admin",
    { admin_puk = "0000000000", new_admin_pin = "1234567890" }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_CHANGE_ADMIN_PIN_FAILED"), "admin_puk")
  lu.assertNotStrContains(b.message, p.puk)
  -- the PIN is still blocked from creation
  st, b = A:call("POST", "/api/v2/tss/" .. p.tss_id .. "/admin/auth", { admin_pin = "1234567890" }, p.tok)
  err(st, b, 423, "E_ADMIN_PIN_BLOCKED")
end

function TestRejections.test_wrong_pin_and_block_after_five()
  local p = A:provision("PIN")
  local path = "/api/v2/tss/" .. p.tss_id .. "/admin/auth"
  for i = 1, 5 do
    local st, b = A:call("POST", path, { admin_pin = "999999" }, p.tok)
    local msg = err(st, b, 401, "E_UNAUTHORIZED")
    lu.assertStrContains(msg, "admin_pin")
    lu.assertStrContains(msg, i .. " of 5")
    lu.assertNotStrContains(msg, api.PIN)
  end
  -- blocked now, even with the right PIN
  local st, b = A:call("POST", path, { admin_pin = api.PIN }, p.tok)
  lu.assertStrContains(err(st, b, 423, "E_ADMIN_PIN_BLOCKED"), "PUK")
  -- unblock with the PUK, then the new PIN works
  A:ok("PATCH", "/api/v2/tss/" .. p.tss_id .. "/admin", { admin_puk = p.puk, new_admin_pin = "abcdef123" }, p.tok)
  A:ok("POST", path, { admin_pin = "abcdef123" }, p.tok)
  -- a PIN shorter than 6 characters fails schema validation
  st, b = A:call("POST", path, { admin_pin = "123" }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "body/admin_pin")
end

function TestRejections.test_wrong_tss_state()
  local p = A:provision("CREATED")
  local base = "/api/v2/tss/" .. p.tss_id
  -- CREATED -> INITIALIZED is not a transition
  local st, b = A:call("PATCH", base, { state = "INITIALIZED" }, p.tok)
  local msg = err(st, b, 400, "E_ILLEGAL_TSS_STATE_CHANGE")
  lu.assertStrContains(msg, "CREATED")
  lu.assertStrContains(msg, "INITIALIZED")
  -- the admin PIN cannot be set while CREATED
  st, b = A:call("PATCH", base .. "/admin", { admin_puk = p.puk, new_admin_pin = api.PIN }, p.tok)
  err(st, b, 400, "E_CHANGE_ADMIN_PIN_FAILED")
  -- unknown state value
  st, b = A:call("PATCH", base, { state = "ACTIVE" }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "body/state")
  st, b = A:call("PATCH", base, { state = "UNINITIALIZED", color = "red" }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "additional properties")

  -- INITIALIZED needs an admin session
  A:ok("PATCH", base, { state = "UNINITIALIZED" }, p.tok)
  A:ok("PATCH", base .. "/admin", { admin_puk = p.puk, new_admin_pin = api.PIN }, p.tok)
  st, b = A:call("PATCH", base, { state = "INITIALIZED" }, p.tok)
  lu.assertStrContains(err(st, b, 403, "E_ACCESS_DENIED"), "admin")
  -- the admin session belongs to the token's session: another login has none
  A:ok("POST", base .. "/admin/auth", { admin_pin = api.PIN }, p.tok)
  local other = A:auth("/api/v2", p.key.key, p.key.secret)
  st, b = A:call("PATCH", base, { state = "INITIALIZED" }, other)
  err(st, b, 403, "E_ACCESS_DENIED")
  A:ok("PATCH", base, { state = "INITIALIZED" }, p.tok)

  -- a transaction on a TSS that is not INITIALIZED
  local q = A:provision("UNINITIALIZED")
  st, b = A:call("PUT", "/api/v2/tss/" .. q.tss_id .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1",
    { state = "ACTIVE", client_id = core.crypto.uuid4() }, q.tok)
  lu.assertStrContains(err(st, b, 400, "E_TSS_NOT_INITIALIZED"), "UNINITIALIZED")
  -- a client on a TSS that is not INITIALIZED
  st, b = A:call("PUT", "/api/v2/tss/" .. q.tss_id .. "/client/" .. core.crypto.uuid4(),
    { serial_number = "ERS 1" }, q.tok)
  err(st, b, 400, "E_TSS_NOT_INITIALIZED")

  -- DISABLED is final, and nothing signs any more
  local cid = core.crypto.uuid4()
  A:ok("PUT", base .. "/client/" .. cid, { serial_number = "ERS 1" }, p.tok)
  A:ok("PATCH", base, { state = "DISABLED" }, p.tok)
  st, b = A:call("PATCH", base, { state = "INITIALIZED" }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_ILLEGAL_TSS_STATE_CHANGE"), "DISABLED")
  st, b = A:call("PUT", base .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1",
    { state = "ACTIVE", client_id = cid }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_TSS_DISABLED"), "DISABLED")
  st, b = A:call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = "ERS 2" }, p.tok)
  err(st, b, 400, "E_TSS_DISABLED")
  st, b = A:call("PATCH", base .. "/client/" .. cid, { state = "DEREGISTERED" }, p.tok)
  err(st, b, 400, "E_TSS_DISABLED")
end

function TestRejections.test_admin_logout_ends_session()
  local p = A:provision("INITIALIZED")
  local base = "/api/v2/tss/" .. p.tss_id
  A:ok("POST", base .. "/admin/logout", {}, p.tok)
  local st, b = A:call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = "ERS 2" }, p.tok)
  err(st, b, 403, "E_ACCESS_DENIED")
  st, b = A:call("PATCH", base, { state = "DISABLED" }, p.tok)
  err(st, b, 403, "E_ACCESS_DENIED")
  -- logout without a session is fine
  A:ok("POST", base .. "/admin/logout", {}, p.tok)
end

function TestRejections.test_unknown_tss_and_other_organization()
  local tok = A:sign_token()
  local id = core.crypto.uuid4()
  local st, b = A:call("GET", "/api/v2/tss/" .. id, nil, tok)
  lu.assertStrContains(err(st, b, 404, "E_TSS_NOT_FOUND"), id)
  st, b = A:call("PATCH", "/api/v2/tss/" .. id, { state = "UNINITIALIZED" }, tok)
  err(st, b, 404, "E_TSS_NOT_FOUND")
  st, b = A:call("PUT", "/api/v2/tss/" .. id .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1",
    { state = "ACTIVE", client_id = core.crypto.uuid4() }, tok)
  err(st, b, 404, "E_TSS_NOT_FOUND")
  st, b = A:call("GET", "/api/v2/tss/not-a-uuid", nil, tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "tss_id")
  -- another organization's TSS: not visible, not listed
  local p = A:provision("CREATED")
  st, b = A:call("GET", "/api/v2/tss/" .. p.tss_id, nil, tok)
  err(st, b, 403, "E_ACCESS_DENIED")
  lu.assertEquals(#A:ok("GET", "/api/v2/tss", nil, tok).data, 0)
  -- and its id is taken
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id, {}, tok)
  err(st, b, 409, "E_TSS_CONFLICT")
  -- management: another group's organization is not accessible to a managed key
  local org, key = A:managed_org("Other")
  local mt = A:auth("/api/v0", key.key, key.secret)
  lu.assertEquals(A:ok("GET", "/api/v0/organizations/" .. org._id, nil, mt)._id, org._id)
  st, b = A:call("GET", "/api/v0/organizations/" .. A.sb.organization_id, nil, mt)
  err(st, b, 403, "E_ACCESS_DENIED")
end

function TestRejections.test_second_create_after_created()
  local p = A:provision("UNINITIALIZED")
  local st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id, {}, p.tok)
  lu.assertStrContains(err(st, b, 409, "E_TSS_CONFLICT"), "CREATED")
  lu.assertNil(b.admin_puk)
end

function TestRejections.test_bad_amounts_and_enums()
  local p = A:provision("CLIENT")
  local tx = core.crypto.uuid4()
  A:tx(p, tx, 1, "ACTIVE")
  local function finish(receipt)
    return A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=2",
      { state = "FINISHED", client_id = p.client_id, schema = { standard_v1 = { receipt = receipt } } }, p.tok)
  end
  local cases = {
    { { receipt_type = "RECEIPT", amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "10.0" } } },
      'body/schema/standard_v1/receipt/amounts_per_vat_rate/0/amount must match pattern "^-?\\d+(\\.\\d{2,5})$"' },
    { { receipt_type = "RECEIPT", amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "10" } } },
      "amounts_per_vat_rate/0/amount" },
    { { receipt_type = "RECEIPT", amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "1.123456" } } },
      "amounts_per_vat_rate/0/amount" },
    { { receipt_type = "RECEIPT", amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = 10 } } },
      "amounts_per_vat_rate/0/amount must be string" },
    { { receipt_type = "RECEIPT", amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "1.00" } },
        amounts_per_payment_type = { { payment_type = "CASH", amount = "1.00" }, { payment_type = "CASH", amount = "1,00" } } },
      "amounts_per_payment_type/1/amount" },
    { { receipt_type = "RECEIPT", amounts_per_vat_rate = { { vat_rate = "19%", amount = "1.00" } } },
      "amounts_per_vat_rate/0/vat_rate must be equal to one of the allowed values" },
    { { receipt_type = "RECEIPT", amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "1.00" } },
        amounts_per_payment_type = { { payment_type = "CARD", amount = "1.00" } } },
      "amounts_per_payment_type/0/payment_type" },
    { { receipt_type = "RECEIPT", amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "1.00" } },
        amounts_per_payment_type = { { payment_type = "CASH", amount = "1.00", currency_code = "EURO" } } },
      "amounts_per_payment_type/0/currency_code" },
    { { receipt_type = "SALE", amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "1.00" } } },
      "body/schema/standard_v1/receipt/receipt_type" },
    { { receipt_type = "RECEIPT" }, "must have required property 'amounts_per_vat_rate'" },
  }
  for _, c in ipairs(cases) do
    local st, b = finish(c[1])
    lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), c[2], false)
  end
  -- nothing was signed by the rejected calls: rev 2 is still free
  lu.assertEquals(A:tx(p, tx, 2, "FINISHED", api.RECEIPT).revision, 2)
  -- two schemas at once, and no schema kind at all
  local st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1",
    { state = "ACTIVE", client_id = p.client_id, schema = { raw = { process_type = "x", process_data = "" }, standard_v1 = {} } }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "body/schema must have exactly one")
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1",
    { state = "ACTIVE", client_id = "nope" }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), 'body/client_id must match format "uuid"')
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. core.crypto.uuid4(), { state = "ACTIVE", client_id = p.client_id }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "tx_revision")
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1", "{not json", p.tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "JSON")
end

function TestRejections.test_revision_conflicts()
  local p = A:provision("CLIENT")
  local tx = core.crypto.uuid4()
  -- a new transaction starts at revision 1 and ACTIVE
  local st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=2",
    { state = "ACTIVE", client_id = p.client_id }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_TX_UPSERT"), "tx_revision=1")
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=1",
    { state = "FINISHED", client_id = p.client_id, schema = api.RECEIPT }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_TX_UPSERT"), "ACTIVE")
  A:tx(p, tx, 1, "ACTIVE")
  -- skipping a revision
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=3",
    { state = "ACTIVE", client_id = p.client_id }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_TX_UPSERT"), "latest_revision 1")
  -- same revision, different body
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=1",
    { state = "ACTIVE", client_id = p.client_id, metadata = { a = "b" } }, p.tok)
  err(st, b, 400, "E_TX_UPSERT")
  A:tx(p, tx, 2, "FINISHED", api.RECEIPT)
  -- nothing after FINISHED
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=3",
    { state = "ACTIVE", client_id = p.client_id }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_TX_UPSERT"), "FINISHED")
  -- unknown revision / transaction on GET
  st, b = A:call("GET", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=9", nil, p.tok)
  err(st, b, 400, "E_TX_REVISION_NOT_FOUND")
  st, b = A:call("GET", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. core.crypto.uuid4(), nil, p.tok)
  err(st, b, 404, "E_TX_NOT_FOUND")
  st, b = A:call("GET", "/api/v2/tss/" .. p.tss_id .. "/tx/999", nil, p.tok)
  err(st, b, 404, "E_TX_NOT_FOUND")
end

function TestRejections.test_finish_without_schema_and_type_change()
  local p = A:provision("CLIENT")
  local tx = core.crypto.uuid4()
  A:tx(p, tx, 1, "ACTIVE")
  local st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=2",
    { state = "FINISHED", client_id = p.client_id }, p.tok)
  lu.assertStrContains(err(st, b, 409, "E_TX_NO_TYPE_DEFINED"), "schema")
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=2",
    { state = "CANCELLED", client_id = p.client_id }, p.tok)
  err(st, b, 409, "E_TX_NO_TYPE_DEFINED")
  A:tx(p, tx, 2, "ACTIVE", api.RECEIPT)
  st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx .. "?tx_revision=3",
    { state = "FINISHED", client_id = p.client_id, schema = { standard_v1 = { order = { line_items = json.array{} } } } }, p.tok)
  lu.assertStrContains(err(st, b, 409, "E_TX_ILLEGAL_TYPE_CHANGE"), "Bestellung-V1")
end

function TestRejections.test_clients()
  local p = A:provision("CLIENT")
  local base = "/api/v2/tss/" .. p.tss_id
  A:ok("POST", base .. "/admin/auth", { admin_pin = api.PIN }, p.tok)
  -- client_id is unique system-wide; another serial for the same id conflicts
  local st, b = A:call("PUT", base .. "/client/" .. p.client_id, { serial_number = "ERS other" }, p.tok)
  err(st, b, 409, "E_CLIENT_CONFLICT")
  -- serial rules
  st, b = A:call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = "ERS/1" }, p.tok)
  err(st, b, 400, "E_ILLEGAL_CLIENT_SERIAL")
  st, b = A:call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = "ERS 1 " }, p.tok)
  err(st, b, 400, "E_ILLEGAL_CLIENT_SERIAL")
  st, b = A:call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = p.client.serial_number }, p.tok)
  err(st, b, 400, "E_ILLEGAL_CLIENT_SERIAL")
  -- "_" is outside the spec's serial regex: a schema error, as fiskaly's validator gives
  st, b = A:call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = "ERS_1" }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "body/serial_number")
  st, b = A:call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = "Kasse#1" }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "body/serial_number")
  st, b = A:call("PUT", base .. "/client/" .. core.crypto.uuid4(), { serial_number = string.rep("A", 71) }, p.tok)
  err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION")
  -- an unknown client cannot sign; a deregistered one neither
  st, b = A:call("PUT", base .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1",
    { state = "ACTIVE", client_id = core.crypto.uuid4() }, p.tok)
  err(st, b, 400, "E_CLIENT_NOT_FOUND")
  local c = A:ok("PATCH", base .. "/client/" .. p.client_id, { state = "DEREGISTERED" }, p.tok)
  lu.assertEquals(c.state, "DEREGISTERED")
  st, b = A:call("PUT", base .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1",
    { state = "ACTIVE", client_id = p.client_id }, p.tok)
  err(st, b, 400, "E_CLIENT_DEREGISTERED")
  A:ok("PATCH", base .. "/client/" .. p.client_id, { state = "REGISTERED" }, p.tok)
  lu.assertEquals(A:tx(p, core.crypto.uuid4(), 1, "ACTIVE").state, "ACTIVE")
  st, b = A:call("GET", base .. "/client/" .. core.crypto.uuid4(), nil, p.tok)
  err(st, b, 404, "E_CLIENT_NOT_FOUND")
end

function TestRejections.test_tss_limit_and_lists()
  local tok = A:sign_token()
  for _ = 1, 5 do A:ok("PUT", "/api/v2/tss/" .. core.crypto.uuid4(), {}, tok) end
  local st, b = A:call("PUT", "/api/v2/tss/" .. core.crypto.uuid4(), {}, tok)
  err(st, b, 403, "E_TSS_LIMIT_REACHED")
  local l = A:ok("GET", "/api/v2/tss?limit=2&offset=1", nil, tok)
  lu.assertEquals(l.count, 2)
  lu.assertEquals(#A:ok("GET", "/api/v2/tss?states[]=INITIALIZED", nil, tok).data, 0)
  lu.assertEquals(#A:ok("GET", "/api/v2/tss?states[]=CREATED&states[]=INITIALIZED", nil, tok).data, 5)
  st, b = A:call("GET", "/api/v2/tss?limit=101", nil, tok)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "limit")
end

function TestRejections.test_management_validation()
  local mt = A:auth("/api/v0", A.sb.api_key, A.sb.api_secret)
  local st, b = A:call("POST", "/api/v0/organizations", { name = "No address" }, mt)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "address_line1")
  st, b = A:call("POST", "/api/v0/organizations", { name = "x", address_line1 = "a", zip = "1", town = "t",
    country_code = "DE" }, mt)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "body/country_code")
  st, b = A:call("POST", "/api/v0/organizations/" .. A.sb.organization_id .. "/api-keys", {}, mt)
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "name")
  st, b = A:call("GET", "/api/v0/organizations/" .. core.crypto.uuid4(), nil, mt)
  err(st, b, 404, "E_NOT_FOUND")
  -- a disabled key cannot log in
  local k = A:ok("POST", "/api/v0/organizations/" .. A.sb.organization_id .. "/api-keys",
    { name = "off", status = "disabled" }, mt)
  st, b = A:call("POST", "/api/v2/auth", { api_key = k.key, api_secret = k.secret })
  err(st, b, 401, json.null)
  -- unknown endpoint
  st, b = A:call("GET", "/api/v2/nothing", nil, mt)
  err(st, b, 404, "E_NOT_FOUND")
end

function TestRejections.test_body_over_1mb()
  local st, b, h = A:call("POST", "/api/v2/auth", string.rep("a", 1024 * 1024 + 1), nil,
    { ["X-Request-Id"] = "big-1" })
  err(st, b, 413, json.null)
  lu.assertEquals(h["request-id"], "big-1")
  -- exactly 1 MB is read (and then rejected as JSON, not for its size)
  st, b = A:call("POST", "/api/v2/auth", string.rep(" ", 1024 * 1024 - 2) .. "{}")
  lu.assertStrContains(err(st, b, 400, "E_FAILED_SCHEMA_VALIDATION"), "api_key")
end

function TestRejections.test_tx_limit_reached()
  local p = A:provision("CLIENT")
  for _ = 1, 2000 do A:tx(p, core.crypto.uuid4(), 1, "ACTIVE") end
  local tss = A:ok("GET", "/api/v2/tss/" .. p.tss_id, nil, p.tok)
  lu.assertEquals(tss.number_active_transactions, 2000)
  local st, b = A:call("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. core.crypto.uuid4() .. "?tx_revision=1",
    { state = "ACTIVE", client_id = p.client_id }, p.tok)
  lu.assertStrContains(err(st, b, 400, "E_TX_LIMIT_REACHED"), "2000")
end

local rc = lu.LuaUnit.run()
A:stop()
os.exit(rc)
