-- fiskaly-sandbox as a process: start-up lines, options, clean exit on SIGTERM
-- and SIGINT, refusal of bad options.
local lu = require "luaunit"
local core = require "fiskaly.core"
local api = require "sandbox.api"

local BIN = assert(os.getenv("FISKALY_SANDBOX_BIN"), "FISKALY_SANDBOX_BIN not set")

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Runs the sandbox under sh (not exec'd) so the shell reports its exit status.
local function run(args)
  local p = assert(io.popen("sh -c " .. q(q(BIN) .. " " .. args .. " 2>/dev/null; echo EXIT=$?"), "r"))
  local lines = {}
  for _ = 1, 8 do
    local l = p:read("l")
    if not l then break end
    lines[#lines + 1] = l
    if l:match("^FISKALY_SANDBOX_PID=") or l:match("^EXIT=") then break end
  end
  return p, lines
end

TestProcess = {}

local function stop_with(sig)
  local p, lines = run("--port 0")
  lu.assertEquals(#lines, 5)
  lu.assertStrMatches(lines[1], "FISKALY_BASE_URL=http://127%.0%.0%.1:%d+")
  lu.assertStrMatches(lines[2], "FISKALY_API_KEY=.+")
  lu.assertStrMatches(lines[3], "FISKALY_API_SECRET=.+")
  lu.assertStrMatches(lines[4], "FISKALY_ORGANIZATION_ID=.+")
  local pid = lines[5]:match("^FISKALY_SANDBOX_PID=(%d+)$")
  lu.assertNotNil(pid)
  -- it listens on 127.0.0.1 only: /proc/net/tcp has exactly one LISTEN socket on
  -- the port, bound to 0100007F (127.0.0.1), and none in /proc/net/tcp6
  local url = lines[1]:match("=(.*)$")
  local port = tonumber(url:match(":(%d+)$"))
  local listen = {}
  for _, file in ipairs{ "/proc/net/tcp", "/proc/net/tcp6" } do
    local fh = io.open(file, "r")
    if fh then
      for l in fh:lines() do
        local addr, hexport, st = l:match("^%s*%d+:%s+(%x+):(%x+)%s+%x+:%x+%s+(%x%x)")
        if addr and tonumber(hexport, 16) == port and st == "0A" then listen[#listen + 1] = addr end
      end
      fh:close()
    end
  end
  lu.assertEquals(listen, { "0100007F" })
  -- it serves
  local http = core.http.session{}
  local before = os.time()
  local r = assert(http:request{ method = "GET", url = url .. "/_sandbox/state" })
  lu.assertEquals(r.status, 200)
  -- the host stamps each request with its arrival time in milliseconds
  local ms = math.tointeger(require("fiskaly.json").decode(r.body).received_ms)
  lu.assertNotNil(ms)
  lu.assertTrue(ms >= (before - 1) * 1000 and ms <= (os.time() + 1) * 1000, tostring(ms))
  http:close()
  os.execute("kill -" .. sig .. " " .. pid)
  local rest = p:read("a")
  p:close()
  -- nothing else on stdout, exit status 0
  lu.assertEquals(rest, "EXIT=0\n")
end

function TestProcess.test_sigterm_exits_cleanly() stop_with("TERM") end
function TestProcess.test_sigint_exits_cleanly() stop_with("INT") end

function TestProcess.test_bad_options()
  for _, a in ipairs{ "--port 70000", "--port x", "--token-ttl 0", "--seed abc", "--tss-limit -1", "--bogus" } do
    local p, lines = run(a)
    p:close()
    lu.assertEquals(lines[1], "EXIT=2", a)
  end
  local p, lines = run("--help")
  p:close()
  lu.assertStrContains(lines[1], "usage: fiskaly-sandbox")
end

function TestProcess.test_tss_limit_option()
  local S = api.start{ "--tss-limit", "2" }
  local tok = S:sign_token()
  S:ok("PUT", "/api/v2/tss/" .. core.crypto.uuid4(), {}, tok)
  S:ok("PUT", "/api/v2/tss/" .. core.crypto.uuid4(), {}, tok)
  local st, b = S:call("PUT", "/api/v2/tss/" .. core.crypto.uuid4(), {}, tok)
  api.assert_error(lu, st, b, 403, "E_TSS_LIMIT_REACHED")
  S:stop()
  local U = api.start{ "--tss-limit", "0" }
  tok = U:sign_token()
  for _ = 1, 7 do U:ok("PUT", "/api/v2/tss/" .. core.crypto.uuid4(), {}, tok) end
  lu.assertEquals(#U:ok("GET", "/api/v2/tss", nil, tok).data, 7)
  U:stop()
end

os.exit(lu.LuaUnit.run())
