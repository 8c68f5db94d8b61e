-- `fiskaly export`: export a provisioned TSS (TAR, BSI TR-03153), download it and verify it offline.
local json = require "fiskaly.json"

local M = {
  summary = "export a TSS of the store as a TAR (TR-03153), download and verify it offline",
  usage = [[
usage: fiskaly export --out FILE.tar [--store PATH] [--tss ID|LABEL] [--poll-ms N] [--json]

Triggers an export of the TSS (the only one in the store, or --tss: its id or
label), polls it until COMPLETED, writes the TAR to --out and verifies every log
message and the signature counters offline (as `fiskaly verify --export`).
--poll-ms  pause between polls (default 5000; fiskaly allows 12 polls a minute)
--json     print the verification report as one JSON object

Configuration as for `fiskaly provision`: FISKALY_STORE, FISKALY_KEY_FILE,
FISKALY_BASE_URL; --config FILE. Exit status: 0 exported and valid, 1 failed or
invalid, 2 usage error.
]],
}

local function errtext(e)
  if type(e) == "table" then return tostring(e.message or e.code) end
  return tostring(e)
end

-- Takes "--out X" and "--poll-ms N" out of args (the rest goes to the provision parser).
local function own_opts(args)
  local rest, own = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    name = name or a
    if name == "--out" or name == "--poll-ms" then
      local v = inline or args[i + 1]
      if v == nil then return nil, name .. " needs a value" end
      own[name] = v
      i = i + (inline and 1 or 2)
    else
      rest[#rest + 1] = a
      i = i + 1
    end
  end
  return rest, own
end

function M.run(args)
  local function usage(msg)
    io.stderr:write("fiskaly export: ", msg, "\n", M.usage)
    return 2
  end
  local rest, own = own_opts(args)
  if not rest then return usage(own) end
  local cli = require "fiskaly.cli.provision"
  local o, perr = cli.parse_args(rest, { ["--json"] = "json" })
  if not o or o.command then return usage(perr or ("unexpected argument " .. tostring(o.command))) end
  if not own["--out"] then return usage("--out FILE.tar is required") end
  local poll_ms = 5000
  if own["--poll-ms"] then
    poll_ms = math.tointeger(tonumber(own["--poll-ms"]))
    if not poll_ms or poll_ms < 0 then return usage("--poll-ms must be a non-negative integer") end
  end
  local cfg, cerr = cli.load_config(o)
  if not cfg then return usage(cerr) end
  local st, serr = cli.open_store(cfg, true)
  if not st then
    io.stderr:write("fiskaly export: ", errtext(serr), "\n")
    return 1
  end
  local list, lerr = require("fiskaly.provision").list(st)
  if not list then
    st:close()
    io.stderr:write("fiskaly export: ", errtext(lerr), "\n")
    return 1
  end
  local found = {}
  for _, org in ipairs(list.organizations) do
    for _, t in ipairs(org.tss) do
      if not o.tss or o.tss == t.tss_id or o.tss == t.label then found[#found + 1] = { org = org, tss = t } end
    end
  end
  if #found ~= 1 then
    st:close()
    return usage(#found == 0 and "no such TSS in the store" or "the store has several TSS: choose one with --tss")
  end
  local key = st:api_key_active(found[1].org.name)
  st:close()
  if not key then
    io.stderr:write("fiskaly export: the store holds no active API key for this organization\n")
    return 1
  end
  local client, clerr = cli.new_client(cfg, false)
  if not client then return usage(tostring(clerr)) end
  local sign = client:with_credentials(key.api_key, key.secret).sign
  local report, err = require("fiskaly.export").run(sign, found[1].tss.tss_id,
    { path = own["--out"], poll_ms = poll_ms })
  client:close()
  if not report then
    io.stderr:write("fiskaly export: ", errtext(err), "\n")
    return 1
  end
  if o.json then
    io.stdout:write(assert(json.encode(report)), "\n")
  else
    local w = function(...) io.stdout:write(...) end
    for _, m in ipairs(report.messages) do
      if not m.valid then w("FAIL ", m.name, ": ", tostring(m.reason), "\n") end
    end
    for _, g in ipairs(report.gaps) do
      w("gap: counters ", g.from, " to ", g.to, " of ", g.serial_number, " missing\n")
    end
    w(report.valid and "VALID" or "INVALID", ": export ", report.export_id, " -> ", report.path, " (",
      report.bytes, " bytes), ", report.counts.valid, " of ", report.counts.total, " log messages verified",
      report.valid and "" or (" (" .. tostring(report.reason) .. ")"), "\n")
  end
  return report.valid and 0 or 1
end

return M
