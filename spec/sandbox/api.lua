-- Test helper for spec/sandbox: a running sandbox plus raw HTTP calls through
-- core.http (no client library involved), and the provisioning steps as
-- functions so each test can start from the state it needs.
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local sandbox = require "fiskaly.sandbox"

local M = {}

local api_mt = {}
api_mt.__index = api_mt

-- Starts a sandbox (args: extra command-line options).
function M.start(args)
  local sb = assert(sandbox.start{ args = args })
  local self = setmetatable({ sb = sb, base = sb.base_url, http = core.http.session{ timeout_ms = 20000 } }, api_mt)
  return self
end

function api_mt:stop()
  if self.http then self.http:close() self.http = nil end
  if self.sb then self.sb.stop() self.sb = nil end
end

-- Raw call. body: a table (JSON-encoded) or a string. Returns status, decoded
-- body (or the raw string when not JSON), response headers, raw body.
function api_mt:call(method, path, body, token, headers)
  local h = { ["Content-Type"] = "application/json" }
  if token then h["Authorization"] = "Bearer " .. token end
  for k, v in pairs(headers or {}) do h[k] = v end
  if type(body) == "table" then body = assert(json.encode(body)) end
  local resp, err = self.http:request{ method = method, url = self.base .. path, headers = h, body = body }
  assert(resp, err and (err.kind .. " " .. tostring(err.code) .. ": " .. tostring(err.message)))
  local decoded = json.decode(resp.body)
  return resp.status, decoded == nil and resp.body or decoded, resp.headers, resp.body
end

-- Like call, but asserts the status and returns the decoded body.
function api_mt:ok(method, path, body, token, want)
  local st, b = self:call(method, path, body, token)
  if st ~= (want or 200) then
    error(string.format("%s %s: expected %d, got %d: %s", method, path, want or 200, st,
      type(b) == "table" and json.encode(b) or tostring(b)), 2)
  end
  return b
end

function api_mt:auth(prefix, key, secret)
  return self:ok("POST", prefix .. "/auth", { api_key = key, api_secret = secret }).access_token
end

-- Management: HUB token -> managed organization -> its API key. Returns the
-- managed organization and {key, secret}.
function api_mt:managed_org(name)
  local mt = self:auth("/api/v0", self.sb.api_key, self.sb.api_secret)
  local org = self:ok("POST", "/api/v0/organizations", {
    name = name or "Store", managed_by_organization_id = self.sb.organization_id,
    address_line1 = "Unter den Linden 1", zip = "10117", town = "Berlin", country_code = "DEU",
  }, mt)
  local key = self:ok("POST", "/api/v0/organizations/" .. org._id .. "/api-keys",
    { name = "pos", status = "enabled", managed_by_organization_id = self.sb.organization_id }, mt)
  return org, key
end

-- SIGN DE token for a fresh managed organization.
function api_mt:sign_token()
  local _, key = self:managed_org()
  return self:auth("/api/v2", key.key, key.secret), key
end

M.PIN = "1234567890"

-- Provisions a TSS up to `upto` ("CREATED", "UNINITIALIZED", "PIN", "INITIALIZED",
-- "CLIENT"). Returns a table with tok, key (when tok was not given), tss_id, puk,
-- tss (last body), client_id, client.
function api_mt:provision(upto, tok)
  local p = { tss_id = core.crypto.uuid4() }
  if tok then p.tok = tok else p.tok, p.key = self:sign_token() end
  local base = "/api/v2/tss/" .. p.tss_id
  p.tss = self:ok("PUT", base, { metadata = { purpose = "spec" } }, p.tok)
  p.puk = p.tss.admin_puk
  if upto == "CREATED" then return p end
  p.tss = self:ok("PATCH", base, { state = "UNINITIALIZED" }, p.tok)
  if upto == "UNINITIALIZED" then return p end
  self:ok("PATCH", base .. "/admin", { admin_puk = p.puk, new_admin_pin = M.PIN }, p.tok)
  if upto == "PIN" then return p end
  self:ok("POST", base .. "/admin/auth", { admin_pin = M.PIN }, p.tok)
  p.tss = self:ok("PATCH", base, { state = "INITIALIZED" }, p.tok)
  if upto == "INITIALIZED" then return p end
  p.client_id = core.crypto.uuid4()
  p.client = self:ok("PUT", base .. "/client/" .. p.client_id, { serial_number = "ERS " .. p.client_id }, p.tok)
  self:ok("POST", base .. "/admin/logout", {}, p.tok)
  return p
end

M.RECEIPT = {
  standard_v1 = { receipt = {
    receipt_type = "RECEIPT",
    amounts_per_vat_rate = { { vat_rate = "NORMAL", amount = "21.42" } },
    amounts_per_payment_type = { { payment_type = "NON_CASH", amount = "21.42" } },
  } },
}

function api_mt:tx(p, tx_id, rev, state, schema, want)
  return self:ok("PUT", "/api/v2/tss/" .. p.tss_id .. "/tx/" .. tx_id .. "?tx_revision=" .. rev,
    { state = state, client_id = p.client_id, schema = schema }, p.tok, want)
end

-- Asserts a fiskaly-format error body with status and code; returns the message.
function M.assert_error(lu, st, body, want_status, want_code)
  lu.assertEquals(st, want_status, type(body) == "table" and tostring(body.message) or tostring(body))
  lu.assertIsTable(body)
  lu.assertEquals(body.status_code, want_status)
  lu.assertIsString(body.error)
  lu.assertIsString(body.message)
  if want_code == json.null then
    lu.assertEquals(body.code, json.null)
  else
    lu.assertEquals(body.code, want_code)
  end
  return body.message
end

return M
