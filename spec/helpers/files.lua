-- Test helper: small file-system reads shared by the spec files.
local M = {}

-- The whole file, or nil when it cannot be read.
function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- The sorted entries of a directory (empty when it does not exist).
function M.ls(dir)
  local out = {}
  local p = assert(io.popen("ls -1 '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null"))
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

return M
