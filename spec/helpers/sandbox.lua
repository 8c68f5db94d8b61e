-- Test helper: one sandbox per test file, stopped at exit.
local sandbox = require "fiskaly.sandbox"

local M = {}

function M.start(args)
  local h = assert(sandbox.start{ args = args })
  return h
end

return M
