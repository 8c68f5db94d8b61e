-- fiskaly.receipt.sandbox on its own: isolation between boxes, read-only host
-- tables, the string metatable, budgets and what stays true after a kill.
local lu = require "luaunit"
local sandbox = require "fiskaly.receipt.sandbox"

local function run(box, src, ...)
  local fn = assert(box:load(src, "=test"))
  return box:call(fn, ...)
end

TestSandbox = {}

function TestSandbox.test_boxes_do_not_share_globals_or_libraries()
  local a, b = sandbox.new {}, sandbox.new {}
  lu.assertTrue(run(a, "shared = 1; string.upper = function() return 'A' end; return true"))
  local ok, shared, up = run(b, "return shared, ('x'):upper()")
  lu.assertTrue(ok)
  lu.assertNil(shared)
  lu.assertEquals(up, "X")
  -- a's global `string` is its own copy; the methods behind ("x"):upper() are fixed
  local _, m, g = run(a, "return ('x'):upper(), string.upper('x')")
  lu.assertEquals(m, "X")
  lu.assertEquals(g, "A")
  lu.assertEquals(("x"):upper(), "X")                                -- the host's
end

function TestSandbox.test_readonly_tables()
  local host = { list = { 1, 2, 3 }, secret = "s" }
  local ro = sandbox.readonly(host, "api")
  local box = sandbox.new {}
  -- pairs and # work, but the iteration never hands out the host table itself
  local ok, n, len, leaked = run(box, [[
    local t = ...
    local n, leaked = 0, false
    local f, s, init = pairs(t)
    leaked = s ~= nil
    for k, v in pairs(t) do n = n + 1 end
    return n, #t.list, leaked]], ro)
  lu.assertTrue(ok)
  lu.assertEquals(n, 2)
  lu.assertEquals(len, 3)
  lu.assertFalse(leaked)
  local ok2, err = run(box, "local t = ...; t.secret = 'x'", ro)
  lu.assertFalse(ok2)
  lu.assertStrContains(err, "api is read-only (cannot set secret)")
  ok2, err = run(box, "local t = ...; rawset(t, 'secret', 'x')", ro)
  lu.assertFalse(ok2)
  lu.assertStrContains(err, "rawset: table is read-only")
  ok2 = run(box, "local t = ...; return getmetatable(t)", ro)
  lu.assertTrue(ok2)
  lu.assertEquals(select(2, run(box, "local t = ...; return getmetatable(t)", ro)), false)
  lu.assertEquals(host.secret, "s")
  lu.assertNil(rawget(ro, "secret"))
end

function TestSandbox.test_string_metatable_restored_after_error_and_kill()
  local idx = getmetatable("").__index
  local box = sandbox.new { instructions = 10000 }
  lu.assertFalse((run(box, "error('x')")))
  lu.assertIs(getmetatable("").__index, idx)
  local ok, msg, reason = run(box, "while true do end")
  lu.assertFalse(ok)
  lu.assertEquals(msg, "instruction budget exceeded (10000 instructions)")
  lu.assertEquals(reason, "limit")
  lu.assertIs(getmetatable("").__index, idx)
  lu.assertNil(debug.gethook())                 -- the host thread never gets a hook
end

function TestSandbox.test_budget_is_per_call_and_counts_instructions()
  local box = sandbox.new { instructions = 100000 }
  local fn = assert(box:load("return function(n) local s = 0 for i = 1, n do s = s + i end return s end", "=b"))
  local _, loop = box:call(fn)
  -- 2-3 VM instructions per iteration: 20000 iterations fit, 60000 do not
  for _ = 1, 5 do lu.assertEquals(select(2, box:call(loop, 20000)), 200010000) end
  local ok, msg = box:call(loop, 60000)
  lu.assertFalse(ok)
  lu.assertEquals(msg, "instruction budget exceeded (100000 instructions)")
  lu.assertTrue((box:call(loop, 10)))            -- next call starts afresh
end

function TestSandbox.test_kill_cannot_be_caught()
  local box = sandbox.new { instructions = 50000 }
  local ok, msg = run(box, [[
    local caught = 0
    for _ = 1, 100 do
      local ok = pcall(function() while true do end end)
      if not ok then caught = caught + 1 end
    end
    return caught]])
  lu.assertFalse(ok)
  lu.assertEquals(msg, "instruction budget exceeded (50000 instructions)")
  -- errors that are not kills are caught normally, and xpcall's handler runs
  local ok2, a, b = run(box, [[
    local r1 = { pcall(error, "e1") }
    local r2 = { xpcall(function() error("e2", 0) end, function(m) return "handled " .. m end) }
    return r1[2], r2[2] ]])
  lu.assertTrue(ok2)
  lu.assertEquals(a, "e1")
  lu.assertEquals(b, "handled e2")
end

function TestSandbox.test_text_only()
  local box = sandbox.new {}
  local fn, err = box:load(string.dump(function() return 1 end), "=bc")
  lu.assertNil(fn)
  lu.assertStrContains(err, "attempt to load a binary chunk (mode is 't')")
end

function TestSandbox.test_reentrant_call_is_misuse()
  local box = sandbox.new {}
  local inner = assert(box:load("return 1", "=i"))
  local outer = function() return box:call(inner) end
  local ok, msg = box:call(outer)
  lu.assertFalse(ok)
  lu.assertStrContains(msg, "re-entrant call")
end

function TestSandbox.test_options_checked()
  lu.assertErrorMsgContains("instructions must be a positive integer", sandbox.new, { instructions = 0 })
  lu.assertErrorMsgContains("memory_kb must be an integer >= 64", sandbox.new, { memory_kb = 1 })
end

os.exit(lu.LuaUnit.run())
