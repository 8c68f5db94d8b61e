-- sandbox.errors: fiskaly-format error responses.
-- Handlers raise an error object with errors.raise(status, code, message); the
-- server turns it into {status_code, error, code, message} (code may be JSON null,
-- as fiskaly sends for bad credentials).
local json = require "fiskaly.json"

local M = {}

M.reason = {
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [409] = "Conflict", [413] = "Payload Too Large",
  [415] = "Unsupported Media Type", [423] = "Locked", [429] = "Too Many Requests",
  [432] = "Use Middleware", [500] = "Internal Server Error", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

local err_mt = { __name = "sandbox.error" }
err_mt.__tostring = function(e) return string.format("%d %s: %s", e.status, tostring(e.code), e.message) end

-- An error object (not raised). code nil means JSON null.
function M.new(status, code, message)
  return setmetatable({ status = status, code = code, message = message }, err_mt)
end

function M.is(e)
  return getmetatable(e) == err_mt
end

function M.raise(status, code, message)
  error(M.new(status, code, message), 0)
end

-- The JSON body of an error object.
function M.body(e)
  return {
    status_code = e.status,
    error = M.reason[e.status] or "Error",
    code = e.code == nil and json.null or e.code,
    message = e.message,
  }
end

-- Shorthands for the errors every resource uses.
function M.schema(message) M.raise(400, "E_FAILED_SCHEMA_VALIDATION", message) end
function M.tss_not_found(id) M.raise(404, "E_TSS_NOT_FOUND", "TSS " .. tostring(id) .. " not found") end

return M
