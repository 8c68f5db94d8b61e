-- core.tse: TR-03151 log messages and DSFinV-K QR codes (shared/reference/tse-signature.md).
local lu = require "luaunit"
local core = require "fiskaly.core"
local c, tse = core.crypto, core.tse

-- The QR example of tse-signature.md section 2 (fiskaly SIGN DE v2, P-256).
local QR = "V0;ERS 8cb8e2de-4052-481b-945b-118022951944;Kassenbeleg-V1;Beleg^21.42_0.00_0.00_0.00_0.00^21.42:Unbar;"
  .. "1;31;2021-08-23T14:36:27.000Z;2021-08-23T14:36:33.000Z;ecdsa-plain-SHA256;unixTime;"
  .. "TGnWiq3ZW7gi4Vs+DxLGsJZj9v271dHmhQAcb057F3oWkdKJ61UW2LLVTZQhW673yLa53Mm6oPeMU1Ns3ZOH7w==;"
  .. "BGFKQP7EENf3s5hTDXvlh+xyJ1Q9BNIa9LyYbYK+pTAKAGQ2fmI40p5QOrpHpvb+UuOrNQJdhzggHNfyyyDyf/g="
local PUB = c.b64decode("BGFKQP7EENf3s5hTDXvlh+xyJ1Q9BNIa9LyYbYK+pTAKAGQ2fmI40p5QOrpHpvb+UuOrNQJdhzggHNfyyyDyf/g=")
local SIG = c.b64decode("TGnWiq3ZW7gi4Vs+DxLGsJZj9v271dHmhQAcb057F3oWkdKJ61UW2LLVTZQhW673yLa53Mm6oPeMU1Ns3ZOH7w==")

local function example_fields()
  return {
    operation_type = "FinishTransaction",
    client_id = "ERS 8cb8e2de-4052-481b-945b-118022951944",
    process_type = "Kassenbeleg-V1",
    process_data = "Beleg^21.42_0.00_0.00_0.00_0.00^21.42:Unbar",
    transaction_number = 1,
    signature_counter = 31,
    log_time = 1629729393,            -- 2021-08-23T14:36:33Z
    log_time_format = "unixTime",
    sig_alg = "ecdsa-plain-SHA256",
    serial_number = c.sha256(PUB),
  }
end

TestLogMessage = {}
function TestLogMessage.test_reference_example_196_bytes()
  local tbs = tse.log_message(example_fields())
  lu.assertEquals(#tbs, 196)
  lu.assertEquals(c.hex(c.sha256(tbs)), "a01feb0c4e0f11126668f599ee2929330833e898d8a9d8e649158819a3e1db99")
  -- Structure as printed in the reference document.
  local h = c.hex(tbs)
  lu.assertEquals(h:sub(1, 6 + 22), "020102" .. "060904007f000703070101")
  lu.assertStrContains(h, "801146696e6973685472616e73616374696f6e")
  lu.assertStrContains(h, "830e4b617373656e62656c65672d5631")
  lu.assertStrContains(h, "850101" .. "0420" .. c.hex(c.sha256(PUB)) .. "300c060a04007f00070101040103" .. "02011f" .. "02046123b271")
  lu.assertEquals(h:sub(-(#"02011f02046123b271")), "02011f02046123b271")
  lu.assertTrue((c.verify(PUB, tbs, SIG, "SHA256")))
end

function TestLogMessage.test_full_message_wraps_tbs_and_signature()
  local t = example_fields()
  t.signature = SIG
  local tbs, full = tse.log_message(t)
  lu.assertEquals(full, "\x30\x82\x01\x06" .. tbs .. "\x04\x40" .. SIG)
end

function TestLogMessage.test_integer_and_time_encodings()
  local t = example_fields()
  t.transaction_number, t.signature_counter = 227, 672
  local h = c.hex(tse.log_message(t))
  lu.assertStrContains(h, "850200e3")          -- 227 needs a leading 00
  lu.assertStrContains(h, "020202a0")          -- 672
  t.transaction_number, t.signature_counter = 0, 128
  h = c.hex(tse.log_message(t))
  lu.assertStrContains(h, "850100"); lu.assertStrContains(h, "02020080")
  t.log_time = 2 ^ 32 // 1                      -- after 2106: five bytes with a leading 00
  lu.assertEquals(c.hex(tse.log_message(t)):sub(-14), "02050100000000")
  t.log_time, t.log_time_format = 1632819771, "utcTime"
  lu.assertEquals(tse.log_message(t):sub(-15), "\x17\x0d210928090251Z")
  t.log_time_format = "generalizedTime"
  lu.assertEquals(tse.log_message(t):sub(-17), "\x18\x0f20210928090251Z")
  t.log_time = 4102444800                       -- 2100: not representable as UTCTime
  t.log_time_format = "utcTime"
  lu.assertErrorMsgContains("log_time", tse.log_message, t)
end

function TestLogMessage.test_optional_elements_and_ber_processdata()
  local t = example_fields()
  t.process_type = nil
  lu.assertNil(c.hex(tse.log_message(t)):find("830e", 1, true))
  t.process_type = ""
  lu.assertStrContains(c.hex(tse.log_message(t)), "82" .. string.format("%02x", #t.process_data))
  lu.assertStrContains(c.hex(tse.log_message(t)), "8300850101")
  t.additional_external_data = "(2<"
  lu.assertStrContains(c.hex(tse.log_message(t)), "8300" .. "840328323c" .. "850101")
  t.process_data = "abcdef"
  t.process_data_style = "ber-indef"
  lu.assertStrContains(c.hex(tse.log_message(t)), "a2800406616263646566" .. "0000")
  t.process_data_chunks = { "abcd", "ef" }
  lu.assertStrContains(c.hex(tse.log_message(t)), "a2800404616263640402656600008300")
end

function TestLogMessage.test_misuse_raises()
  local t = example_fields()
  t.operation_type = "Finish"
  lu.assertErrorMsgContains("operation_type", tse.log_message, t)
  t = example_fields(); t.serial_number = "short"
  lu.assertErrorMsgContains("serial_number", tse.log_message, t)
  t = example_fields(); t.sig_alg = "ecdsa-plain-MD5"
  lu.assertErrorMsgContains("sig_alg", tse.log_message, t)
  t = example_fields(); t.signature_counter = -1
  lu.assertErrorMsgContains("signature_counter", tse.log_message, t)
  t = example_fields(); t.transaction_number = "1"
  lu.assertErrorMsgContains("transaction_number", tse.log_message, t)
  t = example_fields(); t.client_id = nil
  lu.assertErrorMsgContains("client_id", tse.log_message, t)
  lu.assertError(tse.log_message, "x")
end


-- ---------------------------------------------------------------- QR codes

local function split(qr)
  local f = {}
  for x in (qr .. ";"):gmatch("([^;]*);") do f[#f + 1] = x end
  return f
end

local function with_field(qr, n, value)
  local f = split(qr)
  f[n] = value
  return table.concat(f, ";")
end

TestQr = {}
function TestQr.test_parse_reference_example()
  local q = assert(tse.parse_qr(QR))
  lu.assertEquals(q.version, "V0")
  lu.assertEquals(q.client_id, "ERS 8cb8e2de-4052-481b-945b-118022951944")
  lu.assertEquals(q.process_type, "Kassenbeleg-V1")
  lu.assertEquals(q.process_data, "Beleg^21.42_0.00_0.00_0.00_0.00^21.42:Unbar")
  lu.assertEquals(q.transaction_number, 1)
  lu.assertEquals(q.signature_counter, 31)
  lu.assertEquals(q.start_time, "2021-08-23T14:36:27.000Z")
  lu.assertEquals(q.log_time, "2021-08-23T14:36:33.000Z")
  lu.assertEquals(q.log_time_unix, 1629729393)
  lu.assertEquals(q.sig_alg, "ecdsa-plain-SHA256")
  lu.assertEquals(q.log_time_format, "unixTime")
  lu.assertEquals(q.signature, SIG)
  lu.assertEquals(q.public_key, PUB)
end

function TestQr.test_verify_reference_example()
  local r = tse.verify_qr(QR)
  lu.assertTrue(r.valid)
  lu.assertNil(r.reason)
  lu.assertEquals(r.curve, "P-256")
  lu.assertEquals(r.serial_number, c.hex(c.sha256(PUB)))
  lu.assertEquals(r.signature_encoding, "plain")
  lu.assertEquals(r.process_data_style, "der")
end

function TestQr.test_malformed_fields_are_named()
  local cases = {
    { 1, "V1", "MALFORMED_QR" }, { 5, "1a", "MALFORMED_QR" }, { 5, "", "MALFORMED_QR" },
    { 6, "-31", "MALFORMED_QR" }, { 6, "99999999999999999999", "MALFORMED_QR" },
    { 7, "2021-08-23 14:36:27", "MALFORMED_QR" }, { 7, "2021-08-23T14:36:34.000Z", "MALFORMED_QR", "verify" },
    { 8, "2021-02-30T14:36:33.000Z", "MALFORMED_QR" }, { 8, "2021-08-23T24:36:33.000Z", "MALFORMED_QR" },
    { 9, "ecdsa-plain-SHA1", "UNKNOWN_ALGORITHM" }, { 10, "unixtime", "MALFORMED_QR" },
    { 11, "TGnW", "BAD_SIGNATURE" }, { 11, "TGnW*", "MALFORMED_QR" }, { 11, "", "MALFORMED_QR" },
    { 12, "BGFK", "BAD_KEY" }, { 12, "BGF=", "MALFORMED_QR" },
  }
  for _, case in ipairs(cases) do
    local n, value, code, only_verify = case[1], case[2], case[3], case[4]
    local bad = with_field(QR, n, value)
    local r = tse.verify_qr(bad)
    lu.assertFalse(r.valid, bad)
    lu.assertEquals(r.code, code, "field " .. n .. " = " .. value .. ": " .. tostring(r.reason))
    if code == "MALFORMED_QR" then
      lu.assertEquals(r.field, n)
      lu.assertStrContains(r.reason, "malformed QR field " .. n .. " (")
      local q, err = tse.parse_qr(bad)
      if only_verify then
        lu.assertNotNil(q)            -- well-formed; only inconsistent with the signed log time
      else
        lu.assertNil(q); lu.assertStrContains(err, "field " .. n)
      end
    elseif code == "UNKNOWN_ALGORITHM" then
      lu.assertStrContains(r.reason, "unknown algorithm 'ecdsa-plain-SHA1'")
    end
  end
  local r = tse.verify_qr("V0;a;b")
  lu.assertEquals(r.code, "MALFORMED_QR"); lu.assertStrContains(r.reason, "got 3")
  lu.assertFalse(tse.verify_qr("").valid)
  lu.assertError(tse.verify_qr, nil)
end

function TestQr.test_process_data_with_semicolons()
  -- surplus separators are read as part of processData; the signature decides
  local f = split(QR)
  f[4] = f[4] .. ";x"
  local r = tse.verify_qr(table.concat(f, ";"))
  lu.assertFalse(r.valid); lu.assertEquals(r.code, "SIGNATURE_MISMATCH")
  lu.assertEquals(assert(tse.parse_qr(table.concat(f, ";"))).process_data, f[4])
end

-- ---------------------------------------------------------------- fresh signatures

local CURVES = { "P-256", "brainpoolP256r1", "P-384", "brainpoolP384r1" }
local FORMATS = { "unixTime", "utcTime", "generalizedTime" }
local function alg_of(curve) return curve:find("256") and "ecdsa-plain-SHA256" or "ecdsa-plain-SHA384" end
local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%S.000Z", t) end

-- A signed FinishTransaction: its fields, tbs, full message and QR code.
local function fresh(key, fmt, n)
  local t = {
    operation_type = "FinishTransaction", client_id = "till-" .. n, process_type = "Kassenbeleg-V1",
    process_data = "Beleg^" .. n .. ".19_0.00_0.00_0.00_0.00^" .. n .. ".19:Bar",
    transaction_number = 1000 + n, signature_counter = 4000 + 2 * n, log_time = 1700000000 + 97 * n,
    log_time_format = fmt, sig_alg = alg_of(key:curve()), serial_number = c.sha256(key:public_point()),
  }
  local tbs = tse.log_message(t)
  t.signature = key:sign(tbs)
  local _, full = tse.log_message(t)
  local qr = table.concat({ "V0", t.client_id, t.process_type, t.process_data, t.transaction_number,
    t.signature_counter, iso(t.log_time - 5), iso(t.log_time), t.sig_alg, fmt, c.b64encode(t.signature),
    c.b64encode(key:public_point()) }, ";")
  return t, tbs, full, qr
end

TestFresh = {}
function TestFresh.test_all_curves_and_time_formats_verify()
  local n = 0
  for _, curve in ipairs(CURVES) do
    local key <close> = c.generate_key(curve)
    for _, fmt in ipairs(FORMATS) do
      n = n + 1
      local t, tbs, full, qr = fresh(key, fmt, n)
      local r = tse.verify_qr(qr)
      lu.assertTrue(r.valid, curve .. " " .. fmt .. ": " .. tostring(r.reason))
      lu.assertEquals(r.curve, curve)
      lu.assertEquals(r.serial_number, c.hex(t.serial_number))
      -- the same QR with the key printed as SPKI
      local spki_qr = with_field(qr, 12, c.b64encode(key:public_spki()))
      lu.assertTrue(tse.verify_qr(spki_qr).valid)
      lu.assertEquals(tse.verify_qr(spki_qr).serial_number, c.hex(t.serial_number))
      -- fields
      local vf = {}
      for k, v in pairs(t) do vf[k] = v end
      vf.public_key = key:public_point()
      lu.assertTrue(tse.verify_fields(vf).valid)
      -- the whole log message
      r = tse.verify_log(full, key:public_spki())
      lu.assertTrue(r.valid, tostring(r.reason))
      lu.assertEquals(r.log_type, "transaction")
      local p = assert(tse.parse_log(full))
      lu.assertEquals(p.tbs, tbs)
      lu.assertEquals(p.log_time_unix, t.log_time)
      lu.assertEquals(p.log_time_format, fmt)
      lu.assertEquals(p.log_time, iso(t.log_time))
      lu.assertEquals(p.transaction_number, t.transaction_number)
      lu.assertEquals(p.signature_counter, t.signature_counter)
      lu.assertEquals(p.process_type, t.process_type)
      lu.assertEquals(p.sig_alg, t.sig_alg)
      lu.assertEquals(p.serial_number, t.serial_number)
      lu.assertEquals(p.certified_data_type, "0.4.0.127.0.7.3.7.1.1")
      -- DER instead of plain signature
      local d = (require "fiskaly.verify")
      lu.assertTrue(d.qr(qr).valid)
    end
  end
  lu.assertEquals(n, 12)
end

-- Every single-character change anywhere in a QR code is rejected, and the
-- reason matches the field that was changed.  Only start-zeit (field 7) is
-- not signed; there only plausible changes may pass.
local EXPECTED = {
  [1] = { MALFORMED_QR = true }, [2] = { SIGNATURE_MISMATCH = true }, [3] = { SIGNATURE_MISMATCH = true },
  [4] = { SIGNATURE_MISMATCH = true }, [5] = { SIGNATURE_MISMATCH = true, MALFORMED_QR = true },
  [6] = { SIGNATURE_MISMATCH = true, MALFORMED_QR = true }, [7] = { MALFORMED_QR = true, valid = true },
  [8] = { SIGNATURE_MISMATCH = true, MALFORMED_QR = true }, [9] = { UNKNOWN_ALGORITHM = true },
  [10] = { MALFORMED_QR = true }, [11] = { SIGNATURE_MISMATCH = true, BAD_SIGNATURE = true, MALFORMED_QR = true },
  [12] = { NOT_ON_CURVE = true, BAD_KEY = true, MALFORMED_QR = true },
}

function TestFresh.test_single_character_tampering_is_rejected_with_the_right_reason()
  local replacements = { "0", "1", "A", "z", "+", "/", "=", "-", ":", "." }
  local count = 0
  for ci, curve in ipairs(CURVES) do
    local key <close> = c.generate_key(curve)
    local _, _, _, qr = fresh(key, FORMATS[(ci - 1) % 3 + 1], ci)
    lu.assertTrue(tse.verify_qr(qr).valid)
    local field, pos_in_field = 1, 0
    for i = 1, #qr do
      local ch = qr:sub(i, i)
      if ch == ";" then
        field, pos_in_field = field + 1, 0
      else
        pos_in_field = pos_in_field + 1
        -- deterministic replacement that differs from the original
        local rep = replacements[(i % #replacements) + 1]
        if rep == ch then rep = replacements[((i + 1) % #replacements) + 1] end
        local bad = qr:sub(1, i - 1) .. rep .. qr:sub(i + 1)
        local r = tse.verify_qr(bad)
        local got = r.valid and "valid" or r.code
        lu.assertTrue(EXPECTED[field][got], string.format("%s field %d pos %d '%s'->'%s': %s (%s)",
          curve, field, pos_in_field, ch, rep, got, tostring(r.reason)))
        if r.code == "MALFORMED_QR" then lu.assertEquals(r.field, field) end
        if field == 7 and r.valid then
          -- start-zeit is not signed: a change passes only while it stays a plausible time
          local q = assert(tse.parse_qr(bad))
          lu.assertTrue(q.start_time_unix <= q.log_time_unix)
        end
        count = count + 1
      end
    end
  end
  lu.assertTrue(count > 900, "tampered " .. count)
end

-- Flipping any single bit in the first byte of any element of a log message,
-- or any byte at all, never yields "valid"; flips in serialNumber are reported as such.
function TestFresh.test_log_message_byte_flips_are_rejected()
  for _, curve in ipairs(CURVES) do
    local key <close> = c.generate_key(curve)
    local t, _, full = fresh(key, "unixTime", 7)
    local serial_at = assert(full:find(t.serial_number, 1, true))
    for i = 1, #full do
      local bad = full:sub(1, i - 1) .. string.char(full:byte(i) ~ 0x01) .. full:sub(i + 1)
      local r = tse.verify_log(bad, key:public_point())
      lu.assertFalse(r.valid, curve .. " byte " .. i)
      lu.assertNotNil(r.code)
      if i >= serial_at and i < serial_at + 32 then lu.assertEquals(r.code, "SERIAL_MISMATCH") end
    end
    -- every truncation is malformed, never a crash
    for len = 0, #full - 1 do
      local r = tse.verify_log(full:sub(1, len), key:public_point())
      lu.assertFalse(r.valid)
      lu.assertEquals(r.code, "MALFORMED_LOG")
      lu.assertNil((tse.parse_log(full:sub(1, len))))
    end
    local r = tse.verify_log(full, c.generate_key(curve):public_point())
    lu.assertEquals(r.code, "SERIAL_MISMATCH")
  end
end

-- ---------------------------------------------------------------- log messages

TestLog = {}
function TestLog.test_ber_indefinite_process_data_is_kept_byte_exact()
  local key <close> = c.generate_key("P-384")
  local t = {
    operation_type = "FinishTransaction", client_id = "137741-0007", process_type = "Kassenbeleg-V1",
    process_data = "newProcessDataprocessData", process_data_style = "ber-indef",
    process_data_chunks = { "newProcessData", "processData" }, additional_external_data = "extra",
    transaction_number = 3, signature_counter = 180, log_time = 1615365904, sig_alg = "ecdsa-plain-SHA384",
    serial_number = c.sha256(key:public_point()),
  }
  local tbs = tse.log_message(t)
  t.signature = key:sign(tbs)
  local _, full = tse.log_message(t)
  local p = assert(tse.parse_log(full))
  lu.assertEquals(p.tbs, tbs)
  lu.assertEquals(p.process_data, "newProcessDataprocessData")
  lu.assertEquals(p.process_data_style, "ber-indef")
  lu.assertEquals(p.additional_external_data, "extra")
  lu.assertEquals(p.certified_data[3].tag, 2)
  lu.assertTrue(tse.verify_log(full, key:public_point()).valid)
  -- re-encoding processData as DER changes the signed bytes: must not verify
  t.process_data_style, t.process_data_chunks = "der", nil
  local _, der = tse.log_message(t)
  lu.assertEquals(tse.verify_log(der, key:public_point()).code, "SIGNATURE_MISMATCH")
end

function TestLog.test_garbage_never_raises()
  local inputs = { "", "\48", "\48\128", "\48\128\0\0", "\48\132\255\255\255\255", "\48\5\2\1\2\6\0",
    ("\48\128"):rep(100), "\4\0", ("\255"):rep(64) }
  for _, s in ipairs(inputs) do
    local v, err = tse.parse_log(s)
    lu.assertNil(v); lu.assertStrContains(err, "malformed log message")
    lu.assertEquals(tse.verify_log(s, PUB).code, "MALFORMED_LOG")
  end
end

-- ---------------------------------------------------------------- system logs (log_type = "system")

TestSystemLog = {}
function TestSystemLog.test_fresh_system_log_verifies()
  for _, curve in ipairs({ "P-256", "P-384" }) do
    local key <close> = c.generate_key(curve)
    for _, sod in ipairs({ "", "\129\4\97\1\100\36" }) do
      local t = { log_type = "system", operation_type = "initialize", system_operation_data = sod,
        signature_counter = 2, log_time = 1700000000, sig_alg = alg_of(curve),
        serial_number = c.sha256(key:public_point()) }
      local tbs = tse.log_message(t)
      -- byte layout of section 2: version, system-log OID, [0] operationType, [1] data, serial, alg, counter, time
      local want = "\2\1\2" .. "\6\9\4\0\127\0\7\3\7\1\2" .. "\128\10initialize" .. "\129" .. string.char(#sod) .. sod
        .. "\4\32" .. t.serial_number .. "\48\12\6\10\4\0\127\0\7\1\1\4\1" .. (curve == "P-256" and "\3" or "\4")
        .. "\2\1\2" .. "\2\4\101\83\241\0"
      lu.assertEquals(c.hex(tbs), c.hex(want))
      t.signature = key:sign(tbs)
      local _, full = tse.log_message(t)
      local r = tse.verify_log(full, key:public_point())
      lu.assertTrue(r.valid, tostring(r.reason))
      lu.assertEquals(r.log_type, "system")
      lu.assertEquals(r.signature_counter, 2)
      local p = assert(tse.parse_log(full))
      lu.assertEquals(p.operation_type, "initialize")
      lu.assertEquals(p.system_operation_data, sod)
      lu.assertEquals(p.tbs, tbs)
      -- a transaction log from the same inputs is different bytes
      lu.assertNotEquals(tse.log_message{ operation_type = "FinishTransaction", client_id = "x",
        transaction_number = 1, signature_counter = 2, log_time = 1700000000, sig_alg = alg_of(curve),
        serial_number = t.serial_number }, tbs)
    end
  end
  lu.assertErrorMsgContains("operation_type", tse.log_message, { log_type = "system", signature_counter = 1,
    log_time = 1, sig_alg = "ecdsa-plain-SHA256", serial_number = ("\0"):rep(32) })
  lu.assertErrorMsgContains("log_type", tse.log_message, { log_type = "audit", operation_type = "x",
    signature_counter = 1, log_time = 1, sig_alg = "ecdsa-plain-SHA256", serial_number = ("\0"):rep(32) })
end

-- Every real system log in the shared vectors is rebuilt byte for byte from its parsed fields.
function TestSystemLog.test_real_system_logs_rebuild_byte_exact()
  local json = require "fiskaly.json"
  local dir = assert(os.getenv("FISKALY_SHARED_DIR"), "FISKALY_SHARED_DIR") .. "/testdata/tse-vectors/"
  local f = assert(io.open(dir .. "konfidas_TTC_testdata.json", "rb"))
  local doc = json.decode(f:read("a")); f:close()
  local n, ops = 0, {}
  for _, v in ipairs(doc.vectors) do
    if v.kind == "logfile" then
      local p = assert(tse.parse_log(c.b64decode(v.log_message_b64)))
      if p.log_type == "system" and #p.certified_data == 2 then
        n = n + 1
        ops[#ops + 1] = p.operation_type
        local tbs = tse.log_message{ log_type = "system", operation_type = p.operation_type,
          system_operation_data = p.system_operation_data, signature_counter = p.signature_counter,
          log_time = p.log_time_unix, log_time_format = p.log_time_format, sig_alg = p.sig_alg,
          serial_number = p.serial_number }
        lu.assertEquals(c.hex(tbs), c.hex(p.tbs), p.operation_type)
        local r = tse.verify_log(c.b64decode(v.log_message_b64), c.b64decode(v.public_key_b64))
        lu.assertEquals(r.valid, v.expected == "valid", p.operation_type)
      end
    end
  end
  lu.assertTrue(n >= 3, "system-log vectors found: " .. n .. " " .. table.concat(ops, ","))
end

-- ---------------------------------------------------------------- fiskaly.verify.transaction

local verify = require "fiskaly.verify"

-- A SIGN DE v2 FINISHED transaction response carrying the given QR code.
local function response_for(qr, key)
  local q = assert(tse.parse_qr(qr))
  return {
    _type = "TRANSACTION", state = "FINISHED", number = q.transaction_number,
    client_serial_number = q.client_id, tss_serial_number = c.hex(c.sha256(key:public_point())),
    log = { operation = "Finish", timestamp = q.log_time_unix, timestamp_format = "unixTime" },
    signature = { value = c.b64encode(q.signature), algorithm = q.sig_alg, counter = tostring(q.signature_counter),
                  public_key = c.b64encode(key:public_point()) },
    qr_code_data = qr,
  }
end

TestVerifyTransaction = {}
function TestVerifyTransaction.test_consistent_response_is_valid()
  local key <close> = c.generate_key("P-256")
  local _, _, _, qr = fresh(key, "unixTime", 3)
  local r = verify.transaction(response_for(qr, key))
  lu.assertTrue(r.valid, tostring(r.reason))
  lu.assertEquals(#r.checked, 8)
  -- the counter may come as a number (middleware) or a string (spec)
  local resp = response_for(qr, key)
  resp.signature.counter = math.tointeger(resp.signature.counter)
  lu.assertTrue(verify.transaction(resp).valid)
end

function TestVerifyTransaction.test_each_response_field_is_cross_checked()
  local key <close> = c.generate_key("P-256")
  local other <close> = c.generate_key("P-256")
  local _, _, _, qr = fresh(key, "unixTime", 4)
  local edits = {
    ["signature.value"] = function(r) r.signature.value = c.b64encode(other:sign("x")) end,
    ["signature.public_key"] = function(r) r.signature.public_key = c.b64encode(other:public_point()) end,
    ["signature.counter"] = function(r) r.signature.counter = tostring(tonumber(r.signature.counter) + 1) end,
    ["signature.algorithm"] = function(r) r.signature.algorithm = "ecdsa-plain-SHA384" end,
    ["number"] = function(r) r.number = r.number + 1 end,
    ["client_serial_number"] = function(r) r.client_serial_number = r.client_serial_number .. "x" end,
    ["tss_serial_number"] = function(r) r.tss_serial_number = c.hex(c.sha256(other:public_point())) end,
    ["log.timestamp"] = function(r) r.log.timestamp = r.log.timestamp - 1 end,
  }
  for name, edit in pairs(edits) do
    local resp = response_for(qr, key)
    edit(resp)
    local r = verify.transaction(resp)
    lu.assertFalse(r.valid, name)
    lu.assertEquals(r.code, "RESPONSE_MISMATCH", name)
    lu.assertStrContains(r.reason, name)
  end
  local resp = response_for(qr, key)
  resp.qr_code_data = qr:gsub(";4008;", ";4009;", 1)
  lu.assertEquals(verify.transaction(resp).code, "SIGNATURE_MISMATCH")
  lu.assertEquals(verify.transaction({ state = "ACTIVE" }).code, "NO_QR_CODE")
  lu.assertError(verify.transaction, "x")
  lu.assertError(verify.qr, 1)
  lu.assertError(verify.log_message, "x")
end

-- A real FINISHED transaction from the offline sandbox verifies end to end.
function TestVerifyTransaction.test_sandbox_transaction()
  local api = require "sandbox.api"
  local A = api.start()
  local ok, err = pcall(function()
    local p = A:provision("CLIENT")
    local tx = c.uuid4()
    A:tx(p, tx, 1, "ACTIVE")
    local f = A:tx(p, tx, 2, "FINISHED", api.RECEIPT)
    local r = verify.transaction(f)
    lu.assertTrue(r.valid, tostring(r.reason))
    lu.assertEquals(r.curve, "P-256")
    lu.assertTrue(#r.checked >= 5)
    f.signature.counter = tostring(tonumber(f.signature.counter) + 1)
    lu.assertEquals(verify.transaction(f).code, "RESPONSE_MISMATCH")
  end)
  A:stop()
  if not ok then error(err, 0) end
end

-- ---------------------------------------------------------------- TAR exports

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d .. "'"))
  return d
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- A TSE export directory: one certificate and `n` signed Start/Finish logs.
local function make_export(key, n, dir)
  local serial = c.sha256(key:public_point())
  write(dir .. "/" .. c.hex(serial) .. "_X509.pem", key:certificate("export test TSE", 30))
  write(dir .. "/info.csv", '"description:","spec","manufacturer:","lua-fiskaly","version:","test"\n')
  local logs = {}
  for i = 1, n do
    local t = {
      operation_type = i % 2 == 1 and "StartTransaction" or "FinishTransaction", client_id = "till-1",
      process_type = i % 2 == 1 and nil or "Kassenbeleg-V1", process_data = i % 2 == 1 and "" or "Beleg^1.00_0.00_0.00_0.00_0.00^1.00:Bar",
      transaction_number = (i + 1) // 2, signature_counter = i, log_time = 1700000000 + i,
      sig_alg = alg_of(key:curve()), serial_number = serial,
    }
    t.signature = key:sign((tse.log_message(t)))
    local _, full = tse.log_message(t)
    local name = string.format("Unixt_%d_Sig-%d_Log-Tra_No-%d_%s_Client-till-1.log", t.log_time, i,
      t.transaction_number, i % 2 == 1 and "Start" or "Finish")
    write(dir .. "/" .. name, full)
    logs[i] = name
  end
  return logs
end

local function tar(dir, format)
  local out = dir .. ".tar"
  assert(os.execute(string.format("tar --format=%s -cf '%s' -C '%s' .", format, out, dir)))
  return out
end

TestExport = {}
function TestExport.test_valid_exports_in_every_tar_format()
  for _, format in ipairs { "gnu", "ustar", "pax" } do
    for _, curve in ipairs { "P-256", "P-384" } do
      local key <close> = c.generate_key(curve)
      local dir = tmpdir()
      make_export(key, 6, dir)
      local r = verify.export(tar(dir, format))
      lu.assertTrue(r.valid, format .. " " .. curve .. ": " .. tostring(r.reason))
      lu.assertEquals(r.counts.total, 6)
      lu.assertEquals(r.counts.valid, 6)
      lu.assertEquals(r.counts.transaction, 6)
      lu.assertEquals(#r.certificates, 1)
      lu.assertEquals(r.certificates[1].serial_number, c.hex(c.sha256(key:public_point())))
      lu.assertEquals(#r.gaps, 0)
      for _, m in ipairs(r.messages) do lu.assertEquals(m.curve, curve) end
      os.execute("rm -rf '" .. dir .. "' '" .. dir .. ".tar'")
    end
  end
end

function TestExport.test_tampered_missing_and_foreign_logs_are_reported()
  local key <close> = c.generate_key("brainpoolP256r1")
  local dir = tmpdir()
  local logs = make_export(key, 8, dir)
  -- tamper one message's processData, drop counters 5 and 6, add a log from a TSE without certificate
  local f = assert(io.open(dir .. "/" .. logs[4], "rb")); local data = f:read("a"); f:close()
  write(dir .. "/" .. logs[4], (data:gsub("Beleg%^1%.00", "Beleg^9.00", 1)))
  os.remove(dir .. "/" .. logs[5]); os.remove(dir .. "/" .. logs[6])
  local other <close> = c.generate_key("P-256")
  assert(os.execute("mkdir -p '" .. dir .. "/other'"))
  make_export(other, 1, dir .. "/other")
  for name in io.popen("ls '" .. dir .. "/other'"):lines() do
    if name:match("%.pem$") then os.remove(dir .. "/other/" .. name) end
  end
  local path = tar(dir, "gnu")
  local r = verify.export(path)
  lu.assertFalse(r.valid)
  lu.assertEquals(r.code, "INVALID_MESSAGES")
  lu.assertEquals(r.counts.total, 7)
  lu.assertEquals(r.counts.invalid, 2)
  local by_name = {}
  for _, m in ipairs(r.messages) do by_name[m.name:match("[^/]*$")] = m end
  lu.assertEquals(by_name[logs[4]].code, "SIGNATURE_MISMATCH")
  lu.assertEquals(by_name[logs[3]].valid, true)
  local foreign = 0
  for _, m in ipairs(r.messages) do if m.code == "NO_CERTIFICATE" then foreign = foreign + 1 end end
  lu.assertEquals(foreign, 1)
  lu.assertEquals(#r.gaps, 1)
  lu.assertEquals(r.gaps[1].from, 5); lu.assertEquals(r.gaps[1].to, 6)
  -- the CLI: exit 1, one FAIL line per bad message, the gap, and JSON
  local cli = assert(os.getenv("FISKALY_CLI"))
  local p = io.popen(cli .. " verify --export '" .. path .. "'")
  local out = p:read("a")
  local _, _, code = p:close()
  lu.assertEquals(code, 1)
  lu.assertStrContains(out, "FAIL  ./" .. logs[4] .. ": signature mismatch")
  lu.assertStrContains(out, "signature counters 5 to 6 missing")
  lu.assertStrContains(out, "INVALID: 5 of 7 log messages verified")
  os.execute("rm -rf '" .. dir .. "' '" .. path .. "'")
end

function TestExport.test_gaps_alone_and_allow_gaps()
  local key <close> = c.generate_key("P-256")
  local dir = tmpdir()
  local logs = make_export(key, 4, dir)
  os.remove(dir .. "/" .. logs[2])
  local path = tar(dir, "ustar")
  local r = verify.export(path)
  lu.assertFalse(r.valid); lu.assertEquals(r.code, "COUNTER_GAP")
  lu.assertTrue(verify.export(path, { allow_gaps = true }).valid)
  local cli = assert(os.getenv("FISKALY_CLI"))
  local p = io.popen(cli .. " verify --json --allow-gaps --export '" .. path .. "'")
  local doc = assert(require("fiskaly.json").decode(p:read("a")))
  local _, _, code = p:close()
  lu.assertEquals(code, 0); lu.assertTrue(doc.valid); lu.assertEquals(doc.counts.valid, 3)
  os.execute("rm -rf '" .. dir .. "' '" .. path .. "'")
end

-- Without allow_gaps the first counter must be 1: a missing first log is a gap too.
function TestExport.test_missing_first_counters_are_a_gap()
  local key <close> = c.generate_key("P-256")
  local dir = tmpdir()
  local logs = make_export(key, 4, dir)
  os.remove(dir .. "/" .. logs[1]); os.remove(dir .. "/" .. logs[2])
  local path = tar(dir, "ustar")
  local r = verify.export(path)
  lu.assertFalse(r.valid); lu.assertEquals(r.code, "COUNTER_GAP")
  lu.assertEquals(#r.gaps, 1)
  lu.assertEquals(r.gaps[1].from, 1); lu.assertEquals(r.gaps[1].to, 2)
  local lenient = verify.export(path, { allow_gaps = true })
  lu.assertTrue(lenient.valid); lu.assertEquals(#lenient.gaps, 0)
  os.execute("rm -rf '" .. dir .. "' '" .. path .. "'")
end

function TestExport.test_broken_archives()
  local dir = tmpdir()
  local key <close> = c.generate_key("P-256")
  make_export(key, 2, dir)
  local path = tar(dir, "gnu")
  local f = assert(io.open(path, "rb")); local blob = f:read("a"); f:close()
  write(path, blob:sub(1, 700))
  lu.assertEquals(verify.export(path).code, "MALFORMED_TAR")
  write(path, "x" .. blob:sub(2))
  lu.assertEquals(verify.export(path).code, "MALFORMED_TAR")
  write(path, "")
  lu.assertEquals(verify.export(path).code, "MALFORMED_TAR")
  lu.assertEquals(verify.export(dir .. "/missing.tar").code, "IO_ERROR")
  os.execute("rm -rf '" .. dir .. "'")
  dir = tmpdir()
  write(dir .. "/readme.txt", "no logs")
  path = tar(dir, "gnu")
  lu.assertEquals(verify.export(path).code, "EMPTY_EXPORT")
  os.execute("rm -rf '" .. dir .. "' '" .. path .. "'")
  lu.assertError(verify.export, nil)
end

os.exit(lu.LuaUnit.run())
