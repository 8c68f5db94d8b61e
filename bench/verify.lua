-- bench/verify.lua: QR-code verification throughput of fiskaly.core.tse.verify_qr,
-- as a ratio against `openssl speed` ECDSA verify on the same curve, measured
-- in the same run (absolute numbers on shared machines mean little).
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lib/?.so;;" lua5.4 bench/verify.lua [seconds]
local core = require "fiskaly.core"

local seconds = tonumber(arg[1]) or 2

-- ECDSA verifies per second that `openssl speed` reports for one curve.
local function openssl_verify_rate(alg)
  local p = io.popen("openssl speed -seconds " .. seconds .. " " .. alg .. " 2>/dev/null")
  local out = p:read("a")
  p:close()
  -- last line: " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  12000.0"
  local verify = out:match("ecdsa%s*%([^)]*%)%s+[%d.]+s%s+[%d.]+s%s+[%d.]+%s+([%d.]+)")
  return tonumber(verify)
end

-- A QR code signed here on the given curve (same shape as fiskaly's).
local function make_qr(curve, alg_name)
  local key = core.crypto.generate_key(curve)
  local point = key:public_point()
  local t = {
    operation_type = "FinishTransaction", client_id = "POS-BENCH-1",
    process_data = "Beleg^11.90_5.35_0.00_0.00_0.00^10.00:Bar_7.25:Unbar", process_type = "Kassenbeleg-V1",
    transaction_number = 4711, serial_number = core.crypto.sha256(point), sig_alg = alg_name,
    signature_counter = 9422, log_time = 1764115200, log_time_format = "unixTime",
  }
  local tbs = core.tse.log_message(t)
  local sig = key:sign(tbs)
  return table.concat({ "V0", t.client_id, t.process_type, t.process_data, t.transaction_number,
    t.signature_counter, "2025-11-26T00:00:00.000Z", "2025-11-26T00:00:00.000Z", alg_name, "unixTime",
    core.crypto.b64encode(sig), core.crypto.b64encode(point) }, ";")
end

local function rate(fn)
  local n, t0 = 0, os.clock()
  repeat
    for _ = 1, 50 do fn() end
    n = n + 50
  until os.clock() - t0 >= seconds
  return n / (os.clock() - t0)
end

local cases = {
  { "P-256", "ecdsa-plain-SHA256", "ecdsap256" },
  { "brainpoolP256r1", "ecdsa-plain-SHA256", "ecdsabrp256r1" },
  { "P-384", "ecdsa-plain-SHA384", "ecdsap384" },
  { "brainpoolP384r1", "ecdsa-plain-SHA384", "ecdsabrp384r1" },
}
print(string.format("%-16s %14s %14s %8s", "curve", "verify_qr/s", "openssl/s", "ratio"))
for _, c in ipairs(cases) do
  local qr = make_qr(c[1], c[2])
  assert(core.tse.verify_qr(qr).valid, "bench QR does not verify on " .. c[1])
  local ours = rate(function() return core.tse.verify_qr(qr) end)
  local base = openssl_verify_rate(c[3])
  print(string.format("%-16s %14.0f %14s %8s", c[1], ours, base and string.format("%.0f", base) or "n/a",
    base and string.format("%.2f", ours / base) or "n/a"))
end
