-- `fiskaly provision` and `fiskaly status` as an operator runs them: help,
-- configuration from file and environment, JSON output, and the refusal
-- cases (wrong/missing key file, corrupt, locked, newer-schema store): each a
-- clear error, exit status 1, and the database file byte-for-byte unchanged.
local lu = require "luaunit"
local H = require "provision.helpers"
local core = require "fiskaly.core"
local json = require "fiskaly.json"

local h = H.start_sandbox()
local dir = H.tmpdir()
local cfg_path = H.config(h, dir, { busy_timeout_ms = 200 })
local db = dir .. "/terminal.db"

local function cli(args, env) return H.run_cli(h, args, env, dir) end

-- Provision once; the refusal tests work on copies of this store.
local how0, code0, out0 = cli({ "provision", "--config", cfg_path })
assert(how0 == "exit" and code0 == 0, out0)

local function copy_store(name)
  local d = dir .. "/" .. name
  assert(os.execute("mkdir -p " .. H.quote(d) .. " && cp -p " .. H.quote(db) .. " " .. H.quote(db .. ".key") .. " "
    .. H.quote(d) .. "/"))
  return d .. "/terminal.db"
end

TestCli = {}

function TestCli:test_help()
  for _, cmd in ipairs{ "provision", "status" } do
    local how, code, out = cli({ cmd, "--help" })
    lu.assertEquals(how .. code, "exit0")
    lu.assertStrContains(out, "usage: fiskaly " .. cmd)
    lu.assertStrContains(out, "FISKALY_STORE")
  end
  local how, code, out = cli({ "provision", "--bogus" })
  lu.assertEquals(how .. code, "exit2")
  lu.assertStrContains(out, "unknown option --bogus")
end

function TestCli:test_status_json_and_text()
  local how, code, out = cli({ "status", "--config", cfg_path, "--json", "--remote" })
  lu.assertEquals(how .. code, "exit0", out)
  local s = assert(json.decode(out))
  local org = s.organizations[1]
  lu.assertEquals(org.name, "Backstube Mitte")
  lu.assertEquals(org.tss[1].state, "INITIALIZED")
  lu.assertEquals(org.tss[1].remote_state, "INITIALIZED")
  lu.assertTrue(org.tss[1].has_puk)
  lu.assertTrue(org.tss[1].has_pin)
  lu.assertEquals(org.tss[1].clients[1].serial_number, "POS-001")
  lu.assertEquals(org.tss[1].clients[1].remote_state, "REGISTERED")
  -- text form, and the store comes from the environment as well
  local how2, code2, out2 = cli({ "status" }, { FISKALY_STORE = db })
  lu.assertEquals(how2 .. code2, "exit0", out2)
  lu.assertStrContains(out2, "PUK held: yes")
  lu.assertStrContains(out2, "POS-001")
end

function TestCli:test_options_override_and_lua_config()
  -- a Lua config file; --serial adds a second client to the default TSS
  local lua_cfg = dir .. "/config.lua"
  H.write_file(lua_cfg, string.format([[
return { store = %q, organization = { name = "Backstube Mitte", address_line1 = "Torstr. 1",
  zip = "10119", town = "Berlin" } }]], db))
  local how, code, out = cli({ "provision", "--config", lua_cfg, "--serial", "POS-001", "--serial", "POS-002",
    "--json" })
  lu.assertEquals(how .. code, "exit0", out)
  local res = assert(json.decode(out))
  local serials = {}
  for _, c in ipairs(res.tss[1].clients) do serials[c.serial_number] = c.state end
  lu.assertEquals(serials["POS-001"], "REGISTERED")
  lu.assertEquals(serials["POS-002"], "REGISTERED")
  local state = H.sandbox_state(h)
  lu.assertEquals(#H.managed_orgs(state, h.organization_id), 1)
end

function TestCli:test_operations_via_cli()
  local how, code, out = cli({ "provision", "add-client", "--config", cfg_path, "--tss", "default",
    "--serial", "POS-900" })
  lu.assertEquals(how .. code, "exit0", out)
  local _, _, js = cli({ "status", "--config", cfg_path, "--json" })
  local s = assert(json.decode(js))
  local id
  for _, c in ipairs(s.organizations[1].tss[1].clients) do
    if c.serial_number == "POS-900" then id = c.client_id end
  end
  lu.assertNotNil(id)
  how, code, out = cli({ "provision", "deactivate-client", "--config", cfg_path, "--client", id })
  lu.assertEquals(how .. code, "exit0", out)
  how, code, out = cli({ "provision", "change-pin", "--config", cfg_path, "--tss", "default" })
  lu.assertEquals(how .. code, "exit0", out)
  lu.assertStrContains(out, "admin PIN changed")
  how, code, out = cli({ "provision", "change-pin", "--config", cfg_path })
  lu.assertEquals(how .. code, "exit2", out)
end

local function assert_refused(store_path, env, expect_code, expect_text)
  local before = H.digest(store_path)
  local key_before = H.digest(store_path .. ".key")
  for _, args in ipairs{
    { "provision", "--config", cfg_path, "--store", store_path },
    { "status", "--config", cfg_path, "--store", store_path },
  } do
    local how, code, out = cli(args, env)
    lu.assertEquals(how .. code, "exit" .. expect_code, out)
    lu.assertStrContains(out, expect_text)
    lu.assertEquals(H.digest(store_path), before, "store modified by: " .. args[1])
    lu.assertEquals(H.digest(store_path .. ".key"), key_before, "key file changed by: " .. args[1])
  end
end

function TestCli:test_wrong_key_file()
  local p = copy_store("wrongkey")
  os.remove(p .. ".key")
  assert(core.store.write_private_file(p .. ".key", string.rep("w", 32)))
  assert_refused(p, nil, 1, "wrong key file?")
end

function TestCli:test_missing_key_file()
  local p = copy_store("nokey")
  os.remove(p .. ".key")
  assert_refused(p, nil, 1, "does not exist")
  lu.assertNil(H.read_file(p .. ".key"), "a missing key file must not be re-created for an existing store")
end

function TestCli:test_key_file_from_env_and_bad_permissions()
  local p = copy_store("envkey")
  local kf = dir .. "/envkey/elsewhere.key"
  assert(os.rename(p .. ".key", kf))
  local how, code, out = cli({ "status", "--store", p }, { FISKALY_KEY_FILE = kf })
  lu.assertEquals(how .. code, "exit0", out)
  assert(os.execute("chmod 640 " .. H.quote(kf)))
  local before = H.digest(p)
  how, code, out = cli({ "provision", "--config", cfg_path, "--store", p }, { FISKALY_KEY_FILE = kf })
  lu.assertEquals(how .. code, "exit1", out)
  lu.assertStrContains(out, "chmod 600")
  lu.assertEquals(H.digest(p), before)
end

function TestCli:test_corrupt_store()
  local p = dir .. "/corrupt.db"
  local bytes = {}
  for i = 1, 4096 do bytes[i] = string.char((i * 131 + 7) % 256) end
  H.write_file(p, table.concat(bytes))
  assert_refused(p, nil, 1, "not a fiskaly store")
  lu.assertNil(H.read_file(p .. ".key"))
end

function TestCli:test_truncated_store()
  -- a real store cut short: SQLite may open it, but it must not be "repaired"
  local src = copy_store("trunc")
  local data = H.read_file(src)
  lu.assertTrue(#data >= 8 * 4096, "store smaller than expected: " .. #data)
  H.write_file(src, data:sub(1, (#data // 4096 // 2) * 4096))   -- whole pages: the header still parses
  local before = H.digest(src)
  for _, cmd in ipairs{ "provision", "status" } do
    local how, code, out = cli({ cmd, "--config", cfg_path, "--store", src })
    lu.assertEquals(how .. code, "exit1", out)
    lu.assertStrContains(out, "is damaged")
    lu.assertStrContains(out, "restore it from a backup")
    lu.assertEquals(H.digest(src), before)
  end
end

function TestCli:test_newer_schema()
  local p = copy_store("newer")
  local d = assert(core.store.open(p))
  assert(d:run("INSERT INTO schema_migrations(version, name, applied_at) VALUES (99, 'future', 0)"))
  d:close()
  assert_refused(p, nil, 1, "schema version 99")
end

function TestCli:test_locked_store()
  local p = copy_store("locked")
  local holder = assert(core.store.open(p))
  assert(holder:begin("exclusive"))
  assert(holder:run("UPDATE meta SET value = value WHERE key = 'key_check'"))
  local before = H.digest(p)
  local how, code, out = cli({ "provision", "--config", cfg_path, "--store", p })
  lu.assertEquals(how .. code, "exit1", out)
  lu.assertStrContains(out, "locked")
  lu.assertStrContains(out, "another process")
  lu.assertEquals(H.digest(p), before)
  assert(holder:rollback())
  holder:close()
  -- once the lock is gone the same command succeeds
  how, code, out = cli({ "provision", "--config", cfg_path, "--store", p })
  lu.assertEquals(how .. code, "exit0", out)
end

function TestCli:test_second_provision_run_refused()
  local p = copy_store("concurrent")
  local lock = assert(core.store.lock_file(p .. ".lock"))   -- "another run" holds the store
  local before = H.digest(p)
  local how, code, out = cli({ "provision", "--config", cfg_path, "--store", p })
  lu.assertEquals(how .. code, "exit1", out)
  lu.assertStrContains(out, "another provisioning run")
  lu.assertEquals(H.digest(p), before)
  -- status (read-only) still works meanwhile
  how, code, out = cli({ "status", "--store", p })
  lu.assertEquals(how .. code, "exit0", out)
  lock:release()
  how, code, out = cli({ "provision", "--config", cfg_path, "--store", p })
  lu.assertEquals(how .. code, "exit0", out)
end

function TestCli:test_status_without_store()
  local how, code, out = cli({ "status", "--store", dir .. "/none.db" })
  lu.assertEquals(how .. code, "exit1")
  lu.assertStrContains(out, "does not exist")
  lu.assertNil(H.read_file(dir .. "/none.db"))
  how, code, out = cli({ "status" }, { FISKALY_STORE = false })
  lu.assertEquals(how .. code, "exit2")
  lu.assertStrContains(out, "no store")
end

local rc = lu.LuaUnit.run()
h.stop()
H.rmdir(dir)
os.exit(rc)
