-- bench/concurrency.lua: N sales (transaction start + finish) through one
-- client against the sandbox with added latency, first one after the other
-- (blocking calls), then all at once (fiskaly.spawn + fiskaly.run), in the
-- same run. Prints the ratio sequential / concurrent; absolute times on a
-- shared machine mean little, the ratio says how much the overlap buys.
--
--   cmake --build build
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lib/?.so;;" \
--   FISKALY_SANDBOX_BIN=build/bin/fiskaly-sandbox lua5.4 bench/concurrency.lua [N] [latency_ms]
local fiskaly = require "fiskaly"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local runtime = require "fiskaly.runtime"

local N = math.tointeger(tonumber(arg[1])) or 64
local LATENCY_MS = math.tointeger(tonumber(arg[2])) or 50

local sb = assert(require("fiskaly.sandbox").start{})
local ctl = core.http.session{}
local function control(method, path, body)
  local r = assert(ctl:request{ method = method, url = sb.base_url .. path, body = body and json.encode(body),
    headers = body and { ["Content-Type"] = "application/json" } or nil })
  assert(r.status == 200, path .. ": " .. r.status)
  return json.decode(r.body)
end

local client = assert(fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret })
local tss_id = fiskaly.uuid4()
local tss = assert(client.sign:create_tss(tss_id, {}))
assert(client.sign:update_tss(tss_id, { state = "UNINITIALIZED" }))
assert(client.sign:change_admin_pin(tss_id, tss.admin_puk, "4711-0815-42"))
assert(client.sign:admin_auth(tss_id, "4711-0815-42"))
assert(client.sign:update_tss(tss_id, { state = "INITIALIZED" }))
local client_id = fiskaly.uuid4()
assert(client.sign:create_client(tss_id, client_id, { serial_number = "POS-BENCH" }))
assert(client.sign:admin_logout(tss_id))

local function sale(i)
  local tx_id = fiskaly.uuid4()
  local amount = string.format("%d.%02d", (100 + i) // 100, (100 + i) % 100)
  assert(client.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id }))
  local f = assert(client.sign:upsert_transaction(tss_id, tx_id, 2, {
    state = "FINISHED", client_id = client_id,
    schema = { standard_v1 = { receipt = {
      receipt_type = "RECEIPT",
      amounts_per_vat_rate = json.array{ { vat_rate = "NORMAL", amount = amount } },
      amounts_per_payment_type = json.array{ { payment_type = "CASH", amount = amount } },
    } } },
  }))
  assert(f.state == "FINISHED")
  return f.number
end

control("POST", "/_sandbox/latency", { ms = LATENCY_MS })
sale(0)  -- warm up: token, connection

local t0 = runtime.now_ms()
for i = 1, N do sale(i) end
local sequential = runtime.now_ms() - t0

local tasks = {}
t0 = runtime.now_ms()
for i = 1, N do tasks[i] = fiskaly.spawn(sale, N + i) end
assert(fiskaly.run(600000))
local concurrent = runtime.now_ms() - t0
for _, t in ipairs(tasks) do assert(t:result()) end

control("POST", "/_sandbox/latency", { ms = 0 })
client:close()
sb.stop()

print(string.format("%d sales, %d ms latency: sequential %d ms, concurrent %d ms, ratio %.1f "
  .. "(ideal ~%d: every sale needs 2 round trips)", N, LATENCY_MS, sequential, concurrent,
  sequential / math.max(concurrent, 1), N))
