-- fiskaly.store + fiskaly.secrets: schema, sealed secrets, refusal cases.
local lu = require "luaunit"
local core = require "fiskaly.core"
local store = require "fiskaly.store"
local secrets = require "fiskaly.secrets"

local tmpdir = os.tmpname()
os.remove(tmpdir)
assert(os.execute("mkdir -p '" .. tmpdir .. "'"))
local n = 0
local function tmppath()
  n = n + 1
  return string.format("%s/s%d.db", tmpdir, n)
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function digest(path)
  local s = read_file(path)
  return s and core.crypto.hex(core.crypto.sha256(s)) or "missing"
end

-- A provisioned-looking store with all secret kinds.
local SECRETS = {
  api_secret = "api-secret-" .. string.rep("S", 20),
  puk = "PUK-" .. string.rep("7", 12),
  pin = "PIN-9876543210",
  pending = "PIN-1112223334",
}

local function populate(st)
  assert(st:org_insert{ name = "Shop Berlin [t1]", tag = "t1", managed_by = "group", request = { name = "Shop" } })
  assert(st:org_set_created("Shop Berlin [t1]", "org-1"))
  assert(st:api_key_insert{ org_name = "Shop Berlin [t1]", name = "pos-key-1" })
  assert(st:api_key_set_created("pos-key-1", "kid-1", "key-1", SECRETS.api_secret))
  assert(st:tss_insert{ tss_id = "tss-1", org_name = "Shop Berlin [t1]", label = "default" })
  assert(st:put_secret("tss", "tss-1", "admin_puk", SECRETS.puk))
  assert(st:put_secret("tss", "tss-1", "pending_pin", SECRETS.pin))
  assert(st:tss_commit_pin("tss-1"))
  assert(st:put_secret("tss", "tss-1", "pending_pin", SECRETS.pending))
end

TestStore = {}

function TestStore:test_new_store_creates_key_file_0600()
  local path = tmppath()
  local st = assert(store.open{ path = path })
  local info = assert(core.store.file_info(path .. ".key"))
  lu.assertEquals(info.mode, 384)   -- 0600
  lu.assertEquals(info.size, 32)
  lu.assertTrue(st.key_info.created)
  lu.assertEquals(st:schema_version(), store.SCHEMA_VERSION)
  lu.assertNotStrContains(tostring(st), read_file(path .. ".key"))
  st:close()
  -- reopen: same key, nothing created
  local st2 = assert(store.open{ path = path })
  lu.assertFalse(st2.key_info.created)
  st2:close()
end

function TestStore:test_secrets_roundtrip_and_no_cleartext_on_disk()
  local path = tmppath()
  local st = assert(store.open{ path = path })
  populate(st)
  -- while open: data sits in the -wal file
  local wal = read_file(path .. "-wal")
  lu.assertNotNil(wal)
  lu.assertTrue(#wal > 0)
  for name, s in pairs(SECRETS) do
    lu.assertNil(wal:find(s, 1, true), name .. " in clear in the WAL")
    lu.assertNil(read_file(path):find(s, 1, true), name .. " in clear in the DB")
  end
  -- the values come back
  lu.assertEquals(st:get_secret("tss", "tss-1", "admin_puk"), SECRETS.puk)
  lu.assertEquals(st:get_secret("tss", "tss-1", "admin_pin"), SECRETS.pin)
  lu.assertEquals(st:get_secret("tss", "tss-1", "pending_pin"), SECRETS.pending)
  lu.assertEquals(st:api_key_active("Shop Berlin [t1]").secret, SECRETS.api_secret)
  -- the table is really holding blobs
  local row = st.db:query("SELECT typeof(admin_puk) AS t, length(admin_puk) AS l FROM tss")[1]
  lu.assertEquals(row.t, "blob")
  lu.assertEquals(row.l, 12 + #SECRETS.puk + 16)
  st:close()
  -- after checkpoint+close: the main file
  local db = read_file(path)
  for name, s in pairs(SECRETS) do
    lu.assertNil(db:find(s, 1, true), name .. " in clear in the DB after close")
  end
  lu.assertNotNil(db:find("Shop Berlin [t1]", 1, true))   -- the scan does find clear text
end

function TestStore:test_blobs_cannot_be_swapped()
  local path = tmppath()
  local st = assert(store.open{ path = path })
  populate(st)
  -- copy tss-1's sealed PUK into the admin_pin column: must not decrypt
  assert(st.db:run("UPDATE tss SET admin_pin = admin_puk WHERE tss_id = 'tss-1'"))
  local pt, err = st:get_secret("tss", "tss-1", "admin_pin")
  lu.assertNil(pt)
  lu.assertEquals(err.code, "WRONG_KEY")
  lu.assertStrContains(err.message, "tss:tss-1:admin_pin")
  lu.assertNotStrContains(err.message, SECRETS.puk)
  st:close()
end

function TestStore:test_missing_key_file_refused_and_untouched()
  local path = tmppath()
  local st = assert(store.open{ path = path })
  populate(st)
  st:close()
  local before = digest(path)
  os.remove(path .. ".key")
  local st2, err = store.open{ path = path }
  lu.assertNil(st2)
  lu.assertEquals(err.code, "KEY_FILE_MISSING")
  lu.assertStrContains(err.message, "restore the key file")
  lu.assertNil(read_file(path .. ".key"), "a new key file must not be created for an existing store")
  lu.assertEquals(digest(path), before)
end

function TestStore:test_wrong_key_file_refused_and_untouched()
  local path = tmppath()
  local st = assert(store.open{ path = path })
  populate(st)
  st:close()
  local before = digest(path)
  local other = tmpdir .. "/other.key"
  assert(core.store.write_private_file(other, string.rep("x", 32)))
  local st2, err = store.open{ path = path, key_file = other }
  lu.assertNil(st2)
  lu.assertEquals(err.code, "WRONG_KEY")
  lu.assertStrContains(err.message, "cannot decrypt")
  lu.assertStrContains(err.message, "wrong key file?")
  lu.assertEquals(digest(path), before)
  -- a host-provided wrong key too
  local st3, err3 = store.open{ path = path, key = string.rep("y", 32) }
  lu.assertNil(st3)
  lu.assertEquals(err3.code, "WRONG_KEY")
  lu.assertEquals(digest(path), before)
  -- the right key still works
  local st4 = assert(store.open{ path = path })
  lu.assertEquals(st4:get_secret("tss", "tss-1", "admin_puk"), SECRETS.puk)
  st4:close()
end

function TestStore:test_key_file_permissions_and_length()
  local path = tmppath()
  local kf = path .. ".key"
  write_file(kf, string.rep("k", 32))
  assert(os.execute("chmod 644 '" .. kf .. "'"))
  local st, err = store.open{ path = path }
  lu.assertNil(st)
  lu.assertEquals(err.code, "KEY_FILE_PERMISSIONS")
  lu.assertStrContains(err.message, "0644")
  lu.assertStrContains(err.message, "chmod 600")
  assert(os.execute("chmod 600 '" .. kf .. "'"))
  write_file(kf, string.rep("k", 31))
  st, err = store.open{ path = path }
  lu.assertNil(st)
  lu.assertEquals(err.code, "KEY_FILE_LENGTH")
  lu.assertStrContains(err.message, "31 bytes")
  -- 64 hex digits + newline is accepted
  write_file(kf, string.rep("ab", 32) .. "\n")
  st = assert(store.open{ path = path })
  st:close()
  local key = assert(secrets.read_key_file(kf))
  lu.assertEquals(key, string.rep("\171", 32))
  -- host key of the wrong length is misuse-free but refused
  local st2, e2 = store.open{ path = tmppath(), key = "short" }
  lu.assertNil(st2)
  lu.assertEquals(e2.code, "KEY_LENGTH")
end

function TestStore:test_corrupt_db_refused_and_untouched()
  local path = tmppath()
  local garbage = {}
  local seed = 12345
  for i = 1, 8192 do
    seed = (seed * 1103515245 + 12345) % 2147483648
    garbage[i] = string.char(seed % 256)
  end
  write_file(path, table.concat(garbage))
  local before = digest(path)
  local st, err = store.open{ path = path }
  lu.assertNil(st)
  lu.assertEquals(err.code, "SQLITE_NOTADB")
  lu.assertStrContains(err.message, "not a fiskaly store")
  lu.assertEquals(digest(path), before)
  lu.assertNil(read_file(path .. ".key"), "no key file for a refused store")
end

function TestStore:test_damaged_pages_refused_and_untouched()
  local path = tmppath()
  local st = assert(store.open{ path = path })
  populate(st)
  st:close()
  local data = read_file(path)
  lu.assertTrue(#data >= 4 * 4096)
  -- keep the header page, scramble every other page
  local scrambled = { data:sub(1, 4096) }
  local seed = 7
  for _ = 4097, #data do
    seed = (seed * 1103515245 + 12345) % 2147483648
    scrambled[#scrambled + 1] = string.char(seed % 256)
  end
  write_file(path, table.concat(scrambled))
  local before = digest(path)
  for _, ro in ipairs{ false, true } do
    local st2, err = store.open{ path = path, readonly = ro }
    lu.assertNil(st2)
    lu.assertEquals(err.code, "SQLITE_CORRUPT")
    lu.assertStrContains(err.message, "damaged")
    lu.assertEquals(digest(path), before)
  end
end

function TestStore:test_foreign_sqlite_db_refused()
  local path = tmppath()
  local db = assert(core.store.open(path))
  assert(db:exec("CREATE TABLE customers(id INTEGER)"))
  db:close()
  local before = digest(path)
  local st, err = store.open{ path = path }
  lu.assertNil(st)
  lu.assertEquals(err.code, "NOT_A_STORE")
  lu.assertEquals(digest(path), before)
end

function TestStore:test_newer_schema_refused_and_untouched()
  local path = tmppath()
  local st = assert(store.open{ path = path })
  populate(st)
  assert(st.db:run("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, 'from the future', 0)",
    store.SCHEMA_VERSION + 1))
  st:close()
  local before = digest(path)
  local st2, err = store.open{ path = path }
  lu.assertNil(st2)
  lu.assertEquals(err.code, "NEWER_SCHEMA")
  lu.assertStrContains(err.message, "upgrade lua-fiskaly")
  lu.assertEquals(err.version, store.SCHEMA_VERSION + 1)
  lu.assertEquals(digest(path), before)
  -- read-only open refuses it too
  local st3, err3 = store.open{ path = path, readonly = true }
  lu.assertNil(st3)
  lu.assertEquals(err3.code, "NEWER_SCHEMA")
  lu.assertEquals(digest(path), before)
end

function TestStore:test_locked_db_clear_error_and_untouched()
  local path = tmppath()
  local st = assert(store.open{ path = path })
  populate(st)
  st:close()
  -- another connection holds an exclusive write transaction
  local holder = assert(core.store.open(path))
  assert(holder:begin("exclusive"))
  assert(holder:run("UPDATE meta SET value = value WHERE key = 'key_check'"))
  local before = digest(path)
  -- opening works (reads are not blocked in WAL mode), writing times out clearly
  local st2 = assert(store.open{ path = path, busy_timeout_ms = 100 })
  local ok, err = st2:put_secret("tss", "tss-1", "pending_pin", "PIN-0000000000")
  lu.assertNil(ok)
  lu.assertEquals(err.code, "SQLITE_BUSY")
  lu.assertStrContains(err.message, "locked")
  lu.assertStrContains(err.message, "another process")
  lu.assertEquals(st2:get_secret("tss", "tss-1", "pending_pin"), SECRETS.pending)
  st2:close()
  -- a brand-new store whose migration cannot take the lock
  local fresh = tmppath()
  local h2 = assert(core.store.open(fresh))
  assert(h2:begin("exclusive"))
  local st3, err3 = store.open{ path = fresh, busy_timeout_ms = 100 }
  lu.assertNil(st3)
  lu.assertEquals(err3.code, "SQLITE_BUSY")
  h2:rollback()
  h2:close()
  assert(holder:rollback())
  holder:close()
  lu.assertEquals(digest(path), before)
end

function TestStore:test_step_journal_and_records()
  local st = assert(store.open{ path = tmppath() })
  populate(st)
  local id = assert(st:step_intent("tss:default", "tss_create", { tss_id = "tss-1" }))
  assert(st:step_finish(id, "done", { state = "CREATED" }))
  assert(st:step_skip("tss:default", "tss_personalize", { state = "UNINITIALIZED" }))
  local steps = st:steps("tss:default")
  lu.assertEquals(#steps, 2)
  lu.assertEquals(steps[1].intent.tss_id, "tss-1")
  lu.assertEquals(steps[1].result.state, "CREATED")
  lu.assertEquals(steps[2].status, "skip")
  lu.assertEquals(st:last_step("tss:default", "tss_create").status, "done")
  lu.assertFalse(st:last_step("tss:default", "nothing"))
  -- tss + clients
  assert(st:tss_update("tss-1", { state = "INITIALIZED", serial_number = "abc" }))
  local t = st:tss_by_label("Shop Berlin [t1]", "default")
  lu.assertEquals(t.tss_id, "tss-1")
  lu.assertEquals(t.has_puk, 1)
  lu.assertEquals(t.has_pin, 1)
  assert(st:client_insert{ client_id = "c-1", tss_id = "tss-1", serial_number = "POS-1" })
  local ok, err = st:client_insert{ client_id = "c-2", tss_id = "tss-1", serial_number = "POS-1" }
  lu.assertNil(ok)
  lu.assertEquals(err.code, "SQLITE_CONSTRAINT")
  lu.assertEquals(st:client_by_serial("tss-1", "POS-1").client_id, "c-1")
  -- foreign keys are enforced
  local ok2, err2 = st:client_insert{ client_id = "c-3", tss_id = "no-such-tss", serial_number = "X" }
  lu.assertNil(ok2)
  lu.assertEquals(err2.code, "SQLITE_CONSTRAINT")
  -- sale journal
  assert(st:journal_insert{ tx_id = "tx-1", tss_id = "tss-1", client_id = "c-1", sale = "{}" })
  assert(st:journal_update("tx-1", { state = "ACTIVE", revision = 1 }))
  assert(st:journal_update("tx-1", { state = "FINISHED", revision = 2, signature = "sig", signature_counter = 7 }))
  assert(st:journal_insert{ tx_id = "tx-2", tss_id = "tss-1", client_id = "c-1", outage = true })
  lu.assertEquals(st:journal_get("tx-1").signature_counter, 7)
  lu.assertEquals(#st:journal_list{ open = true }, 1)
  lu.assertEquals(st:journal_list{ open = true }[1].outage, 1)
  local nf, nerr = st:journal_update("tx-404", { state = "ACTIVE" })
  lu.assertNil(nf)
  lu.assertEquals(nerr.code, "NOT_FOUND")
  lu.assertErrorMsgContains("unknown field", st.journal_update, st, "tx-1", { bogus = 1 })
  -- transaction(): error rolls back
  local r, terr = st:transaction(function(s)
    assert(s:client_set_state("c-1", "DEREGISTERED"))
    return nil, "changed my mind"
  end)
  lu.assertNil(r)
  lu.assertEquals(terr, "changed my mind")
  lu.assertEquals(st:client_get("c-1").state, "pending")
  st:close()
end

function TestStore:test_migration_from_version_1()
  -- a store as the first release wrote it (schema 1, with data)
  local path = tmppath()
  local db = assert(core.store.open(path))
  assert(db:exec(store._MIGRATIONS[1].sql))
  assert(db:run("INSERT INTO schema_migrations(version, name, applied_at) VALUES (1, 'initial schema', 0)"))
  assert(db:run("INSERT INTO transactions(tx_id, tss_id, client_id, state, created_at, updated_at) "
    .. "VALUES ('tx-old', 't', 'c', 'FINISHED', 0, 0)"))
  db:close()
  local st = assert(store.open{ path = path })
  lu.assertEquals(st:schema_version(), store.SCHEMA_VERSION)
  lu.assertTrue(store.SCHEMA_VERSION >= 2)
  local applied = st.db:query("SELECT version FROM schema_migrations ORDER BY version")
  lu.assertEquals(#applied, store.SCHEMA_VERSION)
  lu.assertEquals(st:journal_get("tx-old").state, "FINISHED")   -- data kept
  assert(st:journal_record("tx-old", { stage = "migrated" }))    -- the new column works
  lu.assertStrContains(st:journal_get("tx-old").extra, "migrated")
  st:close()
  -- reopening does not migrate again
  local st2 = assert(store.open{ path = path })
  lu.assertEquals(#st2.db:query("SELECT version FROM schema_migrations"), store.SCHEMA_VERSION)
  st2:close()
end

function TestStore:test_journal_record_adapter()
  local st = assert(store.open{ path = tmppath() })
  local j = st:journal()
  assert(j:record("tx-9", { state = "intent", tss_id = "tss-1", client_id = "c-1", revision = 0,
    request = "{}", outage = false, created_at = 1 }))
  assert(j:record("tx-9", { state = "active", revision = 1, number = 17 }))
  assert(j:record("tx-9", { state = "finished", revision = 2, number = 17, signature = "c2ln",
    signature_counter = 42, qr_code_data = "V0;...", verified = true }))
  local row = st:journal_get("tx-9")
  lu.assertEquals(row.state, "finished")
  lu.assertEquals(row.revision, 2)
  lu.assertEquals(row.transaction_number, 17)
  lu.assertEquals(row.signature_counter, 42)
  lu.assertEquals(row.outage, 0)
  lu.assertStrContains(row.extra, "verified")
  lu.assertEquals(#st:journal_list{ open = true }, 0)   -- lower-case "finished" is closed
  assert(j:record("tx-10", { state = "intent", tss_id = "tss-1", client_id = "c-1" }))
  assert(j:record("tx-10", { state = "outage", outage = true, error = { message = "x" }, stage = "start" }))
  lu.assertEquals(st:journal_get("tx-10").outage, 1)
  lu.assertEquals(#st:journal_list{ open = true }, 1)
  lu.assertErrorMsgContains("tss_id and client_id", j.record, j, "tx-11", { state = "intent" })
  st:close()
end

function TestStore:test_readonly_open()
  local path = tmppath()
  local st0, e0 = store.open{ path = path, readonly = true }
  lu.assertNil(st0)
  lu.assertEquals(e0.code, "NO_STORE")
  lu.assertNil(read_file(path), "read-only open must not create the store")
  local st = assert(store.open{ path = path })
  populate(st)
  st:close()
  local ro = assert(store.open{ path = path, readonly = true })
  lu.assertEquals(ro:get_secret("tss", "tss-1", "admin_puk"), SECRETS.puk)
  local ok = ro:client_insert{ client_id = "c", tss_id = "tss-1", serial_number = "x" }
  lu.assertNil(ok)
  ro:close()
end

local rc = lu.LuaUnit.run()
os.execute("rm -rf '" .. tmpdir .. "'")
os.exit(rc, true)
