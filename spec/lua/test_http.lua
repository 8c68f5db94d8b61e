-- core.http against the sandbox (loopback only): keep-alive reuse, methods and
-- bodies, response headers, transport errors as {kind, code, message}, misuse.
local lu = require "luaunit"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local helper = require "helpers.sandbox"

local sb = helper.start()
local http = core.http

local function url(path) return sb.base_url .. path end

TestHttp = {}

function TestHttp.test_keep_alive_reuses_one_connection()
  local s <close> = http.session{}
  local r1 = assert(s:request{ url = url("/_sandbox/state") })
  lu.assertEquals(r1.status, 200)
  lu.assertEquals(r1.connects, 1)
  for _ = 1, 5 do
    local r = assert(s:request{ url = url("/_sandbox/state") })
    lu.assertEquals(r.status, 200)
    lu.assertEquals(r.connects, 0, "a kept-alive connection must be reused")
  end
  -- a different method and a body on the same connection
  local r = assert(s:request{ method = "POST", url = url("/api/v2/auth"),
    headers = { ["Content-Type"] = "application/json" }, body = '{"api_key":"nope","api_secret":"nope"}' })
  lu.assertEquals(r.status, 401)
  lu.assertEquals(r.connects, 0)
end

function TestHttp.test_response_fields_and_lowercased_headers()
  local s <close> = http.session{}
  local rid = core.crypto.uuid4()
  local r = assert(s:request{ url = url("/_sandbox/state"), headers = { ["X-Request-Id"] = rid } })
  lu.assertEquals(r.status, 200)
  lu.assertIsNumber(r.time_ms)
  lu.assertTrue(r.time_ms >= 0)
  lu.assertEquals(r.headers["request-id"], rid)       -- the sandbox echoes our request id
  lu.assertStrContains(r.headers["content-type"], "application/json")
  lu.assertNil(r.headers["Content-Type"])              -- names are lowercased
  local body = assert(json.decode(r.body))
  lu.assertIsTable(body.organizations)
end

function TestHttp.test_post_body_and_error_status_are_not_transport_errors()
  local s <close> = http.session{}
  local r, err = s:request{ method = "POST", url = url("/api/v2/auth"),
    headers = { ["Content-Type"] = "application/json" },
    body = assert(json.encode{ api_key = sb.api_key, api_secret = "wrong-secret" }) }
  lu.assertNil(err)
  lu.assertEquals(r.status, 401)
  local b = assert(json.decode(r.body))
  lu.assertEquals(b.message, "Invalid credentials")
  r = assert(s:request{ method = "POST", url = url("/api/v2/auth"),
    headers = { ["Content-Type"] = "application/json" },
    body = assert(json.encode{ api_key = sb.api_key, api_secret = sb.api_secret }) })
  lu.assertEquals(r.status, 200)
  lu.assertIsString(assert(json.decode(r.body)).access_token)
end

function TestHttp.test_connection_refused()
  local s <close> = http.session{}
  local r, err = s:request{ url = "http://127.0.0.1:1/" }
  lu.assertNil(r)
  lu.assertEquals(err.kind, "network")
  lu.assertEquals(err.code, "COULDNT_CONNECT")
  lu.assertIsString(err.message)
end

-- A stopped (SIGSTOP) sandbox accepts connections in the kernel but never answers.
function TestHttp.test_timeout_when_the_server_never_answers()
  local other = helper.start()
  local s <close> = http.session{}
  assert(s:request{ url = other.base_url .. "/_sandbox/state" })  -- connection now open
  assert(os.execute("kill -STOP " .. other.pid))
  local r, err = s:request{ url = other.base_url .. "/_sandbox/state", timeout_ms = 300 }
  local r2, err2 = s:request{ url = other.base_url .. "/_sandbox/state", timeout_ms = 300 }
  assert(os.execute("kill -CONT " .. other.pid))
  lu.assertNil(r)
  lu.assertEquals(err.kind, "timeout")
  lu.assertEquals(err.code, "OPERATION_TIMEDOUT")
  lu.assertNil(r2)                                 -- also on a fresh connection
  lu.assertEquals(err2.code, "OPERATION_TIMEDOUT")
  local r3 = assert(s:request{ url = other.base_url .. "/_sandbox/state" })
  lu.assertEquals(r3.status, 200)                  -- the session recovers
  other.stop()
end

function TestHttp.test_tls_to_a_plain_http_port_is_a_tls_error()
  local s <close> = http.session{}
  local r, err = s:request{ url = (sb.base_url:gsub("^http:", "https:")) .. "/_sandbox/state" }
  lu.assertNil(r)
  lu.assertEquals(err.kind, "tls")
  lu.assertEquals(err.code, "SSL_CONNECT_ERROR")
end

function TestHttp.test_unreadable_ca_file_is_a_tls_error()
  local s <close> = http.session{ ca_file = "/nonexistent/ca.pem" }
  local r, err = s:request{ url = (sb.base_url:gsub("^http:", "https:")) .. "/" }
  lu.assertNil(r)
  lu.assertEquals(err.kind, "tls")
  lu.assertEquals(err.code, "SSL_CACERT_BADFILE")
end

function TestHttp.test_only_http_and_https()
  local s <close> = http.session{}
  local r, err = s:request{ url = "file:///etc/passwd" }
  lu.assertNil(r)
  lu.assertEquals(err.code, "UNSUPPORTED_PROTOCOL")
end

function TestHttp.test_response_size_limit()
  local s <close> = http.session{ max_body_bytes = 16 }
  local r, err = s:request{ url = url("/_sandbox/state") }
  lu.assertNil(r)
  lu.assertEquals(err.code, "RESPONSE_TOO_LARGE")
  -- the session stays usable afterwards (same answer, no crash, no leak)
  local r2, err2 = s:request{ url = url("/_sandbox/state") }
  lu.assertNil(r2)
  lu.assertEquals(err2.code, "RESPONSE_TOO_LARGE")
end

function TestHttp.test_misuse_raises()
  local s = http.session{}
  lu.assertErrorMsgContains("url must be a string", s.request, s, {})
  lu.assertErrorMsgContains("invalid method", s.request, s, { method = "GE T", url = url("/") })
  lu.assertErrorMsgContains("control characters", s.request, s,
    { url = url("/"), headers = { ["X-Test"] = "a\r\nInjected: yes" } })
  lu.assertErrorMsgContains("invalid header name", s.request, s, { url = url("/"), headers = { ["Bad Name"] = "x" } })
  lu.assertErrorMsgContains("body must be a string", s.request, s, { url = url("/"), body = {} })
  lu.assertErrorMsgContains("timeout_ms", s.request, s, { url = url("/"), timeout_ms = -1 })
  lu.assertErrorMsgContains("timeout_ms", http.session, { timeout_ms = 0 })
  lu.assertErrorMsgContains("ca_file", http.session, { ca_file = 42 })
  lu.assertStrContains(tostring(s), "fiskaly.http.Session (")
  s:close()
  s:close()  -- idempotent
  lu.assertEquals(tostring(s), "fiskaly.http.Session (closed)")
  lu.assertErrorMsgContains("closed fiskaly.http.Session", s.request, s, { url = url("/") })
end

function TestHttp.test_many_sessions_and_gc()
  for _ = 1, 20 do
    local s = http.session{}
    assert(s:request{ url = url("/_sandbox/state") })
  end
  collectgarbage()
  collectgarbage()
end

local rc = lu.LuaUnit.run()
sb.stop()
os.exit(rc)
