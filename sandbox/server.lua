-- sandbox/server.lua: the request handler of fiskaly-sandbox (loaded by main.c).
--
-- server.new(opts) returns handler, credentials.  handler(req) takes
--   { method, path, query = {name = first value}, query_list = {{name, value}, ...},
--     headers = {lowercased name = value}, body = string,
--     body_too_large = true? (the body was over 1 MB and dropped by the host),
--     received_ms = wall-clock milliseconds when the request arrived (system clock,
--                   without the /_sandbox/clock offset),
--     handled_ms = wall-clock milliseconds when the handler was called (under the lock) }
-- and returns the response the C host sends:
--   { status = int, headers = {name = value}, body = string,
--     delay_ms = int?  -- the host sleeps this long (outside the Lua lock) before answering
--     drop = "before"|"after"|"truncate"|nil }  -- close the connection without an answer;
--                                     -- "before": the request was not applied, "after": it
--                                     -- was; "truncate": applied, status line and headers
--                                     -- sent, connection closed before the body
--                                     -- (status may be absent when drop is set)
-- API requests (everything outside /_sandbox/) go through the fault rules and the
-- latency of sandbox.faults and are written to the request log; control requests
-- are never delayed, faulted or logged.
-- Route handlers return status, body (a table encoded as JSON, or a string), headers?
-- or raise sandbox.errors objects, which become fiskaly-format error bodies.
local json = require "fiskaly.json"
local errors = require "sandbox.errors"
local context = require "sandbox.context"
local auth = require "sandbox.auth"
local management = require "sandbox.management"
local sign_de = require "sandbox.sign_de"
local faults = require "sandbox.faults"

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

  r("POST", "^/_sandbox/revoke%-tokens$", function(ctx)
    return 200, { revoked = auth.revoke_all(ctx) }
  end)

  local function decode_body(req)
    local body = json.decode(req.body ~= "" and req.body or "{}")
    if type(body) ~= "table" then errors.schema("body must be object") end
    return body
  end

  r("POST", "^/_sandbox/faults$", function(ctx, req)
    local n = ctx.faults.set(decode_body(req))
    return 200, { ok = true, rules = n }
  end)
  r("GET", "^/_sandbox/faults$", function(ctx)
    return 200, ctx.faults.describe()
  end)
  r("DELETE", "^/_sandbox/faults$", function(ctx)
    ctx.faults.clear()
    return 200, { ok = true }
  end)

  r("POST", "^/_sandbox/latency$", function(ctx, req)
    local body = decode_body(req)
    ctx.faults.set_latency(body.ms)
    return 200, { ok = true, ms = body.ms }
  end)

  r("GET", "^/_sandbox/requests$", function(ctx, req)
    local since = req.query.since
    local n = since and math.tointeger(tonumber(since))
    if since and (not n or n < 0) then errors.schema("query/since must be a non-negative integer") end
    return 200, { requests = ctx.faults.requests(n) }
  end)
  r("DELETE", "^/_sandbox/requests$", function(ctx)
    ctx.faults.clear_requests()
    return 200, { ok = true }
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
  ctx.faults = faults.new(ctx)
  local tss_create_delay = math.tointeger(opts.tss_create_delay_ms) or 0
  local add, match = new_router()
  management.routes(add)
  sign_de.routes(add)
  control_routes(add)
  local creds = seed_account(ctx)

  local function dispatch(req, path)
    if req.body_too_large then
      errors.raise(413, nil, "request body is larger than 1 MB")
    end
    local fn, caps = match(req.method, path)
    if not fn then
      if caps then errors.raise(405, "E_METHOD_NOT_ALLOWED", req.method .. " is not allowed on " .. path) end
      errors.raise(404, "E_NOT_FOUND", "no such endpoint: " .. req.method .. " " .. path)
    end
    return fn(ctx, req, table.unpack(caps))
  end

  -- status, body (a table or string), headers of the request, errors mapped.
  local function run(req, path)
    local ok, status, body, headers = pcall(dispatch, req, path)
    if not ok then
      local e = status
      if not errors.is(e) then
        if opts.verbose then io.stderr:write("fiskaly-sandbox: internal error: ", tostring(e), "\n") end
        e = errors.new(500, "E_INTERNAL", "internal sandbox error")
      end
      status, body, headers = e.status, errors.body(e), nil
    end
    return status, body, headers
  end

  local function response(request_id, status, body, headers)
    local h = { ["request-id"] = request_id, ["Content-Type"] = "application/json" }
    for k, v in pairs(headers or {}) do h[k] = v end
    if type(body) == "table" then body = assert(json.encode(body)) end
    return { status = status, headers = h, body = body or "" }
  end

  local function handler(req)
    local request_id = req.headers["x-request-id"] or ctx.uuid()
    local path = req.path
    if #path > 1 then path = path:gsub("/+$", "") end
    if path == "/_sandbox" or path:sub(1, 10) == "/_sandbox/" then
      return response(request_id, run(req, path))
    end

    -- An API request: fault rules, latency, request log.
    local F = ctx.faults
    local qs = {}
    for i, kv in ipairs(req.query_list or {}) do qs[i] = kv[1] .. "=" .. kv[2] end
    local rule, index = F.match(req.method, path, table.concat(qs, "&"), req.body or "")
    local action = rule and rule.action
    local delay = F.latency_ms + (rule and rule.delay_ms or 0)
    if tss_create_delay > 0 and req.method == "PUT" and path:match("^/api/v2/tss/[^/]+$") then
      delay = delay + tss_create_delay
    end
    local status, body, headers, drop
    if action == "drop_before" then
      drop = "before"
    elseif action == "status" then
      status = rule.status
      body = errors.body(errors.new(rule.status, rule.code, rule.message))
      headers = {}
      if rule.retry_after then headers["Retry-After"] = tostring(rule.retry_after) end
      if rule.response_body then            -- e.g. a proxy's HTML error page
        body, headers["Content-Type"] = rule.response_body, rule.content_type
      end
    elseif action == "expire_token" then
      auth.expire_presented(ctx, req)
      status, body = 401, errors.body(errors.new(401, "E_UNAUTHORIZED", "The access token has expired"))
    else
      status, body, headers = run(req, path)
      if action == "drop_after" then drop = "after" elseif action == "truncate" then drop = "truncate" end
    end
    delay = math.min(delay, faults.MAX_DELAY_MS)
    F.record{
      method = req.method, path = path, query = next(req.query) and req.query or nil,
      status = status, action = action, rule = index, dropped = drop ~= nil,
      retry_after = headers and tonumber(headers["Retry-After"]) or nil,
      delay_ms = delay, received_ms = req.received_ms, handled_ms = req.handled_ms,
      respond_ms = req.handled_ms and req.handled_ms + delay or nil,
      request_id = request_id,
    }
    if drop and drop ~= "truncate" then return { drop = drop, status = status, delay_ms = delay } end
    local resp = response(request_id, status, body, headers)
    resp.delay_ms = delay > 0 and delay or nil
    resp.drop = drop
    return resp
  end

  return handler, creds
end

return M
