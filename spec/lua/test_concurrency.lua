-- Issue 4, done-criterion: 64 sales (transaction start + finish) run
-- concurrently through ONE client against a sandbox with 50 ms latency.
--
-- What is shown, from the sandbox's own request log (not from sleeps or the
-- test's clock): the requests overlap (many arrive within one latency window,
-- and the number in flight at once is far above 1), and the whole batch takes
-- far less than 64 x 2 x 50 ms. Every sale is signed and every signature
-- counter and transaction number is unique. The sales are driven by a host
-- loop of fiskaly.step(25); the bound "step never waits longer than its
-- timeout" is asserted in test_runtime.lua with a latency (1000 ms) that a
-- step waiting for a request would blow far beyond any scheduling noise.
local lu = require "luaunit"
local fiskaly = require "fiskaly"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local runtime = require "fiskaly.runtime"
local helper = require "helpers.sandbox"

local sb = helper.start()
local N = 64
local LATENCY_MS = 50
local STEP_MS = 25
local MAX_ROUNDS = 100000

local ctl = core.http.session{}
local function control(method, path, body)
  local r = assert(ctl:request{ method = method, url = sb.base_url .. path, body = body and json.encode(body),
    headers = body and { ["Content-Type"] = "application/json" } or nil })
  assert(r.status == 200, path .. ": " .. r.status .. " " .. r.body)
  return json.decode(r.body)
end

-- A new client, and the file's one TSS with one POS client (the sandbox allows
-- 5 live TSS per organization), set up without latency.
local shared_tss
local function setup()
  control("DELETE", "/_sandbox/faults")
  local client = assert(fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret })
  if shared_tss then return client, shared_tss[1], shared_tss[2] end
  local tss_id = fiskaly.uuid4()
  local tss = assert(client.sign:create_tss(tss_id, {}))
  assert(client.sign:update_tss(tss_id, { state = "UNINITIALIZED" }))
  local pin = "4711-0815-42"
  assert(client.sign:change_admin_pin(tss_id, tss.admin_puk, pin))
  assert(client.sign:admin_auth(tss_id, pin))
  assert(client.sign:update_tss(tss_id, { state = "INITIALIZED" }))
  local client_id = fiskaly.uuid4()
  assert(client.sign:create_client(tss_id, client_id, { serial_number = "POS-CONCURRENT" }))
  assert(client.sign:admin_logout(tss_id))
  shared_tss = { tss_id, client_id }
  return client, tss_id, client_id
end

-- One sale: ACTIVE (revision 1), then FINISHED (revision 2) with a receipt.
local function sale(client, tss_id, client_id, i)
  local tx_id = fiskaly.uuid4()
  local cents = 100 + i
  local amount = string.format("%d.%02d", cents // 100, cents % 100)
  local started, err = client.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id })
  if not started then return nil, err end
  local finished, ferr = client.sign:upsert_transaction(tss_id, tx_id, 2, {
    state = "FINISHED", client_id = client_id,
    schema = { standard_v1 = { receipt = {
      receipt_type = "RECEIPT",
      amounts_per_vat_rate = json.array{ { vat_rate = "NORMAL", amount = amount } },
      amounts_per_payment_type = json.array{ { payment_type = "CASH", amount = amount } },
    } } },
  })
  if not finished then return nil, ferr end
  return { id = tx_id, started = started, finished = finished, amount = amount }
end

-- Largest number of logged requests whose [received_ms, respond_ms] intervals overlap.
local function max_in_flight(log)
  local ev = {}
  for _, e in ipairs(log) do
    ev[#ev + 1] = { e.received_ms, 1 }
    ev[#ev + 1] = { e.respond_ms, -1 }
  end
  table.sort(ev, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
  local cur, best = 0, 0
  for _, e in ipairs(ev) do
    cur = cur + e[2]
    if cur > best then best = cur end
  end
  return best
end

TestConcurrency = {}

function TestConcurrency.test_64_sales_concurrently_through_one_client()
  local client, tss_id, client_id = setup()
  assert(client.sign:auth())  -- a cached token: this test is about the sales
  control("POST", "/_sandbox/latency", { ms = LATENCY_MS })
  control("DELETE", "/_sandbox/requests")

  local tasks = {}
  for i = 1, N do tasks[i] = fiskaly.spawn(sale, client, tss_id, client_id, i) end
  -- the host's event loop: step(STEP_MS) until everything is done
  local calls, worst = 0, 0
  while runtime.pending() > 0 do
    calls = calls + 1
    assert(calls < MAX_ROUNDS, "sales never finished")
    local t0 = runtime.now_ms()
    fiskaly.step(STEP_MS)
    local dt = runtime.now_ms() - t0
    if dt > worst then worst = dt end
  end
  control("POST", "/_sandbox/latency", { ms = 0 })

  -- all 64 signed; transaction numbers and signature counters unique
  local numbers, counters = {}, {}
  for i, t in ipairs(tasks) do
    local ok, s, err = t:result()
    lu.assertTrue(ok, tostring(s))
    lu.assertNotNil(s, "sale " .. i .. ": " .. tostring(err))
    lu.assertEquals(s.started.state, "ACTIVE")
    lu.assertEquals(s.finished.state, "FINISHED")
    lu.assertEquals(s.finished.number, s.started.number)
    lu.assertIsString(s.finished.signature.value)
    lu.assertStrContains(s.finished.qr_code_data, "Beleg^" .. s.amount .. "_0.00_0.00_0.00_0.00^" .. s.amount .. ":Bar")
    lu.assertTrue(core.tse.verify_qr(s.finished.qr_code_data).valid, "sale " .. i .. " QR verifies")
    lu.assertNil(numbers[s.finished.number], "transaction number unique")
    numbers[s.finished.number] = true
    for _, c in ipairs{ s.started.signature.counter, s.finished.signature.counter } do
      lu.assertNil(counters[c], "signature counter " .. c .. " unique")
      counters[c] = true
    end
  end

  -- the sandbox's log: 128 transaction PUTs, nothing else (the token was cached)
  local log = control("GET", "/_sandbox/requests").requests
  lu.assertEquals(#log, 2 * N)
  local first_rx, last_tx, first_answer = math.huge, 0, math.huge
  for _, e in ipairs(log) do
    lu.assertEquals(e.method, "PUT")
    lu.assertEquals(e.status, 200)
    first_rx = math.min(first_rx, e.received_ms)
    first_answer = math.min(first_answer, e.respond_ms)
    last_tx = math.max(last_tx, e.respond_ms)
  end
  -- overlap: many requests arrived before the first one was answered, many in flight at once
  local in_first_window = 0
  for _, e in ipairs(log) do if e.received_ms <= first_answer then in_first_window = in_first_window + 1 end end
  local peak = max_in_flight(log)
  -- (a sequential client has exactly 1 of each; the thresholds leave room for a loaded machine)
  lu.assertTrue(in_first_window >= 2, in_first_window .. " requests arrived within the first latency window")
  lu.assertTrue(peak >= 8, "peak requests in flight " .. peak)
  -- wall time of the batch, from sandbox timestamps, far below the sequential 64 x 2 x 50 ms
  local span = last_tx - first_rx
  local sequential = N * 2 * LATENCY_MS
  lu.assertTrue(span * 4 <= sequential, string.format("batch took %d ms; sequential would take >= %d ms", span, sequential))
  print(string.format("\n64 sales: %d ms (sandbox timestamps) vs >= %d ms sequential: ratio %.1f; peak in flight %d; "
    .. "%d arrived in the first window; %d host steps, worst %d ms", span, sequential, sequential / math.max(span, 1),
    peak, in_first_window, calls, worst))
  client:close()
end

-- Many tasks needing a token at once share one authentication; so do many
-- tasks that all get a 401 after the tokens were revoked mid-session.
function TestConcurrency.test_concurrent_tasks_share_one_authentication()
  local client, tss_id, client_id = setup()
  local fresh = assert(fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret })
  lu.assertEquals(fresh.sign:auth_count(), 0)
  control("POST", "/_sandbox/latency", { ms = LATENCY_MS })
  control("DELETE", "/_sandbox/requests")
  local tasks = {}
  for i = 1, 16 do tasks[i] = fiskaly.spawn(sale, fresh, tss_id, client_id, i) end
  lu.assertTrue(fiskaly.run(30000))
  for _, t in ipairs(tasks) do
    local ok, s, err = t:result()
    lu.assertTrue(ok, tostring(s))
    lu.assertNotNil(s, tostring(err))
  end
  lu.assertEquals(fresh.sign:auth_count(), 1, "16 tasks, one authentication")
  local auths = 0
  for _, e in ipairs(control("GET", "/_sandbox/requests").requests) do
    if e.path:match("/auth$") then auths = auths + 1 end
  end
  lu.assertEquals(auths, 1, "one POST /auth in the sandbox log")

  -- every token revoked: the 16 tasks' 401s are healed by one re-authentication
  control("POST", "/_sandbox/revoke-tokens")
  for i = 1, 16 do tasks[i] = fiskaly.spawn(sale, fresh, tss_id, client_id, 100 + i) end
  lu.assertTrue(fiskaly.run(30000))
  control("POST", "/_sandbox/latency", { ms = 0 })
  for _, t in ipairs(tasks) do
    local ok, s, err = t:result()
    lu.assertTrue(ok, tostring(s))
    lu.assertNotNil(s, tostring(err))
  end
  lu.assertEquals(fresh.sign:auth_count(), 2, "one re-authentication for all 401s")
  fresh:close()
  client:close()
end

-- A task waiting out a Retry-After (runtime.sleep: a timer) does not hold up
-- the others: they all finish before its retry is sent.
function TestConcurrency.test_a_backoff_in_one_task_does_not_block_the_others()
  local client, tss_id, client_id = setup()
  assert(client.sign:auth())
  local slow_tx = fiskaly.uuid4()
  control("POST", "/_sandbox/faults", { rules = { {
    method = "PUT", path = "/tx/" .. slow_tx:gsub("%-", "%%-"), action = "status", status = 429,
    retry_after = 1, count = 1 } } })
  control("POST", "/_sandbox/latency", { ms = LATENCY_MS })
  control("DELETE", "/_sandbox/requests")
  local slow = fiskaly.spawn(function()
    return client.sign:upsert_transaction(tss_id, slow_tx, 1, { state = "ACTIVE", client_id = client_id })
  end)
  local others = {}
  for i = 1, 8 do others[i] = fiskaly.spawn(sale, client, tss_id, client_id, i) end
  lu.assertTrue(fiskaly.run(30000))
  control("DELETE", "/_sandbox/faults")
  local ok, tx, err = slow:result()
  lu.assertTrue(ok)
  lu.assertNotNil(tx, tostring(err))
  lu.assertEquals(tx.state, "ACTIVE")
  for _, t in ipairs(others) do lu.assertNotNil(select(2, t:result())) end
  -- sandbox log: the 429, the retry >= 1 s later, and every other sale answered in between
  local first, retry, others_done = nil, nil, 0
  for _, e in ipairs(control("GET", "/_sandbox/requests").requests) do
    if e.path:find(slow_tx, 1, true) then
      if e.status == 429 then first = e else retry = e end
    else
      others_done = math.max(others_done, e.respond_ms)
    end
  end
  lu.assertNotNil(first, "the first attempt got the 429")
  lu.assertNotNil(retry, "and was retried")
  lu.assertEquals(retry.status, 200)
  lu.assertTrue(retry.received_ms - first.respond_ms >= 1000, "Retry-After honoured")
  lu.assertTrue(others_done < retry.received_ms, "the other sales finished while the slow one waited")
  client:close()
end

-- The example of docs/concurrency.md runs as written.
function TestConcurrency.test_docs_example_runs()
  local client, tss_id, client_id = setup()
  local dir = os.getenv("FISKALY_SOURCE_DIR") or "."
  local f = assert(io.open(dir .. "/docs/concurrency.md", "r"))
  local text = f:read("a")
  f:close()
  local code = assert(text:match("```lua\n(.-)```"), "docs/concurrency.md has an example")
  local printed = {}
  local env = setmetatable({
    BASE_URL = sb.base_url, API_KEY = sb.api_key, API_SECRET = sb.api_secret,
    TSS_ID = tss_id, CLIENT_ID = client_id,
    print = function(...) printed[#printed + 1] = table.concat({ ... }, " ") end,
  }, { __index = _G })
  control("POST", "/_sandbox/latency", { ms = LATENCY_MS })
  assert(load(code, "=docs/concurrency.md", "t", env))()
  control("POST", "/_sandbox/latency", { ms = 0 })
  lu.assertEquals(printed, { "1 FINISHED", "2 FINISHED", "3 FINISHED", "4 FINISHED" })
  client:close()
end

function TestConcurrency.test_blocking_calls_still_work_for_scripts()
  local client, tss_id, client_id = setup()
  local s = assert(sale(client, tss_id, client_id, 1))
  lu.assertEquals(s.finished.state, "FINISHED")
  lu.assertEquals(runtime.pending(), 0)
  client:close()
end

function TestConcurrency.test_run_drives_sales_for_scripts()
  local client, tss_id, client_id = setup()
  control("POST", "/_sandbox/latency", { ms = LATENCY_MS })
  local tasks = {}
  for i = 1, 8 do tasks[i] = fiskaly.spawn(sale, client, tss_id, client_id, i) end
  lu.assertTrue(fiskaly.run(30000))
  control("POST", "/_sandbox/latency", { ms = 0 })
  for _, t in ipairs(tasks) do
    local ok, s = t:result()
    lu.assertTrue(ok)
    lu.assertEquals(s.finished.state, "FINISHED")
  end
  client:close()
end

os.exit(lu.LuaUnit.run())
