-- The client over HTTPS against `fiskaly-sandbox --tls` (a CA and a server
-- certificate generated for this run): a full sale succeeds when the client is
-- told the run's CA file; without it, or with another run's CA, the connection
-- is refused before any request is sent, with kind "tls" and a message saying
-- the certificate failed verification; it is not retried and does not trip the
-- circuit breaker; and there is no switch to turn verification off.
local lu = require "luaunit"
local fiskaly = require "fiskaly"
local sandbox = require "fiskaly.sandbox"
local R = require "helpers.reliability"

local sb = assert(sandbox.start{ args = { "--tls" } })
local other = assert(sandbox.start{ args = { "--tls" } })   -- only its CA is used
local ctl = R.control(sb)

TestClientTls = {}

function TestClientTls.test_sandbox_serves_https_with_a_ca_file()
  lu.assertStrMatches(sb.base_url, "https://127%.0%.0%.1:%d+")
  lu.assertIsString(sb.ca_file)
  local f = assert(io.open(sb.ca_file, "r"))
  lu.assertStrContains(f:read("a"), "-----BEGIN CERTIFICATE-----")
  f:close()
  lu.assertNotEquals(sb.ca_file, other.ca_file)
end

function TestClientTls.test_a_sale_over_https_with_the_run_ca()
  local p = R.provision(sb, { retry = { base_ms = 5, seed = 1 } })   -- passes sb.ca_file
  local tx = assert(R.sale(p, "7.00"))
  lu.assertEquals(tx.state, "FINISHED")
  lu.assertTrue(fiskaly.core.tse.verify_qr(tx.qr_code_data).valid)
end

local function refused(opts)
  local events = {}
  local o = { base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret,
    retry = { attempts = 5, base_ms = 5, seed = 1 }, breaker = { failures = 1 },
    log = function(ev) events[#events + 1] = ev end }
  for k, v in pairs(opts) do o[k] = v end
  local c = assert(fiskaly.new(o))
  ctl.clear_requests()
  local res, err = c.sign:list_tss()
  lu.assertNil(res)
  lu.assertTrue(fiskaly.is_error(err))
  lu.assertEquals(err.kind, "tls")
  lu.assertFalse(err.retryable)
  lu.assertEquals(err.attempts, 1)                    -- not retried
  lu.assertEquals(#events, 1)
  lu.assertEquals(#ctl.requests(), 0)                 -- nothing reached the API
  for _, b in pairs(c:breakers()) do lu.assertEquals(b.state, "closed") end   -- not a host failure
  return err
end

function TestClientTls.test_untrusted_certificate_is_refused_and_says_why()
  local err = refused{}
  lu.assertEquals(err.code, "PEER_FAILED_VERIFICATION")
  lu.assertStrContains(err.message, "certificate verify failed")
  lu.assertStrContains(tostring(err), "fiskaly tls error PEER_FAILED_VERIFICATION: certificate verify failed")
  lu.assertStrContains(err.message, "ca_file")
end

function TestClientTls.test_another_runs_ca_is_refused()
  local err = refused{ ca_file = other.ca_file }
  lu.assertEquals(err.code, "PEER_FAILED_VERIFICATION")
  lu.assertStrContains(err.message, "certificate verify failed")
end

function TestClientTls.test_a_missing_ca_file_is_a_tls_error()
  local err = refused{ ca_file = "/nonexistent/ca.pem" }
  lu.assertNotNil(err.code)
end

function TestClientTls.test_verification_cannot_be_turned_off()
  for _, k in ipairs{ "insecure", "verify", "ssl_verify" } do
    lu.assertErrorMsgContains("TLS verification cannot be turned off", fiskaly.new,
      { base_url = sb.base_url, api_key = "k", api_secret = "s", [k] = (k == "insecure") })
  end
end

function TestClientTls.test_plain_http_to_the_https_port_fails_cleanly()
  local c = assert(fiskaly.new{ base_url = sb.base_url:gsub("^https", "http"), api_key = sb.api_key,
    api_secret = sb.api_secret, retry = false })
  local res, err = c.sign:list_tss()
  lu.assertNil(res)
  lu.assertTrue(fiskaly.is_error(err))
  lu.assertNotEquals(err.kind, "api")
end

local rc = lu.LuaUnit.run()
other.stop()
sb.stop()
os.exit(rc)
