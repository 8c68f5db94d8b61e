-- fiskaly.retry: the client's reliability policy (no I/O here).
--
--   * which requests may be sent again (idempotency, fiskaly-api.md §3, §10.2, §13, §14.3)
--   * how long to wait before the next attempt: exponential backoff with full
--     jitter above a floor of base_ms (fiskaly: "wait more or less a second"),
--     or the server's Retry-After
--   * the total deadline of one call
--   * a circuit breaker per host
--
-- fiskaly.client drives it (Api:call); time comes from fiskaly.runtime
-- (now_ms, sleep) and the breaker's clock is injectable, so everything here is
-- deterministic for a given seed and clock.
local M = {}

M.DEFAULTS = {
  attempts = 5,        -- attempts per call, the first one included (1 = never retry)
  base_ms = 1000,      -- floor of every backoff delay, and the unit of the exponential
  max_ms = 20000,      -- cap of one backoff delay (Retry-After is not capped, only the deadline bounds it)
  deadline_ms = nil,   -- total time of one call (number, or a table per timeout class); nil = DEADLINES
  seed = nil,          -- jitter seed (integer); nil = random per client
}

-- Default total deadline per timeout class (ms): every attempt, every wait and
-- every re-authentication of one call together.
M.DEADLINES = {
  auth = 20000,
  tx = 20000,     -- a sale must not hang the till for long
  admin = 30000,
  default = 30000,
  tss = 120000,   -- personalisation can take 30 s per attempt
}

M.BREAKER_DEFAULTS = {
  failures = 5,          -- consecutive failures (network, timeout, 5xx) that open the circuit
  cooldown_ms = 30000,   -- time open before one probe is let through
  enabled = true,
}

local function misuse(msg)
  error("fiskaly.new: " .. msg, 4)
end

local function int_opt(t, name, min, prefix)
  local v = t[name]
  if v == nil then return nil end
  if math.type(v) ~= "integer" or v < min then
    misuse(prefix .. name .. " must be an integer >= " .. min)
  end
  return v
end

-- Validated retry policy from the `retry` option (misuse raises).
-- `retry = false` means one attempt, no retries.
function M.config(opts)
  local p = {}
  for k, v in pairs(M.DEFAULTS) do p[k] = v end
  p.deadlines = {}
  for k, v in pairs(M.DEADLINES) do p.deadlines[k] = v end
  if opts == false then
    p.attempts = 1
    return p
  end
  if opts == nil then return p end
  if type(opts) ~= "table" then misuse("retry must be a table or false") end
  for k in pairs(opts) do
    if M.DEFAULTS[k] == nil and k ~= "deadline_ms" and k ~= "seed" then
      misuse("unknown retry option '" .. tostring(k) .. "'")
    end
  end
  p.attempts = int_opt(opts, "attempts", 1, "retry.") or p.attempts
  p.base_ms = int_opt(opts, "base_ms", 0, "retry.") or p.base_ms
  p.max_ms = int_opt(opts, "max_ms", 0, "retry.") or p.max_ms
  if p.max_ms < p.base_ms then misuse("retry.max_ms must be >= retry.base_ms") end
  if opts.seed ~= nil then
    if math.type(opts.seed) ~= "integer" then misuse("retry.seed must be an integer") end
    p.seed = opts.seed
  end
  local d = opts.deadline_ms
  if math.type(d) == "integer" then
    if d <= 0 then misuse("retry.deadline_ms must be > 0") end
    for k in pairs(p.deadlines) do p.deadlines[k] = d end
  elseif type(d) == "table" then
    for k, v in pairs(d) do
      if p.deadlines[k] == nil then misuse("retry.deadline_ms: unknown timeout class '" .. tostring(k) .. "'") end
      if math.type(v) ~= "integer" or v <= 0 then misuse("retry.deadline_ms." .. k .. " must be a positive integer") end
      p.deadlines[k] = v
    end
  elseif d ~= nil then
    misuse("retry.deadline_ms must be a positive integer or a table per timeout class")
  end
  return p
end

-- Validated breaker configuration from the `breaker` option; `breaker = false` disables it.
function M.breaker_config(opts)
  local b = {}
  for k, v in pairs(M.BREAKER_DEFAULTS) do b[k] = v end
  if opts == false then
    b.enabled = false
    return b
  end
  if opts == nil then return b end
  if type(opts) ~= "table" then misuse("breaker must be a table or false") end
  for k in pairs(opts) do
    if M.BREAKER_DEFAULTS[k] == nil then misuse("unknown breaker option '" .. tostring(k) .. "'") end
  end
  b.failures = int_opt(opts, "failures", 1, "breaker.") or b.failures
  b.cooldown_ms = int_opt(opts, "cooldown_ms", 0, "breaker.") or b.cooldown_ms
  if opts.enabled ~= nil then b.enabled = opts.enabled and true or false end
  return b
end

-------------------------------------------------------------------- jitter RNG

-- A small deterministic generator (xorshift64*), private to each client, so
-- the host's math.random state is never touched and a seed reproduces every delay.
local function mix(x)
  -- splitmix64 finaliser: spreads small seeds over all 64 bits
  x = x + 0x9E3779B97F4A7C15
  x = (x ~ (x >> 30)) * 0xBF58476D1CE4E5B9
  x = (x ~ (x >> 27)) * 0x94D049BB133111EB
  return x ~ (x >> 31)
end

function M.rng(seed)
  local s = mix(seed)
  if s == 0 then s = 0x2545F4914F6CDD1D end
  -- uniform integer in [lo, hi]
  return function(lo, hi)
    s = s ~ (s >> 12)
    s = s ~ (s << 25)
    s = s ~ (s >> 27)
    local r = (s * 0x2545F4914F6CDD1D) >> 11  -- 53 non-negative bits
    if hi <= lo then return lo end
    return lo + r % (hi - lo + 1)
  end
end

-------------------------------------------------------------------- delays

-- Backoff before retry number n (1 = the first retry): full jitter over
-- [base_ms, min(max_ms, base_ms * 2^n)], so retry 1 waits 1-2 s, retry 2 1-4 s,
-- retry 3 1-8 s ... with the defaults.
function M.backoff(policy, rand, n)
  local base = policy.base_ms
  local cap = base * (1 << math.min(n, 30))
  if cap > policy.max_ms then cap = policy.max_ms end
  if cap < base then cap = base end
  return rand(base, cap)
end

-- The delay before retry n after `err`: the server's Retry-After when it sent
-- one (429, 503, E_EXPORT_NOT_COMPLETED ...), else the backoff. Returns ms and
-- "retry-after" or "backoff".
function M.delay(policy, rand, n, err)
  local ra = err and tonumber(err.retry_after)
  if ra and ra >= 0 then
    -- fiskaly's Retry-After is in seconds; a little jitter above it spreads a
    -- fleet of tills that were all told the same number.
    local ms = math.ceil(ra * 1000)
    return ms + rand(0, math.min(policy.base_ms, 250)), "retry-after"
  end
  return M.backoff(policy, rand, n), "backoff"
end

-------------------------------------------------------------------- idempotency

local UUID = "%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x"
local TSS = "^/tss/" .. UUID
local PIN_PATHS = { "/admin$", "/admin/auth$" }

-- Transport failures where the request certainly never reached the server.
local NOT_SENT = {
  COULDNT_CONNECT = true, COULDNT_RESOLVE_HOST = true, COULDNT_RESOLVE_PROXY = true,
}

-- Whether sending `op` again is safe. Returns true, or false and why.
--   GET                                       always (reads)
--   PUT /tss/{uuid}, /tss/{uuid}/client/{uuid} client-chosen ids: creating twice is creating once
--   PUT /tss/{uuid}/tx/{id}?tx_revision=N      same body, same revision: fiskaly answers from its store
--   PATCH /tss/{uuid}                         TSS state changes: fiskaly says repeat UNINITIALIZED on failure
--   POST /auth                                a token request changes nothing (a wrong secret is a 401: not retryable)
--   anything touching the admin PIN or PUK    never (five wrong PINs block the TSS)
--   other POST/PATCH                          only when the request was certainly not processed
--                                             (connection refused, 429)
-- op.idempotent = true/false overrides the table (not for PIN calls).
function M.safe(op, err)
  local method, path = op.method, op.path or ""
  for _, p in ipairs(PIN_PATHS) do
    if path:find(p) then return false, "admin PIN/PUK calls are never repeated" end
  end
  if op.probe or op.secrets then return false, "calls carrying a PIN or PUK are never repeated" end
  if op.idempotent ~= nil then
    return op.idempotent and true or false, "idempotent=" .. tostring(op.idempotent)
  end
  if method == "GET" or method == "HEAD" then return true end
  if method == "PUT" then
    if path:find(TSS .. "$") or path:find(TSS .. "/client/" .. UUID .. "$") then return true end
    if path:find(TSS .. "/tx/[^/]+$") and type(op.query) == "table" and op.query.tx_revision ~= nil then
      return true
    end
    if path:find(TSS .. "/export/" .. UUID .. "$") then return true end
  end
  if method == "PATCH" and path:find(TSS .. "$") then return true end
  if method == "POST" and path == "/auth" then return true end
  if err and (err.status == 429 or (err.kind == "network" and NOT_SENT[err.code])) then
    return true  -- not processed: safe whatever the method
  end
  return false, method .. " " .. path .. " is not idempotent"
end

-- Whether err is worth another attempt at all (transient), per fiskaly.errors.
function M.transient(err)
  if not err or not err.retryable then return false end
  if err.code == "CIRCUIT_OPEN" then return false end  -- fail fast; the caller retries later
  return true
end

-------------------------------------------------------------------- circuit breaker

local Breaker = {}
Breaker.__index = Breaker
Breaker.__name = "fiskaly.retry.Breaker"
M.Breaker = Breaker

-- A failure the breaker counts: the host did not answer, or answered 5xx.
function M.is_host_failure(err)
  if not err then return false end
  if err.kind == "network" or err.kind == "timeout" then
    return err.code ~= "CIRCUIT_OPEN" and err.code ~= "OUT_OF_MEMORY" and err.code ~= "RESPONSE_TOO_LARGE"
  end
  return type(err.status) == "number" and err.status >= 500 and err.status <= 599
end

-- cfg: breaker_config(); clock: function() -> seconds (may be fractional).
function M.breaker(host, cfg, clock)
  return setmetatable({
    host = host, cfg = cfg, clock = clock,
    state = "closed", failures = 0, opened_at = nil, probing = false,
    opened = 0,  -- how many times it opened (diagnostics)
  }, Breaker)
end

local function now_ms(b)
  return b.clock() * 1000
end

-- Before an attempt: true (go ahead; `probe` is true when this is the
-- half-open probe) or false, ms until the next probe.
function Breaker:allow()
  if not self.cfg.enabled or self.state == "closed" then return true, false end
  local t = now_ms(self)
  if self.state == "open" then
    local ready = self.opened_at + self.cfg.cooldown_ms
    if t < ready then return false, ready - t end
    self.state = "half_open"
  end
  -- half open: exactly one probe at a time (a probe whose task never came
  -- back -- abandoned coroutine -- is replaced after another cool-down)
  if self.probing and t < self.probe_at + math.max(self.cfg.cooldown_ms, 1) then return false, 0 end
  self.probing, self.probe_at = true, t
  return true, true
end

-- After an attempt that was allowed: err is nil on success (any answer that
-- is not a host failure counts as the host being up).
function Breaker:record(err, probe)
  if not self.cfg.enabled then return end
  if probe then self.probing = false end
  if M.is_host_failure(err) then
    self.failures = self.failures + 1
    if self.state == "half_open" or self.failures >= self.cfg.failures then
      if self.state ~= "open" then self.opened = self.opened + 1 end
      self.state = "open"
      self.opened_at = now_ms(self)
    end
  else
    self.state = "closed"
    self.failures = 0
    self.opened_at = nil
  end
end

-- A probe that never completed (e.g. its coroutine was abandoned) frees the slot.
function Breaker:release(probe)
  if probe then self.probing = false end
end

-- The fail-fast error while open.
function Breaker:open_error(wait_ms, method, path)
  local secs = math.max(0, math.ceil((wait_ms or 0) / 1000))
  local msg
  if wait_ms and wait_ms > 0 then
    msg = string.format("circuit open for %s after %d consecutive failures; next probe in %d s",
      self.host, self.failures, secs)
  else
    msg = string.format("circuit half-open for %s: a probe request is in flight; try again shortly", self.host)
  end
  return {
    kind = "network", code = "CIRCUIT_OPEN", retryable = true, message = msg,
    method = method, path = path, retry_after = secs,
  }
end

-- "scheme://host:port" of a URL (the breaker's key).
function M.host_of(url)
  local scheme, authority = url:match("^(%a[%w+.-]*)://([^/?#]+)")
  if not scheme then return url end
  authority = authority:gsub("^[^@]*@", "")
  if not authority:find(":%d+$") and not authority:find("%]$") then
    authority = authority .. (scheme:lower() == "https" and ":443" or ":80")
  end
  return scheme:lower() .. "://" .. authority:lower()
end

return M
