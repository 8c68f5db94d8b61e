-- Crash safety of `fiskaly provision`: SIGKILL the provisioning process at
-- every step boundary and inside every call (before the request, after the
-- service applied it but before the answer is stored), rerun it, and check
-- the sandbox's own state: exactly one organization, one TSS whose PUK and
-- PIN the store knows (proven by using them), one client.
local lu = require "luaunit"
local H = require "provision.helpers"
local provision = require "fiskaly.provision"
local store = require "fiskaly.store"

-- Every (step, point) of a fresh run.
local POINTS = {}
for _, step in ipairs(provision.STEPS) do
  for _, point in ipairs(provision.POINTS) do POINTS[#POINTS + 1] = step .. ":" .. point end
end

-- Checks the final state of one sandbox + store; returns the store's ids.
local function check_final(h, dir, label)
  local state = H.sandbox_state(h)
  local orgs = H.managed_orgs(state, h.organization_id)
  lu.assertEquals(#orgs, 1, label .. ": organizations created")
  local org_id = orgs[1].id
  local tss = H.tss_of(state, org_id)
  lu.assertEquals(#tss, 1, label .. ": TSS created")
  lu.assertEquals(tss[1].state, "INITIALIZED", label)
  lu.assertFalse(tss[1].admin_pin_blocked, label)
  lu.assertEquals(#tss[1].clients, 1, label .. ": clients created")
  lu.assertEquals(tss[1].clients[1].serial_number, "POS-001", label)
  lu.assertEquals(tss[1].clients[1].state, "REGISTERED", label)

  -- the store knows the same objects ...
  local st = assert(store.open{ path = dir .. "/terminal.db" })
  local org = st:orgs()[1]
  lu.assertEquals(org.org_id, org_id, label)
  local t = st:tss_list(org.name)
  local live = {}
  for _, r in ipairs(t) do if r.state ~= "lost" then live[#live + 1] = r end end
  lu.assertEquals(#live, 1, label)
  lu.assertEquals(live[1].tss_id, tss[1].id, label)
  lu.assertEquals(live[1].state, "INITIALIZED", label)
  local clients = st:clients(live[1].tss_id)
  lu.assertEquals(#clients, 1, label)
  lu.assertEquals(clients[1].client_id, tss[1].clients[1].id, label)

  -- ... and its PIN and PUK work at the service
  local key = assert(st:api_key_active(org.name))
  local sign = H.hub_client(h):with_credentials(key.api_key, key.secret).sign
  local pin = assert(st:get_secret("tss", live[1].tss_id, "admin_pin"))
  local puk = assert(st:get_secret("tss", live[1].tss_id, "admin_puk"))
  local ok, err = sign:admin_auth(live[1].tss_id, pin)
  lu.assertNotNil(ok, label .. ": admin auth with the stored PIN: " .. tostring(err and err.message))
  assert(sign:admin_logout(live[1].tss_id))
  local ok2, err2 = sign:change_admin_pin(live[1].tss_id, puk, pin)
  lu.assertNotNil(ok2, label .. ": PIN change with the stored PUK: " .. tostring(err2 and err2.message))

  -- API keys: one, unless the crash lost a secret (then the loss is recorded)
  local keys = H.keys_of(state, org_id)
  local lost = 0
  for _, k in ipairs(st:api_keys(org.name)) do
    if k.state == "lost" then
      lost = lost + 1
      lu.assertStrContains(k.reason, "not stored")
    end
  end
  lu.assertEquals(#keys, 1 + lost, label .. ": API keys at the service vs lost keys recorded")
  st:close()
  return { pin = pin, puk = puk, secret = key.secret, lost_keys = lost }
end

local function assert_no_secrets(output, secrets, label)
  for name, s in pairs(secrets) do
    if type(s) == "string" and #s >= 6 then
      lu.assertNil(output:find(s, 1, true), label .. ": " .. name .. " printed")
    end
  end
end

TestCrash = {}

function TestCrash:test_points_cover_all_steps()
  lu.assertEquals(#POINTS, #provision.STEPS * 4)
  lu.assertTrue(#POINTS >= 44)
end

-- One fresh sandbox per crash point.
function TestCrash:test_sigkill_at_every_point_then_resume()
  local killed, lost_keys = 0, 0
  for _, point in ipairs(POINTS) do
    local h = H.start_sandbox()
    local dir = H.tmpdir()
    local cfg = H.config(h, dir)
    local how, code, out1 = H.run_cli(h, { "provision", "--config", cfg }, { FISKALY_TEST_CRASH_AT = point }, dir)
    lu.assertEquals(how .. ":" .. tostring(code), "signal:9", point .. ": the run was not killed:\n" .. out1)
    killed = killed + 1
    local how2, code2, out2 = H.run_cli(h, { "provision", "--config", cfg }, nil, dir)
    lu.assertEquals(how2 .. ":" .. tostring(code2), "exit:0", point .. ": resume failed:\n" .. out2)
    local secrets = check_final(h, dir, point)
    lost_keys = lost_keys + secrets.lost_keys
    -- a third run changes nothing
    local before = H.sandbox_state(h)
    local how3, code3, out3 = H.run_cli(h, { "provision", "--config", cfg }, nil, dir)
    lu.assertEquals(how3 .. ":" .. tostring(code3), "exit:0", point .. ": third run:\n" .. out3)
    for _, step in ipairs{ "organization", "api_key", "tss_create", "tss_personalize", "admin_pin",
        "tss_initialize", "client_create" } do
      lu.assertNotNil(out3:find("%] " .. step .. "%s+skip"), point .. ": third run did " .. step .. ":\n" .. out3)
    end
    local after = H.sandbox_state(h)
    lu.assertEquals(#after.organizations, #before.organizations, point)
    lu.assertEquals(#after.tss, #before.tss, point)
    lu.assertEquals(#after.api_keys, #before.api_keys, point)
    check_final(h, dir, point .. " (third run)")
    assert_no_secrets(out1 .. out2 .. out3, secrets, point)
    h.stop()
    H.rmdir(dir)
  end
  lu.assertEquals(killed, #POINTS)
  -- only a kill between "key created" and "secret stored" loses a key
  lu.assertEquals(lost_keys, 1)
  io.stderr:write(string.format("\n  %d crash points, each killed, resumed and verified\n", killed))
end

-- One sandbox and one store, killed at every point in turn (each rerun
-- resumes the previous one's leftovers), then a clean finish.
function TestCrash:test_chain_of_kills()
  local h = H.start_sandbox()
  local dir = H.tmpdir()
  local cfg = H.config(h, dir)
  local missed = {}
  for _, point in ipairs(POINTS) do
    local how, code, out = H.run_cli(h, { "provision", "--config", cfg }, { FISKALY_TEST_CRASH_AT = point }, dir)
    if how ~= "signal" or code ~= 9 then missed[#missed + 1] = point .. " (" .. how .. " " .. code .. "):\n" .. out end
  end
  lu.assertEquals(#missed, 0, "points not reached in the chain:\n" .. table.concat(missed, "\n"))
  local how, code, out = H.run_cli(h, { "provision", "--config", cfg }, nil, dir)
  lu.assertEquals(how .. ":" .. tostring(code), "exit:0", out)
  check_final(h, dir, "chain")
  h.stop()
  H.rmdir(dir)
end

-- Two TSS with two clients each: kill at the second occurrence of every
-- per-TSS call point (the second TSS) and at every later client.
function TestCrash:test_several_tss_and_clients()
  local points = {}
  for _, step in ipairs{ "tss_create", "tss_personalize", "admin_pin", "admin_auth", "tss_initialize",
      "admin_logout" } do
    for _, p in ipairs{ "before_request", "after_request" } do points[#points + 1] = step .. ":" .. p .. "#2" end
  end
  for n = 2, 4 do
    for _, p in ipairs{ "before_request", "after_request" } do points[#points + 1] = "client_create:" .. p .. "#" .. n end
  end
  local tss_cfg = { { label = "front", clients = { "POS-1", "POS-2" } }, { label = "back", clients = { "POS-3", "POS-4" } } }
  for _, point in ipairs(points) do
    local h = H.start_sandbox()
    local dir = H.tmpdir()
    local cfg = H.config(h, dir, { serial_number = false, tss = tss_cfg })
    local how, code, out = H.run_cli(h, { "provision", "--config", cfg }, { FISKALY_TEST_CRASH_AT = point }, dir)
    lu.assertEquals(how .. ":" .. tostring(code), "signal:9", point .. ":\n" .. out)
    how, code, out = H.run_cli(h, { "provision", "--config", cfg }, nil, dir)
    lu.assertEquals(how .. ":" .. tostring(code), "exit:0", point .. ":\n" .. out)
    local state = H.sandbox_state(h)
    local orgs = H.managed_orgs(state, h.organization_id)
    lu.assertEquals(#orgs, 1, point)
    local tss = H.tss_of(state, orgs[1].id)
    lu.assertEquals(#tss, 2, point)
    local st = assert(store.open{ path = dir .. "/terminal.db" })
    local key = assert(st:api_key_active(st:orgs()[1].name))
    local sign = H.hub_client(h):with_credentials(key.api_key, key.secret).sign
    for _, t in ipairs(tss) do
      lu.assertEquals(t.state, "INITIALIZED", point)
      lu.assertEquals(#t.clients, 2, point)
      assert(sign:admin_auth(t.id, assert(st:get_secret("tss", t.id, "admin_pin"))))
      assert(sign:admin_logout(t.id))
    end
    st:close()
    h.stop()
    H.rmdir(dir)
  end
end

-- Operations after setup, killed before the request and after the service
-- applied it; rerunning the same command completes it exactly once.
function TestCrash:test_operations()
  local h = H.start_sandbox()
  local dir = H.tmpdir()
  local cfg = H.config(h, dir)
  local function cli(args, crash)
    local a = { "provision" }
    for _, x in ipairs(args) do a[#a + 1] = x end
    a[#a + 1] = "--config"
    a[#a + 1] = cfg
    return H.run_cli(h, a, crash and { FISKALY_TEST_CRASH_AT = crash } or nil, dir)
  end
  assert(select(2, cli({})) == 0)
  local st = assert(store.open{ path = dir .. "/terminal.db" })
  local org = st:orgs()[1]
  local tss_id = st:tss_list(org.name)[1].tss_id
  st:close()
  local function sign_and_store()
    local s = assert(store.open{ path = dir .. "/terminal.db" })
    local key = assert(s:api_key_active(org.name))
    return H.hub_client(h):with_credentials(key.api_key, key.secret).sign, s
  end
  local function remote_tss()
    for _, t in ipairs(H.sandbox_state(h).tss) do if t.id == tss_id then return t end end
  end
  for _, p in ipairs{ "before_request", "after_request" } do
    -- change-pin
    local how, code, out = cli({ "change-pin", "--tss", "default" }, "admin_pin:" .. p)
    lu.assertEquals(how .. code, "signal9", out)
    how, code, out = cli({ "change-pin", "--tss", "default" })
    lu.assertEquals(how .. code, "exit0", out)
    local sign, s = sign_and_store()
    lu.assertFalse(s:get_secret("tss", tss_id, "pending_pin"))
    assert(sign:admin_auth(tss_id, assert(s:get_secret("tss", tss_id, "admin_pin"))), p)
    assert(sign:admin_logout(tss_id))
    s:close()
    -- add-client
    local serial = "POS-ADD-" .. p:sub(1, 1)
    how, code, out = cli({ "add-client", "--tss", "default", "--serial", serial }, "client_create:" .. p)
    lu.assertEquals(how .. code, "signal9", out)
    how, code, out = cli({ "add-client", "--tss", "default", "--serial", serial })
    lu.assertEquals(how .. code, "exit0", out)
    local n = 0
    for _, c in ipairs(remote_tss().clients) do if c.serial_number == serial then n = n + 1 end end
    lu.assertEquals(n, 1, serial)
    -- deactivate-client
    _, s = sign_and_store()
    local cid = s:client_by_serial(tss_id, serial).client_id
    s:close()
    how, code, out = cli({ "deactivate-client", "--client", cid }, "client_update:" .. p)
    lu.assertEquals(how .. code, "signal9", out)
    how, code, out = cli({ "deactivate-client", "--client", cid })
    lu.assertEquals(how .. code, "exit0", out)
    for _, c in ipairs(remote_tss().clients) do
      if c.id == cid then lu.assertEquals(c.state, "DEREGISTERED") end
    end
  end
  -- disable-tss, killed after the service applied it
  local how, code, out = cli({ "disable-tss", "--tss", tss_id }, "tss_disable:after_request")
  lu.assertEquals(how .. code, "signal9", out)
  lu.assertEquals(remote_tss().state, "DISABLED")
  how, code, out = cli({ "disable-tss", "--tss", tss_id })
  lu.assertEquals(how .. code, "exit0", out)
  local s = assert(store.open{ path = dir .. "/terminal.db" })
  lu.assertEquals(s:tss_get(tss_id).state, "DISABLED")
  s:close()
  h.stop()
  H.rmdir(dir)
end

os.exit(lu.LuaUnit.run())
