-- `fiskaly demo`: the whole fiskaly SIGN DE integration flow, step by step,
-- against the built-in sandbox (default) or any base URL with HUB credentials.
-- It ends with a signed receipt whose QR code signature is verified offline.
local fiskaly = require "fiskaly"
local core = require "fiskaly.core"
local json = require "fiskaly.json"

local M = {
  summary = "run the full flow (provision, sign a receipt, verify its QR code) against the sandbox",
  usage = [[
usage: fiskaly demo [--base-url URL] [--ca-file PEM] [--json]

Without --base-url, starts the offline sandbox (build/bin/fiskaly-sandbox) and
uses its pre-seeded HUB account. With --base-url, reads the HUB account from
FISKALY_API_KEY, FISKALY_API_SECRET and FISKALY_ORGANIZATION_ID.

Steps: Management auth -> managed organization -> its API key -> SIGN DE auth
-> TSS create -> UNINITIALIZED -> admin PIN (with the PUK) -> admin auth ->
INITIALIZED -> client -> admin logout -> transaction ACTIVE -> FINISHED with a
receipt -> verify the QR code's TR-03151 signature.

Secrets (API secrets, PUK, PIN, tokens) are never printed.
Exit status: 0 when the QR code signature verified, 1 otherwise.
]],
}

local function parse_args(args)
  local o = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--base-url" or a == "--ca-file" then
      local v = args[i + 1]
      if not v then return nil, a .. " needs a value" end
      o[a:sub(3):gsub("-", "_")] = v
      i = i + 2
    elseif a == "--json" then
      o.json = true
      i = i + 1
    else
      return nil, "unknown option " .. a
    end
  end
  return o
end

-- A step runner that prints "[ n/N] title ... ok (detail)" as each step ends.
local function new_runner(total, quiet)
  local r = { n = 0, total = total, started = os.time() }
  function r.step(title, fn)
    r.n = r.n + 1
    if not quiet then
      io.stdout:write(string.format("[%2d/%d] %-46s ", r.n, r.total, title))
      io.stdout:flush()
    end
    local t0 = os.clock()
    local detail, err = fn()
    if detail == nil then
      if not quiet then io.stdout:write("FAILED\n") end
      error({ demo_failure = true, step = title, err = err }, 0)
    end
    if not quiet then
      io.stdout:write(string.format("ok  %s\n", detail == true and "" or tostring(detail)))
    end
    return detail, os.clock() - t0
  end
  return r
end

local function short(id)
  return tostring(id):sub(1, 8) .. "…"
end

-- A 10-digit admin PIN from RAND_bytes (never printed).
local function random_pin()
  local bytes = core.crypto.random_bytes(10)
  return (bytes:gsub(".", function(c) return tostring(c:byte() % 10) end))
end

local function flow(o, sb)
  local base_url = o.base_url or sb.base_url
  local hub = {
    api_key = sb and sb.api_key or os.getenv("FISKALY_API_KEY"),
    api_secret = sb and sb.api_secret or os.getenv("FISKALY_API_SECRET"),
    organization_id = sb and sb.organization_id or os.getenv("FISKALY_ORGANIZATION_ID"),
  }
  if not (hub.api_key and hub.api_secret and hub.organization_id) then
    return nil, "set FISKALY_API_KEY, FISKALY_API_SECRET and FISKALY_ORGANIZATION_ID"
  end

  local out = {}
  local r = new_runner(15, o.json)
  local hub_client = fiskaly.new{
    base_url = base_url, api_key = hub.api_key, api_secret = hub.api_secret, ca_file = o.ca_file,
  }

  r.step("Management API: authenticate (HUB key)", function()
    local tok, err = hub_client.management:auth()
    if not tok then return nil, err end
    return "token valid " .. tostring(tok.access_token_expires_in or "?") .. " s"
  end)

  local org
  r.step("create managed organization", function()
    local err
    org, err = hub_client.management:create_organization{
      name = "Demo Store " .. core.crypto.uuid4():sub(1, 8),
      managed_by_organization_id = hub.organization_id,
      address_line1 = "Unter den Linden 1", zip = "10117", town = "Berlin", country_code = "DEU",
    }
    if not org then return nil, err end
    out.organization_id = org._id
    return "organization " .. short(org._id)
  end)

  local key
  r.step("create the organization's API key", function()
    local err
    key, err = hub_client.management:create_api_key(org._id, {
      name = "pos-demo", status = "enabled", managed_by_organization_id = hub.organization_id,
    })
    if not key then return nil, err end
    return "key " .. short(key.key) .. " (secret kept in memory, not printed)"
  end)

  local client = hub_client:with_credentials(key.key, key.secret)
  r.step("SIGN DE API: authenticate (organization key)", function()
    local tok, err = client.sign:auth()
    if not tok then return nil, err end
    return "env " .. tostring(tok.access_token_claims and tok.access_token_claims.env or "?")
  end)

  local tss_id, tss, puk = core.crypto.uuid4(), nil, nil
  r.step("create TSS", function()
    local err
    tss, err = client.sign:create_tss(tss_id, { metadata = { created_by = "fiskaly demo" } })
    if not tss then return nil, err end
    puk = tss.admin_puk
    out.tss_id = tss_id
    out.tss_serial_number = tss.serial_number
    return "TSS " .. short(tss_id) .. " " .. tss.state .. ", PUK received (not printed)"
  end)

  r.step("personalize TSS (-> UNINITIALIZED)", function()
    local t, err = client.sign:update_tss(tss_id, { state = "UNINITIALIZED" })
    if not t then return nil, err end
    return t.state
  end)

  local pin = random_pin()
  r.step("set admin PIN with the PUK", function()
    local ok, err = client.sign:change_admin_pin(tss_id, puk, pin)
    if not ok then return nil, err end
    return "PIN set (not printed)"
  end)

  r.step("admin auth", function()
    local ok, err = client.sign:admin_auth(tss_id, pin)
    if not ok then return nil, err end
    return true
  end)

  r.step("initialize TSS (-> INITIALIZED)", function()
    local t, err = client.sign:update_tss(tss_id, { state = "INITIALIZED" })
    if not t then return nil, err end
    return t.state .. ", signature counter " .. tostring(t.signature_counter)
  end)

  local client_id = core.crypto.uuid4()
  r.step("register client (POS terminal)", function()
    local c, err = client.sign:create_client(tss_id, client_id, { serial_number = "POS-DEMO-001" })
    if not c then return nil, err end
    out.client_id = client_id
    return "client " .. short(client_id) .. " serial " .. c.serial_number .. " " .. c.state
  end)

  r.step("admin logout", function()
    local ok, err = client.sign:admin_logout(tss_id)
    if not ok then return nil, err end
    return true
  end)

  local tx_id = core.crypto.uuid4()
  r.step("start transaction (ACTIVE, revision 1)", function()
    local tx, err = client.sign:upsert_transaction(tss_id, tx_id, 1, { state = "ACTIVE", client_id = client_id })
    if not tx then return nil, err end
    return "transaction no. " .. tostring(tx.number) .. ", signature counter " .. tostring(tx.signature.counter)
  end)

  -- A sale of 11.90 at 19 % and 5.35 at 7 %, paid 10.00 cash and 7.25 by card.
  local receipt = {
    receipt_type = "RECEIPT",
    amounts_per_vat_rate = json.array{
      { vat_rate = "NORMAL", amount = "11.90" },
      { vat_rate = "REDUCED_1", amount = "5.35" },
    },
    amounts_per_payment_type = json.array{
      { payment_type = "CASH", amount = "10.00" },
      { payment_type = "NON_CASH", amount = "7.25" },
    },
  }
  local finished
  r.step("finish transaction (FINISHED, revision 2)", function()
    local err
    finished, err = client.sign:upsert_transaction(tss_id, tx_id, 2, {
      state = "FINISHED", client_id = client_id, schema = { standard_v1 = { receipt = receipt } },
    })
    if not finished then return nil, err end
    out.transaction = {
      id = tx_id, number = finished.number, state = finished.state,
      signature_counter = finished.signature and finished.signature.counter,
      time_start = finished.time_start, time_end = finished.time_end,
    }
    out.qr_code_data = finished.qr_code_data
    return finished.state .. ", signature counter " .. tostring(finished.signature.counter)
  end)

  r.step("read the transaction back", function()
    local tx, err = client.sign:get_transaction(tss_id, tx_id)
    if not tx then return nil, err end
    if tx.qr_code_data ~= finished.qr_code_data then
      return nil, "qr_code_data read back differs from the upsert response"
    end
    return "revision " .. tostring(tx.latest_revision) .. ", same QR code data"
  end)

  local result
  r.step("verify the QR code signature (TR-03151)", function()
    result = core.tse.verify_qr(finished.qr_code_data)
    if not result.valid then
      return nil, "QR code signature did NOT verify: " .. tostring(result.reason)
    end
    if tss.serial_number and result.serial_number ~= tss.serial_number then
      return nil, "QR public key does not belong to TSS " .. tss_id
    end
    return (result.curve or "?") .. ", serial = TSS serial"
  end)
  out.verified = result.valid
  out.verification = result
  return out
end

function M.run(args)
  local o, perr = parse_args(args)
  if not o then
    io.stderr:write("fiskaly demo: ", perr, "\n", M.usage)
    return 2
  end
  local sb
  if not o.base_url then
    local err
    sb, err = require("fiskaly.sandbox").start{}
    if not sb then
      io.stderr:write("fiskaly demo: ", tostring(err), "\n")
      return 1
    end
    if not o.json then
      io.stdout:write("sandbox running at ", sb.base_url, " (offline emulator of fiskaly SIGN DE v2 + Management v0)\n\n")
    end
  end
  local ok, res, err = pcall(flow, o, sb)
  if sb then sb.stop() end
  if not ok then
    local f = res
    if type(f) == "table" and f.demo_failure then
      io.stderr:write("fiskaly demo: step '", f.step, "' failed: ", tostring(f.err), "\n")
      return 1
    end
    io.stderr:write("fiskaly demo: ", tostring(res), "\n")
    return 1
  end
  if not res then
    io.stderr:write("fiskaly demo: ", tostring(err), "\n")
    return 2
  end
  if o.json then
    io.stdout:write(assert(json.encode(res)), "\n")
  else
    io.stdout:write("\nQR code data (print this as the receipt's QR code):\n", res.qr_code_data, "\n\n")
    io.stdout:write("QR code signature verified: ", res.verification.curve or "?", ", TSS serial ",
      res.verification.serial_number or "?", "\n")
  end
  return res.verified and 0 or 1
end

return M
