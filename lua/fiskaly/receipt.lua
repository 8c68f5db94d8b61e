-- fiskaly.receipt: the receipt-mapping plugin engine.
--
--   local receipt = require "fiskaly.receipt"
--   local engine = receipt.new{ paths = { "plugins" }, budget = { instructions = 5e6, memory_kb = 32768 } }
--   local r, err = engine:map("retail", sale, conf)
--   -- r.standard_v1.receipt (the body sent to SIGN DE), r.process_data ("Beleg^..."), r.totals (cents)
--
-- A plugin is a directory <path>/<name>/ with handler.lua (returns a table with
-- VERSION and map(sale, conf, api)) and schema.lua (its configuration schema,
-- see fiskaly.receipt.schema). Both run in a sandbox (fiskaly.receipt.sandbox).
-- map() returns a draft in integer cents; the engine checks its shape, that
-- the VAT buckets, the payments (minus change) and the sale total agree to
-- the cent, builds the standard_v1 body, validates it and derives process_data.
-- See docs/plugins.md for the plugin author's guide.
local money = require "fiskaly.money"
local json = require "fiskaly.json"
local schema_mod = require "fiskaly.receipt.schema"
local sv1 = require "fiskaly.receipt.standard_v1"
local sandbox = require "fiskaly.receipt.sandbox"

local fmt, concat = string.format, table.concat
local type, pairs, ipairs, next, tostring = type, pairs, ipairs, next, tostring
local math_type = math.type

local receipt = {}
receipt.money = money
receipt.standard_v1 = sv1

----------------------------------------------------------------- errors

local Error = { __name = "fiskaly.receipt.Error" }
Error.__index = Error
Error.__tostring = function(e)
  local head = e.plugin and fmt("plugin %q: ", e.plugin) or ""
  -- validation messages are relative to their field; plugin messages stand alone
  local field = (e.kind == "validation" and e.field) and (e.field .. ": ") or ""
  return head .. field .. e.message
end

-- kind: "plugin" (the plugin cannot be loaded or its code failed) or
-- "validation" (configuration, sale or mapped receipt rejected).
local function new_error(kind, plugin, field, message, errors)
  return setmetatable({ kind = kind, plugin = plugin, field = field, message = message,
    errors = errors }, Error)
end

local function errors_error(plugin, errs)
  local parts = {}
  for i, e in ipairs(errs) do parts[i] = e.field .. ": " .. e.message end
  if #errs == 1 then
    return new_error("validation", plugin, errs[1].field, errs[1].message, errs)
  end
  return new_error("validation", plugin, nil, concat(parts, "; "), errs)
end
receipt.Error = Error

----------------------------------------------------------------- helpers

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Copies plugin-produced data without running any of its metamethods: tables
-- with a metatable, functions (unless allowed), cycles and oversized results
-- are refused. Returns the copy or nil, message.
local function raw_copy(v, allow_functions, path, budget)
  budget = budget or { n = 0 }
  local tv = type(v)
  if tv == "string" or tv == "number" or tv == "boolean" or tv == "nil" then return v end
  if tv == "function" and allow_functions then return v end
  if tv ~= "table" then return nil, fmt("%s: %s values are not allowed", path, tv) end
  if getmetatable(v) ~= nil then return nil, fmt("%s: tables with a metatable are not allowed", path) end
  budget.n = budget.n + 1
  if budget.n > 20000 then return nil, fmt("%s: result too large", path) end
  if (budget.depth or 0) > 16 then return nil, fmt("%s: nested too deeply", path) end
  budget.depth = (budget.depth or 0) + 1
  local c = {}
  local k, x = next(v)
  while k ~= nil do
    local tk = type(k)
    if tk ~= "string" and tk ~= "number" then
      budget.depth = budget.depth - 1
      return nil, fmt("%s: %s keys are not allowed", path, tk)
    end
    local sub = tk == "string" and (path .. "." .. k) or fmt("%s[%s]", path, tostring(k))
    local cx, err = raw_copy(x, allow_functions, sub, budget)
    if err then budget.depth = budget.depth - 1; return nil, err end
    c[k] = cx
    k, x = next(v, k)
  end
  budget.depth = budget.depth - 1
  return c
end

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = deep_copy(x) end
  return c
end

-- Copies host input (the sale, the configuration) for the plugin: plain data
-- only (metatables dropped, JSON nulls dropped as absent), at most 32 levels
-- and 200000 values, no cycles.
local function copy_input(v, path, st)
  local tv = type(v)
  if tv == "string" or tv == "number" or tv == "boolean" then return v end
  if tv ~= "table" then return nil, fmt("%s: %s values are not allowed", path, tv) end
  st.n = st.n + 1
  if st.n > 200000 then return nil, "sale: too large" end
  if st.seen[v] then return nil, fmt("%s: cyclic table", path) end
  if st.depth >= 32 then return nil, fmt("%s: nested too deeply", path) end
  st.seen[v], st.depth = true, st.depth + 1
  local c = {}
  for k, x in next, v do
    local tk = type(k)
    if tk ~= "string" and tk ~= "number" then
      return nil, fmt("%s: %s keys are not allowed", path, tk)
    end
    if x ~= json.null then
      local cx, err = copy_input(x, tk == "string" and (path .. "." .. k) or fmt("%s[%s]", path, tostring(k)), st)
      if err then return nil, err end
      c[k] = cx
    end
  end
  st.seen[v], st.depth = nil, st.depth - 1
  return c
end

local function is_array(t)
  return schema_mod.is_array(t)
end

----------------------------------------------------------------- plugin api

-- Accepts a rate name or its deprecated percentage ("19", "7", ...).
local function vat_rate(x)
  if type(x) == "string" then
    if sv1.VAT_INDEX[x] then return x end
    if sv1.DEPRECATED_RATE[x] then return sv1.DEPRECATED_RATE[x] end
  end
  return nil, fmt("unknown VAT rate %s (expected one of %s)", type(x) == "string" and fmt("%q", x) or type(x),
    concat(sv1.VAT_RATES, ", "))
end

local MONEY_API = {
  parse = money.parse, format = money.format, coerce = money.coerce, allocate = money.allocate,
  percent = money.percent, times = money.times, parse_qty = money.parse_qty, add = money.add,
  sum = money.sum, is_cents = money.is_cents, MAX = money.MAX,
}

local function make_api(name, logbuf)
  local ro = sandbox.readonly
  return ro({
    plugin = name,
    money = ro(MONEY_API, "api.money"),
    rates = ro({ table.unpack(sv1.VAT_RATES) }, "api.rates"),
    rate_percent = ro(sv1.VAT_PERCENT, "api.rate_percent"),
    receipt_types = ro({ table.unpack(sv1.RECEIPT_TYPES) }, "api.receipt_types"),
    vat_rate = vat_rate,
    log = function(msg)
      if #logbuf < 100 then
        logbuf[#logbuf + 1] = type(msg) == "string" and string.sub(msg, 1, 500) or ("(" .. type(msg) .. ")")
      end
    end,
  }, "api")
end

----------------------------------------------------------------- engine

local Engine = {}
Engine.__index = Engine
Engine.__name = "fiskaly.receipt.Engine"

local DEFAULT_BUDGET = { instructions = 5000000, memory_kb = 32768 }

-- opts.paths: plugin directories searched in order (default:
-- $FISKALY_PLUGIN_PATH split on ':', else "plugins"). opts.budget:
-- { instructions =, memory_kb = } per call. opts.reload: check the plugin's
-- files for changes before each map (default true).
function receipt.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("fiskaly.receipt.new: options must be a table", 2) end
  local paths = opts.paths
  if paths == nil then
    paths = {}
    local env = os.getenv("FISKALY_PLUGIN_PATH")
    if env and env ~= "" then
      for p in env:gmatch("[^:]+") do paths[#paths + 1] = p end
    else
      paths[1] = "plugins"
    end
  end
  if type(paths) ~= "table" or #paths == 0 then
    error("fiskaly.receipt.new: paths must be a non-empty array of directories", 2)
  end
  for _, p in ipairs(paths) do
    if type(p) ~= "string" then error("fiskaly.receipt.new: paths must hold strings", 2) end
  end
  local budget = opts.budget or {}
  local self = setmetatable({
    paths = { table.unpack(paths) },
    instructions = budget.instructions or DEFAULT_BUDGET.instructions,
    memory_kb = budget.memory_kb or DEFAULT_BUDGET.memory_kb,
    reload = opts.reload ~= false,
    plugins = {},
  }, Engine)
  if math_type(self.instructions) ~= "integer" or self.instructions < 1000 then
    error("fiskaly.receipt.new: budget.instructions must be an integer >= 1000", 2)
  end
  if math_type(self.memory_kb) ~= "integer" or self.memory_kb < 64 then
    error("fiskaly.receipt.new: budget.memory_kb must be an integer >= 64", 2)
  end
  return self
end

local function find_plugin(self, name)
  for _, dir in ipairs(self.paths) do
    local base = dir .. "/" .. name
    local handler = read_file(base .. "/handler.lua")
    if handler then
      return base, handler, read_file(base .. "/schema.lua")
    end
  end
  return nil
end

-- Compiles and runs one plugin file in the box; returns its value or nil, msg.
local function run_file(box, base, file, src)
  if src:byte(1) == 27 then
    return nil, fmt("%s: precompiled (binary) chunks are refused; ship Lua source", file)
  end
  local fn, err = box:load(src, "@" .. base .. "/" .. file)
  if not fn then return nil, err end
  local ok, v, reason = box:call(fn)
  if not ok then return nil, fmt("%s: %s", file, v), reason end
  return v
end

-- Loads (or reloads) a plugin from its files. Returns the plugin record or nil, err.
local function build(self, name, base, hsrc, ssrc)
  local function fail(msg, field)
    return nil, new_error("plugin", name, field, msg)
  end
  if not ssrc then return fail(fmt("cannot be loaded: %s/schema.lua is missing", base)) end
  local logbuf = {}
  local box = sandbox.new { name = name, instructions = self.instructions, memory_kb = self.memory_kb,
    log = function(m) if #logbuf < 100 then logbuf[#logbuf + 1] = m end end }
  box.env.typedefs = schema_mod.typedefs()       -- shared field types for schema.lua
  local sv, err = run_file(box, base, "schema.lua", ssrc)
  if err then return fail("cannot be loaded: " .. err) end
  if type(sv) ~= "table" then
    return fail(fmt("cannot be loaded: schema.lua returned %s, expected a table", type(sv)))
  end
  local schema, cerr = raw_copy(sv, true, "schema")
  if not schema then return fail("cannot be loaded: schema.lua: " .. cerr) end
  local ok, serr = schema_mod.check(schema)
  if not ok then return fail("cannot be loaded: schema.lua: " .. serr) end

  local hv
  hv, err = run_file(box, base, "handler.lua", hsrc)
  if err then return fail("cannot be loaded: " .. err) end
  if type(hv) ~= "table" then
    return fail(fmt("cannot be loaded: handler.lua returned %s, expected a table", type(hv)))
  end
  local handler
  handler, cerr = raw_copy(hv, true, "handler")
  if not handler then return fail("cannot be loaded: handler.lua: " .. cerr) end
  if type(handler.VERSION) ~= "string" or not handler.VERSION:match("^%d+%.%d+%.%d+[%w%.%-+]*$") then
    return fail("cannot be loaded because its VERSION field is not a semantic version string like \"1.0.0\"",
      "VERSION")
  end
  if type(handler.map) ~= "function" then
    return fail("cannot be loaded because its map field is not a function", "map")
  end
  return {
    name = name, base = base, handler_src = hsrc, schema_src = ssrc,
    box = box, schema = schema, handler = handler, version = handler.VERSION,
    load_log = logbuf, warnings = {},
  }
end

local function check_name(name)
  if type(name) ~= "string" or not name:match("^[%a][%w_%-]*$") or #name > 64 then
    return nil, new_error("plugin", type(name) == "string" and name or nil, nil,
      "invalid plugin name (letters, digits, '_' and '-', starting with a letter)")
  end
  return true
end

-- Loads a plugin (or returns the loaded one, reloading it when its files
-- changed). Returns the plugin record { name, version, base, ... } or nil, err.
-- A changed plugin that fails to load leaves the previous version in service;
-- its error is kept in record.warnings and returned by list().
function Engine:load(name)
  local ok, err = check_name(name)
  if not ok then return nil, err end
  local cur = self.plugins[name]
  if cur and not self.reload then return cur end
  local base, hsrc, ssrc = find_plugin(self, name)
  if not base then
    if cur then return cur end
    return nil, new_error("plugin", name, nil, "not found in " .. concat(self.paths, ", "))
  end
  if cur and cur.base == base and cur.handler_src == hsrc and cur.schema_src == ssrc then
    return cur
  end
  if cur and cur.failed_handler == hsrc and cur.failed_schema == ssrc then
    return cur                                     -- same broken files as last time
  end
  local p, perr = build(self, name, base, hsrc, ssrc)
  if not p then
    if cur then
      cur.failed_handler, cur.failed_schema = hsrc, ssrc
      cur.warnings = { "reload failed, still using version " .. cur.version .. ": " .. tostring(perr) }
      cur.reload_error = perr
      return cur
    end
    return nil, perr
  end
  self.plugins[name] = p
  return p
end

-- Names and versions of the plugins found in the configured directories
-- (and any loaded ones), sorted by name: { { name, version, path, error } }.
function Engine:list()
  local names, seen = {}, {}
  for _, dir in ipairs(self.paths) do
    local quoted = "'" .. dir:gsub("'", "'\\''") .. "'"
    local pipe = io.popen and io.popen("ls -1 -- " .. quoted .. " 2>/dev/null")
    if pipe then
      for entry in pipe:lines() do
        if not seen[entry] and check_name(entry) and read_file(dir .. "/" .. entry .. "/handler.lua") then
          seen[entry] = true
          names[#names + 1] = entry
        end
      end
      pipe:close()
    end
  end
  for n in pairs(self.plugins) do
    if not seen[n] then seen[n] = true; names[#names + 1] = n end
  end
  table.sort(names)
  local out = {}
  for _, n in ipairs(names) do
    local p, err = self:load(n)
    if p then
      out[#out + 1] = { name = n, version = p.version, path = p.base,
        error = p.reload_error and tostring(p.reload_error) or nil }
    else
      out[#out + 1] = { name = n, error = tostring(err) }
    end
  end
  return out
end

----------------------------------------------------------------- draft checks

local PAYMENT_REQUIRED = { RECEIPT = true, TRAINING = true, ANNULATION = true }
local DRAFT_KEYS = { receipt_type = true, total = true, vat = true, payments = true, change = true }
local PAYMENT_KEYS = { type = true, amount = true, currency = true, base_amount = true }

local function cents_ok(v) return money.is_cents(v) end

-- Checks the handler's draft and computes the buckets. Returns a table
-- { receipt_type, total, vat = {rate = cents}, payments = {...}, change } or nil, errs.
local function check_draft(d)
  local errs = {}
  local function fail(field, msg) errs[#errs + 1] = { field = field, message = msg } end
  local extra = {}
  for k in pairs(d) do if not DRAFT_KEYS[k] then extra[#extra + 1] = tostring(k) end end
  table.sort(extra)
  for _, k in ipairs(extra) do fail(k, "unknown field in the mapped receipt") end

  if not sv1.VORGANGSTYP[d.receipt_type] then
    fail("receipt_type", fmt("expected one of %s, got %s", concat(sv1.RECEIPT_TYPES, ", "),
      type(d.receipt_type) == "string" and fmt("%q", d.receipt_type) or type(d.receipt_type)))
  end
  if not cents_ok(d.total) then fail("total", "expected integer cents") end
  local change = d.change
  if change == nil then change = 0 end
  if not cents_ok(change) or change < 0 then fail("change", "expected non-negative integer cents") end

  local vat = {}
  if type(d.vat) ~= "table" or is_array(d.vat) and next(d.vat) ~= nil then
    fail("vat", "expected a map of VAT rate name to integer cents")
  else
    local keys = {}
    for k in pairs(d.vat) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = d.vat[k]
      if not sv1.VAT_INDEX[k] then
        fail("vat." .. k, fmt("unknown VAT rate (expected one of %s)", concat(sv1.VAT_RATES, ", ")))
      elseif not cents_ok(v) then
        fail("vat." .. k, "expected integer cents")
      else
        vat[k] = v
      end
    end
  end

  local payments = {}
  local pays = d.payments
  if pays == nil then pays = {} end
  if not is_array(pays) then
    fail("payments", "expected an array")
    pays = {}
  end
  for i, p in ipairs(pays) do
    local path = fmt("payments[%d]", i)
    if type(p) ~= "table" then
      fail(path, "expected a table")
    else
      local bad = {}
      for k in pairs(p) do if not PAYMENT_KEYS[k] then bad[#bad + 1] = tostring(k) end end
      table.sort(bad)
      for _, k in ipairs(bad) do fail(path .. "." .. k, "unknown field") end
      local ok = true
      if not sv1.PAYMENT_TYPES[p.type] then
        fail(path .. ".type", fmt("expected CASH or NON_CASH, got %s",
          type(p.type) == "string" and fmt("%q", p.type) or type(p.type)))
        ok = false
      end
      if not cents_ok(p.amount) then fail(path .. ".amount", "expected integer cents"); ok = false end
      local cur = p.currency == nil and "EUR" or p.currency
      if not sv1.is_currency(cur) then
        fail(path .. ".currency", "expected a 3-letter ISO 4217 code"); ok = false
        cur = nil
      else
        cur = cur:upper()
      end
      local base = p.base_amount
      if cur == nil then
        base = nil
      elseif cur == "EUR" then
        if base ~= nil and base ~= p.amount then
          fail(path .. ".base_amount", "must equal amount for EUR payments"); ok = false
        end
        base = p.amount
      elseif not cents_ok(base) then
        fail(path .. ".base_amount", "required for non-EUR payments: the amount's value in EUR cents")
        ok = false
      elseif cents_ok(p.amount) and (base < 0) ~= (p.amount < 0) and base ~= 0 and p.amount ~= 0 then
        fail(path .. ".base_amount", "must have the same sign as amount"); ok = false
      end
      if ok then
        payments[#payments + 1] = { type = p.type, amount = p.amount, currency = cur, base = base }
      end
    end
  end
  if #errs > 0 then return nil, errs end
  return { receipt_type = d.receipt_type, total = d.total, vat = vat, payments = payments, change = change }
end

-- The balance rules. Returns nil or an array of errors naming the amounts.
local function check_balance(b)
  local errs = {}
  local F = money.format
  local vat_sum = 0
  for _, rate in ipairs(sv1.VAT_RATES) do vat_sum = money.add(vat_sum, b.vat[rate] or 0) end
  if vat_sum ~= b.total then
    errs[#errs + 1] = { field = "vat", message = fmt("VAT buckets sum to %s but the sale total is %s",
      F(vat_sum), F(b.total)) }
  end
  local paid = 0
  for _, p in ipairs(b.payments) do paid = money.add(paid, p.base) end
  if #b.payments == 0 then
    if PAYMENT_REQUIRED[b.receipt_type] and b.total ~= 0 then
      errs[#errs + 1] = { field = "payments", message = fmt("a %s of %s needs payments",
        b.receipt_type, F(b.total)) }
    elseif b.change ~= 0 then
      errs[#errs + 1] = { field = "change", message = "change given without payments" }
    end
  elseif paid - b.change ~= b.total then
    errs[#errs + 1] = { field = "payments", message = fmt(
      "payments %s minus change %s = %s, but the sale total is %s", F(paid), F(b.change),
      F(paid - b.change), F(b.total)) }
  end
  if #errs > 0 then return errs end
  return nil
end

-- Merges payments by (type, currency), takes the change out of EUR cash,
-- drops zero buckets and orders them: CASH before NON_CASH, EUR first, then
-- by currency code. Returns the bucket list or nil, errs.
local function payment_buckets(b)
  local by, list = {}, {}
  for _, p in ipairs(b.payments) do
    local key = p.type .. ":" .. p.currency
    local e = by[key]
    if not e then
      e = { type = p.type, currency = p.currency, amount = 0, base = 0 }
      by[key] = e
      list[#list + 1] = e
    end
    e.amount = money.add(e.amount, p.amount)
    e.base = money.add(e.base, p.base)
  end
  if b.change > 0 then
    -- Change is paid out in EUR cash. It may exceed the EUR cash tendered only
    -- when a foreign currency was tendered (change for CHF given in EUR): then
    -- the EUR cash bucket goes negative, as DSFinV-K records it.
    local cash = by["CASH:EUR"]
    local avail = cash and cash.amount or 0
    local foreign = false
    for _, e in ipairs(list) do if e.currency ~= "EUR" then foreign = true end end
    if avail < b.change and not foreign then
      return nil, { { field = "change", message = fmt(
        "change %s given but only %s was tendered in EUR cash", money.format(b.change), money.format(avail)) } }
    end
    if not cash then
      cash = { type = "CASH", currency = "EUR", amount = 0, base = 0 }
      by["CASH:EUR"] = cash
      list[#list + 1] = cash
    end
    cash.amount = cash.amount - b.change
    cash.base = cash.base - b.change
  end
  local out = {}
  for _, e in ipairs(list) do if e.amount ~= 0 then out[#out + 1] = e end end
  table.sort(out, function(x, y)
    if x.type ~= y.type then return x.type == "CASH" end
    if (x.currency == "EUR") ~= (y.currency == "EUR") then return x.currency == "EUR" end
    return x.currency < y.currency
  end)
  return out
end

-- core.crypto.b64encode when the C core is available (looked up once).
local b64_lookup
local function base64_encoder()
  if b64_lookup == nil then
    local okc, core = pcall(require, "fiskaly.core")
    b64_lookup = okc and type(core) == "table" and core.crypto and core.crypto.b64encode or false
  end
  return b64_lookup or nil
end

-- Builds the result from a checked, balanced draft.
local function build_result(p, b, logbuf)
  local vats = json.array {}
  for _, rate in ipairs(sv1.VAT_RATES) do
    local v = b.vat[rate]
    if v and v ~= 0 then vats[#vats + 1] = { vat_rate = rate, amount = money.format(v) } end
  end
  local buckets, errs = payment_buckets(b)
  if not buckets then return nil, errs end
  local pays = json.array {}
  for i, e in ipairs(buckets) do
    pays[i] = { payment_type = e.type, amount = money.format(e.amount), currency_code = e.currency }
  end
  local body = { receipt_type = b.receipt_type, amounts_per_vat_rate = vats, amounts_per_payment_type = pays }
  local ok, verrs = sv1.validate(body)
  if not ok then return nil, verrs end
  local pd, perr = sv1.process_data(body)
  if not pd then return nil, { { field = "process_data", message = perr } } end
  local vat_totals = {}
  for _, rate in ipairs(sv1.VAT_RATES) do vat_totals[rate] = b.vat[rate] or 0 end
  local pay_totals = {}
  for i, e in ipairs(buckets) do
    pay_totals[i] = { payment_type = e.type, currency_code = e.currency, amount = e.amount, base_amount = e.base }
  end
  local result = {
    plugin = p.name,
    version = p.version,
    standard_v1 = { receipt = body },
    process_type = sv1.PROCESS_TYPE,
    process_data = pd,
    totals = { total = b.total, vat = vat_totals, payments = pay_totals, change = b.change },
    log = logbuf,
    warnings = p.warnings,
  }
  local b64 = base64_encoder()
  if b64 then result.process_data_base64 = b64(pd) end
  return result
end

-- Maps a POS sale through plugin `name` with configuration `conf`.
-- Returns the result { plugin, version, standard_v1 = { receipt = body },
-- process_type, process_data, totals (cents), log, warnings } or nil, err
-- (err.kind "plugin" when the plugin failed, "validation" when the
-- configuration or the mapped receipt was rejected; err.errors lists all).
function Engine:map(name, sale, conf)
  local p, err = self:load(name)
  if not p then return nil, err end
  if type(sale) ~= "table" then
    return nil, new_error("validation", name, "sale", "expected a table, got " .. type(sale))
  end
  local invoke = function(fn, value)
    local ok, r1, r2 = p.box:call(fn, deep_copy(value))
    if not ok then return nil, "custom validator failed: " .. tostring(r1) end
    if r1 == true then return true end
    if r1 == nil or r1 == false then
      return nil, type(r2) == "string" and r2:sub(1, 300) or "invalid value"
    end
    return nil, "custom validator returned " .. type(r1) .. ", expected true or nil, message"
  end
  if conf ~= nil then
    if type(conf) ~= "table" then
      return nil, new_error("validation", name, "conf", "expected a table, got " .. type(conf))
    end
    local cerr
    conf, cerr = copy_input(conf, "conf", { n = 0, depth = 0, seen = {} })
    if not conf then return nil, new_error("validation", name, nil, cerr) end
  end
  local cfg, cerrs = schema_mod.validate(p.schema, conf, invoke)
  if not cfg then
    for _, e in ipairs(cerrs) do
      if e.field ~= "conf" then e.field = "conf." .. e.field end
    end
    return nil, errors_error(name, cerrs)
  end
  local logbuf = {}
  local api = make_api(name, logbuf)
  p.box.log = function(m)                -- print() in the plugin lands in result.log
    if #logbuf < 100 then logbuf[#logbuf + 1] = string.sub(m, 1, 500) end
  end
  local input, ierr = copy_input(sale, "sale", { n = 0, depth = 0, seen = {} })
  if not input then return nil, new_error("validation", name, nil, ierr) end
  local res = table.pack(p.box:call(p.handler.map, input, cfg, api))
  if not res[1] then
    local e = new_error("plugin", name, nil, "map failed: " .. tostring(res[2]))
    e.reason = res[3]                    -- "limit" (budget or memory) or "error"
    return nil, e
  end
  local draft = res[2]
  if type(draft) ~= "table" then
    return nil, new_error("plugin", name, nil, fmt("map returned %s, expected a table", type(draft)))
  end
  if res.n > 2 then
    return nil, new_error("plugin", name, nil, fmt("map returned %d values, expected one table", res.n - 1))
  end
  local copy, cerr = raw_copy(draft, false, "receipt")
  if not copy then return nil, new_error("plugin", name, nil, "map returned an invalid value: " .. cerr) end
  local b, derrs = check_draft(copy)
  if not b then return nil, errors_error(name, derrs) end
  local berrs = check_balance(b)
  if berrs then return nil, errors_error(name, berrs) end
  local result, rerrs = build_result(p, b, logbuf)
  if not result then return nil, errors_error(name, rerrs) end
  return result
end

-- Validates a standard_v1 receipt body (as sent to SIGN DE). Returns true or nil, err.
function receipt.validate(body)
  local ok, errs = sv1.validate(body)
  if ok then return true end
  return nil, errors_error(nil, errs)
end

-- The Kassenbeleg-V1 process_data string fiskaly builds from a receipt body.
function receipt.process_data(body)
  return sv1.process_data(body)
end

return receipt
