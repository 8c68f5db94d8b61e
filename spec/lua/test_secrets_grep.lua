-- No secret in any log event or error message of a full run with faults.
--
-- Every secret that crosses the wire is collected by wrapping
-- fiskaly.runtime.request (the client's only way to the network): the API
-- secrets and admin PIN/PUK values in request bodies, every bearer token in an
-- Authorization header, every access and refresh token in an auth answer, the
-- admin PUK in the TSS answer. Then a full flow runs against the
-- fault-injecting sandbox (429, 503, drops, expired and revoked tokens, a
-- wrong PIN, a wrong PUK, wrong credentials, an open circuit breaker, an
-- unreachable host, validation errors), capturing every log event and every
-- error (tostring and every field), and the haystack is searched for every
-- secret.
local lu = require "luaunit"
local fiskaly = require "fiskaly"
local json = require "fiskaly.json"
local runtime = require "fiskaly.runtime"
local helper = require "helpers.sandbox"
local R = require "helpers.reliability"

local sb = helper.start()
local ctl = R.control(sb)

-------------------------------------------------------------------- secrets off the wire
local secrets, secret_kinds, bearers = {}, {}, {}
local function add_secret(kind, v)
  if type(v) == "string" and #v >= 4 and not secrets[v] then
    secrets[v] = kind
    secret_kinds[kind] = (secret_kinds[kind] or 0) + 1
  end
end

local SECRET_FIELDS = { api_secret = "api_secret", admin_pin = "pin", new_admin_pin = "pin", admin_puk = "puk",
  refresh_token = "refresh_token", access_token = "access_token", secret = "api_secret" }

local function harvest(body)
  local t = type(body) == "string" and body ~= "" and json.decode(body)
  if type(t) ~= "table" then return end
  for k, kind in pairs(SECRET_FIELDS) do add_secret(kind, t[k]) end
end

local real_request = runtime.request
runtime.request = function(session, req)
  local auth = req.headers and req.headers["Authorization"]
  if auth then
    local tok = auth:match("^Bearer (.+)$")
    bearers[tok] = true
    add_secret("bearer", tok)
  end
  harvest(req.body)
  local res, err = real_request(session, req)
  if res then harvest(res.body) end
  return res, err
end

-------------------------------------------------------------------- the haystack
local hay = {}
local function dump(v, seen)
  seen = seen or {}
  if type(v) == "table" then
    if seen[v] then return end
    seen[v] = true
    local mt = getmetatable(v)
    if mt and mt.__tostring then hay[#hay + 1] = tostring(v) end
    for k, x in pairs(v) do
      hay[#hay + 1] = tostring(k)
      dump(x, seen)
    end
  else
    hay[#hay + 1] = tostring(v)
  end
end

local events = {}
local function log(ev) events[#events + 1] = ev end
local errs = {}
local function keep(res, err)
  if res == nil and err ~= nil then errs[#errs + 1] = err end
  return res, err
end

local function leaks()
  local text = table.concat(hay, "\n")
  local found = {}
  for s, kind in pairs(secrets) do
    if text:find(s, 1, true) then found[#found + 1] = kind end
  end
  table.sort(found)
  return found
end

TestSecretsGrep = {}

function TestSecretsGrep.test_full_run_with_faults_leaks_no_secret()
  local FAST = { attempts = 8, base_ms = 5, max_ms = 20, seed = 99 }
  local hub = assert(fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret,
    retry = FAST, log = log })
  add_secret("api_secret", sb.api_secret)
  local org = assert(hub.management:create_organization{
    name = "Secrets Grep", managed_by_organization_id = sb.organization_id,
    address_line1 = "Hauptstr. 1", zip = "80331", town = "Muenchen", country_code = "DEU" })
  local key = assert(hub.management:create_api_key(org._id, { name = "grep", status = "enabled" }))
  local pos = hub:with_credentials(key.key, key.secret)
  local tss_id, client_id = fiskaly.uuid4(), fiskaly.uuid4()
  local PIN = "grep-pin-271828"

  -- provisioning, with faults on the way
  ctl.faults{
    { method = "PUT", path = "^/api/v2/tss/[^/]+$", action = "drop_after", count = 2 },
    { method = "PATCH", path = "^/api/v2/tss/[^/]+$", action = "status", status = 503, retry_after = 0 },
  }
  local tss = assert(keep(pos.sign:create_tss(tss_id)))
  add_secret("puk", tss.admin_puk)
  assert(keep(pos.sign:update_tss(tss_id, { state = "UNINITIALIZED" })))
  keep(pos.sign:change_admin_pin(tss_id, "0000000000", PIN))          -- wrong PUK
  assert(keep(pos.sign:change_admin_pin(tss_id, tss.admin_puk, PIN)))
  keep(pos.sign:admin_auth(tss_id, "wrong-pin-123"))                   -- wrong PIN
  ctl.faults{ { method = "POST", path = "/admin/auth$", action = "status", status = 503 } }
  keep(pos.sign:admin_auth(tss_id, PIN))                               -- 503, not repeated
  ctl.clear()
  assert(keep(pos.sign:admin_auth(tss_id, PIN)))
  keep(pos.sign:admin_auth(tss_id, "123"))                             -- validation: too short
  assert(keep(pos.sign:update_tss(tss_id, { state = "INITIALIZED" })))
  assert(keep(pos.sign:create_client(tss_id, client_id, { serial_number = "GREP 1" })))
  assert(keep(pos.sign:admin_logout(tss_id)))

  -- sales through faults, expired and revoked tokens
  local p = { pos = pos, tss_id = tss_id, client_id = client_id }
  ctl.faults{
    { method = "PUT", path = "/tx/", action = "status", status = 429, retry_after = 0 },
    { method = "PUT", path = "/tx/", action = "drop_before", count = 3 },
    { method = "PUT", path = "/tx/", action = "status", status = 503 },
    { method = "PUT", path = "/tx/", action = "drop_after", skip = 1, count = 3 },
    { method = "PUT", path = "/tx/", action = "expire_token", skip = 2 },
  }
  assert(keep(R.sale(p, "10.00")))
  ctl.clear()
  ctl.revoke_tokens()
  assert(keep(R.sale(p, "20.00")))
  ctl.expire_tokens()
  assert(keep(R.sale(p, "30.00")))
  ctl.faults{ { method = "GET", path = "^/api/v2/tss/[^/]+$", action = "expire_token", count = -1 } }
  keep(pos.sign:get_tss(tss_id))                                       -- 401 after one heal
  ctl.clear()
  keep(R.sale(p, "10.0"))                                              -- validation error

  -- an open breaker, wrong credentials, an unreachable host
  local fam = assert(fiskaly.new{ base_url = sb.base_url, api_key = key.key, api_secret = key.secret, log = log,
    retry = FAST, breaker = { failures = 2 } })
  ctl.faults{ { method = "GET", path = "/tss", action = "status", status = 500, count = -1 } }
  keep(fam.sign:list_tss())
  keep(fam.sign:list_tss())
  ctl.clear()
  local wrong = assert(fiskaly.new{ base_url = sb.base_url, api_key = key.key, api_secret = "wrong-secret-31415",
    log = log, retry = FAST })
  add_secret("api_secret", "wrong-secret-31415")
  keep(wrong.sign:list_tss())
  local dead = assert(fiskaly.new{ base_url = "http://127.0.0.1:1", api_key = key.key, api_secret = key.secret,
    log = log, retry = { attempts = 2, base_ms = 1, seed = 1 } })
  keep(dead.sign:list_tss())

  -- the haystack: every event, every error, every object's tostring
  dump(events)
  dump(errs)
  for _, o in ipairs{ hub, pos, fam, wrong, dead, hub.sign, pos.sign, pos.management } do dump(o) end
  for _, e in ipairs(errs) do hay[#hay + 1] = tostring(e) end

  -- the run really produced what is searched
  lu.assertTrue(#events > 40, "events: " .. #events)
  lu.assertTrue(#errs >= 9, "errors: " .. #errs)
  lu.assertTrue((secret_kinds.api_secret or 0) >= 3)
  local nb = 0
  for _ in pairs(bearers) do nb = nb + 1 end
  lu.assertTrue(nb >= 4, "bearer tokens seen: " .. nb)
  lu.assertTrue((secret_kinds.access_token or 0) >= 4)
  lu.assertTrue((secret_kinds.refresh_token or 0) >= 2)
  lu.assertTrue((secret_kinds.pin or 0) >= 2)
  lu.assertTrue((secret_kinds.puk or 0) >= 2)
  local codes = {}
  for _, e in ipairs(errs) do codes[tostring(e.code or e.status or e.kind)] = true end
  for _, want in ipairs{ "E_UNAUTHORIZED", "CIRCUIT_OPEN", "COULDNT_CONNECT" } do
    lu.assertTrue(codes[want], "no " .. want .. " error in the run")
  end
  local retried = 0
  for _, ev in ipairs(events) do if ev.retry_in_ms then retried = retried + 1 end end
  lu.assertTrue(retried >= 5)

  lu.assertEquals(leaks(), {})

  -- and the search does find a secret when one is there
  local n = #hay
  hay[n + 1] = "oops " .. tss.admin_puk
  lu.assertEquals(leaks(), { "puk" })
  hay[n + 1] = nil
end

local rc = lu.LuaUnit.run()
runtime.request = real_request
sb.stop()
os.exit(rc)
