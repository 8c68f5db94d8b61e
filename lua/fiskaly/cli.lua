-- fiskaly command line: `fiskaly <command> [options]`.
-- Each command lives in lua/fiskaly/cli/<command>.lua and returns a table
-- { summary = "...", usage = "...", run = function(args) -> exit_code }.
local COMMANDS = { "demo", "sandbox", "provision", "status", "sale", "verify", "export", "receipt" }

local function load_command(name)
  local ok, mod = pcall(require, "fiskaly.cli." .. name)
  if not ok then return nil, mod end
  return mod
end

local function usage(out)
  out:write("usage: fiskaly <command> [options]\n\ncommands:\n")
  for _, name in ipairs(COMMANDS) do
    local mod = load_command(name)
    if mod then out:write(string.format("  %-10s %s\n", name, mod.summary or "")) end
  end
  out:write("\n`fiskaly <command> --help` shows a command's options.\n")
end

local function main(argv)
  local name = argv[1]
  if name == nil or name == "--help" or name == "-h" or name == "help" then
    usage(name and io.stdout or io.stderr)
    return name and 0 or 2
  end
  if name == "--version" then
    io.stdout:write("fiskaly ", require("fiskaly.core").version, "\n")
    return 0
  end
  local known = false
  for _, n in ipairs(COMMANDS) do known = known or n == name end
  local mod, err = nil, "unknown command"
  if known then mod, err = load_command(name) end
  if not mod then
    io.stderr:write("fiskaly: ", name, ": ", tostring(err), "\n")
    if not known then usage(io.stderr) end
    return 2
  end
  local args = table.move(argv, 2, #argv, 1, {})
  for _, a in ipairs(args) do
    if a == "--help" or a == "-h" then
      io.stdout:write(mod.usage or ("usage: fiskaly " .. name .. "\n"))
      return 0
    end
  end
  return mod.run(args)
end

os.exit(main(arg), true)
