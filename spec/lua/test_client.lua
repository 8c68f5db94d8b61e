-- The Lua client against the sandbox: the whole seed flow through the public
-- API (managed organization -> API key -> SIGN DE -> TSS -> PIN -> INITIALIZED
-- -> client -> transaction ACTIVE -> FINISHED -> read back, QR verified),
-- token caching, connection reuse, proactive refresh, query encoding, misuse.
local lu = require "luaunit"
local fiskaly = require "fiskaly"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local helper = require "helpers.sandbox"

local sb = helper.start()

local function collector()
  local events = {}
  return events, function(ev) events[#events + 1] = ev end
end

local function count(events, pred)
  local n = 0
  for _, e in ipairs(events) do if pred(e) then n = n + 1 end end
  return n
end

local function find(list, id)
  for _, x in ipairs(list) do if x._id == id then return x end end
end

TestClientFlow = {}

function TestClientFlow.test_full_seed_flow()
  local events, log = collector()
  local hub = fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret, log = log }
  lu.assertEquals(hub.sign.base_url, sb.base_url .. "/api/v2")
  lu.assertEquals(hub.management.base_url, sb.base_url .. "/api/v0")

  -- Management: auth, managed organization, its API key
  local tok = assert(hub.management:auth())
  lu.assertEquals(tok.access_token_claims.organization_id, sb.organization_id)
  local org = assert(hub.management:create_organization{
    name = "Test Store " .. core.crypto.uuid4():sub(1, 8), managed_by_organization_id = sb.organization_id,
    address_line1 = "Unter den Linden 1", zip = "10117", town = "Berlin", country_code = "DEU",
  })
  lu.assertTrue(fiskaly.sign_de.validate.is_uuid(org._id))
  lu.assertEquals(org.managed_by_organization_id, sb.organization_id)
  local got = assert(hub.management:get_organization(org._id))
  lu.assertEquals(got.name, org.name)
  local orgs = assert(hub.management:list_organizations{ limit = 100 })
  lu.assertNotNil(find(orgs.data, org._id), "list_organizations contains the new organization")

  local key = assert(hub.management:create_api_key(org._id, {
    name = "pos", status = "enabled", managed_by_organization_id = sb.organization_id }))
  lu.assertIsString(key.key)
  lu.assertIsString(key.secret)
  local keys = assert(hub.management:list_api_keys(org._id))
  lu.assertNotNil(find(keys.data, key._id), "list_api_keys contains the new key")
  for _, k in ipairs(keys.data) do lu.assertNil(k.secret, "a listed key never carries its secret") end

  -- SIGN DE with the organization's key, sharing the hub's HTTP session
  local pos = hub:with_credentials(key.key, key.secret)
  local stok = assert(pos.sign:auth())
  lu.assertEquals(stok.access_token_claims.organization_id, org._id)

  local tss_id = fiskaly.uuid4()
  local tss = assert(pos.sign:create_tss(tss_id, { metadata = { shop = "test" } }))
  lu.assertEquals(tss.state, "CREATED")
  lu.assertIsString(tss.admin_puk)
  lu.assertTrue(#tss.admin_puk >= 10)
  local puk = tss.admin_puk
  lu.assertEquals(assert(pos.sign:get_tss(tss_id)).state, "CREATED")
  local created = assert(pos.sign:list_tss{ states = { "CREATED" } })
  lu.assertNotNil(find(created.data, tss_id), "states[0]=CREATED lists the new TSS")
  local initialized = assert(pos.sign:list_tss{ states = { "INITIALIZED" } })
  lu.assertNil(find(initialized.data, tss_id), "states[0]=INITIALIZED does not")

  lu.assertEquals(assert(pos.sign:update_tss(tss_id, { state = "UNINITIALIZED" })).state, "UNINITIALIZED")
  local pin = "4711-0815-42"
  assert(pos.sign:change_admin_pin(tss_id, puk, pin))
  assert(pos.sign:admin_auth(tss_id, pin))
  local init = assert(pos.sign:update_tss(tss_id, { state = "INITIALIZED" }))
  lu.assertEquals(init.state, "INITIALIZED")

  local client_id = fiskaly.uuid4()
  local c = assert(pos.sign:create_client(tss_id, client_id, { serial_number = "POS 001" }))
  lu.assertEquals(c.state, "REGISTERED")
  lu.assertEquals(c.serial_number, "POS 001")
  lu.assertEquals(assert(pos.sign:get_client(tss_id, client_id)).serial_number, "POS 001")
  local clients = assert(pos.sign:list_clients(tss_id))
  lu.assertNotNil(find(clients.data, client_id))
  local upd = assert(pos.sign:update_client(tss_id, client_id, { state = "REGISTERED", metadata = { lane = "1" } }))
  lu.assertEquals(upd.metadata.lane, "1")
  assert(pos.sign:admin_logout(tss_id))

  -- a sale: ACTIVE (revision 1) then FINISHED (revision 2) with a receipt
  local tx_id = fiskaly.uuid4()
  local started = assert(pos.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id }))
  lu.assertEquals(started.state, "ACTIVE")
  lu.assertEquals(started.revision, 1)
  local finished = assert(pos.sign:upsert_transaction(tss_id, tx_id, 2, {
    state = "FINISHED", client_id = client_id,
    schema = { standard_v1 = { receipt = {
      receipt_type = "RECEIPT",
      amounts_per_vat_rate = json.array{ { vat_rate = "NORMAL", amount = "21.42" } },
      amounts_per_payment_type = json.array{ { payment_type = "NON_CASH", amount = "21.42" } },
    } } },
  }))
  lu.assertEquals(finished.state, "FINISHED")
  lu.assertEquals(finished.latest_revision, 2)
  lu.assertStrContains(finished.qr_code_data, "Beleg^21.42_0.00_0.00_0.00_0.00^21.42:Unbar")

  local back = assert(pos.sign:get_transaction(tss_id, tx_id))
  lu.assertEquals(back.state, "FINISHED")
  lu.assertEquals(back.qr_code_data, finished.qr_code_data)
  lu.assertEquals(assert(pos.sign:get_transaction(tss_id, tx_id, 1)).state, "ACTIVE")
  lu.assertEquals(assert(pos.sign:get_transaction(tss_id, finished.number)).revision, 2)
  local done = assert(pos.sign:list_transactions(tss_id, { states = { "FINISHED" } }))
  lu.assertNotNil(find(done.data, tx_id))
  local active = assert(pos.sign:list_transactions(tss_id, { states = { "ACTIVE" } }))
  lu.assertNil(find(active.data, tx_id))

  local v = core.tse.verify_qr(finished.qr_code_data)
  lu.assertTrue(v.valid, tostring(v.reason))

  -- tokens were cached: exactly the two explicit authentications, nothing else
  lu.assertEquals(count(events, function(e) return e.event == "auth" end), 2)
  lu.assertEquals(hub.management:auth_count(), 1)
  lu.assertEquals(pos.sign:auth_count(), 1)
  -- one keep-alive connection served the whole flow (hub and pos share the session),
  -- except that each request which must never be sent twice (POSTs other than
  -- /auth, PIN/PUK calls) gets a connection of its own: libcurl silently resends
  -- a request once when a reused connection dies before any answer byte
  local retry = require "fiskaly.retry"
  local opened, unsafe = 0, 0
  for _, e in ipairs(events) do
    if retry.safe{ method = e.method, path = e.path, query = e.path:find("/tx/") and { tx_revision = 1 } or nil } then
      opened = opened + (e.connects or 0)
    else
      unsafe = unsafe + 1
      lu.assertEquals(e.connects, 1, e.method .. " " .. e.path)
    end
  end
  lu.assertEquals(opened, 1)
  lu.assertTrue(unsafe >= 4)
  -- every request was logged with its method, path, status and our request id
  for _, e in ipairs(events) do
    lu.assertIsString(e.method)
    lu.assertIsString(e.path)
    lu.assertIsNumber(e.status)
    lu.assertTrue(fiskaly.sign_de.validate.is_uuid(e.request_id), "request id " .. tostring(e.request_id))
    lu.assertNotStrContains(e.path, "?")
  end
end

function TestClientFlow.test_first_call_authenticates_implicitly()
  local events, log = collector()
  local hub = fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret, log = log }
  local list = assert(hub.management:list_organizations())
  lu.assertIsTable(list.data)
  assert(hub.management:get_organization(sb.organization_id))
  lu.assertEquals(events[1].event, "auth")
  lu.assertEquals(events[1].reason, "initial")
  lu.assertEquals(events[1].grant, "api_key")
  lu.assertEquals(count(events, function(e) return e.event == "auth" end), 1)
  lu.assertEquals(#events, 3)
end

-- The token is refreshed shortly before it expires (clock injected, no sleeping).
function TestClientFlow.test_refresh_before_expiry()
  local now = os.time()
  local events, log = collector()
  local hub = fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret, log = log,
    clock = function() return now end }
  local tok = assert(hub.management:auth())
  local lifetime = tok.access_token_expires_in
  lu.assertTrue(lifetime > 0)
  now = now + lifetime // 2
  assert(hub.management:list_organizations())
  lu.assertEquals(hub.management:auth_count(), 1, "half-way through its lifetime the token is reused")
  now = now + lifetime // 2 - 1  -- within the refresh margin, still valid on the server
  assert(hub.management:list_organizations())
  lu.assertEquals(hub.management:auth_count(), 2)
  local last_auth
  for _, e in ipairs(events) do if e.event == "auth" then last_auth = e end end
  lu.assertEquals(last_auth.reason, "expiring")
  lu.assertEquals(last_auth.grant, "refresh_token")
  lu.assertEquals(last_auth.status, 200)
end

TestClientUnits = {}

function TestClientUnits.test_query_encoding()
  local q = fiskaly.client.encode_query
  lu.assertEquals(q(nil), "")
  lu.assertEquals(q{}, "")
  lu.assertEquals(q{ states = { "FINISHED", "CANCELLED" }, limit = 10, order = "desc" },
    "?limit=10&order=desc&states%5B0%5D=FINISHED&states%5B1%5D=CANCELLED")
  lu.assertEquals(q{ show_deleted = false, name = "a b&c" }, "?name=a%20b%26c&show_deleted=false")
  lu.assertEquals(q{ tx_revision = 2.0 }, "?tx_revision=2")
end

function TestClientUnits.test_base_urls()
  local c = fiskaly.new{ api_key = "k", api_secret = "s" }
  lu.assertEquals(c.sign.base_url, "https://kassensichv-middleware.fiskaly.com/api/v2")
  lu.assertEquals(c.management.base_url, "https://dashboard.fiskaly.com/api/v0")
  c = fiskaly.new{ api_key = "k", api_secret = "s", base_url = "http://127.0.0.1:1/",
    sign_base_url = "https://sign.example/api/v2/" }
  lu.assertEquals(c.sign.base_url, "https://sign.example/api/v2")
  lu.assertEquals(c.management.base_url, "http://127.0.0.1:1/api/v0")
  c:close()
end

function TestClientUnits.test_misuse_raises()
  lu.assertErrorMsgContains("options table", fiskaly.new)
  lu.assertErrorMsgContains("api_key is required", fiskaly.new, { api_secret = "s" })
  lu.assertErrorMsgContains("api_secret is required", fiskaly.new, { api_key = "k" })
  lu.assertErrorMsgContains("base_url must be an http(s) URL", fiskaly.new,
    { api_key = "k", api_secret = "s", base_url = "ftp://x" })
  lu.assertErrorMsgContains("log must be a function", fiskaly.new, { api_key = "k", api_secret = "s", log = 1 })
  lu.assertErrorMsgContains("timeout_ms", fiskaly.new, { api_key = "k", api_secret = "s", timeout_ms = -5 })
  lu.assertErrorMsgContains("unknown timeout class", fiskaly.new,
    { api_key = "k", api_secret = "s", timeouts = { foo = 1 } })
  local c = fiskaly.new{ api_key = "k", api_secret = "s", base_url = sb.base_url }
  lu.assertErrorMsgContains("api_secret is required", c.with_credentials, c, "k2")
  lu.assertErrorMsgContains("tss_id must be a string", c.sign.get_tss, c.sign, nil)
  lu.assertErrorMsgContains("body must be a table", c.sign.update_tss, c.sign, fiskaly.uuid4(), "x")
  lu.assertErrorMsgContains("tx_revision must be an integer", c.sign.upsert_transaction, c.sign,
    fiskaly.uuid4(), fiskaly.uuid4(), "1", { state = "ACTIVE", client_id = fiskaly.uuid4() })
end

function TestClientUnits.test_unreachable_service_is_a_network_error()
  local c = fiskaly.new{ api_key = "k", api_secret = "s", base_url = "http://127.0.0.1:1",
    retry = { attempts = 3, base_ms = 5, max_ms = 20, seed = 1 } }
  local r, err = c.sign:list_tss()
  lu.assertEquals(err.attempts, 3)  -- a refused connection is retried (nothing was sent)
  lu.assertNil(r)
  lu.assertTrue(fiskaly.is_error(err))
  lu.assertEquals(err.kind, "network")
  lu.assertEquals(err.code, "COULDNT_CONNECT")
  lu.assertEquals(err.path, "/auth")
  lu.assertTrue(err.retryable)
  lu.assertStrContains(tostring(err), "fiskaly network error COULDNT_CONNECT")
end

local rc = lu.LuaUnit.run()
sb.stop()
os.exit(rc)
