-- `fiskaly sandbox`: run the offline SIGN DE emulator in the foreground.
local M = {
  summary = "run the offline SIGN DE / Management API emulator in the foreground",
  usage = [[
usage: fiskaly sandbox [--port N] [sandbox options...]

Starts build/bin/fiskaly-sandbox on 127.0.0.1 and prints its base URL and the
credentials of a pre-seeded HUB account. Stop it with Ctrl-C. All options are
passed to the sandbox binary; `fiskaly-sandbox --help` lists them.
]],
}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function M.run(args)
  local bin = os.getenv("FISKALY_SANDBOX_BIN")
  if not bin or bin == "" then
    io.stderr:write("fiskaly sandbox: FISKALY_SANDBOX_BIN is not set\n")
    return 2
  end
  local cmd = { shell_quote(bin) }
  for _, a in ipairs(args) do cmd[#cmd + 1] = shell_quote(a) end
  local ok, how, code = os.execute(table.concat(cmd, " "))
  if ok then return 0 end
  if how == "signal" then return 128 + code end
  return code or 1
end

return M
