-- Writes the libFuzzer seed corpora from shared/testdata/tse-vectors:
--   lua5.4 fuzz/seeds.lua <vector dir> <qr corpus dir> <log corpus dir>
-- QR seeds are the QR strings; log seeds are <key length byte><public key><log message>.
local json = require "fiskaly.json"
local core = require "fiskaly.core"

local dir, qr_dir, log_dir = arg[1], arg[2], arg[3]
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
