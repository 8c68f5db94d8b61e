-- fiskaly.sandbox: start the offline SIGN DE / Management emulator as a child
-- process and read its connection details. Used by `fiskaly demo`, the tests
-- and integrators without network access.
local M = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Starts build/bin/fiskaly-sandbox (path from opts.bin or $FISKALY_SANDBOX_BIN).
-- opts.args: extra command-line arguments (list of strings); opts.tls = true adds
-- --tls (HTTPS with a CA made for this run).
-- Returns a handle { base_url, api_key, api_secret, organization_id, ca_file (with
-- --tls: the CA PEM to trust), env = {...}, stop = function } or nil, err. The
-- sandbox dies with this process.
function M.start(opts)
  opts = opts or {}
  local bin = opts.bin or os.getenv("FISKALY_SANDBOX_BIN")
  if not bin or bin == "" then
    return nil, "fiskaly.sandbox: no sandbox binary (set FISKALY_SANDBOX_BIN or opts.bin)"
  end
  local cmd = { "exec", shell_quote(bin), "--port", tostring(opts.port or 0), "--die-with-parent" }
  if opts.tls then cmd[#cmd + 1] = "--tls" end
  for _, a in ipairs(opts.args or {}) do cmd[#cmd + 1] = shell_quote(a) end
  local p, perr = io.popen(table.concat(cmd, " "), "r")
  if not p then return nil, "fiskaly.sandbox: cannot start " .. bin .. ": " .. tostring(perr) end
  local env = {}
  for _ = 1, 16 do
    local line = p:read("l")
    if not line then break end
    local k, v = line:match("^([A-Z_]+)=(.*)$")
    if not k then break end
    env[k] = v
    if k == "FISKALY_SANDBOX_PID" then break end
  end
  if not env.FISKALY_BASE_URL then
    p:close()
    return nil, "fiskaly.sandbox: " .. bin .. " did not print FISKALY_BASE_URL"
  end
  local h = {
    base_url = env.FISKALY_BASE_URL,
    api_key = env.FISKALY_API_KEY,
    api_secret = env.FISKALY_API_SECRET,
    organization_id = env.FISKALY_ORGANIZATION_ID,
    ca_file = env.FISKALY_CA_FILE,
    pid = tonumber(env.FISKALY_SANDBOX_PID),
    env = env,
    _pipe = p,
  }
  function h.stop()
    if h._pipe then
      -- Terminate it, then reap it (close waits for the child).
      local pid = tonumber(env.FISKALY_SANDBOX_PID)
      if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
      h._pipe:close()
      h._pipe = nil
    end
  end
  setmetatable(h, { __gc = function(self) self.stop() end, __close = function(self) self.stop() end })
  return h
end

return M
