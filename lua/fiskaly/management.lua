-- fiskaly.management: Management API v0 resource calls (client.management:<method>).
--
-- Organizations and API keys, for a POS vendor's onboarding flow: with the
-- HUB account's key, create one managed organization per store, then its API
-- key, then use that key (client:with_credentials) for SIGN DE.
--
-- Every method returns the decoded response body or nil, err; the optional
-- last argument is { validate = false, timeout_ms = n } as in fiskaly.sign_de.
local errors = require "fiskaly.errors"
local V = require("fiskaly.sign_de").validate

local M = {}

local function misuse(fn, what)
  error("fiskaly.management:" .. fn .. ": " .. what, 3)
end

local function call_opts(fn, o)
  if o == nil then return {} end
  if type(o) ~= "table" then misuse(fn, "options must be a table") end
  return o
end

local seg = require("fiskaly.client").pct
local run = require("fiskaly.sign_de")._run

local function first(...)
  for i = 1, select("#", ...) do
    local e = select(i, ...)
    if e then return e end
  end
end

-- POST /organizations. Required: name, address_line1, zip, town, country_code
-- (ISO 3166 alpha-3, e.g. "DEU"); managed_by_organization_id makes it a
-- managed organization of that (group) organization.
function M.create_organization(self, body, o)
  if type(body) ~= "table" then misuse("create_organization", "body must be a table") end
  o = call_opts("create_organization", o)
  if o.validate ~= false then
    local e = first(V.string("name", body.name, 1, 200), V.string("address_line1", body.address_line1, 1, 200),
      V.string("zip", body.zip, 1, 20), V.string("town", body.town, 1, 200),
      V.string("country_code", body.country_code, 3, 3),
      body.managed_by_organization_id ~= nil and V.uuid("managed_by_organization_id", body.managed_by_organization_id) or nil,
      V.metadata("metadata", body.metadata))
    if not e and not body.country_code:match("^%u%u%u$") then
      e = errors.validation("country_code", "must be an ISO 3166 alpha-3 code such as \"DEU\"")
    end
    if e then return nil, e end
  end
  return run(self, o, { method = "POST", path = "/organizations", body = body })
end

function M.get_organization(self, organization_id, o)
  if type(organization_id) ~= "string" then misuse("get_organization", "organization_id must be a string") end
  o = call_opts("get_organization", o)
  local e = o.validate ~= false and V.uuid("organization_id", organization_id)
  if e then return nil, e end
  return run(self, o, { method = "GET", path = "/organizations/" .. seg(organization_id) })
end

-- GET /organizations; query: order_by, order, limit, offset, managed_by_organization_id, ...
function M.list_organizations(self, query, o)
  if query ~= nil and type(query) ~= "table" then misuse("list_organizations", "query must be a table") end
  return run(self, call_opts("list_organizations", o), { method = "GET", path = "/organizations", query = query })
end

-- POST /organizations/{organization_id}/api-keys: { name, status = "enabled"|"disabled",
-- managed_by_organization_id?, metadata? }. The response's secret is shown only once.
function M.create_api_key(self, organization_id, body, o)
  if type(organization_id) ~= "string" then misuse("create_api_key", "organization_id must be a string") end
  if type(body) ~= "table" then misuse("create_api_key", "body must be a table") end
  o = call_opts("create_api_key", o)
  if o.validate ~= false then
    local e = first(V.uuid("organization_id", organization_id), V.string("name", body.name, 1, 200),
      body.status ~= nil and V.enum("status", body.status, { "enabled", "disabled" }) or nil,
      body.managed_by_organization_id ~= nil and V.uuid("managed_by_organization_id", body.managed_by_organization_id) or nil,
      V.metadata("metadata", body.metadata))
    if e then return nil, e end
  end
  return run(self, o, { method = "POST", path = "/organizations/" .. seg(organization_id) .. "/api-keys",
    body = body })
end

-- GET /organizations/{organization_id}/api-keys; query: order_by, order, limit, offset, status = {...}
function M.list_api_keys(self, organization_id, query, o)
  if type(organization_id) ~= "string" then misuse("list_api_keys", "organization_id must be a string") end
  if query ~= nil and type(query) ~= "table" then misuse("list_api_keys", "query must be a table") end
  o = call_opts("list_api_keys", o)
  local e = o.validate ~= false and V.uuid("organization_id", organization_id)
  if e then return nil, e end
  return run(self, o, { method = "GET", path = "/organizations/" .. seg(organization_id) .. "/api-keys",
    query = query })
end

return M
