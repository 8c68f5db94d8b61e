-- The whole seed flow against fiskaly-sandbox over raw HTTP (core.http, no client
-- library): Management auth -> managed org -> API key -> SIGN DE auth -> TSS ->
-- UNINITIALIZED -> admin PIN -> admin auth -> INITIALIZED -> client -> tx ACTIVE ->
-- FINISHED with a standard_v1 receipt -> GET; then the QR code's signature is
-- checked independently of the sandbox.
local lu = require "luaunit"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local api = require "sandbox.api"

local A = api.start()

TestFlow = {}

function TestFlow.test_start_lines()
  local sb = A.sb
  lu.assertStrMatches(sb.base_url, "http://127%.0%.0%.1:%d+")
  lu.assertStrMatches(sb.api_key, "test_[%w]+")
  lu.assertTrue(#sb.api_secret >= 32)
  lu.assertStrMatches(sb.organization_id, "%x+%-%x+%-4%x+%-[89ab]%x+%-%x+")
  lu.assertIsNumber(sb.pid)
end

function TestFlow.test_seed_flow()
  -- Management API
  local mauth = A:ok("POST", "/api/v0/auth", { api_key = A.sb.api_key, api_secret = A.sb.api_secret })
  lu.assertIsString(mauth.access_token)
  lu.assertEquals(mauth.access_token_expires_in, 86400)
  lu.assertEquals(mauth.refresh_token_expires_in, 172800)
  lu.assertIsString(mauth.refresh_token)
  lu.assertTrue(mauth.access_token_expires_at > os.time() - 5)
  lu.assertEquals(mauth.access_token_claims.organization_id, A.sb.organization_id)
  local mt = mauth.access_token

  local org = A:ok("POST", "/api/v0/organizations", {
    name = "My Store Berlin", managed_by_organization_id = A.sb.organization_id,
    address_line1 = "Unter den Linden 1", zip = "10117", town = "Berlin", country_code = "DEU",
  }, mt)
  lu.assertEquals(org._type, "MANAGED_ORGANIZATION")
  lu.assertEquals(org.managed_by_organization_id, A.sb.organization_id)
  lu.assertEquals(org.name, "My Store Berlin")
  lu.assertEquals(A:ok("GET", "/api/v0/organizations/" .. org._id, nil, mt)._id, org._id)
  local orgs = A:ok("GET", "/api/v0/organizations?managed_by_organization_id=" .. A.sb.organization_id, nil, mt)
  lu.assertEquals(orgs._type, "ORGANIZATION_LIST")
  local found = false
  for _, o in ipairs(orgs.data) do found = found or o._id == org._id end
  lu.assertTrue(found)

  local key = A:ok("POST", "/api/v0/organizations/" .. org._id .. "/api-keys",
    { name = "sign-de-key", status = "enabled", managed_by_organization_id = A.sb.organization_id }, mt)
  lu.assertIsString(key.key)
  lu.assertIsString(key.secret)
  lu.assertEquals(key.status, "enabled")
  -- the secret is shown only once
  local keys = A:ok("GET", "/api/v0/organizations/" .. org._id .. "/api-keys", nil, mt)
  lu.assertEquals(#keys.data, 1)
  lu.assertEquals(keys.data[1].key, key.key)
  lu.assertNil(keys.data[1].secret)

  -- SIGN DE with the managed organization's key
  local sauth = A:ok("POST", "/api/v2/auth", { api_key = key.key, api_secret = key.secret })
  lu.assertEquals(sauth.access_token_claims.organization_id, org._id)
  lu.assertEquals(sauth.access_token_claims.env, "TEST")
  local tok = sauth.access_token
  -- a management token is not a SIGN DE token
  local st = A:call("GET", "/api/v2/tss", nil, mt)
  lu.assertEquals(st, 401)

  local tss_id = core.crypto.uuid4()
  local base = "/api/v2/tss/" .. tss_id
  local tss = A:ok("PUT", base, { metadata = { custom_field = "custom_value" } }, tok)
  lu.assertEquals(tss.state, "CREATED")
  lu.assertEquals(tss._id, tss_id)
  lu.assertEquals(tss._type, "TSS")
  lu.assertEquals(tss._env, "TEST")
  lu.assertEquals(tss._version, "2.1.35")
  lu.assertTrue(#tss.admin_puk >= 10)
  lu.assertEquals(tss.metadata.custom_field, "custom_value")
  lu.assertEquals(tss.signature_algorithm, "ecdsa-plain-SHA256")
  lu.assertEquals(tss.signature_timestamp_format, "unixTime")
  lu.assertStrContains(tss.certificate, "BEGIN CERTIFICATE")
  -- serial_number = hex(SHA-256(public key point))
  local point = core.crypto.b64decode(tss.public_key)
  lu.assertEquals(#point, 65)
  lu.assertEquals(tss.serial_number, core.crypto.hex(core.crypto.sha256(point)))
  local puk = tss.admin_puk

  -- create is idempotent while CREATED (same PUK again)
  lu.assertEquals(A:ok("PUT", base, {}, tok).admin_puk, puk)

  tss = A:ok("PATCH", base, { state = "UNINITIALIZED" }, tok)
  lu.assertEquals(tss.state, "UNINITIALIZED")
  lu.assertTrue(tss.time_uninit > 0)
  lu.assertIsString(tss.bsi_certification_id)
  lu.assertNil(tss.admin_puk)                     -- only while CREATED

  lu.assertEquals(A:ok("PATCH", base .. "/admin", { admin_puk = puk, new_admin_pin = "1234567890" }, tok), {})
  lu.assertEquals(A:ok("POST", base .. "/admin/auth", { admin_pin = "1234567890" }, tok), {})
  tss = A:ok("PATCH", base, { state = "INITIALIZED", description = "fiskaly sign cloud-TSE (spec)" }, tok)
  lu.assertEquals(tss.state, "INITIALIZED")
  lu.assertTrue(tss.time_init > 0)
  lu.assertNotEquals(tss.signature_counter, "0")  -- initialisation signs system logs
  lu.assertEquals(tss.description, "fiskaly sign cloud-TSE (spec)")

  local client_id = core.crypto.uuid4()
  local client = A:ok("PUT", base .. "/client/" .. client_id, { serial_number = "ERS " .. client_id }, tok)
  lu.assertEquals(client.state, "REGISTERED")
  lu.assertEquals(client._type, "CLIENT")
  lu.assertEquals(client.tss_id, tss_id)
  lu.assertEquals(A:ok("POST", base .. "/admin/logout", {}, tok), {})
  lu.assertEquals(A:ok("GET", base, nil, tok).number_registered_clients, 1)

  -- transaction: ACTIVE (rev 1), FINISHED with a receipt (rev 2)
  local tx_id = core.crypto.uuid4()
  local t1 = A:ok("PUT", base .. "/tx/" .. tx_id .. "?tx_revision=1", { state = "ACTIVE", client_id = client_id }, tok)
  lu.assertEquals(t1.state, "ACTIVE")
  lu.assertEquals(t1.revision, 1)
  lu.assertEquals(t1.latest_revision, 1)
  lu.assertEquals(t1.number, 1)
  lu.assertEquals(t1.log.operation, "Start")
  lu.assertIsNumber(t1.signature.counter)
  lu.assertNil(t1.qr_code_data)
  lu.assertEquals(A:ok("GET", base, nil, tok).number_active_transactions, 1)

  local receipt = {
    standard_v1 = { receipt = {
      receipt_type = "RECEIPT",
      amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "21.42" } },
      amounts_per_payment_type = { { payment_type = "NON_CASH", amount = "21.42" } },
    } },
  }
  local t2 = A:ok("PUT", base .. "/tx/" .. tx_id .. "?tx_revision=2",
    { state = "FINISHED", client_id = client_id, schema = receipt }, tok)
  lu.assertEquals(t2.state, "FINISHED")
  lu.assertEquals(t2.revision, 2)
  lu.assertEquals(t2.log.operation, "Finish")
  lu.assertEquals(t2.signature.counter, t1.signature.counter + 1)
  lu.assertEquals(t2.signature.algorithm, "ecdsa-plain-SHA256")
  lu.assertEquals(t2.signature.public_key, tss.public_key)
  lu.assertEquals(t2.schema.raw.process_type, "Kassenbeleg-V1")
  -- the value fiskaly's Postman collection asserts for this receipt
  lu.assertEquals(t2.schema.raw.process_data, "QmVsZWdeMjEuNDJfMC4wMF8wLjAwXzAuMDBfMC4wMF4yMS40MjpVbmJhcg==")
  lu.assertEquals(t2.schema.standard_v1.receipt.amounts_per_payment_type[1].currency_code, "EUR")
  lu.assertEquals(t2.tss_serial_number, tss.serial_number)
  lu.assertEquals(t2.client_serial_number, "ERS " .. client_id)
  lu.assertEquals(t2.time_start, t1.time_start)
  lu.assertIsNumber(t2.time_end)

  local qr = t2.qr_code_data
  local f = {}
  for part in (qr .. ";"):gmatch("([^;]*);") do f[#f + 1] = part end
  lu.assertEquals(#f, 12)
  lu.assertEquals(f[1], "V0")
  lu.assertEquals(f[2], "ERS " .. client_id)
  lu.assertEquals(f[3], "Kassenbeleg-V1")
  lu.assertEquals(f[4], "Beleg^21.42_0.00_0.00_0.00_0.00^21.42:Unbar")
  lu.assertEquals(f[5], "1")
  lu.assertEquals(f[6], tostring(t2.signature.counter))
  lu.assertEquals(f[7], os.date("!%Y-%m-%dT%H:%M:%S", t1.time_start) .. ".000Z")
  lu.assertEquals(f[8], os.date("!%Y-%m-%dT%H:%M:%S", t2.log.timestamp) .. ".000Z")
  lu.assertEquals(f[9], "ecdsa-plain-SHA256")
  lu.assertEquals(f[10], "unixTime")
  lu.assertEquals(f[11], t2.signature.value)
  lu.assertEquals(f[12], tss.public_key)

  -- Independent check: rebuild the TR-03151 FinishTransaction log from the QR
  -- fields and verify the signature with the TSS public key.
  local tbs = core.tse.log_message{
    operation_type = "FinishTransaction", client_id = f[2], process_data = f[4], process_type = f[3],
    transaction_number = tonumber(f[5]), serial_number = core.crypto.sha256(point),
    sig_alg = f[9], signature_counter = tonumber(f[6]), log_time = t2.log.timestamp, log_time_format = f[10],
  }
  local ok, curve = core.crypto.verify(point, tbs, core.crypto.b64decode(f[11]), "SHA256")
  lu.assertTrue(ok, curve)
  lu.assertEquals(curve, "P-256")
  -- a tampered amount does not verify
  local bad = core.tse.log_message{
    operation_type = "FinishTransaction", client_id = f[2], process_data = f[4]:gsub("21%.42", "21.43", 1),
    process_type = f[3], transaction_number = 1, serial_number = core.crypto.sha256(point),
    sig_alg = f[9], signature_counter = tonumber(f[6]), log_time = t2.log.timestamp, log_time_format = f[10],
  }
  lu.assertFalse((core.crypto.verify(point, bad, core.crypto.b64decode(f[11]), "SHA256")))
  -- and a DER builder written here from tse-signature.md §2 (not core.tse) gives
  -- the same bytes, which verify
  local function tlv(tag, v)
    local n = #v
    local len = n < 128 and string.char(n) or n < 256 and string.char(0x81, n) or string.char(0x82, n >> 8, n & 255)
    return string.char(tag) .. len .. v
  end
  local function int(v)
    local b = ""
    repeat b = string.char(v & 255) .. b; v = v >> 8 until v == 0
    if b:byte(1) >= 0x80 then b = "\0" .. b end
    return b
  end
  local mine = tlv(0x02, "\2") .. core.crypto.unhex("060904007f000703070101")
    .. tlv(0x80, "FinishTransaction") .. tlv(0x81, f[2]) .. tlv(0x82, f[4]) .. tlv(0x83, f[3])
    .. tlv(0x85, int(tonumber(f[5]))) .. tlv(0x04, core.crypto.sha256(point))
    .. core.crypto.unhex("300c060a04007f00070101040103")
    .. tlv(0x02, int(tonumber(f[6]))) .. tlv(0x02, int(t2.log.timestamp))
  lu.assertEquals(core.crypto.hex(mine), core.crypto.hex(tbs))
  lu.assertTrue((core.crypto.verify(point, mine, core.crypto.b64decode(f[11]), "SHA256")))
  -- and the core's own QR verifier agrees
  local r = core.tse.verify_qr(qr)
  lu.assertTrue(r.valid, r.reason)

  -- GET: latest, by number, and a given revision
  local g = A:ok("GET", base .. "/tx/" .. tx_id, nil, tok)
  lu.assertEquals(g.revision, 2)
  lu.assertEquals(g.latest_revision, 2)
  lu.assertEquals(g.qr_code_data, qr)
  lu.assertEquals(A:ok("GET", base .. "/tx/1", nil, tok)._id, tx_id)
  local g1 = A:ok("GET", base .. "/tx/" .. tx_id .. "?tx_revision=1", nil, tok)
  lu.assertEquals(g1.revision, 1)
  lu.assertEquals(g1.latest_revision, 2)
  lu.assertEquals(g1.state, "ACTIVE")

  -- the signed log bytes (deprecated endpoint) verify as a whole
  local st2, _, _, raw = A:call("GET", base .. "/tx/" .. tx_id .. "/log", nil, tok)
  lu.assertEquals(st2, 200)
  local vl = core.tse.verify_log(raw, point)
  lu.assertTrue(vl.valid, vl.reason)

  -- lists
  local l = A:ok("GET", base .. "/tx?states[]=FINISHED", nil, tok)
  lu.assertEquals(l._type, "TRANSACTION_LIST")
  lu.assertEquals(l.count, 1)
  lu.assertEquals(#A:ok("GET", base .. "/tx?states[0]=ACTIVE", nil, tok).data, 0)
  lu.assertEquals(#A:ok("GET", "/api/v2/tx", nil, tok).data, 1)
  lu.assertEquals(A:ok("GET", "/api/v2/tss", nil, tok).data[1]._id, tss_id)
  lu.assertEquals(A:ok("GET", base .. "/client", nil, tok).data[1]._id, client_id)
  lu.assertEquals(A:ok("GET", "/api/v2/client", nil, tok).count, 1)
  lu.assertEquals(A:ok("GET", base .. "/client/" .. client_id, nil, tok).serial_number, "ERS " .. client_id)

  -- control endpoint: exactly this TSS, with one client and one finished tx
  local state = A:ok("GET", "/_sandbox/state")
  local mine
  for _, t in ipairs(state.tss) do if t.id == tss_id then mine = t end end
  lu.assertNotNil(mine)
  lu.assertEquals(mine.state, "INITIALIZED")
  lu.assertEquals(mine.number_of_clients, 1)
  lu.assertEquals(mine.transactions.FINISHED, 1)
  lu.assertEquals(mine.signature_counter, t2.signature.counter)

  -- teardown as in Postman: admin auth, DISABLED
  A:ok("POST", base .. "/admin/auth", { admin_pin = "1234567890" }, tok)
  local d = A:ok("PATCH", base, { state = "DISABLED" }, tok)
  lu.assertEquals(d.state, "DISABLED")
  lu.assertTrue(d.time_disable > 0)
end

function TestFlow.test_request_id_and_meta()
  local st, body, h = A:call("POST", "/api/v2/auth", { api_key = A.sb.api_key, api_secret = A.sb.api_secret },
    nil, { ["X-Request-Id"] = "spec-req-42" })
  lu.assertEquals(st, 200)
  lu.assertEquals(h["request-id"], "spec-req-42")
  lu.assertStrContains(h["content-type"], "application/json")
  local st2, _, h2 = A:call("GET", "/api/v2/tss", nil, body.access_token)
  lu.assertEquals(st2, 200)
  lu.assertStrMatches(h2["request-id"], "%x+%-%x+%-%x+%-%x+%-%x+")
end

function TestFlow.test_refresh_token()
  local a = A:ok("POST", "/api/v2/auth", { api_key = A.sb.api_key, api_secret = A.sb.api_secret })
  local b = A:ok("POST", "/api/v2/auth", { refresh_token = a.refresh_token })
  lu.assertNotEquals(b.access_token, a.access_token)
  lu.assertEquals(A:call("GET", "/api/v2/tss", nil, b.access_token), 200)
  local st, body = A:call("POST", "/api/v2/auth", { refresh_token = "not-a-token" })
  api.assert_error(lu, st, body, 401, "E_UNAUTHORIZED")
end

function TestFlow.test_cancel_order_and_raw()
  local p = A:provision("CLIENT")
  -- cancel with a receipt schema (as Odoo does)
  local tx = core.crypto.uuid4()
  A:tx(p, tx, 1, "ACTIVE")
  local c = A:tx(p, tx, 2, "CANCELLED", { standard_v1 = { receipt = {
    receipt_type = "CANCELLATION", amounts_per_vat_rate = json.array{}, amounts_per_payment_type = json.array{} } } })
  lu.assertEquals(c.state, "CANCELLED")
  lu.assertEquals(core.crypto.b64decode(c.schema.raw.process_data), "AVBelegabbruch^0.00_0.00_0.00_0.00_0.00^")
  lu.assertTrue(core.tse.verify_qr(c.qr_code_data).valid)

  -- mixed rates, numeric deprecated rates, 3-5 decimals, foreign currency, merged payments
  tx = core.crypto.uuid4()
  A:tx(p, tx, 1, "ACTIVE")
  local u = A:tx(p, tx, 2, "ACTIVE", { standard_v1 = { receipt = { receipt_type = "RECEIPT",
    amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "10.00" }, { vat_rate = "7", amount = "5.555" },
      { vat_rate = "REDUCED_1", amount = "1.00" }, { vat_rate = "NULL", amount = "-2.00" } },
    amounts_per_payment_type = { { payment_type = "CASH", amount = "10.00" }, { payment_type = "CASH", amount = "5.00", currency_code = "chf" },
      { payment_type = "NON_CASH", amount = "-0.445" }, { payment_type = "CASH", amount = "0.00" } } } } })
  lu.assertEquals(u.log.operation, "Update")
  lu.assertEquals(core.crypto.b64decode(u.schema.raw.process_data),
    "Beleg^10.00_6.56_0.00_0.00_-2.00^10.00:Bar_5.00:Bar:CHF_-0.45:Unbar")
  -- finishing without a schema reuses the one already given
  local f = A:tx(p, tx, 3, "FINISHED")
  lu.assertEquals(f.schema.raw.process_data, u.schema.raw.process_data)
  lu.assertTrue(core.tse.verify_qr(f.qr_code_data).valid)

  -- order (Bestellung-V1)
  tx = core.crypto.uuid4()
  A:tx(p, tx, 1, "ACTIVE")
  local o = A:tx(p, tx, 2, "FINISHED", { standard_v1 = { order = { line_items = {
    { quantity = "2", text = 'Eisbecher "Himbeere"', price_per_unit = "3.99" },
    { quantity = "0.5", text = "Kaffee", price_per_unit = "2.5000" } } } } })
  lu.assertEquals(o.schema.raw.process_type, "Bestellung-V1")
  lu.assertEquals(core.crypto.b64decode(o.schema.raw.process_data), '2;"Eisbecher ""Himbeere""";3.99\r0.5;"Kaffee";2.50')
  lu.assertTrue(core.tse.verify_qr(o.qr_code_data).valid)

  -- raw: the client's own process data
  tx = core.crypto.uuid4()
  A:tx(p, tx, 1, "ACTIVE")
  local pd = "Beleg^1.00_0.00_0.00_0.00_0.00^1.00:Bar"
  local r = A:tx(p, tx, 2, "FINISHED", { raw = { process_type = "Kassenbeleg-V1", process_data = core.crypto.b64encode(pd) } })
  lu.assertEquals(r.schema.raw.process_data, core.crypto.b64encode(pd))
  local q = core.tse.parse_qr(r.qr_code_data)
  lu.assertEquals(q.process_data, pd)
  lu.assertTrue(core.tse.verify_qr(r.qr_code_data).valid)
  lu.assertEquals(q.transaction_number, 4)
end

function TestFlow.test_idempotent_replays()
  local p = A:provision("CLIENT")
  local tx = core.crypto.uuid4()
  local a = A:tx(p, tx, 1, "ACTIVE")
  local b = A:tx(p, tx, 1, "ACTIVE")            -- same revision, same body: stored answer
  lu.assertEquals(b, a)
  local f1 = A:tx(p, tx, 2, "FINISHED", api.RECEIPT)
  local f2 = A:tx(p, tx, 2, "FINISHED", api.RECEIPT)
  lu.assertEquals(f2.qr_code_data, f1.qr_code_data)
  lu.assertEquals(f2.signature.counter, f1.signature.counter)
  -- the counter moved exactly twice for this transaction
  lu.assertEquals(f1.signature.counter, a.signature.counter + 1)
  -- client create is idempotent too
  local again = A:ok("PUT", "/api/v2/tss/" .. p.tss_id .. "/client/" .. p.client_id,
    { serial_number = p.client.serial_number }, p.tok)
  lu.assertEquals(again._id, p.client_id)
end

function TestFlow.test_seeded_start_is_deterministic()
  local x = api.start{ "--seed", "7" }
  local y = api.start{ "--seed", "7" }
  local z = api.start{ "--seed", "8" }
  lu.assertEquals(x.sb.api_key, y.sb.api_key)
  lu.assertEquals(x.sb.api_secret, y.sb.api_secret)
  lu.assertEquals(x.sb.organization_id, y.sb.organization_id)
  lu.assertNotEquals(x.sb.api_key, z.sb.api_key)
  lu.assertEquals(x:call("POST", "/api/v0/auth", { api_key = x.sb.api_key, api_secret = x.sb.api_secret }), 200)
  x:stop() y:stop() z:stop()
end

local rc = lu.LuaUnit.run()
A:stop()
os.exit(rc)
