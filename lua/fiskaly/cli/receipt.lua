-- `fiskaly receipt`: check a receipt-mapping plugin against a sale, list plugins.
local receipt = require "fiskaly.receipt"
local json = require "fiskaly.json"
local money = require "fiskaly.money"

local M = {
  summary = "check a receipt-mapping plugin against a sale (receipt check / receipt list)",
  usage = [[
usage: fiskaly receipt check <plugin> <sale.json> [--plugins DIR]... [--conf conf.json] [--json]
       fiskaly receipt list [--plugins DIR]... [--json]

check  maps the sale (the POS sale JSON, see docs/plugins.md) through the
       plugin, validates the result against SIGN DE standard_v1 and prints the
       receipt body that would be sent, its process_data string, and the
       plugin's log; or every validation error, one per line.
list   shows the plugins found, their versions and load errors.

--plugins DIR  plugin directory (repeatable; default $FISKALY_PLUGIN_PATH,
               colon-separated, else ./plugins)
--conf FILE    the plugin's configuration (JSON object; defaults from its schema)
--json         machine-readable output

Exit status: 0 mapped and valid, 1 rejected (plugin error or validation),
2 usage error or unreadable input.
]],
}

local function read_json(path, what)
  local f, ferr = io.open(path, "rb")
  if not f then return nil, ("cannot read %s: %s"):format(what, ferr) end
  local text = f:read("a")
  f:close()
  local v, err = json.decode(text)
  if v == nil then return nil, ("%s %s: %s"):format(what, path, err or "empty") end
  if type(v) ~= "table" then return nil, ("%s %s: expected a JSON object"):format(what, path) end
  return v
end

local function parse_args(args)
  local o = { positional = {}, plugins = {} }
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--plugins" or a == "--conf" then
      local v = args[i + 1]
      if not v then return nil, a .. " needs a value" end
      if a == "--plugins" then o.plugins[#o.plugins + 1] = v else o.conf = v end
      i = i + 2
    elseif a == "--json" then
      o.json = true
      i = i + 1
    elseif a:sub(1, 2) == "--" then
      return nil, "unknown option " .. a
    else
      o.positional[#o.positional + 1] = a
      i = i + 1
    end
  end
  return o
end

local function engine_for(o)
  return receipt.new { paths = #o.plugins > 0 and o.plugins or nil }
end

local function error_table(err)
  local errors = json.array {}
  for i, e in ipairs(err.errors or {}) do errors[i] = { field = e.field, message = e.message } end
  return { kind = err.kind, plugin = err.plugin, field = err.field, message = err.message,
    errors = errors, text = tostring(err) }
end

local function check(o)
  local name, sale_path = o.positional[2], o.positional[3]
  if not name or not sale_path or o.positional[4] then
    io.stderr:write("fiskaly receipt check: expected <plugin> <sale.json>\n", M.usage)
    return 2
  end
  local sale, err = read_json(sale_path, "sale")
  if not sale then io.stderr:write("fiskaly receipt check: ", err, "\n"); return 2 end
  local conf
  if o.conf then
    conf, err = read_json(o.conf, "conf")
    if not conf then io.stderr:write("fiskaly receipt check: ", err, "\n"); return 2 end
  end
  local r, merr = engine_for(o):map(name, sale, conf)
  if o.json then
    local out
    if r then
      out = { ok = true, plugin = r.plugin, version = r.version, schema = { standard_v1 = r.standard_v1 },
        process_type = r.process_type, process_data = r.process_data,
        process_data_base64 = r.process_data_base64, totals = r.totals,
        log = json.array(r.log), warnings = json.array(r.warnings) }
      out.totals.payments = json.array(out.totals.payments)
    else
      out = { ok = false, error = error_table(merr) }
    end
    io.stdout:write(assert(json.encode(out)), "\n")
    return r and 0 or 1
  end
  if not r then
    local errs = merr.errors or {}
    if #errs > 1 then
      io.stdout:write(("REJECTED (%d errors) plugin %q:\n"):format(#errs, merr.plugin or name))
      for _, e in ipairs(errs) do io.stdout:write("  ", e.field, ": ", e.message, "\n") end
    else
      io.stdout:write("REJECTED ", tostring(merr), "\n")
    end
    return 1
  end
  local body = r.standard_v1.receipt
  local w = function(...) io.stdout:write(...) end
  w(("OK plugin %s %s\n"):format(r.plugin, r.version))
  w(("receipt_type  %s\n"):format(body.receipt_type))
  w(("total         %s\n"):format(money.format(r.totals.total)))
  for _, e in ipairs(body.amounts_per_vat_rate) do
    w(("vat           %-15s %12s\n"):format(e.vat_rate, e.amount))
  end
  for _, e in ipairs(body.amounts_per_payment_type) do
    w(("payment       %-15s %12s %s\n"):format(e.payment_type, e.amount, e.currency_code))
  end
  if r.totals.change ~= 0 then w(("change        %s (given in EUR cash)\n"):format(money.format(r.totals.change))) end
  w(("process_type  %s\n"):format(r.process_type))
  w(("process_data  %s\n"):format(r.process_data))
  if r.process_data_base64 then w(("base64        %s\n"):format(r.process_data_base64)) end
  for _, l in ipairs(r.log) do w("log           ", l, "\n") end
  for _, l in ipairs(r.warnings) do w("WARNING       ", l, "\n") end
  w("body          ", assert(json.encode(r.standard_v1)), "\n")
  return 0
end

local function list(o)
  if o.positional[2] then
    io.stderr:write("fiskaly receipt list: unexpected argument ", o.positional[2], "\n")
    return 2
  end
  local l = engine_for(o):list()
  if o.json then
    io.stdout:write(assert(json.encode(json.array(l))), "\n")
  else
    for _, p in ipairs(l) do
      io.stdout:write(("%-16s %-8s %s\n"):format(p.name, p.version or "-", p.error or p.path or ""))
    end
  end
  for _, p in ipairs(l) do if p.error then return 1 end end
  return 0
end

function M.run(args)
  local o, err = parse_args(args)
  if not o then
    io.stderr:write("fiskaly receipt: ", err, "\n", M.usage)
    return 2
  end
  local sub = o.positional[1]
  if sub == "check" then return check(o) end
  if sub == "list" then return list(o) end
  io.stderr:write("fiskaly receipt: expected check or list\n", M.usage)
  return 2
end

return M
