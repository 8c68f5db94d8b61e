-- sandbox.sign_de: fiskaly SIGN DE API v2 (/api/v2): TSS lifecycle, admin PIN and
-- session, clients, transactions with revisions and real TR-03151 signatures.
-- Behaviour follows fiskaly-api.md (§4-§8) and fiskaly's OpenAPI 2.1.35.
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local errors = require "sandbox.errors"
local validate = require "sandbox.validate"
local auth = require "sandbox.auth"
local context = require "sandbox.context"
local process_data = require "sandbox.process_data"

local M = {}

local ENV, VERSION = context.ENV, context.SIGN_VERSION
local MAX_CLIENTS = 199          -- max_number_registered_clients in TEST
local MAX_ACTIVE_TX = 2000       -- max_number_active_transactions
local MAX_PIN_FAILURES = 5
local BSI_ID = "BSI-K-TR-0490-2021"
local INIT_SYSTEM_LOGS = 3       -- system logs signed while initialising
local INIT_SYSTEM_OPS = { "authenticateUser", "initialize", "updateTime" }
assert(#INIT_SYSTEM_OPS == INIT_SYSTEM_LOGS)
local DEFAULT_TSS_LIMIT = 5      -- TSS in CREATED/UNINITIALIZED/INITIALIZED per organization (TEST)

local function copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = copy(v) end
  return c
end

-- Merges metadata (fiskaly merges on update; null removes a key).
local function merge_metadata(into, md)
  for k, v in pairs(md or {}) do
    if v == json.null then into[k] = nil else into[k] = v end
  end
end

-- ------------------------------------------------------------------ render
local function render_tss(tss)
  local r = {
    _id = tss.id, _type = "TSS", _env = ENV, _version = VERSION,
    state = tss.state,
    description = tss.description,
    certificate = tss.certificate,
    serial_number = tss.serial_hex,
    public_key = tss.public_key_b64,
    signature_algorithm = "ecdsa-plain-SHA256",
    signature_timestamp_format = "unixTime",
    transaction_data_encoding = "UTF-8",
    signature_counter = tostring(tss.signature_counter),
    transaction_counter = tostring(tss.tx_counter),
    number_registered_clients = tss.registered_clients,
    max_number_registered_clients = MAX_CLIENTS,
    number_active_transactions = tss.active_tx,
    max_number_active_transactions = MAX_ACTIVE_TX,
    supported_update_variants = "SIGNED",
    metadata = copy(tss.metadata),
    time_creation = tss.time_creation,
    time_uninit = tss.time_uninit,
    time_init = tss.time_init,
    time_disable = tss.time_disable,
    bsi_certification_id = tss.time_uninit and BSI_ID or nil,
  }
  if tss.state == "CREATED" then r.admin_puk = tss.puk end
  return r
end

local function render_client(c)
  return {
    _id = c.id, _type = "CLIENT", _env = ENV, _version = VERSION,
    serial_number = c.serial_number, state = c.state, tss_id = c.tss_id,
    metadata = copy(c.metadata), time_creation = c.time_creation, time_update = c.time_update,
  }
end

-- A transaction as of revision `rev` (its stored snapshot plus latest_revision).
local function render_tx(tx, rev)
  local r = copy(tx.revisions[rev].response)
  r.latest_revision = tx.latest_revision
  if r.schema then r.schema = process_data.echo(r.schema) end
  return r
end

-- ------------------------------------------------------------------ lookups
local function get_tss(ctx, tok, id)
  if not validate.is_uuid(id) then errors.schema("params/tss_id must match format \"uuid\"") end
  local tss = ctx.state.tss[id:lower()]
  if not tss then errors.tss_not_found(id) end
  if tss.organization_id ~= tok.organization_id then
    errors.raise(403, "E_ACCESS_DENIED", "TSS " .. id .. " belongs to another organization")
  end
  return tss
end

local function need_admin(tss, tok, what)
  if not tss.admin_sessions[tok.session] then
    errors.raise(403, "E_ACCESS_DENIED",
      what .. " needs an authenticated admin: call POST /tss/" .. tss.id .. "/admin/auth first")
  end
end

local function get_client(ctx, tss, id)
  if not validate.is_uuid(id) then errors.schema("params/client_id must match format \"uuid\"") end
  local c = ctx.state.clients[id:lower()]
  if not c or c.tss_id ~= tss.id then
    errors.raise(404, "E_CLIENT_NOT_FOUND", "client " .. id .. " not found in TSS " .. tss.id)
  end
  return c
end

-- ------------------------------------------------------------------ lists
local function parse_list(req, order_fields)
  local q = req.query
  local o = { limit = 100, offset = 0, order = "asc", order_by = order_fields[1] }
  if q.limit then
    o.limit = math.tointeger(tonumber(q.limit))
    if not o.limit or o.limit < 1 or o.limit > 100 then
      errors.schema("querystring/limit must be an integer in 1..100")
    end
  end
  if q.offset then
    o.offset = math.tointeger(tonumber(q.offset))
    if not o.offset or o.offset < 0 then errors.schema("querystring/offset must be an integer >= 0") end
  end
  if q.order then
    if q.order ~= "asc" and q.order ~= "desc" then
      errors.schema("querystring/order must be equal to one of the allowed values (asc, desc)")
    end
    o.order = q.order
  end
  if q.order_by then
    local ok = false
    for _, f in ipairs(order_fields) do ok = ok or f == q.order_by end
    if not ok then
      errors.schema("querystring/order_by must be equal to one of the allowed values ("
        .. table.concat(order_fields, ", ") .. ")")
    end
    o.order_by = q.order_by
  end
  -- states[]=A, states[0]=A, states=A (repeatable)
  for _, kv in ipairs(req.query_list or {}) do
    if kv[1]:match("^states%[%d*%]$") or kv[1] == "states" then
      o.states = o.states or {}
      o.states[kv[2]] = true
    end
  end
  return o
end

local function list(items, o, list_type)
  local filtered = {}
  for _, it in ipairs(items) do
    if not o.states or o.states[it.state] then filtered[#filtered + 1] = it end
  end
  local key = o.order_by
  table.sort(filtered, function(a, b)
    local x, y = a[key], b[key]
    if x == y then return (a._seq or 0) < (b._seq or 0) end
    if x == nil then return o.order == "asc" end
    if y == nil then return o.order ~= "asc" end
    if o.order == "asc" then return x < y else return x > y end
  end)
  local data = json.array{}
  for i = o.offset + 1, math.min(#filtered, o.offset + o.limit) do
    local it = filtered[i]
    it._seq = nil
    data[#data + 1] = it
  end
  return { data = data, count = #data, _type = list_type, _env = ENV, _version = VERSION }
end

-- ------------------------------------------------------------------ signing
-- Signs one transaction log; returns the signature record.
local function sign_log(ctx, tss, t)
  tss.signature_counter = tss.signature_counter + 1
  local log_time = ctx.now()
  local msg = {
    operation_type = t.operation,
    client_id = t.client_serial,
    process_data = t.process_data or "",
    process_type = t.process_type,
    transaction_number = t.number,
    serial_number = tss.serial_raw,
    sig_alg = "ecdsa-plain-SHA256",
    signature_counter = tss.signature_counter,
    log_time = log_time,
    log_time_format = "unixTime",
  }
  local tbs = assert(core.tse.log_message(msg))
  local sig = assert(tss.key:sign(tbs))
  msg.signature = sig
  local _, full = core.tse.log_message(msg)
  return { counter = tss.signature_counter, log_time = log_time, value = sig, log = full }
end

-- Signs one system log (TR-03151 certifiedDataType ...7.1.2) and keeps it in
-- tss.system_logs, so that an unfiltered export has every counter from 1.
-- operation: a TR-03151 function name ("initialize", "disableSecureElement", ...).
local function sign_system_log(ctx, tss, operation, data)
  tss.signature_counter = tss.signature_counter + 1
  local log_time = ctx.now()
  local msg = {
    log_type = "system",
    operation_type = operation,
    system_operation_data = data or "",
    serial_number = tss.serial_raw,
    sig_alg = "ecdsa-plain-SHA256",
    signature_counter = tss.signature_counter,
    log_time = log_time,
    log_time_format = "unixTime",
  }
  msg.signature = assert(tss.key:sign((assert(core.tse.log_message(msg)))))
  local _, full = core.tse.log_message(msg)
  tss.system_logs[#tss.system_logs + 1] = full
end

-- ------------------------------------------------------------------ TSS
local function create_tss(ctx, tok, id)
  local st = ctx.state
  local active = 0
  for _, tid in ipairs(st.tss_order) do
    local t = st.tss[tid]
    if t.organization_id == tok.organization_id
        and (t.state == "CREATED" or t.state == "UNINITIALIZED" or t.state == "INITIALIZED") then
      active = active + 1
    end
  end
  local limit = ctx.opts.tss_limit or DEFAULT_TSS_LIMIT
  if limit > 0 and active >= limit then
    errors.raise(403, "E_TSS_LIMIT_REACHED",
      "at most " .. limit .. " TSS may be CREATED, UNINITIALIZED or INITIALIZED in TEST; disable one first")
  end
  local key = assert(core.crypto.generate_key("P-256"))
  local point = key:public_point()
  local serial_raw = core.crypto.sha256(point)
  local tss = {
    id = id, organization_id = tok.organization_id, state = "CREATED",
    key = key, serial_raw = serial_raw, serial_hex = core.crypto.hex(serial_raw),
    public_key_b64 = core.crypto.b64encode(point),
    certificate = assert(key:certificate("fiskaly sandbox TSS " .. id, 3650)),
    description = "fiskaly sign cloud-TSE (" .. id .. ")",
    puk = ctx.random_string(10, "0123456789"),
    pin = nil, pin_blocked = true, pin_failures = 0,
    admin_sessions = {},
    signature_counter = 0, tx_counter = 0,
    registered_clients = 0, active_tx = 0,
    metadata = {},
    time_creation = ctx.now(),
    clients = {}, txs = {}, tx_by_number = {}, tx_order = {},
    system_logs = {},                  -- signed system logs (DER), in counter order
  }
  st.tss[id] = tss
  st.tss_order[#st.tss_order + 1] = id
  return tss
end

local TRANSITIONS = {
  CREATED = { UNINITIALIZED = true },
  UNINITIALIZED = { INITIALIZED = true, DISABLED = true },
  INITIALIZED = { DISABLED = true },
}

local function update_tss(ctx, tok, tss, body)
  local to, from = body.state, tss.state
  if to == from then
    -- Same state: a repeated call (e.g. personalisation retried after a timeout)
    -- or a metadata update (allowed since 2.1.22).
    if body.description ~= nil then
      errors.raise(400, "E_ILLEGAL_TSS_STATE_CHANGE", "description can only be set when initializing the TSS")
    end
    merge_metadata(tss.metadata, body.metadata)
    return
  end
  if not (TRANSITIONS[from] and TRANSITIONS[from][to]) then
    errors.raise(400, "E_ILLEGAL_TSS_STATE_CHANGE",
      "illegal TSS state change from " .. from .. " to " .. to)
  end
  if body.description ~= nil and to ~= "INITIALIZED" then
    errors.raise(400, "E_ILLEGAL_TSS_STATE_CHANGE", "description can only be set when initializing the TSS")
  end
  if to == "INITIALIZED" or to == "DISABLED" then
    if tss.pin_blocked then
      errors.raise(423, "E_ADMIN_PIN_BLOCKED", "the admin PIN is blocked: set it with the PUK (PATCH /tss/" .. tss.id .. "/admin)")
    end
    need_admin(tss, tok, "changing the TSS state to " .. to)
  end
  local now = ctx.now()
  if to == "UNINITIALIZED" then
    tss.time_uninit = now
  elseif to == "INITIALIZED" then
    tss.time_init = now
    if body.description ~= nil then tss.description = body.description end
    -- Initialisation writes INIT_SYSTEM_LOGS system logs (TR-03151 function names:
    -- the admin's authentication, initialize, the first time update).
    for _, op in ipairs(INIT_SYSTEM_OPS) do sign_system_log(ctx, tss, op) end
  elseif to == "DISABLED" then
    tss.time_disable = now
    sign_system_log(ctx, tss, "disableSecureElement")
  end
  tss.state = to
  merge_metadata(tss.metadata, body.metadata)
end

-- ------------------------------------------------------------------ transactions
local function find_tx(ctx, tss, ref)
  if ref:match("^%d+$") then
    local tx = tss.tx_by_number[math.tointeger(tonumber(ref)) or -1]
    if not tx then errors.raise(404, "E_TX_NOT_FOUND", "transaction number " .. ref .. " not found in TSS " .. tss.id) end
    return tx, nil
  end
  if not validate.is_uuid(ref) then
    errors.schema("params/tx_id_or_number must be a UUID or a transaction number")
  end
  return tss.txs[ref:lower()], ref:lower()
end

local function parse_revision(req, required)
  local s = req.query.tx_revision
  if s == nil then
    if required then errors.schema("querystring must have required property 'tx_revision'") end
    return nil
  end
  local n = s:match("^%d+$") and math.tointeger(tonumber(s))
  if not n then errors.schema("querystring/tx_revision must be integer") end
  if n < 1 then errors.schema("querystring/tx_revision must be >= 1") end
  return n
end

local function upsert_tx(ctx, tok, tss, ref, req)
  local rev = parse_revision(req, true)
  local body = validate.body(validate.schemas.Tx, req.body)
  local tx, new_id = find_tx(ctx, tss, ref)

  -- A repeated request (same revision, same body) is answered from the store.
  if tx and rev == tx.latest_revision and context.deep_equal(tx.revisions[rev].request, body) then
    return render_tx(tx, rev)
  end

  if tss.state == "DISABLED" then errors.raise(400, "E_TSS_DISABLED", "TSS " .. tss.id .. " is DISABLED") end
  if tss.state ~= "INITIALIZED" then
    errors.raise(400, "E_TSS_NOT_INITIALIZED", "TSS " .. tss.id .. " is " .. tss.state .. ", not INITIALIZED")
  end

  if tx then
    if rev ~= tx.latest_revision + 1 then
      errors.raise(400, "E_TX_UPSERT", string.format(
        "tx_revision %d does not follow latest_revision %d (send latest_revision + 1 = %d)",
        rev, tx.latest_revision, tx.latest_revision + 1))
    end
    if tx.state ~= "ACTIVE" then
      errors.raise(400, "E_TX_UPSERT", "transaction " .. tx.id .. " is already " .. tx.state)
    end
  else
    if rev ~= 1 then
      errors.raise(400, "E_TX_UPSERT", "a new transaction must be started with tx_revision=1 (got " .. rev .. ")")
    end
    if body.state ~= "ACTIVE" then
      errors.raise(400, "E_TX_UPSERT", "a new transaction must be started with state ACTIVE (got " .. body.state .. ")")
    end
    if tss.active_tx >= MAX_ACTIVE_TX then
      errors.raise(400, "E_TX_LIMIT_REACHED",
        "TSS " .. tss.id .. " has " .. MAX_ACTIVE_TX .. " ACTIVE transactions: finish or cancel some")
    end
  end

  local client = ctx.state.clients[body.client_id:lower()]
  if not client or client.tss_id ~= tss.id then
    errors.raise(400, "E_CLIENT_NOT_FOUND", "client " .. body.client_id .. " not found in TSS " .. tss.id)
  end
  if client.state ~= "REGISTERED" then
    errors.raise(400, "E_CLIENT_DEREGISTERED", "client " .. client.id .. " is DEREGISTERED")
  end

  local ptype, pdata, schema = tx and tx.process_type, tx and tx.process_data, tx and tx.schema
  if body.schema then
    local nt, nd = process_data.build(body.schema)
    if ptype and nt ~= ptype then
      errors.raise(409, "E_TX_ILLEGAL_TYPE_CHANGE",
        "process_type " .. nt .. " differs from the transaction's process_type " .. ptype)
    end
    ptype, pdata, schema = nt, nd, body.schema
  end
  if body.state ~= "ACTIVE" and not ptype then
    errors.raise(409, "E_TX_NO_TYPE_DEFINED",
      "cannot set state " .. body.state .. ": no schema was ever given for this transaction")
  end

  -- Everything checked: apply.
  if not tx then
    tss.tx_counter = tss.tx_counter + 1
    tx = { id = new_id, number = tss.tx_counter, tss_id = tss.id, latest_revision = 0,
      state = "ACTIVE", revisions = {}, metadata = {} }
    tss.txs[tx.id] = tx
    tss.tx_by_number[tx.number] = tx
    tss.tx_order[#tss.tx_order + 1] = tx.id
    tss.active_tx = tss.active_tx + 1
  end
  local operation = tx.latest_revision == 0 and "Start" or (body.state == "ACTIVE" and "Update" or "Finish")
  local s = sign_log(ctx, tss, {
    operation = operation .. "Transaction", client_serial = client.serial_number,
    process_type = ptype, process_data = pdata, number = tx.number,
  })
  if operation == "Start" then tx.time_start = s.log_time end
  if body.state ~= "ACTIVE" then
    tx.time_end = s.log_time
    tss.active_tx = tss.active_tx - 1
  end
  tx.state, tx.client_id = body.state, client.id
  tx.process_type, tx.process_data, tx.schema = ptype, pdata, schema
  merge_metadata(tx.metadata, body.metadata)
  tx.latest_revision = rev

  local resp = {
    _id = tx.id, _type = "TRANSACTION", _env = ENV, _version = VERSION,
    number = tx.number, state = tx.state, revision = rev,
    client_id = client.id, client_serial_number = client.serial_number,
    tss_id = tss.id, tss_serial_number = tss.serial_hex,
    time_start = tx.time_start, time_end = tx.time_end,
    metadata = copy(tx.metadata),
    log = { operation = operation, timestamp = s.log_time, timestamp_format = "unixTime" },
    signature = {
      value = core.crypto.b64encode(s.value), algorithm = "ecdsa-plain-SHA256",
      counter = s.counter,               -- a number, as fiskaly's middleware sends it
      public_key = tss.public_key_b64,
    },
  }
  if schema then
    resp.schema = copy(schema)
    resp.schema.raw = { process_type = ptype, process_data = core.crypto.b64encode(pdata) }
  end
  if body.state ~= "ACTIVE" then
    resp.qr_code_data = table.concat({
      "V0", client.serial_number, ptype, pdata, tostring(tx.number), tostring(s.counter),
      context.iso_time(tx.time_start), context.iso_time(s.log_time),
      "ecdsa-plain-SHA256", "unixTime", resp.signature.value, tss.public_key_b64,
    }, ";")
  end
  tx.revisions[rev] = { request = body, response = resp, log = s.log }
  return render_tx(tx, rev)
end

local function tx_items(tss, pred)
  local items = {}
  for _, id in ipairs(tss.tx_order) do
    local tx = tss.txs[id]
    if not pred or pred(tx) then
      local r = render_tx(tx, tx.latest_revision)
      r._seq = tx.number
      items[#items + 1] = r
    end
  end
  return items
end

local TX_ORDER = { "number", "state", "time_start", "time_end" }

-- ------------------------------------------------------------------ routes
function M.routes(r)
  require("sandbox.export").routes(r, get_tss)   -- exports (sandbox/export.lua)
  r("POST", "^/api/v2/auth$", function(ctx, req)
    return 200, auth.login(ctx, req, "sign")
  end)

  r("PUT", "^/api/v2/tss/([^/]+)$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "sign")
    if not validate.is_uuid(id) then errors.schema("params/tss_id must match format \"uuid\"") end
    id = id:lower()
    local body = validate.body(validate.schemas.CreateTss, req.body, true)
    local tss = ctx.state.tss[id]
    if tss then
      if tss.organization_id ~= tok.organization_id or tss.state ~= "CREATED" then
        errors.raise(409, "E_TSS_CONFLICT", "TSS " .. id .. " already exists and is no longer CREATED")
      end
    else
      tss = create_tss(ctx, tok, id)
    end
    merge_metadata(tss.metadata, body.metadata)
    return 200, render_tss(tss)
  end)

  r("GET", "^/api/v2/tss/([^/]+)$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "sign")
    return 200, render_tss(get_tss(ctx, tok, id))
  end)

  r("PATCH", "^/api/v2/tss/([^/]+)$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    local body = validate.body(validate.schemas.UpdateTss, req.body)
    update_tss(ctx, tok, tss, body)
    return 200, render_tss(tss)
  end)

  r("GET", "^/api/v2/tss$", function(ctx, req)
    local tok = auth.require(ctx, req, "sign")
    local o = parse_list(req, { "time_creation", "description", "state", "time_init", "time_disable" })
    local items = {}
    for i, id in ipairs(ctx.state.tss_order) do
      local tss = ctx.state.tss[id]
      if tss.organization_id == tok.organization_id then
        local t = render_tss(tss)
        t._seq = i
        items[#items + 1] = t
      end
    end
    return 200, list(items, o, "TSS_LIST")
  end)

  r("PATCH", "^/api/v2/tss/([^/]+)/admin$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    local body = validate.body(validate.schemas.ChangeAdminPin, req.body)
    if tss.state ~= "UNINITIALIZED" and tss.state ~= "INITIALIZED" then
      errors.raise(400, "E_CHANGE_ADMIN_PIN_FAILED",
        "the admin PIN can only be changed while the TSS is UNINITIALIZED or INITIALIZED (it is " .. tss.state .. ")")
    end
    if body.admin_puk ~= tss.puk then
      errors.raise(400, "E_CHANGE_ADMIN_PIN_FAILED", "changing the admin PIN failed: wrong admin_puk")
    end
    tss.pin, tss.pin_blocked, tss.pin_failures = body.new_admin_pin, false, 0
    return 200, {}
  end)

  r("POST", "^/api/v2/tss/([^/]+)/admin/auth$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    local body = validate.body(validate.schemas.AdminAuth, req.body)
    if tss.pin_blocked then
      errors.raise(423, "E_ADMIN_PIN_BLOCKED",
        "the admin PIN is blocked: unblock it with the PUK (PATCH /tss/" .. tss.id .. "/admin)")
    end
    if body.admin_pin ~= tss.pin then
      tss.pin_failures = tss.pin_failures + 1
      if tss.pin_failures >= MAX_PIN_FAILURES then tss.pin_blocked = true end
      errors.raise(401, "E_UNAUTHORIZED", string.format(
        "wrong admin_pin (%d of %d attempts used%s)", tss.pin_failures, MAX_PIN_FAILURES,
        tss.pin_blocked and "; the PIN is now blocked" or ""))
    end
    tss.pin_failures = 0
    tss.admin_sessions[tok.session] = true
    return 200, {}
  end)

  r("POST", "^/api/v2/tss/([^/]+)/admin/logout$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    validate.body({ type = "object" }, req.body, true)
    tss.admin_sessions[tok.session] = nil
    return 200, {}
  end)

  r("PUT", "^/api/v2/tss/([^/]+)/client/([^/]+)$", function(ctx, req, id, cid)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    if not validate.is_uuid(cid) then errors.schema("params/client_id must match format \"uuid\"") end
    cid = cid:lower()
    local body = validate.body(validate.schemas.CreateClient, req.body)
    local serial = body.serial_number
    local existing = ctx.state.clients[cid]
    if existing then      -- idempotent since 2.0.33: same TSS and serial
      if existing.tss_id == tss.id and existing.serial_number == serial then
        return 200, render_client(existing)
      end
      errors.raise(409, "E_CLIENT_CONFLICT",
        "client " .. cid .. " already exists (client_id must be unique system-wide)")
    end
    if tss.state == "DISABLED" then errors.raise(400, "E_TSS_DISABLED", "TSS " .. tss.id .. " is DISABLED") end
    if tss.state ~= "INITIALIZED" then
      errors.raise(400, "E_TSS_NOT_INITIALIZED", "TSS " .. tss.id .. " is " .. tss.state .. ", not INITIALIZED")
    end
    need_admin(tss, tok, "creating a client")
    if serial:find("[/_]") or serial:match("^%s") or serial:match("%s$") then
      errors.raise(400, "E_ILLEGAL_CLIENT_SERIAL",
        "serial_number must not contain '/' or '_' nor start or end with whitespace (DSFinV-K 2.3)")
    end
    for _, other in ipairs(tss.clients) do
      if ctx.state.clients[other].serial_number == serial then
        errors.raise(400, "E_ILLEGAL_CLIENT_SERIAL", "serial_number " .. serial .. " is already used in TSS " .. tss.id)
      end
    end
    if tss.registered_clients >= MAX_CLIENTS then
      errors.raise(403, "E_CLIENT_LIMIT_REACHED", "TSS " .. tss.id .. " has " .. MAX_CLIENTS .. " registered clients")
    end
    local now = ctx.now()
    local c = { id = cid, tss_id = tss.id, serial_number = serial, state = "REGISTERED",
      metadata = {}, time_creation = now, time_update = now }
    merge_metadata(c.metadata, body.metadata)
    ctx.state.clients[cid] = c
    ctx.state.client_order[#ctx.state.client_order + 1] = cid
    tss.clients[#tss.clients + 1] = cid
    tss.registered_clients = tss.registered_clients + 1
    return 200, render_client(c)
  end)

  r("GET", "^/api/v2/tss/([^/]+)/client/([^/]+)$", function(ctx, req, id, cid)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    return 200, render_client(get_client(ctx, tss, cid))
  end)

  r("PATCH", "^/api/v2/tss/([^/]+)/client/([^/]+)$", function(ctx, req, id, cid)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    local c = get_client(ctx, tss, cid)
    local body = validate.body(validate.schemas.UpdateClient, req.body)
    if tss.state == "DISABLED" then errors.raise(400, "E_TSS_DISABLED", "TSS " .. tss.id .. " is DISABLED") end
    need_admin(tss, tok, "updating a client")
    if body.state ~= c.state then
      if body.state == "REGISTERED" then
        if tss.registered_clients >= MAX_CLIENTS then
          errors.raise(403, "E_CLIENT_LIMIT_REACHED", "TSS " .. tss.id .. " has " .. MAX_CLIENTS .. " registered clients")
        end
        tss.registered_clients = tss.registered_clients + 1
      else
        tss.registered_clients = tss.registered_clients - 1
      end
      c.state = body.state
    end
    merge_metadata(c.metadata, body.metadata)
    c.time_update = ctx.now()
    return 200, render_client(c)
  end)

  local CLIENT_ORDER = { "time_creation", "serial_number" }
  local function client_items(ctx, req, pred)
    local items = {}
    for i, cid in ipairs(ctx.state.client_order) do
      local c = ctx.state.clients[cid]
      if pred(c) and (not req.query.serial_number or c.serial_number == req.query.serial_number)
          and (not req.query.state or c.state == req.query.state) then
        local rc = render_client(c)
        rc._seq = i
        items[#items + 1] = rc
      end
    end
    return items
  end

  r("GET", "^/api/v2/tss/([^/]+)/client$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    local o = parse_list(req, CLIENT_ORDER)
    return 200, list(client_items(ctx, req, function(c) return c.tss_id == tss.id end), o, "CLIENT_LIST")
  end)

  r("GET", "^/api/v2/client$", function(ctx, req)
    local tok = auth.require(ctx, req, "sign")
    local o = parse_list(req, CLIENT_ORDER)
    return 200, list(client_items(ctx, req, function(c)
      return ctx.state.tss[c.tss_id].organization_id == tok.organization_id
    end), o, "CLIENT_LIST")
  end)

  r("PUT", "^/api/v2/tss/([^/]+)/tx/([^/]+)$", function(ctx, req, id, ref)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    return 200, upsert_tx(ctx, tok, tss, ref, req)
  end)

  r("GET", "^/api/v2/tss/([^/]+)/tx/([^/]+)$", function(ctx, req, id, ref)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    local tx = find_tx(ctx, tss, ref)
    if not tx then errors.raise(404, "E_TX_NOT_FOUND", "transaction " .. ref .. " not found in TSS " .. tss.id) end
    local rev = parse_revision(req, false) or tx.latest_revision
    if not tx.revisions[rev] then
      errors.raise(400, "E_TX_REVISION_NOT_FOUND",
        "revision " .. rev .. " does not exist; check the latest_revision field (" .. tx.latest_revision .. ")")
    end
    return 200, render_tx(tx, rev)
  end)

  -- Deprecated in fiskaly since 2.1.26, kept because it hands out the signed log bytes.
  r("GET", "^/api/v2/tss/([^/]+)/tx/([^/]+)/log$", function(ctx, req, id, ref)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    local tx = find_tx(ctx, tss, ref)
    if not tx then errors.raise(404, "E_TX_NOT_FOUND", "transaction " .. ref .. " not found in TSS " .. tss.id) end
    local rev = parse_revision(req, false) or tx.latest_revision
    if not tx.revisions[rev] then
      errors.raise(400, "E_TX_REVISION_NOT_FOUND", "revision " .. rev .. " does not exist")
    end
    return 200, tx.revisions[rev].log, { ["Content-Type"] = "application/octet-stream" }
  end)

  r("GET", "^/api/v2/tss/([^/]+)/tx$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    local o = parse_list(req, TX_ORDER)
    return 200, list(tx_items(tss), o, "TRANSACTION_LIST")
  end)

  r("GET", "^/api/v2/tss/([^/]+)/client/([^/]+)/tx$", function(ctx, req, id, cid)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    local c = get_client(ctx, tss, cid)
    local o = parse_list(req, TX_ORDER)
    return 200, list(tx_items(tss, function(tx) return tx.client_id == c.id end), o, "TRANSACTION_LIST")
  end)

  r("GET", "^/api/v2/tx$", function(ctx, req)
    local tok = auth.require(ctx, req, "sign")
    local o = parse_list(req, TX_ORDER)
    local items = {}
    for _, tid in ipairs(ctx.state.tss_order) do
      local tss = ctx.state.tss[tid]
      if tss.organization_id == tok.organization_id then
        for _, it in ipairs(tx_items(tss)) do items[#items + 1] = it end
      end
    end
    return 200, list(items, o, "TRANSACTION_LIST")
  end)
end

-- A summary of the SIGN DE state for GET /_sandbox/state.
function M.summary(ctx)
  local out = json.array{}
  for _, id in ipairs(ctx.state.tss_order) do
    local tss = ctx.state.tss[id]
    local counts = { ACTIVE = 0, FINISHED = 0, CANCELLED = 0 }
    for _, txid in ipairs(tss.tx_order) do
      local st = tss.txs[txid].state
      counts[st] = counts[st] + 1
    end
    local clients = json.array{}
    for _, cid in ipairs(tss.clients) do
      local c = ctx.state.clients[cid]
      clients[#clients + 1] = { id = c.id, serial_number = c.serial_number, state = c.state }
    end
    out[#out + 1] = {
      id = tss.id, organization_id = tss.organization_id, state = tss.state,
      serial_number = tss.serial_hex, signature_counter = tss.signature_counter,
      transaction_counter = tss.tx_counter, admin_pin_blocked = tss.pin_blocked,
      admin_pin_failures = tss.pin_failures,
      number_of_clients = #tss.clients, clients = clients,
      number_of_transactions = #tss.tx_order, transactions = counts,
    }
  end
  return out
end

return M
