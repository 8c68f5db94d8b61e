-- TSS exports end to end against the sandbox (issue 7 item 3): trigger, poll,
-- download the TAR, verify it offline (fiskaly.verify.export), tampering,
-- the export error states, filtered exports, and `fiskaly verify --export`.
local lu = require "luaunit"
local H = require "provision.helpers"
local fiskaly = require "fiskaly"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local verify = require "fiskaly.verify"
local export = require "fiskaly.export"

local PIN = "1234567890"

local RECEIPT = { standard_v1 = { receipt = {
  receipt_type = "RECEIPT",
  amounts_per_vat_rate = json.array{ { vat_rate = "NORMAL", amount = "4.20" } },
  amounts_per_payment_type = json.array{ { payment_type = "CASH", amount = "4.20" } },
} } }

-- A sandbox and a `sign` API of a fresh managed organization.
local function setup()
  local h = H.start_sandbox()
  local hub = H.hub_client(h)
  local org = assert(hub.management:create_organization{
    name = "Export Test", managed_by_organization_id = h.organization_id,
    address_line1 = "Hauptstr. 1", zip = "80331", town = "München", country_code = "DEU",
  })
  local key = assert(hub.management:create_api_key(org._id, { name = "export", status = "enabled" }))
  return h, hub:with_credentials(key.key, key.secret).sign
end

-- Creates a TSS and takes it to UNINITIALIZED (admin PIN set); returns tss_id, tss.
local function uninitialized_tss(sign)
  local tss_id = core.crypto.uuid4()
  local tss = assert(sign:create_tss(tss_id, {}))
  assert(sign:update_tss(tss_id, { state = "UNINITIALIZED" }))
  assert(sign:change_admin_pin(tss_id, tss.admin_puk, PIN))
  return tss_id
end

-- An INITIALIZED TSS with clients (serials given); returns tss_id, { client ids }.
local function initialized_tss(sign, serials)
  local tss_id = uninitialized_tss(sign)
  assert(sign:admin_auth(tss_id, PIN))
  assert(sign:update_tss(tss_id, { state = "INITIALIZED" }))
  local ids = {}
  for i, s in ipairs(serials) do
    ids[i] = core.crypto.uuid4()
    assert(sign:create_client(tss_id, ids[i], { serial_number = s }))
  end
  assert(sign:admin_logout(tss_id))
  return tss_id, ids
end

-- One sale: Start + Finish (two signed logs).
local function sale(sign, tss_id, client_id)
  local tx_id = core.crypto.uuid4()
  assert(sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id }))
  return assert(sign:upsert_transaction(tss_id, tx_id, 2,
    { state = "FINISHED", client_id = client_id, schema = RECEIPT }))
end

local function octal(s) return tonumber((s:gsub("%z.*", "")), 8) end

TestExport = {}

function TestExport:setUp()
  self.h, self.sign = setup()
  self.dir = H.tmpdir()
end

function TestExport:tearDown()
  self.h.stop()
  H.rmdir(self.dir)
end

function TestExport:test_export_is_downloaded_and_every_message_verifies()
  local sign = self.sign
  local tss_id, clients = initialized_tss(sign, { "KASSE-1" })
  local numbers = {}
  for i = 1, 3 do numbers[i] = sale(sign, tss_id, clients[1]).number end
  local tss = assert(sign:get_tss(tss_id))
  local path = self.dir .. "/export.tar"
  local report, err = export.run(sign, tss_id, { path = path, poll_ms = 1, deadline_ms = 10000 })
  lu.assertNil(err)
  lu.assertTrue(report.valid, tostring(report.reason))
  lu.assertEquals(report.polls, 2)                 -- PENDING -> WORKING -> COMPLETED
  -- unfiltered: the 3 system logs of initialisation (counters 1..3), then the 6 transaction logs
  lu.assertEquals(report.counts.total, 9)
  lu.assertEquals(report.counts.valid, 9)
  lu.assertEquals(report.counts.system, 3)
  lu.assertEquals(report.counts.transaction, 6)
  lu.assertEquals(#report.gaps, 0)
  lu.assertEquals(#report.repeats, 0)
  lu.assertEquals(report.bytes, #H.read_file(path))
  lu.assertEquals(#report.certificates, 1)
  lu.assertEquals(report.certificates[1].serial_number, tss.serial_number:lower())
  lu.assertEquals(report.certificates[1].name, tss.serial_number:lower() .. "_X509.pem")
  -- The counters run 1..9 = the TSS's last counter, in order; 1..3 are system logs.
  local last = math.tointeger(tonumber(tss.signature_counter))
  lu.assertEquals(last, 9)
  local sys_ops = { "authenticateUser", "initialize", "updateTime" }
  local ops = { "Start", "Finish" }
  for k, m in ipairs(report.messages) do
    lu.assertTrue(m.valid, m.name .. ": " .. tostring(m.reason))
    lu.assertEquals(m.curve, "P-256")
    lu.assertEquals(m.signature_counter, k)
  end
  for k = 1, 3 do
    local m = report.messages[k]
    lu.assertEquals(m.log_type, "system")
    lu.assertStrMatches(m.name, string.format("Unixt_%%d+_Sig%%-%d_Log%%-Sys_%s%%.log", k, sys_ops[k]))
  end
  for i = 1, 6 do
    local m = report.messages[3 + i]
    lu.assertEquals(m.log_type, "transaction")
    local tx_no = numbers[(i + 1) // 2]
    lu.assertStrMatches(m.name, string.format("Unixt_%%d+_Sig%%-%d_Log%%-Tra_No%%-%d_%s_Client%%-KASSE%%-1%%.log",
      m.signature_counter, tx_no, ops[(i - 1) % 2 + 1]))
  end
  -- The export is listed, COMPLETED.
  local list = assert(sign:list_exports(tss_id))
  lu.assertEquals(list.count, 1)
  lu.assertEquals(list.data[1]._id, report.export_id)
  lu.assertEquals(list.data[1].state, "COMPLETED")
  -- The CLI verifies the downloaded file too.
  local how, code, out = H.run_cli(self.h, { "verify", "--export", path }, nil, self.dir)
  lu.assertEquals(how, "exit")
  lu.assertEquals(code, 0, out)
end

function TestExport:test_tampered_byte_is_reported_invalid()
  local sign = self.sign
  local tss_id, clients = initialized_tss(sign, { "KASSE-1" })
  sale(sign, tss_id, clients[1])
  local path = self.dir .. "/export.tar"
  assert(export.run(sign, tss_id, { path = path, poll_ms = 1 }).valid)
  local blob = H.read_file(path)
  -- The first member is a log message (the system log with counter 1); flip the last byte of its signature.
  local first = blob:sub(1, 100):gsub("%z.*", "")
  lu.assertStrMatches(first, "Unixt_%d+_Sig%-1_Log%-Sys_authenticateUser%.log")
  local size = octal(blob:sub(125, 136))
  local at = 512 + size                             -- 1-based index of its last byte
  local bad = blob:sub(1, at - 1) .. string.char(blob:byte(at) ~ 1) .. blob:sub(at + 1)
  local r = verify.export_bytes(bad)
  lu.assertFalse(r.valid)
  lu.assertEquals(r.code, "INVALID_MESSAGES")
  lu.assertEquals(r.counts.invalid, 1)
  lu.assertEquals(r.counts.valid, 4)
  lu.assertEquals(r.messages[1].name, first)
  lu.assertFalse(r.messages[1].valid)
  lu.assertTrue(r.messages[2].valid)
  -- A flipped byte in a header breaks its checksum.
  local badh = string.char(blob:byte(1) ~ 1) .. blob:sub(2)
  lu.assertEquals(verify.export_bytes(badh).code, "MALFORMED_TAR")
  -- And the CLI exits 1 for the tampered file.
  local bad_path = self.dir .. "/bad.tar"
  H.write_file(bad_path, bad)
  local how, code = H.run_cli(self.h, { "verify", "--export", bad_path }, nil, self.dir)
  lu.assertEquals(how, "exit")
  lu.assertEquals(code, 1)
end

function TestExport:test_export_before_initialized_is_refused()
  local sign = self.sign
  local tss_id = uninitialized_tss(sign)
  local res, err = sign:trigger_export(tss_id, core.crypto.uuid4())
  lu.assertNil(res)
  lu.assertEquals(err.status, 409)
  lu.assertEquals(err.code, "E_TSS_ILLEGAL_STATE_TO_PERFORM_EXPORT")
  local r2, err2 = export.run(sign, tss_id, { path = self.dir .. "/x.tar", poll_ms = 1 })
  lu.assertNil(r2)
  lu.assertEquals(err2.code, "E_TSS_ILLEGAL_STATE_TO_PERFORM_EXPORT")
  lu.assertNil(H.read_file(self.dir .. "/x.tar"))
end

function TestExport:test_file_before_completion_and_unknown_export()
  local sign = self.sign
  local tss_id, clients = initialized_tss(sign, { "KASSE-1" })
  sale(sign, tss_id, clients[1])
  local eid = core.crypto.uuid4()
  local e = assert(sign:trigger_export(tss_id, eid, {}))
  lu.assertEquals(e.state, "PENDING")
  lu.assertEquals(e._type, "EXPORT")
  local tar, err = sign:export_file(tss_id, eid)
  lu.assertNil(tar)
  lu.assertEquals(err.status, 404)
  lu.assertEquals(err.code, "E_EXPORT_NOT_COMPLETED")
  lu.assertEquals(tonumber(err.retry_after), 60)
  lu.assertEquals(assert(sign:get_export(tss_id, eid)).state, "WORKING")
  lu.assertEquals(select(2, sign:export_file(tss_id, eid)).code, "E_EXPORT_NOT_COMPLETED")
  lu.assertEquals(assert(sign:get_export(tss_id, eid)).state, "COMPLETED")
  tar = assert(sign:export_file(tss_id, eid))
  lu.assertEquals(type(tar), "string")
  lu.assertTrue(verify.export_bytes(tar).valid)
  -- the same id twice; an unknown id
  lu.assertEquals(select(2, sign:trigger_export(tss_id, eid)).code, "E_DUPLICATE_EXPORT")
  local unknown = core.crypto.uuid4()
  lu.assertEquals(select(2, sign:get_export(tss_id, unknown)).code, "E_EXPORT_NOT_FOUND")
  lu.assertEquals(select(2, sign:export_file(tss_id, unknown)).code, "E_EXPORT_NOT_FOUND")
  -- a bad filter is refused before anything is sent
  lu.assertEquals(select(2, sign:trigger_export(tss_id, core.crypto.uuid4(), { start_date = "yesterday" })).kind,
    "validation")
end

function TestExport:test_filtered_exports_and_disabled_tss()
  local sign = self.sign
  local tss_id, clients = initialized_tss(sign, { "KASSE-1", "KASSE-2" })
  sale(sign, tss_id, clients[1])
  sale(sign, tss_id, clients[2])
  sale(sign, tss_id, clients[1])
  -- by client: the other client's logs are left out, so the counters have a gap
  local path = self.dir .. "/k1.tar"
  local r = assert(export.run(sign, tss_id, { path = path, poll_ms = 1, query = { client_id = clients[1] } }))
  lu.assertTrue(r.valid, tostring(r.reason))       -- allow_gaps is implied by a filter
  lu.assertEquals(r.counts.total, 4)
  for _, m in ipairs(r.messages) do lu.assertStrMatches(m.name, ".*_Client%-KASSE%-1%.log") end
  lu.assertEquals(#r.gaps, 1)
  lu.assertEquals(r.gaps[1].to - r.gaps[1].from, 1)
  local strict = verify.export(path)
  lu.assertFalse(strict.valid)
  lu.assertEquals(strict.code, "COUNTER_GAP")
  -- without allow_gaps the counters before the first present one (the system logs 1..3) are missing too
  lu.assertEquals(#strict.gaps, 2)
  lu.assertEquals(strict.gaps[1].from, 1); lu.assertEquals(strict.gaps[1].to, 3)
  lu.assertStrContains(strict.reason, "1 to 3")
  -- by transaction number
  local r2 = assert(export.run(sign, tss_id, { path = path, poll_ms = 1,
    query = { start_transaction_number = 2, end_transaction_number = 2 } }))
  lu.assertTrue(r2.valid)
  lu.assertEquals(r2.counts.total, 2)
  lu.assertEquals(#r2.gaps, 0)
  lu.assertStrMatches(r2.messages[1].name, ".*_No%-2_Start_Client%-KASSE%-2%.log")
  -- a DISABLED TSS can still be exported, unfiltered: 3 + 1 system logs and the 6 transaction logs,
  -- counters 1..10 with no gaps, the last one disableSecureElement
  assert(sign:admin_auth(tss_id, PIN))
  assert(sign:update_tss(tss_id, { state = "DISABLED" }))
  local r3 = assert(export.run(sign, tss_id, { path = path, poll_ms = 1 }))
  lu.assertTrue(r3.valid, tostring(r3.reason))
  lu.assertEquals(r3.counts.total, 10)
  lu.assertEquals(r3.counts.system, 4)
  lu.assertEquals(r3.counts.valid, 10)
  lu.assertEquals(#r3.gaps, 0)
  local lastm = r3.messages[#r3.messages]
  lu.assertEquals(lastm.signature_counter, 10)
  lu.assertEquals(lastm.log_type, "system")
  lu.assertStrMatches(lastm.name, "Unixt_%d+_Sig%-10_Log%-Sys_disableSecureElement%.log")
  lu.assertEquals(tonumber(assert(sign:get_tss(tss_id)).signature_counter), 10)
  -- a counter filter applies to system logs too: 2..4 = initialize, updateTime, the first Start
  local r4 = assert(export.run(sign, tss_id, { path = path, poll_ms = 1,
    query = { start_signature_counter = 2, end_signature_counter = 4 } }))
  lu.assertTrue(r4.valid, tostring(r4.reason))
  lu.assertEquals(r4.counts.system, 2)
  lu.assertEquals(r4.counts.transaction, 1)
  -- the same file checked strictly: counter 1 is missing before the first present one
  local strict4 = verify.export(path)
  lu.assertEquals(strict4.code, "COUNTER_GAP")
  lu.assertEquals(strict4.gaps[1].from, 1); lu.assertEquals(strict4.gaps[1].to, 1)
end

-- `fiskaly export` on a provisioned store: trigger, poll, download, verify.
function TestExport:test_cli_export_of_a_provisioned_store()
  local provision = require "fiskaly.provision"
  local store = require "fiskaly.store"
  local h, dir = self.h, self.dir
  local st = assert(store.open{ path = dir .. "/till.db" })
  assert(provision.run{ store = st, client = H.hub_client(h), config = {
    organization_id = h.organization_id, serial_number = "TILL-1",
    organization = { name = "Export CLI " .. dir:match("[^/]+$"), address_line1 = "Hauptstr. 1",
      zip = "10115", town = "Berlin", country_code = "DEU" },
  } })
  local list = assert(provision.list(st))
  local org = list.organizations[1]
  local tss, client = org.tss[1], org.tss[1].clients[1]
  local key = assert(st:api_key_active(org.name))
  st:close()
  local sign = H.hub_client(h):with_credentials(key.api_key, key.secret).sign
  sale(sign, tss.tss_id, client.client_id)
  sale(sign, tss.tss_id, client.client_id)
  local out = dir .. "/cli.tar"
  local how, code, output = H.run_cli(h, { "export", "--store", dir .. "/till.db", "--out", out,
    "--poll-ms", "1", "--json" }, nil, dir)
  lu.assertEquals(how, "exit")
  lu.assertEquals(code, 0, output)
  local r = assert(json.decode(output:match("{.*}")))
  lu.assertTrue(r.valid)
  lu.assertEquals(r.counts.total, 7)            -- 3 system logs of initialisation + 2 sales
  lu.assertEquals(r.counts.system, 3)
  lu.assertEquals(verify.export(out).counts.valid, 7)
  -- --out is required
  how, code = H.run_cli(h, { "export", "--store", dir .. "/till.db" }, nil, dir)
  lu.assertEquals(code, 2)
end

os.exit(lu.LuaUnit.run())
