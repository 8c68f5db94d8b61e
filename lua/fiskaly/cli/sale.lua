-- `fiskaly sale`: map a POS sale through a plugin and sign it on the
-- provisioned TSS client of a store; or settle what a crash left open.
local json = require "fiskaly.json"

local M = {
  summary = "sign a sale (POS JSON -> plugin -> SIGN DE transaction -> verified QR code)",
  usage = [[
usage: fiskaly sale --plugin NAME [options] SALE.json    sign one sale ("-" reads stdin)
       fiskaly sale --recover [options]                 settle sales a crash left open
       fiskaly sale --sweep [--min-age S] [options]     cancel this client's ACTIVE orphans
                                                        older than S seconds (default 300)

Options:
  --store PATH      the terminal's store, set up by `fiskaly provision`  [$FISKALY_STORE]
  --key-file PATH   key sealing the store's secrets (default <store>.key) [$FISKALY_KEY_FILE]
  --base-url URL    fiskaly (or sandbox) base URL                        [$FISKALY_BASE_URL]
  --ca-file PEM     CA bundle to trust
  --plugins DIRS    plugin directories, colon-separated    [$FISKALY_PLUGIN_PATH, else ./plugins]
  --conf FILE       plugin configuration (JSON)
  --tss TSS         TSS id or label (default: the first INITIALIZED one)
  --client SERIAL   client serial or id (default: the first REGISTERED one)
  --json            print the result as JSON

Prints the QR code data for the receipt, the transaction number, signature
counter and times. Every sale is journaled in the store before it is sent.
Exit status: 0 signed and verified; 3 completed WITHOUT a signature because
the TSE could not be reached (print "TSE ausgefallen" on the receipt; the
journal records it); 1 refused (the error says why; nothing was signed);
2 usage error.
]],
}

local VALUE_OPTS = { ["--store"] = "store", ["--key-file"] = "key_file", ["--base-url"] = "base_url",
  ["--ca-file"] = "ca_file", ["--plugins"] = "plugins", ["--conf"] = "conf", ["--tss"] = "tss",
  ["--client"] = "client", ["--plugin"] = "plugin", ["--min-age"] = "min_age" }

local function parse(args)
  local o = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if VALUE_OPTS[a] then
      if args[i + 1] == nil then return nil, a .. " needs a value" end
      o[VALUE_OPTS[a]] = args[i + 1]
      i = i + 2
    elseif a == "--json" or a == "--recover" or a == "--sweep" then
      o[a:sub(3)] = true
      i = i + 1
    elseif a:sub(1, 2) == "--" then
      return nil, "unknown option " .. a
    else
      if o.file then return nil, "more than one sale file given" end
      o.file = a
      i = i + 1
    end
  end
  o.store = o.store or os.getenv("FISKALY_STORE")
  o.key_file = o.key_file or os.getenv("FISKALY_KEY_FILE")
  o.base_url = o.base_url or os.getenv("FISKALY_BASE_URL")
  if not o.store then return nil, "no store: give --store or set FISKALY_STORE" end
  if o.min_age and not math.tointeger(tonumber(o.min_age)) then return nil, "--min-age must be an integer" end
  if not o.recover and not o.sweep then
    if not o.plugin then return nil, "--plugin is required" end
    if not o.file then return nil, "no sale file given" end
  end
  return o
end

local function read_json(path)
  local f, err
  if path == "-" then f = io.stdin else f, err = io.open(path, "rb") end
  if not f then return nil, "cannot read " .. path .. ": " .. tostring(err) end
  local text = f:read("a")
  if f ~= io.stdin then f:close() end
  local v, jerr = json.decode(text)
  if v == nil then return nil, path .. ": " .. tostring(jerr) end
  return v
end

local function emit(o, res)
  if o.json then
    io.stdout:write(assert(json.encode(res)), "\n")
    return
  end
  if res.outage then
    io.stdout:write("TSE ausgefallen: the sale is recorded (", res.tx_id, ") without a signature\n")
    io.stdout:write("reason: ", tostring(res.error), "\n")
    return
  end
  io.stdout:write("transaction ", res.tx_id, " no. ", tostring(res.number), " ", res.state,
    ", signature counter ", tostring(res.signature_counter), ", signature verified (", tostring(res.curve), ")\n")
  io.stdout:write("process data: ", tostring(res.process_data), "\n")
  io.stdout:write("QR code data:\n", res.qr_code_data, "\n")
  if res.warning then io.stdout:write("warning: ", res.warning, "\n") end
end

function M.run(args)
  local o, perr = parse(args)
  if not o then
    io.stderr:write("fiskaly sale: ", perr, "\n\n", M.usage)
    return 2
  end
  local conf
  if o.conf then
    local cerr
    conf, cerr = read_json(o.conf)
    if conf == nil then io.stderr:write("fiskaly sale: ", cerr, "\n") return 2 end
  end
  local sale
  if not o.recover and not o.sweep then
    local serr
    sale, serr = read_json(o.file)
    if sale == nil then io.stderr:write("fiskaly sale: ", serr, "\n") return 2 end
  end
  local plugins
  if o.plugins then
    plugins = {}
    for d in o.plugins:gmatch("[^:]+") do plugins[#plugins + 1] = d end
  end
  local till, err = require("fiskaly.till").open{
    store = o.store, key_file = o.key_file, base_url = o.base_url, ca_file = o.ca_file,
    plugins = plugins, tss = o.tss, client = o.client,
  }
  if not till then
    io.stderr:write("fiskaly sale: ", tostring(err), "\n")
    return 1
  end
  local res
  if o.recover then
    res, err = till:recover()
  elseif o.sweep then
    res, err = till:sweep{ min_age_s = o.min_age and math.tointeger(tonumber(o.min_age)) or nil }
  else
    res, err = till:sale(sale, { plugin = o.plugin, conf = conf })
  end
  till:close()
  if not res then
    io.stderr:write("fiskaly sale: ", tostring(err), "\n")
    if type(err) == "table" and type(err.errors) == "table" and #err.errors > 1 then
      for _, e in ipairs(err.errors) do
        io.stderr:write("  ", tostring(e.field or "?"), ": ", tostring(e.message), "\n")
      end
    end
    return 1
  end
  if o.sweep then
    if o.json then
      io.stdout:write(assert(json.encode(res)), "\n")
    else
      io.stdout:write(string.format("%d ACTIVE transactions of this client: %d cancelled, %d younger than the minimum age\n",
        res.found, res.cancelled, res.skipped))
    end
    return 0
  end
  if o.recover then
    if o.json then
      io.stdout:write(assert(json.encode(res)), "\n")
    else
      io.stdout:write(string.format("checked %d open sales: %d finished, %d cancelled, %d void, %d outage records kept\n",
        res.checked, res.finished, res.cancelled, res.void, res.kept))
    end
    return 0
  end
  emit(o, res)
  return res.outage and 3 or 0
end

return M
