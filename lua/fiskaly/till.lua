-- fiskaly.till: what a point of sale calls for every sale, on top of a
-- provisioned store (see `fiskaly provision`).
--
--   local till = assert(require("fiskaly.till").open{
--     store = "/var/lib/pos/fiskaly.db", base_url = ..., plugins = { "/etc/pos/plugins" } })
--   local r, err = till:sale(pos_sale, { plugin = "retail" })
--   if r then print(r.qr_code_data) end          -- r.outage: print "TSE ausgefallen"
--
-- A sale: the POS data goes through a receipt-mapping plugin (sandboxed,
-- balanced to the cent), is written to the store's journal, then signed as a
-- SIGN DE transaction (fiskaly.transaction: start, finish, read-back on lost
-- answers, signature verified). till:recover() settles what a crash left open.
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local errors = require "fiskaly.errors"
local client_mod = require "fiskaly.client"
local store_mod = require "fiskaly.store"
local receipt_mod = require "fiskaly.receipt"
local transaction = require "fiskaly.transaction"

local M = {}

-- Default total time (ms) one transaction call may take, retries included.
M.SALE_DEADLINE_MS = 5000

local Till = {}
Till.__index = Till
Till.__name = "fiskaly.Till"

local function fail(code, message)
  return nil, errors.state(message, code)
end

-- Picks the organization, TSS and client this till signs with.
local function resolve(st, opts)
  local orgs, err = st:orgs()
  if not orgs then return nil, err end
  local org
  for _, o in ipairs(orgs) do
    if o.state == "created" and (opts.organization == nil or o.name == opts.organization) then
      org = o
      break
    end
  end
  if not org then return fail("NOT_PROVISIONED", "no provisioned organization in the store (run `fiskaly provision`)") end
  local key, kerr = st:api_key_active(org.name)
  if not key then return nil, kerr or errors.state("no active API key in the store", "NOT_PROVISIONED") end
  local tss
  if opts.tss then
    tss = st:tss_get(opts.tss) or st:tss_by_label(org.name, opts.tss)
  else
    for _, t in ipairs(assert(st:tss_list(org.name))) do
      if t.state == "INITIALIZED" then tss = t break end
    end
  end
  if not tss then return fail("NOT_PROVISIONED", "no INITIALIZED TSS " .. (opts.tss and (tostring(opts.tss) .. " ") or "") .. "in the store") end
  if tss.state ~= "INITIALIZED" then
    return fail("E_TSS_NOT_INITIALIZED", "TSS " .. tss.tss_id .. " is " .. tostring(tss.state) .. ", not INITIALIZED")
  end
  local client
  for _, c in ipairs(assert(st:clients(tss.tss_id))) do
    if c.state == "REGISTERED" and (opts.client == nil or opts.client == c.serial_number or opts.client == c.client_id) then
      client = c
      break
    end
  end
  if not client then
    return fail("NOT_PROVISIONED", "no REGISTERED client " .. (opts.client and (tostring(opts.client) .. " ") or "")
      .. "on TSS " .. tss.tss_id)
  end
  return { org = org, key = key, tss = tss, client = client }
end

-- Opens a till. opts: store (path) or an open fiskaly.store Store, key_file /
-- key (the store's sealing key), base_url | sign_base_url, ca_file, log,
-- plugins (list of directories; default $FISKALY_PLUGIN_PATH or ./plugins),
-- budget (plugin budget), tss (id or label), client (serial or id),
-- organization (name), attempts (read-back rounds per PUT), sale_deadline_ms
-- (per transaction call, retries included; default 5000). Returns a till, or nil, err.
function M.open(opts)
  if type(opts) ~= "table" then error("fiskaly.till.open: options table expected", 2) end
  local st, serr = opts.store, nil
  local own_store = false
  if type(st) == "string" then
    st, serr = store_mod.open{ path = st, key_file = opts.key_file, key = opts.key }
    if not st then return nil, serr end
    own_store = true
  elseif type(st) ~= "table" then
    error("fiskaly.till.open: opts.store (a path or a Store) required", 2)
  end
  local r, rerr = resolve(st, opts)
  if not r then
    if own_store then st:close() end
    return nil, rerr
  end
  local hub = client_mod.new{
    base_url = opts.base_url, sign_base_url = opts.sign_base_url,
    management_base_url = opts.management_base_url, ca_file = opts.ca_file, log = opts.log,
    api_key = r.key.api_key, api_secret = r.key.secret,
    -- a sale must not hold the till: each transaction call gives up after
    -- sale_deadline_ms (all retries included), then the sale is an outage
    retry = { deadline_ms = { tx = opts.sale_deadline_ms or M.SALE_DEADLINE_MS } },
  }
  local paths = opts.plugins
  if not paths then
    paths = {}
    for dir in (os.getenv("FISKALY_PLUGIN_PATH") or "plugins"):gmatch("[^:]+") do paths[#paths + 1] = dir end
  end
  local self = setmetatable({
    store = st, own_store = own_store, client = hub, sign = hub.sign,
    tss_id = r.tss.tss_id, tss_public_key = r.tss.public_key, tss_serial_number = r.tss.serial_number,
    client_id = r.client.client_id, client_serial_number = r.client.serial_number,
    engine = receipt_mod.new{ paths = paths, budget = opts.budget },
    attempts = opts.attempts,
  }, Till)
  return self
end

-- Maps and signs one sale. opts: plugin (name), conf (plugin configuration),
-- tx_id (optional, a UUIDv4 chosen by the POS). Returns the result of
-- fiskaly.transaction.run plus `receipt` (the mapped standard_v1 receipt) and
-- `totals` (cents), or nil, err (err.kind "plugin"/"validation" when the sale
-- could not be mapped: nothing was sent; otherwise the API's error).
function Till:sale(pos_sale, opts)
  opts = opts or {}
  if type(opts.plugin) ~= "string" then error("fiskaly.till:sale: opts.plugin (a plugin name) required", 2) end
  local mapped, merr = self.engine:map(opts.plugin, pos_sale, opts.conf)
  if not mapped then return nil, merr end
  local tx_id = opts.tx_id or core.crypto.uuid4()
  local sale_json = json.encode(pos_sale)
  local ok, jerr = self.store:journal_record(tx_id, {
    tss_id = self.tss_id, client_id = self.client_id, state = "intent", sale = sale_json,
    plugin = opts.plugin, plugin_version = mapped.version,
  })
  if not ok then return nil, jerr end
  local res, err = transaction.run{
    sign = self.sign, tss_id = self.tss_id, client_id = self.client_id, tx_id = tx_id,
    schema = { standard_v1 = mapped.standard_v1 }, journal = self.store:journal(),
    tss_public_key = self.tss_public_key, attempts = self.attempts,
  }
  if not res then return nil, err end
  if res.signature_counter then self.store:tss_set_counter(self.tss_id, res.signature_counter) end
  res.receipt = mapped.standard_v1.receipt
  res.totals = mapped.totals
  res.expected_process_data = mapped.process_data
  if not res.outage and res.process_data ~= mapped.process_data then
    -- fiskaly built other process data than the plugin engine predicted:
    -- the signature is valid, but say so (the receipt prints what was signed).
    res.warning = "signed process_data differs from the mapped receipt's"
  end
  return res
end

-- The CANCELLATION body that closes an open transaction (a cancel must carry
-- a schema, else fiskaly answers E_TX_NO_TYPE_DEFINED).
local function cancel_body(client_id)
  return { state = "CANCELLED", client_id = client_id,
    schema = { standard_v1 = { receipt = { receipt_type = "CANCELLATION",
      amounts_per_vat_rate = json.array{}, amounts_per_payment_type = json.array{} } } } }
end

-- Settles sales a crash or an outage left open. Reads each open journal entry
-- back from the service: FINISHED there -> recorded as finished (answer was
-- lost); ACTIVE -> cancelled (CANCELLATION) so it does not count against the
-- TSS's limit; unknown there -> marked void (never started). Outage entries
-- are kept as they are: they are the record of a TSE failure.
-- Returns { checked, finished, cancelled, void, kept } or nil, err.
function Till:recover()
  local rows, err = self.store:journal_list{ open = true }
  if not rows then return nil, err end
  local out = { checked = 0, finished = 0, cancelled = 0, void = 0, kept = 0 }
  for _, row in ipairs(rows) do
    out.checked = out.checked + 1
    if row.outage == 1 or row.state == "outage" then
      out.kept = out.kept + 1
    else
      local tx, gerr = self.sign:get_transaction(row.tss_id, row.tx_id)
      if not tx then
        if gerr.code ~= "E_TX_NOT_FOUND" then return nil, gerr end
        self.store:journal_record(row.tx_id, { state = "void", stage = "recover" })
        out.void = out.void + 1
      elseif tx.state == "FINISHED" then
        self.store:journal_record(row.tx_id, { state = "finished", revision = tx.latest_revision,
          number = tx.number, qr_code_data = tx.qr_code_data,
          signature = tx.signature and tx.signature.value,
          signature_counter = tx.signature and tonumber(tx.signature.counter), stage = "recover" })
        out.finished = out.finished + 1
      elseif tx.state == "ACTIVE" then
        local cancelled, cerr = self.sign:upsert_transaction(row.tss_id, row.tx_id, tx.latest_revision + 1,
          cancel_body(row.client_id))
        if not cancelled then return nil, cerr end
        self.store:journal_record(row.tx_id, { state = "cancelled", revision = cancelled.latest_revision,
          number = cancelled.number, stage = "recover" })
        out.cancelled = out.cancelled + 1
      else
        self.store:journal_record(row.tx_id, { state = string.lower(tx.state), stage = "recover" })
        out.cancelled = out.cancelled + 1
      end
    end
  end
  return out
end

-- Orphan sweeper: cancels this client's transactions that are still ACTIVE at
-- the service and older than opts.min_age_s (default 300 s), whether or not the
-- journal knows them (another device, a lost journal, an old crash). ACTIVE
-- transactions are never closed by fiskaly and count against the TSS's limit
-- of 2000. Mind fiskaly's limit of 20 list calls per minute per TSS: run it at
-- start-up or on a schedule, not per sale. Returns { found, cancelled,
-- skipped } or nil, err.
function Till:sweep(opts)
  opts = opts or {}
  local min_age = opts.min_age_s or 300
  if math.type(min_age) ~= "integer" or min_age < 0 then
    error("fiskaly.till:sweep: min_age_s must be a non-negative integer", 2)
  end
  local now = os.time()
  local out = { found = 0, cancelled = 0, skipped = 0 }
  local offset, limit = 0, 100
  local open = {}
  repeat
    local page, err = self.sign:list_transactions(self.tss_id, { states = { "ACTIVE" }, limit = limit, offset = offset })
    if not page then return nil, err end
    for _, tx in ipairs(page.data or {}) do
      if tx.client_id == self.client_id then open[#open + 1] = tx end
    end
    offset = offset + limit
  until #(page.data or {}) < limit
  for _, tx in ipairs(open) do
    out.found = out.found + 1
    if now - (tonumber(tx.time_start) or now) < min_age then
      out.skipped = out.skipped + 1
    else
      local done, cerr = self.sign:upsert_transaction(self.tss_id, tx._id, tx.latest_revision + 1,
        cancel_body(self.client_id))
      if not done then return nil, cerr end
      local known = self.store:journal_get(tx._id)
      self.store:journal_record(tx._id, { tss_id = not known and self.tss_id or nil,
        client_id = not known and self.client_id or nil, state = "cancelled",
        revision = done.latest_revision, number = done.number, stage = "sweep" })
      out.cancelled = out.cancelled + 1
    end
  end
  return out
end

function Till:close()
  if self.own_store and self.store then self.store:close() end
  self.store = nil
end
Till.__close = Till.close

function Till:__tostring()
  return string.format("fiskaly.Till (TSS %s, client %s)", self.tss_id, tostring(self.client_serial_number))
end

return M
