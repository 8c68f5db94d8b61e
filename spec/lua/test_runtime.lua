-- The non-blocking driver (core.http submit/step, Request handles) and the
-- coroutine scheduler (fiskaly.runtime) against the sandbox, loopback only.
--
-- Latency comes from the sandbox (POST /_sandbox/latency): an API request is
-- answered `ms` after it was handled, outside its lock, so requests overlap.
-- The only time bound asserted is the one issue 4 demands: a step(timeout)
-- never waits longer than its timeout. It is checked with a sandbox latency
-- of 1000 ms and steps of 25 ms: a step that waited for a request would take
-- ~1000 ms, while the slack (200 ms) only absorbs scheduling noise on a
-- loaded machine (ctest -j, sanitizers).
local lu = require "luaunit"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local runtime = require "fiskaly.runtime"
local helper = require "helpers.sandbox"

local sb = helper.start()
local http = core.http
local SLACK_MS = 200         -- scheduling slack for the step(timeout) bound
local SLOW_MS = 1000         -- sandbox latency for the bound tests
local MAX_ROUNDS = 10000     -- bounds every driving loop

local function url(path) return sb.base_url .. path end
-- An API request the sandbox delays by its latency (no token: answered 401).
local API = "/api/v2/tss"

local ctl = http.session{}
local function control(method, path, body)
  local r = assert(ctl:request{ method = method, url = url(path), body = body and json.encode(body),
    headers = body and { ["Content-Type"] = "application/json" } or nil })
  assert(r.status == 200, path .. ": " .. r.status .. " " .. r.body)
  return json.decode(r.body)
end
local function latency(ms) control("POST", "/_sandbox/latency", { ms = ms }) end

-- Drives s until every handle in hs is done; returns the number of step calls.
local function drain(s, hs)
  local rounds = 0
  local function all_done()
    for _, h in ipairs(hs) do if not h:done() then return false end end
    return true
  end
  while not all_done() do
    rounds = rounds + 1
    assert(rounds < MAX_ROUNDS, "requests never finished")
    s:step(100)
  end
  return rounds
end

-- Runs every runtime task to completion (bounded).
local function run_all()
  local ok, why = runtime.run(20000)
  assert(ok, why)
end

TestDriver = {}

function TestDriver:setUp() latency(0) end
function TestDriver:tearDown() latency(0) end

function TestDriver.test_submit_step_result_have_the_shapes_of_request()
  local s <close> = http.session{}
  local blocking = assert(s:request{ url = url(API) })
  local h = assert(s:submit{ url = url(API) })
  lu.assertEquals(s:pending(), 1)
  lu.assertFalse(h:done())
  lu.assertStrContains(tostring(h), "in flight")
  lu.assertErrorMsgContains("still in flight", h.result, h)
  local finished, rounds = {}, 0
  while #finished == 0 do
    rounds = rounds + 1
    assert(rounds < MAX_ROUNDS)
    finished = s:step(100)
  end
  lu.assertEquals(#finished, 1)
  lu.assertIs(finished[1], h)
  lu.assertTrue(h:done())
  lu.assertEquals(s:pending(), 0)
  local r = assert(h:result())
  lu.assertEquals(r.status, blocking.status)
  lu.assertEquals(r.body, blocking.body)
  lu.assertEquals(r.headers["content-type"], blocking.headers["content-type"])
  lu.assertIsNumber(r.time_ms)
  lu.assertEquals(r.connects, 0, "the kept-alive connection of the blocking request is reused")
  -- the result can be read again; step with nothing in flight returns an empty list at once
  lu.assertEquals(assert(h:result()).status, r.status)
  lu.assertEquals(#s:step(0), 0)
  -- a transport error comes back as nil, err like session:request
  local bad = assert(s:submit{ url = "http://127.0.0.1:1/" })
  drain(s, { bad })
  local nr, err = bad:result()
  lu.assertNil(nr)
  lu.assertEquals(err.kind, "network")
  lu.assertEquals(err.code, "COULDNT_CONNECT")
end

function TestDriver.test_many_in_flight_overlap_and_connections_are_reused()
  latency(100)
  control("DELETE", "/_sandbox/requests")
  local s <close> = http.session{}
  local hs = {}
  for i = 1, 16 do hs[i] = assert(s:submit{ url = url(API), headers = { ["X-Request-Id"] = core.crypto.uuid4() } }) end
  lu.assertEquals(s:pending(), 16)
  drain(s, hs)
  local opened = 0
  for _, h in ipairs(hs) do
    local r = assert(h:result())
    lu.assertEquals(r.status, 401)
    opened = opened + r.connects
  end
  lu.assertTrue(opened >= 2 and opened <= 16, "parallel requests open parallel connections: " .. opened)
  -- the sandbox saw all 16 before it answered the first (each waits 100 ms before answering)
  local log = control("GET", "/_sandbox/requests").requests
  lu.assertEquals(#log, 16)
  local first_answer = math.huge
  for _, e in ipairs(log) do first_answer = math.min(first_answer, e.respond_ms) end
  local before = 0
  for _, e in ipairs(log) do if e.received_ms <= first_answer then before = before + 1 end end
  lu.assertTrue(before > 1, "requests overlapped: " .. before .. " arrived before the first answer")
  -- the connections stay in the pool: a second wave opens none
  latency(0)
  local again = {}
  for i = 1, 8 do again[i] = assert(s:submit{ url = url(API) }) end
  drain(s, again)
  local reopened = 0
  for _, h in ipairs(again) do reopened = reopened + assert(h:result()).connects end
  lu.assertEquals(reopened, 0, "kept-alive connections are reused by later requests")
end

function TestDriver.test_max_connections_queues_the_rest()
  latency(100)
  control("DELETE", "/_sandbox/requests")
  local s <close> = http.session{ max_connections = 3 }
  local hs = {}
  for i = 1, 9 do hs[i] = assert(s:submit{ url = url(API) }) end
  drain(s, hs)
  local opened = 0
  for _, h in ipairs(hs) do
    lu.assertEquals(assert(h:result()).status, 401)
    opened = opened + h:result().connects
  end
  lu.assertEquals(opened, 3, "3 connections, reused by the queued requests")
  -- the sandbox never had more than 3 in flight
  local ev = {}
  for _, e in ipairs(control("GET", "/_sandbox/requests").requests) do
    ev[#ev + 1] = { e.received_ms, 1 }
    ev[#ev + 1] = { e.respond_ms, -1 }
  end
  table.sort(ev, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
  local cur, peak = 0, 0
  for _, e in ipairs(ev) do cur = cur + e[2]; peak = math.max(peak, cur) end
  lu.assertEquals(#ev, 18)
  lu.assertTrue(peak >= 2 and peak <= 3, "peak in flight " .. peak)
  lu.assertErrorMsgContains("max_connections", http.session, { max_connections = 0 })
end

function TestDriver.test_cancel()
  latency(200)
  local s <close> = http.session{}
  local h = assert(s:submit{ url = url(API) })
  local other = assert(s:submit{ url = url(API) })
  s:step(0)
  h:cancel()
  lu.assertTrue(h:done())
  lu.assertEquals(s:pending(), 1)
  local r, err = h:result()
  lu.assertNil(r)
  lu.assertEquals(err.code, "CANCELLED")
  h:cancel()  -- idempotent
  drain(s, { other })
  lu.assertEquals(assert(other:result()).status, 401, "cancelling one request leaves the others alone")
  other:cancel()  -- no-op once done
  lu.assertEquals(assert(other:result()).status, 401)
end

function TestDriver.test_close_session_with_requests_in_flight()
  latency(200)
  local s = http.session{}
  local hs = {}
  for i = 1, 4 do hs[i] = assert(s:submit{ url = url(API) }) end
  s:step(0)
  s:close()
  for _, h in ipairs(hs) do
    lu.assertTrue(h:done())
    local r, err = h:result()
    lu.assertNil(r)
    lu.assertEquals(err.code, "SESSION_CLOSED")
    h:cancel()  -- harmless
  end
  lu.assertErrorMsgContains("closed", s.submit, s, { url = url(API) })
  lu.assertErrorMsgContains("closed", s.step, s, 0)
  lu.assertEquals(s:pending(), 0)
end

function TestDriver.test_handle_collected_in_flight_is_cancelled()
  latency(200)
  local s <close> = http.session{}
  local keep = assert(s:submit{ url = url(API) })
  do local _ = assert(s:submit{ url = url(API) }) end
  s:step(0)
  lu.assertEquals(s:pending(), 2)
  collectgarbage(); collectgarbage()
  lu.assertEquals(s:pending(), 1, "the dropped handle was removed from the multi")
  drain(s, { keep })
  lu.assertEquals(assert(keep:result()).status, 401)
  -- and the session is fine afterwards
  latency(0)
  lu.assertEquals(assert(s:request{ url = url(API) }).status, 401)
end

function TestDriver.test_session_and_handles_collected_together()
  latency(200)
  do
    local s = http.session{}
    for _ = 1, 4 do assert(s:submit{ url = url(API) }) end
    s:step(0)
  end
  collectgarbage(); collectgarbage()  -- no crash, no leak (ASan build checks)
  local s2 <close> = http.session{}
  local h = assert(s2:submit{ url = url(API) })
  lu.assertFalse(pcall(h.result, h), "result() raises while in flight")
  drain(s2, { h })
  lu.assertEquals(assert(h:result()).status, 401)
end

function TestDriver.test_blocking_request_while_others_in_flight()
  latency(150)
  local s <close> = http.session{}
  local hs = {}
  for i = 1, 4 do hs[i] = assert(s:submit{ url = url(API) }) end
  -- the blocking call drives the same multi: the submitted ones finish meanwhile
  lu.assertEquals(assert(s:request{ url = url(API) }).status, 401)
  local got = 0
  for _ = 1, MAX_ROUNDS do
    got = got + #s:step(100)
    if got == 4 then break end
  end
  lu.assertEquals(got, 4, "step reports requests that finished during a blocking call")
  for _, h in ipairs(hs) do lu.assertEquals(assert(h:result()).status, 401) end
end

function TestDriver.test_step_never_waits_longer_than_its_timeout()
  latency(SLOW_MS)
  local s <close> = http.session{}
  local hs = {}
  for i = 1, 4 do hs[i] = assert(s:submit{ url = url(API) }) end
  local calls, worst = 0, 0
  local done = 0
  while done < #hs do
    calls = calls + 1
    assert(calls < MAX_ROUNDS)
    local t0 = runtime.now_ms()
    done = done + #s:step(25)
    local dt = runtime.now_ms() - t0
    worst = math.max(worst, dt)
    lu.assertTrue(dt <= 25 + SLACK_MS, "step(25) took " .. dt .. " ms")
  end
  lu.assertTrue(calls >= 4, "a " .. SLOW_MS .. " ms request needs many 25 ms steps, took " .. calls)
end

function TestDriver.test_misuse_raises()
  local s <close> = http.session{}
  lu.assertErrorMsgContains("timeout_ms", s.step, s, -1)
  lu.assertError(s.submit, s, "not a table")
  lu.assertErrorMsgContains("url", s.submit, s, { method = "GET" })
  lu.assertErrorMsgContains("header", s.submit, s, { url = url(API), headers = { ["X"] = "a\r\nb" } })
  lu.assertEquals(s:pending(), 0, "a rejected submit leaves nothing in flight")
end

function TestDriver.test_clock()
  local a = http.now_ms()
  lu.assertEquals(math.type(a), "integer")
  http.sleep_ms(5)
  lu.assertTrue(http.now_ms() >= a + 5)
  lu.assertErrorMsgContains(">= 0", http.sleep_ms, -1)
end

-------------------------------------------------------------------- scheduler

TestRuntime = {}

function TestRuntime:setUp() latency(0) end
function TestRuntime:tearDown() latency(0); lu.assertEquals(runtime.pending(), 0) end

function TestRuntime.test_blocking_outside_a_task()
  lu.assertFalse(runtime.in_task())
  local s <close> = http.session{}
  local r = assert(runtime.request(s, { url = url(API) }))
  lu.assertEquals(r.status, 401)
  local t0 = runtime.now_ms()
  runtime.sleep(5)
  lu.assertTrue(runtime.now_ms() >= t0 + 5)
  lu.assertEquals(s:pending(), 0)
end

function TestRuntime.test_tasks_yield_while_requests_are_in_flight()
  latency(100)
  control("DELETE", "/_sandbox/requests")
  local s <close> = http.session{}
  local tasks = {}
  for i = 1, 12 do
    tasks[i] = runtime.spawn(function(n)
      lu.assertTrue(runtime.in_task())
      local r, err = runtime.request(s, { url = url(API) })
      if not r then return nil, err end
      return n, r.status
    end, i)
  end
  lu.assertFalse(tasks[1].done)
  lu.assertErrorMsgContains("not done", tasks[1].result, tasks[1])
  run_all()
  for i, t in ipairs(tasks) do
    lu.assertTrue(t.done)
    lu.assertEquals({ t:result() }, { true, i, 401 })
  end
  local log = control("GET", "/_sandbox/requests").requests
  lu.assertEquals(#log, 12)
  local first_answer = math.huge
  for _, e in ipairs(log) do first_answer = math.min(first_answer, e.respond_ms) end
  local before = 0
  for _, e in ipairs(log) do if e.received_ms <= first_answer then before = before + 1 end end
  lu.assertTrue(before >= 2, "tasks' requests overlapped: " .. before .. " arrived before the first answer")
end

function TestRuntime.test_an_error_in_one_task_does_not_kill_the_others()
  local s <close> = http.session{}
  local good1 = runtime.spawn(function() return assert(runtime.request(s, { url = url(API) })).status end)
  local bad = runtime.spawn(function()
    assert(runtime.request(s, { url = url(API) }))
    error({ code = "BOOM" })
  end)
  local good2 = runtime.spawn(function() runtime.sleep(1); return "slept" end)
  run_all()
  lu.assertEquals({ good1:result() }, { true, 401 })
  local ok, err = bad:result()
  lu.assertFalse(ok)
  lu.assertEquals(err.code, "BOOM")
  lu.assertIsString(bad.traceback)
  lu.assertEquals({ good2:result() }, { true, "slept" })
  lu.assertStrContains(tostring(bad), "failed")
end

function TestRuntime.test_sleep_is_a_timer_ordered_by_due_time()
  local order = {}
  for _, ms in ipairs{ 30, 10, 20, 0 } do
    runtime.spawn(function() runtime.sleep(ms); order[#order + 1] = ms end)
  end
  run_all()
  lu.assertEquals(order, { 0, 10, 20, 30 })
end

function TestRuntime.test_plain_yield_inside_a_task_lets_others_run()
  local trace = {}
  runtime.spawn(function() trace[#trace + 1] = "a1"; coroutine.yield(); trace[#trace + 1] = "a2" end)
  runtime.spawn(function() trace[#trace + 1] = "b1"; coroutine.yield(); trace[#trace + 1] = "b2" end)
  run_all()
  lu.assertEquals(trace, { "a1", "b1", "a2", "b2" })
end

function TestRuntime.test_once_shares_one_call_between_tasks()
  latency(50)
  local s <close> = http.session{}
  local calls = 0
  local function auth()
    calls = calls + 1
    local r = assert(runtime.request(s, { url = url(API) }))
    return "token-" .. calls, r.status
  end
  local tasks = {}
  for i = 1, 8 do tasks[i] = runtime.spawn(function() return runtime.once("auth", auth) end) end
  run_all()
  lu.assertEquals(calls, 1)
  for _, t in ipairs(tasks) do lu.assertEquals({ t:result() }, { true, "token-1", 401 }) end
  -- done: the next once() calls fn again
  runtime.spawn(function() return runtime.once("auth", auth) end)
  run_all()
  lu.assertEquals(calls, 2)
  -- an error of the shared call is raised in every waiter
  local function failing() runtime.sleep(5); error("auth failed", 0) end
  for i = 1, 3 do tasks[i] = runtime.spawn(function() return runtime.once("x", failing) end) end
  run_all()
  for i = 1, 3 do lu.assertEquals({ tasks[i]:result() }, { false, "auth failed" }) end
  -- a re-entrant call by the leader itself runs fn (no self-deadlock)
  local inner = runtime.spawn(function()
    return runtime.once("r", function()
      runtime.sleep(1)
      return runtime.once("r", function() return "inner" end)
    end)
  end)
  run_all()
  lu.assertEquals({ inner:result() }, { true, "inner" })
  -- outside a task, once() just calls fn
  lu.assertEquals(runtime.once("k", function(a) return a + 1 end, 41), 42)
end

function TestRuntime.test_session_closed_while_tasks_wait()
  latency(200)
  local s = http.session{}
  local t = runtime.spawn(function() return runtime.request(s, { url = url(API) }) end)
  runtime.step(0)   -- the task submits its request and yields
  s:close()
  run_all()
  local ok, r, err = t:result()
  lu.assertTrue(ok)
  lu.assertNil(r)
  lu.assertEquals(err.code, "SESSION_CLOSED")
end

function TestRuntime.test_host_loop_step_never_waits_longer_than_its_timeout()
  latency(SLOW_MS)
  local s <close> = http.session{}
  local tasks = {}
  for i = 1, 6 do
    tasks[i] = runtime.spawn(function()
      local r = assert(runtime.request(s, { url = url(API) }))
      runtime.sleep(120)
      local r2 = assert(runtime.request(s, { url = url(API) }))
      return r.status + r2.status
    end)
  end
  local calls = 0
  while runtime.pending() > 0 do
    calls = calls + 1
    assert(calls < MAX_ROUNDS)
    local t0 = runtime.now_ms()
    runtime.step(25)
    local dt = runtime.now_ms() - t0
    lu.assertTrue(dt <= 25 + SLACK_MS, "runtime.step(25) took " .. dt .. " ms")
  end
  lu.assertTrue(calls >= 8, "2 x " .. SLOW_MS .. " + 120 ms of waiting in 25 ms steps: " .. calls .. " calls")
  for _, t in ipairs(tasks) do lu.assertEquals({ t:result() }, { true, 802 }) end
  -- step(0) with nothing to do returns at once
  lu.assertEquals(runtime.step(0), 0)
end

function TestRuntime.test_several_sessions_are_driven_together()
  latency(SLOW_MS)
  local s1 <close> = http.session{}
  local s2 <close> = http.session{}
  local s3 <close> = http.session{}
  local tasks = {}
  for i, s in ipairs{ s1, s2, s3, s1, s2, s3 } do
    tasks[i] = runtime.spawn(function() return assert(runtime.request(s, { url = url(API) })).status end)
  end
  local calls = 0
  while runtime.pending() > 0 do
    calls = calls + 1
    assert(calls < MAX_ROUNDS)
    local t0 = runtime.now_ms()
    runtime.step(25)
    local dt = runtime.now_ms() - t0
    lu.assertTrue(dt <= 25 + SLACK_MS, "runtime.step(25) over 3 sessions took " .. dt .. " ms")
  end
  lu.assertTrue(calls >= 4, "a " .. SLOW_MS .. " ms wait in 25 ms steps: " .. calls .. " calls")
  for _, t in ipairs(tasks) do lu.assertEquals({ t:result() }, { true, 401 }) end
  -- http.wait: true once a request finished, false after the timeout with nothing finished
  latency(0)
  local h = assert(s1:submit{ url = url(API) })
  local done = false
  for _ = 1, MAX_ROUNDS do
    if http.wait({ s1, s2 }, 100) then done = true break end
  end
  lu.assertTrue(done)
  lu.assertIs(s1:step(0)[1], h)
  lu.assertFalse(http.wait({ s1, s2 }, 0), "nothing in flight")
  lu.assertErrorMsgContains("closed", function()
    local s4 = http.session{}
    s4:close()
    http.wait({ s4 }, 0)
  end)
end

function TestRuntime.test_run_reports_timeout()
  runtime.spawn(function() runtime.sleep(300) end)
  lu.assertEquals({ runtime.run(20) }, { nil, "timeout" })
  run_all()
end

function TestRuntime.test_misuse()
  lu.assertErrorMsgContains("function", runtime.spawn, 42)
  lu.assertErrorMsgContains("number", runtime.sleep, "x")
  lu.assertErrorMsgContains("number", runtime.step, "x")
  lu.assertErrorMsgContains("key", runtime.once, nil, print)
  -- driving the runtime from inside a task is misuse (it would resume the running task)
  local t = runtime.spawn(function() return runtime.step(0) end)
  local t2 = runtime.spawn(function() return runtime.run() end)
  run_all()
  local ok, err = t:result()
  lu.assertFalse(ok)
  lu.assertStrContains(err, "inside a task")
  lu.assertFalse((t2:result()))
end

os.exit(lu.LuaUnit.run())
