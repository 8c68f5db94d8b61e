-- The per-host circuit breaker against the fault-injecting sandbox: it opens
-- after N consecutive host failures (5xx, dropped connections, refused
-- connections), then fails fast without a single request reaching the host,
-- shares its state across the clients of one family, lets exactly one probe
-- through after the cool-down (an injected clock: nothing sleeps), re-opens when
-- the probe fails and closes when it succeeds.
local lu = require "luaunit"
local fiskaly = require "fiskaly"
local helper = require "helpers.sandbox"
local R = require "helpers.reliability"

local sb = helper.start()
local ctl = R.control(sb)
local p = R.provision(sb, { retry = { base_ms = 5, max_ms = 10, seed = 3 } })

local now = os.time() + 0.0
local function clock() return now end

local events = {}
local function family(extra)
  local o = { base_url = sb.base_url, api_key = p.api_key, api_secret = p.api_secret, clock = clock,
    retry = { attempts = 5, base_ms = 5, max_ms = 10, seed = 3 },
    breaker = { failures = 3, cooldown_ms = 30000 },
    log = function(ev) events[#events + 1] = ev end }
  for k, v in pairs(extra or {}) do o[k] = v end
  return assert(fiskaly.new(o))
end

local HOST = require("fiskaly.retry").host_of(sb.base_url)

TestBreaker = {}

function TestBreaker:setUp()
  ctl.clear()
  events = {}
end

-- Opens the breaker of client c with 503s; returns the error of the call that opened it.
local function open_it(c)
  assert(c.sign:auth())
  ctl.clear_requests()
  ctl.faults{ { method = "GET", path = "^/api/v2/tss$", action = "status", status = 503, code = "E_TSS_LOCKED", count = -1 } }
  local res, err = c.sign:list_tss()
  lu.assertNil(res)
  return err
end

function TestBreaker.test_opens_fails_fast_and_recovers_after_the_cooldown()
  local c = family()
  local err = open_it(c)
  -- three 503s reached the host, then the breaker stopped the call's retries
  lu.assertEquals(#ctl.matching("/tss", "GET"), 3)
  lu.assertEquals(err.code, "CIRCUIT_OPEN")
  lu.assertEquals(err.kind, "network")
  lu.assertTrue(err.retryable)
  lu.assertStrContains(err.message, "next probe in 30 s")
  lu.assertStrContains(tostring(err), "CIRCUIT_OPEN")
  local b = c:breakers()[HOST]
  lu.assertEquals(b.state, "open")
  lu.assertEquals(b.opened, 1)
  lu.assertEquals(b.probe_in_ms, 30000)

  -- open: every call of the family fails fast, on both APIs, and nothing is sent
  ctl.clear()           -- the host is healthy again, but the breaker does not know yet
  ctl.clear_requests()
  local sibling = c:with_credentials(p.api_key, p.api_secret)
  for _, call in ipairs{
    function() return c.sign:get_tss(p.tss_id) end,
    function() return c.sign:upsert_transaction(p.tss_id, fiskaly.uuid4(), 1, { state = "ACTIVE", client_id = p.client_id }) end,
    function() return c.management:list_organizations() end,
    function() return sibling.sign:get_tss(p.tss_id) end,   -- its first auth is refused too
  } do
    local r, e = call()
    lu.assertNil(r)
    lu.assertEquals(e.code, "CIRCUIT_OPEN")
    lu.assertEquals(e.attempts, 1)          -- not retried: fail fast
  end
  lu.assertEquals(#ctl.requests(), 0)
  -- another family (its own fiskaly.new) has its own breaker
  assert(family().sign:get_tss(p.tss_id))
  lu.assertTrue(#ctl.requests() >= 1)

  -- 29 s later: still open
  now = now + 29
  ctl.clear_requests()
  local _, e2 = c.sign:get_tss(p.tss_id)
  lu.assertEquals(e2.code, "CIRCUIT_OPEN")
  lu.assertStrContains(e2.message, "next probe in 1 s")
  lu.assertEquals(#ctl.requests(), 0)

  -- after the cool-down one probe goes through, succeeds, and closes the breaker
  now = now + 2
  local tss = assert(c.sign:get_tss(p.tss_id))
  lu.assertEquals(tss._id, p.tss_id)
  lu.assertEquals(#ctl.requests(), 1)
  local probe = events[#events]
  lu.assertTrue(probe.breaker_probe)
  lu.assertEquals(c:breakers()[HOST].state, "closed")
  assert(R.sale({ pos = c, tss_id = p.tss_id, client_id = p.client_id }, "1.00"))
end

function TestBreaker.test_a_failed_probe_opens_it_again()
  local c = family()
  lu.assertEquals(open_it(c).code, "CIRCUIT_OPEN")
  now = now + 31
  ctl.clear_requests()
  local _, err = c.sign:list_tss()               -- the probe meets the 503 again
  lu.assertEquals(err.code, "CIRCUIT_OPEN")
  lu.assertEquals(#ctl.requests(), 1)           -- exactly one probe reached the host
  local b = c:breakers()[HOST]
  lu.assertEquals(b.state, "open")
  lu.assertEquals(b.opened, 2)
  lu.assertEquals(b.probe_in_ms, 30000)         -- a new cool-down from the probe's failure
  ctl.clear()
  now = now + 31
  assert(c.sign:list_tss())
  lu.assertEquals(c:breakers()[HOST].state, "closed")
end

-- Half-open with many concurrent tasks (fiskaly.runtime): exactly one probe
-- reaches the host; the others fail fast while it is in flight.
function TestBreaker.test_half_open_lets_exactly_one_concurrent_probe_through()
  local runtime = require "fiskaly.runtime"
  local c = family()
  lu.assertEquals(open_it(c).code, "CIRCUIT_OPEN")
  ctl.clear()
  now = now + 31
  ctl.faults{ { method = "GET", path = "^/api/v2/tss/", action = "delay", delay_ms = 200 } }  -- a slow probe
  ctl.clear_requests()
  local tasks = {}
  for i = 1, 6 do
    tasks[i] = runtime.spawn(function() return c.sign:get_tss(p.tss_id) end)
  end
  assert(runtime.run(10000))
  local ok_n, open_n = 0, 0
  for _, t in ipairs(tasks) do
    local done, res, err = t:result()
    lu.assertTrue(done)
    if res then
      ok_n = ok_n + 1
    else
      lu.assertEquals(err.code, "CIRCUIT_OPEN")
      lu.assertStrContains(err.message, "probe request is in flight")
      open_n = open_n + 1
    end
  end
  lu.assertEquals({ ok_n, open_n }, { 1, 5 })
  lu.assertEquals(#ctl.requests(), 1)
  lu.assertEquals(c:breakers()[HOST].state, "closed")
end

function TestBreaker.test_dropped_connections_count_but_client_errors_do_not()
  local c = family()
  assert(c.sign:auth())
  -- 4xx answers mean the host is up: never open
  ctl.faults{ { method = "GET", path = "^/api/v2/tss/", action = "status", status = 404, code = "E_TSS_NOT_FOUND", count = -1 } }
  for _ = 1, 6 do
    local _, e = c.sign:get_tss(p.tss_id)
    lu.assertEquals(e.code, "E_TSS_NOT_FOUND")
  end
  lu.assertEquals(c:breakers()[HOST].state, "closed")
  -- connections dropped before any answer: host failures
  ctl.faults{ { method = "GET", path = "^/api/v2/tss/", action = "drop_before", count = -1 } }
  ctl.clear_requests()
  local _, e = c.sign:get_tss(p.tss_id)
  lu.assertEquals(e.code, "CIRCUIT_OPEN")
  lu.assertEquals(c:breakers()[HOST].state, "open")
  now = now + 31
  ctl.clear()
  assert(c.sign:get_tss(p.tss_id))
end

function TestBreaker.test_refused_connections_open_it()
  local c = assert(fiskaly.new{ base_url = "http://127.0.0.1:1", api_key = "k", api_secret = "s", clock = clock,
    retry = { attempts = 10, base_ms = 1, max_ms = 2, seed = 1 }, breaker = { failures = 2, cooldown_ms = 5000 } })
  local _, err = c.sign:list_tss()
  lu.assertEquals(err.code, "CIRCUIT_OPEN")
  lu.assertStrContains(err.message, "after 2 consecutive failures; next probe in 5 s")
  lu.assertEquals(err.attempts, 3)
  lu.assertEquals(c:breakers()["http://127.0.0.1:1"].state, "open")
end

function TestBreaker.test_disabled()
  local c = assert(fiskaly.new{ base_url = "http://127.0.0.1:1", api_key = "k", api_secret = "s",
    retry = { attempts = 4, base_ms = 1, max_ms = 2, seed = 1 }, breaker = false })
  local _, err = c.sign:list_tss()
  lu.assertEquals(err.code, "COULDNT_CONNECT")
  lu.assertEquals(err.attempts, 4)
end

local rc = lu.LuaUnit.run()
sb.stop()
os.exit(rc)
