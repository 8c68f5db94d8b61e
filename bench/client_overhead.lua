-- bench/client_overhead.lua: what the Lua client adds per call (auth header,
-- retry/breaker bookkeeping, JSON decode, error mapping, logging hook) over a
-- raw core.http loop doing the same GET against the same sandbox, same run.
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lib/?.so;;" \
--   FISKALY_SANDBOX_BIN=build/bin/fiskaly-sandbox lua5.4 bench/client_overhead.lua [N]
local fiskaly = require "fiskaly"
local core = require "fiskaly.core"
local json = require "fiskaly.json"

local N = tonumber(arg[1]) or 2000
local sb = assert(require("fiskaly.sandbox").start{})
local hub = fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret }
local org = assert(hub.management:create_organization{ name = "Bench", managed_by_organization_id = sb.organization_id,
  address_line1 = "Weg 1", zip = "10115", town = "Berlin", country_code = "DEU" })
local key = assert(hub.management:create_api_key(org._id, { name = "bench", status = "enabled" }))
local c = hub:with_credentials(key.key, key.secret)
local tss_id, client_id, tx_id = fiskaly.uuid4(), fiskaly.uuid4(), fiskaly.uuid4()
local tss = assert(c.sign:create_tss(tss_id, {}))
assert(c.sign:update_tss(tss_id, { state = "UNINITIALIZED" }))
assert(c.sign:change_admin_pin(tss_id, tss.admin_puk, "1234567890"))
assert(c.sign:admin_auth(tss_id, "1234567890"))
assert(c.sign:update_tss(tss_id, { state = "INITIALIZED" }))
assert(c.sign:create_client(tss_id, client_id, { serial_number = "BENCH-1" }))
assert(c.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id }))
assert(c.sign:upsert_transaction(tss_id, tx_id, 2, { state = "FINISHED", client_id = client_id,
  schema = { standard_v1 = { receipt = { receipt_type = "RECEIPT",
    amounts_per_vat_rate = json.array{ { vat_rate = "NORMAL", amount = "1.00" } },
    amounts_per_payment_type = json.array{ { payment_type = "CASH", amount = "1.00" } } } } } }))

-- raw baseline: the same GET with a token obtained once, body decoded
local tok = assert(c.sign:auth()).access_token
local raw = core.http.session{}
local url = sb.base_url .. "/api/v2/tss/" .. tss_id .. "/tx/" .. tx_id
local function raw_get()
  local r = assert(raw:request{ method = "GET", url = url, headers = { Authorization = "Bearer " .. tok } })
  assert(r.status == 200)
  return json.decode(r.body)
end
local function client_get()
  return assert(c.sign:get_transaction(tss_id, tx_id))
end

local function time(fn)
  for _ = 1, 50 do fn() end                 -- warm-up
  local t0 = core.http.now_ms()
  for _ = 1, N do fn() end
  return core.http.now_ms() - t0
end

local t_raw, t_client = time(raw_get), time(client_get)
print(string.format("%d GETs: raw core.http %.0f ms (%.1f us/call), client %.0f ms (%.1f us/call), ratio %.2f",
  N, t_raw, t_raw * 1000 / N, t_client, t_client * 1000 / N, t_client / t_raw))
raw:close()
sb.stop()
