-- The client's errors against the sandbox: each one clear, naming the problem,
-- asserted on kind / status / code and message text. Wrong API secret, wrong
-- admin PIN (never sent twice), amount "10.0" (client-side and the sandbox's own
-- 400), wrong TSS state, unknown TSS, expired token (healed by exactly one
-- re-authentication), and no secret in any error string or log event.
local lu = require "luaunit"
local fiskaly = require "fiskaly"
local json = require "fiskaly.json"
local core = require "fiskaly.core"
local helper = require "helpers.sandbox"

local sb = helper.start()

local events = {}
local function log(ev) events[#events + 1] = ev end

local PIN = "pin-31415926"
local secrets = { sb.api_secret, PIN }   -- grows with the organization's secret and the PUK
local seen_errors = {}                   -- every error object returned during the run

local function expect_err(res, err)
  lu.assertNil(res, "expected an error, got a result")
  lu.assertTrue(fiskaly.is_error(err), "expected an error object, got " .. tostring(err))
  seen_errors[#seen_errors + 1] = err
  return err
end

local function since(mark)
  local out = {}
  for i = mark + 1, #events do out[#out + 1] = events[i] end
  return out
end

local function receipt(amount)
  return { standard_v1 = { receipt = {
    receipt_type = "RECEIPT",
    amounts_per_vat_rate = json.array{ { vat_rate = "NORMAL", amount = amount } },
    amounts_per_payment_type = json.array{ { payment_type = "CASH", amount = amount } },
  } } }
end

-- Each test gets its own managed organization and key (TEST allows 5 live TSS per organization).
local hub = fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret, log = log }
local key, pos

local function fresh_organization()
  local org = assert(hub.management:create_organization{
    name = "Errors Test " .. fiskaly.uuid4():sub(1, 8), managed_by_organization_id = sb.organization_id,
    address_line1 = "Hauptstr. 1", zip = "80331", town = "Muenchen", country_code = "DEU",
  })
  key = assert(hub.management:create_api_key(org._id, { name = "errors", status = "enabled" }))
  secrets[#secrets + 1] = key.secret
  pos = hub:with_credentials(key.key, key.secret)
end

-- A TSS brought to `target` ("UNINITIALIZED" with the PIN set, or "INITIALIZED"
-- with a client); returns tss_id, client_id.
local function new_tss(target)
  local tss_id = fiskaly.uuid4()
  local tss = assert(pos.sign:create_tss(tss_id))
  secrets[#secrets + 1] = tss.admin_puk
  assert(pos.sign:update_tss(tss_id, { state = "UNINITIALIZED" }))
  assert(pos.sign:change_admin_pin(tss_id, tss.admin_puk, PIN))
  if target == "UNINITIALIZED" then return tss_id end
  assert(pos.sign:admin_auth(tss_id, PIN))
  assert(pos.sign:update_tss(tss_id, { state = "INITIALIZED" }))
  local client_id = fiskaly.uuid4()
  assert(pos.sign:create_client(tss_id, client_id, { serial_number = "ERR-" .. client_id:sub(1, 8) }))
  assert(pos.sign:admin_logout(tss_id))
  return tss_id, client_id
end

local function expire_tokens()
  local s <close> = core.http.session{}
  local r = assert(s:request{ method = "POST", url = sb.base_url .. "/_sandbox/expire-tokens", body = "{}" })
  lu.assertEquals(r.status, 200)
end

TestErrors = {}

function TestErrors.setUp()
  fresh_organization()
end

function TestErrors.test_wrong_api_secret()
  local bad = fiskaly.new{ base_url = sb.base_url, api_key = key.key, api_secret = "not-the-secret", log = log }
  local err = expect_err(bad.sign:list_tss())
  lu.assertEquals(err.kind, "api")
  lu.assertEquals(err.status, 401)
  lu.assertNil(err.code)                             -- fiskaly sends code: null here
  lu.assertStrContains(err.message, "Invalid credentials")
  lu.assertStrContains(err.message, "check the API key and secret")
  lu.assertEquals(err.method, "POST")
  lu.assertEquals(err.path, "/auth")
  lu.assertFalse(err.retryable)
  lu.assertStrContains(tostring(err), "fiskaly api error 401: Invalid credentials")
  lu.assertNotStrContains(tostring(err), "not-the-secret")
  -- management too
  err = expect_err(bad.management:list_organizations())
  lu.assertEquals(err.status, 401)
end

function TestErrors.test_wrong_admin_pin_is_reported_and_not_sent_twice()
  local tss_id = new_tss("UNINITIALIZED")
  local mark = #events
  local err = expect_err(pos.sign:admin_auth(tss_id, "000000-wrong"))
  lu.assertEquals(err.kind, "api")
  lu.assertEquals(err.status, 401)
  lu.assertEquals(err.code, "E_UNAUTHORIZED")
  lu.assertStrContains(err.message, "admin_pin")
  lu.assertEquals(err.path, "/tss/" .. tss_id .. "/admin/auth")
  lu.assertStrContains(tostring(err), "fiskaly api error 401 E_UNAUTHORIZED: wrong admin_pin")
  lu.assertStrContains(tostring(err), "(POST /tss/" .. tss_id .. "/admin/auth, request-id ")
  lu.assertNotStrContains(tostring(err), "000000-wrong")
  local ev = since(mark)
  local pin_requests, auths = 0, 0
  for _, e in ipairs(ev) do
    if e.path == "/tss/" .. tss_id .. "/admin/auth" then pin_requests = pin_requests + 1 end
    if e.event == "auth" then auths = auths + 1 end
  end
  lu.assertEquals(pin_requests, 1, "a wrong PIN is sent once (each attempt counts toward the block)")
  lu.assertEquals(auths, 0, "a wrong PIN is not mistaken for an expired token")
  -- the right PIN still works
  assert(pos.sign:admin_auth(tss_id, PIN))
  assert(pos.sign:admin_logout(tss_id))
end

function TestErrors.test_amount_10_0_rejected_client_side()
  local tss_id, client_id = new_tss("INITIALIZED")
  local tx_id = fiskaly.uuid4()
  assert(pos.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id }))
  local mark = #events
  local err = expect_err(pos.sign:upsert_transaction(tss_id, tx_id, 2,
    { state = "FINISHED", client_id = client_id, schema = receipt("10.0") }))
  lu.assertEquals(err.kind, "validation")
  lu.assertEquals(err.field, "schema.standard_v1.receipt.amounts_per_vat_rate[0].amount")
  lu.assertStrContains(err.message, '"10.0" is not a valid amount')
  lu.assertStrContains(err.message, '"10.00"')
  lu.assertEquals(#events, mark, "nothing was sent")
  -- a number instead of a string is named too
  local r2 = receipt("10.00")
  r2.standard_v1.receipt.amounts_per_payment_type[1].amount = 10
  err = expect_err(pos.sign:upsert_transaction(tss_id, tx_id, 2, { state = "FINISHED", client_id = client_id, schema = r2 }))
  lu.assertEquals(err.field, "schema.standard_v1.receipt.amounts_per_payment_type[0].amount")
  lu.assertStrContains(err.message, "must be a string")
  -- the transaction is untouched and finishes with a proper amount
  local ok = assert(pos.sign:upsert_transaction(tss_id, tx_id, 2,
    { state = "FINISHED", client_id = client_id, schema = receipt("10.00") }))
  lu.assertEquals(ok.state, "FINISHED")
end

function TestErrors.test_amount_10_0_rejected_by_the_sandbox()
  local tss_id, client_id = new_tss("INITIALIZED")
  local tx_id = fiskaly.uuid4()
  assert(pos.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id }))
  local err = expect_err(pos.sign:upsert_transaction(tss_id, tx_id, 2,
    { state = "FINISHED", client_id = client_id, schema = receipt("10.0") }, { validate = false }))
  lu.assertEquals(err.kind, "api")
  lu.assertEquals(err.status, 400)
  lu.assertEquals(err.code, "E_FAILED_SCHEMA_VALIDATION")
  lu.assertStrContains(err.message, "amount")
  lu.assertFalse(err.retryable)
end

function TestErrors.test_wrong_tss_state()
  -- a client on an UNINITIALIZED TSS (admin authenticated, so only the state is wrong)
  local tss_id = new_tss("UNINITIALIZED")
  assert(pos.sign:admin_auth(tss_id, PIN))
  local err = expect_err(pos.sign:create_client(tss_id, fiskaly.uuid4(), { serial_number = "POS 9" }))
  lu.assertEquals(err.kind, "state")
  lu.assertEquals(err.status, 400)
  lu.assertEquals(err.code, "E_TSS_NOT_INITIALIZED")
  lu.assertStrContains(err.message, "UNINITIALIZED")
  lu.assertStrContains(tostring(err), "fiskaly state error 400 E_TSS_NOT_INITIALIZED")
  -- an illegal transition
  local fresh = fiskaly.uuid4()
  local t = assert(pos.sign:create_tss(fresh))
  secrets[#secrets + 1] = t.admin_puk
  err = expect_err(pos.sign:update_tss(fresh, { state = "INITIALIZED" }))
  lu.assertEquals(err.kind, "state")
  lu.assertEquals(err.code, "E_ILLEGAL_TSS_STATE_CHANGE")
  assert(pos.sign:admin_logout(tss_id))
end

function TestErrors.test_unknown_tss()
  local id = fiskaly.uuid4()
  local err = expect_err(pos.sign:get_tss(id))
  lu.assertEquals(err.kind, "api")
  lu.assertEquals(err.status, 404)
  lu.assertEquals(err.code, "E_TSS_NOT_FOUND")
  lu.assertStrContains(err.message, id)
  lu.assertFalse(err.retryable)
  err = expect_err(pos.sign:upsert_transaction(id, fiskaly.uuid4(), 1, { state = "ACTIVE", client_id = fiskaly.uuid4() }))
  lu.assertEquals(err.code, "E_TSS_NOT_FOUND")
end

function TestErrors.test_client_side_validation_names_the_field()
  local id = fiskaly.uuid4()
  local err = expect_err(pos.sign:get_tss("not-a-uuid"))
  lu.assertEquals(err.kind, "validation")
  lu.assertEquals(err.field, "tss_id")
  lu.assertStrContains(err.message, "must be a UUID")
  err = expect_err(pos.sign:admin_auth(id, "12345"))
  lu.assertEquals(err.field, "admin_pin")
  lu.assertStrContains(err.message, "at least 6 characters")
  lu.assertNotStrContains(err.message, "12345")
  err = expect_err(pos.sign:change_admin_pin(id, "short", "123456"))
  lu.assertEquals(err.field, "admin_puk")
  lu.assertStrContains(err.message, "at least 10 characters")
  err = expect_err(pos.sign:create_client(id, fiskaly.uuid4(), { serial_number = "POS_1" }))
  lu.assertEquals(err.field, "serial_number")
  lu.assertStrContains(err.message, "must not contain '/' or '_'")
  err = expect_err(pos.sign:create_client(id, fiskaly.uuid4(), { serial_number = " POS1" }))
  lu.assertStrContains(err.message, "whitespace")
  err = expect_err(pos.sign:create_client(id, fiskaly.uuid4(), { serial_number = string.rep("A", 71) }))
  lu.assertStrContains(err.message, "at most 70")
  err = expect_err(pos.sign:upsert_transaction(id, fiskaly.uuid4(), 0, { state = "ACTIVE", client_id = id }))
  lu.assertEquals(err.field, "tx_revision")
  err = expect_err(pos.sign:upsert_transaction(id, fiskaly.uuid4(), 2, { state = "FINISHED", client_id = id }))
  lu.assertEquals(err.field, "schema")
  lu.assertStrContains(err.message, "required to finish")
  err = expect_err(pos.sign:upsert_transaction(id, fiskaly.uuid4(), 1, { state = "DONE", client_id = id }))
  lu.assertEquals(err.field, "state")
  local r = receipt("1.00")
  r.standard_v1.receipt.amounts_per_vat_rate[1].vat_rate = "20"
  err = expect_err(pos.sign:upsert_transaction(id, fiskaly.uuid4(), 2, { state = "FINISHED", client_id = id, schema = r }))
  lu.assertEquals(err.field, "schema.standard_v1.receipt.amounts_per_vat_rate[0].vat_rate")
  err = expect_err(hub.management:create_organization{ name = "x", address_line1 = "a", zip = "1", town = "t",
    country_code = "DE" })
  lu.assertEquals(err.field, "country_code")
end

function TestErrors.test_expired_token_heals_with_one_reauth()
  local tss_id, client_id = new_tss("INITIALIZED")
  assert(pos.sign:get_tss(tss_id))      -- a cached, valid token
  expire_tokens()
  local mark = #events
  local tss = assert(pos.sign:get_tss(tss_id))
  lu.assertEquals(tss.state, "INITIALIZED")
  local ev = since(mark)
  lu.assertEquals(#ev, 3, "401, one re-auth, replay")
  lu.assertEquals(ev[1].event, "request")
  lu.assertEquals(ev[1].status, 401)
  lu.assertEquals(ev[1].code, "E_UNAUTHORIZED")
  lu.assertEquals(ev[1].attempt, 1)
  lu.assertEquals(ev[2].event, "auth")
  lu.assertEquals(ev[2].reason, "401")
  lu.assertEquals(ev[2].grant, "refresh_token")
  lu.assertEquals(ev[2].status, 200)
  lu.assertEquals(ev[3].event, "request")
  lu.assertEquals(ev[3].status, 200)
  lu.assertEquals(ev[3].attempt, 2)
  -- a transaction after the refresh goes straight through
  mark = #events
  assert(pos.sign:upsert_transaction(tss_id, fiskaly.uuid4(), 1, { state = "ACTIVE", client_id = client_id }))
  lu.assertEquals(#since(mark), 1)
end

function TestErrors.test_expired_token_during_admin_auth()
  local tss_id = new_tss("UNINITIALIZED")
  assert(pos.sign:get_tss(tss_id))
  expire_tokens()
  local mark = #events
  assert(pos.sign:admin_auth(tss_id, PIN))   -- 401 (token) -> probe 401 -> re-auth -> replay
  local ev = since(mark)
  local kinds = {}
  for _, e in ipairs(ev) do kinds[#kinds + 1] = e.event .. ":" .. tostring(e.status) end
  lu.assertEquals(kinds, { "request:401", "probe:401", "auth:200", "request:200" })
  assert(pos.sign:admin_logout(tss_id))
end

function TestErrors.test_expired_refresh_falls_back_to_api_key()
  local c = hub:with_credentials(key.key, key.secret)
  local mark = #events
  -- expire the tokens twice: the refresh token stays valid in the sandbox, so
  -- force a refusal by using a client whose refresh token is unknown (forget_token
  -- drops everything: the next call authenticates with the API key)
  assert(c.sign:list_tss())
  c.sign:forget_token()
  assert(c.sign:list_tss())
  local grants = {}
  for _, e in ipairs(since(mark)) do if e.event == "auth" then grants[#grants + 1] = e.grant end end
  lu.assertEquals(grants, { "api_key", "api_key" })
end

-- Runs last (alphabetical order within the table is not guaranteed: this is a separate table).
TestZNoSecrets = {}

function TestZNoSecrets.setUp()
  fresh_organization()
end

function TestZNoSecrets.test_no_secret_in_any_error_or_log_event()
  lu.assertTrue(#seen_errors >= 15, "the run produced errors to inspect: " .. #seen_errors)
  lu.assertTrue(#events >= 40, "the run produced log events to inspect: " .. #events)
  local texts = {}
  for _, e in ipairs(seen_errors) do
    texts[#texts + 1] = tostring(e)
    for k, v in pairs(e) do texts[#texts + 1] = tostring(k) .. "=" .. tostring(v) end
  end
  for _, ev in ipairs(events) do
    for k, v in pairs(ev) do texts[#texts + 1] = tostring(k) .. "=" .. tostring(v) end
  end
  texts[#texts + 1] = tostring(hub)
  texts[#texts + 1] = tostring(pos)
  texts[#texts + 1] = tostring(pos.sign)
  local all = table.concat(texts, "\n")
  for _, s in ipairs(secrets) do
    lu.assertNotStrContains(all, s, "a secret leaked")
  end
  -- tokens: the sandbox's are JWT-shaped; no JWT header anywhere
  lu.assertNotStrContains(all, "eyJ")
  -- and the client object does not carry the secret as a field
  for k, v in pairs(pos) do
    lu.assertNotEquals(v, key.secret, "client field " .. tostring(k))
  end
end

local rc = lu.LuaUnit.run()
sb.stop()
os.exit(rc)
