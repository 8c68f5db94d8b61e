-- Writes the libFuzzer seed corpora from shared/testdata/tse-vectors:
--   lua5.4 fuzz/seeds.lua <vector dir> <qr corpus dir> <log corpus dir> [<lua corpus dir>]
-- QR seeds are the QR strings; log seeds are <key length byte><public key><log message>;
-- lua seeds are "\0" .. a TAR export (made here with a fresh key) and "\1" .. a JSON
-- transaction response.
local json = require "fiskaly.json"
local core = require "fiskaly.core"

local dir, qr_dir, log_dir, lua_dir = arg[1], arg[2], arg[3], arg[4]
assert(dir and qr_dir and log_dir, "usage: seeds.lua <vector dir> <qr corpus> <log corpus>")

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local nqr, nlog = 0, 0
local p = assert(io.popen("ls -1 '" .. dir .. "'"))
for name in p:lines() do
  if name:match("%.json$") then
    local f = assert(io.open(dir .. "/" .. name, "rb"))
    local doc = assert(json.decode(f:read("a")))
    f:close()
    for _, v in ipairs(doc.vectors) do
      if v.kind == "qr" then
        nqr = nqr + 1
        write(string.format("%s/seed-%03d", qr_dir, nqr), v.qr)
      elseif v.kind == "logfile" then
        local key = assert(core.crypto.b64decode(v.public_key_b64))
        local log = assert(core.crypto.b64decode(v.log_message_b64))
        nlog = nlog + 1
        write(string.format("%s/seed-%03d", log_dir, nlog), string.char(#key) .. key .. log)
      end
    end
  end
end
p:close()
print(string.format("seeds: %d QR, %d log messages", nqr, nlog))
if not lua_dir then return end

-- A minimal ustar member (header + data padded to 512 bytes).
local function tar_member(name, data)
  local function field(s, len) return s .. ("\0"):rep(len - #s) end
  local function oct(n, len) return string.format("%0" .. (len - 1) .. "o", n) .. "\0" end
  local hdr = field(name, 100) .. oct(420, 8) .. oct(0, 8) .. oct(0, 8) .. oct(#data, 12) .. oct(1700000000, 12)
    .. "        " .. "0" .. field("", 100) .. "ustar\0" .. "00" .. field("", 32) .. field("", 32)
    .. oct(0, 8) .. oct(0, 8) .. field("", 155) .. field("", 12)
  local sum = 0
  for i = 1, #hdr do sum = sum + hdr:byte(i) end
  hdr = hdr:sub(1, 148) .. string.format("%06o", sum) .. "\0 " .. hdr:sub(157)
  return hdr .. data .. ("\0"):rep((512 - #data % 512) % 512)
end

local c, tse = core.crypto, core.tse
local key = c.generate_key("P-256")
local serial = c.sha256(key:public_point())
local parts = { tar_member(c.hex(serial) .. "_X509.pem", key:certificate("fuzz seed TSE", 30)) }
local last_qr
for i = 1, 4 do
  local t = { operation_type = i % 2 == 1 and "StartTransaction" or "FinishTransaction", client_id = "till",
    process_data = "Beleg^1.00_0.00_0.00_0.00_0.00^1.00:Bar", process_type = "Kassenbeleg-V1",
    transaction_number = (i + 1) // 2, signature_counter = i, log_time = 1700000000 + i,
    sig_alg = "ecdsa-plain-SHA256", serial_number = serial }
  t.signature = key:sign((tse.log_message(t)))
  local _, full = tse.log_message(t)
  parts[#parts + 1] = tar_member(string.format("Unixt_%d_Sig-%d_Log-Tra.log", t.log_time, i), full)
  last_qr = table.concat({ "V0", t.client_id, t.process_type, t.process_data, t.transaction_number,
    t.signature_counter, os.date("!%Y-%m-%dT%H:%M:%S.000Z", t.log_time - 1),
    os.date("!%Y-%m-%dT%H:%M:%S.000Z", t.log_time), t.sig_alg, "unixTime", c.b64encode(t.signature),
    c.b64encode(key:public_point()) }, ";")
end
parts[#parts + 1] = ("\0"):rep(1024)
write(lua_dir .. "/seed-tar", "\0" .. table.concat(parts))
local q = assert(tse.parse_qr(last_qr))
write(lua_dir .. "/seed-tx", "\1" .. assert(json.encode {
  state = "FINISHED", number = q.transaction_number, client_serial_number = q.client_id,
  tss_serial_number = c.hex(serial), log = { operation = "Finish", timestamp = q.log_time_unix },
  signature = { value = c.b64encode(q.signature), algorithm = q.sig_alg, counter = tostring(q.signature_counter),
                public_key = c.b64encode(q.public_key) },
  qr_code_data = last_qr }))
-- the seeds must be accepted by the verifier they exercise
local verify = require "fiskaly.verify"
assert(verify.export_bytes(table.concat(parts)).valid, "TAR seed does not verify")
print("seeds: 1 TAR export, 1 transaction response")
