-- fiskaly.runtime: how the library waits (HTTP exchanges, backoff sleeps).
--
--   runtime.request(session, req) -> same results as session:request(req)
--   runtime.sleep(ms)
--   runtime.now_ms()              -> monotonic milliseconds (integer)
--
-- Outside a runtime task these block (session:request drives curl itself;
-- sleep uses nanosleep, no busy wait).  The non-blocking scheduler (spawn,
-- step, run) is built on the same names, so client code calls these three
-- and works in both modes.
local core = require "fiskaly.core"

local http = core.http

local M = {}

function M.now_ms()
  return http.now_ms()
end

function M.request(session, req)
  return session:request(req)
end

function M.sleep(ms)
  if math.type(ms) ~= "integer" then
    if type(ms) ~= "number" or ms ~= ms then error("runtime.sleep: ms must be a number", 2) end
    ms = math.ceil(ms)
  end
  if ms <= 0 then return end
  http.sleep_ms(ms)
end

return M
