-- fiskaly.store: the terminal's durable state in one SQLite file.
--
-- The schema, its migrations and every SQL statement of lua-fiskaly live in
-- this module (a second backend, e.g. PostgreSQL, replaces only this file).
-- Tables: provisioning records (organizations, api_keys, tss, clients), the
-- provisioning step journal (steps) and the sale journal (transactions).
-- Secrets (API secrets, admin PUK, admin PIN) are sealed with AES-256-GCM;
-- the AAD is the record's identity ("tss:<id>:admin_puk") so sealed blobs
-- cannot be swapped between records.
--
--   local st = assert(store.open{ path = "/var/lib/pos/fiskaly.db" })
--
-- Opening never modifies a file it refuses: garbage, a newer schema version,
-- a missing or wrong key file, or a lock held by another process each give a
-- clear error object { kind = "store"|"secrets", code =, message = }.
local core = require "fiskaly.core"
local json = require "fiskaly.json"
local secrets = require "fiskaly.secrets"

local cstore = core.store

local M = {}

local err_mt = secrets.error_mt

local function new_error(code, message, extra)
  local e = { kind = "store", code = code, message = message }
  for k, v in pairs(extra or {}) do e[k] = v end
  return setmetatable(e, err_mt)
end
M.new_error = new_error

-- Wraps a C-level error table with context; keeps its code.
local function wrap(e, context)
  if type(e) ~= "table" then return new_error("STORE", context .. ": " .. tostring(e)) end
  if getmetatable(e) == err_mt then return e end
  local msg = e.message or e.code or "error"
  if e.code == "SQLITE_BUSY" or e.code == "SQLITE_LOCKED" then
    msg = msg .. " (another process holds the store; is a second fiskaly running?)"
  end
  return new_error(e.code or "STORE", context .. ": " .. msg, { extended_code = e.extended_code })
end

local function now() return os.time() end

-- ------------------------------------------------------------------ schema
-- Ordered migrations; MIGRATIONS[n] brings the schema from n-1 to n.
local MIGRATIONS = {
  {
    name = "initial schema",
    sql = [[
CREATE TABLE schema_migrations (
  version    INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  applied_at INTEGER NOT NULL
);
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value BLOB
);
-- A managed organization. name is unique (it carries a client-chosen tag) so
-- a create whose answer was lost can be found again by name.
CREATE TABLE organizations (
  name       TEXT PRIMARY KEY,
  tag        TEXT NOT NULL UNIQUE,
  org_id     TEXT UNIQUE,
  managed_by TEXT,
  request    TEXT NOT NULL,
  state      TEXT NOT NULL DEFAULT 'pending',      -- pending | created
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE api_keys (
  id         INTEGER PRIMARY KEY,
  org_name   TEXT NOT NULL REFERENCES organizations(name),
  name       TEXT NOT NULL UNIQUE,
  key_id     TEXT,
  api_key    TEXT,
  secret     BLOB,                                  -- sealed: "api_key:<name>:secret"
  state      TEXT NOT NULL DEFAULT 'pending',      -- pending | active | lost | disabled
  reason     TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE tss (
  tss_id        TEXT PRIMARY KEY,                   -- client-chosen UUID
  org_name      TEXT NOT NULL REFERENCES organizations(name),
  label         TEXT NOT NULL,
  state         TEXT NOT NULL DEFAULT 'pending',   -- pending, then fiskaly's TssState, or lost
  serial_number TEXT,
  public_key    TEXT,
  certificate   TEXT,
  admin_puk     BLOB,                               -- sealed: "tss:<id>:admin_puk"
  admin_pin     BLOB,                               -- sealed: "tss:<id>:admin_pin"
  pending_pin   BLOB,                               -- sealed: "tss:<id>:pending_pin"
  last_signature_counter INTEGER,
  reason        TEXT,
  created_at    INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX tss_label ON tss(org_name, label) WHERE state NOT IN ('lost', 'DISABLED');
CREATE TABLE clients (
  client_id     TEXT PRIMARY KEY,                   -- client-chosen UUID
  tss_id        TEXT NOT NULL REFERENCES tss(tss_id),
  serial_number TEXT NOT NULL,
  state         TEXT NOT NULL DEFAULT 'pending',   -- pending | REGISTERED | DEREGISTERED
  created_at    INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL,
  UNIQUE (tss_id, serial_number)
);
-- Provisioning journal: one row per step attempt; intent before the call,
-- result after. Secrets are never in here (they are sealed in their rows).
CREATE TABLE steps (
  id          INTEGER PRIMARY KEY,
  scope       TEXT NOT NULL,
  step        TEXT NOT NULL,
  status      TEXT NOT NULL,                        -- intent | done | skip | failed
  intent      TEXT,
  result      TEXT,
  error       TEXT,
  started_at  INTEGER NOT NULL,
  finished_at INTEGER
);
CREATE INDEX steps_scope ON steps(scope, step, id);
-- Sale journal: one row per sale, written ahead of every call.
CREATE TABLE transactions (
  id                 INTEGER PRIMARY KEY,
  tx_id              TEXT NOT NULL UNIQUE,
  tss_id             TEXT NOT NULL,
  client_id          TEXT NOT NULL,
  state              TEXT NOT NULL,                 -- intent | ACTIVE | FINISHED | CANCELLED | OUTAGE | ...
  revision           INTEGER NOT NULL DEFAULT 0,
  sale               TEXT,
  request            TEXT,
  response           TEXT,
  signature          TEXT,
  signature_counter  INTEGER,
  transaction_number INTEGER,
  qr_code_data       TEXT,
  outage             INTEGER NOT NULL DEFAULT 0,
  error              TEXT,
  created_at         INTEGER NOT NULL,
  updated_at         INTEGER NOT NULL
);
CREATE INDEX transactions_state ON transactions(state);
CREATE INDEX transactions_tss ON transactions(tss_id, state);
]],
  },
  {
    name = "sale journal: extra fields (JSON) of the sale flow",
    sql = [[
ALTER TABLE transactions ADD COLUMN extra TEXT;
]],
  },
}
M._MIGRATIONS = MIGRATIONS   -- for the migration tests
M.SCHEMA_VERSION = #MIGRATIONS

local KEY_CHECK_PLAIN = "fiskaly store key check v1"
local KEY_CHECK_AAD = "meta:key_check"

-- ------------------------------------------------------------------ open

local Store = {}
Store.__index = Store
Store.__name = "fiskaly.store.Store"
Store.__tostring = function(s) return "fiskaly.store.Store (" .. s.path .. ")" end

local function file_exists(path)
  local info = cstore.file_info(path)
  return info ~= nil, info
end

-- The error for a file SQLite cannot read (garbage, truncated, damaged).
function M._refusal(err, path)
  if err.code == "SQLITE_NOTADB" then
    return new_error(err.code, path .. " is not a fiskaly store (not an SQLite database); the file was not modified")
  end
  return new_error(err.code, "store " .. path .. " is damaged (" .. tostring(err.message)
    .. "); restore it from a backup; the file was not modified")
end

-- Reads the schema version without writing. Returns version, or nil, err.
local function read_version(db, path)
  local rows, err = db:query("SELECT name FROM sqlite_master WHERE type = 'table'")
  if not rows then
    if err.code == "SQLITE_NOTADB" or err.code == "SQLITE_CORRUPT" then return nil, M._refusal(err, path) end
    return nil, wrap(err, path)
  end
  local names = {}
  for _, r in ipairs(rows) do names[r.name] = true end
  if not names.schema_migrations then
    if #rows > 0 then
      return nil, new_error("NOT_A_STORE", path .. " is an SQLite database but not a fiskaly store "
        .. "(no schema_migrations table); the file was not modified")
    end
    return 0
  end
  local v
  v, err = db:query("SELECT coalesce(max(version), 0) AS v FROM schema_migrations")
  if not v then return nil, wrap(err, path) end
  return v[1].v
end

local function read_key_check(db)
  local names = db:query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
  if not names or #names == 0 then return nil end
  local rows = db:query("SELECT value FROM meta WHERE key = 'key_check'")
  return rows and rows[1] and rows[1].value or nil
end

-- opts: path (required), key (32 bytes) | key_file, busy_timeout_ms (default 5000),
-- readonly (no migrations, no key creation; for `fiskaly status`),
-- integrity_check (default true: PRAGMA quick_check before anything is written).
-- Returns a Store, or nil, err.
function M.open(opts)
  if type(opts) == "string" then opts = { path = opts } end
  assert(type(opts) == "table" and type(opts.path) == "string" and opts.path ~= "",
    "fiskaly.store.open: opts.path required")
  local path = opts.path
  local existed, info = file_exists(path)
  if existed and not info.regular then
    return nil, new_error("NOT_A_STORE", path .. " is not a regular file")
  end
  if opts.readonly and not existed then
    return nil, new_error("NO_STORE", "store " .. path .. " does not exist (run `fiskaly provision` first)")
  end
  local db, oerr = cstore.open(path, {
    busy_timeout_ms = opts.busy_timeout_ms or 5000,
    readonly = opts.readonly,
  })
  if not db then
    if oerr.code == "SQLITE_NOTADB" or oerr.code == "SQLITE_CORRUPT" then return nil, M._refusal(oerr, path) end
    return nil, wrap(oerr, "cannot open store " .. path)
  end
  local function fail(e) db:close() return nil, e end

  local version, verr = read_version(db, path)
  if not version then return fail(verr) end
  if opts.integrity_check ~= false and version > 0 then
    -- a damaged file must not be written to (nor "repaired")
    local rows, qerr = db:query("PRAGMA quick_check")
    local verdict = rows and rows[1] and rows[1].quick_check
    if verdict ~= "ok" then
      return fail(new_error("SQLITE_CORRUPT", "store " .. path .. " is damaged ("
        .. tostring(verdict or (qerr and qerr.message)) .. "); restore it from a backup; the file was not modified"))
    end
  end
  if version > M.SCHEMA_VERSION then
    return fail(new_error("NEWER_SCHEMA", string.format(
      "store %s has schema version %d, but this lua-fiskaly knows only up to %d: upgrade lua-fiskaly; "
        .. "the file was not modified", path, version, M.SCHEMA_VERSION),
      { version = version, supported = M.SCHEMA_VERSION }))
  end

  -- The key: a store that already holds a key check needs the same key back.
  local check = read_key_check(db)
  local key, kinfo = secrets.load_key{
    key = opts.key, key_file = opts.key_file, db_path = path,
    create = (check == nil) and not opts.readonly,
  }
  if not key then
    local e = kinfo
    if check ~= nil and e.code == "KEY_FILE_MISSING" then
      e.message = e.message .. "; the store " .. path .. " holds secrets sealed with it: restore the key "
        .. "file from your backup (a new key cannot decrypt them); the store was not modified"
    end
    return fail(e)
  end
  local where = path .. (kinfo.path and (" with key file " .. kinfo.path) or " with the host's key")
  if check ~= nil then
    local pt = secrets.open(key, check, KEY_CHECK_AAD)
    if pt ~= KEY_CHECK_PLAIN then
      return fail(secrets.new_error("WRONG_KEY", "cannot decrypt store " .. where
        .. ": wrong key file? (the store was not modified)"))
    end
  end

  -- The key stays in a closure: never a printable field of the Store.
  local self = setmetatable({ db = db, path = path, where = where,
    key_info = kinfo, readonly = opts.readonly, _key = function() return key end }, Store)

  if opts.readonly then
    if version < M.SCHEMA_VERSION then
      return fail(new_error("OLD_SCHEMA", "store " .. path .. " needs a schema migration; open it read-write first"))
    end
    return self
  end

  -- Migrate (and write the key check) in one IMMEDIATE transaction.
  if version < M.SCHEMA_VERSION or check == nil then
    local ok, berr = db:begin("immediate")
    if not ok then return fail(wrap(berr, "cannot lock store " .. path)) end
    local v2, e2 = read_version(db, path)  -- another process may have migrated meanwhile
    if not v2 then db:rollback() return fail(e2) end
    for n = v2 + 1, M.SCHEMA_VERSION do
      local m = MIGRATIONS[n]
      local mok, merr = db:exec(m.sql)
      if mok then
        mok, merr = db:run("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, ?, ?)",
          n, m.name, now())
      end
      if not mok then
        db:rollback()
        return fail(wrap(merr, string.format("store %s: migration %d (%s) failed", path, n, m.name)))
      end
    end
    if read_key_check(db) == nil then
      local sealed = secrets.seal(key, KEY_CHECK_PLAIN, KEY_CHECK_AAD)
      local r, rerr = db:run("INSERT INTO meta(key, value) VALUES ('key_check', ?)", { blob = sealed })
      if not r then db:rollback() return fail(wrap(rerr, path)) end
    end
    local c, cerr = db:commit()
    if not c then db:rollback() return fail(wrap(cerr, "cannot commit to store " .. path)) end
  end
  return self
end

function Store:close()
  if self.db then self.db:close() end
end

function Store:schema_version()
  local rows = assert(self.db:query("SELECT coalesce(max(version), 0) AS v FROM schema_migrations"))
  return rows[1].v
end

-- Runs fn(self) inside BEGIN IMMEDIATE ... COMMIT. fn returns values or
-- nil, err (-> rollback). Raises inside fn roll back and re-raise. Inside an
-- open transaction fn simply runs as part of it.
function Store:transaction(fn)
  if self.db:in_transaction() then return fn(self) end   -- nested: part of the outer one
  local ok, err = self.db:begin("immediate")
  if not ok then return nil, wrap(err, "store " .. self.path) end
  local res = table.pack(pcall(fn, self))
  if not res[1] then
    self.db:rollback()
    error(res[2], 0)
  end
  if res[2] == nil and res.n >= 3 then
    self.db:rollback()
    return table.unpack(res, 2, res.n)
  end
  local c, cerr = self.db:commit()
  if not c then
    self.db:rollback()
    return nil, wrap(cerr, "store " .. self.path)
  end
  return table.unpack(res, 2, res.n)
end

-- Internal helpers: run/query that turn errors into error objects.
function Store:_run(sql, ...)
  local n, rowid = self.db:run(sql, ...)
  if not n then return nil, wrap(rowid, "store " .. self.path) end
  return n, rowid
end

function Store:_query(sql, ...)
  local rows, err = self.db:query(sql, ...)
  if not rows then return nil, wrap(err, "store " .. self.path) end
  return rows
end

function Store:_one(sql, ...)
  local rows, err = self:_query(sql, ...)
  if not rows then return nil, err end
  return rows[1] or false
end

-- ------------------------------------------------------------------ secrets

-- Tables and columns that hold sealed secrets, and each table's key column.
local SECRET_COLUMNS = {
  api_keys = { id = "name", prefix = "api_key", cols = { secret = true } },
  tss = { id = "tss_id", prefix = "tss", cols = { admin_puk = true, admin_pin = true, pending_pin = true } },
}

local function secret_spec(tbl, col)
  local spec = SECRET_COLUMNS[tbl]
  assert(spec and spec.cols[col], "fiskaly.store: not a secret column: " .. tostring(tbl) .. "." .. tostring(col))
  return spec
end

function Store:_aad(tbl, id, col)
  return secret_spec(tbl, col).prefix .. ":" .. id .. ":" .. col
end

-- Seals value (or clears it with nil) into tbl.col of the row id, committed at once.
function Store:put_secret(tbl, id, col, value)
  local spec = secret_spec(tbl, col)
  local v = nil
  if value ~= nil then v = { blob = secrets.seal(self._key(), value, self:_aad(tbl, id, col)) } end
  local n, err = self:_run(string.format("UPDATE %s SET %s = ?, updated_at = ? WHERE %s = ?",
    tbl, col, spec.id), v, now(), id)
  if not n then return nil, err end
  if n ~= 1 then return nil, new_error("NOT_FOUND", string.format("no %s record %s", tbl, id)) end
  return true
end

-- Returns the plaintext, false when the column is empty, or nil, err.
function Store:get_secret(tbl, id, col)
  local spec = secret_spec(tbl, col)
  local row, err = self:_one(string.format("SELECT %s AS v FROM %s WHERE %s = ?", col, tbl, spec.id), id)
  if row == nil then return nil, err end
  if not row or row.v == nil then return false end
  return secrets.open(self._key(), row.v, self:_aad(tbl, id, col), self.where)
end

-- ------------------------------------------------------------------ meta

function Store:meta_get(key)
  local row, err = self:_one("SELECT value FROM meta WHERE key = ?", key)
  if row == nil then return nil, err end
  return row and row.value or nil
end

function Store:meta_set(key, value)
  return self:_run("INSERT INTO meta(key, value) VALUES (?, ?) "
    .. "ON CONFLICT(key) DO UPDATE SET value = excluded.value", key, value)
end

-- ------------------------------------------------------------------ step journal

local function enc(t)
  if t == nil then return nil end
  return assert(json.encode(t))
end

local function dec(s)
  if s == nil then return nil end
  return json.decode(s)
end

-- Records a step's intent. Returns the journal id.
function Store:step_intent(scope, step, intent)
  local _, id = self:_run("INSERT INTO steps(scope, step, status, intent, started_at) VALUES (?, ?, 'intent', ?, ?)",
    scope, step, enc(intent), now())
  if not _ then return nil, id end
  return id
end

-- Records a step's outcome: status "done" | "skip" | "failed".
function Store:step_finish(id, status, result, errmsg)
  return self:_run("UPDATE steps SET status = ?, result = ?, error = ?, finished_at = ? WHERE id = ?",
    status, enc(result), errmsg, now(), id)
end

-- Records a step that needed no call.
function Store:step_skip(scope, step, result)
  return self:_run("INSERT INTO steps(scope, step, status, result, started_at, finished_at) "
    .. "VALUES (?, ?, 'skip', ?, ?, ?)", scope, step, enc(result), now(), now())
end

-- The journal (optionally of one scope), oldest first.
function Store:steps(scope)
  local rows, err
  if scope then
    rows, err = self:_query("SELECT * FROM steps WHERE scope = ? ORDER BY id", scope)
  else
    rows, err = self:_query("SELECT * FROM steps ORDER BY id")
  end
  if not rows then return nil, err end
  for _, r in ipairs(rows) do r.intent, r.result = dec(r.intent), dec(r.result) end
  return rows
end

-- The latest journal row of scope/step, or false.
function Store:last_step(scope, step)
  local row, err = self:_one("SELECT * FROM steps WHERE scope = ? AND step = ? ORDER BY id DESC LIMIT 1", scope, step)
  if not row then return row, err end
  row.intent, row.result = dec(row.intent), dec(row.result)
  return row
end

-- The latest journal row of scope/step whose status is `status`, or false.
function Store:last_step_with(scope, step, status)
  local row, err = self:_one("SELECT * FROM steps WHERE scope = ? AND step = ? AND status = ? "
    .. "ORDER BY id DESC LIMIT 1", scope, step, status)
  if not row then return row, err end
  row.intent, row.result = dec(row.intent), dec(row.result)
  return row
end

-- ------------------------------------------------------------------ organizations

local function decode_org(r)
  if r then r.request = dec(r.request) end
  return r
end

function Store:org_get(name)
  local r, err = self:_one("SELECT * FROM organizations WHERE name = ?", name)
  if r == nil then return nil, err end
  return decode_org(r)
end

function Store:orgs()
  local rows, err = self:_query("SELECT * FROM organizations ORDER BY created_at, name")
  if not rows then return nil, err end
  for _, r in ipairs(rows) do decode_org(r) end
  return rows
end

function Store:org_insert(o)
  return self:_run("INSERT INTO organizations(name, tag, managed_by, request, state, created_at, updated_at) "
    .. "VALUES (?, ?, ?, ?, 'pending', ?, ?)", o.name, o.tag, o.managed_by, enc(o.request), now(), now())
end

function Store:org_set_created(name, org_id)
  return self:_run("UPDATE organizations SET org_id = ?, state = 'created', updated_at = ? WHERE name = ?",
    org_id, now(), name)
end

-- ------------------------------------------------------------------ api keys

function Store:api_key_insert(k)
  return self:_run("INSERT INTO api_keys(org_name, name, state, created_at, updated_at) "
    .. "VALUES (?, ?, 'pending', ?, ?)", k.org_name, k.name, now(), now())
end

-- Stores a freshly created key: the secret is sealed in the same statement.
function Store:api_key_set_created(name, key_id, api_key, secret)
  local blob = { blob = secrets.seal(self._key(), secret, self:_aad("api_keys", name, "secret")) }
  return self:_run("UPDATE api_keys SET key_id = ?, api_key = ?, secret = ?, state = 'active', updated_at = ? "
    .. "WHERE name = ?", key_id, api_key, blob, now(), name)
end

function Store:api_key_set_state(name, state, reason)
  return self:_run("UPDATE api_keys SET state = ?, reason = ?, updated_at = ? WHERE name = ?",
    state, reason, now(), name)
end

-- Keys of an organization (secrets stay sealed), newest first.
function Store:api_keys(org_name)
  return self:_query("SELECT id, org_name, name, key_id, api_key, state, reason, created_at, updated_at, "
    .. "secret IS NOT NULL AS has_secret FROM api_keys WHERE org_name = ? ORDER BY id DESC", org_name)
end

-- The active key of an organization with its secret opened, or false.
function Store:api_key_active(org_name)
  local r, err = self:_one("SELECT name, key_id, api_key FROM api_keys WHERE org_name = ? AND state = 'active' "
    .. "ORDER BY id DESC LIMIT 1", org_name)
  if not r then return r, err end
  local secret, serr = self:get_secret("api_keys", r.name, "secret")
  if not secret then return nil, serr or new_error("NO_SECRET", "api key " .. r.name .. " has no secret") end
  r.secret = secret
  return r
end

-- ------------------------------------------------------------------ tss

local TSS_FIELDS = { state = true, serial_number = true, public_key = true, certificate = true,
  last_signature_counter = true, reason = true, label = true }

function Store:tss_insert(t)
  return self:_run("INSERT INTO tss(tss_id, org_name, label, state, created_at, updated_at) "
    .. "VALUES (?, ?, ?, 'pending', ?, ?)", t.tss_id, t.org_name, t.label, now(), now())
end

local TSS_COLS = "tss_id, org_name, label, state, serial_number, public_key, certificate, "
  .. "last_signature_counter, reason, created_at, updated_at, admin_puk IS NOT NULL AS has_puk, "
  .. "admin_pin IS NOT NULL AS has_pin, pending_pin IS NOT NULL AS has_pending_pin"

function Store:tss_get(tss_id)
  return self:_one("SELECT " .. TSS_COLS .. " FROM tss WHERE tss_id = ?", tss_id)
end

-- The live (not lost/disabled) TSS with this label, or false.
function Store:tss_by_label(org_name, label)
  return self:_one("SELECT " .. TSS_COLS .. " FROM tss WHERE org_name = ? AND label = ? "
    .. "AND state NOT IN ('lost', 'DISABLED')", org_name, label)
end

function Store:tss_list(org_name)
  if org_name then
    return self:_query("SELECT " .. TSS_COLS .. " FROM tss WHERE org_name = ? ORDER BY created_at, tss_id", org_name)
  end
  return self:_query("SELECT " .. TSS_COLS .. " FROM tss ORDER BY created_at, tss_id")
end

-- Builds "a = ?, b = ?" (sorted: stable SQL text for the statement cache) and the values.
local function set_clause(fields, allowed, what)
  local keys = {}
  for k in pairs(fields) do
    assert(allowed[k], what .. ": unknown field " .. tostring(k))
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local sets, vals = {}, {}
  for i, k in ipairs(keys) do
    sets[i] = k .. " = ?"
    local v = fields[k]
    if type(v) == "boolean" then v = v and 1 or 0 end
    vals[i] = v
  end
  return table.concat(sets, ", "), vals, #keys
end

-- Updates plain (non-secret) TSS fields.
function Store:tss_update(tss_id, fields)
  local sets, vals, n = set_clause(fields, TSS_FIELDS, "fiskaly.store.tss_update")
  vals[n + 1] = now()
  vals[n + 2] = tss_id
  return self:_run("UPDATE tss SET " .. sets .. ", updated_at = ? WHERE tss_id = ?", table.unpack(vals, 1, n + 2))
end

-- The chosen new PIN becomes the current one (after the service accepted it).
function Store:tss_commit_pin(tss_id)
  return self:transaction(function()
    local pin, err = self:get_secret("tss", tss_id, "pending_pin")
    if not pin then return nil, err or new_error("NO_PENDING_PIN", "no pending admin PIN for TSS " .. tss_id) end
    local ok, perr = self:put_secret("tss", tss_id, "admin_pin", pin)
    if not ok then return nil, perr end
    return self:put_secret("tss", tss_id, "pending_pin", nil)
  end)
end

-- ------------------------------------------------------------------ clients

function Store:client_insert(c)
  return self:_run("INSERT INTO clients(client_id, tss_id, serial_number, state, created_at, updated_at) "
    .. "VALUES (?, ?, ?, 'pending', ?, ?)", c.client_id, c.tss_id, c.serial_number, now(), now())
end

function Store:client_get(client_id)
  return self:_one("SELECT * FROM clients WHERE client_id = ?", client_id)
end

function Store:client_by_serial(tss_id, serial_number)
  return self:_one("SELECT * FROM clients WHERE tss_id = ? AND serial_number = ?", tss_id, serial_number)
end

function Store:client_set_state(client_id, state)
  return self:_run("UPDATE clients SET state = ?, updated_at = ? WHERE client_id = ?", state, now(), client_id)
end

function Store:clients(tss_id)
  if tss_id then
    return self:_query("SELECT * FROM clients WHERE tss_id = ? ORDER BY created_at, client_id", tss_id)
  end
  return self:_query("SELECT * FROM clients ORDER BY created_at, client_id")
end

-- ------------------------------------------------------------------ sale journal

local TX_FIELDS = { state = true, revision = true, sale = true, request = true, response = true,
  signature = true, signature_counter = true, transaction_number = true, qr_code_data = true,
  outage = true, error = true, extra = true }

-- Inserts the write-ahead row of a sale: t = { tx_id, tss_id, client_id, state?, sale?, ... }.
function Store:journal_insert(t)
  return self:_run("INSERT INTO transactions(tx_id, tss_id, client_id, state, revision, sale, request, "
    .. "outage, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    t.tx_id, t.tss_id, t.client_id, t.state or "intent", t.revision or 0, t.sale, t.request,
    t.outage and 1 or 0, now(), now())
end

function Store:journal_update(tx_id, fields)
  local sets, vals, k = set_clause(fields, TX_FIELDS, "fiskaly.store.journal_update")
  vals[k + 1] = now()
  vals[k + 2] = tx_id
  local n, err = self:_run("UPDATE transactions SET " .. sets .. ", updated_at = ? WHERE tx_id = ?",
    table.unpack(vals, 1, k + 2))
  if not n then return nil, err end
  if n ~= 1 then return nil, new_error("NOT_FOUND", "no journal entry for transaction " .. tostring(tx_id)) end
  return true
end

-- Records fields of a sale (the interface of fiskaly.transaction's journal):
-- the first record of a tx_id (with tss_id, client_id) inserts its row;
-- later ones update it. number -> transaction_number; fields without a
-- column (stage, verified, ...) are merged into the JSON column extra.
function Store:journal_record(tx_id, fields)
  local cols, extra = {}, nil
  for k, v in pairs(fields) do
    if k == "number" then
      cols.transaction_number = math.tointeger(tonumber(v)) or v
    elseif k == "error" then
      if type(v) == "table" and getmetatable(v) == nil then v = v.message or v.code end
      cols.error = tostring(v)
    elseif TX_FIELDS[k] and k ~= "extra" then
      cols[k] = v
    elseif k ~= "tx_id" and k ~= "tss_id" and k ~= "client_id" and k ~= "created_at" then
      extra = extra or {}
      extra[k] = v
    end
  end
  return self:transaction(function()
    local row, err = self:journal_get(tx_id)
    if row == nil then return nil, err end
    if not row then
      if type(fields.tss_id) ~= "string" or type(fields.client_id) ~= "string" then
        error("fiskaly.store.journal_record: the first record of a sale needs tss_id and client_id", 3)
      end
      local ok, ierr = self:journal_insert{ tx_id = tx_id, tss_id = fields.tss_id, client_id = fields.client_id,
        state = cols.state }
      if not ok then return nil, ierr end
    end
    if extra then
      local merged = (row and row.extra and dec(row.extra)) or {}
      for k, v in pairs(extra) do merged[k] = v end
      cols.extra = enc(merged)
    end
    if next(cols) == nil then return true end
    return self:journal_update(tx_id, cols)
  end)
end

-- A journal object for fiskaly.transaction.run{ journal = st:journal() }.
function Store:journal()
  local st = self
  return { record = function(_, tx_id, fields) return st:journal_record(tx_id, fields) end }
end

function Store:journal_get(tx_id)
  return self:_one("SELECT * FROM transactions WHERE tx_id = ?", tx_id)
end

-- Journal rows, optionally filtered: { state = "ACTIVE" } or { open = true }
-- (everything not FINISHED/CANCELLED/VOID: void = never reached the service), oldest first.
function Store:journal_list(filter)
  filter = filter or {}
  if filter.state then
    return self:_query("SELECT * FROM transactions WHERE state = ? ORDER BY id", filter.state)
  elseif filter.open then
    return self:_query("SELECT * FROM transactions WHERE upper(state) NOT IN ('FINISHED', 'CANCELLED', 'VOID') ORDER BY id")
  end
  return self:_query("SELECT * FROM transactions ORDER BY id")
end

-- The last signature counter seen from a TSS (kept on the tss row).
function Store:tss_set_counter(tss_id, counter)
  return self:_run("UPDATE tss SET last_signature_counter = max(coalesce(last_signature_counter, 0), ?), "
    .. "updated_at = ? WHERE tss_id = ?", counter, now(), tss_id)
end

return M
