-- sandbox/server.lua: the request handler of fiskaly-sandbox (loaded by main.c).
--
-- server.new(opts) returns handler, credentials.  handler(req) takes
--   { method, path, query = {name = first value}, query_list = {{name, value}, ...},
--     headers = {lowercased name = value}, body = string,
--     body_too_large = true? (the body was over 1 MB and dropped by the host),
--     received_ms = wall-clock milliseconds when the request arrived (system clock,
--                   without the /_sandbox/clock offset) }
-- and returns the response the C host sends:
--   { status = int, headers = {name = value}, body = string,
--     delay_ms = int?  -- the host sleeps this long (outside the Lua lock) before answering
--     drop = "before"|"after"|nil }  -- close the connection without an answer; "before":
--                                     -- the request was not applied, "after": it was
-- Route handlers return status, body (a table encoded as JSON, or a string), headers?
-- or raise sandbox.errors objects, which become fiskaly-format error bodies.
local json = require "fiskaly.json"
local errors = require "sandbox.errors"
local context = require "sandbox.context"
local auth = require "sandbox.auth"
local management = require "sandbox.management"
local sign_de = require "sandbox.sign_de"

local M = {}

local function new_router()
  local routes = {}
  local function add(method, pattern, fn)
    routes[#routes + 1] = { method = method, pattern = pattern, fn = fn }
  end
  local function match(method, path)
    local path_known = false
    for _, r in ipairs(routes) do
      local caps = { path:match(r.pattern) }
      if caps[1] ~= nil then
        if r.method == method then return r.fn, caps end
        path_known = true
      end
    end
    return nil, path_known
  end
  return add, match
end

-- The sandbox's own control endpoints (for tests; see docs/sandbox.md).
local function control_routes(r)
  r("GET", "^/_sandbox/state$", function(ctx, req)
    local st = ctx.state
    local orgs, keys = json.array{}, json.array{}
    for _, id in ipairs(st.org_order) do
      local o = st.organizations[id]
      orgs[#orgs + 1] = { id = o._id, type = o._type, name = o.name,
        managed_by_organization_id = o.managed_by_organization_id }
    end
    for _, k in ipairs(st.key_order) do
      local key = st.api_keys[k]
      keys[#keys + 1] = { id = key._id, key = key.key, name = key.name, status = key.status,
        organization_id = key.organization_id }
    end
    local now, live = ctx.now(), 0
    for _, t in pairs(st.tokens) do
      if t.expires_at > now then live = live + 1 end
    end
    return 200, {
      time = now, clock_offset_seconds = ctx.clock_offset, received_ms = req.received_ms,
      organizations = orgs, api_keys = keys, valid_access_tokens = live,
      tss = sign_de.summary(ctx),
    }
  end)

  r("POST", "^/_sandbox/expire%-tokens$", function(ctx)
    return 200, { expired = auth.expire_all(ctx) }
  end)

  r("POST", "^/_sandbox/clock$", function(ctx, req)
    local body = json.decode(req.body ~= "" and req.body or "{}")
    local off = type(body) == "table" and math.tointeger(body.offset_seconds)
    if not off then errors.schema("body/offset_seconds must be integer") end
    ctx.clock_offset = off
    return 200, { offset_seconds = off, time = ctx.now() }
  end)
end

local function seed_account(ctx)
  local group = management.add_organization(ctx, {
    name = "Sandbox HUB Group", display_name = "Sandbox HUB Group",
    address_line1 = "Unter den Linden 1", zip = "10117", town = "Berlin", country_code = "DEU",
  }, nil)
  local key, secret = management.add_api_key(ctx, group, { name = "hub-key", status = "enabled" })
  return { api_key = key.key, api_secret = secret, organization_id = group._id }
end

function M.new(opts)
  opts = opts or {}
  local ctx = context.new(opts)
  local add, match = new_router()
  management.routes(add)
  sign_de.routes(add)
  control_routes(add)
  local creds = seed_account(ctx)

  local function dispatch(req)
    if req.body_too_large then
      errors.raise(413, nil, "request body is larger than 1 MB")
    end
    local path = req.path
    if #path > 1 then path = path:gsub("/+$", "") end
    local fn, caps = match(req.method, path)
    if not fn then
      if caps then errors.raise(405, "E_METHOD_NOT_ALLOWED", req.method .. " is not allowed on " .. path) end
      errors.raise(404, "E_NOT_FOUND", "no such endpoint: " .. req.method .. " " .. path)
    end
    return fn(ctx, req, table.unpack(caps))
  end

  local function handler(req)
    local request_id = req.headers["x-request-id"] or ctx.uuid()
    local ok, status, body, headers = pcall(dispatch, req)
    if not ok then
      local e = status
      if not errors.is(e) then
        if opts.verbose then io.stderr:write("fiskaly-sandbox: internal error: ", tostring(e), "\n") end
        e = errors.new(500, "E_INTERNAL", "internal sandbox error")
      end
      status, body, headers = e.status, errors.body(e), nil
    end
    local h = { ["request-id"] = request_id, ["Content-Type"] = "application/json" }
    for k, v in pairs(headers or {}) do h[k] = v end
    if type(body) == "table" then body = assert(json.encode(body)) end
    return { status = status, headers = h, body = body or "" }
  end

  return handler, creds
end

return M
