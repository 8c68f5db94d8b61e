-- sandbox.export: SIGN DE v2 exports (fiskaly-api.md §9). An export is a
-- ustar TAR (BSI TR-03153 names) of the TSS's signed transaction log messages,
-- its certificate and an info.csv, built when the export is triggered.
--
-- State machine, deterministic: PENDING when triggered; each GET of the export
-- advances it one step (WORKING, then COMPLETED), so the second GET sees
-- COMPLETED. The sandbox option export_polls (default 2) sets how many GETs
-- it takes. The file is 404 E_EXPORT_NOT_COMPLETED (Retry-After: 60) before.
--
-- The system logs signed while initialising (counters 1..3) and disabling a
-- TSS (its last counter) are exported too, named like real exports
-- (Unixt_<t>_Sig-<n>_Log-Sys_<operation>.log): an unfiltered export holds every
-- counter from 1 to the last. Filters by client or transaction number select
-- transaction logs only; counter and date filters apply to system logs as well.
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local errors = require "sandbox.errors"
local validate = require "sandbox.validate"
local auth = require "sandbox.auth"
local context = require "sandbox.context"

local M = {}

local ENV, VERSION = context.ENV, context.SIGN_VERSION
local MAX_OPEN_EXPORTS = 10

-- ------------------------------------------------------------------ ustar writer
local function octal(n, width)
  -- width includes the terminating NUL
  return string.format("%0" .. (width - 1) .. "o", n) .. "\0"
end

local function field(s, width)
  assert(#s <= width, "tar field too long")
  return s .. ("\0"):rep(width - #s)
end

local function header(name, size, mtime, typeflag)
  local h = field(name, 100) .. octal(420, 8) .. octal(0, 8) .. octal(0, 8)
    .. octal(size, 12) .. octal(mtime, 12) .. "        " .. typeflag .. field("", 100)
    .. "ustar\0" .. "00" .. field("fiskaly", 32) .. field("fiskaly", 32)
    .. octal(0, 8) .. octal(0, 8) .. field("", 155) .. field("", 12)
  assert(#h == 512)
  local sum = 0
  for i = 1, 512 do sum = sum + h:byte(i) end
  return h:sub(1, 148) .. string.format("%06o", sum) .. "\0 " .. h:sub(157)
end

local function pad(data)
  local r = #data % 512
  return r == 0 and data or data .. ("\0"):rep(512 - r)
end

-- A pax record "<len> key=value\n" (len counts itself).
local function pax_record(key, value)
  local body = " " .. key .. "=" .. value .. "\n"
  local len = #body + 1
  while #tostring(len) + #body ~= len do len = #tostring(len) + #body end
  return tostring(len) .. body
end

-- files: list of { name =, data =, mtime = }. Names over 99 characters get a
-- pax extended header (as fiskaly's exports do).
function M.tar(files)
  local out = {}
  for _, f in ipairs(files) do
    local name = f.name
    if #name > 99 then
      local pax = pax_record("path", name)
      out[#out + 1] = header("PaxHeader/" .. name:sub(1, 80), #pax, f.mtime, "x")
      out[#out + 1] = pad(pax)
      name = name:sub(1, 99)
    end
    out[#out + 1] = header(name, #f.data, f.mtime, "0")
    out[#out + 1] = pad(f.data)
  end
  out[#out + 1] = ("\0"):rep(1024)
  return table.concat(out)
end

-- ------------------------------------------------------------------ export contents
local OPS = { StartTransaction = "Start", UpdateTransaction = "Update", FinishTransaction = "Finish" }

-- The signed logs of a TSS that pass the filter, in signature counter order.
local function collect(tss, f)
  local logs = {}
  for _, txid in ipairs(tss.tx_order) do
    local tx = tss.txs[txid]
    for rev = 1, tx.latest_revision do
      local r = tx.revisions[rev]
      local p = assert(core.tse.parse_log(r.log))
      local n, c, t = p.transaction_number, p.signature_counter, p.log_time_unix
      local ok
      if f.client_id then
        ok = r.response.client_id == f.client_id
      else
        ok = (not f.transaction_number or n == f.transaction_number)
          and (not f.start_transaction_number or n >= f.start_transaction_number)
          and (not f.end_transaction_number or n <= f.end_transaction_number)
          and (not f.start_date or t >= f.start_date)
          and (not f.end_date or t <= f.end_date)
          and (not f.start_signature_counter or c >= f.start_signature_counter)
          and (not f.end_signature_counter or c <= f.end_signature_counter)
      end
      if ok then logs[#logs + 1] = { log = r.log, p = p } end
    end
  end
  if not (f.client_id or f.transaction_number or f.start_transaction_number or f.end_transaction_number) then
    for _, log in ipairs(tss.system_logs or {}) do
      local p = assert(core.tse.parse_log(log))
      local c, t = p.signature_counter, p.log_time_unix
      if (not f.start_date or t >= f.start_date) and (not f.end_date or t <= f.end_date)
          and (not f.start_signature_counter or c >= f.start_signature_counter)
          and (not f.end_signature_counter or c <= f.end_signature_counter) then
        logs[#logs + 1] = { log = log, p = p }
      end
    end
  end
  table.sort(logs, function(a, b) return a.p.signature_counter < b.p.signature_counter end)
  return logs
end

local function build(ctx, tss, f)
  local logs = collect(tss, f)
  if f.maximum_number_records and #logs > f.maximum_number_records then
    return nil, "E_TOO_MANY_RECORDS"
  end
  local now = ctx.now()
  local files = {}
  for _, l in ipairs(logs) do
    local p = l.p
    local name
    if p.log_type == "system" then
      name = string.format("Unixt_%d_Sig-%d_Log-Sys_%s.log", p.log_time_unix, p.signature_counter, p.operation_type)
    else
      name = string.format("Unixt_%d_Sig-%d_Log-Tra_No-%d_%s_Client-%s.log", p.log_time_unix,
        p.signature_counter, p.transaction_number, OPS[p.operation_type] or "Unknown", p.client_id)
    end
    files[#files + 1] = { name = name, data = l.log, mtime = p.log_time_unix }
  end
  files[#files + 1] = { name = tss.serial_hex .. "_X509.pem", data = tss.certificate, mtime = tss.time_creation }
  local info = table.concat({
    '"description:";"' .. tss.description .. '";',
    '"manufacturer:";"fiskaly sandbox";',
    '"version:";"' .. VERSION .. '";',
    '"serial_number:";"' .. tss.serial_hex .. '";',
    '"signature_algorithm:";"ecdsa-plain-SHA256";',
    '"log_messages:";"' .. #logs .. '";',
  }, "\n") .. "\n"
  files[#files + 1] = { name = "info.csv", data = info, mtime = now }
  return M.tar(files), #logs
end

-- ------------------------------------------------------------------ routes
local function digits(q, name)
  local s = q[name]
  if s == nil then return nil end
  local n = tostring(s):match("^%d+$") and math.tointeger(tonumber(s))
  if not n then errors.schema("querystring/" .. name .. " must be a digit string") end
  return n
end

local function parse_filter(req)
  local q = req.query
  local f = {}
  if q.client_id then
    if not validate.is_uuid(q.client_id) then errors.schema("querystring/client_id must match format \"uuid\"") end
    f.client_id = q.client_id:lower()
  end
  for _, k in ipairs{ "transaction_number", "start_transaction_number", "end_transaction_number",
      "start_date", "end_date", "start_signature_counter", "end_signature_counter", "maximum_number_records" } do
    f[k] = digits(q, k)
  end
  return f
end

local function render(e)
  return {
    _id = e.id, _type = "EXPORT", _env = ENV, _version = VERSION,
    state = e.state, tss_id = e.tss_id, time_request = e.time_request,
    time_start = e.time_start, time_end = e.time_end, time_expiration = e.time_expiration,
    exception = e.exception, metadata = {},
  }
end

local function exports_of(ctx, tss)
  ctx.state.exports = ctx.state.exports or {}
  local x = ctx.state.exports[tss.id]
  if not x then
    x = { by_id = {}, order = {} }
    ctx.state.exports[tss.id] = x
  end
  return x
end

local function find(ctx, tss, id)
  if not validate.is_uuid(id) then errors.schema("params/export_id must match format \"uuid\"") end
  local e = exports_of(ctx, tss).by_id[id:lower()]
  if not e then errors.raise(404, "E_EXPORT_NOT_FOUND", "export " .. id .. " not found in TSS " .. tss.id) end
  return e
end

-- r: the router's add; get_tss(ctx, tok, id) from sandbox.sign_de.
function M.routes(r, get_tss)
  r("PUT", "^/api/v2/tss/([^/]+)/export/([^/]+)$", function(ctx, req, id, eid)
    local tok = auth.require(ctx, req, "sign")
    local tss = get_tss(ctx, tok, id)
    if not validate.is_uuid(eid) then errors.schema("params/export_id must match format \"uuid\"") end
    local body = req.body and req.body ~= "" and json.decode(req.body)
    if req.body and req.body ~= "" and (type(body) ~= "table" or next(body) ~= nil) then
      errors.schema("body must be an empty object {}")
    end
    local f = parse_filter(req)
    if tss.state ~= "INITIALIZED" and tss.state ~= "DISABLED" then
      errors.raise(409, "E_TSS_ILLEGAL_STATE_TO_PERFORM_EXPORT",
        "TSS " .. tss.id .. " is " .. tss.state .. ": only INITIALIZED or DISABLED TSS can be exported")
    end
    local x = exports_of(ctx, tss)
    eid = eid:lower()
    if x.by_id[eid] then errors.raise(400, "E_DUPLICATE_EXPORT", "export " .. eid .. " already exists") end
    local open = 0
    for _, e in pairs(x.by_id) do
      if e.state == "PENDING" or e.state == "WORKING" then open = open + 1 end
    end
    if open >= MAX_OPEN_EXPORTS then
      errors.raise(409, "E_TOO_MANY_EXPORTS", "at most " .. MAX_OPEN_EXPORTS .. " exports may be PENDING or WORKING")
    end
    local e = { id = eid, tss_id = tss.id, state = "PENDING", time_request = ctx.now(), gets = 0 }
    local tar, n_or_exc = build(ctx, tss, f)
    if tar then e.tar, e.records = tar, n_or_exc else e.exception = n_or_exc end
    x.by_id[eid] = e
    x.order[#x.order + 1] = eid
    return 200, render(e)
  end)

  r("GET", "^/api/v2/tss/([^/]+)/export/([^/]+)$", function(ctx, req, id, eid)
    local tok = auth.require(ctx, req, "sign")
    local e = find(ctx, get_tss(ctx, tok, id), eid)
    local polls = math.tointeger(ctx.opts.export_polls) or 2
    if e.state == "PENDING" or e.state == "WORKING" then
      e.gets = e.gets + 1
      if e.gets >= polls then
        e.time_start = e.time_start or ctx.now()
        if e.exception then
          e.state, e.time_error = "ERROR", ctx.now()
        else
          e.state, e.time_end, e.time_expiration = "COMPLETED", ctx.now(), ctx.now() + 30 * 86400
        end
      else
        e.state, e.time_start = "WORKING", ctx.now()
      end
    end
    return 200, render(e)
  end)

  r("GET", "^/api/v2/tss/([^/]+)/export/([^/]+)/file$", function(ctx, req, id, eid)
    local tok = auth.require(ctx, req, "sign")
    local e = find(ctx, get_tss(ctx, tok, id), eid)
    if e.state ~= "COMPLETED" then
      return 404, errors.body(errors.new(404, "E_EXPORT_NOT_COMPLETED",
        "export " .. e.id .. " is " .. e.state .. ", not COMPLETED")), { ["Retry-After"] = "60" }
    end
    return 200, e.tar, { ["Content-Type"] = "application/x-tar" }
  end)

  r("GET", "^/api/v2/tss/([^/]+)/export$", function(ctx, req, id)
    local tok = auth.require(ctx, req, "sign")
    local x = exports_of(ctx, get_tss(ctx, tok, id))
    local data = json.array{}
    for _, eid in ipairs(x.order) do data[#data + 1] = render(x.by_id[eid]) end
    return 200, { data = data, count = #data, _type = "EXPORT_LIST", _env = ENV, _version = VERSION }
  end)
end

return M
