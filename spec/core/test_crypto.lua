-- core.crypto: digests, encodings, randomness, EC keys and ECDSA (docs/core-api.md).
local lu = require "luaunit"
local core = require "fiskaly.core"
local c = core.crypto

local CURVES = { "P-256", "brainpoolP256r1", "P-384", "brainpoolP384r1" }
local HASH = { ["P-256"] = "SHA256", brainpoolP256r1 = "SHA256", ["P-384"] = "SHA384", brainpoolP384r1 = "SHA384" }
local FIELD = { ["P-256"] = 32, brainpoolP256r1 = 32, ["P-384"] = 48, brainpoolP384r1 = 48 }

TestDigest = {}
function TestDigest.test_known_answers()
  lu.assertEquals(c.hex(c.sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  lu.assertEquals(c.hex(c.sha384("abc")),
    "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7")
  lu.assertEquals(#c.sha256(""), 32)
  lu.assertEquals(#c.sha384(""), 48)
  lu.assertError(c.sha256, nil)
end

TestEncoding = {}
function TestEncoding.test_hex_roundtrip()
  lu.assertEquals(c.hex("\0\1\127\128\255"), "00017f80ff")
  lu.assertEquals(c.unhex("00017F80ff"), "\0\1\127\128\255")
  lu.assertEquals(c.unhex(""), "")
  local v, err = c.unhex("abc")
  lu.assertNil(v); lu.assertStrContains(err, "odd")
  v, err = c.unhex("0g")
  lu.assertNil(v); lu.assertStrContains(err, "position 2")
end

function TestEncoding.test_b64_rfc4648_vectors()
  local vec = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==", fooba = "Zm9vYmE=", foobar = "Zm9vYmFy" }
  for plain, enc in pairs(vec) do
    lu.assertEquals(c.b64encode(plain), enc)
    lu.assertEquals(c.b64decode(enc), plain)
  end
  local bin = string.char(table.unpack((function() local t = {} for i = 0, 255 do t[#t + 1] = i end return t end)()))
  lu.assertEquals(c.b64decode(c.b64encode(bin)), bin)
end

function TestEncoding.test_b64_strict()
  for _, bad in ipairs { "Zg", "Zg=", "Z===", "Zm9v\n", " Zm9v", "Zm9-", "Zm_v", "Zh==", "Zm9=", "=Zm9", "Zg==Zg==", "Zm=v" } do
    local v, err = c.b64decode(bad)
    lu.assertNil(v, "accepted " .. bad)
    lu.assertStrContains(err, "invalid base64")
  end
end

TestRandom = {}
function TestRandom.test_random_bytes()
  lu.assertEquals(#c.random_bytes(1), 1)
  lu.assertEquals(#c.random_bytes(65536), 65536)
  lu.assertNotEquals(c.random_bytes(32), c.random_bytes(32))
  lu.assertError(c.random_bytes, 0)
  lu.assertError(c.random_bytes, 65537)
end

function TestRandom.test_uuid4()
  local seen = {}
  for _ = 1, 200 do
    local u = c.uuid4()
    lu.assertStrMatches(u, "%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x")
    lu.assertEquals(u, u:lower())
    lu.assertNil(seen[u]); seen[u] = true
  end
end

TestKey = {}
function TestKey.test_all_curves_sign_verify()
  for _, name in ipairs(CURVES) do
    local k <close> = c.generate_key(name)
    lu.assertEquals(k:curve(), name)
    local pt = k:public_point()
    lu.assertEquals(#pt, 2 * FIELD[name] + 1)
    lu.assertEquals(pt:byte(1), 4)
    local msg = "message for " .. name
    local sig = k:sign(msg)
    lu.assertEquals(#sig, 2 * FIELD[name])
    local ok, curve = c.verify(pt, msg, sig, HASH[name])
    lu.assertTrue(ok); lu.assertEquals(curve, name)
    ok, curve = c.verify(k:public_spki(), msg, sig, HASH[name])
    lu.assertTrue(ok); lu.assertEquals(curve, name)
    local bad, reason = c.verify(pt, msg .. "!", sig, HASH[name])
    lu.assertFalse(bad); lu.assertEquals(reason, "signature mismatch")
    bad, reason = c.verify(pt, msg, sig, HASH[name] == "SHA256" and "SHA384" or "SHA256")
    lu.assertFalse(bad); lu.assertEquals(reason, "signature mismatch")
  end
end

-- r||s -> DER (minimal INTEGERs), to check that DER signatures are accepted too.
local function der_int(x)
  x = x:gsub("^%z+", "")
  if x == "" or x:byte(1) >= 0x80 then x = "\0" .. x end
  return "\2" .. string.char(#x) .. x
end
local function to_der(sig)
  local h = #sig // 2
  local body = der_int(sig:sub(1, h)) .. der_int(sig:sub(h + 1))
  return "\48" .. string.char(#body) .. body
end

function TestKey.test_der_signatures()
  for _, name in ipairs(CURVES) do
    local k <close> = c.generate_key(name)
    local sig = k:sign("x")
    local ok = c.verify(k:public_point(), "x", to_der(sig), HASH[name])
    lu.assertTrue(ok, name)
    local bad, reason = c.verify(k:public_point(), "x", to_der(sig) .. "\0", HASH[name])
    lu.assertFalse(bad); lu.assertStrContains(reason, "malformed signature")
    bad, reason = c.verify(k:public_point(), "x", sig:sub(2), HASH[name])
    lu.assertFalse(bad); lu.assertStrContains(reason, "malformed signature")
  end
end

function TestKey.test_bad_public_keys()
  local k <close> = c.generate_key("P-256")
  local sig = k:sign("x")
  local pt = k:public_point()
  local ok, reason = c.verify(pt:sub(1, 64) .. string.char(pt:byte(65) ~ 1), "x", sig, "SHA256")
  lu.assertFalse(ok); lu.assertEquals(reason, "point not on any supported curve")
  ok, reason = c.verify("\4" .. ("\0"):rep(64), "x", sig, "SHA256")
  lu.assertFalse(ok); lu.assertEquals(reason, "point not on any supported curve")
  ok, reason = c.verify(pt:sub(1, 33), "x", sig, "SHA256")
  lu.assertFalse(ok); lu.assertStrContains(reason, "malformed public key")
  ok, reason = c.verify("\48\3\1\1\0", "x", sig, "SHA256")
  lu.assertFalse(ok); lu.assertStrContains(reason, "malformed public key")
  lu.assertError(c.verify, pt, "x", sig, "MD5")
end

function TestKey.test_pem_roundtrip_and_certificate()
  for _, name in ipairs(CURVES) do
    local k <close> = c.generate_key(name)
    local pem = k:private_pem()
    lu.assertStrContains(pem, "-----BEGIN PRIVATE KEY-----")
    local k2 <close> = assert(c.load_key(pem))
    lu.assertEquals(k2:curve(), name)
    lu.assertEquals(k2:public_point(), k:public_point())
    lu.assertTrue((c.verify(k:public_point(), "m", k2:sign("m"), HASH[name])))
    local cert = k:certificate("fiskaly test TSE", 30)
    lu.assertStrMatches(cert, "^%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-\n.*%-%-%-%-%-END CERTIFICATE%-%-%-%-%-\n$")
    -- The certificate's DER contains the SPKI of the key.
    local b64 = cert:gsub("%-%-%-%-%-[%u ]+%-%-%-%-%-", ""):gsub("%s", "")
    local der = assert(c.b64decode(b64))
    lu.assertNotNil(der:find(k:public_spki(), 1, true))
  end
  local v, err = c.load_key("not a pem")
  lu.assertNil(v); lu.assertStrContains(err, "load_key")
end

-- SPKI prefixes from shared/reference/tse-signature.md section 3.
function TestKey.test_spki_matches_reference_prefixes()
  local prefixes = {
    ["P-256"] = "3059301306072a8648ce3d020106082a8648ce3d030107034200",
    brainpoolP256r1 = "305a301406072a8648ce3d020106092b2403030208010107034200",
    ["P-384"] = "3076301006072a8648ce3d020106052b81040022036200",
    brainpoolP384r1 = "307a301406072a8648ce3d020106092b240303020801010b036200",
  }
  for _, name in ipairs(CURVES) do
    local k <close> = c.generate_key(name)
    lu.assertEquals(k:public_spki(), c.unhex(prefixes[name]) .. k:public_point(), name)
  end
end

function TestKey.test_certificate_info()
  for _, name in ipairs(CURVES) do
    local k <close> = c.generate_key(name)
    local pem = k:certificate("TSE öäü, test", 30)
    local info = assert(c.certificate_info(pem))
    lu.assertEquals(info.public_key, k:public_point())
    lu.assertEquals(info.public_spki, k:public_spki())
    lu.assertEquals(info.curve, name)
    lu.assertEquals(info.subject, "CN=TSE öäü\\, test")
    lu.assertEquals(info.issuer, info.subject)
    lu.assertEquals(info.not_after - info.not_before, 30 * 86400)
    lu.assertTrue(math.abs(info.not_before - os.time()) < 3600)
    lu.assertStrMatches(info.serial, "%x+")
    local der = assert(c.b64decode((pem:gsub("%-%-%-%-%-[%u ]+%-%-%-%-%-", ""):gsub("%s", ""))))
    lu.assertEquals(assert(c.certificate_info(der)).public_key, k:public_point())
    local v, err = c.certificate_info(der .. "\0")
    lu.assertNil(v); lu.assertStrContains(err, "not a PEM or DER")
  end
  lu.assertNil((c.certificate_info("junk")))
end

function TestKey.test_close_and_tostring()
  local k = c.generate_key("P-256")
  local pem = k:private_pem()
  local s = tostring(k)
  lu.assertStrContains(s, "fiskaly.crypto.Key P-256")
  lu.assertNil(s:find(pem:sub(30, 60), 1, true))
  k:close(); k:close()
  lu.assertStrContains(tostring(k), "closed")
  lu.assertErrorMsgContains("closed", k.sign, k, "x")
  lu.assertError(c.generate_key, "secp256k1")
end

os.exit(lu.LuaUnit.run())
