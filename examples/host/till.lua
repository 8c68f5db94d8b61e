-- till.lua: the Lua side of the C host example. Starts the sandbox, provisions
-- a TSS and a client, signs one sale, and returns the result to the C host.
local fiskaly = require "fiskaly"
local core = require "fiskaly.core"
local json = require "fiskaly.json"

local sb = assert(require("fiskaly.sandbox").start{})
local hub = fiskaly.new{ base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret }
local org = assert(hub.management:create_organization{
  name = "Host Example", managed_by_organization_id = sb.organization_id,
  address_line1 = "Hauptstr. 1", zip = "80331", town = "München", country_code = "DEU",
})
local key = assert(hub.management:create_api_key(org._id, { name = "till", status = "enabled" }))
local pos = hub:with_credentials(key.key, key.secret)

local tss_id, client_id, tx_id = core.crypto.uuid4(), core.crypto.uuid4(), core.crypto.uuid4()
local pin = "1234567890"
local tss = assert(pos.sign:create_tss(tss_id, {}))
assert(pos.sign:update_tss(tss_id, { state = "UNINITIALIZED" }))
assert(pos.sign:change_admin_pin(tss_id, tss.admin_puk, pin))
assert(pos.sign:admin_auth(tss_id, pin))
assert(pos.sign:update_tss(tss_id, { state = "INITIALIZED" }))
assert(pos.sign:create_client(tss_id, client_id, { serial_number = "HOST-TILL-1" }))
assert(pos.sign:admin_logout(tss_id))
assert(pos.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id }))
local tx = assert(pos.sign:upsert_transaction(tss_id, tx_id, 2, {
  state = "FINISHED", client_id = client_id,
  schema = { standard_v1 = { receipt = {
    receipt_type = "RECEIPT",
    amounts_per_vat_rate = json.array{ { vat_rate = "NORMAL", amount = "4.20" } },
    amounts_per_payment_type = json.array{ { payment_type = "CASH", amount = "4.20" } },
  } } },
}))
sb.stop()
return { qr_code_data = tx.qr_code_data, number = tx.number }
