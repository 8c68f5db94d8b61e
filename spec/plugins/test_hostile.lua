-- Hostile plugins (spec/fixtures/plugins/hostile_*): every one is stopped with
-- a clear error in that call, and a sale on a good plugin succeeds right after.
local lu = require "luaunit"
local receipt = require "fiskaly.receipt"

local GOOD_SALE = {
  items = { { name = "Bread", qty = 1, unit_price = "2.50", vat = "REDUCED_1" },
            { name = "Soap", qty = 1, unit_price = "1.19", vat = "NORMAL" } },
  payments = { { method = "cash", amount = "5.00" } },
}

local engine

local function new_engine()
  return receipt.new { paths = { "spec/fixtures/plugins", "plugins" },
    budget = { instructions = 2000000, memory_kb = 16384 } }
end

-- Runs a hostile plugin, checks the error, then a good sale.
local function stopped(name, conf, kind, message_pattern)
  local r, err = engine:map(name, { items = {} }, conf)
  lu.assertNil(r, name .. " was not stopped")
  lu.assertEquals(err.kind, kind)
  lu.assertEquals(err.plugin, name)
  lu.assertStrContains(err.message, message_pattern, true)
  lu.assertStrContains(tostring(err), 'plugin "' .. name .. '": ')
  local ok, gerr = engine:map("retail", GOOD_SALE)
  lu.assertNotNil(ok, "good plugin failed after " .. name .. ": " .. tostring(gerr))
  lu.assertEquals(ok.process_data, "Beleg^1.19_2.50_0.00_0.00_0.00^3.69:Bar")
  return err
end

TestHostile = {}

function TestHostile.setUp() engine = new_engine() end

function TestHostile.test_endless_loop()
  stopped("hostile_loop", nil, "plugin", "map failed: instruction budget exceeded %(2000000 instructions%)")
end

function TestHostile.test_endless_loop_at_load()
  stopped("hostile_loop_at_load", nil, "plugin",
    "cannot be loaded: handler.lua: instruction budget exceeded %(2000000 instructions%)")
end

function TestHostile.test_table_growth()
  stopped("hostile_alloc", nil, "plugin", "map failed: memory ceiling exceeded %(16384 KB%)")
end

function TestHostile.test_single_huge_allocation()
  stopped("hostile_rep", nil, "plugin", "map failed: memory ceiling exceeded %(16384 KB%)")
end

-- Peak resident memory of this process in MB (Linux), or nil.
local function peak_rss_mb()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local kb = f:read("a"):match("VmHWM:%s*(%d+) kB")
  f:close()
  return kb and tonumber(kb) // 1024
end

function TestHostile.test_string_doubling()
  local before = collectgarbage("count")
  local peak_before = peak_rss_mb()
  stopped("hostile_double", nil, "plugin", "map failed: memory ceiling exceeded %(16384 KB%)")
  -- unstopped, the plugin would reach 2 GB; the ceiling stops it within about
  -- one doubling past 16 MB (the bound leaves room for ASan's quarantine)
  if peak_before then
    local grown = peak_rss_mb() - peak_before
    lu.assertTrue(grown < 600, ("peak RSS grew by %d MB"):format(grown))
  end
  collectgarbage("collect")
  collectgarbage("collect")
  lu.assertTrue(collectgarbage("count") < before + 4096, "memory was not released")
end

function TestHostile.test_error()
  stopped("hostile_error", nil, "plugin",
    "^map failed: spec/fixtures/plugins/hostile_error/handler.lua:2: boom from plugin$")
end

function TestHostile.test_error_object_with_endless_tostring()
  stopped("hostile_error_object", nil, "plugin", "^map failed: error object of type table$")
end

function TestHostile.test_wrong_return_type()
  stopped("hostile_wrong_type", nil, "plugin", "^map returned string, expected a table$")
end

function TestHostile.test_result_with_trapping_metatable()
  stopped("hostile_trap_result", nil, "plugin",
    "^map returned an invalid value: receipt: tables with a metatable are not allowed$")
end

function TestHostile.test_unbounded_recursion()
  local err = stopped("hostile_recursion", nil, "plugin", "^map failed: ")
  lu.assertTrue(err.message:find("stack overflow", 1, true) ~= nil
    or err.message:find("memory ceiling", 1, true) ~= nil, err.message)
end

function TestHostile.test_unbalanced_receipt_refused()
  stopped("hostile_unbalanced", nil, "validation",
    "^payments 9%.90 minus change 0%.00 = 9%.90, but the sale total is 10%.00$")
end

local ESCAPES = {
  io = "attempt to index a nil value %(global 'io'%)",
  os = "attempt to index a nil value %(global 'os'%)",
  require = "attempt to call a nil value %(global 'require'%)",
  load = "attempt to call a nil value %(global 'load'%)",
  loadstring = "attempt to call a nil value %(global 'loadstring'%)",
  dofile = "attempt to call a nil value %(global 'dofile'%)",
  debug = "attempt to index a nil value %(global 'debug'%)",
  package = "attempt to index a nil value %(global 'package'%)",
  collectgarbage = "attempt to call a nil value %(global 'collectgarbage'%)",
  G_io = "attempt to index a nil value %(field 'io'%)",
  string_dump = "attempt to call a nil value %(field 'dump'%)",
  method_dump = "attempt to call a nil value %(field 'dump'%)",
  string_metatable = "attempt to index a nil value %(local 'mt'%)",
  api_write = "api%.money is read%-only %(cannot set parse%)",
  api_rawset = "rawset: table is read%-only",
  api_setmetatable = "cannot change a protected metatable",
  gc_finalizer = "setmetatable: __gc metamethods are not allowed in plugins",
  coroutine = "attempt to index a nil value %(global 'coroutine'%)",
  pcall_loop = "instruction budget exceeded",
  xpcall_loop = "instruction budget exceeded",
  pattern_bomb = 'string%.find: pattern "%.%-%.%-%.%-%.%-%.%-b" is too expensive for a 100000%-byte subject',
  table_move = "instruction budget exceeded",
  concat_bomb = "memory ceiling exceeded",
  random_seed = "attempt to call a nil value %(field 'randomseed'%)",
  rep_float_count = "memory ceiling exceeded",
  rep_string_count = "memory ceiling exceeded",
  move_float_range = "instruction budget exceeded",
  pack_bomb = "attempt to call a nil value %(field 'pack'%)",
  unpack_loop = "[a-z] exceeded %(",            -- budget or memory, whichever comes first
  byte_loop = "[a-z] exceeded %(",
  close_loop = "instruction budget exceeded",
  -- the dead coroutine is never closed, so that __close never runs on the host
  close_loop_unprotected = "unwind without pcall",
  -- poisoning its own copy of the string library is allowed; the host's is untouched
  string_index_poison = "attempt string_index_poison was not stopped",
}

function TestHostile.test_escapes()
  local names = {}
  for k in pairs(ESCAPES) do names[#names + 1] = k end
  table.sort(names)
  local host_format, host_dump, host_index = string.format, string.dump, getmetatable("").__index
  for _, a in ipairs(names) do
    local err = stopped("hostile_escape", { attempt = a }, "plugin", "^map failed: .*" .. ESCAPES[a])
    lu.assertNotNil(err, a)
    lu.assertIs(string.format, host_format, a)
    lu.assertIs(string.dump, host_dump, a)
    lu.assertIs(getmetatable("").__index, host_index, a)
    lu.assertEquals(("%d"):format(7), "7")
  end
  lu.assertEquals(#names, 33)
end

function TestHostile.test_bytecode_refused()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir .. "/bc"))
  local f = assert(io.open(dir .. "/bc/handler.lua", "wb"))
  f:write(string.dump(load('return { VERSION = "1.0.0", map = function() return {} end }')))
  f:close()
  f = assert(io.open(dir .. "/bc/schema.lua", "wb"))
  f:write("return { fields = {} }")
  f:close()
  local e = receipt.new { paths = { dir } }
  local p, err = e:load("bc")
  lu.assertNil(p)
  lu.assertEquals(err.kind, "plugin")
  lu.assertEquals(tostring(err),
    'plugin "bc": cannot be loaded: handler.lua: precompiled (binary) chunks are refused; ship Lua source')
  os.execute("rm -rf " .. dir)
end

function TestHostile.test_killed_plugin_keeps_working_for_next_call()
  -- after a budget kill, the same plugin's next call runs with a fresh budget
  local r, err = engine:map("hostile_escape", {}, { attempt = "pcall_loop" })
  lu.assertNil(r)
  lu.assertStrContains(err.message, "instruction budget exceeded")
  r, err = engine:map("hostile_escape", {}, { attempt = "io" })
  lu.assertNil(r)
  lu.assertStrContains(err.message, "global 'io'")
end

os.exit(lu.LuaUnit.run())
