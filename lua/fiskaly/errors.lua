-- fiskaly.errors: error objects for every operational failure of the client.
--
--   { kind = "network"|"timeout"|"tls"|"http"|"api"|"validation"|"state",
--     status = <HTTP status or nil>, code = <fiskaly E_... code, curl mnemonic, or nil>,
--     message = <text>, request_id = <response header request-id or nil>,
--     retryable = <bool: the condition is transient>, method =, path =, field = <validation>,
--     retry_after = <seconds from Retry-After>, attempts = <attempts the call made> }
--
-- kind:
--   network / timeout / tls  the transport failed (from core.http; code is the curl mnemonic)
--   http        a non-2xx answer that is not a fiskaly error body (e.g. a proxy's 502 page)
--   api         a fiskaly error body ({status_code, error, code, message})
--   state       a fiskaly error that means "the resource is in the wrong state"
--               (E_TSS_NOT_INITIALIZED, E_ILLEGAL_TSS_STATE_CHANGE, E_ADMIN_PIN_BLOCKED, ...)
--   validation  rejected by the client before sending (field names the offending field)
--
-- retryable says whether the same request may succeed later without changes
-- (fiskaly-api.md §10.2); whether it is *safe* to resend a given request is the
-- client's policy (idempotency), not the error's.
--
-- Nothing in an error object is a secret: messages that come from the server
-- are scrubbed of every secret the client knows (errors.scrub), and
-- __tostring prints only the fields above.
local M = {}

local Error = {}
Error.__index = Error
Error.__name = "fiskaly.Error"
M.Error = Error

-- fiskaly-api.md §10.3: every code in the spec, plus codes seen in the wild
-- (§10.3 "not in 2.1.35"). status = the usual HTTP status; retryable per §10.2;
-- state = true for "wrong state" conditions (kind "state").
local catalogue = {
  -- 400: caller errors, retrying the same body is pointless
  E_TX_REVISION_NOT_FOUND = { 400, false },
  E_TSS_NOT_INITIALIZED = { 400, false, state = true },
  E_TSS_DISABLED = { 400, false, state = true },
  E_ILLEGAL_TSS_STATE_CHANGE = { 400, false, state = true },
  E_ILLEGAL_CLIENT_SERIAL = { 400, false },
  E_CLIENT_DEREGISTERED = { 400, false, state = true },
  E_TX_LIMIT_REACHED = { 400, false },
  E_DUPLICATE_EXPORT = { 400, false },
  E_CANCEL_EXPORT = { 400, false },
  E_PARAMETER_MISMATCH = { 400, false },
  E_CHANGE_ADMIN_PIN_FAILED = { 400, false },
  E_FAILED_SCHEMA_VALIDATION = { 400, false },
  E_TX_UPSERT = { 400, false },
  -- 401: token invalid/expired (the client re-authenticates once), wrong PIN
  E_UNAUTHORIZED = { 401, false },
  E_ADMIN_LOGIN_FAILED = { 401, false },
  -- 403
  E_TSS_LIMIT_REACHED = { 403, false },
  E_TSS_LIMIT_PER_DAY_REACHED = { 403, false },
  E_CLIENT_LIMIT_REACHED = { 403, false },
  E_ACCESS_DENIED = { 403, false },
  -- 404: only E_EXPORT_NOT_COMPLETED is worth retrying (Retry-After 60)
  E_TSS_NOT_FOUND = { 404, false },
  E_CLIENT_NOT_FOUND = { 404, false },
  E_TX_NOT_FOUND = { 404, false },
  E_EXPORT_NOT_FOUND = { 404, false },
  E_EXPORT_NOT_COMPLETED = { 404, true },
  E_LATEST_TX_REVISION_NOT_FOUND = { 404, false },
  E_LOG_NOT_FOUND = { 404, false },
  E_CSPL_NOT_FOUND = { 404, false },
  -- 409: only the export rate-limit codes clear up later
  E_TSS_CONFLICT = { 409, false },
  E_CLIENT_CONFLICT = { 409, false },
  E_TX_ILLEGAL_TYPE_CHANGE = { 409, false },
  E_TX_NO_TYPE_DEFINED = { 409, false },
  E_TSS_ILLEGAL_STATE_TO_PERFORM_EXPORT = { 409, false, state = true },
  E_PENDING_TX_CONFLICT = { 409, false },
  E_EXPORT_DUPLICATE_RATE_LIMITED = { 409, true },
  E_TOO_MANY_EXPORTS = { 409, true },
  E_EXPORT_IN_PROGRESS = { 409, false },
  -- 423: locked for good
  E_ADMIN_PIN_BLOCKED = { 423, false, state = true },
  E_TSS_DEFECTIVE = { 423, false, state = true },
  E_TSS_DELETED = { 423, false, state = true },
  E_TSS_EVICTED = { 423, false, state = true },
  E_AVAILABLE_ON_TEST_ONLY = { 423, false },
  E_EXPORT_FORBIDDEN = { 423, false },
  -- 432: wrong host (use the middleware)
  E_USE_MIDDLEWARE = { 432, false },
  -- 503 / 502: temporary
  E_TSS_LOCKED = { 503, true },
  E_EXPORT_TEMPORARILY_UNAVAILABLE = { 503, true },
  E_BOOTSTRAP_FILE_NOT_AVAILABLE = { 503, true },
  E_SMAERS_GATEWAY_CAPACITIES_DEPLETED = { 503, true },
  SMAERS_GATEWAY_ERROR_PRECONDITION_UNEXPORTED_LOGS = { 502, true },
  ERROR_IDENTIFY_ERS = { 502, true },
  -- pending middleware request: retry later (§8.4)
  E_MIDDLEWARE_PENDING_REQUEST = { 444, true },
  -- seen in the wild, not in 2.1.35
  E_CERTIFICATE_EXPIRED = { 423, false, state = true },
  E_NOT_FOUND = { 404, false },
  E_API_VERSION = { 400, false },
}

-- Public read-only view: M.codes[code] = { status =, retryable =, state = }
M.codes = {}
for code, c in pairs(catalogue) do
  M.codes[code] = { status = c[1], retryable = c[2], state = c.state == true }
end

-- Whether a status alone says "try again later" (§10.2): 429, 499, 5xx.
function M.status_retryable(status)
  return status == 429 or status == 499 or (type(status) == "number" and status >= 500 and status <= 599)
end

-- retryable for a (status, code) pair: the code's entry wins, else the status.
function M.retryable(status, code)
  local c = code and catalogue[code]
  if c then return c[2] end
  return M.status_retryable(status)
end

local function kind_for(code)
  local c = code and catalogue[code]
  if c and c.state then return "state" end
  return "api"
end

-- Replaces every occurrence of each secret in s by "[REDACTED]".
-- secrets: list (or set, keys ignored) of strings; short values (< 4 chars) are ignored.
function M.scrub(s, secrets)
  if type(s) ~= "string" or not secrets then return s end
  for _, v in pairs(secrets) do
    if type(v) == "string" and #v >= 4 then
      local i = 1
      while true do
        local a, b = s:find(v, i, true)
        if not a then break end
        s = s:sub(1, a - 1) .. "[REDACTED]" .. s:sub(b + 1)
        i = a + 10
      end
    end
  end
  return s
end

-- Creates an error object from a table of fields (copied).
function M.new(fields)
  local e = {}
  for k, v in pairs(fields) do e[k] = v end
  if e.retryable == nil then e.retryable = false end
  e.message = e.message or e.kind or "error"
  return setmetatable(e, Error)
end

function M.is(e)
  return getmetatable(e) == Error
end

-- A client-side validation failure naming the field.
function M.validation(field, message)
  return M.new{ kind = "validation", field = field, message = field .. ": " .. message, retryable = false }
end

-- A client-side state failure (e.g. an operation that needs an earlier step).
function M.state(message, code)
  return M.new{ kind = "state", code = code, message = message, retryable = false }
end

-- From a core.http transport error {kind, code, message}.
-- curl codes that mean "the server's certificate was not trusted".
local CERT_CODES = { PEER_FAILED_VERIFICATION = true, SSL_CACERT_BADFILE = true, SSL_ISSUER_ERROR = true }

function M.from_transport(terr, method, path, secrets)
  local kind = terr.kind or "network"
  local message = tostring(terr.message or terr.code or "transport error")
  if kind == "tls" and (CERT_CODES[terr.code] or message:find("certificate", 1, true)) then
    -- Say it plainly, and how to fix it: TLS verification cannot be turned off.
    if not message:lower():find("certificate verify failed", 1, true) then
      message = "certificate verify failed: " .. message
    end
    message = message .. " (the server's certificate is not signed by a trusted CA; for a private CA pass ca_file)"
  end
  return M.new{
    kind = kind,
    code = terr.code,
    message = M.scrub(message, secrets),
    -- connection failures and timeouts are transient; a TLS verification failure is not
    retryable = kind ~= "tls",
    method = method,
    path = path,
  }
end

local function header_request_id(headers)
  if type(headers) ~= "table" then return nil end
  return headers["request-id"] or headers["x-request-id"]
end
M.request_id = header_request_id

local function retry_after(headers)
  local v = type(headers) == "table" and headers["retry-after"]
  if not v then return nil end
  local n = tonumber(v)
  if n and n >= 0 then return n end
  return nil
end

-- From a non-2xx HTTP response {status, headers, body} and its decoded body
-- (or nil when the body is not JSON).
function M.from_response(res, decoded, method, path, secrets)
  local status = res.status
  local e = {
    status = status,
    method = method,
    path = path,
    request_id = header_request_id(res.headers),
    retry_after = retry_after(res.headers),
  }
  if type(decoded) == "table" and (decoded.status_code ~= nil or decoded.code ~= nil or decoded.message ~= nil
      or decoded.error ~= nil) then
    local code = decoded.code
    if type(code) ~= "string" or code == "" then code = nil end  -- JSON null: "Invalid credentials"
    local message = decoded.message
    if type(message) ~= "string" or message == "" then
      message = type(decoded.error) == "string" and decoded.error or ("HTTP " .. tostring(status))
    end
    if status == 401 and code == nil then
      -- fiskaly answers bad credentials with code null and "Invalid credentials"
      message = message .. " (check the API key and secret)"
    end
    e.kind = kind_for(code)
    e.code = code
    e.message = M.scrub(message, secrets)
    e.retryable = M.retryable(status, code)
  else
    e.kind = "http"
    local snippet = type(res.body) == "string" and res.body:sub(1, 200):gsub("%s+", " ") or ""
    e.message = M.scrub("HTTP " .. tostring(status) .. (snippet ~= "" and (": " .. snippet) or ""), secrets)
    e.retryable = M.status_retryable(status)
  end
  return M.new(e)
end

-- `fiskaly api error 401 E_UNAUTHORIZED: ... (POST /tss/…/admin/auth, request-id …)`
function Error.__tostring(e)
  local parts = { "fiskaly ", e.kind or "unknown", " error" }
  if e.status then parts[#parts + 1] = " " .. tostring(e.status) end
  if e.code then parts[#parts + 1] = " " .. tostring(e.code) end
  parts[#parts + 1] = ": " .. tostring(e.message)
  local ctx = {}
  if e.method or e.path then ctx[#ctx + 1] = (e.method or "?") .. " " .. (e.path or "?") end
  if e.request_id then ctx[#ctx + 1] = "request-id " .. tostring(e.request_id) end
  if math.type(e.attempts) == "integer" and e.attempts > 1 then ctx[#ctx + 1] = e.attempts .. " attempts" end
  if #ctx > 0 then parts[#parts + 1] = " (" .. table.concat(ctx, ", ") .. ")" end
  return table.concat(parts)
end

return M
