-- Every vector in shared/testdata/tse-vectors/*.json gets its expected result
-- (format: shared/reference/tse-signature.md section 7), through the C core,
-- through require("fiskaly.verify"), and (QR vectors) through `fiskaly verify --qr`.
local lu = require "luaunit"
local json = require "fiskaly.json"
local core = require "fiskaly.core"
local verify = require "fiskaly.verify"
local c, tse = core.crypto, core.tse

local SHARED = assert(os.getenv("FISKALY_SHARED_DIR"), "FISKALY_SHARED_DIR not set")
local DIR = SHARED .. "/testdata/tse-vectors"
local CLI = os.getenv("FISKALY_CLI")

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function list_vector_files()
  local p = assert(io.popen("ls -1 '" .. DIR .. "'"))
  local files = {}
  for name in p:lines() do
    if name:match("%.json$") then files[#files + 1] = name end
  end
  p:close()
  table.sort(files)
  return files
end

local function b64(s) return assert(c.b64decode(s)) end
local function present(v) return v ~= nil and v ~= json.null end

-- "2021-09-28T09:04:53[.000]Z" -> Unix seconds (days-from-civil).
local function iso_to_unix(s)
  local y, mo, d, h, mi, se = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)")
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = mo > 2 and mo - 3 or mo + 9
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return (era * 146097 + doe - 719468) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(se)
end

-- A "fields" vector -> the table core.tse.verify_fields takes.
local function fields_of(v)
  local t = {
    operation_type = v.operation_type,
    client_id = v.client_id,
    process_data = present(v.process_data_b64) and b64(v.process_data_b64) or v.process_data or "",
    process_type = present(v.process_type) and v.process_type or nil,
    transaction_number = math.tointeger(v.transaction_number),
    signature_counter = math.tointeger(v.signature_counter),
    log_time = present(v.log_time_unix) and math.tointeger(v.log_time_unix) or iso_to_unix(v.log_time),
    log_time_format = v.log_time_format,
    sig_alg = v.sig_alg,
    signature = b64(v.signature_b64),
    public_key = b64(v.public_key_b64),
    process_data_style = present(v.process_data_style) and v.process_data_style or nil,
  }
  if present(v.additional_external_data_b64) then t.additional_external_data = b64(v.additional_external_data_b64) end
  if present(v.process_data_chunks) then
    local chunks, pos = {}, 1
    for _, size in ipairs(v.process_data_chunks) do
      chunks[#chunks + 1] = t.process_data:sub(pos, pos + size - 1)
      pos = pos + size
    end
    assert(pos == #t.process_data + 1, "chunk sizes do not add up")
    t.process_data_chunks = chunks
  end
  return t
end

local function run_vector(v)
  if v.kind == "qr" then
    return verify.qr(v.qr)
  elseif v.kind == "fields" then
    return tse.verify_fields(fields_of(v))
  elseif v.kind == "logfile" then
    return verify.log_message(b64(v.log_message_b64), b64(v.public_key_b64))
  end
  error("unknown vector kind " .. tostring(v.kind))
end

local function all_vectors()
  local out = {}
  for _, name in ipairs(list_vector_files()) do
    local doc = assert(json.decode(read(DIR .. "/" .. name)))
    for i, v in ipairs(doc.vectors) do
      out[#out + 1] = { file = name, index = i, v = v }
    end
  end
  return out
end

local VECTORS = all_vectors()

TestVectors = {}

function TestVectors.test_every_vector_gets_its_expected_result()
  local pass, failures, by_kind = 0, {}, {}
  for _, e in ipairs(VECTORS) do
    local v = e.v
    local r = run_vector(v)
    local got = r.valid == true and "valid" or "invalid"
    local ok = got == v.expected
      -- an invalid result always explains itself
      and (r.valid or (type(r.reason) == "string" and r.reason ~= "" and type(r.code) == "string"))
      -- and a valid one names the curve the point lies on
      and (not r.valid or not present(v.curve) or r.curve == ({ secp256r1 = "P-256", secp384r1 = "P-384" })[v.curve]
           or r.curve == v.curve)
    if ok then
      pass = pass + 1
      by_kind[v.kind .. "/" .. got] = (by_kind[v.kind .. "/" .. got] or 0) + 1
    else
      failures[#failures + 1] = string.format("%s #%d %q: expected %s, got %s (%s, curve %s)", e.file, e.index,
        v.name, v.expected, got, tostring(r.reason), tostring(r.curve))
    end
  end
  local kinds = {}
  for k, n in pairs(by_kind) do kinds[#kinds + 1] = k .. "=" .. n end
  table.sort(kinds)
  print(string.format("\ntse-vectors: %d of %d vectors in %d files get their expected result (%s)",
    pass, #VECTORS, #list_vector_files(), table.concat(kinds, ", ")))
  lu.assertEquals(failures, {})
  lu.assertTrue(#VECTORS >= 74, "expected at least the 74 documented vectors")
end

-- Invalid vectors that are known single edits must fail at the signature, not earlier.
function TestVectors.test_derived_negatives_fail_for_the_right_reason()
  for _, e in ipairs(VECTORS) do
    local v = e.v
    if e.file == "derived_negatives.json" then
      local r = run_vector(v)
      lu.assertFalse(r.valid, v.name)
      if v.name:find("public key", 1, true) then
        lu.assertEquals(r.code, "SERIAL_MISMATCH", v.name)
      else
        lu.assertEquals(r.code, "SIGNATURE_MISMATCH", v.name)
      end
    end
  end
end

-- The signed bytes cut out of every log file equal the bytes rebuilt from the
-- matching "fields" vector (same source member), except where the source says
-- the chunking cannot be recovered.
function TestVectors.test_parsed_logs_match_rebuilt_fields()
  local logs, compared = {}, 0
  for _, e in ipairs(VECTORS) do
    if e.v.kind == "logfile" and e.v.expected == "valid" and e.v.source_member then
      logs[e.v.source_member] = e.v
    end
  end
  for _, e in ipairs(VECTORS) do
    local v = e.v
    local lv = v.kind == "fields" and v.source_member and logs[v.source_member]
    if lv then
      local parsed = assert(tse.parse_log(b64(lv.log_message_b64)))
      local t = fields_of(v)
      local r = tse.verify_fields(t)
      lu.assertTrue(r.valid, v.name)
      t.serial_number = c.unhex(r.serial_number)
      do
        lu.assertEquals(tse.log_message(t), parsed.tbs, v.name)
        lu.assertEquals(parsed.client_id, t.client_id)
        lu.assertEquals(parsed.process_data, t.process_data)
        lu.assertEquals(parsed.signature_counter, t.signature_counter)
        lu.assertEquals(parsed.transaction_number, t.transaction_number)
        lu.assertEquals(parsed.log_time_unix, t.log_time)
        compared = compared + 1
      end
    end
  end
  lu.assertTrue(compared >= 8, "compared " .. compared)
end

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

function TestVectors.test_qr_vectors_through_the_cli()
  lu.assertNotNil(CLI, "FISKALY_CLI not set")
  local n = 0
  for _, e in ipairs(VECTORS) do
    local v = e.v
    if v.kind == "qr" then
      local p = assert(io.popen(CLI .. " verify --json --qr " .. sh_quote(v.qr) .. " 2>&1"))
      local out = p:read("a")
      local _, _, code = p:close()
      local want = v.expected == "valid" and 0 or 1
      lu.assertEquals(code, want, v.name .. ": " .. out)
      local doc = assert(json.decode(out), out)
      lu.assertEquals(doc.valid, v.expected == "valid", v.name)
      n = n + 1
    end
  end
  print(string.format("\ntse-vectors via `fiskaly verify --qr`: %d QR vectors", n))
  lu.assertTrue(n >= 30)
end

function TestVectors.test_cli_usage_errors_exit_2()
  lu.assertNotNil(CLI, "FISKALY_CLI not set")
  for _, args in ipairs { "", "--qr", "--json", "--qr x --export y", "--bogus" } do
    local p = assert(io.popen(CLI .. " verify " .. args .. " 2>&1"))
    local out = p:read("a")
    local _, _, code = p:close()
    lu.assertEquals(code, 2, args)
    lu.assertStrContains(out, "usage: fiskaly verify")
  end
  local p = assert(io.popen(CLI .. " verify --help"))
  lu.assertStrContains(p:read("a"), "Exit status: 0 valid, 1 invalid, 2 usage error")
  local _, _, code = p:close()
  lu.assertEquals(code, 0)
end

os.exit(lu.LuaUnit.run())
