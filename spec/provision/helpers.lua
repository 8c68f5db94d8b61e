-- Shared helpers of the provisioning tests (spec/provision/test_*.lua).
local core = require "fiskaly.core"
local json = require "fiskaly.json"

local M = {}

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.quote = q

function M.tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. q(d)))
  return d
end

function M.rmdir(d)
  if d and d:match("^/tmp/") then os.execute("rm -rf " .. q(d)) end
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

function M.digest(path)
  local s = M.read_file(path)
  return s and core.crypto.hex(core.crypto.sha256(s)) or "missing"
end

function M.start_sandbox()
  return assert(require("fiskaly.sandbox").start{})
end

-- GET {base_url}/_sandbox/state, decoded.
function M.sandbox_state(h)
  local s = core.http.session{}
  local r = assert(s:request{ method = "GET", url = h.base_url .. "/_sandbox/state" })
  s:close()
  assert(r.status == 200, "sandbox state: HTTP " .. tostring(r.status))
  return assert(json.decode(r.body))
end

-- The managed organizations of the HUB group, the TSS and the API keys of an org.
function M.managed_orgs(state, group_id)
  local out = {}
  for _, o in ipairs(state.organizations) do
    if o.managed_by_organization_id == group_id then out[#out + 1] = o end
  end
  return out
end

function M.tss_of(state, org_id)
  local out = {}
  for _, t in ipairs(state.tss) do
    if t.organization_id == org_id then out[#out + 1] = t end
  end
  return out
end

function M.keys_of(state, org_id)
  local out = {}
  for _, k in ipairs(state.api_keys) do
    if k.organization_id == org_id then out[#out + 1] = k end
  end
  return out
end

function M.config(h, dir, extra)
  local cfg = {
    store = dir .. "/terminal.db",
    organization = { name = "Backstube Mitte", address_line1 = "Torstr. 1", zip = "10119", town = "Berlin",
      country_code = "DEU" },
    serial_number = "POS-001",
  }
  for k, v in pairs(extra or {}) do
    if v == false then cfg[k] = nil else cfg[k] = v end
  end
  local path = dir .. "/config.json"
  M.write_file(path, assert(json.encode(cfg)))
  return path, cfg
end

-- Runs `fiskaly <args>` with the sandbox's HUB credentials in the environment.
-- Returns how ("exit"|"signal"), code, output (stdout+stderr).
function M.run_cli(h, args, env, dir)
  local cli = assert(os.getenv("FISKALY_CLI"), "FISKALY_CLI not set")
  local vars = {
    FISKALY_BASE_URL = h.base_url, FISKALY_API_KEY = h.api_key, FISKALY_API_SECRET = h.api_secret,
    FISKALY_ORGANIZATION_ID = h.organization_id,
  }
  for k, v in pairs(env or {}) do vars[k] = v end
  local parts = { "env", "-u", "FISKALY_TEST_CRASH_AT" }
  local keys = {}
  for k in pairs(vars) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if vars[k] ~= false then parts[#parts + 1] = k .. "=" .. q(vars[k]) end
  end
  parts[#parts + 1] = q(cli)
  for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
  local out = (dir or "/tmp") .. "/cli-output.txt"
  local cmd = table.concat(parts, " ") .. " >" .. q(out) .. " 2>&1"
  local _, how, code = os.execute(cmd)
  local output = M.read_file(out) or ""
  os.remove(out)
  -- sh -c reports a child killed by signal N as exit 128+N
  if how == "exit" and code > 128 then how, code = "signal", code - 128 end
  return how, code, output
end

-- A fiskaly client for the sandbox's HUB account.
function M.hub_client(h)
  local fiskaly = require "fiskaly"
  return fiskaly.new{ base_url = h.base_url, api_key = h.api_key, api_secret = h.api_secret }
end

return M
