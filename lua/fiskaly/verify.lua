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

-- ---------------------------------------------------------------- TAR exports (BSI TR-03153)

local function octal(field)
  local digits = field:gsub("%z.*", ""):gsub("^%s+", ""):gsub("%s+$", "")
  if not digits:match("^[0-7]+$") then return nil end
  return tonumber(digits, 8)
end

local function cstring(field) return (field:gsub("%z.*", "")) end

-- pax extended header records "len key=value\n" -> the "path" value, if any.
local function pax_path(data)
  local pos = 1
  while pos <= #data do
    local len = tonumber(data:match("^(%d+) ", pos))
    if not len or len < 1 then return nil end
    local rec = data:sub(pos, pos + len - 1)
    local key, value = rec:match("^%d+ ([^=]+)=(.*)\n$")
    if key == "path" then return value end
    pos = pos + len
  end
  return nil
end

-- Regular files of a ustar / GNU / pax tar archive: { { name =, data = }, ... } or nil, err.
local function tar_entries(blob)
  local entries, pos, next_name = {}, 1, nil
  local ZERO = ("\0"):rep(512)
  while pos + 511 <= #blob do
    local hdr = blob:sub(pos, pos + 511)
    if hdr == ZERO then return entries end
    local sum = 0
    local bytes = { hdr:byte(1, 512) }
    for i = 1, 512 do sum = sum + ((i >= 149 and i <= 156) and 32 or bytes[i]) end
    if octal(hdr:sub(149, 156)) ~= sum then
      return nil, string.format("bad tar header checksum at offset %d", pos - 1)
    end
    local size = octal(hdr:sub(125, 136))
    if not size then return nil, string.format("bad tar size field at offset %d", pos - 1) end
    local typeflag = hdr:sub(157, 157)
    local name = cstring(hdr:sub(1, 100))
    if hdr:sub(258, 263) == "ustar\0" then                 -- POSIX: name may have a prefix
      local prefix = cstring(hdr:sub(346, 500))
      if prefix ~= "" then name = prefix .. "/" .. name end
    end
    local data_start = pos + 512
    if data_start + size - 1 > #blob then return nil, "truncated tar member " .. name end
    local data = blob:sub(data_start, data_start + size - 1)
    if typeflag == "L" then                                -- GNU long name for the next member
      next_name = cstring(data)
    elseif typeflag == "x" then                            -- pax header for the next member
      next_name = pax_path(data) or next_name
    elseif typeflag ~= "g" then
      if next_name then name, next_name = next_name, nil end
      if typeflag == "0" or typeflag == "\0" then entries[#entries + 1] = { name = name, data = data } end
    end
    pos = data_start + ((size + 511) // 512) * 512
  end
  if #blob == 0 then return nil, "empty file" end
  return nil, "tar archive has no end-of-archive marker"
end

local function basename(name) return name:match("[^/]*$") end

local function is_certificate(name)
  local b = basename(name):lower()
  return b:match("_x509%.%w+$") ~= nil or b:match("%.crt$") ~= nil or b:match("%.cer$") ~= nil
    or b:match("%.pem$") ~= nil or b:match("%.der$") ~= nil
end

-- Certificates in the export: serial (hex SHA-256 of the point) -> info; and a report list.
local function export_certificates(entries)
  local by_serial, list = {}, json.array()
  for _, e in ipairs(entries) do
    if is_certificate(e.name) then
      local info, err = core.crypto.certificate_info(e.data)
      if info then
        local serial = core.crypto.hex(core.crypto.sha256(info.public_key))
        by_serial[serial] = info
        list[#list + 1] = { name = e.name, serial_number = serial, curve = info.curve, subject = info.subject,
          issuer = info.issuer, not_before = info.not_before, not_after = info.not_after }
      else
        list[#list + 1] = { name = e.name, error = err }
      end
    end
  end
  return by_serial, list
end

-- Gaps and repeats in the signature counters of each TSE.  from_one: counters
-- before the first present one are missing too (an unfiltered export starts at 1).
local function counter_gaps(counters, from_one)
  local gaps, repeats = json.array(), json.array()
  local serials = {}
  for serial in pairs(counters) do serials[#serials + 1] = serial end
  table.sort(serials)
  for _, serial in ipairs(serials) do
    local list = counters[serial]
    table.sort(list)
    if from_one and list[1] > 1 then
      gaps[#gaps + 1] = { serial_number = serial, from = 1, to = list[1] - 1 }
    end
    for i = 2, #list do
      if list[i] == list[i - 1] then
        repeats[#repeats + 1] = { serial_number = serial, counter = list[i] }
      elseif list[i] > list[i - 1] + 1 then
        gaps[#gaps + 1] = { serial_number = serial, from = list[i - 1] + 1, to = list[i] - 1 }
      end
    end
  end
  return gaps, repeats
end

-- Verifies a TAR export file offline: every log message (transaction, system and
-- audit logs) against the certificate of its TSE in the same archive, and the
-- signature counters for gaps (without allow_gaps the first counter of each TSE
-- must be 1).  opts.allow_gaps: gaps do not make it invalid and the leading
-- counters are not reported (e.g. for exports filtered by client).  Returns a report table:
-- { valid, reason, code, messages = { {name, valid, code, reason, log_type,
--   signature_counter, serial_number, curve} }, certificates, gaps, repeats, counts }.
function M.export(path, opts)
  if type(path) ~= "string" then error("fiskaly.verify.export: path string expected", 2) end
  local f, ferr = io.open(path, "rb")
  if not f then return { valid = false, code = "IO_ERROR", reason = ferr } end
  local blob = f:read("a")
  f:close()
  return M.export_bytes(blob, opts)
end

-- Like export, for the archive's bytes.
function M.export_bytes(blob, opts)
  if type(blob) ~= "string" then error("fiskaly.verify.export_bytes: string expected", 2) end
  opts = opts or {}
  local entries, terr = tar_entries(blob)
  if not entries then return { valid = false, code = "MALFORMED_TAR", reason = terr } end
  local keys, certificates = export_certificates(entries)
  local messages, counters = json.array(), {}
  local counts = { total = 0, valid = 0, invalid = 0, transaction = 0, system = 0, audit = 0, unknown = 0 }
  for _, e in ipairs(entries) do
    if basename(e.name):match("%.log$") then
      local m = { name = e.name }
      local p, perr = core.tse.parse_log(e.data)
      if not p then
        m.valid, m.code, m.reason = false, "MALFORMED_LOG", perr
      else
        local serial = core.crypto.hex(p.serial_number)
        m.log_type, m.signature_counter, m.serial_number = p.log_type, p.signature_counter, serial
        counts[p.log_type] = counts[p.log_type] + 1
        counters[serial] = counters[serial] or {}
        table.insert(counters[serial], p.signature_counter)
        local info = keys[serial]
        if not info then
          m.valid, m.code = false, "NO_CERTIFICATE"
          m.reason = "the export has no certificate for TSE serial " .. serial
        else
          local r = core.tse.verify_log(e.data, info.public_key)
          m.valid, m.code, m.reason, m.curve = r.valid, r.code, r.reason, r.curve
        end
      end
      counts.total = counts.total + 1
      counts[m.valid and "valid" or "invalid"] = counts[m.valid and "valid" or "invalid"] + 1
      messages[#messages + 1] = m
    end
  end
  local gaps, repeats = counter_gaps(counters, not opts.allow_gaps)
  local report = { messages = messages, certificates = certificates, gaps = gaps, repeats = repeats,
                   counts = counts, valid = false }
  if counts.total == 0 then
    report.code, report.reason = "EMPTY_EXPORT", "the export contains no log messages"
  elseif counts.invalid > 0 then
    report.code = "INVALID_MESSAGES"
    report.reason = string.format("%d of %d log messages did not verify", counts.invalid, counts.total)
  elseif #repeats > 0 then
    report.code = "COUNTER_REPEATED"
    report.reason = string.format("signature counter %d appears more than once", repeats[1].counter)
  elseif #gaps > 0 and not opts.allow_gaps then
    report.code = "COUNTER_GAP"
    report.reason = string.format("signature counters %d to %d are missing", gaps[1].from, gaps[1].to)
  else
    report.valid = true
  end
  return report
end

return M
