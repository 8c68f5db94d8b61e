-- fiskaly.retry without a network: configuration, the jitter generator, the
-- backoff bounds, Retry-After, the idempotency table and the breaker's state
-- machine on an injected clock.
local lu = require "luaunit"
local retry = require "fiskaly.retry"

local TSS = "/tss/2c0d8ee8-5aa4-4d8c-9d54-bf24f7b4a0d1"
local CLIENT = TSS .. "/client/8d3a4a1e-1f0b-4b57-a9a4-6c0a3e9f1d22"
local TX = TSS .. "/tx/5b0ad7a2-2c58-4d3e-9f57-8a1f2f0b8e11"

TestRetryConfig = {}

function TestRetryConfig.test_defaults_follow_fiskaly_guidance()
  local p = retry.config(nil)
  lu.assertEquals(p.attempts, 5)
  lu.assertEquals(p.base_ms, 1000)   -- "waiting for more or less a second"
  lu.assertTrue(p.max_ms >= p.base_ms)
  lu.assertEquals(p.deadlines.tx, 20000)
  lu.assertTrue(p.deadlines.tss > 45000)  -- one 45 s personalisation attempt fits
  local b = retry.breaker_config(nil)
  lu.assertEquals(b.failures, 5)
  lu.assertEquals(b.cooldown_ms, 30000)
  lu.assertTrue(b.enabled)
end

function TestRetryConfig.test_options()
  local p = retry.config{ attempts = 3, base_ms = 5, max_ms = 40, deadline_ms = 1234, seed = 7 }
  lu.assertEquals({ p.attempts, p.base_ms, p.max_ms, p.seed }, { 3, 5, 40, 7 })
  for _, v in pairs(p.deadlines) do lu.assertEquals(v, 1234) end
  p = retry.config{ deadline_ms = { tx = 100 } }
  lu.assertEquals(p.deadlines.tx, 100)
  lu.assertEquals(p.deadlines.tss, retry.DEADLINES.tss)
  lu.assertEquals(retry.config(false).attempts, 1)
  lu.assertFalse(retry.breaker_config(false).enabled)
end

function TestRetryConfig.test_misuse_raises()
  lu.assertErrorMsgContains("retry.attempts", retry.config, { attempts = 0 })
  lu.assertErrorMsgContains("retry.base_ms", retry.config, { base_ms = 1.5 })
  lu.assertErrorMsgContains("max_ms must be >= retry.base_ms", retry.config, { base_ms = 10, max_ms = 5 })
  lu.assertErrorMsgContains("unknown retry option 'tries'", retry.config, { tries = 3 })
  lu.assertErrorMsgContains("unknown timeout class 'foo'", retry.config, { deadline_ms = { foo = 1 } })
  lu.assertErrorMsgContains("retry must be a table or false", retry.config, 3)
  lu.assertErrorMsgContains("breaker.failures", retry.breaker_config, { failures = 0 })
  lu.assertErrorMsgContains("unknown breaker option 'x'", retry.breaker_config, { x = 1 })
end

TestJitter = {}

function TestJitter.test_seeded_generator_is_reproducible_and_spread()
  local a, b, c = retry.rng(42), retry.rng(42), retry.rng(43)
  local sa, sb, sc = {}, {}, {}
  for i = 1, 200 do sa[i], sb[i], sc[i] = a(0, 999), b(0, 999), c(0, 999) end
  lu.assertEquals(sa, sb)
  lu.assertNotEquals(sa, sc)
  -- all in range, and spread over it (10 buckets of 100 all hit)
  local buckets = {}
  for _, v in ipairs(sa) do
    lu.assertTrue(v >= 0 and v <= 999)
    buckets[v // 100] = true
  end
  for k = 0, 9 do lu.assertTrue(buckets[k], "bucket " .. k .. " never drawn") end
end

function TestJitter.test_backoff_is_full_jitter_above_the_floor()
  local p = retry.config{ base_ms = 1000, max_ms = 20000 }
  local rand = retry.rng(1)
  local hi = {}
  for n = 1, 6 do
    local cap = math.min(20000, 1000 * 2 ^ n)
    local seen_max, seen_min = 0, math.huge
    for _ = 1, 300 do
      local d = retry.backoff(p, rand, n)
      lu.assertTrue(d >= 1000 and d <= cap, ("retry %d: %d outside [1000, %d]"):format(n, d, cap))
      seen_max, seen_min = math.max(seen_max, d), math.min(seen_min, d)
    end
    -- jitter really spreads: the draws cover most of the window
    lu.assertTrue(seen_max - seen_min > (cap - 1000) * 0.8, "retry " .. n .. " not spread")
    hi[n] = seen_max
  end
  lu.assertTrue(hi[3] > hi[1])
  lu.assertTrue(hi[6] <= 20000)
end

function TestJitter.test_retry_after_wins_over_backoff()
  local p = retry.config{ base_ms = 5, max_ms = 50 }
  local rand = retry.rng(9)
  for _ = 1, 50 do
    local d, why = retry.delay(p, rand, 1, { retry_after = 1 })
    lu.assertEquals(why, "retry-after")
    lu.assertTrue(d >= 1000 and d <= 1005)
  end
  local d, why = retry.delay(p, rand, 2, { status = 500 })
  lu.assertEquals(why, "backoff")
  lu.assertTrue(d >= 5 and d <= 20)
end

TestSafety = {}

local function safe(method, path, query, extra, err)
  local op = { method = method, path = path, query = query }
  for k, v in pairs(extra or {}) do op[k] = v end
  return (retry.safe(op, err))
end

function TestSafety.test_idempotent_requests()
  lu.assertTrue(safe("GET", "/tss"))
  lu.assertTrue(safe("GET", TX))
  lu.assertTrue(safe("PUT", TSS))                                   -- create TSS (client-chosen id)
  lu.assertTrue(safe("PUT", CLIENT))                                -- create client
  lu.assertTrue(safe("PUT", TX, { tx_revision = 2 }))               -- upsert with explicit revision
  lu.assertTrue(safe("PATCH", TSS))                                 -- state change (repeat UNINITIALIZED)
  lu.assertTrue(safe("POST", "/auth"))                              -- a token request changes nothing
end

function TestSafety.test_unsafe_requests()
  lu.assertFalse(safe("PUT", TX))                                   -- no revision: not the documented idempotent form
  lu.assertFalse(safe("PUT", "/tss/not-a-uuid"))
  lu.assertFalse(safe("POST", "/organizations"))
  lu.assertFalse(safe("POST", TSS .. "/admin/logout"))
  lu.assertFalse(safe("PATCH", CLIENT))
  -- PIN and PUK calls: never, whatever the error or override
  lu.assertFalse(safe("POST", TSS .. "/admin/auth", nil, nil, { status = 429 }))
  lu.assertFalse(safe("PATCH", TSS .. "/admin", nil, { idempotent = true }))
  lu.assertFalse(safe("POST", TSS .. "/admin/auth", nil, nil, { kind = "network", code = "COULDNT_CONNECT" }))
end

function TestSafety.test_not_processed_makes_anything_safe()
  lu.assertTrue(safe("POST", "/organizations", nil, nil, { status = 429 }))
  lu.assertTrue(safe("POST", "/organizations", nil, nil, { kind = "network", code = "COULDNT_CONNECT" }))
  lu.assertFalse(safe("POST", "/organizations", nil, nil, { kind = "network", code = "GOT_NOTHING" }))
  lu.assertFalse(safe("POST", "/organizations", nil, nil, { status = 503 }))
  lu.assertTrue(safe("POST", "/organizations", nil, { idempotent = true }))
  lu.assertFalse(safe("GET", "/tss", nil, { idempotent = false }))
end

function TestSafety.test_transient()
  lu.assertTrue(retry.transient{ retryable = true, status = 503 })
  lu.assertFalse(retry.transient{ retryable = false, status = 400 })
  lu.assertFalse(retry.transient{ retryable = true, code = "CIRCUIT_OPEN" })
end

TestBreakerUnit = {}

function TestBreakerUnit.test_state_machine_on_an_injected_clock()
  local now = 1000.0
  local b = retry.breaker("http://127.0.0.1:1", retry.breaker_config{ failures = 3, cooldown_ms = 30000 },
    function() return now end)
  local fail = { kind = "network", code = "GOT_NOTHING" }
  for _ = 1, 2 do
    lu.assertTrue((b:allow()))
    b:record(fail)
  end
  lu.assertEquals(b.state, "closed")
  b:record(nil)                          -- a success resets the count
  lu.assertEquals(b.failures, 0)
  for _ = 1, 3 do b:allow(); b:record({ status = 503 }) end
  lu.assertEquals(b.state, "open")
  local ok, wait = b:allow()
  lu.assertFalse(ok)
  lu.assertEquals(wait, 30000)
  local e = b:open_error(wait, "GET", "/tss")
  lu.assertEquals({ e.kind, e.code, e.retryable }, { "network", "CIRCUIT_OPEN", true })
  lu.assertStrContains(e.message, "next probe in 30 s")
  now = now + 29.9
  lu.assertFalse((b:allow()))
  now = now + 0.2
  local ok2, probe = b:allow()
  lu.assertTrue(ok2)
  lu.assertTrue(probe)
  lu.assertEquals(b.state, "half_open")
  local ok3, wait3 = b:allow()            -- only one probe at a time
  lu.assertFalse(ok3)
  lu.assertEquals(wait3, 0)
  lu.assertStrContains(b:open_error(0).message, "probe request is in flight")
  b:record({ kind = "timeout", code = "OPERATION_TIMEDOUT" }, true)   -- the probe failed: open again
  lu.assertEquals(b.state, "open")
  lu.assertEquals(b.opened, 2)
  now = now + 31
  ok, probe = b:allow()
  lu.assertTrue(ok and probe)
  b:record({ status = 404, code = "E_TSS_NOT_FOUND" }, true)       -- any answer but 5xx: the host is up
  lu.assertEquals(b.state, "closed")
  lu.assertTrue((b:allow()))
end

function TestBreakerUnit.test_an_abandoned_probe_is_replaced_after_a_cooldown()
  local now = 0
  local b = retry.breaker("h", retry.breaker_config{ failures = 1, cooldown_ms = 1000 }, function() return now end)
  b:allow(); b:record({ status = 500 })
  now = 1.5
  local ok, probe = b:allow()
  lu.assertTrue(ok and probe)            -- this probe never reports back
  now = 2.0
  lu.assertFalse((b:allow()))
  now = 2.6
  ok, probe = b:allow()
  lu.assertTrue(ok and probe)
  b:record(nil, true)
  lu.assertEquals(b.state, "closed")
end

function TestBreakerUnit.test_counts_only_host_failures()
  lu.assertTrue(retry.is_host_failure{ kind = "network", code = "COULDNT_CONNECT" })
  lu.assertTrue(retry.is_host_failure{ kind = "timeout", code = "OPERATION_TIMEDOUT" })
  lu.assertTrue(retry.is_host_failure{ kind = "http", status = 502 })
  lu.assertFalse(retry.is_host_failure{ kind = "api", status = 429 })
  lu.assertFalse(retry.is_host_failure{ kind = "api", status = 401 })
  lu.assertFalse(retry.is_host_failure{ kind = "tls", code = "PEER_FAILED_VERIFICATION" })
  lu.assertFalse(retry.is_host_failure{ kind = "network", code = "CIRCUIT_OPEN" })
end

function TestBreakerUnit.test_disabled_never_opens()
  local b = retry.breaker("h", retry.breaker_config(false), os.time)
  for _ = 1, 20 do b:allow(); b:record({ kind = "network", code = "COULDNT_CONNECT" }) end
  lu.assertTrue((b:allow()))
end

function TestBreakerUnit.test_host_key()
  lu.assertEquals(retry.host_of("https://Kassensichv-Middleware.fiskaly.com/api/v2"),
    "https://kassensichv-middleware.fiskaly.com:443")
  lu.assertEquals(retry.host_of("http://127.0.0.1:8080/api/v0"), "http://127.0.0.1:8080")
end

os.exit(lu.LuaUnit.run())
