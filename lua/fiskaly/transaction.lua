-- fiskaly.transaction: the sale lifecycle on one TSS client.
--
--   journal intent -> start (ACTIVE, rev 1) -> finish (FINISHED, rev 2, receipt)
--   -> verify the returned signature -> journal result -> what the printer needs
--
-- Every PUT uses a client-chosen transaction UUID and an explicit revision, so
-- a request whose answer was lost is resolved by reading the transaction back
-- (never by signing a second time). When the TSE cannot be reached the sale is
-- still completed and marked as a TSE outage (KassenSichV allows this; the
-- receipt must say "TSE ausgefallen"), and the journal keeps the record.
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local errors = require "fiskaly.errors"

local M = {}

-- Errors after which the outcome of a PUT is unknown: read back before resending.
local function outcome_unknown(err)
  if type(err) ~= "table" then return false end
  if err.kind == "network" or err.kind == "timeout" then return true end
  return err.status ~= nil and err.status >= 500
end

-- Errors after which the request certainly never reached the service.
local NOT_SENT = { COULDNT_CONNECT = true, COULDNT_RESOLVE_HOST = true, CIRCUIT_OPEN = true }

-- Errors that mean "the TSE is unreachable right now" (as opposed to a bad request).
local function is_outage(err)
  if type(err) ~= "table" then return false end
  if outcome_unknown(err) then return true end
  return err.status == 429 or err.code == "E_TSS_LOCKED"
end
M.is_outage = is_outage

-- In-memory journal used when the caller gives none (tests, scripts).
local function memory_journal()
  local rows = {}
  return {
    rows = rows,
    record = function(_, tx_id, fields)
      local row = rows[tx_id] or { tx_id = tx_id }
      for k, v in pairs(fields) do row[k] = v end
      rows[tx_id] = row
      return true
    end,
  }
end
M.memory_journal = memory_journal

-- PUT a revision; on an unknown outcome, read the transaction back and use the
-- stored answer when our revision was applied, else resend the same request
-- (fiskaly treats an identical repeated upsert as idempotent).
local function upsert_reconciled(sign, tss_id, tx_id, rev, body, attempts)
  local res, err
  for _ = 1, attempts do
    res, err = sign:upsert_transaction(tss_id, tx_id, rev, body)
    if res then return res end
    if not outcome_unknown(err) and err.code ~= "E_TX_UPSERT" then return nil, err end
    if NOT_SENT[err.code] then return nil, err end   -- nothing to read back
    local cur = sign:get_transaction(tss_id, tx_id)
    if cur and cur.latest_revision and cur.latest_revision >= rev then
      if cur.latest_revision == rev and cur.state == body.state then
        return cur
      end
      return nil, errors.state(string.format("transaction %s is at revision %d (%s), expected %d (%s)",
        tx_id, cur.latest_revision, tostring(cur.state), rev, body.state), "E_TX_UPSERT")
    end
    if not outcome_unknown(err) then return nil, err end
  end
  return nil, err
end

-- Checks that a FINISHED response carries a valid signature from this TSS.
function M.check_signature(resp, expected_public_key)
  local qr = resp.qr_code_data
  if type(qr) ~= "string" then return nil, "response has no qr_code_data" end
  local r = core.tse.verify_qr(qr)
  if not r.valid then return nil, "QR code signature invalid: " .. tostring(r.reason) end
  local f = core.tse.parse_qr(qr)
  if resp.signature then
    if resp.signature.value and core.crypto.b64encode(f.signature) ~= resp.signature.value then
      return nil, "signature.value differs from the QR code's signature"
    end
    if resp.signature.counter and tonumber(resp.signature.counter) ~= f.signature_counter then
      return nil, "signature.counter differs from the QR code's counter"
    end
  end
  if resp.number and tonumber(resp.number) ~= f.transaction_number then
    return nil, "transaction number differs from the QR code's"
  end
  if expected_public_key and core.crypto.b64encode(f.public_key) ~= expected_public_key then
    return nil, "QR code public key is not this TSS's key"
  end
  return r
end

-- Runs one sale.
-- opts: sign (client.sign), tss_id, client_id, schema (the SIGN DE schema
-- table, e.g. { standard_v1 = { receipt = ... } }), optional journal
-- ({ record = function(self, tx_id, fields) }), tss_public_key (base64),
-- attempts (read-back rounds per PUT, default 2; the client retries each
-- request itself), tx_id (default: new UUIDv4).
-- Returns a result table for the receipt printer, or nil, err when the sale
-- could not be fiscalised for a reason other than an outage (bad receipt,
-- wrong state): then nothing was signed that needs printing.
function M.run(opts)
  assert(type(opts) == "table", "fiskaly.transaction.run: options table expected")
  local sign, tss_id, client_id = opts.sign, opts.tss_id, opts.client_id
  if type(sign) ~= "table" then error("fiskaly.transaction.run: opts.sign (client.sign) required", 2) end
  if type(tss_id) ~= "string" then error("fiskaly.transaction.run: opts.tss_id required", 2) end
  if type(client_id) ~= "string" then error("fiskaly.transaction.run: opts.client_id required", 2) end
  if type(opts.schema) ~= "table" then error("fiskaly.transaction.run: opts.schema required", 2) end
  local journal = opts.journal or memory_journal()
  local attempts = opts.attempts or 2
  local tx_id = opts.tx_id or core.crypto.uuid4()
  local body_json = assert(json.encode(opts.schema))

  journal:record(tx_id, { state = "intent", tss_id = tss_id, client_id = client_id,
    revision = 0, request = body_json, outage = false, created_at = os.time() })

  local function outage(err, stage)
    journal:record(tx_id, { state = "outage", outage = true, error = tostring(err), stage = stage })
    return {
      tx_id = tx_id, outage = true, state = "OUTAGE",
      message = "TSE ausgefallen (TSS not available)",
      error = err,
    }
  end

  local started, err = upsert_reconciled(sign, tss_id, tx_id, 1,
    { state = "ACTIVE", client_id = client_id }, attempts)
  if not started then
    if is_outage(err) then return outage(err, "start") end
    journal:record(tx_id, { state = "failed", error = tostring(err), stage = "start" })
    return nil, err
  end
  journal:record(tx_id, { state = "active", revision = 1, number = started.number })

  local finished
  finished, err = upsert_reconciled(sign, tss_id, tx_id, 2,
    { state = "FINISHED", client_id = client_id, schema = opts.schema }, attempts)
  if not finished then
    if is_outage(err) then return outage(err, "finish") end
    -- The receipt was refused (e.g. schema validation): cancel the open
    -- transaction so it does not count against the TSS's ACTIVE limit.
    local cancel = { state = "CANCELLED", client_id = client_id, schema = {
      standard_v1 = { receipt = { receipt_type = "CANCELLATION",
        amounts_per_vat_rate = json.array{}, amounts_per_payment_type = json.array{} } } } }
    local cancelled = upsert_reconciled(sign, tss_id, tx_id, 2, cancel, attempts)
    journal:record(tx_id, { state = cancelled and "cancelled" or "failed", error = tostring(err), stage = "finish" })
    return nil, err
  end

  local check, cerr = M.check_signature(finished, opts.tss_public_key)
  journal:record(tx_id, {
    state = "finished", revision = 2, number = finished.number,
    signature = finished.signature and finished.signature.value,
    signature_counter = finished.signature and tonumber(finished.signature.counter),
    qr_code_data = finished.qr_code_data, verified = check ~= nil,
    verify_error = cerr,
  })
  if not check then
    return nil, errors.state("transaction " .. tx_id .. " was signed but its signature does not check: " .. cerr,
      "E_SIGNATURE_CHECK")
  end

  return {
    tx_id = tx_id,
    outage = false,
    state = finished.state,
    number = finished.number,
    qr_code_data = finished.qr_code_data,
    signature_counter = tonumber(finished.signature and finished.signature.counter),
    signature = finished.signature and finished.signature.value,
    time_start = finished.time_start,
    time_end = finished.time_end,
    tss_serial_number = finished.tss_serial_number,
    client_serial_number = finished.client_serial_number,
    process_type = finished.schema and finished.schema.raw and finished.schema.raw.process_type,
    process_data = check and core.tse.parse_qr(finished.qr_code_data).process_data,
    verified = true,
    curve = check.curve,
  }
end

return M
