-- Test helper for the client's reliability tests (issue 4): the sandbox's
-- control endpoints (faults, request log, state) and a provisioned POS client.
local fiskaly = require "fiskaly"
local json = require "fiskaly.json"
local core = require "fiskaly.core"

local M = {}

-- Control of one sandbox (its /_sandbox/ endpoints, never faulted).
function M.control(sb)
  local s = assert(core.http.session{ ca_file = sb.ca_file })
  local c = {}
  local function req(method, path, body)
    local res = assert(s:request{ method = method, url = sb.base_url .. path,
      headers = body and { ["Content-Type"] = "application/json" } or nil,
      body = body and assert(json.encode(body)) or nil })
    assert(res.status == 200, "sandbox control " .. method .. " " .. path .. ": " .. res.status .. " " .. res.body)
    return json.decode(res.body)
  end
  function c.faults(rules, seed) return req("POST", "/_sandbox/faults", { rules = json.array(rules), seed = seed }) end
  function c.clear() return req("DELETE", "/_sandbox/faults") end
  function c.describe() return req("GET", "/_sandbox/faults") end
  function c.requests() return req("GET", "/_sandbox/requests").requests end
  function c.clear_requests() return req("DELETE", "/_sandbox/requests") end
  function c.revoke_tokens() return req("POST", "/_sandbox/revoke-tokens", {}) end
  function c.expire_tokens() return req("POST", "/_sandbox/expire-tokens", {}) end
  function c.state() return req("GET", "/_sandbox/state") end
  function c.tss(id)
    for _, t in ipairs(c.state().tss) do if t.id == id then return t end end
  end
  -- API requests of the log whose path contains `needle` (plain), optionally of one method.
  function c.matching(needle, method)
    local out = {}
    for _, r in ipairs(c.requests()) do
      if r.path:find(needle, 1, true) and (not method or r.method == method) then out[#out + 1] = r end
    end
    return out
  end
  c.session = s
  return c
end

function M.receipt(amount)
  return { standard_v1 = { receipt = {
    receipt_type = "RECEIPT",
    amounts_per_vat_rate = json.array{ { vat_rate = "NORMAL", amount = amount } },
    amounts_per_payment_type = json.array{ { payment_type = "CASH", amount = amount } },
  } } }
end

-- A managed organization with its own key, and a POS client for it made with
-- `opts` (merged into fiskaly.new's options), with an INITIALIZED TSS and a
-- registered client. Returns a table { pos, hub, tss_id, client_id, pin, puk,
-- api_key, api_secret }.
function M.provision(sb, opts)
  local base = { base_url = sb.base_url, api_key = sb.api_key, api_secret = sb.api_secret, ca_file = sb.ca_file }
  local hub = assert(fiskaly.new(base))
  local org = assert(hub.management:create_organization{
    name = "Reliability " .. fiskaly.uuid4():sub(1, 8), managed_by_organization_id = sb.organization_id,
    address_line1 = "Hauptstr. 1", zip = "80331", town = "Muenchen", country_code = "DEU",
  })
  local key = assert(hub.management:create_api_key(org._id, { name = "pos", status = "enabled" }))
  local o = { base_url = sb.base_url, api_key = key.key, api_secret = key.secret, ca_file = sb.ca_file }
  for k, v in pairs(opts or {}) do o[k] = v end
  local pos = assert(fiskaly.new(o))
  local tss_id, client_id, pin = fiskaly.uuid4(), fiskaly.uuid4(), "pin-" .. fiskaly.uuid4():sub(1, 8)
  local tss = assert(pos.sign:create_tss(tss_id))
  assert(pos.sign:update_tss(tss_id, { state = "UNINITIALIZED" }))
  assert(pos.sign:change_admin_pin(tss_id, tss.admin_puk, pin))
  assert(pos.sign:admin_auth(tss_id, pin))
  assert(pos.sign:update_tss(tss_id, { state = "INITIALIZED" }))
  assert(pos.sign:create_client(tss_id, client_id, { serial_number = "POS " .. client_id:sub(1, 8) }))
  return { pos = pos, hub = hub, tss_id = tss_id, client_id = client_id, pin = pin, puk = tss.admin_puk,
    api_key = key.key, api_secret = key.secret }
end

-- One sale: start (revision 1) and finish (revision 2). Returns the finished
-- transaction or nil, err.
function M.sale(p, amount, tx_id)
  tx_id = tx_id or fiskaly.uuid4()
  local ok, err = p.pos.sign:upsert_transaction(p.tss_id, tx_id, 1, { state = "ACTIVE", client_id = p.client_id })
  if not ok then return nil, err, tx_id end
  local tx, ferr = p.pos.sign:upsert_transaction(p.tss_id, tx_id, 2, {
    state = "FINISHED", client_id = p.client_id, schema = M.receipt(amount or "10.00") })
  if not tx then return nil, ferr, tx_id end
  return tx, nil, tx_id
end

return M
