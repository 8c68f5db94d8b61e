-- The client's retries against the fault-injecting sandbox (issue 4):
-- a sale completes through 429s, 503s and dropped connections; Retry-After is
-- honoured (measured on the sandbox's received_ms, not by sleeping here); a PUT
-- whose answer was lost is resolved without a duplicate; a 401 mid-session is
-- healed once and only once; a wrong PIN (or any PIN call) is never repeated;
-- unsafe requests are not repeated; the deadline and the attempt budget bound
-- every call.
local lu = require "luaunit"
local fiskaly = require "fiskaly"
local helper = require "helpers.sandbox"
local R = require "helpers.reliability"

local sb = helper.start()
local ctl = R.control(sb)

local events = {}
local function log(ev) events[#events + 1] = ev end

-- Small backoff so the suite stays fast; Retry-After stays real (1 s).
local FAST = { attempts = 12, base_ms = 5, max_ms = 40, seed = 1234 }
local p = R.provision(sb, { retry = FAST, breaker = { failures = 100 }, log = log })

local function client(retry_opts, extra)
  local o = { base_url = sb.base_url, api_key = p.api_key, api_secret = p.api_secret, retry = retry_opts,
    breaker = { failures = 100 }, log = log }
  for k, v in pairs(extra or {}) do o[k] = v end
  return assert(fiskaly.new(o))
end

local function fired(desc)
  local out = {}
  for i, r in ipairs(desc.rules) do out[i] = r.fired end
  return out
end

TestRetrySandbox = {}

function TestRetrySandbox:setUp()
  ctl.clear()
  assert(p.pos.sign:auth())   -- a fresh token (an earlier test may have revoked every token)
  ctl.clear_requests()
  events = {}
end

function TestRetrySandbox.test_sale_completes_through_429_503_and_dropped_connections()
  local before = ctl.tss(p.tss_id)
  ctl.faults{
    { method = "PUT", path = "/tx/", action = "status", status = 429, retry_after = 1 },
    -- several drops in a row: libcurl by itself resends an idempotent request
    -- on another kept-alive connection when a reused one dies before any answer
    -- byte (a handful of times at most); once it has to open a new connection,
    -- the drop reaches the client's own retry logic
    { method = "PUT", path = "/tx/", action = "drop_before", count = 4 },
    { method = "PUT", path = "/tx/", action = "status", status = 503 },
    -- lets revision 1's next attempt through, then loses revision 2's answer after signing
    { method = "PUT", path = "/tx/", action = "drop_after", skip = 1, count = 4 },
    { method = "GET", path = "/tx/", action = "status", status = 502, code = "ERROR_IDENTIFY_ERS" },
  }
  local tx, err, tx_id = R.sale(p, "12.34")
  lu.assertNil(err and tostring(err))
  lu.assertEquals(tx.state, "FINISHED")
  lu.assertEquals(tx.revision, 2)
  lu.assertTrue(fiskaly.core.tse.verify_qr(tx.qr_code_data).valid)
  -- every fault really happened
  lu.assertEquals(fired(ctl.describe()), { 1, 4, 1, 4, 0 })
  -- and a read-back goes through a 502
  local back = assert(p.pos.sign:get_transaction(p.tss_id, tx_id))
  lu.assertEquals(fired(ctl.describe()), { 1, 4, 1, 4, 1 })
  lu.assertEquals(back.latest_revision, 2)
  lu.assertEquals(back.signature.counter, tx.signature.counter)
  -- no duplicate: one transaction, one signature per revision
  local after = ctl.tss(p.tss_id)
  lu.assertEquals(after.number_of_transactions, before.number_of_transactions + 1)
  lu.assertEquals(after.signature_counter, before.signature_counter + 2)
  -- the lost revision-2 answer: applied once (dropped), then answered from the store
  local puts = ctl.matching("/tx/" .. tx_id, "PUT")
  local rev2 = {}
  for _, r in ipairs(puts) do if r.query and r.query.tx_revision == "2" then rev2[#rev2 + 1] = r end end
  lu.assertTrue(#rev2 >= 2)
  lu.assertTrue(rev2[1].dropped)
  lu.assertEquals(rev2[1].status, 200)
  lu.assertEquals(rev2[#rev2].status, 200)
  -- each attempt was logged with its retry delay
  local retried = {}
  for _, ev in ipairs(events) do
    if ev.path and ev.path:find("/tx/", 1, true) and ev.retry_in_ms then
      retried[#retried + 1] = (ev.status or ev.error) .. "@" .. ev.method
      lu.assertNotNil(ev.request_id)
      lu.assertNotNil(ev.duration_ms)
      lu.assertTrue(ev.attempt >= 1)
    end
  end
  local kinds = {}
  for _, r in ipairs(retried) do kinds[r] = (kinds[r] or 0) + 1 end
  lu.assertEquals(kinds["429@PUT"], 1)
  lu.assertEquals(kinds["503@PUT"], 1)
  lu.assertEquals(kinds["502@GET"], 1)
  lu.assertTrue((kinds["network@PUT"] or 0) >= 2, "dropped connections retried by the client: "
    .. table.concat(retried, " "))
end

-- The retry after a Retry-After answer reaches the sandbox at least that long
-- after the answered request did (sandbox timestamps).
function TestRetrySandbox.test_retry_after_is_honoured()
  ctl.faults{
    { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "status", status = 429, retry_after = 1 },
    { method = "PUT", path = "/tx/", action = "status", status = 503, retry_after = 1, code = "E_TSS_LOCKED" },
  }
  assert(p.pos.sign:get_tss(p.tss_id))
  local tx_id = fiskaly.uuid4()
  assert(p.pos.sign:upsert_transaction(p.tss_id, tx_id, 1, { state = "ACTIVE", client_id = p.client_id }))
  for _, pair in ipairs{ { "/tss/" .. p.tss_id, "GET", 429 }, { "/tx/" .. tx_id, "PUT", 503 } } do
    local reqs = ctl.matching(pair[1], pair[2])
    local n = 0
    for i, r in ipairs(reqs) do
      if r.status == pair[3] then
        n = n + 1
        lu.assertEquals(r.retry_after, 1)
        local nxt = reqs[i + 1]
        lu.assertNotNil(nxt, "no retry after the " .. pair[3])
        lu.assertTrue(nxt.received_ms - r.received_ms >= 1000,
          ("retry came %d ms after the %d"):format(nxt.received_ms - r.received_ms, pair[3]))
        lu.assertEquals(nxt.status, 200)
      end
    end
    lu.assertEquals(n, 1)
  end
  local waits = 0
  for _, ev in ipairs(events) do
    if ev.retry_reason == "retry-after" then
      waits = waits + 1
      lu.assertTrue(ev.retry_in_ms >= 1000)
      lu.assertEquals(ev.retry_after, 1)
    end
  end
  lu.assertEquals(waits, 2)
end

function TestRetrySandbox.test_lost_put_answer_is_resolved_without_a_duplicate()
  local before = ctl.tss(p.tss_id)
  ctl.faults{ { method = "PUT", path = "/tx/", action = "drop_after" } }
  local tx_id = fiskaly.uuid4()
  local tx = assert(p.pos.sign:upsert_transaction(p.tss_id, tx_id, 1, { state = "ACTIVE", client_id = p.client_id }))
  local after = ctl.tss(p.tss_id)
  local puts = ctl.matching("/tx/" .. tx_id, "PUT")
  lu.assertTrue(#puts >= 2)
  lu.assertTrue(puts[1].dropped)             -- applied, answer lost
  lu.assertEquals(puts[1].status, 200)
  lu.assertEquals(tx.revision, 1)
  lu.assertEquals(after.number_of_transactions, before.number_of_transactions + 1)
  lu.assertEquals(after.transaction_counter, before.transaction_counter + 1)
  lu.assertEquals(after.signature_counter, before.signature_counter + 1)   -- signed exactly once
  lu.assertEquals(tx.signature.counter, after.signature_counter)
  local back = assert(p.pos.sign:get_transaction(p.tss_id, tx_id))
  lu.assertEquals(back.latest_revision, 1)
  lu.assertEquals(back.number, tx.number)
  -- the call's last logged attempt is the answered one (libcurl itself may
  -- have resent the PUT once on its dead kept-alive connection: idempotent)
  local last
  for _, ev in ipairs(events) do if ev.method == "PUT" then last = ev end end
  lu.assertEquals(last.status, 200)
  lu.assertNil(last.retry_in_ms)
end

function TestRetrySandbox.test_lost_tss_state_change_is_repeated()
  local c = client(FAST)
  local tss_id = fiskaly.uuid4()
  ctl.faults{
    { method = "PUT", path = "^/api/v2/tss/[^/]+$", action = "drop_after" },
    { method = "PATCH", path = "^/api/v2/tss/[^/]+$", action = "drop_after" },
  }
  local tss = assert(c.sign:create_tss(tss_id))
  lu.assertNotNil(tss.admin_puk)
  local up = assert(c.sign:update_tss(tss_id, { state = "UNINITIALIZED" }))
  lu.assertEquals(up.state, "UNINITIALIZED")
  lu.assertEquals(fired(ctl.describe()), { 1, 1 })
  lu.assertEquals(#ctl.matching("/tss/" .. tss_id, "PATCH"), 2)
  lu.assertEquals(ctl.tss(tss_id).state, "UNINITIALIZED")
end

function TestRetrySandbox.test_unsafe_requests_are_not_repeated()
  -- POST /organizations whose answer is lost: it may have been applied, so no retry
  local hub = assert(fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret,
    retry = FAST, log = log })
  assert(hub.management:auth())
  ctl.clear_requests()
  ctl.faults{ { method = "POST", path = "/organizations$", action = "drop_after" } }
  local org, err = hub.management:create_organization{ name = "Lost answer", address_line1 = "A 1", zip = "10115",
    town = "Berlin", country_code = "DEU", managed_by_organization_id = sb.organization_id }
  lu.assertNil(org)
  lu.assertEquals(err.kind, "network")
  lu.assertEquals(#ctl.matching("/organizations", "POST"), 1)
  lu.assertEquals(err.attempts, 1)
  -- but a 429 means "not processed": then even a POST is sent again
  ctl.clear_requests()
  ctl.faults{ { method = "POST", path = "/organizations$", action = "status", status = 429, retry_after = 0 } }
  org = assert(hub.management:create_organization{ name = "After 429", address_line1 = "A 1", zip = "10115",
    town = "Berlin", country_code = "DEU", managed_by_organization_id = sb.organization_id })
  lu.assertEquals(#ctl.matching("/organizations", "POST"), 2)
end

function TestRetrySandbox.test_wrong_pin_is_never_retried()
  local before = ctl.tss(p.tss_id).admin_pin_failures
  local _, err = p.pos.sign:admin_auth(p.tss_id, "wrong-pin-000")
  lu.assertEquals(err.status, 401)
  lu.assertEquals(#ctl.matching("/admin/auth", "POST"), 1)
  lu.assertEquals(ctl.tss(p.tss_id).admin_pin_failures, before + 1)
  -- not even on a transient answer or a dropped connection
  for _, rule in ipairs{
    { method = "POST", path = "/admin/auth$", action = "status", status = 503, retry_after = 0 },
    { method = "POST", path = "/admin/auth$", action = "status", status = 429, retry_after = 0 },
    { method = "POST", path = "/admin/auth$", action = "drop_before" },
    { method = "PATCH", path = "/admin$", action = "status", status = 503 },
  } do
    ctl.clear_requests()
    ctl.faults{ rule }
    if rule.method == "POST" then
      _, err = p.pos.sign:admin_auth(p.tss_id, p.pin)
    else
      _, err = p.pos.sign:change_admin_pin(p.tss_id, p.puk, "another-pin-1")
    end
    lu.assertNotNil(err, rule.action)
    lu.assertTrue(err.retryable)               -- transient, but the library does not repeat it
    lu.assertEquals(err.attempts, 1)
    local path = rule.method == "POST" and "/admin/auth" or "/admin"
    local n = 0
    for _, r in ipairs(ctl.requests()) do
      if r.method == rule.method and r.path:sub(-#path) == path then n = n + 1 end
    end
    lu.assertEquals(n, 1, rule.action .. " " .. tostring(rule.status))
  end
  ctl.clear()
  assert(p.pos.sign:admin_auth(p.tss_id, p.pin))   -- the right PIN still works
  assert(p.pos.sign:admin_logout(p.tss_id))
end

function TestRetrySandbox.test_401_mid_session_is_healed_once()
  local c = client(FAST)
  assert(c.sign:get_tss(p.tss_id))
  local auths = c.sign:auth_count()
  ctl.clear_requests()
  ctl.faults{ { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "expire_token" } }
  assert(c.sign:get_tss(p.tss_id))
  lu.assertEquals(c.sign:auth_count(), auths + 1)
  local seq = {}
  for _, r in ipairs(ctl.requests()) do seq[#seq + 1] = r.method .. " " .. r.status end
  lu.assertEquals(seq, { "GET 401", "POST 200", "GET 200" })

  -- a token that keeps being refused: one heal, then the 401 is returned
  ctl.clear_requests()
  ctl.faults{ { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "expire_token", count = -1 } }
  local res, err = c.sign:get_tss(p.tss_id)
  lu.assertNil(res)
  lu.assertEquals(err.status, 401)
  seq = {}
  for _, r in ipairs(ctl.requests()) do seq[#seq + 1] = r.method .. " " .. r.status end
  lu.assertEquals(seq, { "GET 401", "POST 200", "GET 401" })

  -- revoked access AND refresh tokens: the refresh is refused, the key re-authenticates, once
  ctl.clear()
  ctl.clear_requests()
  ctl.revoke_tokens()
  local tx = assert(R.sale({ pos = c, tss_id = p.tss_id, client_id = p.client_id }, "3.00"))
  lu.assertEquals(tx.state, "FINISHED")
  seq = {}
  for _, r in ipairs(ctl.requests()) do seq[#seq + 1] = r.method .. " " .. r.status end
  lu.assertEquals(seq, { "PUT 401", "POST 401", "POST 200", "PUT 200", "PUT 200" })
end

function TestRetrySandbox.test_transient_auth_failure_is_retried_but_wrong_secret_is_not()
  local c = client(FAST)
  ctl.faults{ { method = "POST", path = "/auth$", action = "status", status = 503, retry_after = 0 } }
  assert(c.sign:get_tss(p.tss_id))
  local seq = {}
  for _, r in ipairs(ctl.requests()) do seq[#seq + 1] = r.method .. " " .. r.status end
  lu.assertEquals(seq, { "POST 503", "POST 200", "GET 200" })
  local kinds = {}
  for _, ev in ipairs(events) do kinds[#kinds + 1] = ev.event .. ":" .. tostring(ev.status) end
  lu.assertEquals(kinds, { "auth:503", "retry:503", "auth:200", "request:200" })
  -- a wrong secret: one POST /auth, no retry
  ctl.clear()
  ctl.clear_requests()
  local bad = client(FAST, { api_secret = "not-the-secret" })
  local _, err = bad.sign:get_tss(p.tss_id)
  lu.assertEquals(err.status, 401)
  lu.assertEquals(err.attempts, 1)
  lu.assertEquals(#ctl.requests(), 1)
end

function TestRetrySandbox.test_attempt_budget()
  local c = client{ attempts = 3, base_ms = 5, max_ms = 10, seed = 1 }
  assert(c.sign:auth())
  ctl.clear_requests()
  ctl.faults{ { method = "GET", path = "^/api/v2/tss$", action = "status", status = 503, count = -1 } }
  local res, err = c.sign:list_tss()
  lu.assertNil(res)
  lu.assertEquals(err.status, 503)
  lu.assertEquals(err.attempts, 3)
  lu.assertStrContains(tostring(err), "3 attempts")
  lu.assertEquals(#ctl.matching("/tss", "GET"), 3)
  lu.assertEquals(events[#events].gave_up, "attempts")
  -- retry = false: exactly one attempt
  c = client(false)
  ctl.clear_requests()
  res, err = c.sign:list_tss()
  lu.assertEquals(err.attempts, 1)
  lu.assertEquals(#ctl.matching("/tss", "GET"), 1)
end

function TestRetrySandbox.test_deadline_bounds_the_call_and_no_sleep_passes_it()
  -- Retry-After (1 s) longer than what is left of a 300 ms deadline: no retry at all
  local c = client{ attempts = 10, base_ms = 5, max_ms = 10, deadline_ms = 300, seed = 1 }
  assert(c.sign:auth())
  ctl.clear_requests()
  events = {}
  ctl.faults{ { method = "GET", path = "^/api/v2/tss$", action = "status", status = 429, retry_after = 1, count = -1 } }
  local res, err = c.sign:list_tss()
  lu.assertNil(res)
  lu.assertEquals(err.status, 429)
  lu.assertEquals(#ctl.matching("/tss", "GET"), 1)
  lu.assertEquals(events[#events].gave_up, "deadline")
  lu.assertNil(events[#events].retry_in_ms)
  -- a server slower than the deadline: the attempt's own timeout is cut to the deadline
  ctl.faults{ { method = "GET", path = "^/api/v2/tss$", action = "delay", delay_ms = 3000, count = -1 } }
  ctl.clear_requests()
  res, err = c.sign:list_tss()
  lu.assertNil(res)
  lu.assertEquals(err.kind, "timeout")
  lu.assertEquals(#ctl.matching("/tss", "GET"), 1)
end

local rc = lu.LuaUnit.run()
sb.stop()
os.exit(rc)
