-- sandbox.management: fiskaly Management API v0 (/api/v0): auth, organizations
-- (a managed organization per store under the HUB group), API keys.
-- fiskaly publishes no OpenAPI for v0; fields follow fiskaly-api.md §12 and the
-- integration guide's examples.
local json = require "fiskaly.json"
local errors = require "sandbox.errors"
local validate = require "sandbox.validate"
local auth = require "sandbox.auth"
local context = require "sandbox.context"

local M = {}

local function copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = copy(v) end
  return c
end

local ORG_FIELDS = { "name", "display_name", "address_line1", "address_line2", "zip", "town", "state",
  "country_code", "vat_id", "tax_number", "economy_id", "contact_person_id", "billing_address_id",
  "billing_options" }

local function render_org(org)
  local r = {
    _id = org._id, _type = org._type, _envs = json.array{ "TEST" },
    managed_by_organization_id = org.managed_by_organization_id or "",
    metadata = copy(org.metadata),
    time_creation = org.time_creation,
    created_by_user = json.null,
  }
  for _, f in ipairs(ORG_FIELDS) do r[f] = copy(org[f]) end
  return r
end

local function render_key(key, with_secret)
  local r = {
    _id = key._id,
    _type = key.managed_by_organization_id and "MANAGED_API_KEY" or "API_KEY",
    _envs = json.array{ "TEST" },
    key = key.key, name = key.name, status = key.status,
    organization_id = key.organization_id,
    managed_by_organization_id = key.managed_by_organization_id or "",
    metadata = copy(key.metadata),
    created_at = key.created_at,
  }
  if with_secret then r.secret = with_secret end
  return r
end

-- True when the token's organization is org or one of its managers (transitively).
local function can_access(st, tok, org)
  local seen = 0
  while org and seen < 16 do
    if org._id == tok.organization_id then return true end
    org = org.managed_by_organization_id and st.organizations[org.managed_by_organization_id]
    seen = seen + 1
  end
  return false
end

local function get_org(ctx, tok, id)
  local org = validate.is_uuid(id) and ctx.state.organizations[id:lower()]
  if not org then errors.raise(404, "E_NOT_FOUND", "organization " .. tostring(id) .. " not found") end
  if not can_access(ctx.state, tok, org) then
    errors.raise(403, "E_ACCESS_DENIED", "no permission for organization " .. id)
  end
  return org
end

-- Creates an organization record (also used to seed the HUB account).
function M.add_organization(ctx, fields, managed_by)
  local st = ctx.state
  local org = copy(fields)
  org._id = ctx.uuid()
  org._type = managed_by and "MANAGED_ORGANIZATION" or "ORGANIZATION"
  org.managed_by_organization_id = managed_by
  org.metadata = org.metadata or {}
  org.time_creation = ctx.now()
  st.organizations[org._id] = org
  st.org_order[#st.org_order + 1] = org._id
  return org
end

-- Creates an API key for org; returns the record and its secret (shown once).
function M.add_api_key(ctx, org, fields)
  local st = ctx.state
  local secret = ctx.random_string(43)
  local key = {
    _id = ctx.uuid(),
    key = "test_" .. ctx.random_string(26, "abcdefghijklmnopqrstuvwxyz0123456789"),
    secret_hash = auth.hash_secret(secret),
    organization_id = org._id,
    name = fields.name,
    status = fields.status or "enabled",
    managed_by_organization_id = fields.managed_by_organization_id or org.managed_by_organization_id,
    metadata = copy(fields.metadata or {}),
    created_at = ctx.now(),
  }
  st.api_keys[key.key] = key
  st.key_order[#st.key_order + 1] = key.key
  return key, secret
end

local function list_params(req)
  local q = req.query
  local limit, offset = 100, 0
  if q.limit then
    limit = math.tointeger(tonumber(q.limit))
    if not limit or limit < 1 or limit > 5000 then errors.schema("querystring/limit must be an integer in 1..5000") end
  end
  if q.offset then
    offset = math.tointeger(tonumber(q.offset))
    if not offset or offset < 0 then errors.schema("querystring/offset must be an integer >= 0") end
  end
  return limit, offset
end

local function page(items, limit, offset, list_type)
  local data = json.array{}
  for i = offset + 1, math.min(#items, offset + limit) do data[#data + 1] = items[i] end
  return { data = data, count = #data, _type = list_type, _envs = json.array{ "TEST" },
    _version = context.MANAGEMENT_VERSION }
end

function M.routes(r)
  r("POST", "^/api/v0/auth$", function(ctx, req)
    return 200, auth.login(ctx, req, "management")
  end)

  r("GET", "^/api/v0/organizations$", function(ctx, req)
    local tok = auth.require(ctx, req, "management")
    local st = ctx.state
    local limit, offset = list_params(req)
    local filter = req.query.managed_by_organization_id
    local items = {}
    for _, id in ipairs(st.org_order) do
      local org = st.organizations[id]
      if can_access(st, tok, org) and (not filter or org.managed_by_organization_id == filter) then
        items[#items + 1] = render_org(org)
      end
    end
    return 200, page(items, limit, offset, "ORGANIZATION_LIST")
  end)

  r("POST", "^/api/v0/organizations$", function(ctx, req)
    local tok = auth.require(ctx, req, "management")
    local body = validate.body(validate.schemas.CreateOrganization, req.body)
    local parent_id = body.managed_by_organization_id and body.managed_by_organization_id:lower()
      or tok.organization_id
    local parent = get_org(ctx, tok, parent_id)
    if parent._type == "MANAGED_ORGANIZATION" then
      errors.raise(400, "E_FAILED_SCHEMA_VALIDATION",
        "body/managed_by_organization_id: a managed organization cannot manage other organizations")
    end
    body.managed_by_organization_id = nil
    local org = M.add_organization(ctx, body, parent._id)
    return 200, render_org(org)
  end)

  r("GET", "^/api/v0/organizations/([^/]+)$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "management")
    return 200, render_org(get_org(ctx, tok, id))
  end)

  r("POST", "^/api/v0/organizations/([^/]+)/api%-keys$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "management")
    local org = get_org(ctx, tok, id)
    local body = validate.body(validate.schemas.CreateApiKey, req.body)
    if body.managed_by_organization_id then
      body.managed_by_organization_id = body.managed_by_organization_id:lower()
    end
    local key, secret = M.add_api_key(ctx, org, body)
    return 200, render_key(key, secret)
  end)

  r("GET", "^/api/v0/organizations/([^/]+)/api%-keys$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "management")
    local org = get_org(ctx, tok, id)
    local limit, offset = list_params(req)
    local items = {}
    for _, k in ipairs(ctx.state.key_order) do
      local key = ctx.state.api_keys[k]
      if key.organization_id == org._id then items[#items + 1] = render_key(key) end
    end
    return 200, page(items, math.min(limit, 100), offset, "API_KEY_LIST")
  end)

  r("GET", "^/api/v0/organizations/([^/]+)/api%-keys/([^/]+)$", function(ctx, req, id, key_id)
    local tok = auth.require(ctx, req, "management")
    local org = get_org(ctx, tok, id)
    for _, k in ipairs(ctx.state.key_order) do
      local key = ctx.state.api_keys[k]
      if key.organization_id == org._id and key._id == key_id:lower() then return 200, render_key(key) end
    end
    errors.raise(404, "E_NOT_FOUND", "API key " .. key_id .. " not found")
  end)
end

return M
