-- The README's main command: `fiskaly demo` runs the whole flow against the
-- built-in sandbox and ends with a verified QR code; no secret is printed.
local lu = require "luaunit"
local core = require "fiskaly.core"
local json = require "fiskaly.json"

local CLI = assert(os.getenv("FISKALY_CLI"), "FISKALY_CLI not set")

local function run(args)
  local p = assert(io.popen("'" .. CLI .. "' " .. args .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok and 0 or code, out
end

TestDemo = {}

function TestDemo:test_text_output_ends_with_a_verified_qr_code()
  local code, out = run("demo")
  lu.assertEquals(code, 0, out)
  for n = 1, 15 do
    lu.assertStrContains(out, string.format("[%2d/15]", n))
  end
  lu.assertNotStrContains(out, "FAILED")
  local qr = out:match("\n(V0;[^\n]+)\n")
  lu.assertNotNil(qr, out)
  lu.assertStrContains(out, "QR code signature verified: P-256")
  -- checked again here, independently of the demo's own check
  local r = core.tse.verify_qr(qr)
  lu.assertTrue(r.valid, r.reason)
  lu.assertStrMatches(qr, "V0;POS%-DEMO%-001;Kassenbeleg%-V1;Beleg^11%.90_5%.35_0%.00_0%.00_0%.00^10%.00:Bar_7%.25:Unbar;1;5;.*")
  -- secrets stay secret: nothing that looks like a PUK/PIN/secret label with a value
  lu.assertNotStrContains(out:lower(), "admin_puk")
  lu.assertNotStrContains(out:lower(), "api_secret")
end

function TestDemo:test_json_output()
  local code, out = run("demo --json")
  lu.assertEquals(code, 0, out)
  local res = assert(json.decode(out))
  lu.assertTrue(res.verified)
  lu.assertEquals(res.transaction.state, "FINISHED")
  lu.assertEquals(res.verification.serial_number, res.tss_serial_number)
end

function TestDemo:test_bad_option_is_a_usage_error()
  local code, out = run("demo --nope")
  lu.assertEquals(code, 2)
  lu.assertStrContains(out, "unknown option --nope")
end

os.exit(lu.LuaUnit.run())
