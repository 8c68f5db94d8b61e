-- fiskaly.sign_de: SIGN DE API v2 resource calls (client.sign:<method>).
--
-- Every method returns the decoded response body (a table) or nil, err (an
-- error object, see fiskaly.errors). Arguments are checked before anything is
-- sent: a wrong Lua type or a missing required argument raises (misuse); a
-- value fiskaly would reject (a malformed UUID, an amount like "10.0", a short
-- PIN, an illegal client serial) returns nil, err with kind = "validation" and
-- err.field naming the field (list indexes are 0-based, as in the JSON sent).
--
-- The optional last argument of every method is a table of call options:
--   validate = false   skip the client-side validation (the server decides)
--   timeout_ms = n     this call's timeout instead of the per-operation default
local errors = require "fiskaly.errors"

local M = {}

-------------------------------------------------------------------- validation

local V = {}
M.validate = V

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

local function describe(v)
  if type(v) == "string" then
    if #v > 40 then v = v:sub(1, 40) .. "…" end
    return string.format("%q", v)
  end
  return type(v)
end

function V.is_uuid(v)
  return type(v) == "string" and v:match(UUID) ~= nil
end

function V.uuid(field, v)
  if not V.is_uuid(v) then
    return errors.validation(field, "must be a UUID such as 2c0d8ee8-5aa4-4d8c-9d54-bf24f7b4a0d1, got " .. describe(v))
  end
end

-- fiskaly's amount pattern ^-?\d+(\.\d{2,5})$ (gross amounts, 2 to 5 decimals).
function V.is_amount(v)
  return type(v) == "string" and v:match("^%-?%d+%.%d%d%d?%d?%d?$") ~= nil
end

function V.amount(field, v)
  if type(v) ~= "string" then
    return errors.validation(field, "must be a string such as \"10.00\" (a decimal with 2 to 5 decimals), got " .. type(v))
  end
  if not V.is_amount(v) then
    return errors.validation(field, describe(v) .. " is not a valid amount: use digits, a dot and 2 to 5 decimals, e.g. \"10.00\"")
  end
end

function V.string(field, v, min, max)
  if type(v) ~= "string" then return errors.validation(field, "must be a string, got " .. type(v)) end
  if min and #v < min then return errors.validation(field, "must be at least " .. min .. " characters") end
  if max and #v > max then return errors.validation(field, "must be at most " .. max .. " characters") end
end

function V.enum(field, v, allowed)
  for _, a in ipairs(allowed) do if v == a then return nil end end
  return errors.validation(field, describe(v) .. " is not one of " .. table.concat(allowed, ", "))
end

-- A secret (PIN/PUK): never echoed.
function V.secret(field, v, min)
  if type(v) ~= "string" then return errors.validation(field, "must be a string") end
  if #v < min then return errors.validation(field, "must be at least " .. min .. " characters long") end
end

function V.list(field, v)
  if type(v) ~= "table" then return errors.validation(field, "must be a list, got " .. type(v)) end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n ~= #v then return errors.validation(field, "must be a list (consecutive integer keys)") end
end

function V.metadata(field, v)
  if v == nil then return nil end
  if type(v) ~= "table" then return errors.validation(field, "must be a table of strings") end
  local n = 0
  for k, x in pairs(v) do
    n = n + 1
    if type(k) ~= "string" or #k > 40 then
      return errors.validation(field, "keys must be strings of at most 40 characters")
    end
    if type(x) == "string" then
      if #x > 500 then return errors.validation(field .. "." .. k, "must be at most 500 characters") end
    elseif x ~= require("fiskaly.json").null then
      return errors.validation(field .. "." .. k, "must be a string, got " .. type(x))
    end
  end
  if n > 40 then return errors.validation(field, "must have at most 40 keys") end
end

-- ClientSerialNumber: 1..70 of [A-Za-z0-9 '()+,-./:=?], no '/' or '_' (DSFinV-K 2.3),
-- no leading or trailing whitespace.
function V.client_serial(field, v)
  local e = V.string(field, v, 1, 70)
  if e then return e end
  if v:find("[/_]") then
    return errors.validation(field, describe(v) .. " must not contain '/' or '_' (DSFinV-K 2.3)")
  end
  if v:find("^%s") or v:find("%s$") then
    return errors.validation(field, describe(v) .. " must not start or end with whitespace")
  end
  if v:find("[^%w '()+,%-%.:=?]") or v:find("[\128-\255]") then
    return errors.validation(field, describe(v) .. " may only contain A-Z a-z 0-9 space ' ( ) + , - . : = ?")
  end
end

local RECEIPT_TYPES = { "RECEIPT", "TRAINING", "TRANSFER", "ORDER", "CANCELLATION", "ABORT",
  "BENEFIT_IN_KIND", "INVOICE", "OTHER", "ANNULATION" }
local VAT_RATES = { "NORMAL", "REDUCED_1", "SPECIAL_RATE_1", "SPECIAL_RATE_2", "NULL",
  "19", "7", "10.7", "5.5", "0" }  -- the numeric forms are deprecated but accepted
local PAYMENT_TYPES = { "CASH", "NON_CASH" }
local TX_STATES = { "ACTIVE", "FINISHED", "CANCELLED" }

local function only_key(field, t, allowed)
  if type(t) ~= "table" then return nil, errors.validation(field, "must be a table") end
  local found, n = nil, 0
  for k in pairs(t) do
    n = n + 1
    found = k
  end
  if n ~= 1 then
    return nil, errors.validation(field, "must have exactly one of " .. table.concat(allowed, ", "))
  end
  for _, a in ipairs(allowed) do if a == found then return found end end
  return nil, errors.validation(field, describe(found) .. " is not one of " .. table.concat(allowed, ", "))
end

local function validate_receipt(f, r)
  if type(r) ~= "table" then return errors.validation(f, "must be a table") end
  local e = V.enum(f .. ".receipt_type", r.receipt_type, RECEIPT_TYPES)
  if e then return e end
  local lf = f .. ".amounts_per_vat_rate"
  if r.amounts_per_vat_rate == nil then return errors.validation(lf, "is required") end
  e = V.list(lf, r.amounts_per_vat_rate)
  if e then return e end
  for i, a in ipairs(r.amounts_per_vat_rate) do
    local ef = lf .. "[" .. (i - 1) .. "]"
    if type(a) ~= "table" then return errors.validation(ef, "must be a table {vat_rate, amount}") end
    e = V.enum(ef .. ".vat_rate", a.vat_rate, VAT_RATES) or V.amount(ef .. ".amount", a.amount)
    if e then return e end
  end
  local pf = f .. ".amounts_per_payment_type"
  if r.amounts_per_payment_type ~= nil then
    e = V.list(pf, r.amounts_per_payment_type)
    if e then return e end
    for i, a in ipairs(r.amounts_per_payment_type) do
      local ef = pf .. "[" .. (i - 1) .. "]"
      if type(a) ~= "table" then return errors.validation(ef, "must be a table {payment_type, amount}") end
      e = V.enum(ef .. ".payment_type", a.payment_type, PAYMENT_TYPES) or V.amount(ef .. ".amount", a.amount)
      if e then return e end
      if a.currency_code ~= nil and not (type(a.currency_code) == "string" and a.currency_code:match("^%a%a%a$")) then
        return errors.validation(ef .. ".currency_code", describe(a.currency_code) .. " is not an ISO 4217 code such as \"EUR\"")
      end
    end
  end
end

local function validate_order(f, o)
  if type(o) ~= "table" then return errors.validation(f, "must be a table") end
  local lf = f .. ".line_items"
  if o.line_items == nil then return errors.validation(lf, "is required") end
  local e = V.list(lf, o.line_items)
  if e then return e end
  for i, li in ipairs(o.line_items) do
    local ef = lf .. "[" .. (i - 1) .. "]"
    if type(li) ~= "table" then return errors.validation(ef, "must be a table") end
    if not (type(li.quantity) == "string" and li.quantity:match("^%-?%d+$") or
            type(li.quantity) == "string" and li.quantity:match("^%-?%d+%.%d%d?%d?%d?%d?$")) then
      return errors.validation(ef .. ".quantity", describe(li.quantity) .. " is not a valid quantity (a string with 0 to 5 decimals)")
    end
    e = V.string(ef .. ".text", li.text, 0, 255) or V.amount(ef .. ".price_per_unit", li.price_per_unit)
    if e then return e end
  end
end

-- The `schema` of a transaction body.
function V.tx_schema(field, s)
  local which, e = only_key(field, s, { "standard_v1", "dsfinvtw_v1", "raw" })
  if e then return e end
  if which == "standard_v1" then
    local f = field .. ".standard_v1"
    local kind
    kind, e = only_key(f, s.standard_v1, { "receipt", "order", "other" })
    if e then return e end
    if kind == "receipt" then return validate_receipt(f .. ".receipt", s.standard_v1.receipt) end
    if kind == "order" then return validate_order(f .. ".order", s.standard_v1.order) end
    if type(s.standard_v1.other) ~= "table" then return errors.validation(f .. ".other", "must be a table") end
  elseif which == "raw" then
    local r = s.raw
    if type(r) ~= "table" then return errors.validation(field .. ".raw", "must be a table") end
    e = V.string(field .. ".raw.process_type", r.process_type, 1, 100)
    if e then return e end
    if type(r.process_data) ~= "string" or not r.process_data:match("^[%w+/]*=?=?$") or #r.process_data % 4 ~= 0 then
      return errors.validation(field .. ".raw.process_data", "must be base64 (standard alphabet, padded)")
    end
  end
end

function V.tx_body(b)
  if type(b) ~= "table" then return errors.validation("body", "must be a table") end
  local e = V.enum("state", b.state, TX_STATES) or V.uuid("client_id", b.client_id)
    or V.metadata("metadata", b.metadata)
  if e then return e end
  if b.schema ~= nil then return V.tx_schema("schema", b.schema) end
  if b.state ~= "ACTIVE" then
    -- fiskaly: E_TX_NO_TYPE_DEFINED when a transaction ends without a type; say so early.
    return errors.validation("schema", "is required to finish or cancel a transaction (state " .. b.state .. ")")
  end
end

-------------------------------------------------------------------- helpers

local function misuse(fn, what)
  error("fiskaly.sign:" .. fn .. ": " .. what, 3)
end

local function need_string(fn, name, v)
  if type(v) ~= "string" then misuse(fn, name .. " must be a string, got " .. type(v)) end
end

local function need_table(fn, name, v, optional)
  if v == nil and optional then return end
  if type(v) ~= "table" then misuse(fn, name .. " must be a table, got " .. type(v)) end
end

local function call_opts(fn, o)
  if o == nil then return {} end
  if type(o) ~= "table" then misuse(fn, "options must be a table") end
  return o
end

-- One path segment, percent-encoded (the client's encoder).
local seg = require("fiskaly.client").pct

local function run(self, o, op)
  if o.timeout_ms ~= nil then
    if math.type(o.timeout_ms) ~= "integer" or o.timeout_ms <= 0 then
      error("fiskaly: timeout_ms must be a positive integer", 3)
    end
    op.timeout_ms = o.timeout_ms
  end
  return self:call(op)
end

local function checked(o, ...)
  if o.validate == false then return nil end
  for i = 1, select("#", ...) do
    local e = select(i, ...)
    if e then return e end
  end
end

-------------------------------------------------------------------- TSS

-- PUT /tss/{tss_id}: creates a TSS (state CREATED). The response carries the
-- admin_puk, shown only now: store it before anything else.
function M.create_tss(self, tss_id, body, o)
  need_string("create_tss", "tss_id", tss_id)
  need_table("create_tss", "body", body, true)
  o = call_opts("create_tss", o)
  local e = checked(o, V.uuid("tss_id", tss_id), body and V.metadata("metadata", body.metadata))
  if e then return nil, e end
  return run(self, o, { method = "PUT", path = "/tss/" .. seg(tss_id), body = body or {}, timeout = "tss" })
end

function M.get_tss(self, tss_id, o)
  need_string("get_tss", "tss_id", tss_id)
  o = call_opts("get_tss", o)
  local e = checked(o, V.uuid("tss_id", tss_id))
  if e then return nil, e end
  return run(self, o, { method = "GET", path = "/tss/" .. seg(tss_id) })
end

-- GET /tss; query: states = {"INITIALIZED", ...}, order_by, order, limit, offset, show_deleted
function M.list_tss(self, query, o)
  need_table("list_tss", "query", query, true)
  return run(self, call_opts("list_tss", o), { method = "GET", path = "/tss", query = query })
end

-- PATCH /tss/{tss_id}: { state = "UNINITIALIZED"|"INITIALIZED"|"DISABLED", description?, metadata? }
function M.update_tss(self, tss_id, body, o)
  need_string("update_tss", "tss_id", tss_id)
  need_table("update_tss", "body", body)
  o = call_opts("update_tss", o)
  local e = checked(o, V.uuid("tss_id", tss_id),
    V.enum("state", body.state, { "UNINITIALIZED", "INITIALIZED", "DISABLED" }),
    body.description ~= nil and (V.string("description", body.description, 0, 100) or
      (not body.description:match("^[%w '()+,%-%./:=?]*$") and
        errors.validation("description", "may only contain A-Z a-z 0-9 space ' ( ) + , - . / : = ?"))) or nil,
    V.metadata("metadata", body.metadata))
  if e then return nil, e end
  return run(self, o, { method = "PATCH", path = "/tss/" .. seg(tss_id), body = body, timeout = "tss" })
end

-- PATCH /tss/{tss_id}/admin: sets (or unblocks) the admin PIN with the PUK.
function M.change_admin_pin(self, tss_id, admin_puk, new_admin_pin, o)
  need_string("change_admin_pin", "tss_id", tss_id)
  o = call_opts("change_admin_pin", o)
  local e = checked(o, V.uuid("tss_id", tss_id), V.secret("admin_puk", admin_puk, 10),
    V.secret("new_admin_pin", new_admin_pin, 6))
  if e then return nil, e end
  return run(self, o, {
    method = "PATCH", path = "/tss/" .. seg(tss_id) .. "/admin", timeout = "admin",
    body = { admin_puk = admin_puk, new_admin_pin = new_admin_pin },
    secrets = { admin_puk, new_admin_pin },
    probe = { method = "GET", path = "/tss/" .. seg(tss_id), timeout = "default", event = "probe" },
  })
end

-- POST /tss/{tss_id}/admin/auth. A wrong PIN gives kind "api", status 401,
-- code E_UNAUTHORIZED; the PIN is never sent twice for one call.
function M.admin_auth(self, tss_id, admin_pin, o)
  need_string("admin_auth", "tss_id", tss_id)
  o = call_opts("admin_auth", o)
  local e = checked(o, V.uuid("tss_id", tss_id), V.secret("admin_pin", admin_pin, 6))
  if e then return nil, e end
  return run(self, o, {
    method = "POST", path = "/tss/" .. seg(tss_id) .. "/admin/auth", timeout = "admin",
    body = { admin_pin = admin_pin },
    secrets = { admin_pin },
    probe = { method = "GET", path = "/tss/" .. seg(tss_id), timeout = "default", event = "probe" },
  })
end

function M.admin_logout(self, tss_id, o)
  need_string("admin_logout", "tss_id", tss_id)
  o = call_opts("admin_logout", o)
  local e = checked(o, V.uuid("tss_id", tss_id))
  if e then return nil, e end
  return run(self, o, { method = "POST", path = "/tss/" .. seg(tss_id) .. "/admin/logout", body = {},
    timeout = "admin" })
end

-------------------------------------------------------------------- clients

-- PUT /tss/{tss_id}/client/{client_id}: { serial_number =, metadata? } (needs admin auth)
function M.create_client(self, tss_id, client_id, body, o)
  need_string("create_client", "tss_id", tss_id)
  need_string("create_client", "client_id", client_id)
  need_table("create_client", "body", body)
  o = call_opts("create_client", o)
  local e = checked(o, V.uuid("tss_id", tss_id), V.uuid("client_id", client_id),
    V.client_serial("serial_number", body.serial_number), V.metadata("metadata", body.metadata))
  if e then return nil, e end
  return run(self, o, { method = "PUT", path = "/tss/" .. seg(tss_id) .. "/client/" .. seg(client_id),
    body = body, timeout = "admin" })
end

function M.get_client(self, tss_id, client_id, o)
  need_string("get_client", "tss_id", tss_id)
  need_string("get_client", "client_id", client_id)
  o = call_opts("get_client", o)
  local e = checked(o, V.uuid("tss_id", tss_id), V.uuid("client_id", client_id))
  if e then return nil, e end
  return run(self, o, { method = "GET", path = "/tss/" .. seg(tss_id) .. "/client/" .. seg(client_id) })
end

-- PATCH /tss/{tss_id}/client/{client_id}: { state = "REGISTERED"|"DEREGISTERED", metadata? }
function M.update_client(self, tss_id, client_id, body, o)
  need_string("update_client", "tss_id", tss_id)
  need_string("update_client", "client_id", client_id)
  need_table("update_client", "body", body)
  o = call_opts("update_client", o)
  local e = checked(o, V.uuid("tss_id", tss_id), V.uuid("client_id", client_id),
    V.enum("state", body.state, { "REGISTERED", "DEREGISTERED" }), V.metadata("metadata", body.metadata))
  if e then return nil, e end
  return run(self, o, { method = "PATCH", path = "/tss/" .. seg(tss_id) .. "/client/" .. seg(client_id),
    body = body, timeout = "admin" })
end

-- GET /tss/{tss_id}/client (or GET /client for every TSS when tss_id is nil)
function M.list_clients(self, tss_id, query, o)
  if tss_id ~= nil then need_string("list_clients", "tss_id", tss_id) end
  need_table("list_clients", "query", query, true)
  o = call_opts("list_clients", o)
  local e = tss_id and checked(o, V.uuid("tss_id", tss_id))
  if e then return nil, e end
  local path = tss_id and ("/tss/" .. seg(tss_id) .. "/client") or "/client"
  return run(self, o, { method = "GET", path = path, query = query })
end

-------------------------------------------------------------------- transactions

local function tx_ref(v)
  if math.type(v) == "integer" and v > 0 then return nil end
  if type(v) == "string" and v:match("^%d+$") then return nil end
  return V.uuid("tx_id", v)
end

local function check_revision(fn, rev)
  if math.type(rev) ~= "integer" then misuse(fn, "tx_revision must be an integer, got " .. (math.type(rev) or type(rev))) end
  if rev < 1 or rev > 9007199254740991 then
    return errors.validation("tx_revision", "must be between 1 and 2^53-1, got " .. rev)
  end
end

-- PUT /tss/{tss_id}/tx/{tx_id}?tx_revision=N: start (ACTIVE, revision 1),
-- update, finish (FINISHED) or cancel (CANCELLED). Resending the same revision
-- with the same body is idempotent.
function M.upsert_transaction(self, tss_id, tx_id, tx_revision, body, o)
  need_string("upsert_transaction", "tss_id", tss_id)
  if type(tx_id) ~= "string" and math.type(tx_id) ~= "integer" then
    misuse("upsert_transaction", "tx_id must be a UUID string or a transaction number")
  end
  need_table("upsert_transaction", "body", body)
  o = call_opts("upsert_transaction", o)
  local e = checked(o, V.uuid("tss_id", tss_id), tx_ref(tx_id),
    check_revision("upsert_transaction", tx_revision), V.tx_body(body))
  if e then return nil, e end
  return run(self, o, {
    method = "PUT", path = "/tss/" .. seg(tss_id) .. "/tx/" .. seg(tx_id),
    query = { tx_revision = tx_revision }, body = body, timeout = "tx",
  })
end

-- GET /tss/{tss_id}/tx/{tx_id_or_number}[?tx_revision=N]
function M.get_transaction(self, tss_id, tx_id, revision, o)
  need_string("get_transaction", "tss_id", tss_id)
  if type(tx_id) ~= "string" and math.type(tx_id) ~= "integer" then
    misuse("get_transaction", "tx_id must be a UUID string or a transaction number")
  end
  if type(revision) == "table" and o == nil then revision, o = nil, revision end
  o = call_opts("get_transaction", o)
  local e = checked(o, V.uuid("tss_id", tss_id), tx_ref(tx_id),
    revision ~= nil and check_revision("get_transaction", revision) or nil)
  if e then return nil, e end
  return run(self, o, {
    method = "GET", path = "/tss/" .. seg(tss_id) .. "/tx/" .. seg(tx_id),
    query = revision and { tx_revision = revision } or nil, timeout = "tx",
  })
end

-- GET /tss/{tss_id}/tx (or GET /tx when tss_id is nil);
-- query: states = {"ACTIVE"}, order_by, order, limit, offset, show_deleted
function M.list_transactions(self, tss_id, query, o)
  if tss_id ~= nil then need_string("list_transactions", "tss_id", tss_id) end
  need_table("list_transactions", "query", query, true)
  o = call_opts("list_transactions", o)
  local e = tss_id and checked(o, V.uuid("tss_id", tss_id))
  if e then return nil, e end
  local path = tss_id and ("/tss/" .. seg(tss_id) .. "/tx") or "/tx"
  return run(self, o, { method = "GET", path = path, query = query })
end

-------------------------------------------------------------------- exports (fiskaly-api.md §9)

local EXPORT_FILTERS = {
  client_id = "uuid", transaction_number = "digits", start_transaction_number = "digits",
  end_transaction_number = "digits", start_date = "digits", end_date = "digits",
  maximum_number_records = "digits", start_signature_counter = "digits", end_signature_counter = "digits",
}

local function export_query(query)
  if query == nil then return nil, nil end
  local q = {}
  for k, v in pairs(query) do
    local kind = EXPORT_FILTERS[k]
    if not kind then misuse("trigger_export", "unknown export filter " .. tostring(k)) end
    if kind == "uuid" then
      local e = V.uuid(k, v)
      if e then return nil, e end
      q[k] = v
    else
      if math.type(v) == "integer" and v >= 0 then v = tostring(v) end
      if type(v) ~= "string" or not v:match("^%d+$") then
        return nil, errors.validation(k, "must be a non-negative integer or digit string")
      end
      q[k] = v
    end
  end
  return q
end

-- PUT /tss/{tss_id}/export/{export_id} (body {}); query: client_id, transaction_number,
-- start_/end_transaction_number, start_/end_date (Unix s), start_/end_signature_counter,
-- maximum_number_records. The export starts PENDING.
function M.trigger_export(self, tss_id, export_id, query, o)
  need_string("trigger_export", "tss_id", tss_id)
  need_string("trigger_export", "export_id", export_id)
  need_table("trigger_export", "query", query, true)
  o = call_opts("trigger_export", o)
  local e = checked(o, V.uuid("tss_id", tss_id), V.uuid("export_id", export_id))
  if e then return nil, e end
  local q, qerr = export_query(query)
  if qerr then return nil, qerr end
  return run(self, o, { method = "PUT", path = "/tss/" .. seg(tss_id) .. "/export/" .. seg(export_id),
    query = q, body = {} })
end

-- GET /tss/{tss_id}/export/{export_id}: state PENDING, WORKING, COMPLETED, CANCELLED or ERROR.
function M.get_export(self, tss_id, export_id, o)
  need_string("get_export", "tss_id", tss_id)
  need_string("get_export", "export_id", export_id)
  o = call_opts("get_export", o)
  local e = checked(o, V.uuid("tss_id", tss_id), V.uuid("export_id", export_id))
  if e then return nil, e end
  return run(self, o, { method = "GET", path = "/tss/" .. seg(tss_id) .. "/export/" .. seg(export_id) })
end

-- GET /tss/{tss_id}/export/{export_id}/file: the TAR's bytes (a string). Before
-- completion: nil, err with code E_EXPORT_NOT_COMPLETED and err.retry_after.
function M.export_file(self, tss_id, export_id, o)
  need_string("export_file", "tss_id", tss_id)
  need_string("export_file", "export_id", export_id)
  o = call_opts("export_file", o)
  local e = checked(o, V.uuid("tss_id", tss_id), V.uuid("export_id", export_id))
  if e then return nil, e end
  return run(self, o, { method = "GET", path = "/tss/" .. seg(tss_id) .. "/export/" .. seg(export_id) .. "/file",
    raw = true, accept = "application/x-tar" })
end

-- GET /tss/{tss_id}/export; query: states, order, limit, offset
function M.list_exports(self, tss_id, query, o)
  need_string("list_exports", "tss_id", tss_id)
  need_table("list_exports", "query", query, true)
  o = call_opts("list_exports", o)
  local e = checked(o, V.uuid("tss_id", tss_id))
  if e then return nil, e end
  return run(self, o, { method = "GET", path = "/tss/" .. seg(tss_id) .. "/export", query = query })
end

-- Shared with fiskaly.management: runs an op with the per-call options.
M._run = run

return M
