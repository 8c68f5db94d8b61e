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

os.exit(lu.LuaUnit.run())
