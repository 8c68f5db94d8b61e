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
-- Request path: resource method -> Api:call(op) ("send with auth": token,
-- send, 401 -> re-auth -> replay) -> Api:_send(op, attempt) (one HTTP
-- exchange, logging, error objects).  Retry/backoff/circuit-breaker policy
-- (issue 4) belongs in Api:call, around _send.
--
-- Secrets (api_secret, tokens, PINs, PUKs) live in a private weak table, never
-- on the client object; they are scrubbed from every server message that ends
-- up in an error, and log events are built only from non-secret fields.
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local errors = require "fiskaly.errors"

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

-- One HTTP exchange. Returns the decoded body (a table; {} for an empty body)
-- plus the raw response, or nil, err.
function Api:_send(op, attempt, token_override)
  local shared = client_priv(self).shared
  local st = api_state(self)
  local headers = { ["Accept"] = "application/json" }
  local body = op.body
  if type(body) == "table" then
    local s, jerr = json.encode(body)
    if not s then error("fiskaly: cannot encode request body: " .. tostring(jerr), 3) end
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
  local url = self.base_url .. op.path .. encode_query(op.query)
  local res, terr = shared.session:request{
    method = op.method, url = url, headers = headers, body = body, timeout_ms = timeout_for(self, op),
  }
  local event = {
    event = op.event or "request",
    reason = op.reason,
    grant = op.grant,
    request_id = request_id,
    method = op.method,
    path = op.path,
    attempt = attempt,
    duration_ms = res and res.time_ms or terr.time_ms,
  }
  if not res then
    local err = errors.from_transport(terr, op.method, op.path, known_secrets(self, op.secrets))
    err.request_id = request_id
    event.error = err.kind
    event.code = err.code
    emit(self, event)
    return nil, err
  end
  event.status = res.status
  event.connects = res.connects  -- 0 when a kept-alive connection was reused
  event.request_id = errors.request_id(res.headers) or request_id
  local decoded
  if res.body ~= "" then decoded = json.decode(res.body) end
  if res.status >= 200 and res.status < 300 then
    if res.body == "" then decoded = {} end
    if type(decoded) ~= "table" then
      local err = errors.new{
        kind = "http", status = res.status, method = op.method, path = op.path, retryable = false,
        request_id = event.request_id, message = "the response body is not a JSON object",
      }
      event.error = err.kind
      emit(self, event)
      return nil, err
    end
    emit(self, event)
    return decoded, res
  end
  local err = errors.from_response(res, decoded, op.method, op.path, known_secrets(self, op.secrets))
  err.request_id = err.request_id or request_id
  event.error = err.kind
  event.code = err.code
  emit(self, event)
  return nil, err, res
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

-- One POST /auth. grant: "api_key" (key + secret) or "refresh_token".
function Api:_auth_request(grant, reason)
  local st = api_state(self)
  local cp = client_priv(self)
  local now = cp.shared.clock()
  local body
  if grant == "refresh_token" then
    body = { refresh_token = st.refresh_token }
  else
    body = { api_key = self.client.api_key, api_secret = cp.api_secret }
  end
  local res, err = self:_send({
    method = "POST", path = "/auth", auth = false, timeout = "auth", event = "auth", reason = reason,
    grant = grant, body = body,
  }, 1)
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
function Api:_authenticate(reason)
  local st = api_state(self)
  local now = client_priv(self).shared.clock()
  if reason ~= "explicit" and st.refresh_token and st.refresh_expires_at and now < st.refresh_expires_at then
    local res, err = self:_auth_request("refresh_token", reason)
    if res then return res end
    if err.status ~= 401 and err.status ~= 400 then return nil, err end
  end
  st.access_token, st.refresh_token, st.expires_at, st.refresh_expires_at = nil, nil, nil, nil
  return self:_auth_request("api_key", reason)
end

-- A valid (not about to expire) token, authenticating if needed.
function Api:_ensure_token()
  local st = api_state(self)
  if st.access_token and client_priv(self).shared.clock() < st.expires_at then return true end
  -- Issue 4: with concurrent coroutines, a pending authentication is shared here.
  local ok, err = self:_authenticate(st.access_token and "expiring" or "initial")
  if not ok then return nil, err end
  return true
end

-- "Send with auth": token, send, on 401 re-authenticate once and replay once.
-- op: method, path, query, body, timeout (class) or timeout_ms, secrets (extra
-- values to scrub), probe (an op to run with the same token when a 401 may
-- be the answer to the request itself, e.g. a wrong admin PIN: the request
-- is replayed only when the probe also gets 401, so a wrong PIN is never sent twice).
function Api:call(op)
  local st = api_state(self)
  local ok, aerr = self:_ensure_token()
  if not ok then return nil, aerr end
  local used = st.access_token
  local res, err = self:_send(op, 1)
  if res or err.status ~= 401 then return res, err end
  if op.probe then
    local pres, perr = self:_send(op.probe, 1, used)
    if pres or (perr and perr.status ~= 401) then
      return nil, err  -- the token is fine: the 401 was about the request (PIN/PUK)
    end
  end
  if st.access_token == used then
    st.access_token, st.expires_at = nil, nil
  end
  ok, aerr = self:_authenticate("401")
  if not ok then return nil, aerr end
  return self:_send(op, 2)
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
--   refresh_margin_s, log, user_agent }
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
