-- fiskaly.receipt.sandbox: runs untrusted plugin code (pure Lua) in its own
-- environment with an instruction budget and a memory ceiling.
--
-- What a box gives the code: a fresh _ENV with the safe parts of the base
-- library and private copies of string/table/math/utf8 (no io, os, load,
-- require, debug, package, dofile, collectgarbage, coroutine, string.dump,
-- math.random). Chunks are compiled as text only (mode "t"; bytecode refused).
--
-- How limits are enforced (pure Lua, so by cooperation with the VM):
--  * a count hook on the coroutine running the call adds up instructions and
--    checks collectgarbage("count") against baseline + ceiling;
--  * library functions that loop in C (string.rep, table.concat, table.move,
--    pattern matching, ...) are wrapped and charge the budget for their work
--    before they run, so one call cannot hide billions of steps from the hook;
--  * a finalizer sentinel re-armed every GC cycle charges allocation volume
--    and makes the very next instruction fail once the ceiling is passed, so
--    a string doubling loop is stopped within about one doubling.
-- Once a call is over budget it stays dead: pcall/xpcall in the box re-raise
-- the kill, and the hook then fires on every instruction.
--
-- Known limit: a single VM instruction (one CONCAT of many operands) can
-- allocate past the ceiling before the next check; the overshoot is bounded
-- by that one instruction. Real isolation needs a separate process or a C
-- allocator limit.
local sandbox = {}

local Box = {}
Box.__index = Box

local string_mt = getmetatable("")
local sethook = debug.sethook
local collectgarbage, setmetatable, getmetatable = collectgarbage, setmetatable, getmetatable
local co_create, co_resume, co_status = coroutine.create, coroutine.resume, coroutine.status
local pack, unpack = table.pack, table.unpack
local type, error, rawlen, rawget, select = type, error, rawlen, rawget, select
local floor = math.floor
local fmt, byte, ssub = string.format, string.byte, string.sub

local HOOK_STEP = 1000

-- The kill value raised inside the box; never a string, so plugin code cannot
-- forge it, and pcall wrappers recognise it.
local KILL = setmetatable({}, { __name = "fiskaly.receipt.sandbox.kill",
  __tostring = function() return "sandbox kill" end })

local function copy(t, except)
  local c = {}
  for k, v in pairs(t) do
    if not (except and except[k]) then c[k] = v end
  end
  return c
end

-- Read-only view of a host table: plugin writes raise, rawset is refused by the
-- box's rawset, and the metatable is locked (__metatable).
local function readonly(t, name)
  local proxy = {}
  return setmetatable(proxy, {
    __index = t,
    __newindex = function(_, k)
      error(fmt("%s is read-only (cannot set %s)", name, tostring(k)), 2)
    end,
    __len = function() return #t end,
    __pairs = function()                 -- never hands out t itself
      local k
      return function()
        local v
        k, v = next(t, k)
        return k, v
      end, nil, nil
    end,
    __metatable = false,
  })
end
sandbox.readonly = readonly

local function is_readonly(t)
  -- getmetatable returns the __metatable field (false) for our proxies.
  return type(t) == "table" and getmetatable(t) == false
end

-- Estimated steps for a Lua pattern over a subject: every repetition item can
-- backtrack over the subject, and an unanchored search retries at each start.
local function pattern_cost(s, p, anchored_possible)
  local n = #s + 1
  local q = 0
  local i, len = 1, #p
  while i <= len do
    local c = byte(p, i)
    if c == 37 then                              -- '%x'
      i = i + 2
    elseif c == 91 then                          -- '[...]'
      i = i + 1
      if byte(p, i) == 94 then i = i + 1 end
      if byte(p, i) == 93 then i = i + 1 end
      while i <= len and byte(p, i) ~= 93 do
        if byte(p, i) == 37 then i = i + 1 end
        i = i + 1
      end
      i = i + 1
    else
      if c == 42 or c == 43 or c == 45 or c == 63 then q = q + 1 end   -- * + - ?
      i = i + 1
    end
  end
  local exp = q
  if not (anchored_possible and byte(p, 1) == 94) then exp = exp + 1 end
  local cost = 1.0
  for _ = 1, exp do
    cost = cost * n
    if cost > 1e15 then break end
  end
  return cost + #p
end

-- Builds the per-box copies of the libraries, with every function that does
-- work proportional to its input wrapped so it charges the budget first.
local function make_libs(box)
  local charge = function(n) return box:_charge(n) end
  local S = {}
  for k, f in pairs(string) do
    if k ~= "dump" then
      S[k] = function(s, ...)
        if type(s) == "string" then charge(#s >> 6) end
        return f(s, ...)
      end
    end
  end
  -- Arguments are coerced the way the C functions will coerce them ("1e12",
  -- 1e12), so a float or a numeric string cannot slip past a size check.
  local function toint(v) return math.tointeger(tonumber(v)) end
  local function tostr(v) if type(v) == "number" then return tostring(v) end return v end
  local srep = string.rep
  S.rep = function(s, n, sep)
    local str, nn, sp = tostr(s), toint(n), sep == nil and "" or tostr(sep)
    if type(str) == "string" and nn and nn > 0 and type(sp) == "string" then
      local size = (#str + 0.0) * nn + (#sp + 0.0) * (nn - 1)
      box:_reserve(size)
      charge(floor(size / 64))
    end
    return srep(s, n, sep)
  end
  local sbyte = string.byte
  S.byte = function(s, i, j)                   -- returns up to #s values
    local str = tostr(s)
    if type(str) == "string" then charge(#str) end
    return sbyte(s, i, j)
  end
  -- binary packing is not needed for receipts, and "c1000000000" would
  -- allocate a gigabyte in one call
  S.pack, S.unpack, S.packsize = nil, nil, nil
  for _, name in ipairs { "find", "match", "gmatch", "gsub" } do
    local f = string[name]
    S[name] = function(s, p, a3, a4)
      if type(s) == "string" and type(p) == "string"
        and not (name == "find" and a4) then       -- plain find is linear
        local cost = pattern_cost(s, p, name ~= "gmatch")
        if cost > 1e9 then
          error(fmt("string.%s: pattern %q is too expensive for a %d-byte subject", 
            name, ssub(p, 1, 40), #s), 2)
        end
        charge(floor(cost) >> 4)
      end
      return f(s, p, a3, a4)
    end
  end
  local T = {}
  for k, f in pairs(table) do
    T[k] = function(t, ...)
      if type(t) == "table" then charge(rawlen(t)) end
      return f(t, ...)
    end
  end
  local tconcat, tmove, tsort = table.concat, table.move, table.sort
  T.concat = function(t, sep, i, j)
    if type(t) == "table" then
      local ii = toint(i or 1)
      local jj = j == nil and #t or toint(j)     -- #t may run a plugin __len (under the hook)
      local sp = tostr(sep)
      local size, seplen = 0, type(sp) == "string" and #sp or 0
      if ii and jj then
        charge(jj - ii + 1)
        for k = ii, jj do
          local v = t[k]
          if type(v) == "string" then size = size + #v + seplen else size = size + 24 end
        end
      end
      box:_reserve(size)
      charge(size >> 6)
    end
    return tconcat(t, sep, i, j)
  end
  T.move = function(a1, f, e, t, a2)
    local ff, ee = toint(f), toint(e)
    if ff and ee and ee >= ff then charge(ee - ff + 1) end
    return tmove(a1, f, e, t, a2)
  end
  local tunpack = table.unpack
  T.unpack = function(t, i, j)
    local ii, jj = toint(i or 1), j == nil and (type(t) == "table" and #t) or toint(j)
    if ii and jj and jj >= ii then charge(jj - ii + 1) end
    return tunpack(t, i, j)
  end
  T.sort = function(t, cmp)
    if type(t) == "table" then
      local n = rawlen(t)
      charge(n * (math.ult(1, n) and floor(math.log(n, 2)) + 1 or 1))
    end
    return tsort(t, cmp)
  end
  local M = copy(math, { random = true, randomseed = true })
  local U = {}
  for k, f in pairs(utf8) do
    if type(f) == "function" then
      U[k] = function(s, ...)
        if type(s) == "string" then charge(#s >> 6) end
        return f(s, ...)
      end
    else
      U[k] = f
    end
  end
  return S, T, M, U
end

-- Creates a box. opts: name (for messages), instructions (budget per call),
-- memory_kb (ceiling above the baseline at call start), log (function(msg)).
function sandbox.new(opts)
  opts = opts or {}
  local box = setmetatable({
    name = opts.name or "plugin",
    instructions = opts.instructions or 5000000,
    memory_kb = opts.memory_kb or 32768,
    log = opts.log,
    current = nil,
  }, Box)
  if math.type(box.instructions) ~= "integer" or box.instructions < 1 then
    error("fiskaly.receipt.sandbox: instructions must be a positive integer", 2)
  end
  if math.type(box.memory_kb) ~= "integer" or box.memory_kb < 64 then
    error("fiskaly.receipt.sandbox: memory_kb must be an integer >= 64", 2)
  end
  local S, T, M, U = make_libs(box)
  -- The method table behind ("x"):method() is never handed to the plugin:
  -- host code running during a call (a finalizer, say) may use string
  -- methods, and must not meet a function the plugin planted. The plugin's
  -- global `string` is a separate copy it may change for itself.
  box.string = S

  local function relay(ok, ...)
    local st = box.current
    if st and st.killed then error(KILL, 0) end
    return ok, ...
  end
  local env = {
    _VERSION = _VERSION,
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    select = select, tonumber = tonumber, tostring = tostring, type = type,
    rawequal = rawequal, rawget = rawget, rawlen = rawlen,
    string = copy(S), table = T, math = M, utf8 = U,
  }
  env.pcall = function(f, ...) return relay(pcall(f, ...)) end
  -- The plugin's message handler must not run as a real message handler: an
  -- error raised by the budget hook calls it while hooks are disabled, where
  -- an endless loop could not be stopped. It runs after the unwinding instead.
  env.xpcall = function(f, h, ...)
    local res = pack(pcall(f, ...))
    local st = box.current
    if st and st.killed then error(KILL, 0) end
    if res[1] then return unpack(res, 1, res.n) end
    local ok, v = pcall(h, res[2])
    if st and st.killed then error(KILL, 0) end
    return false, v
  end
  env.getmetatable = function(v)
    if type(v) ~= "table" then return nil end      -- never the string metatable
    return getmetatable(v)
  end
  env.setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("setmetatable: __gc metamethods are not allowed in plugins", 2)
    end
    return setmetatable(t, mt)                      -- locked proxies refuse natively
  end
  env.rawset = function(t, k, v)
    if is_readonly(t) then error("rawset: table is read-only", 2) end
    return rawset(t, k, v)
  end
  env.print = function(...)
    local n, parts = select("#", ...), {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    if box.log then box.log(table.concat(parts, "\t")) end
  end
  env._G = env
  box.env = env
  return box
end

-- Compiles plugin source as text in this box's environment.
function Box:load(src, chunkname)
  if type(src) ~= "string" then return nil, "source is not a string" end
  local fn, err = load(src, chunkname, "t", self.env)
  if not fn then return nil, err end
  return fn
end

function Box:_kill(st, reason)
  if not st.killed then
    st.killed = reason
    if st.co and co_status(st.co) ~= "dead" then sethook(st.co, st.hook, "", 1) end
  end
end

-- Adds n steps to the running call's budget; raises the kill when exceeded.
function Box:_charge(n)
  local st = self.current
  if not st then return end
  st.count = st.count + n
  if st.count > self.instructions then
    self:_kill(st, fmt("instruction budget exceeded (%d instructions)", self.instructions))
  end
  if st.killed then error(KILL, 0) end
end

-- Refuses to start an allocation of `bytes` that cannot fit under the ceiling.
function Box:_reserve(bytes)
  local st = self.current
  if not st then return end
  if collectgarbage("count") + bytes / 1024 > st.limit_kb then
    collectgarbage("collect")
    if collectgarbage("count") + bytes / 1024 > st.limit_kb then
      self:_kill(st, fmt("memory ceiling exceeded (%d KB)", self.memory_kb))
      error(KILL, 0)
    end
  end
end

-- GC sentinel: its finalizer runs at the end of every GC cycle during a call.
-- collectgarbage() cannot be called inside a finalizer (Lua 5.4 refuses), so
-- the finalizer only flags the cycle and makes the hook fire on the very next
-- instruction; the hook then measures memory and charges allocation volume.
local function arm_watch(box, st)
  local mt = {}
  mt.__gc = function()
    if box.current ~= st or st.done then return end
    st.cycle = true
    if st.co and co_status(st.co) ~= "dead" then sethook(st.co, st.hook, "", 1) end
    setmetatable({}, mt)                           -- re-arm for the next cycle
  end
  setmetatable({}, mt)
end

local function result(st, ok, ...)
  if st.killed then return false, st.killed, "limit" end
  if not ok then
    local e = ...
    if e == KILL then return false, st.killed or "killed", "limit" end
    if type(e) == "string" then
      if #e > 500 then e = ssub(e, 1, 500) .. "..." end
      return false, e, "error"
    end
    -- Never tostring() a foreign object: its __tostring is plugin code.
    return false, "error object of type " .. type(e), "error"
  end
  return true, ...
end

-- Runs fn(...) in the box. Returns true, results... or false, message, reason
-- (reason "limit" for budget/memory, "error" for a raised error).
function Box:call(fn, ...)
  if self.current then error("fiskaly.receipt.sandbox: re-entrant call", 2) end
  local st = { count = 0, done = false }
  local box = self
  local step = self.instructions < HOOK_STEP and self.instructions or HOOK_STEP
  st.hook = function()
    if st.killed then error(KILL, 0) end
    if not st.cycle then st.count = st.count + step end
    if st.count > box.instructions then
      box:_kill(st, fmt("instruction budget exceeded (%d instructions)", box.instructions))
      error(KILL, 0)
    end
    local kb = collectgarbage("count")
    if st.cycle then                     -- a GC cycle ended: charge allocation volume
      st.cycle = false
      st.count = st.count + floor(kb) // 4
      sethook(st.co, st.hook, "", step)
      if st.count > box.instructions then
        box:_kill(st, fmt("instruction budget exceeded (%d instructions)", box.instructions))
        error(KILL, 0)
      end
    end
    if kb > st.limit_kb then
      collectgarbage("collect")
      if collectgarbage("count") > st.limit_kb then
        box:_kill(st, fmt("memory ceiling exceeded (%d KB)", box.memory_kb))
        error(KILL, 0)
      end
    end
  end
  st.limit_kb = collectgarbage("count") + self.memory_kb
  st.co = co_create(fn)
  sethook(st.co, st.hook, "", step)
  self.current = st
  arm_watch(self, st)
  local saved_index = string_mt.__index
  string_mt.__index = self.string        -- ("x"):rep() must hit the wrapped copy
  local r = pack(co_resume(st.co, ...))
  string_mt.__index = saved_index
  st.done = true
  self.current = nil
  if r[1] and co_status(st.co) ~= "dead" then
    return false, "plugin yielded (coroutines are not available to plugins)", "error"
  end
  local res = pack(result(st, unpack(r, 1, r.n)))
  sethook(st.co)
  st.co = nil                            -- drop the dead thread (and its stack) now
  return unpack(res, 1, res.n)
end

sandbox.KILL = KILL
return sandbox
