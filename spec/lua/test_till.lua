-- fiskaly.till end to end against the sandbox: provision into a store, then
-- sales through a receipt plugin, journaled and verified; recovery of what a
-- crash left open; a TSE outage that still completes the sale.
local lu = require "luaunit"
local H = require "provision.helpers"
local provision = require "fiskaly.provision"
local store = require "fiskaly.store"
local till_mod = require "fiskaly.till"
local transaction = require "fiskaly.transaction"
local json = require "fiskaly.json"
local core = require "fiskaly.core"

local SOURCE = os.getenv("FISKALY_SOURCE_DIR") or "."
local PLUGINS = { SOURCE .. "/plugins" }

local function read_json(path)
  return assert(json.decode(assert(H.read_file(path))))
end

local SALE = read_json(SOURCE .. "/spec/plugins/retail/cases/mixed_vat/sale.json")
local EXPECTED = read_json(SOURCE .. "/spec/plugins/retail/cases/mixed_vat/receipt.json")

-- A provisioned store (one TSS, one client) on a fresh sandbox.
local function provisioned()
  local h = H.start_sandbox()
  local dir = H.tmpdir()
  local st = assert(store.open{ path = dir .. "/till.db" })
  assert(provision.run{ store = st, client = H.hub_client(h), config = {
    organization_id = h.organization_id, serial_number = "TILL-1",
    organization = { name = "Till Test " .. dir:match("[^/]+$"), address_line1 = "Hauptstr. 1",
      zip = "10115", town = "Berlin", country_code = "DEU" },
  } })
  return h, st, dir
end

TestTill = {}

function TestTill:test_sale_is_mapped_signed_verified_and_journaled()
  local h, st, dir = provisioned()
  local till = assert(till_mod.open{ store = st, base_url = h.base_url, plugins = PLUGINS })
  local r = assert(till:sale(SALE, { plugin = "retail" }))
  lu.assertFalse(r.outage)
  lu.assertEquals(r.state, "FINISHED")
  lu.assertTrue(r.verified)
  lu.assertStrContains(r.qr_code_data, "V0;TILL-1;Kassenbeleg-V1;" .. EXPECTED.process_data .. ";")
  lu.assertEquals(r.process_data, EXPECTED.process_data)
  lu.assertNil(r.warning)
  lu.assertTrue(core.tse.verify_qr(r.qr_code_data).valid)
  -- the journal holds the sale, finished, with the QR code and counter
  local row = assert(st:journal_get(r.tx_id))
  lu.assertEquals(row.state, "finished")
  lu.assertEquals(row.qr_code_data, r.qr_code_data)
  lu.assertEquals(row.signature_counter, r.signature_counter)
  lu.assertEquals(json.decode(row.sale).payments[1].amount, "27.50")
  lu.assertEquals(#assert(st:journal_list{ open = true }), 0)
  -- a second sale gets the next transaction number
  local r2 = assert(till:sale(SALE, { plugin = "retail" }))
  lu.assertEquals(r2.number, r.number + 1)
  lu.assertTrue(r2.signature_counter > r.signature_counter)
  till:close()
  st:close()
  h.stop()
  H.rmdir(dir)
end

function TestTill:test_unbalanced_sale_is_refused_before_anything_is_sent()
  local h, st, dir = provisioned()
  local till = assert(till_mod.open{ store = st, base_url = h.base_url, plugins = PLUGINS })
  local bad = read_json(SOURCE .. "/spec/plugins/retail/cases/error_underpaid/sale.json")
  local before = #assert(st:journal_list())
  local r, err = till:sale(bad, { plugin = "retail" })
  lu.assertNil(r)
  lu.assertEquals(err.kind, "validation")
  lu.assertEquals(#assert(st:journal_list()), before)   -- nothing journaled, nothing signed
  lu.assertEquals(#H.sandbox_state(h).tss[1].transactions or 0, 0)
  st:close()
  h.stop()
  H.rmdir(dir)
end

function TestTill:test_recover_settles_what_a_crash_left_open()
  local h, st, dir = provisioned()
  local till = assert(till_mod.open{ store = st, base_url = h.base_url, plugins = PLUGINS })
  local sign = till.sign
  -- (a) crashed after the start: ACTIVE at the service, "active" in the journal
  local a = core.crypto.uuid4()
  st:journal_record(a, { tss_id = till.tss_id, client_id = till.client_id, state = "intent" })
  assert(sign:upsert_transaction(till.tss_id, a, 1, { state = "ACTIVE", client_id = till.client_id }))
  st:journal_record(a, { state = "active", revision = 1 })
  -- (b) crashed after fiskaly finished it but before the answer was stored
  local b = core.crypto.uuid4()
  st:journal_record(b, { tss_id = till.tss_id, client_id = till.client_id, state = "active", revision = 1 })
  assert(sign:upsert_transaction(till.tss_id, b, 1, { state = "ACTIVE", client_id = till.client_id }))
  local fin = assert(sign:upsert_transaction(till.tss_id, b, 2, { state = "FINISHED", client_id = till.client_id,
    schema = { standard_v1 = { receipt = EXPECTED.receipt } } }))
  -- (c) crashed before the start request left the till
  local c = core.crypto.uuid4()
  st:journal_record(c, { tss_id = till.tss_id, client_id = till.client_id, state = "intent" })

  local out = assert(till:recover())
  lu.assertEquals(out, { checked = 3, finished = 1, cancelled = 1, void = 1, kept = 0 })
  lu.assertEquals(assert(sign:get_transaction(till.tss_id, a)).state, "CANCELLED")
  local rb = assert(st:journal_get(b))
  lu.assertEquals(rb.state, "finished")
  lu.assertEquals(rb.qr_code_data, fin.qr_code_data)
  lu.assertEquals(assert(st:journal_get(c)).state, "void")
  lu.assertEquals(#assert(st:journal_list{ open = true }), 0)
  -- a second recover finds nothing to do
  lu.assertEquals(assert(till:recover()).checked, 0)
  st:close()
  h.stop()
  H.rmdir(dir)
end

function TestTill:test_sweep_cancels_orphans_the_journal_does_not_know()
  local h, st, dir = provisioned()
  local till = assert(till_mod.open{ store = st, base_url = h.base_url, plugins = PLUGINS })
  local orphans = {}
  for i = 1, 3 do                           -- e.g. left by another device or a lost journal
    orphans[i] = core.crypto.uuid4()
    assert(till.sign:upsert_transaction(till.tss_id, orphans[i], 1, { state = "ACTIVE", client_id = till.client_id }))
  end
  local done = assert(till:sale(SALE, { plugin = "retail" }))   -- a finished sale is left alone
  -- too young to be an orphan: nothing is touched
  lu.assertEquals(assert(till:sweep{ min_age_s = 3600 }), { found = 3, cancelled = 0, skipped = 3 })
  lu.assertEquals(assert(till:sweep{ min_age_s = 0 }), { found = 3, cancelled = 3, skipped = 0 })
  for _, id in ipairs(orphans) do
    lu.assertEquals(assert(till.sign:get_transaction(till.tss_id, id)).state, "CANCELLED")
    lu.assertEquals(assert(st:journal_get(id)).state, "cancelled")
  end
  lu.assertEquals(assert(till.sign:get_transaction(till.tss_id, done.tx_id)).state, "FINISHED")
  lu.assertEquals(assert(till:sweep{ min_age_s = 0 }).found, 0)
  st:close()
  h.stop()
  H.rmdir(dir)
end

function TestTill:test_outage_completes_the_sale_and_is_recorded()
  local h, st, dir = provisioned()
  local till = assert(till_mod.open{ store = st, base_url = h.base_url, plugins = PLUGINS, attempts = 1 })
  h.stop()                                   -- the TSE is gone
  local r = assert(till:sale(SALE, { plugin = "retail" }))
  lu.assertTrue(r.outage)
  lu.assertEquals(r.state, "OUTAGE")
  lu.assertStrContains(r.message, "TSE ausgefallen")
  lu.assertNil(r.qr_code_data)
  local row = assert(st:journal_get(r.tx_id))
  lu.assertEquals(row.outage, 1)
  lu.assertEquals(row.state, "outage")
  lu.assertEquals(json.decode(row.sale).items[1].name, "Milk 1l")   -- the sale itself is kept
  local out = assert(till:recover())
  lu.assertEquals(out.kept, 1)                -- outage records stay as the record of the failure
  st:close()
  H.rmdir(dir)
end

function TestTill:test_open_without_provisioning_says_so()
  local dir = H.tmpdir()
  local st = assert(store.open{ path = dir .. "/empty.db" })
  local t, err = till_mod.open{ store = st, base_url = "http://127.0.0.1:9" }
  lu.assertNil(t)
  lu.assertEquals(err.kind, "state")
  lu.assertStrContains(tostring(err), "fiskaly provision")
  st:close()
  H.rmdir(dir)
end

function TestTill:test_transaction_outage_classification()
  lu.assertTrue(transaction.is_outage{ kind = "network" })
  lu.assertTrue(transaction.is_outage{ kind = "timeout" })
  lu.assertTrue(transaction.is_outage{ kind = "api", status = 503 })
  lu.assertTrue(transaction.is_outage{ kind = "api", status = 429 })
  lu.assertFalse(transaction.is_outage{ kind = "api", status = 400, code = "E_FAILED_SCHEMA_VALIDATION" })
  lu.assertFalse(transaction.is_outage{ kind = "validation" })
end

os.exit(lu.LuaUnit.run())
