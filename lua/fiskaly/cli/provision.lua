-- `fiskaly provision`: run (or resume) the setup from organization to client,
-- and the operations after it (change PIN, disable a TSS, add/deactivate a client).
local json = require "fiskaly.json"

local M = {
  summary = "set up (or resume) organization, API key, TSS, admin PIN and clients; crash-safe",
  usage = [[
usage: fiskaly provision [options]                 run or resume the whole setup
       fiskaly provision change-pin --tss TSS       new admin PIN (set with the PUK)
       fiskaly provision disable-tss --tss TSS      disable a TSS (irreversible)
       fiskaly provision add-client --tss TSS --serial SERIAL
       fiskaly provision deactivate-client --client CLIENT_ID [--reactivate]

TSS is a TSS id or its label ("default" unless the configuration names them).

Options:
  --config FILE      configuration (JSON, or a Lua file returning a table)
  --store PATH       SQLite store of this terminal            [$FISKALY_STORE]
  --key-file PATH    key sealing the secrets (default: <store>.key, created
                     with mode 0600 on first use)             [$FISKALY_KEY_FILE]
  --base-url URL     fiskaly (or sandbox) base URL            [$FISKALY_BASE_URL]
  --ca-file PEM      CA bundle to trust
  --org-name NAME --address LINE --zip ZIP --town TOWN [--country DEU]
                     the managed organization (or "organization" in the config)
  --serial SERIAL    client serial number for the default TSS (repeatable)
  --json             print the result as JSON
  --quiet            no per-step progress

Environment: FISKALY_API_KEY, FISKALY_API_SECRET (HUB credentials with
management rights), FISKALY_ORGANIZATION_ID (your HUB group: the managed
organization's managed_by_organization_id), FISKALY_BASE_URL, FISKALY_STORE,
FISKALY_KEY_FILE. Precedence: options > environment > config file.

Config file keys: base_url, api_key, api_secret, organization_id, store,
key_file, ca_file, busy_timeout_ms (default 5000), organization = { name, address_line1, zip, town,
country_code, ... }, tss = [ { label, clients = [ serial, ... ] } ],
serial_number (shorthand: one TSS "default" with one client).

Every step is recorded in the store before and after its call; secrets (API
secret, PUK, PIN) are sealed in the store and never printed. Interrupt it at
any point and run it again: it continues where it stopped, creating nothing twice.
Exit status: 0 done, 1 failed (the store says how far it got), 2 usage.
]],
}

local ENV = {
  base_url = "FISKALY_BASE_URL", api_key = "FISKALY_API_KEY", api_secret = "FISKALY_API_SECRET",
  organization_id = "FISKALY_ORGANIZATION_ID", store = "FISKALY_STORE", key_file = "FISKALY_KEY_FILE",
}

-- Reads a JSON or Lua configuration file. Returns a table, or nil, err.
function M.read_config_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read config: " .. tostring(err) end
  local text = f:read("a")
  f:close()
  if path:match("%.lua$") then
    local chunk, lerr = load(text, "@" .. path, "t", {})
    if not chunk then return nil, "config " .. path .. ": " .. tostring(lerr) end
    local ok, v = pcall(chunk)
    if not ok then return nil, "config " .. path .. ": " .. tostring(v) end
    if type(v) ~= "table" then return nil, "config " .. path .. ": must return a table" end
    return v
  end
  local v, jerr = json.decode(text)
  if type(v) ~= "table" then return nil, "config " .. path .. ": " .. tostring(jerr or "not a JSON object") end
  return v
end

-- Parses the command line. Returns opts, or nil, err.
local VALUE_OPTS = { ["--config"] = "config", ["--store"] = "store", ["--key-file"] = "key_file",
  ["--base-url"] = "base_url", ["--ca-file"] = "ca_file", ["--org-name"] = "org_name",
  ["--address"] = "address", ["--zip"] = "zip", ["--town"] = "town", ["--country"] = "country",
  ["--tss"] = "tss", ["--client"] = "client" }

function M.parse_args(args, flags)
  local o = { serials = {} }
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    name = name or a
    if VALUE_OPTS[name] or name == "--serial" then
      local v = inline or args[i + 1]
      if v == nil then return nil, name .. " needs a value" end
      if name == "--serial" then o.serials[#o.serials + 1] = v else o[VALUE_OPTS[name]] = v end
      i = i + (inline and 1 or 2)
    elseif flags and flags[name] then
      o[flags[name]] = true
      i = i + 1
    elseif not a:match("^%-") and not o.command then
      o.command = a
      i = i + 1
    else
      return nil, "unknown option " .. a
    end
  end
  return o
end

-- Merges config file < environment < options. Returns cfg, or nil, err.
function M.load_config(o)
  local cfg = {}
  if o.config then
    local file, err = M.read_config_file(o.config)
    if not file then return nil, err end
    cfg = file
  end
  for k, var in pairs(ENV) do
    local v = os.getenv(var)
    if v and v ~= "" then cfg[k] = v end
  end
  for _, k in ipairs{ "store", "key_file", "base_url", "ca_file" } do
    if o[k] then cfg[k] = o[k] end
  end
  if o.org_name or o.address or o.zip or o.town then
    cfg.organization = cfg.organization or {}
    local org = cfg.organization
    org.name = o.org_name or org.name
    org.address_line1 = o.address or org.address_line1
    org.zip = o.zip or org.zip
    org.town = o.town or org.town
  end
  if cfg.organization then
    cfg.organization.country_code = o.country or cfg.organization.country_code or "DEU"
  end
  if o.serials and #o.serials > 0 then
    cfg.tss = { { label = "default", clients = o.serials } }
  end
  if not cfg.store or cfg.store == "" then
    return nil, "no store: use --store PATH, FISKALY_STORE or \"store\" in the config"
  end
  return cfg
end

function M.open_store(cfg, readonly)
  local store = require "fiskaly.store"
  return store.open{ path = cfg.store, key_file = cfg.key_file, readonly = readonly,
    busy_timeout_ms = math.tointeger(tonumber(cfg.busy_timeout_ms)) }
end

function M.new_client(cfg, need_secret)
  if not cfg.base_url then return nil, "no base URL: use --base-url, FISKALY_BASE_URL or \"base_url\"" end
  if need_secret and not (cfg.api_key and cfg.api_secret) then
    return nil, "no HUB credentials: set FISKALY_API_KEY and FISKALY_API_SECRET (or api_key/api_secret in the config)"
  end
  local fiskaly = require "fiskaly"
  return fiskaly.new{ base_url = cfg.base_url, api_key = cfg.api_key or "unused",
    api_secret = cfg.api_secret or "unused", ca_file = cfg.ca_file }
end

local function progress_printer(quiet)
  if quiet then return nil end
  return function(ev)
    if ev.status == "start" then return end
    io.stdout:write(string.format("[%-12s] %-16s %-6s %s\n", ev.scope, ev.step, ev.status, ev.detail or ""))
    io.stdout:flush()
  end
end

local function errtext(e)
  if type(e) == "table" then
    local s = tostring(e.message or e.code or "error")
    if e.code and not s:find(tostring(e.code), 1, true) then s = s .. " [" .. tostring(e.code) .. "]" end
    return s
  end
  return tostring(e)
end

function M.run(args)
  local o, perr = M.parse_args(args, { ["--json"] = "json", ["--quiet"] = "quiet", ["--reactivate"] = "reactivate" })
  if not o then
    io.stderr:write("fiskaly provision: ", perr, "\n", M.usage)
    return 2
  end
  local cfg, cerr = M.load_config(o)
  if not cfg then
    io.stderr:write("fiskaly provision: ", cerr, "\n")
    return 2
  end
  local provision = require "fiskaly.provision"
  local client, clerr = M.new_client(cfg, o.command == nil)
  if not client then
    io.stderr:write("fiskaly provision: ", tostring(clerr), "\n")
    return 2
  end
  local st, serr = M.open_store(cfg, false)
  if not st then
    io.stderr:write("fiskaly provision: ", errtext(serr), "\n")
    return 1
  end
  local on_step = progress_printer(o.quiet or o.json)
  local res, err
  local common = { store = st, client = client, on_step = on_step }
  if o.command == nil then
    common.config = cfg
    res, err = provision.run(common)
  elseif o.command == "change-pin" then
    if not o.tss then io.stderr:write("fiskaly provision change-pin: --tss required\n") st:close() return 2 end
    common.tss = o.tss
    res, err = provision.change_admin_pin(common)
  elseif o.command == "disable-tss" then
    if not o.tss then io.stderr:write("fiskaly provision disable-tss: --tss required\n") st:close() return 2 end
    common.tss = o.tss
    res, err = provision.disable_tss(common)
  elseif o.command == "add-client" then
    if not (o.tss and o.serials[1]) then
      io.stderr:write("fiskaly provision add-client: --tss and --serial required\n") st:close() return 2
    end
    common.tss, common.serial_number = o.tss, o.serials[1]
    res, err = provision.add_client(common)
  elseif o.command == "deactivate-client" then
    if not o.client then io.stderr:write("fiskaly provision deactivate-client: --client required\n") st:close() return 2 end
    common.client_id = o.client
    common.state = o.reactivate and "REGISTERED" or "DEREGISTERED"
    res, err = provision.deactivate_client(common)
  else
    io.stderr:write("fiskaly provision: unknown command ", o.command, "\n", M.usage)
    st:close()
    return 2
  end
  if not res then
    st:close()
    io.stderr:write("fiskaly provision: ", errtext(err), "\n")
    io.stderr:write("(progress is kept in ", cfg.store, "; run the same command again to resume)\n")
    return 1
  end
  local list = provision.list(st)
  st:close()
  if o.json then
    io.stdout:write(assert(json.encode(o.command and list or res)), "\n")
  elseif o.command == nil then
    io.stdout:write("provisioned: organization ", tostring(res.organization_id), "\n")
    for _, t in ipairs(res.tss) do
      io.stdout:write("  TSS ", t.label, " ", t.tss_id, " ", tostring(t.state), "\n")
      for _, c in ipairs(t.clients) do
        io.stdout:write("    client ", c.client_id, " ", c.serial_number, " ", c.state, "\n")
      end
    end
  end
  return 0
end

return M
