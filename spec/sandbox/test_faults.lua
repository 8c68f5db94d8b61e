-- Fault injection in fiskaly-sandbox (/_sandbox/faults, /_sandbox/latency,
-- /_sandbox/requests, /_sandbox/revoke-tokens, --tss-create-delay-ms), over raw
-- HTTP (core.http, no client library): every action does what it says, count and
-- skip are honoured, draws are deterministic given the seed, and latency is slept
-- outside the sandbox's lock (concurrent requests overlap), all measured from the
-- sandbox's own request log, never from the test's clock.
local lu = require "luaunit"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local api = require "sandbox.api"

local A = api.start{ "--seed", "11" }
local P = A:provision("CLIENT")            -- a TSS with a registered client
local TSS = "/api/v2/tss/" .. P.tss_id

-- ---------------------------------------------------------------- helpers

local function faults(rules, seed)
  local st, b = A:call("POST", "/_sandbox/faults", { rules = json.array(rules), seed = seed })
  lu.assertEquals(st, 200, type(b) == "table" and b.message or b)
  lu.assertEquals(b.ok, true)
end

local function requests(since)
  return A:ok("GET", "/_sandbox/requests" .. (since and ("?since=" .. since) or "")).requests
end

-- seq of the last logged API request (0 when none).
local function last_seq()
  local r = requests()
  return #r > 0 and r[#r].seq or 0
end

-- One request on a fresh connection (a fresh session), so that libcurl cannot
-- transparently resend it on a new connection after a drop (it does that once
-- for a reused keep-alive connection that closes without any answer).
local function fresh(method, path, body, tok, opts)
  local s <close> = core.http.session{ timeout_ms = (opts and opts.timeout_ms) or 20000 }
  local h = { ["Content-Type"] = "application/json" }
  if tok then h.Authorization = "Bearer " .. tok end
  for k, v in pairs(opts and opts.headers or {}) do h[k] = v end
  if type(body) == "table" then body = assert(json.encode(body)) end
  return s:request{ method = method, url = A.base .. path, headers = h, body = body }
end

local function tx_path(tx, rev)
  return TSS .. "/tx/" .. tx .. (rev and ("?tx_revision=" .. rev) or "")
end

local function tss_summary()
  for _, t in ipairs(A:ok("GET", "/_sandbox/state").tss) do
    if t.id == P.tss_id then return t end
  end
  error("TSS not in /_sandbox/state")
end

local function statuses(n, path, tok)
  local out = {}
  for i = 1, n do out[i] = (A:call("GET", path, nil, tok)) end
  return out
end

-- ------------------------------------------------------------------ tests

TestFaults = {}

function TestFaults:setUp()
  A:ok("DELETE", "/_sandbox/faults")
end

function TestFaults.test_status_429_has_retry_after_and_fiskaly_body()
  local since = last_seq()
  faults{ { method = "PUT", path = "/tx/", action = "status", status = 429, retry_after = 2 } }
  local tx = core.crypto.uuid4()
  local st, body, h = A:call("PUT", tx_path(tx, 1), { state = "ACTIVE", client_id = P.client_id }, P.tok,
    { ["X-Request-Id"] = "req-429" })
  local msg = api.assert_error(lu, st, body, 429, "E_TOO_MANY_REQUESTS")
  lu.assertStrContains(msg, "429")
  lu.assertEquals(body.error, "Too Many Requests")
  lu.assertEquals(h["retry-after"], "2")
  lu.assertEquals(h["request-id"], "req-429")
  -- Not applied: the transaction does not exist.
  local gst, gbody = A:call("GET", tx_path(tx), nil, P.tok)
  api.assert_error(lu, gst, gbody, 404, "E_TX_NOT_FOUND")
  -- count defaults to 1: the same PUT now goes through.
  local ok = A:tx(P, tx, 1, "ACTIVE")
  lu.assertEquals(ok.latest_revision, 1)
  local log = requests(since)
  lu.assertEquals(#log, 3)
  lu.assertEquals(log[1].action, "status")
  lu.assertEquals(log[1].status, 429)
  lu.assertEquals(log[1].retry_after, 2)
  lu.assertEquals(log[1].rule, 1)
  lu.assertEquals(log[1].request_id, "req-429")
  lu.assertEquals(log[1].query, { tx_revision = "1" })
  lu.assertNil(log[2].action)
  lu.assertEquals(log[2].status, 404)
  lu.assertNil(log[3].action)
  lu.assertEquals(log[3].status, 200)
  lu.assertTrue(log[1].seq < log[2].seq and log[2].seq < log[3].seq)
  lu.assertTrue(log[1].received_ms <= log[3].received_ms)
end

function TestFaults.test_status_default_codes_custom_code_and_no_retry_after()
  local want = { [500] = "E_INTERNAL", [502] = "ERROR_IDENTIFY_ERS", [503] = "E_TSS_LOCKED", [504] = "E_GATEWAY_TIMEOUT" }
  for status, code in pairs(want) do
    faults{ { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "status", status = status } }
    local st, body, h = A:call("GET", TSS, nil, P.tok)
    api.assert_error(lu, st, body, status, code)
    lu.assertNil(h["retry-after"])
  end
  faults{ { path = "^/api/v2/tss/[^/]+$", action = "status", status = 503, code = "E_BOOTSTRAP_FILE_NOT_AVAILABLE",
            message = "try later", retry_after = 0 } }
  local st, body, h = A:call("GET", TSS, nil, P.tok)
  lu.assertEquals(api.assert_error(lu, st, body, 503, "E_BOOTSTRAP_FILE_NOT_AVAILABLE"), "try later")
  lu.assertEquals(h["retry-after"], "0")
end

function TestFaults.test_drop_before_changes_nothing()
  local tx = core.crypto.uuid4()
  local before = tss_summary()
  local since = last_seq()
  faults{ { method = "PUT", path = "/tx/" .. tx:gsub("%-", "%%-") .. "$", action = "drop_before" } }
  local resp, err = fresh("PUT", tx_path(tx, 1), { state = "ACTIVE", client_id = P.client_id }, P.tok)
  lu.assertNil(resp)
  lu.assertEquals(err.kind, "network")
  lu.assertEquals(err.code, "GOT_NOTHING")
  local gst, gbody = A:call("GET", tx_path(tx), nil, P.tok)
  api.assert_error(lu, gst, gbody, 404, "E_TX_NOT_FOUND")
  local after = tss_summary()
  lu.assertEquals(after.signature_counter, before.signature_counter)
  lu.assertEquals(after.transaction_counter, before.transaction_counter)
  local log = requests(since)
  lu.assertEquals(log[1].action, "drop_before")
  lu.assertEquals(log[1].dropped, true)
  lu.assertNil(log[1].status)                  -- nothing was handled, nothing answered
  -- The rule is spent: the same request now starts the transaction at revision 1.
  lu.assertEquals(A:tx(P, tx, 1, "ACTIVE").latest_revision, 1)
end

function TestFaults.test_drop_after_applies_then_closes()
  local tx = core.crypto.uuid4()
  A:tx(P, tx, 1, "ACTIVE")
  local before = tss_summary()
  local since = last_seq()
  faults{ { method = "PUT", path = "/tx/" .. tx:gsub("%-", "%%-") .. "$", action = "drop_after" } }
  local body = { state = "FINISHED", client_id = P.client_id, schema = api.RECEIPT }
  local resp, err = fresh("PUT", tx_path(tx, 2), body, P.tok)
  lu.assertNil(resp)
  lu.assertEquals(err.kind, "network")
  lu.assertEquals(err.code, "GOT_NOTHING")
  -- Applied: the transaction is at revision 2, FINISHED and signed once more.
  local got = A:ok("GET", tx_path(tx), nil, P.tok)
  lu.assertEquals(got.latest_revision, 2)
  lu.assertEquals(got.revision, 2)
  lu.assertEquals(got.state, "FINISHED")
  lu.assertStrContains(got.qr_code_data, "V0;")
  lu.assertEquals(tss_summary().signature_counter, before.signature_counter + 1)
  local log = requests(since)
  lu.assertEquals(log[1].action, "drop_after")
  lu.assertEquals(log[1].dropped, true)
  lu.assertEquals(log[1].status, 200)           -- what it would have answered
  -- Resending the lost PUT gives the stored answer: nothing is signed twice.
  local again = A:tx(P, tx, 2, "FINISHED", api.RECEIPT)
  lu.assertEquals(again.qr_code_data, got.qr_code_data)
  lu.assertEquals(again.signature.counter, got.signature.counter)
  lu.assertEquals(tss_summary().signature_counter, before.signature_counter + 1)
end

-- truncate: applied, headers sent, connection closed before the body. libcurl
-- does not resend it even on a reused connection (it got an answer's start).
function TestFaults.test_truncate_on_a_reused_connection()
  local tx = core.crypto.uuid4()
  A:tx(P, tx, 1, "ACTIVE")                      -- the shared session's connection is warm
  local since = last_seq()
  faults{ { method = "PUT", path = "/tx/", action = "truncate" } }
  local resp, err = A.http:request{ method = "PUT", url = A.base .. tx_path(tx, 2),
    headers = { ["Content-Type"] = "application/json", Authorization = "Bearer " .. P.tok },
    body = assert(json.encode{ state = "FINISHED", client_id = P.client_id, schema = api.RECEIPT }) }
  lu.assertNil(resp)
  lu.assertEquals(err.kind, "network")
  lu.assertEquals(err.code, "PARTIAL_FILE")
  local log = requests(since)
  lu.assertEquals(#log, 1)                      -- sent once, not resent by libcurl
  lu.assertEquals(log[1].action, "truncate")
  lu.assertEquals(log[1].status, 200)
  lu.assertEquals(log[1].dropped, true)
  lu.assertEquals(A:ok("GET", tx_path(tx), nil, P.tok).latest_revision, 2)
end

function TestFaults.test_count_and_skip()
  local path = "^/api/v2/tss/[^/]+$"
  faults{ { method = "GET", path = path, action = "status", status = 503, skip = 2, count = 2 } }
  lu.assertEquals(statuses(6, TSS, P.tok), { 200, 200, 503, 503, 200, 200 })
  local d = A:ok("GET", "/_sandbox/faults").rules[1]
  lu.assertEquals(d.matched, 4)                 -- a spent rule stops counting
  lu.assertEquals(d.fired, 2)
  lu.assertEquals(d.count, 0)
  lu.assertEquals(d.spent, true)

  faults{ { method = "GET", path = path, action = "status", status = 500, count = -1 } }
  lu.assertEquals(statuses(4, TSS, P.tok), { 500, 500, 500, 500 })
  lu.assertEquals(A:ok("GET", "/_sandbox/faults").rules[1].count, -1)
end

function TestFaults.test_rules_in_order_method_and_path_filters()
  faults{
    { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "status", status = 502 },
    { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "status", status = 504, skip = 1 },
    { method = "PATCH", action = "status", status = 500, count = -1 },
  }
  -- 1st: rule 1 fires (rule 2 is not tried). 2nd: rule 1 spent, rule 2 counts it and
  -- skips it. 3rd: rule 2 fires. 4th: both spent. PATCH-only rule never matches a GET,
  -- and neither GET rule matches the client path.
  lu.assertEquals(statuses(4, TSS, P.tok), { 502, 200, 504, 200 })
  lu.assertEquals(A:call("GET", TSS .. "/client/" .. P.client_id, nil, P.tok), 200)
  local d = A:ok("GET", "/_sandbox/faults").rules
  lu.assertEquals(d[1].matched, 1)
  lu.assertEquals(d[2].matched, 2)
  lu.assertEquals(d[3].matched, 0)
end

function TestFaults.test_query_and_body_patterns_pick_the_finishing_put()
  local tx = core.crypto.uuid4()
  local since = last_seq()
  faults{ { method = "PUT", path = "/tx/", query = "tx_revision=2", body = '"FINISHED"', action = "drop_after" } }
  A:tx(P, tx, 1, "ACTIVE")                      -- revision 1 does not match
  local resp, err = fresh("PUT", tx_path(tx, 2), { state = "FINISHED", client_id = P.client_id, schema = api.RECEIPT }, P.tok)
  lu.assertNil(resp)
  lu.assertEquals(err.code, "GOT_NOTHING")
  lu.assertEquals(A:ok("GET", tx_path(tx), nil, P.tok).state, "FINISHED")
  local log = requests(since)
  lu.assertNil(log[1].action)
  lu.assertEquals(log[2].action, "drop_after")
  local d = A:ok("GET", "/_sandbox/faults").rules[1]
  lu.assertEquals(d.matched, 1)
  lu.assertEquals(d.query, "tx_revision=2")
end

function TestFaults.test_status_with_a_non_fiskaly_body()
  faults{ { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "status", status = 502,
            response_body = "<html><body>Bad Gateway</body></html>" } }
  local st, body, h = A:call("GET", TSS, nil, P.tok)
  lu.assertEquals(st, 502)
  lu.assertEquals(body, "<html><body>Bad Gateway</body></html>")
  lu.assertEquals(h["content-type"], "text/html")
end

function TestFaults.test_delay_and_combined_delay()
  local since = last_seq()
  faults{ { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "delay", delay_ms = 300 },
          { method = "GET", path = "/client/", action = "status", status = 503, delay_ms = 150 } }
  local resp = assert(fresh("GET", TSS, nil, P.tok))
  lu.assertEquals(resp.status, 200)
  lu.assertEquals(json.decode(resp.body)._id, P.tss_id)
  lu.assertTrue(resp.time_ms >= 300)           -- the sandbox held the answer at least that long
  lu.assertEquals(A:call("GET", TSS .. "/client/" .. P.client_id, nil, P.tok), 503)
  local log = requests(since)
  lu.assertEquals(log[1].action, "delay")
  lu.assertEquals(log[1].delay_ms, 300)
  lu.assertEquals(log[1].respond_ms - log[1].handled_ms, 300)
  lu.assertEquals(log[2].action, "status")
  lu.assertEquals(log[2].delay_ms, 150)
  -- Spent: no delay any more.
  A:ok("GET", TSS, nil, P.tok)
  lu.assertEquals(requests(log[2].seq)[1].delay_ms, 0)
end

function TestFaults.test_expire_token_really_expires_it()
  local tok = A:auth("/api/v2", P.key.key, P.key.secret)
  A:ok("GET", TSS, nil, tok)
  faults{ { method = "GET", action = "expire_token" } }
  local st, body = A:call("GET", TSS, nil, tok)
  lu.assertStrContains(api.assert_error(lu, st, body, 401, "E_UNAUTHORIZED"), "expired")
  -- The rule is spent, but the token stays expired; other tokens are untouched.
  st, body = A:call("GET", TSS, nil, tok)
  lu.assertStrContains(api.assert_error(lu, st, body, 401, "E_UNAUTHORIZED"), "expired")
  A:ok("GET", TSS, nil, P.tok)
  local fresh_tok = A:auth("/api/v2", P.key.key, P.key.secret)
  A:ok("GET", TSS, nil, fresh_tok)
end

function TestFaults.test_revoke_tokens_invalidates_access_and_refresh_tokens()
  local auth = A:ok("POST", "/api/v2/auth", { api_key = P.key.key, api_secret = P.key.secret })
  A:ok("GET", TSS, nil, auth.access_token)
  local r = A:ok("POST", "/_sandbox/revoke-tokens")
  lu.assertTrue(r.revoked >= 2)
  local st, body = A:call("GET", TSS, nil, auth.access_token)
  api.assert_error(lu, st, body, 401, "E_UNAUTHORIZED")
  st, body = A:call("POST", "/api/v2/auth", { refresh_token = auth.refresh_token })
  api.assert_error(lu, st, body, 401, "E_UNAUTHORIZED")
  -- Logging in with the key works; the shared token is re-issued for the other tests.
  P.tok = A:auth("/api/v2", P.key.key, P.key.secret)
  A:ok("GET", TSS, nil, P.tok)
end

-- Latency is slept outside the sandbox's lock: while one request sits in its
-- delay, the next is handled.  The client gives up after 300 ms, the sandbox
-- would hold each answer 60 s; the second request can only appear in the log,
-- handled before the first one's answer time, if the first did not hold the lock.
function TestFaults.test_latency_overlaps_concurrent_requests()
  local since = last_seq()
  A:ok("POST", "/_sandbox/latency", { ms = 60000 })
  for i = 1, 3 do
    local resp, err = fresh("GET", TSS, nil, P.tok, { timeout_ms = 300, headers = { ["X-Request-Id"] = "lat-" .. i } })
    lu.assertNil(resp)
    lu.assertEquals(err.kind, "timeout")
  end
  local log = requests(since)                  -- control endpoints are never delayed
  lu.assertEquals(#log, 3)
  for i, e in ipairs(log) do
    lu.assertEquals(e.request_id, "lat-" .. i)
    lu.assertEquals(e.delay_ms, 60000)
    lu.assertEquals(e.respond_ms, e.handled_ms + 60000)
    lu.assertTrue(e.handled_ms >= e.received_ms)
  end
  lu.assertTrue(log[3].handled_ms < log[1].respond_ms)
  lu.assertTrue(log[3].handled_ms < log[2].respond_ms)
  -- DELETE /_sandbox/faults turns latency off.
  A:ok("DELETE", "/_sandbox/faults")
  A:ok("GET", TSS, nil, P.tok)
  lu.assertEquals(requests(log[3].seq)[1].delay_ms, 0)
  lu.assertEquals(A:ok("GET", "/_sandbox/faults").latency_ms, 0)
end

function TestFaults.test_probability_is_deterministic_given_the_seed()
  local rule = { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "status", status = 503, count = -1, probability = 0.5 }
  faults({ rule }, 42)
  local a = statuses(24, TSS, P.tok)
  faults({ rule }, 42)
  local b = statuses(24, TSS, P.tok)
  faults({ rule }, 43)
  local c = statuses(24, TSS, P.tok)
  lu.assertEquals(b, a)
  lu.assertNotEquals(c, a)
  local seen = {}
  for _, s in ipairs(a) do seen[s] = true end
  lu.assertTrue(seen[200] and seen[503])
end

function TestFaults.test_request_log_excludes_control_and_can_be_cleared()
  A:ok("GET", TSS, nil, P.tok)
  local before = requests()
  lu.assertTrue(#before >= 1)
  for _, e in ipairs(before) do lu.assertNil(e.path:find("^/_sandbox")) end
  A:ok("DELETE", "/_sandbox/requests")
  lu.assertEquals(#requests(), 0)
  A:ok("GET", TSS, nil, P.tok)
  local after = requests()
  lu.assertEquals(#after, 1)
  lu.assertEquals(after[1].seq, before[#before].seq + 1)   -- seq keeps counting
  lu.assertEquals(#requests(after[1].seq), 0)
  local st, body = A:call("GET", "/_sandbox/requests?since=x")
  api.assert_error(lu, st, body, 400, "E_FAILED_SCHEMA_VALIDATION")
end

function TestFaults.test_bad_rules_are_rejected()
  local bad = {
    { action = "explode" },
    { action = "status" },
    { action = "status", status = 200 },
    { action = "drop_before", status = 503 },
    { action = "delay", delay_ms = -1 },
    { action = "delay", count = 0 },
    { action = "delay", path = "[" },
    { action = "delay", methd = "GET" },
    { action = "delay", method = "get" },
    { action = "status", status = 503, probability = 0 },
    { action = "delay", query = "(" },
    { action = "delay", response_body = "x" },
  }
  for _, r in ipairs(bad) do
    local st, body = A:call("POST", "/_sandbox/faults", { rules = { r } })
    api.assert_error(lu, st, body, 400, "E_FAILED_SCHEMA_VALIDATION")
  end
  local st, body = A:call("POST", "/_sandbox/latency", { ms = "50" })
  api.assert_error(lu, st, body, 400, "E_FAILED_SCHEMA_VALIDATION")
  -- A rejected rule set leaves the previous one in place.
  faults{ { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "status", status = 503 } }
  A:call("POST", "/_sandbox/faults", { rules = { { action = "explode" } } })
  lu.assertEquals(A:call("GET", TSS, nil, P.tok), 503)
end

TestSlowTss = {}

function TestSlowTss.test_tss_create_delay()
  local B = api.start{ "--tss-create-delay-ms", "250" }
  local _ <close> = setmetatable({}, { __close = function() B:stop() end })
  local tok = B:sign_token()
  local id = core.crypto.uuid4()
  B:ok("PUT", "/api/v2/tss/" .. id, { metadata = {} }, tok)
  B:ok("GET", "/api/v2/tss/" .. id, nil, tok)
  local log = B:ok("GET", "/_sandbox/requests").requests
  local put, get = log[#log - 1], log[#log]
  lu.assertEquals(put.method, "PUT")
  lu.assertEquals(put.delay_ms, 250)
  lu.assertNil(put.action)
  lu.assertEquals(get.method, "GET")
  lu.assertEquals(get.delay_ms, 0)
end

local rc = lu.LuaUnit.run()
A:stop()
os.exit(rc)
