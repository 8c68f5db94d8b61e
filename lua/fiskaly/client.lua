-- fiskaly.client: the HTTP client for fiskaly Management API v0 and SIGN DE v2.
--
--   local client = fiskaly.new{ base_url =, api_key =, api_secret =, ... }
--   client.management:create_organization{...}
--   client.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = ... })
--
-- One HTTP session (core.http) per client family (with_credentials shares it).
-- Each API (management, sign) keeps its own access token: authenticate on first
-- use, cache, re-authenticate shortly before expiry, and on a 401 re-authenticate
-- once and replay the request once.
--
-- Request path: resource method -> Api:call(op) ("send with auth, retry what
-- is safe": token, send, 401 -> re-auth -> replay once, transient failures ->
-- backoff or Retry-After -> resend, all within the call's deadline) ->
-- Api:_exchange(op, attempt) (the host's circuit breaker, one HTTP exchange via
-- fiskaly.runtime, error objects).  The policy itself (idempotency, delays,
-- breaker) is fiskaly.retry.
--
-- Secrets (api_secret, tokens, PINs, PUKs) live in a private weak table, never
-- on the client object; they are scrubbed from every server message that ends
-- up in an error, and log events are built only from non-secret fields.
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local errors = require "fiskaly.errors"
local retry = require "fiskaly.retry"
local runtime = require "fiskaly.runtime"

local M = {}

M.DEFAULT_SIGN_BASE_URL = "https://kassensichv-middleware.fiskaly.com/api/v2"
M.DEFAULT_MANAGEMENT_BASE_URL = "https://dashboard.fiskaly.com/api/v0"

-- Per-operation timeouts (ms), from fiskaly's guidance (fiskaly-api.md §11, §14.1):
-- auth 3-4 s, transactions 3-5 s, TSS creation / state changes at least 30 s.
M.DEFAULT_TIMEOUTS = {
  auth = 4000,      -- POST /auth
  tx = 5000,        -- transaction upserts and reads
  tss = 45000,      -- TSS create, TSS state changes (personalisation can take 30 s)
  admin = 10000,    -- admin PIN / admin auth / logout, client create/update
  default = 10000,  -- everything else (reads, lists, management)
}

M.DEFAULT_REFRESH_MARGIN_S = 60

-- private[client] = { api_secret, shared }, private[api] = { token state }
local private = setmetatable({}, { __mode = "k" })

-------------------------------------------------------------------- helpers

local function pct(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end
M.pct = pct

local function scalar(v, key)
  local t = type(v)
  if t == "string" then return v end
  if t == "boolean" then return v and "true" or "false" end
  if t == "number" then
    local i = math.tointeger(v)
    return i and tostring(i) or tostring(v)
  end
  error("fiskaly: query parameter " .. tostring(key) .. " must be a string, number, boolean or list", 4)
end

-- Query string from a table: keys sorted; a list value v becomes
-- key[0]=v[1]&key[1]=v[2] (fiskaly's states[0]=... form, brackets encoded).
local function encode_query(q)
  if q == nil then return "" end
  if type(q) ~= "table" then error("fiskaly: query must be a table", 3) end
  local keys = {}
  for k in pairs(q) do
    if type(k) ~= "string" then error("fiskaly: query keys must be strings", 3) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = q[k]
    if type(v) == "table" then
      for i, x in ipairs(v) do
        parts[#parts + 1] = pct(k .. "[" .. (i - 1) .. "]") .. "=" .. pct(scalar(x, k))
      end
    else
      parts[#parts + 1] = pct(k) .. "=" .. pct(scalar(v, k))
    end
  end
  if #parts == 0 then return "" end
  return "?" .. table.concat(parts, "&")
end
M.encode_query = encode_query

local function check_url(name, v)
  if type(v) ~= "string" or not (v:match("^https?://[^/]") ) then
    error("fiskaly.new: " .. name .. " must be an http(s) URL", 3)
  end
  return (v:gsub("/+$", ""))
end

local function check_positive_int(name, v)
  if v ~= nil and (math.type(v) ~= "integer" or v <= 0) then
    error("fiskaly.new: " .. name .. " must be a positive integer", 3)
  end
  return v
end

-------------------------------------------------------------------- Api

local Api = {}
M.Api = Api

local function api_state(api)
  return private[api]
end

local function client_priv(api)
  return private[api.client]
end

-- Every secret value this API knows right now (for scrubbing messages).
local function known_secrets(api, extra)
  local cp = client_priv(api)
  local st = api_state(api)
  local s = { cp.api_secret, st.access_token, st.refresh_token }
  if extra then for _, v in pairs(extra) do s[#s + 1] = v end end
  return s
end

local function emit(api, event)
  local log = client_priv(api).shared.log
  if log then
    event.api = api.name
    pcall(log, event)  -- a failing log hook never breaks a call
  end
end

local function timeout_for(api, op)
  local shared = client_priv(api).shared
  local t = op.timeout_ms
  if t then return t end
  return shared.timeouts[op.timeout or "default"] or shared.timeouts.default
end

-- The circuit breaker of this API's host (shared by every client of the family).
local function breaker_for(api)
  local shared = client_priv(api).shared
  local host = retry.host_of(api.base_url)
  local b = shared.breakers[host]
  if not b then
    b = retry.breaker(host, shared.breaker, shared.clock)
    shared.breakers[host] = b
  end
  return b
end

-- One HTTP exchange, not logged. Returns decoded body (a table; {} for an
-- empty body), nil, raw response, event -- or nil, err, raw response (or nil),
-- event. The circuit breaker of the host is asked first: while it is open
-- nothing is sent (err.code "CIRCUIT_OPEN").
function Api:_exchange(op, attempt, token_override, timeout_ms)
  local shared = client_priv(self).shared
  local st = api_state(self)
  local event = {
    event = op.event or "request",
    reason = op.reason,
    grant = op.grant,
    method = op.method,
    path = op.path,
    attempt = attempt,
  }
  local breaker = breaker_for(self)
  local allowed, info = breaker:allow()
  if not allowed then
    local err = errors.new(breaker:open_error(info, op.method, op.path))
    event.duration_ms, event.error, event.code = 0, err.kind, err.code
    return nil, err, nil, event
  end
  local probe = info == true
  event.breaker_probe = probe or nil
  local headers = { ["Accept"] = op.raw and (op.accept or "*/*") or "application/json" }
  local body = op.body
  if type(body) == "table" then
    local s, jerr = json.encode(body)
    if not s then
      breaker:release(probe)
      error("fiskaly: cannot encode request body: " .. tostring(jerr), 4)
    end
    body = s
  end
  if body ~= nil then headers["Content-Type"] = "application/json" end
  if op.auth ~= false then
    local tok = token_override or st.access_token
    headers["Authorization"] = "Bearer " .. tostring(tok)
  end
  -- fiskaly: "This identifier needs to be generated and set by the ERS"; the
  -- service echoes it in the request-id response header.
  local request_id = core.crypto.uuid4()
  headers["X-Request-Id"] = request_id
  event.request_id = request_id
  local url = self.base_url .. op.path .. encode_query(op.query)
  local res, terr = runtime.request(shared.session, {
    method = op.method, url = url, headers = headers, body = body,
    timeout_ms = timeout_ms or timeout_for(self, op),
    -- what must not be sent twice never rides a reused connection (libcurl
    -- would resend it by itself if that connection turned out dead)
    fresh_connect = not retry.safe(op) or nil,
  })
  event.duration_ms = res and res.time_ms or terr.time_ms
  if not res then
    local err = errors.from_transport(terr, op.method, op.path, known_secrets(self, op.secrets))
    err.request_id = request_id
    event.error = err.kind
    event.code = err.code
    breaker:record(err, probe)
    return nil, err, nil, event
  end
  event.status = res.status
  event.connects = res.connects  -- 0 when a kept-alive connection was reused
  event.request_id = errors.request_id(res.headers) or request_id
  local ok_status = res.status >= 200 and res.status < 300
  if ok_status and op.raw then     -- op.raw: a binary body (e.g. a TAR export), returned as a string
    breaker:record(nil, probe)
    return res.body, nil, res, event
  end
  local decoded
  if res.body ~= "" then decoded = json.decode(res.body) end
  if ok_status then
    breaker:record(nil, probe)
    if res.body == "" then decoded = {} end
    if type(decoded) ~= "table" then
      local err = errors.new{
        kind = "http", status = res.status, method = op.method, path = op.path, retryable = false,
        request_id = event.request_id, message = "the response body is not a JSON object",
      }
      event.error = err.kind
      return nil, err, res, event
    end
    return decoded, nil, res, event
  end
  local err = errors.from_response(res, decoded, op.method, op.path, known_secrets(self, op.secrets))
  err.request_id = err.request_id or request_id
  event.error = err.kind
  event.code = err.code
  event.retry_after = err.retry_after
  breaker:record(err, probe)
  return nil, err, res, event
end

-- One HTTP exchange, logged. Returns the decoded body plus the raw response,
-- or nil, err (, raw response).
function Api:_send(op, attempt, token_override, timeout_ms)
  local res, err, raw, event = self:_exchange(op, attempt, token_override, timeout_ms)
  emit(self, event)
  if res then return res, raw end
  return nil, err, raw
end

-- Stores a token response; returns it.
local function store_token(api, res, now)
  local st = api_state(api)
  local margin_cfg = client_priv(api).shared.refresh_margin_s
  st.access_token = res.access_token
  st.refresh_token = type(res.refresh_token) == "string" and res.refresh_token or nil
  local lifetime = tonumber(res.access_token_expires_in)
  if not lifetime and tonumber(res.access_token_expires_at) then
    lifetime = tonumber(res.access_token_expires_at) - now
  end
  if lifetime and lifetime > 0 then
    st.expires_at = now + lifetime - math.min(margin_cfg, lifetime / 10)
  else
    st.expires_at = math.huge  -- lifetime unknown: rely on the 401 path
  end
  local rlife = tonumber(res.refresh_token_expires_in)
  st.refresh_expires_at = st.refresh_token and (rlife and (now + rlife - 5) or math.huge) or nil
  st.claims = res.access_token_claims
  st.auth_count = (st.auth_count or 0) + 1
  return res
end

-- Milliseconds left until `deadline` (a runtime.now_ms() value), or nil.
local function remaining(deadline)
  if not deadline then return nil end
  return deadline - runtime.now_ms()
end

-- The timeout of one attempt: the operation's, cut to what is left of the deadline.
local function attempt_timeout(api, op, deadline)
  local t = timeout_for(api, op)
  local left = remaining(deadline)
  if left and left < t then t = math.max(1, math.floor(left)) end
  return t
end

local function deadline_error(op, attempt, last)
  local e = errors.new{
    kind = "timeout", code = "DEADLINE_EXCEEDED", retryable = true, method = op.method, path = op.path,
    message = "the call's deadline passed" .. (last and (" (last error: " .. tostring(last.message) .. ")") or ""),
  }
  e.attempts = attempt
  return e
end

-- One POST /auth. grant: "api_key" (key + secret) or "refresh_token".
function Api:_auth_request(grant, reason, deadline, attempt)
  local st = api_state(self)
  local cp = client_priv(self)
  local now = cp.shared.clock()
  local body
  if grant == "refresh_token" then
    body = { refresh_token = st.refresh_token }
  else
    body = { api_key = self.client.api_key, api_secret = cp.api_secret }
  end
  local op = {
    method = "POST", path = "/auth", auth = false, timeout = "auth", event = "auth", reason = reason,
    grant = grant, body = body,
  }
  local left = remaining(deadline)
  if left and left <= 0 then return nil, deadline_error(op, attempt or 1) end
  local res, err = self:_send(op, attempt or 1, nil, attempt_timeout(self, op, deadline))
  if not res then return nil, err end
  if type(res.access_token) ~= "string" or res.access_token == "" then
    return nil, errors.new{ kind = "http", status = 200, method = "POST", path = "/auth",
      message = "auth response without access_token" }
  end
  return store_token(self, res, now)
end

-- Gets a new access token: with the refresh token while it is valid (this
-- keeps the session, and with it an admin login on a TSS), else, or when the
-- refresh is refused, with the API key and secret.
function Api:_authenticate(reason, deadline, attempt)
  local st = api_state(self)
  local now = client_priv(self).shared.clock()
  if reason ~= "explicit" and st.refresh_token and st.refresh_expires_at and now < st.refresh_expires_at then
    local res, err = self:_auth_request("refresh_token", reason, deadline, attempt)
    if res then return res end
    if err.status ~= 401 and err.status ~= 400 then return nil, err end
  end
  st.access_token, st.refresh_token, st.expires_at, st.refresh_expires_at = nil, nil, nil, nil
  return self:_auth_request("api_key", reason, deadline, attempt)
end

-- A valid (not about to expire) token, authenticating if needed.
function Api:_ensure_token(deadline, attempt, reason)
  local st = api_state(self)
  if st.access_token and client_priv(self).shared.clock() < st.expires_at then return true end
  -- Concurrent runtime tasks share one pending authentication (per token
  -- state): the others wait for it, then use the token it stored.
  local ok, err = runtime.once(st, function()
    if st.access_token and client_priv(self).shared.clock() < st.expires_at then return true end
    return self:_authenticate(reason or (st.access_token and "expiring" or "initial"), deadline, attempt)
  end)
  if not ok then return nil, err end
  return true
end

-- The total deadline of one call (ms from now).
local function deadline_for(api, op)
  local shared = client_priv(api).shared
  if op.deadline_ms then return op.deadline_ms end
  local d = shared.retry.deadlines[op.timeout or "default"] or shared.retry.deadlines.default
  if op.timeout_ms and op.timeout_ms > d then d = op.timeout_ms end  -- one attempt always fits
  return d
end

-- "Send with auth, retry what is safe" (issue 4):
--   * a valid token first (authenticating, with the refresh token if possible);
--   * on a 401 re-authenticate once and replay once (for a PIN call only when the
--     `probe` op -- a GET with the same token -- also gets 401, so a wrong PIN
--     is never sent twice);
--   * a transient failure (network, timeout, 429, 499, 5xx, retryable codes) of a
--     request that is safe to repeat (fiskaly.retry.safe) is retried after a
--     backoff with jitter, or after Retry-After, up to retry.attempts attempts;
--   * everything together stays within the call's deadline: no sleep runs past it;
--   * the host's circuit breaker fails the call fast while the host is down.
-- op: method, path, query, body, timeout (class) or timeout_ms, deadline_ms,
-- secrets (extra values to scrub), probe, idempotent (override), raw (a 2xx body
-- is returned as the string it is, not decoded: binary downloads), accept.
-- Every attempt is logged once, with retry_in_ms when another attempt follows.
function Api:call(op)
  local shared = client_priv(self).shared
  local policy = shared.retry
  local st = api_state(self)
  local deadline = runtime.now_ms() + deadline_for(self, op)
  local attempt, retries, healed = 0, 0, false
  local auth_reason
  local last_err
  while true do
    attempt = attempt + 1
    local left = remaining(deadline)
    if left <= 0 then return nil, deadline_error(op, attempt - 1, last_err) end
    local res, err, raw, event
    local used
    if op.auth ~= false then
      local ok, aerr = self:_ensure_token(deadline, attempt, auth_reason)
      auth_reason = nil
      if not ok then
        err = aerr
        event = nil  -- the auth exchange logged itself
      end
      used = st.access_token
    end
    if not err then
      res, err, raw, event = self:_exchange(op, attempt, nil, attempt_timeout(self, op, deadline))
      if res then
        emit(self, event)
        return res, raw
      end
    end
    err.attempts = attempt
    last_err = err
    -- 401 on a request: the token was revoked or expired early. Heal once.
    if event and err.status == 401 and op.auth ~= false then
      if healed then
        emit(self, event)
        return nil, err, raw
      end
      emit(self, event)
      if op.probe then
        local pres, perr = self:_send(op.probe, attempt, used, attempt_timeout(self, op.probe, deadline))
        if pres or (perr and perr.status ~= 401) then
          return nil, err, raw  -- the token is fine: the 401 was about the request (PIN/PUK)
        end
      end
      if st.access_token == used then
        st.access_token, st.expires_at = nil, nil
      end
      healed = true
      auth_reason = "401"
    else
      local safe = retry.safe(op, err)
      local delay, why
      if retry.transient(err) and safe and retries < policy.attempts - 1 then
        delay, why = retry.delay(policy, shared.rand, retries + 1, err)
        if runtime.now_ms() + delay >= deadline then
          delay = nil  -- no sleep runs past the deadline
          if event then event.gave_up = "deadline" end
        end
      elseif event and retry.transient(err) then
        event.gave_up = safe and "attempts" or "unsafe"
      end
      if not delay then
        if event then emit(self, event) end
        return nil, err, raw
      end
      if event then
        event.retry_in_ms, event.retry_reason = delay, why
        emit(self, event)
      else
        emit(self, { event = "retry", method = op.method, path = op.path, attempt = attempt,
          error = err.kind, code = err.code, status = err.status, retry_in_ms = delay, retry_reason = why,
          request_id = err.request_id })
      end
      runtime.sleep(delay)
      retries = retries + 1
    end
  end
end

-- Authenticate now (even if a token is cached). Returns the auth response
-- (access_token_claims, lifetimes, ...) or nil, err.
function Api:auth()
  return self:_authenticate("explicit")
end

-- Drops the cached token (next call authenticates again).
function Api:forget_token()
  local st = api_state(self)
  st.access_token, st.refresh_token, st.expires_at = nil, nil, nil
end

-- The claims of the cached token ({env, organization_id}) or nil.
function Api:claims()
  return api_state(self).claims
end

-- How many times this API authenticated (for tests and diagnostics).
function Api:auth_count()
  return api_state(self).auth_count or 0
end

function Api:__tostring()
  return "fiskaly." .. self.name .. " API (" .. self.base_url .. ")"
end

local api_mts = {}
local function api_mt(name)
  if not api_mts[name] then
    local methods = {}
    for k, v in pairs(Api) do methods[k] = v end
    local resources = require(name == "sign" and "fiskaly.sign_de" or "fiskaly.management")
    for k, v in pairs(resources) do methods[k] = v end
    api_mts[name] = { __index = methods, __tostring = Api.__tostring, __name = "fiskaly.Api" }
  end
  return api_mts[name]
end

local function new_api(client, name, base_url)
  local api = setmetatable({ name = name, base_url = base_url, client = client }, api_mt(name))
  private[api] = {}
  return api
end

-------------------------------------------------------------------- Client

local Client = {}
Client.__index = Client
Client.__name = "fiskaly.Client"
M.Client = Client

local function new_client(shared, api_key, api_secret)
  local c = setmetatable({
    api_key = api_key,
    sign_base_url = shared.sign_base_url,
    management_base_url = shared.management_base_url,
  }, Client)
  private[c] = { api_secret = api_secret, shared = shared }
  c.management = new_api(c, "management", shared.management_base_url)
  c.sign = new_api(c, "sign", shared.sign_base_url)
  return c
end

local function check_credentials(who, api_key, api_secret)
  if type(api_key) ~= "string" or api_key == "" then
    error(who .. ": api_key is required (a non-empty string)", 3)
  end
  if type(api_secret) ~= "string" or api_secret == "" then
    error(who .. ": api_secret is required (a non-empty string)", 3)
  end
end

-- fiskaly.new{ base_url, sign_base_url, management_base_url, api_key, api_secret,
--   ca_file, timeout_ms, connect_timeout_ms, timeouts = {auth=, tx=, tss=, admin=, default=},
--   refresh_margin_s, log, user_agent, clock,
--   retry = { attempts =, base_ms =, max_ms =, deadline_ms =, seed = } | false,
--   breaker = { failures =, cooldown_ms =, enabled = } | false }
function M.new(opts)
  if type(opts) ~= "table" then error("fiskaly.new: expected an options table", 2) end
  check_credentials("fiskaly.new", opts.api_key, opts.api_secret)
  local sign_url, mgmt_url = M.DEFAULT_SIGN_BASE_URL, M.DEFAULT_MANAGEMENT_BASE_URL
  if opts.base_url ~= nil then
    local b = check_url("base_url", opts.base_url)
    sign_url, mgmt_url = b .. "/api/v2", b .. "/api/v0"
  end
  if opts.sign_base_url ~= nil then sign_url = check_url("sign_base_url", opts.sign_base_url) end
  if opts.management_base_url ~= nil then
    mgmt_url = check_url("management_base_url", opts.management_base_url)
  end
  if opts.log ~= nil and type(opts.log) ~= "function" then
    error("fiskaly.new: log must be a function", 2)
  end
  if opts.ca_file ~= nil and type(opts.ca_file) ~= "string" then
    error("fiskaly.new: ca_file must be a path", 2)
  end
  for _, k in ipairs{ "insecure", "verify", "ssl_verify", "tls_verify", "verify_peer", "ssl_verify_peer" } do
    if opts[k] ~= nil then
      error("fiskaly.new: TLS verification cannot be turned off (option '" .. k
        .. "'); trust a private CA with ca_file instead", 2)
    end
  end
  check_positive_int("timeout_ms", opts.timeout_ms)
  check_positive_int("connect_timeout_ms", opts.connect_timeout_ms)
  local timeouts = {}
  for k, v in pairs(M.DEFAULT_TIMEOUTS) do timeouts[k] = v end
  if opts.timeout_ms then timeouts.default = opts.timeout_ms end
  if opts.timeouts ~= nil then
    if type(opts.timeouts) ~= "table" then error("fiskaly.new: timeouts must be a table", 2) end
    for k, v in pairs(opts.timeouts) do
      if timeouts[k] == nil then error("fiskaly.new: unknown timeout class '" .. tostring(k) .. "'", 2) end
      check_positive_int("timeouts." .. k, v)
      timeouts[k] = v
    end
  end
  local margin = opts.refresh_margin_s or M.DEFAULT_REFRESH_MARGIN_S
  if type(margin) ~= "number" or margin < 0 then error("fiskaly.new: refresh_margin_s must be >= 0", 2) end
  if opts.clock ~= nil and type(opts.clock) ~= "function" then error("fiskaly.new: clock must be a function", 2) end
  local policy = retry.config(opts.retry)
  local breaker = retry.breaker_config(opts.breaker)
  local seed = policy.seed
  if seed == nil then
    -- a random seed per client family (jitter must differ between tills)
    seed = math.tointeger(tonumber(core.crypto.uuid4():gsub("%-", ""):sub(1, 15), 16))
  end

  local session, serr = core.http.session{
    ca_file = opts.ca_file,
    timeout_ms = math.max(timeouts.default, timeouts.tss),
    connect_timeout_ms = opts.connect_timeout_ms,
    user_agent = opts.user_agent,
  }
  if not session then return nil, errors.from_transport(serr) end
  local shared = {
    session = session,
    log = opts.log,
    timeouts = timeouts,
    refresh_margin_s = margin,
    clock = opts.clock or os.time,
    retry = policy,
    rand = retry.rng(seed),
    breaker = breaker,
    breakers = {},  -- per host ("scheme://host:port"), shared by with_credentials clients
    sign_base_url = sign_url,
    management_base_url = mgmt_url,
  }
  return new_client(shared, opts.api_key, opts.api_secret)
end

-- A client for other credentials (e.g. a managed organization's API key)
-- sharing this client's HTTP session and configuration. Tokens are separate.
function Client:with_credentials(api_key, api_secret)
  check_credentials("client:with_credentials", api_key, api_secret)
  return new_client(private[self].shared, api_key, api_secret)
end

-- The circuit breakers of this client family: { ["scheme://host:port"] =
-- { state = "closed"|"open"|"half_open", failures =, opened = <times opened>,
-- probe_in_ms = <ms until the next probe while open> } }.
function Client:breakers()
  local shared = private[self].shared
  local out = {}
  for host, b in pairs(shared.breakers) do
    local info = { state = b.state, failures = b.failures, opened = b.opened }
    if b.state == "open" then
      info.probe_in_ms = math.max(0, b.opened_at + b.cfg.cooldown_ms - shared.clock() * 1000)
    end
    out[host] = info
  end
  return out
end

-- Closes the shared HTTP session (of every client made by with_credentials too).
function Client:close()
  private[self].shared.session:close()
end
Client.__close = Client.close

function Client:__tostring()
  local k = self.api_key or "?"
  return "fiskaly.Client (api_key " .. k:sub(1, 8) .. "…, " .. self.sign_base_url .. ")"
end

return M
