-- sandbox.faults: fault injection and the request log of fiskaly-sandbox
-- (the /_sandbox/faults, /_sandbox/latency and /_sandbox/requests control
-- endpoints; see docs/sandbox.md).
--
-- A rule set is a list of rules, tried in order for every API request (paths
-- outside /_sandbox/).  A rule that is not spent and whose method and path
-- match counts the request; the first `skip` requests it counts (and, with a
-- `probability` below 1, those the seeded draw lets through) go on to the next
-- rule, otherwise the rule fires, uses up one of its `count` and no later rule
-- is tried.  At most one rule fires per request.
--
-- Everything is deterministic: counters only depend on the order requests reach
-- the handler, and the draws for `probability` come from a SHA-256 stream of the
-- seed given with the rules (default: the sandbox's --seed, else 0).
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local errors = require "sandbox.errors"

local M = {}

M.ACTIONS = {
  status = true, drop_before = true, drop_after = true, truncate = true, delay = true, expire_token = true,
}
M.MAX_DELAY_MS = 600000
M.MAX_LOG = 100000               -- request-log entries kept (oldest dropped first)

-- Error codes sent with action "status" when the rule names none.  429, 500
-- and 504 have no documented fiskaly code: these names are the sandbox's own.
M.DEFAULT_CODE = {
  [429] = "E_TOO_MANY_REQUESTS",
  [500] = "E_INTERNAL",
  [502] = "ERROR_IDENTIFY_ERS",
  [503] = "E_TSS_LOCKED",
  [504] = "E_GATEWAY_TIMEOUT",
}

local RULE_FIELDS = {
  method = true, path = true, action = true, status = true, retry_after = true, code = true,
  message = true, delay_ms = true, count = true, skip = true, probability = true,
  query = true, body = true, response_body = true, content_type = true,
}

-- A Lua pattern field (nil when absent); raises a 400 when it is not one.
local function pattern_field(r, name, where)
  local v = r[name]
  if v == nil or v == json.null then return nil end
  if type(v) ~= "string" or #v > 500 then errors.schema(where .. "/" .. name .. " must be a string (a Lua pattern)") end
  if not pcall(string.find, "", v) then errors.schema(where .. "/" .. name .. " is not a valid Lua pattern") end
  return v
end

local function int_field(r, name, i, lo, hi, default)
  local v = r[name]
  if v == nil or v == json.null then return default end
  local n = math.type(v) == "integer" and v or nil
  if not n or n < lo or n > hi then
    errors.schema(string.format("body/rules/%d/%s must be an integer in %d..%d", i - 1, name, lo, hi))
  end
  return n
end

-- Validates and normalises one rule (i: its 1-based position); raises a 400.
local function check_rule(r, i)
  local where = "body/rules/" .. (i - 1)
  if type(r) ~= "table" then errors.schema(where .. " must be object") end
  for k in pairs(r) do
    if not RULE_FIELDS[k] then errors.schema(where .. " must not have additional property '" .. tostring(k) .. "'") end
  end
  local rule = {}
  if r.method ~= nil and r.method ~= json.null then
    if type(r.method) ~= "string" or not r.method:match("^%u+$") then
      errors.schema(where .. "/method must be an upper-case HTTP method or null")
    end
    rule.method = r.method
  end
  rule.path = pattern_field(r, "path", where)
  rule.query = pattern_field(r, "query", where)
  rule.body = pattern_field(r, "body", where)
  if type(r.action) ~= "string" or not M.ACTIONS[r.action] then
    errors.schema(where .. "/action must be one of status, drop_before, drop_after, truncate, delay, expire_token")
  end
  rule.action = r.action
  rule.delay_ms = int_field(r, "delay_ms", i, 0, M.MAX_DELAY_MS, 0)
  rule.count = int_field(r, "count", i, -1, 1000000000, 1)
  if rule.count == 0 then errors.schema(where .. "/count must be -1 (forever) or at least 1") end
  rule.skip = int_field(r, "skip", i, 0, 1000000000, 0)
  if r.probability ~= nil and r.probability ~= json.null then
    local p = r.probability
    if type(p) ~= "number" or p <= 0 or p > 1 then
      errors.schema(where .. "/probability must be a number in (0, 1]")
    end
    rule.probability = p
  end
  if rule.action == "status" then
    rule.status = int_field(r, "status", i, 400, 599, nil)
    if not rule.status then errors.schema(where .. " must have required property 'status' (action status)") end
    rule.retry_after = int_field(r, "retry_after", i, 0, 86400, nil)
    if r.code ~= nil and r.code ~= json.null and type(r.code) ~= "string" then
      errors.schema(where .. "/code must be a string")
    end
    rule.code = (r.code ~= json.null and r.code) or M.DEFAULT_CODE[rule.status] or "E_SANDBOX_FAULT"
    if r.message ~= nil and type(r.message) ~= "string" then errors.schema(where .. "/message must be a string") end
    rule.message = r.message or ("injected fault: " .. rule.status)
    for _, k in ipairs{ "response_body", "content_type" } do
      if r[k] ~= nil and (type(r[k]) ~= "string" or #r[k] > 65536) then
        errors.schema(where .. "/" .. k .. " must be a string")
      end
    end
    rule.response_body = r.response_body
    rule.content_type = r.content_type or (r.response_body and "text/html")
  else
    for _, k in ipairs{ "status", "retry_after", "code", "message", "response_body", "content_type" } do
      if r[k] ~= nil then errors.schema(where .. "/" .. k .. " is only allowed with action status") end
    end
  end
  rule.matched, rule.fired = 0, 0
  return rule
end

-- ctx: the sandbox context (its opts.seed is the default fault seed).
function M.new(ctx)
  local self = {
    rules = {}, latency_ms = 0, seed = tostring(ctx.opts.seed or 0), draws = 0,
    log = {}, log_first = 1, seq = 0,
  }

  -- A uniform draw in [0, 1) from the seed's SHA-256 stream.
  local function draw()
    self.draws = self.draws + 1
    local h = core.crypto.sha256("fiskaly-sandbox-faults:" .. self.seed .. ":" .. self.draws)
    return string.unpack(">I6", h) / 2.0 ^ 48
  end

  -- POST /_sandbox/faults body: replaces the rules (and restarts the draws).
  function self.set(body)
    if type(body) ~= "table" then errors.schema("body must be object") end
    for k in pairs(body) do
      if k ~= "rules" and k ~= "seed" then errors.schema("body must not have additional property '" .. tostring(k) .. "'") end
    end
    local rules = body.rules
    if type(rules) ~= "table" or (next(rules) ~= nil and rules[1] == nil) then
      errors.schema("body/rules must be array")
    end
    if #rules > 1000 then errors.schema("body/rules must have at most 1000 items") end
    local out = {}
    for i = 1, #rules do out[i] = check_rule(rules[i], i) end
    local seed = body.seed
    if seed ~= nil and seed ~= json.null then
      if math.type(seed) ~= "integer" then errors.schema("body/seed must be integer") end
      self.seed = tostring(seed)
    else
      self.seed = tostring(ctx.opts.seed or 0)
    end
    self.rules, self.draws = out, 0
    return #out
  end

  function self.set_latency(ms)
    if math.type(ms) ~= "integer" or ms < 0 or ms > M.MAX_DELAY_MS then
      errors.schema("body/ms must be an integer in 0.." .. M.MAX_DELAY_MS)
    end
    self.latency_ms = ms
  end

  function self.clear()
    self.rules, self.latency_ms, self.draws = {}, 0, 0
  end

  -- The rule that fires for this request (and its 1-based index), or nil.
  -- query: the query string ("name=value&..."), body: the request body.
  function self.match(method, path, query, body)
    for i, r in ipairs(self.rules) do
      if r.count ~= 0 and (not r.method or r.method == method) and (not r.path or path:find(r.path))
         and (not r.query or query:find(r.query)) and (not r.body or body:find(r.body)) then
        r.matched = r.matched + 1
        if r.matched > r.skip and (not r.probability or r.probability >= 1 or draw() < r.probability) then
          if r.count > 0 then r.count = r.count - 1 end
          r.fired = r.fired + 1
          return r, i
        end
      end
    end
    return nil
  end

  -- The rules as they stand (remaining count, how often matched and fired).
  function self.describe()
    local out = json.array{}
    for i, r in ipairs(self.rules) do
      out[i] = {
        method = r.method, path = r.path, query = r.query, body = r.body, action = r.action, status = r.status,
        retry_after = r.retry_after, code = r.code, delay_ms = r.delay_ms, count = r.count,
        skip = r.skip, probability = r.probability, matched = r.matched, fired = r.fired,
        spent = r.count == 0,
      }
    end
    return { rules = out, latency_ms = self.latency_ms, seed = self.seed }
  end

  -- Appends a request-log entry (assigns seq).
  function self.record(entry)
    self.seq = self.seq + 1
    entry.seq = self.seq
    self.log[self.seq] = entry
    if self.seq - self.log_first + 1 > M.MAX_LOG then
      self.log[self.log_first] = nil
      self.log_first = self.log_first + 1
    end
    return entry
  end

  -- Log entries with seq > since, in order.
  function self.requests(since)
    local out = json.array{}
    for s = math.max(self.log_first, (since or 0) + 1), self.seq do
      out[#out + 1] = self.log[s]
    end
    return out
  end

  function self.clear_requests()
    self.log, self.log_first = {}, self.seq + 1
  end

  return self
end

return M
