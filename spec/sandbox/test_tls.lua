-- fiskaly-sandbox --tls: HTTPS with a CA made for the run.  A session that is
-- told the printed CA file connects (by IP and by name); one that is not, or
-- that trusts another CA, is refused with kind "tls" and curl's reason; the API
-- and fault injection work unchanged over HTTPS; the temporary CA file is gone
-- after the sandbox stops.
local lu = require "luaunit"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local sandbox = require "fiskaly.sandbox"

local SB = assert(sandbox.start{ tls = true, args = { "--seed", "5" } })

local function read_file(path)
  local f <close> = assert(io.open(path, "rb"))
  return f:read("a")
end

-- A second, unrelated CA (the verification must not accept just any CA).
local function other_ca_file()
  local key <close> = core.crypto.generate_key("P-256")
  local pem = assert(core.crypto.issue_certificate{ key = key, common_name = "some other CA", ca = true })
  local path = os.tmpname()
  local f <close> = assert(io.open(path, "wb"))
  f:write(pem)
  return path
end

local function get(session, url)
  return session:request{ method = "GET", url = url or (SB.base_url .. "/_sandbox/state") }
end

TestTls = {}

function TestTls.test_start_lines()
  lu.assertStrMatches(SB.base_url, "https://127%.0%.0%.1:%d+")
  lu.assertIsString(SB.ca_file)
  lu.assertEquals(SB.env.FISKALY_CA_FILE, SB.ca_file)
  local info = assert(core.crypto.certificate_info(read_file(SB.ca_file)))
  lu.assertStrContains(info.subject, "fiskaly-sandbox test CA")
  lu.assertEquals(info.subject, info.issuer)      -- the root is self-signed
  lu.assertEquals(info.curve, "P-256")
  lu.assertNil(read_file(SB.ca_file):find("PRIVATE", 1, true))
end

function TestTls.test_trusted_with_the_printed_ca_file()
  local s <close> = core.http.session{ ca_file = SB.ca_file, timeout_ms = 20000 }
  local resp = assert(get(s))
  lu.assertEquals(resp.status, 200)
  lu.assertIsTable(json.decode(resp.body).tss)
  -- The certificate names DNS:localhost too.
  resp = assert(get(s, (SB.base_url:gsub("127%.0%.0%.1", "localhost")) .. "/_sandbox/state"))
  lu.assertEquals(resp.status, 200)
end

function TestTls.test_refused_without_the_ca_file()
  local s <close> = core.http.session{ timeout_ms = 20000 }
  local resp, err = get(s)
  lu.assertNil(resp)
  lu.assertEquals(err.kind, "tls")
  lu.assertEquals(err.code, "PEER_FAILED_VERIFICATION")
  lu.assertStrContains(err.message, "certificate")
  lu.assertStrContains(err.message, "issuer")      -- why: the issuer is not trusted
end

function TestTls.test_refused_with_another_ca()
  local path = other_ca_file()
  local s <close> = core.http.session{ ca_file = path, timeout_ms = 20000 }
  local resp, err = get(s)
  os.remove(path)
  lu.assertNil(resp)
  lu.assertEquals(err.kind, "tls")
  lu.assertEquals(err.code, "PEER_FAILED_VERIFICATION")
  lu.assertStrContains(err.message, "certificate")
end

function TestTls.test_plain_http_to_the_https_port_gets_no_api_answer()
  local s <close> = core.http.session{ timeout_ms = 20000 }
  local resp = get(s, (SB.base_url:gsub("^https:", "http:")) .. "/_sandbox/state")
  lu.assertTrue(resp == nil or resp.status ~= 200)
end

function TestTls.test_api_and_faults_over_https()
  local s <close> = core.http.session{ ca_file = SB.ca_file, timeout_ms = 20000 }
  local function call(method, path, body, tok)
    local h = { ["Content-Type"] = "application/json" }
    if tok then h.Authorization = "Bearer " .. tok end
    local resp, err = s:request{ method = method, url = SB.base_url .. path, headers = h,
      body = body and assert(json.encode(body)) }
    if not resp then return nil, err end
    return resp.status, json.decode(resp.body), resp.headers
  end
  local st, auth = call("POST", "/api/v0/auth", { api_key = SB.api_key, api_secret = SB.api_secret })
  lu.assertEquals(st, 200)
  lu.assertIsString(auth.access_token)

  st = call("POST", "/_sandbox/faults", { rules = { { method = "POST", path = "^/api/v0/auth$",
    action = "status", status = 503, retry_after = 1 }, { method = "GET", action = "drop_before", count = 2 } } })
  lu.assertEquals(st, 200)
  local body, h
  st, body, h = call("POST", "/api/v0/auth", { api_key = SB.api_key, api_secret = SB.api_secret })
  lu.assertEquals(st, 503)
  lu.assertEquals(body.code, "E_TSS_LOCKED")
  lu.assertEquals(h["retry-after"], "1")
  -- count 2 also covers libcurl's own resend on a reused connection.
  local resp, err = call("GET", "/api/v0/organizations", nil, auth.access_token)
  lu.assertNil(resp)
  lu.assertEquals(err.kind, "network")
  local _, faults = call("GET", "/_sandbox/faults")
  lu.assertTrue(faults.rules[2].fired >= 1)
  lu.assertEquals(call("DELETE", "/_sandbox/faults"), 200)
  st = call("GET", "/api/v0/organizations", nil, auth.access_token)
  lu.assertEquals(st, 200)
end

-- core.crypto.issue_certificate, which made the certificates above.
TestIssueCertificate = {}

function TestIssueCertificate.test_chain_fields()
  local c = core.crypto
  local ca_key <close> = c.generate_key("P-256")
  local ca = assert(c.issue_certificate{ key = ca_key, common_name = "Test CA", days = 3, ca = true })
  local key <close> = c.generate_key("P-384")
  local leaf = assert(c.issue_certificate{ key = key, common_name = "leaf", days = 2,
    san = { "IP:127.0.0.1", "DNS:localhost" }, issuer_key = ca_key, issuer_cert = ca })
  local ci, li = assert(c.certificate_info(ca)), assert(c.certificate_info(leaf))
  lu.assertEquals(ci.subject, "CN=Test CA")
  lu.assertEquals(li.subject, "CN=leaf")
  lu.assertEquals(li.issuer, ci.subject)
  lu.assertEquals(li.public_key, key:public_point())
  lu.assertEquals(li.curve, "P-384")
  lu.assertTrue(li.not_after - li.not_before >= 2 * 86400)
  lu.assertTrue(li.not_after - li.not_before <= 2 * 86400 + 120)
  lu.assertNotEquals(li.serial, ci.serial)
end

function TestIssueCertificate.test_errors()
  local c = core.crypto
  local k1 <close> = c.generate_key("P-256")
  local k2 <close> = c.generate_key("P-256")
  local ca = assert(c.issue_certificate{ key = k1, common_name = "CA", ca = true })
  -- operational: the issuer key does not match the issuer certificate, or no certificate
  local pem, err = c.issue_certificate{ key = k2, common_name = "x", issuer_key = k2, issuer_cert = ca }
  lu.assertNil(pem)
  lu.assertStrContains(err, "does not belong")
  pem, err = c.issue_certificate{ key = k2, common_name = "x", issuer_key = k1, issuer_cert = "not a cert" }
  lu.assertNil(pem)
  lu.assertStrContains(err, "not a PEM or DER")
  -- misuse raises
  lu.assertErrorMsgContains("san entries", c.issue_certificate, { key = k2, common_name = "x", san = { "URI:http://x" } })
  lu.assertErrorMsgContains("san entries", c.issue_certificate, { key = k2, common_name = "x", san = { "DNS:a,b" } })
  lu.assertErrorMsgContains("issuer_cert", c.issue_certificate, { key = k2, common_name = "x", issuer_key = k1 })
  lu.assertErrorMsgContains("days", c.issue_certificate, { key = k2, common_name = "x", days = 0 })
  lu.assertErrorMsgContains("common_name", c.issue_certificate, { key = k2 })
  k1:close()
  lu.assertErrorMsgContains("closed", c.issue_certificate, { key = k1, common_name = "x" })
end

local rc = lu.LuaUnit.run()
local ca_file = SB.ca_file
SB.stop()
-- The temporary CA file is removed when the sandbox exits.
if rc == 0 and io.open(ca_file) ~= nil then
  io.stderr:write("FAIL: ", ca_file, " still exists after the sandbox stopped\n")
  rc = 1
end
os.exit(rc)
