-- fiskaly.provision: the SIGN DE setup flow as named, resumable, idempotent
-- steps, persisted in the store before and after each call.
--
--   management_auth -> organization -> api_key -> sign_auth          (scope "org")
--   for each TSS:  tss_create -> tss_personalize -> admin_pin -> admin_auth
--                  -> tss_initialize -> client_create (each client) -> admin_logout
--                                                                     (scope "tss:<label>")
--
-- Every step records its intent (with the client-chosen UUID; a chosen PIN is
-- sealed in the store) before its call and its result after. The API secret
-- and the admin PUK are sealed into the store the moment they arrive, before
-- anything else. On a rerun each step first reads the real state back from
-- the service (GET tss, GET client, the organization list by the tag stored
-- before the create) and continues from there, so an interrupted run (crash,
-- SIGKILL, network loss) never loses a secret and never creates anything twice.
--
-- Progress goes to opts.on_step(ev), ev = { scope =, step =, status =
-- "start"|"done"|"skip"|"failed", detail = string } (never holds secrets).
local core = require "fiskaly.core"
local store_mod = require "fiskaly.store"

local crypto = core.crypto

local M = {}

M.STEPS = { "management_auth", "organization", "api_key", "sign_auth", "tss_create", "tss_personalize",
  "admin_pin", "admin_auth", "tss_initialize", "client_create", "admin_logout" }
M.POINTS = { "start", "before_request", "after_request", "end" }

local err_mt = require("fiskaly.secrets").error_mt

local function new_error(code, message, cause)
  return setmetatable({ kind = "provision", code = code, message = message, cause = cause }, err_mt)
end

-- A failure inside a step: raised as { provision_failure = err } and turned
-- back into nil, err at the public functions (luasocket's try/protect).
local Failure = {}
local function fail(err) error(setmetatable({ err = err }, Failure), 0) end
local function try(v, err, ...)
  if v == nil or (v == false and err ~= nil) then fail(err) end
  return v, err, ...
end
local function protect(fn)
  return function(...)
    local res = table.pack(pcall(fn, ...))
    if res[1] then return table.unpack(res, 2, res.n) end
    local e = res[2]
    if getmetatable(e) == Failure then return nil, e.err end
    error(e, 0)
  end
end

local function errstr(e)
  if type(e) == "table" then
    local s = tostring(e.message or e.code or "error")
    if e.code and e.message and not s:find(tostring(e.code), 1, true) then s = e.code .. ": " .. s end
    return s
  end
  return tostring(e)
end

local function short(id) return tostring(id):sub(1, 8) end

local function status_of(err) return type(err) == "table" and err.status or nil end
local function code_of(err) return type(err) == "table" and err.code or nil end

-- ------------------------------------------------------------------ test hook
-- FISKALY_TEST_CRASH_AT="<step>:<point>[#n]" makes this process SIGKILL
-- itself at the n-th (default first) time it passes that point.
local crash_spec = os.getenv("FISKALY_TEST_CRASH_AT")
local crash_seen = {}

local function own_pid()
  local f = assert(io.open("/proc/self/stat", "r"))   -- opened by this (Lua) process
  local pid = f:read("n")
  f:close()
  return math.tointeger(pid)
end

local function crash_point(step, point)
  if not crash_spec then return end
  local key = step .. ":" .. point
  crash_seen[key] = (crash_seen[key] or 0) + 1
  local want_key, nth = crash_spec:match("^([^#]+)#?(%d*)$")
  if want_key == key and crash_seen[key] == (tonumber(nth) or 1) then
    io.stdout:flush()
    io.stderr:flush()
    os.execute("kill -9 " .. own_pid())
    error("FISKALY_TEST_CRASH_AT: still alive after kill -9")
  end
end
M._crash_point = crash_point

-- ------------------------------------------------------------------ helpers

-- A 10-digit admin PIN from RAND_bytes, without modulo bias.
local function random_pin()
  local digits = {}
  while #digits < 10 do
    for b in crypto.random_bytes(16):gmatch(".") do
      local v = b:byte()
      if v < 250 and #digits < 10 then digits[#digits + 1] = tostring(v % 10) end
    end
  end
  return table.concat(digits)
end
M._random_pin = random_pin

local function emit(ctx, ev)
  if ctx.on_step then ctx.on_step(ev) end
end

-- Runs one named step: fn(j) returns status ("done"|"skip"), detail.
-- j.intent(data) records the intent row; j.finish(result) the result.
local function run_step(ctx, scope, step, fn)
  emit(ctx, { scope = scope, step = step, status = "start" })
  crash_point(step, "start")
  local jid
  local j = {}
  function j.intent(data)
    jid = try(ctx.st:step_intent(scope, step, data))
    crash_point(step, "before_request")
  end
  function j.applied()
    crash_point(step, "after_request")
  end
  local ok, status, detail, result = pcall(fn, j)
  if not ok then
    local e = status
    local err = getmetatable(e) == Failure and e.err or e
    if jid then ctx.st:step_finish(jid, "failed", nil, errstr(err)) end
    emit(ctx, { scope = scope, step = step, status = "failed", detail = errstr(err) })
    error(e, 0)
  end
  if jid then
    try(ctx.st:step_finish(jid, status, result))
  elseif status == "skip" then
    try(ctx.st:step_skip(scope, step, result))
  end
  emit(ctx, { scope = scope, step = step, status = status, detail = detail })
  crash_point(step, "end")
  return status
end

-- Calls fn up to `attempts` times while it fails with a retryable error
-- (network, timeout, 5xx, 429).
local function with_retry(attempts, fn)
  local res, err
  for _ = 1, attempts do
    res, err = fn()
    if res ~= nil then return res end
    local st = status_of(err)
    local kind = type(err) == "table" and err.kind or nil
    local retryable = kind == "network" or kind == "timeout" or (st and (st >= 500 or st == 429))
    if not retryable then break end
  end
  return nil, err
end

-- ------------------------------------------------------------------ org steps

-- Walks a paged list (pages of 100; at most 100 pages): list_page(offset)
-- returns a list envelope or nil, err. Returns the first item for which
-- match(item) is true, false when there is none, or nil, err.
local function find_paged(list_page, match)
  local offset = 0
  for _ = 1, 100 do
    local res, err = list_page(offset)
    if not res then return nil, err end
    local data = res.data or res
    for _, item in ipairs(data) do
      if match(item) then return item end
    end
    if #data < 100 then return false end
    offset = offset + #data
  end
  return false
end

local function find_org(ctx, tag)
  local mgmt = ctx.hub.management
  if type(mgmt.list_organizations) ~= "function" then
    return nil, new_error("UNSUPPORTED", "the client has no management:list_organizations to look the organization up")
  end
  return find_paged(function(offset)
    return mgmt:list_organizations{ limit = 100, offset = offset,
      managed_by_organization_id = ctx.cfg.organization_id }
  end, function(o)
    return type(o.metadata) == "table" and o.metadata.fiskaly_provision_id == tag
  end)
end

local function step_management_auth(ctx)
  run_step(ctx, "org", "management_auth", function(j)
    local rec = try(ctx.st:org_get(ctx.org_name))
    if rec and rec.state == "created" and try(ctx.st:api_key_active(ctx.org_name)) then
      return "skip", "organization and API key already provisioned"
    end
    j.intent({})
    local tok = try(ctx.hub.management:auth())
    j.applied()
    return "done", "token valid " .. tostring(tok and tok.access_token_expires_in or "?") .. " s"
  end)
end

local function step_organization(ctx)
  run_step(ctx, "org", "organization", function(j)
    local rec = try(ctx.st:org_get(ctx.org_name))
    if rec and rec.state == "created" then
      ctx.org_id = rec.org_id
      return "skip", "organization " .. short(rec.org_id) .. " exists", { org_id = rec.org_id }
    end
    local resumed = rec ~= false
    if not rec then
      local tag = crypto.uuid4()
      local body = {}
      for k, v in pairs(ctx.cfg.organization) do body[k] = v end
      body.managed_by_organization_id = body.managed_by_organization_id or ctx.cfg.organization_id
      body.metadata = body.metadata or {}
      body.metadata.fiskaly_provision_id = tag
      try(ctx.st:org_insert{ name = ctx.org_name, tag = tag, managed_by = body.managed_by_organization_id,
        request = body })
      rec = try(ctx.st:org_get(ctx.org_name))
    end
    j.intent({ name = rec.name, tag = rec.tag, resumed = resumed })
    local org
    if resumed then
      -- the previous create may have been applied: look for our tag first
      org = try(find_org(ctx, rec.tag))
    end
    local how = "found again by its tag"
    if not org then
      org = try(ctx.hub.management:create_organization(rec.request))
      how = "created"
    end
    j.applied()
    try(ctx.st:org_set_created(rec.name, org._id))
    ctx.org_id = org._id
    return "done", "organization " .. short(org._id) .. " " .. how, { org_id = org._id, how = how }
  end)
end

-- The organization's API keys at the service with this name (paged), or false.
local function find_api_key(ctx, name)
  return find_paged(function(offset)
    return ctx.hub.management:list_api_keys(ctx.org_id, { limit = 100, offset = offset })
  end, function(k) return k.name == name end)
end

local function step_api_key(ctx)
  run_step(ctx, "org", "api_key", function(j)
    local active = try(ctx.st:api_key_active(ctx.org_name))
    if active then
      ctx.api_key = active
      return "skip", "API key " .. short(active.api_key) .. " (secret sealed in the store)"
    end
    -- A key whose create was recorded but whose answer never reached the
    -- store: if the service has it, its secret (shown once) is lost: record
    -- why and make a new key; if not, the create never happened: retry it.
    local lost, name = {}, nil
    for _, k in ipairs(try(ctx.st:api_keys(ctx.org_name))) do
      if k.state == "pending" then
        local remote = try(find_api_key(ctx, k.name))
        if remote then
          try(ctx.st:api_key_set_state(k.name, "lost",
            "create was applied (key " .. tostring(remote.key) .. ") but its answer with the one-time "
              .. "secret was not stored; replaced by a new key"))
          lost[#lost + 1] = k.name
        elseif name == nil then
          name = k.name          -- never created: retry under the same name
        else
          try(ctx.st:api_key_set_state(k.name, "abandoned", "create never reached the service"))
        end
      end
    end
    if not name then
      name = "fiskaly-pos-" .. crypto.uuid4()
      try(ctx.st:api_key_insert{ org_name = ctx.org_name, name = name })
    end
    j.intent({ name = name, replaces_lost = lost })
    local key = try(ctx.hub.management:create_api_key(ctx.org_id, {
      name = name, status = "enabled", managed_by_organization_id = ctx.cfg.organization_id,
    }))
    j.applied()
    if type(key.secret) ~= "string" or type(key.key) ~= "string" then
      fail(new_error("BAD_RESPONSE", "create_api_key returned no key/secret"))
    end
    try(ctx.st:api_key_set_created(name, key._id, key.key, key.secret))
    ctx.api_key = { name = name, api_key = key.key, secret = key.secret, key_id = key._id }
    local detail = "API key " .. short(key.key) .. " created, secret sealed in the store"
    if #lost > 0 then detail = detail .. " (" .. #lost .. " earlier key(s) lost their secret: recorded)" end
    return "done", detail, { key_id = key._id, replaced = #lost }
  end)
end

local function step_sign_auth(ctx)
  ctx.sign = ctx.hub:with_credentials(ctx.api_key.api_key, ctx.api_key.secret)
  run_step(ctx, "org", "sign_auth", function(j)
    j.intent({})
    local tok = try(ctx.sign.sign:auth())
    j.applied()
    local env = tok and tok.access_token_claims and tok.access_token_claims.env
    return "done", "SIGN DE token, env " .. tostring(env or "?")
  end)
end

-- ------------------------------------------------------------------ TSS steps

local function remote_tss(ctx, tss_id)
  local t, err = ctx.sign.sign:get_tss(tss_id)
  if t then return t end
  if status_of(err) == 404 then return false end
  fail(err)
end

local function save_tss_fields(ctx, tss_id, t)
  try(ctx.st:tss_update(tss_id, {
    state = t.state, serial_number = t.serial_number, public_key = t.public_key,
    certificate = t.certificate,
  }))
end

local tss_create -- forward

tss_create = function(ctx, T)
  run_step(ctx, T.scope, "tss_create", function(j)
    local rec = try(ctx.st:tss_by_label(ctx.org_name, T.label))
    if rec and rec.has_puk == 1 then
      T.id = rec.tss_id
      local t = remote_tss(ctx, rec.tss_id)
      if not t then fail(new_error("TSS_GONE", "TSS " .. rec.tss_id .. " is in the store but not at the service")) end
      T.state = t.state
      if t.state ~= rec.state then save_tss_fields(ctx, rec.tss_id, t) end
      return "skip", "TSS " .. short(rec.tss_id) .. " " .. t.state .. ", PUK in the store", { state = t.state }
    end
    local fresh = not rec
    if fresh then
      rec = { tss_id = crypto.uuid4() }
      try(ctx.st:tss_insert{ tss_id = rec.tss_id, org_name = ctx.org_name, label = T.label })
    end
    T.id = rec.tss_id
    j.intent({ tss_id = rec.tss_id, resumed = not fresh })
    if not fresh then
      local t = remote_tss(ctx, rec.tss_id)
      if t and t.state ~= "CREATED" then
        -- The PUK is returned only while CREATED; it never reached the store.
        try(ctx.st:tss_update(rec.tss_id, { state = "lost",
          reason = "TSS left CREATED before its PUK was stored (state " .. tostring(t.state) .. ")" }))
        return "done", "TSS " .. short(rec.tss_id) .. " unusable (PUK unknown, " .. tostring(t.state)
          .. "): recorded as lost, creating a new one", { lost = rec.tss_id }
      end
    end
    -- PUT is idempotent while CREATED and returns the PUK again.
    local t = try(with_retry(3, function()
      return ctx.sign.sign:create_tss(rec.tss_id, { metadata = { fiskaly_provision_label = T.label } })
    end))
    j.applied()
    if type(t.admin_puk) ~= "string" then
      fail(new_error("BAD_RESPONSE", "create_tss returned no admin_puk"))
    end
    try(ctx.st:put_secret("tss", rec.tss_id, "admin_puk", t.admin_puk))   -- first thing
    save_tss_fields(ctx, rec.tss_id, t)
    T.state = t.state
    return "done", "TSS " .. short(rec.tss_id) .. " " .. tostring(t.state) .. ", PUK sealed in the store",
      { state = t.state }
  end)
  if not T.state then  -- the earlier TSS was lost: start over with a new one
    return tss_create(ctx, T)
  end
end

-- Runs a TSS state change (retried); when it fails, an earlier attempt may
-- have gone through: the state read back from the service decides. Returns
-- the TSS resource in state `to`, or fails with the call's error.
local function change_state(ctx, T, to, call)
  local t, err = with_retry(3, call)
  if t then return t end
  local r = remote_tss(ctx, T.id)
  if not (r and r.state == to) then fail(err) end
  return r
end

local function step_personalize(ctx, T)
  run_step(ctx, T.scope, "tss_personalize", function(j)
    if T.state ~= "CREATED" then return "skip", "already " .. tostring(T.state) end
    j.intent({ tss_id = T.id, to = "UNINITIALIZED" })
    local t = change_state(ctx, T, "UNINITIALIZED", function()
      return ctx.sign.sign:update_tss(T.id, { state = "UNINITIALIZED" })
    end)
    j.applied()
    save_tss_fields(ctx, T.id, t)
    T.state = t.state
    return "done", "TSS " .. tostring(t.state), { state = t.state }
  end)
end

-- Sets the admin PIN with the PUK: the new PIN is sealed as pending_pin
-- before the call and becomes admin_pin after it.
local function set_pin_with_puk(ctx, tss_id, j, new_pin)
  local pending = try(ctx.st:get_secret("tss", tss_id, "pending_pin"))
  if not pending or new_pin then
    pending = new_pin or random_pin()
    try(ctx.st:put_secret("tss", tss_id, "pending_pin", pending))
  end
  local puk = try(ctx.st:get_secret("tss", tss_id, "admin_puk"))
  if not puk then fail(new_error("NO_PUK", "TSS " .. tss_id .. ": no PUK in the store")) end
  j.intent({ tss_id = tss_id })
  try(ctx.sign.sign:change_admin_pin(tss_id, puk, pending))
  j.applied()
  try(ctx.st:tss_commit_pin(tss_id))
end

local function step_admin_pin(ctx, T)
  run_step(ctx, T.scope, "admin_pin", function(j)
    local rec = try(ctx.st:tss_get(T.id))
    if rec.has_pin == 1 and rec.has_pending_pin ~= 1 then return "skip", "admin PIN in the store" end
    if T.state ~= "UNINITIALIZED" and T.state ~= "INITIALIZED" then
      fail(new_error("TSS_STATE", "cannot set the admin PIN of TSS " .. T.id .. " in state " .. tostring(T.state)))
    end
    set_pin_with_puk(ctx, T.id, j)
    return "done", "admin PIN set with the PUK (sealed in the store)"
  end)
end

-- Admin login; if the stored PIN is refused or blocked, it is reset with the PUK.
local function admin_login(ctx, tss_id, j)
  local pin = try(ctx.st:get_secret("tss", tss_id, "admin_pin"))
  if not pin then fail(new_error("NO_PIN", "TSS " .. tss_id .. ": no admin PIN in the store")) end
  j.intent({ tss_id = tss_id })
  local ok, err = ctx.sign.sign:admin_auth(tss_id, pin)
  if ok then
    j.applied()
    return "done", "admin authenticated"
  end
  local st, code = status_of(err), code_of(err)
  if st == 401 or st == 423 or code == "E_ADMIN_PIN_BLOCKED" or code == "E_UNAUTHORIZED" then
    set_pin_with_puk(ctx, tss_id, { intent = function() end, applied = function() end }, random_pin())
    pin = try(ctx.st:get_secret("tss", tss_id, "admin_pin"))
    try(ctx.sign.sign:admin_auth(tss_id, pin))
    j.applied()
    return "done", "admin PIN was refused (" .. tostring(code or st) .. "): reset with the PUK, authenticated"
  end
  fail(err)
end

-- Runs an admin operation; if the service no longer sees our admin session
-- (a new token after expiry has a new session: 403 E_ACCESS_DENIED), logs in
-- again once and repeats it.
local function as_admin(ctx, T, fn)
  local res, err = fn()
  if res == nil and T.admin and status_of(err) == 403 then
    admin_login(ctx, T.id, { intent = function() end, applied = function() end })
    res, err = fn()
  end
  return res, err
end

local function step_admin_auth(ctx, T, needed)
  run_step(ctx, T.scope, "admin_auth", function(j)
    if not needed then return "skip", "no admin operation pending" end
    local status, detail = admin_login(ctx, T.id, j)
    T.admin = true
    return status, detail
  end)
end

local function step_initialize(ctx, T)
  run_step(ctx, T.scope, "tss_initialize", function(j)
    if T.state == "INITIALIZED" then return "skip", "already INITIALIZED" end
    if T.state ~= "UNINITIALIZED" then
      fail(new_error("TSS_STATE", "cannot initialize TSS " .. T.id .. " in state " .. tostring(T.state)))
    end
    j.intent({ tss_id = T.id, to = "INITIALIZED" })
    local t = change_state(ctx, T, "INITIALIZED", function()
      return as_admin(ctx, T, function() return ctx.sign.sign:update_tss(T.id, { state = "INITIALIZED" }) end)
    end)
    j.applied()
    save_tss_fields(ctx, T.id, t)
    T.state = t.state
    return "done", "TSS INITIALIZED, signature counter " .. tostring(t.signature_counter), { state = t.state }
  end)
end

local function client_create(ctx, T, serial)
  return run_step(ctx, T.scope, "client_create", function(j)
    local c = try(ctx.st:client_by_serial(T.id, serial))
    if c and c.state ~= "pending" then
      return "skip", "client " .. short(c.client_id) .. " " .. serial .. " " .. c.state
    end
    local fresh = not c
    if fresh then
      c = { client_id = crypto.uuid4() }
      try(ctx.st:client_insert{ client_id = c.client_id, tss_id = T.id, serial_number = serial })
    end
    j.intent({ client_id = c.client_id, serial_number = serial, resumed = not fresh })
    local r
    if not fresh then
      local got, gerr = ctx.sign.sign:get_client(T.id, c.client_id)
      if got then r = got elseif status_of(gerr) ~= 404 then fail(gerr) end
    end
    local how = "found again"
    if not r then
      local created, cerr = as_admin(ctx, T, function()
        return ctx.sign.sign:create_client(T.id, c.client_id, { serial_number = serial })
      end)
      if not created and status_of(cerr) == 409 then
        created = try(ctx.sign.sign:get_client(T.id, c.client_id))
      elseif not created then
        fail(cerr)
      end
      r = created
      how = "created"
    end
    j.applied()
    try(ctx.st:client_set_state(c.client_id, r.state or "REGISTERED"))
    return "done", "client " .. short(c.client_id) .. " " .. serial .. " " .. how, { client_id = c.client_id }
  end)
end

-- Was an admin session opened (journal: admin_auth) and never closed
-- (admin_logout done), e.g. by a run that was killed?
local function admin_left_open(ctx, T)
  local auth = try(ctx.st:last_step_with(T.scope, "admin_auth", "done"))
  local tried = try(ctx.st:last_step_with(T.scope, "admin_auth", "intent"))  -- killed mid-call
  if tried and (not auth or tried.id > auth.id) then auth = tried end
  if not auth then return false end
  local out = try(ctx.st:last_step_with(T.scope, "admin_logout", "done"))
  return not out or out.id < auth.id
end

local function step_admin_logout(ctx, T)
  run_step(ctx, T.scope, "admin_logout", function(j)
    if not T.admin and not admin_left_open(ctx, T) then return "skip", "not logged in" end
    j.intent({ tss_id = T.id })
    try(ctx.sign.sign:admin_logout(T.id))
    j.applied()
    T.admin = false
    return "done", "admin logged out"
  end)
end

-- Does this TSS still need an admin session (initialize or clients to create)?
local function needs_admin(ctx, T)
  if T.state == "UNINITIALIZED" then return true end
  for _, serial in ipairs(T.clients) do
    local c = try(ctx.st:client_by_serial(T.id, serial))
    if not c or c.state == "pending" then return true end
  end
  return false
end

local function provision_tss(ctx, T)
  tss_create(ctx, T)
  step_personalize(ctx, T)
  step_admin_pin(ctx, T)
  local ok, e = pcall(function()
    step_admin_auth(ctx, T, needs_admin(ctx, T))
    step_initialize(ctx, T)
    for _, serial in ipairs(T.clients) do client_create(ctx, T, serial) end
  end)
  if not ok and T.admin then   -- never leave an admin session open
    pcall(ctx.sign.sign.admin_logout, ctx.sign.sign, T.id)
    T.admin = false
  end
  if not ok then error(e, 0) end
  step_admin_logout(ctx, T)
end

-- ------------------------------------------------------------------ config

local SERIAL_PATTERN = "^[A-Za-z0-9 '()+,%-.:=?]+$"

local function check_serial(s)
  if type(s) ~= "string" or #s < 1 or #s > 70 or not s:match(SERIAL_PATTERN)
      or s:find("[/_]") or s:match("^%s") or s:match("%s$") then
    return nil, new_error("CONFIG", "invalid client serial number " .. string.format("%q", tostring(s))
      .. ": 1-70 characters of A-Z a-z 0-9 space '()+,-.:=?, no '/' or '_', no surrounding spaces")
  end
  return s
end

-- Normalizes cfg.tss into { { label =, clients = { serial... } }, ... }.
local function tss_plan(cfg)
  local list = cfg.tss
  if list == nil then
    list = { { label = "default", clients = { cfg.serial_number or cfg.client_serial } } }
  end
  local plan, labels = {}, {}
  for i, t in ipairs(list) do
    local label = t.label or (i == 1 and "default" or ("tss" .. i))
    if labels[label] then return nil, new_error("CONFIG", "duplicate TSS label " .. label) end
    labels[label] = true
    local clients = t.clients or (t.serial_number and { t.serial_number }) or {}
    local seen = {}
    for _, s in ipairs(clients) do
      try(check_serial(s))
      if seen[s] then return nil, new_error("CONFIG", "duplicate client serial " .. s) end
      seen[s] = true
    end
    plan[#plan + 1] = { label = label, scope = "tss:" .. label, clients = clients }
  end
  return plan
end

local function check_config(cfg)
  if type(cfg) ~= "table" then return nil, new_error("CONFIG", "configuration table required") end
  local org = cfg.organization
  if type(org) ~= "table" then return nil, new_error("CONFIG", "configuration: organization = {...} required") end
  for _, f in ipairs{ "name", "address_line1", "zip", "town", "country_code" } do
    if type(org[f]) ~= "string" or org[f] == "" then
      return nil, new_error("CONFIG", "configuration: organization." .. f .. " required")
    end
  end
  if type(cfg.organization_id) ~= "string" then
    return nil, new_error("CONFIG", "configuration: organization_id (your HUB group, managed_by_organization_id) required")
  end
  return true
end

-- ------------------------------------------------------------------ public

-- One provisioning run per store at a time: an fcntl lock on "<store>.lock",
-- dropped by the kernel when the process dies (so a SIGKILL leaves no stale lock).
local function lock_store(st)
  local lock, err = core.store.lock_file(st.path .. ".lock")
  if lock then return lock end
  if err.code == "LOCKED" then
    fail(new_error("BUSY", "another provisioning run is working on store " .. st.path
      .. " (it holds " .. st.path .. ".lock); wait for it to finish"))
  end
  fail(new_error("LOCK", "cannot lock store: " .. tostring(err.message)))
end

-- Runs (or resumes) the whole setup.
-- opts: store (an open fiskaly.store Store), client (a fiskaly client with the
-- HUB/management credentials), config = { organization_id, organization = {...},
-- tss = { { label =, clients = { serial... } } } | serial_number = "POS-001" },
-- on_step (optional callback).
-- Returns a summary { organization_id, tss = { {label, tss_id, state, clients} } }, or nil, err.
M.run = protect(function(opts)
  assert(type(opts) == "table" and opts.store and opts.client, "fiskaly.provision.run: store and client required")
  local cfg = opts.config
  try(check_config(cfg))
  local plan = try(tss_plan(cfg))
  local lock <close> = lock_store(opts.store)
  local ctx = { st = opts.store, hub = opts.client, cfg = cfg, on_step = opts.on_step,
    org_name = cfg.organization.name }
  step_management_auth(ctx)
  step_organization(ctx)
  step_api_key(ctx)
  step_sign_auth(ctx)
  local summary = { organization_id = ctx.org_id, api_key = ctx.api_key.api_key, tss = {} }
  for _, T in ipairs(plan) do
    provision_tss(ctx, T)
    local clients = {}
    for _, c in ipairs(try(ctx.st:clients(T.id))) do
      clients[#clients + 1] = { client_id = c.client_id, serial_number = c.serial_number, state = c.state }
    end
    summary.tss[#summary.tss + 1] = { label = T.label, tss_id = T.id, state = T.state, clients = clients }
  end
  return summary
end)

-- A SIGN DE client for the provisioned organization (credentials from the store).
local function sign_client(opts)
  local st = opts.store
  local orgs = try(st:orgs())
  local org = orgs[1]
  if opts.organization then
    org = nil
    for _, o in ipairs(orgs) do if o.name == opts.organization then org = o end end
  end
  if not org or org.state ~= "created" then
    fail(new_error("NOT_PROVISIONED", "no provisioned organization in the store (run `fiskaly provision`)"))
  end
  local key = try(st:api_key_active(org.name))
  if not key then fail(new_error("NOT_PROVISIONED", "no active API key in the store")) end
  local c = opts.client:with_credentials(key.api_key, key.secret)
  return c, org
end

-- Finds a TSS record by id or label.
local function find_tss(st, org_name, ref)
  local rec = try(st:tss_get(ref))
  if not rec then rec = try(st:tss_by_label(org_name, ref)) end
  if not rec then fail(new_error("NOT_FOUND", "no TSS " .. tostring(ref) .. " in the store")) end
  return rec
end

local function op_ctx(opts)
  local lock = lock_store(opts.store)
  local ok, sign, org = pcall(sign_client, opts)
  if not ok then
    lock:release()
    error(sign, 0)
  end
  return { st = opts.store, sign = sign, on_step = opts.on_step, org_name = org.name, org_id = org.org_id },
    lock
end

-- Changes the admin PIN (with the PUK; new PIN random unless opts.new_pin).
-- opts: store, client, tss (id or label), new_pin?, on_step?
M.change_admin_pin = protect(function(opts)
  local ctx, lock <close> = op_ctx(opts)
  local rec = find_tss(ctx.st, ctx.org_name, opts.tss)
  if opts.new_pin ~= nil and (type(opts.new_pin) ~= "string" or #opts.new_pin < 6) then
    fail(new_error("CONFIG", "the admin PIN must have at least 6 characters"))
  end
  run_step(ctx, "tss:" .. rec.label, "admin_pin", function(j)
    set_pin_with_puk(ctx, rec.tss_id, j, opts.new_pin)
    return "done", "admin PIN changed (sealed in the store)"
  end)
  return true
end)

-- Disables a TSS (irreversible). opts: store, client, tss, on_step?
M.disable_tss = protect(function(opts)
  local ctx, lock <close> = op_ctx(opts)
  local rec = find_tss(ctx.st, ctx.org_name, opts.tss)
  local T = { id = rec.tss_id, scope = "tss:" .. rec.label, label = rec.label, clients = {} }
  local t = remote_tss(ctx, rec.tss_id)
  if not t then fail(new_error("NOT_FOUND", "TSS " .. rec.tss_id .. " not found at the service")) end
  T.state = t.state
  if t.state ~= "DISABLED" then
    step_admin_auth(ctx, T, true)
    local ok, e = pcall(run_step, ctx, T.scope, "tss_disable", function(j)
      j.intent({ tss_id = T.id, to = "DISABLED" })
      local r, err = as_admin(ctx, T, function() return ctx.sign.sign:update_tss(T.id, { state = "DISABLED" }) end)
      if not r then
        local back = remote_tss(ctx, T.id)
        if not (back and back.state == "DISABLED") then fail(err) end
        r = back
      end
      j.applied()
      T.state = r.state
      return "done", "TSS disabled", { state = r.state }
    end)
    -- a disabled TSS may refuse the logout: the session ends with it anyway
    pcall(ctx.sign.sign.admin_logout, ctx.sign.sign, T.id)
    T.admin = false
    if not ok then error(e, 0) end
  end
  try(ctx.st:tss_update(rec.tss_id, { state = "DISABLED" }))
  return true
end)

-- Adds a client to a provisioned TSS. opts: store, client, tss, serial_number, on_step?
M.add_client = protect(function(opts)
  local ctx, lock <close> = op_ctx(opts)
  local rec = find_tss(ctx.st, ctx.org_name, opts.tss)
  try(check_serial(opts.serial_number))
  local T = { id = rec.tss_id, scope = "tss:" .. rec.label, label = rec.label,
    clients = { opts.serial_number }, state = rec.state }
  local ok, e = pcall(function()
    step_admin_auth(ctx, T, needs_admin(ctx, T))
    client_create(ctx, T, opts.serial_number)
  end)
  if not ok then
    if T.admin then pcall(ctx.sign.sign.admin_logout, ctx.sign.sign, T.id) end
    error(e, 0)
  end
  step_admin_logout(ctx, T)
  return try(ctx.st:client_by_serial(T.id, opts.serial_number))
end)

-- Deregisters (state = "DEREGISTERED") or re-registers a client.
-- opts: store, client, client_id, state? ("DEREGISTERED" default), on_step?
M.deactivate_client = protect(function(opts)
  local ctx, lock <close> = op_ctx(opts)
  local c = try(ctx.st:client_get(opts.client_id))
  if not c then fail(new_error("NOT_FOUND", "no client " .. tostring(opts.client_id) .. " in the store")) end
  local want = opts.state or "DEREGISTERED"
  local rec = try(ctx.st:tss_get(c.tss_id))
  local T = { id = c.tss_id, scope = "tss:" .. rec.label, label = rec.label, clients = {}, state = rec.state }
  local ok, e = pcall(function()
    step_admin_auth(ctx, T, true)
    run_step(ctx, T.scope, "client_update", function(j)
      j.intent({ client_id = c.client_id, to = want })
      local r = try(as_admin(ctx, T, function()
        return ctx.sign.sign:update_client(c.tss_id, c.client_id, { state = want })
      end))
      j.applied()
      try(ctx.st:client_set_state(c.client_id, r.state or want))
      return "done", "client " .. short(c.client_id) .. " " .. tostring(r.state or want)
    end)
  end)
  if not ok then
    if T.admin then pcall(ctx.sign.sign.admin_logout, ctx.sign.sign, T.id) end
    error(e, 0)
  end
  step_admin_logout(ctx, T)
  return true
end)

-- What is provisioned, from the store (no secrets; has_puk/has_pin flags).
M.list = protect(function(st)
  local out = { store = st.path, schema_version = st:schema_version(), organizations = {} }
  for _, o in ipairs(try(st:orgs())) do
    local org = { name = o.name, organization_id = o.org_id, state = o.state, api_keys = {}, tss = {} }
    for _, k in ipairs(try(st:api_keys(o.name))) do
      org.api_keys[#org.api_keys + 1] = { name = k.name, api_key = k.api_key, state = k.state, reason = k.reason,
        has_secret = k.has_secret == 1 }
    end
    for _, t in ipairs(try(st:tss_list(o.name))) do
      local tss = { label = t.label, tss_id = t.tss_id, state = t.state, serial_number = t.serial_number,
        has_puk = t.has_puk == 1, has_pin = t.has_pin == 1, pin_change_pending = t.has_pending_pin == 1,
        reason = t.reason, clients = {} }
      for _, c in ipairs(try(st:clients(t.tss_id))) do
        tss.clients[#tss.clients + 1] = { client_id = c.client_id, serial_number = c.serial_number, state = c.state }
      end
      org.tss[#org.tss + 1] = tss
    end
    out.organizations[#out.organizations + 1] = org
  end
  local open = try(st:journal_list{ open = true })
  out.open_transactions = #open
  return out
end)

-- Opens the store for provisioning (convenience for the CLI and hosts).
function M.open_store(opts)
  return store_mod.open(opts)
end

return M
