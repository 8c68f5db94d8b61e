-- sandbox.auth: API-key authentication for both APIs (POST /api/v0/auth and
-- POST /api/v2/auth), bearer-token checks, token expiry.
--
-- Tokens are JWT-shaped (header.claims.random) but opaque to the sandbox: each is
-- looked up in ctx.state.tokens.  A token is bound to one API ("management" or
-- "sign"), one organization, and a session id that refreshes keep (admin logins
-- on a TSS belong to that session).
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local errors = require "sandbox.errors"
local validate = require "sandbox.validate"

local M = {}

local function b64url(s)
  return (core.crypto.b64encode(s):gsub("%+", "-"):gsub("/", "_"):gsub("=", ""))
end

local function make_token(ctx, claims)
  local header = b64url('{"alg":"ES256","typ":"JWT"}')
  return header .. "." .. b64url(assert(json.encode(claims))) .. "." .. b64url(ctx.random_bytes(32))
end

-- The secret is kept only as a hash.
function M.hash_secret(secret)
  return core.crypto.hex(core.crypto.sha256("api-secret:" .. secret))
end

-- Issues an access + refresh token pair for an API key record.
local function issue(ctx, key, scope, session)
  local st = ctx.state
  local now = ctx.now()
  local ttl = ctx.token_ttl
  local rttl = ttl * 2
  local jti = ctx.uuid()
  local access = make_token(ctx, {
    env = "TEST", organization_id = key.organization_id, api_key_id = key._id, scope = scope,
    iat = now, exp = now + ttl, jti = jti,
  })
  local refresh = make_token(ctx, { scope = scope, jti = ctx.uuid(), exp = now + rttl })
  st.tokens[access] = {
    scope = scope, organization_id = key.organization_id, api_key = key.key,
    session = session, expires_at = now + ttl, issued_at = now,
  }
  st.refresh_tokens[refresh] = {
    scope = scope, api_key = key.key, session = session, expires_at = now + rttl,
  }
  return {
    access_token = access,
    access_token_claims = { env = "TEST", organization_id = key.organization_id },
    access_token_expires_in = ttl,
    access_token_expires_at = now + ttl,
    refresh_token = refresh,
    refresh_token_expires_in = rttl,
    refresh_token_expires_at = now + rttl,
  }
end

local function invalid_credentials()
  errors.raise(401, nil, "Invalid credentials")
end

-- POST /auth for `scope` ("management" or "sign").
function M.login(ctx, req, scope)
  local body = validate.body(validate.schemas.Auth, req.body)
  local st = ctx.state
  if body.refresh_token ~= nil then
    local r = st.refresh_tokens[body.refresh_token]
    if not r or r.scope ~= scope or r.expires_at <= ctx.now() then
      errors.raise(401, "E_UNAUTHORIZED", "Invalid or expired refresh token")
    end
    local key = st.api_keys[r.api_key]
    if not key or key.status ~= "enabled" then invalid_credentials() end
    return issue(ctx, key, scope, r.session)
  end
  if body.api_key == nil then errors.schema("body must have required property 'api_key'") end
  if body.api_secret == nil then errors.schema("body must have required property 'api_secret'") end
  local key = st.api_keys[body.api_key]
  if not key or key.secret_hash ~= M.hash_secret(body.api_secret) or key.status ~= "enabled" then
    invalid_credentials()
  end
  return issue(ctx, key, scope, ctx.uuid())
end

-- Checks the bearer token of a request; returns the token record or raises 401.
function M.require(ctx, req, scope)
  local h = req.headers.authorization
  local tok = h and h:match("^[Bb]earer%s+(%S+)%s*$")
  if not tok then
    errors.raise(401, "E_UNAUTHORIZED", "Missing or malformed Authorization header (expected Bearer token)")
  end
  local rec = ctx.state.tokens[tok]
  if not rec or rec.scope ~= scope then
    errors.raise(401, "E_UNAUTHORIZED", "Invalid access token")
  end
  if rec.expires_at <= ctx.now() then
    errors.raise(401, "E_UNAUTHORIZED", "The access token has expired")
  end
  return rec
end

-- Every issued access token expires now (control endpoint).
function M.expire_all(ctx)
  local now, n = ctx.now(), 0
  for _, rec in pairs(ctx.state.tokens) do
    if rec.expires_at > now - 1 then rec.expires_at = now - 1 end
    n = n + 1
  end
  return n
end

-- The bearer token of this request (if it is one the sandbox issued) expires
-- now (fault action expire_token).  Returns true when a token was expired.
function M.expire_presented(ctx, req)
  local h = req.headers.authorization
  local tok = h and h:match("^[Bb]earer%s+(%S+)%s*$")
  local rec = tok and ctx.state.tokens[tok]
  if not rec then return false end
  local now = ctx.now()
  if rec.expires_at > now - 1 then rec.expires_at = now - 1 end
  return true
end

-- Every access and refresh token issued so far becomes invalid (control
-- endpoint /_sandbox/revoke-tokens).  Returns how many were revoked.
function M.revoke_all(ctx)
  local n = 0
  for tok in pairs(ctx.state.tokens) do ctx.state.tokens[tok] = nil n = n + 1 end
  for tok in pairs(ctx.state.refresh_tokens) do ctx.state.refresh_tokens[tok] = nil n = n + 1 end
  return n
end

return M
