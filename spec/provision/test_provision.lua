-- fiskaly.provision in-process against the sandbox: step events, several TSS
-- and clients, idempotent reruns, operations after setup, recovery paths,
-- and no secret in clear anywhere on disk or in the progress events.
local lu = require "luaunit"
local H = require "provision.helpers"
local provision = require "fiskaly.provision"
local store = require "fiskaly.store"
local fiskaly = require "fiskaly"

local h = H.start_sandbox()

local ORG = { name = "Cafe Kreuzberg", address_line1 = "Oranienstr. 2", zip = "10997", town = "Berlin",
  country_code = "DEU" }

local function setup(cfg_extra)
  local dir = H.tmpdir()
  local st = assert(store.open{ path = dir .. "/t.db" })
  local cfg = { organization_id = h.organization_id, organization = {} }
  for k, v in pairs(ORG) do cfg.organization[k] = v end
  cfg.organization.name = ORG.name .. " " .. dir:match("[^/]+$")
  for k, v in pairs(cfg_extra or {}) do cfg[k] = v end
  local events = {}
  local opts = { store = st, client = H.hub_client(h), config = cfg,
    on_step = function(ev) events[#events + 1] = ev end }
  return opts, events, dir
end

local function sign_for(st)
  local org = st:orgs()[1]
  local key = assert(st:api_key_active(org.name))
  return fiskaly.new{ base_url = h.base_url, api_key = key.api_key, api_secret = key.secret }.sign, org
end

local function org_state(org_id)
  local state = H.sandbox_state(h)
  return H.tss_of(state, org_id), state
end

TestProvision = {}

function TestProvision:test_full_run_events_and_rerun()
  local opts, events, dir = setup{ serial_number = "POS-001" }
  local res = assert(provision.run(opts))
  lu.assertEquals(#res.tss, 1)
  lu.assertEquals(res.tss[1].state, "INITIALIZED")
  lu.assertEquals(res.tss[1].clients[1].serial_number, "POS-001")
  -- every step reported start then done, in the documented order
  local done = {}
  for _, ev in ipairs(events) do
    if ev.status ~= "start" then done[#done + 1] = ev.step .. "=" .. ev.status end
  end
  lu.assertEquals(done, {
    "management_auth=done", "organization=done", "api_key=done", "sign_auth=done", "tss_create=done",
    "tss_personalize=done", "admin_pin=done", "admin_auth=done", "tss_initialize=done",
    "client_create=done", "admin_logout=done" })
  lu.assertEquals(events[1].status, "start")
  -- rerun: nothing created, everything skipped
  events = {}
  opts.on_step = function(ev) events[#events + 1] = ev end
  local before = H.sandbox_state(h)
  local res2 = assert(provision.run(opts))
  lu.assertEquals(res2.tss[1].tss_id, res.tss[1].tss_id)
  for _, ev in ipairs(events) do
    if ev.status ~= "start" and ev.step ~= "sign_auth" then lu.assertEquals(ev.status, "skip", ev.step) end
  end
  local after = H.sandbox_state(h)
  lu.assertEquals(#after.tss, #before.tss)
  lu.assertEquals(#after.organizations, #before.organizations)
  lu.assertEquals(#after.api_keys, #before.api_keys)
  -- the journal holds intent and result of every step
  local steps = opts.store:steps("tss:default")
  lu.assertEquals(steps[1].step, "tss_create")
  lu.assertEquals(steps[1].status, "done")
  lu.assertEquals(steps[1].intent.tss_id, res.tss[1].tss_id)
  -- no secret in events, nor in clear in the database or its WAL
  local st = opts.store
  local tss_id = res.tss[1].tss_id
  local secrets = {
    puk = assert(st:get_secret("tss", tss_id, "admin_puk")),
    pin = assert(st:get_secret("tss", tss_id, "admin_pin")),
    api_secret = assert(st:api_key_active(st:orgs()[1].name)).secret,
  }
  local blob = (H.read_file(dir .. "/t.db") or "") .. (H.read_file(dir .. "/t.db-wal") or "")
  lu.assertTrue(#blob > 0)
  lu.assertNotNil(blob:find(tss_id, 1, true))   -- the scan sees clear text where it exists
  for name, s in pairs(secrets) do
    lu.assertNil(blob:find(s, 1, true), name .. " in clear on disk")
    for _, ev in ipairs(events) do lu.assertNotStrContains(tostring(ev.detail), s) end
  end
  st:close()
  H.rmdir(dir)
end

function TestProvision:test_several_tss_and_clients()
  local opts, _, dir = setup{ tss = {
    { label = "front", clients = { "POS-1", "POS-2" } },
    { label = "back", clients = { "POS-3" } },
  } }
  local res = assert(provision.run(opts))
  lu.assertEquals(#res.tss, 2)
  local tss = org_state(res.organization_id)
  lu.assertEquals(#tss, 2)
  local serials = {}
  for _, t in ipairs(tss) do
    lu.assertEquals(t.state, "INITIALIZED")
    for _, c in ipairs(t.clients) do serials[#serials + 1] = c.serial_number end
  end
  table.sort(serials)
  lu.assertEquals(serials, { "POS-1", "POS-2", "POS-3" })
  -- adding a client to the config adds exactly that one
  opts.config.tss[2].clients[2] = "POS-4"
  assert(provision.run(opts))
  tss = org_state(res.organization_id)
  local n = 0
  for _, t in ipairs(tss) do n = n + #t.clients end
  lu.assertEquals(n, 4)
  opts.store:close()
  H.rmdir(dir)
end

function TestProvision:test_operations_after_setup()
  local opts, _, dir = setup{ serial_number = "POS-A" }
  local res = assert(provision.run(opts))
  local st, tss_id = opts.store, res.tss[1].tss_id
  local sign = sign_for(st)
  local old_pin = assert(st:get_secret("tss", tss_id, "admin_pin"))
  -- change the admin PIN
  assert(provision.change_admin_pin{ store = st, client = opts.client, tss = "default" })
  local new_pin = assert(st:get_secret("tss", tss_id, "admin_pin"))
  lu.assertNotEquals(new_pin, old_pin)
  lu.assertFalse(st:get_secret("tss", tss_id, "pending_pin"))
  local ok, err = sign:admin_auth(tss_id, old_pin)
  lu.assertNil(ok)
  lu.assertEquals(err.status, 401)
  assert(sign:admin_auth(tss_id, new_pin))
  assert(sign:admin_logout(tss_id))
  -- an explicit PIN
  assert(provision.change_admin_pin{ store = st, client = opts.client, tss = tss_id, new_pin = "7654321098" })
  lu.assertEquals(st:get_secret("tss", tss_id, "admin_pin"), "7654321098")
  local short_ok, short_err = provision.change_admin_pin{ store = st, client = opts.client, tss = tss_id, new_pin = "123" }
  lu.assertNil(short_ok)
  lu.assertEquals(short_err.code, "CONFIG")
  -- add a client, deactivate it, reactivate it
  local c = assert(provision.add_client{ store = st, client = opts.client, tss = "default", serial_number = "POS-B" })
  lu.assertEquals(c.state, "REGISTERED")
  assert(provision.deactivate_client{ store = st, client = opts.client, client_id = c.client_id })
  lu.assertEquals(st:client_get(c.client_id).state, "DEREGISTERED")
  local remote = org_state(res.organization_id)[1]
  local states = {}
  for _, rc in ipairs(remote.clients) do states[rc.serial_number] = rc.state end
  lu.assertEquals(states, { ["POS-A"] = "REGISTERED", ["POS-B"] = "DEREGISTERED" })
  assert(provision.deactivate_client{ store = st, client = opts.client, client_id = c.client_id, state = "REGISTERED" })
  lu.assertEquals(st:client_get(c.client_id).state, "REGISTERED")
  -- bad serial numbers are refused before any call
  local bad, berr = provision.add_client{ store = st, client = opts.client, tss = "default", serial_number = "POS_1/x" }
  lu.assertNil(bad)
  lu.assertEquals(berr.code, "CONFIG")
  -- list
  local list = assert(provision.list(st))
  local t = list.organizations[1].tss[1]
  lu.assertTrue(t.has_puk)
  lu.assertTrue(t.has_pin)
  lu.assertEquals(#t.clients, 2)
  -- disable the TSS (irreversible)
  assert(provision.disable_tss{ store = st, client = opts.client, tss = tss_id })
  lu.assertEquals(st:tss_get(tss_id).state, "DISABLED")
  lu.assertEquals(org_state(res.organization_id)[1].state, "DISABLED")
  assert(provision.disable_tss{ store = st, client = opts.client, tss = tss_id })   -- idempotent
  st:close()
  H.rmdir(dir)
end

function TestProvision:test_blocked_pin_is_reset_with_the_puk()
  local opts, _, dir = setup{ serial_number = "POS-1" }
  local res = assert(provision.run(opts))
  local st, tss_id = opts.store, res.tss[1].tss_id
  local sign = sign_for(st)
  for _ = 1, 5 do sign:admin_auth(tss_id, "0000000000") end   -- block the PIN
  lu.assertTrue(org_state(res.organization_id)[1].admin_pin_blocked)
  local c = assert(provision.add_client{ store = st, client = opts.client, tss = "default", serial_number = "POS-2" })
  lu.assertEquals(c.state, "REGISTERED")
  local remote = org_state(res.organization_id)[1]
  lu.assertFalse(remote.admin_pin_blocked)
  assert(sign:admin_auth(tss_id, assert(st:get_secret("tss", tss_id, "admin_pin"))))
  assert(sign:admin_logout(tss_id))
  st:close()
  H.rmdir(dir)
end

function TestProvision:test_tss_past_created_without_puk_is_recorded_lost()
  local opts, _, dir = setup{ serial_number = "POS-1" }
  assert(provision.run(opts))
  local st = opts.store
  local sign, org = sign_for(st)
  -- a TSS whose intent was recorded, but which left CREATED without its PUK
  -- ever reaching the store (only possible when the store lost data)
  local orphan = require("fiskaly.core").crypto.uuid4()
  assert(st:tss_insert{ tss_id = orphan, org_name = org.name, label = "second" })
  assert(sign:create_tss(orphan, {}))
  assert(sign:update_tss(orphan, { state = "UNINITIALIZED" }))
  opts.config.tss = { { label = "default", clients = { "POS-1" } }, { label = "second", clients = { "POS-2" } } }
  opts.config.serial_number = nil
  local res = assert(provision.run(opts))
  lu.assertEquals(#res.tss, 2)
  lu.assertNotEquals(res.tss[2].tss_id, orphan)
  lu.assertEquals(res.tss[2].state, "INITIALIZED")
  local rec = st:tss_get(orphan)
  lu.assertEquals(rec.state, "lost")
  lu.assertStrContains(rec.reason, "PUK")
  st:close()
  H.rmdir(dir)
end

function TestProvision:test_config_errors()
  local opts, _, dir = setup{ serial_number = "bad_serial" }
  local ok, err = provision.run(opts)
  lu.assertNil(ok)
  lu.assertEquals(err.code, "CONFIG")
  lu.assertStrContains(err.message, "bad_serial")
  opts.config.serial_number = "POS-1"
  opts.config.organization.zip = nil
  ok, err = provision.run(opts)
  lu.assertNil(ok)
  lu.assertStrContains(err.message, "organization.zip")
  opts.config.organization.zip = "10115"
  opts.config.tss = { { label = "a" }, { label = "a" } }
  ok, err = provision.run(opts)
  lu.assertNil(ok)
  lu.assertStrContains(err.message, "duplicate TSS label")
  -- nothing was created at the service by refused configurations
  lu.assertEquals(#opts.store:orgs(), 0)
  opts.store:close()
  H.rmdir(dir)
end

function TestProvision:test_service_error_stops_and_resumes()
  local opts, events, dir = setup{ serial_number = "POS-1" }
  -- wrong HUB secret: management auth fails, nothing is recorded as done
  opts.client = fiskaly.new{ base_url = h.base_url, api_key = h.api_key, api_secret = "wrong-secret-xyz" }
  local ok, err = provision.run(opts)
  lu.assertNil(ok)
  lu.assertEquals(err.status, 401)
  lu.assertEquals(events[#events].status, "failed")
  lu.assertEquals(events[#events].step, "management_auth")
  lu.assertNotStrContains(tostring(events[#events].detail), "wrong-secret-xyz")
  -- with the right credentials it completes
  opts.client = H.hub_client(h)
  assert(provision.run(opts))
  opts.store:close()
  H.rmdir(dir)
end

function TestProvision:test_new_token_mid_flow_loses_admin_session()
  -- right after the admin login the SIGN DE client drops its token: the next
  -- call authenticates afresh (a new session without the admin login, 403),
  -- provisioning logs in as admin again and goes on
  local opts, events, dir = setup{ serial_number = "POS-1" }
  local real = H.hub_client(h)
  local captured
  opts.client = setmetatable({
    with_credentials = function(_, k, sec)
      captured = real:with_credentials(k, sec)
      return captured
    end,
  }, { __index = real })
  local dropped = 0
  opts.on_step = function(ev)
    events[#events + 1] = ev
    if ev.step == "admin_auth" and ev.status == "done" then
      captured.sign:forget_token()
      dropped = dropped + 1
    end
  end
  local res = assert(provision.run(opts))
  lu.assertEquals(dropped, 1)
  lu.assertTrue(captured.sign:auth_count() >= 2)
  lu.assertEquals(res.tss[1].state, "INITIALIZED")
  lu.assertEquals(res.tss[1].clients[1].state, "REGISTERED")
  opts.store:close()
  H.rmdir(dir)
end

function TestProvision:test_random_pin()
  local seen = {}
  for _ = 1, 50 do
    local p = provision._random_pin()
    lu.assertStrMatches(p, "^%d%d%d%d%d%d%d%d%d%d$")
    seen[p] = true
  end
  local n = 0
  for _ in pairs(seen) do n = n + 1 end
  lu.assertEquals(n, 50)
end

local rc = lu.LuaUnit.run()
h.stop()
os.exit(rc)
