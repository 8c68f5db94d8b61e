-- fiskaly.verify: offline verification of German TSE signatures (BSI TR-03151 / DSFinV-K).
-- Every function returns a result table { valid = true|false, reason = "...", code = "...",
-- curve = "...", serial_number = hex, ... }; `valid` is true only after an ECDSA
-- signature really verified. Wrong argument types raise.
local core = require "fiskaly.core"
local json = require "fiskaly.json"

local M = {}

local function present(v) return v ~= nil and v ~= json.null end

-- Verifies a DSFinV-K receipt QR code string ("V0;...").
function M.qr(str)
  if type(str) ~= "string" then error("fiskaly.verify.qr: string expected, got " .. type(str), 2) end
  return core.tse.verify_qr(str)
end

-- Verifies one TR-03151 log message (the bytes of a .log file of a TAR export)
-- against a public key (raw point 04||X||Y or DER SubjectPublicKeyInfo).
function M.log_message(bytes, pubkey)
  if type(bytes) ~= "string" or type(pubkey) ~= "string" then
    error("fiskaly.verify.log_message: (bytes, pubkey) strings expected", 2)
  end
  return core.tse.verify_log(bytes, pubkey)
end

local function same_b64(a, raw)
  if type(a) ~= "string" then return false end
  local d = core.crypto.b64decode(a)
  return d ~= nil and d == raw
end

-- Verifies a SIGN DE v2 transaction response (the decoded JSON table of a
-- FINISHED transaction): its qr_code_data signature, and that the response's
-- own fields say the same as the signed QR code.
function M.transaction(resp)
  if type(resp) ~= "table" then error("fiskaly.verify.transaction: response table expected", 2) end
  local qr = resp.qr_code_data
  if type(qr) ~= "string" then
    return { valid = false, code = "NO_QR_CODE",
             reason = "transaction response has no qr_code_data (state " .. tostring(resp.state) .. ")" }
  end
  local r = M.qr(qr)
  if not r.valid then return r end
  local f = assert(core.tse.parse_qr(qr))
  local sig = type(resp.signature) == "table" and resp.signature or {}
  local log = type(resp.log) == "table" and resp.log or {}
  -- { response field, its value, predicate comparing it with the QR code }
  local checks = {
    { "signature.value", sig.value, function(v) return same_b64(v, f.signature) end },
    { "signature.public_key", sig.public_key, function(v) return same_b64(v, f.public_key) end },
    { "signature.counter", sig.counter, function(v) return math.tointeger(tonumber(v)) == f.signature_counter end },
    { "signature.algorithm", sig.algorithm, function(v) return v == f.sig_alg end },
    { "number", resp.number, function(v) return math.tointeger(tonumber(v)) == f.transaction_number end },
    { "client_serial_number", resp.client_serial_number, function(v) return v == f.client_id end },
    { "tss_serial_number", resp.tss_serial_number,
      function(v) return type(v) == "string" and v:lower() == r.serial_number end },
    { "log.timestamp", log.timestamp, function(v) return math.tointeger(tonumber(v)) == f.log_time_unix end },
  }
  local checked = json.array()
  for _, c in ipairs(checks) do
    local name, value, same = c[1], c[2], c[3]
    if present(value) then
      if not same(value) then
        return { valid = false, code = "RESPONSE_MISMATCH", curve = r.curve, serial_number = r.serial_number,
                 reason = string.format("%s in the response differs from the signed QR code", name) }
      end
      checked[#checked + 1] = name
    end
  end
  if #checked == 0 or not present(sig.value) then
    return { valid = false, code = "RESPONSE_MISMATCH", curve = r.curve, serial_number = r.serial_number,
             reason = "the response carries no signature object to compare with the QR code" }
  end
  r.checked = checked
  return r
end

return M
