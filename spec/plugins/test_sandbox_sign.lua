-- End to end: every golden receipt, mapped by the engine, is sent to the
-- offline SIGN DE sandbox (which checks request bodies against fiskaly's
-- OpenAPI schema), signed, and the process_data in the signed response and in
-- the QR code is exactly the one the engine predicted.
local lu = require "luaunit"
local fiskaly = require "fiskaly"
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local receipt = require "fiskaly.receipt"
local helper = require "helpers.sandbox"

local files = require "helpers.files"
local read, ls = files.read, files.ls

-- Provisions org -> key -> TSS (INITIALIZED) -> client; returns client, tss_id, client_id.
local function provision(sb)
  local hub = fiskaly.new { base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret }
  local org = assert(hub.management:create_organization {
    name = "Receipt plugins e2e", managed_by_organization_id = sb.organization_id,
    address_line1 = "Unter den Linden 1", zip = "10117", town = "Berlin", country_code = "DEU" })
  local key = assert(hub.management:create_api_key(org._id,
    { name = "plugins", status = "enabled", managed_by_organization_id = sb.organization_id }))
  local c = hub:with_credentials(key.key, key.secret)
  local tss_id = core.crypto.uuid4()
  local tss = assert(c.sign:create_tss(tss_id, {}))
  assert(c.sign:update_tss(tss_id, { state = "UNINITIALIZED" }))
  local pin = "1234567890"
  assert(c.sign:change_admin_pin(tss_id, tss.admin_puk, pin))
  assert(c.sign:admin_auth(tss_id, pin))
  assert(c.sign:update_tss(tss_id, { state = "INITIALIZED" }))
  local client_id = core.crypto.uuid4()
  assert(c.sign:create_client(tss_id, client_id, { serial_number = "POS-PLUGINS-1" }))
  assert(c.sign:admin_logout(tss_id))
  return c, tss_id, client_id
end

TestSandboxSign = {}

function TestSandboxSign.test_golden_receipts_are_signed_as_predicted()
  local sb = helper.start()
  local ok, err = pcall(function()
    local c, tss_id, client_id = provision(sb)
    local engine = receipt.new { paths = { "plugins" } }
    local signed = 0
    for _, plugin in ipairs(ls("spec/plugins")) do
      for _, case in ipairs(ls("spec/plugins/" .. plugin .. "/cases")) do
        local dir = ("spec/plugins/%s/cases/%s/"):format(plugin, case)
        local expected = assert(json.decode(read(dir .. "receipt.json")))
        if not expected.error then
          local conf_text = read(dir .. "conf.json")
          local r = assert(engine:map(plugin, assert(json.decode(read(dir .. "sale.json"))),
            conf_text and json.decode(conf_text) or nil))
          local tx_id = core.crypto.uuid4()
          assert(c.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id }))
          local tx, terr = c.sign:upsert_transaction(tss_id, tx_id, 2,
            { state = "FINISHED", client_id = client_id, schema = { standard_v1 = r.standard_v1 } })
          lu.assertNotNil(tx, case .. ": " .. tostring(terr))
          lu.assertEquals(tx.schema.raw.process_type, "Kassenbeleg-V1", case)
          lu.assertEquals(core.crypto.b64decode(tx.schema.raw.process_data), r.process_data, case)
          lu.assertEquals(tx.schema.raw.process_data, r.process_data_base64, case)
          local qr = core.tse.verify_qr(tx.qr_code_data)
          lu.assertTrue(qr.valid, case .. ": " .. tostring(qr.reason))
          local fields = assert(core.tse.parse_qr(tx.qr_code_data))
          lu.assertEquals(fields.process_data, r.process_data, case)
          signed = signed + 1
        end
      end
    end
    io.stderr:write(("signed %d golden receipts\n"):format(signed))
    lu.assertTrue(signed >= 25, "signed " .. signed)
  end)
  sb.stop()
  if not ok then error(err, 0) end
end

os.exit(lu.LuaUnit.run())
