-- fiskaly.runtime: how the library waits (HTTP exchanges, backoff sleeps),
-- and a small coroutine scheduler so one client runs many sales at once.
--
--   runtime.request(session, req) -> same results as session:request(req)
--   runtime.sleep(ms)
--   runtime.now_ms()              -> monotonic milliseconds (integer)
--
-- Outside a runtime task these block (session:request drives curl itself;
-- sleep uses nanosleep, no busy wait).  Inside a task (a coroutine started
-- by runtime.spawn) they yield: the request is submitted to the session's
-- curl multi handle (session:submit) and the task resumes when
-- runtime.step sees it finish; a sleep is a timer.
--
--   local task = runtime.spawn(fn, ...)   -- runs fn(...) in a task
--   runtime.step(timeout_ms)              -- drive everything; never blocks longer than timeout_ms
--   runtime.run()                         -- step until every task is done (scripts)
--   task.done, task:result()              -- true, ...returns | false, error
--   runtime.once(key, fn, ...)            -- one call of fn per key at a time; concurrent callers share its results
--
-- The scheduler state is per Lua state (this module's upvalues) and is only
-- touched by Lua code: nothing here is global to the process.
local core = require "fiskaly.core"

local http = core.http
local now_ms = http.now_ms
local co_running, co_yield, co_resume, co_status =
  coroutine.running, coroutine.yield, coroutine.resume, coroutine.status
local pack, unpack = table.pack, table.unpack

local M = {}

-- ------------------------------------------------------------ state

local by_co = setmetatable({}, { __mode = "k" })  -- coroutine -> task (tasks of this runtime)
local live = 0                 -- tasks not done
local ready = {}               -- FIFO of { task, packed values } to resume
local waiting = {}             -- Request -> task
local sessions = {}            -- session -> number of this runtime's requests in flight on it
local timers = {}              -- binary min-heap of { due, seq, task }
local timer_seq = 0
local WAIT = {}                -- the value a task yields when it waits for the runtime

-- ------------------------------------------------------------ timers (min-heap on due, then seq)

local function timer_less(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end

local function timer_push(due, task)
  timer_seq = timer_seq + 1
  local h = timers
  local i = #h + 1
  h[i] = { due, timer_seq, task }
  while i > 1 do
    local p = i // 2
    if timer_less(h[i], h[p]) then h[i], h[p] = h[p], h[i]; i = p else break end
  end
end

local function timer_pop()
  local h = timers
  local n = #h
  local top = h[1]
  h[1] = h[n]
  h[n] = nil
  n = n - 1
  local i = 1
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and timer_less(h[l], h[m]) then m = l end
    if r <= n and timer_less(h[r], h[m]) then m = r end
    if m == i then break end
    h[i], h[m] = h[m], h[i]
    i = m
  end
  return top
end

-- ------------------------------------------------------------ tasks

local Task = {}
Task.__index = Task
Task.__name = "fiskaly.runtime.Task"

-- task:result() -> true, ...values returned by fn | false, error raised by fn.
-- Raises while the task is still running.
function Task:result()
  if not self.done then error("runtime: task is not done yet", 2) end
  if self.ok then return true, unpack(self.values, 1, self.values.n) end
  return false, self.error
end

function Task:__tostring()
  return "fiskaly.runtime.Task (" .. (self.done and (self.ok and "done" or "failed") or "running") .. ")"
end

local function current_task()
  local co = co_running()
  return by_co[co]
end

local function make_ready(task, ...)
  ready[#ready + 1] = { task, pack(...) }
end

-- Resumes a task with the given packed values; records completion.
local function resume(task, vals)
  local res = pack(co_resume(task.co, unpack(vals, 1, vals.n)))
  if co_status(task.co) == "dead" then
    task.done = true
    live = live - 1
    by_co[task.co] = nil
    if res[1] then
      task.ok = true
      task.values = pack(unpack(res, 2, res.n))
    else
      task.ok = false
      task.error = res[2]
      task.traceback = debug.traceback(task.co, tostring(res[2]))
    end
    return
  end
  -- Suspended.  A task that yields anything but WAIT (a plain coroutine.yield
  -- inside the task) is just rescheduled: it lets the other tasks run.
  if res[2] ~= WAIT then make_ready(task) end
end

-- runtime.spawn(fn, ...) -> task.  fn(...) starts on the next step().
function M.spawn(fn, ...)
  if type(fn) ~= "function" then error("runtime.spawn: fn must be a function", 2) end
  local task = setmetatable({ done = false }, Task)
  task.co = coroutine.create(fn)
  by_co[task.co] = task
  live = live + 1
  make_ready(task, ...)
  return task
end

-- ------------------------------------------------------------ waiting primitives

function M.now_ms()
  return now_ms()
end

-- Same results as session:request(req).  Inside a task: submits and yields.
function M.request(session, req)
  local task = current_task()
  if not task then return session:request(req) end
  local h, err = session:submit(req)
  if not h then return nil, err end
  waiting[h] = task
  sessions[session] = (sessions[session] or 0) + 1
  -- The request is resumed by step() with h:result().  If the task is
  -- abandoned (never resumed) the handle stays in `waiting` until the
  -- session reports it, so it is not cancelled behind the caller's back.
  return co_yield(WAIT)
end

function M.sleep(ms)
  if math.type(ms) ~= "integer" then
    if type(ms) ~= "number" or ms ~= ms then error("runtime.sleep: ms must be a number", 2) end
    ms = math.ceil(ms)
  end
  local task = current_task()
  if not task then
    if ms > 0 then http.sleep_ms(ms) end
    return
  end
  timer_push(now_ms() + (ms > 0 and ms or 0), task)
  co_yield(WAIT)
end

-- runtime.once(key, fn, ...): while a call of fn for `key` is running (in a
-- task that waits for I/O), other tasks calling once(key, ...) do not call fn:
-- they wait and get the same results (or the same error is raised in each).
-- Outside a task, or when no call is running, fn is called directly.
-- Use: token refresh, so concurrent requests share one authentication.
local inflight = {}  -- key -> { leader = task, waiters = { task, ... } }

function M.once(key, fn, ...)
  if key == nil then error("runtime.once: key must not be nil", 2) end
  local task = current_task()
  local cur = inflight[key]
  if cur and task and cur.leader ~= task then
    cur.waiters[#cur.waiters + 1] = task
    local r = co_yield(WAIT)
    -- r = packed { ok, ... } of the leader's pcall
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
  -- a blocking caller has nothing to share with; a re-entrant call of the leader runs fn itself
  if cur or not task then return fn(...) end
  cur = { leader = task, waiters = {} }
  inflight[key] = cur
  local r = pack(pcall(fn, ...))
  inflight[key] = nil
  for _, w in ipairs(cur.waiters) do make_ready(w, r) end
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

-- ------------------------------------------------------------ driving

-- Resumes the tasks that are ready now (tasks made ready meanwhile wait for
-- the next round).  Stops once `deadline` passed (at least one task runs), so
-- a step's CPU work is bounded too; the rest stay first in the queue.
local function run_ready(deadline)
  local q = ready
  ready = {}
  local n = #q
  for i = 1, n do
    local e = q[i]
    if not e[1].done then resume(e[1], e[2]) end
    if deadline and i < n and now_ms() >= deadline then
      local rest = {}
      for j = i + 1, n do rest[#rest + 1] = q[j] end
      for j = 1, #ready do rest[#rest + 1] = ready[j] end
      ready = rest
      return
    end
  end
end

local function fire_timers()
  local t = now_ms()
  while timers[1] and timers[1][1] <= t do
    local e = timer_pop()
    make_ready(e[3])
  end
end

local function deliver(session, list)
  for i = 1, #list do
    local h = list[i]
    local task = waiting[h]
    if task then
      waiting[h] = nil
      local n = sessions[session] - 1
      sessions[session] = n > 0 and n or nil
      make_ready(task, h:result())
    end
  end
end

-- Sessions with requests of this runtime in flight; drops closed sessions.
local function active_sessions()
  local list = {}
  for s in pairs(sessions) do
    if s:pending() > 0 then
      list[#list + 1] = s
    else
      -- closed (or every request reported elsewhere): fail the waiters
      for h, task in pairs(waiting) do
        if h:done() then
          waiting[h] = nil
          make_ready(task, h:result())
        end
      end
      sessions[s] = nil
    end
  end
  return list
end

-- runtime.step([timeout_ms]) -> number of tasks not yet done.
-- Runs ready tasks, delivers finished requests and due timers.  Waits (for
-- I/O or the next timer) only while nothing has happened yet, and never
-- longer than timeout_ms (default 0: never waits).  Returns as soon as
-- something happened, so a host loop gets control back quickly.
function M.step(timeout_ms)
  if current_task() then error("runtime.step: called from inside a task (only the host drives the runtime)", 2) end
  timeout_ms = timeout_ms or 0
  if math.type(timeout_ms) ~= "integer" then
    if type(timeout_ms) ~= "number" or timeout_ms ~= timeout_ms then
      error("runtime.step: timeout_ms must be a number", 2)
    end
    timeout_ms = math.floor(timeout_ms)
  end
  if timeout_ms < 0 then timeout_ms = 0 end
  local deadline = now_ms() + timeout_ms

  fire_timers()
  local progressed = #ready > 0
  run_ready(deadline)
  while true do
    local act = active_sessions()
    local now = now_ms()
    local wait = deadline - now
    if progressed or #ready > 0 then wait = 0 end
    if timers[1] and timers[1][1] - now < wait then wait = timers[1][1] - now end
    if wait < 0 then wait = 0 end
    if #act == 1 then
      local list = act[1]:step(wait)
      deliver(act[1], list)
    elseif #act > 1 then
      -- Several sessions (each its own curl multi handle): one poll over the
      -- sockets of all of them (http.wait), then collect from each.
      if wait > 0 and #act <= 64 then http.wait(act, wait) end
      for _, s in ipairs(act) do deliver(s, s:step(0)) end
    elseif wait > 0 and timers[1] then
      http.sleep_ms(wait)  -- only timers: wait for the first (bounded by the deadline)
    end
    fire_timers()
    if #ready > 0 and not progressed then
      progressed = true
      run_ready(deadline)
    end
    if progressed or live == 0 or now_ms() >= deadline then break end
    if not timers[1] and next(sessions) == nil then break end  -- nothing can happen
  end
  return live
end

-- runtime.run([timeout_ms]) -> true when every task is done; nil, "timeout" or
-- nil, "deadlock" (tasks wait for something no request or timer will bring).
function M.run(timeout_ms)
  if current_task() then error("runtime.run: called from inside a task (only the host drives the runtime)", 2) end
  local deadline = timeout_ms and now_ms() + timeout_ms or nil
  while live > 0 do
    local slice = 1000
    if deadline then
      local left = deadline - now_ms()
      if left <= 0 then return nil, "timeout" end
      if left < slice then slice = left end
    end
    M.step(slice)
    if live > 0 and #ready == 0 and not timers[1] and next(sessions) == nil then
      return nil, "deadlock"
    end
  end
  return true
end

-- Number of tasks not done; true when the caller runs inside a task.
function M.pending() return live end
function M.in_task() return current_task() ~= nil end

return M
