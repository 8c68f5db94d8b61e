-- `fiskaly status`: what is provisioned in this terminal's store (no secrets).
local json = require "fiskaly.json"

local M = {
  summary = "show what is provisioned in the store (organization, keys, TSS, clients)",
  usage = [[
usage: fiskaly status [--config FILE] [--store PATH] [--key-file PATH] [--remote] [--json]

Reads the store read-only (it is never modified) and lists the organization,
its API keys, every TSS (state, whether PUK and PIN are held) and clients.
--remote  also reads each TSS's and client's state from the service
          (needs --base-url / FISKALY_BASE_URL)
--json    machine-readable output

Configuration as for `fiskaly provision` (config file < environment < options):
FISKALY_STORE, FISKALY_KEY_FILE, FISKALY_BASE_URL; --config FILE (JSON or Lua).
Exit status: 0 ok, 1 the store cannot be read (or a remote read failed), 2 usage.
]],
}

local function errtext(e)
  if type(e) == "table" then return tostring(e.message or e.code) end
  return tostring(e)
end

local function yesno(b) return b and "yes" or "NO" end

function M.run(args)
  local cli = require "fiskaly.cli.provision"
  local o, perr = cli.parse_args(args, { ["--json"] = "json", ["--remote"] = "remote" })
  if not o or o.command then
    io.stderr:write("fiskaly status: ", perr or ("unexpected argument " .. tostring(o.command)), "\n", M.usage)
    return 2
  end
  local cfg, cerr = cli.load_config(o)
  if not cfg then
    io.stderr:write("fiskaly status: ", cerr, "\n")
    return 2
  end
  local st, serr = cli.open_store(cfg, true)
  if not st then
    io.stderr:write("fiskaly status: ", errtext(serr), "\n")
    return 1
  end
  local provision = require "fiskaly.provision"
  local list, lerr = provision.list(st)
  if not list then
    st:close()
    io.stderr:write("fiskaly status: ", errtext(lerr), "\n")
    return 1
  end
  local rc = 0
  if o.remote then
    local client, clerr = cli.new_client(cfg, false)
    if not client then
      st:close()
      io.stderr:write("fiskaly status: ", tostring(clerr), "\n")
      return 2
    end
    for _, org in ipairs(list.organizations) do
      local key = st:api_key_active(org.name)
      if key then
        local sign = client:with_credentials(key.api_key, key.secret).sign
        for _, t in ipairs(org.tss) do
          local r, err = sign:get_tss(t.tss_id)
          if r then
            t.remote_state = r.state
            t.signature_counter = r.signature_counter
          else
            t.remote_error = errtext(err)
            rc = 1
          end
          for _, c in ipairs(t.clients) do
            local rc2 = sign:get_client(t.tss_id, c.client_id)
            c.remote_state = rc2 and rc2.state or nil
          end
        end
      end
    end
  end
  st:close()
  if o.json then
    io.stdout:write(assert(json.encode(list)), "\n")
    return rc
  end
  local w = function(...) io.stdout:write(...) end
  w("store ", list.store, " (schema ", tostring(list.schema_version), ")\n")
  if #list.organizations == 0 then w("nothing provisioned yet (run `fiskaly provision`)\n") end
  for _, org in ipairs(list.organizations) do
    w("organization ", org.name, "  ", tostring(org.organization_id or "-"), "  ", org.state, "\n")
    for _, k in ipairs(org.api_keys) do
      w("  api key ", tostring(k.api_key or k.name), "  ", k.state, "  secret held: ", yesno(k.has_secret),
        k.reason and ("  (" .. k.reason .. ")") or "", "\n")
    end
    for _, t in ipairs(org.tss) do
      w("  TSS ", t.label, "  ", t.tss_id, "  ", t.state,
        t.remote_state and ("  (service: " .. t.remote_state .. ")") or "",
        t.remote_error and ("  (service: " .. t.remote_error .. ")") or "",
        "  PUK held: ", yesno(t.has_puk), "  PIN held: ", yesno(t.has_pin),
        t.pin_change_pending and "  PIN change pending" or "", t.reason and ("  (" .. t.reason .. ")") or "", "\n")
      for _, c in ipairs(t.clients) do
        w("    client ", c.client_id, "  ", c.serial_number, "  ", c.state,
          c.remote_state and ("  (service: " .. c.remote_state .. ")") or "", "\n")
      end
    end
  end
  w("open transactions in the journal: ", tostring(list.open_transactions), "\n")
  return rc
end

return M
