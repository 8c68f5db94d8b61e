-- core.store (SQLite primitives) and core.crypto.aead_* (AES-256-GCM).
local lu = require "luaunit"
local core = require "fiskaly.core"

local S = core.store
local crypto = core.crypto

local tmpdir = os.tmpname()
os.remove(tmpdir)
assert(os.execute("mkdir -p '" .. tmpdir .. "'"))
local n = 0
local function tmpdb()
  n = n + 1
  return string.format("%s/db%d.sqlite", tmpdir, n)
end

TestCoreStore = {}

function TestCoreStore:test_open_pragmas()
  local db = assert(S.open(tmpdb()))
  lu.assertEquals(db:query("PRAGMA journal_mode")[1].journal_mode, "wal")
  lu.assertEquals(db:query("PRAGMA synchronous")[1].synchronous, 2)   -- FULL
  lu.assertEquals(db:query("PRAGMA foreign_keys")[1].foreign_keys, 1)
  lu.assertEquals(db:query("PRAGMA busy_timeout")[1].timeout, 5000)
  db:close()
  local db2 = assert(S.open(tmpdb(), { busy_timeout_ms = 123 }))
  lu.assertEquals(db2:query("PRAGMA busy_timeout")[1].timeout, 123)
  db2:close()
end

function TestCoreStore:test_prepare_bind_step()
  local db = assert(S.open(tmpdb()))
  assert(db:exec("CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT, b BLOB, f REAL, n INTEGER)"))
  local ins = assert(db:prepare("INSERT INTO t(s, b, f, n) VALUES (?, ?, ?, ?)"))
  ins:bind("text\0with nul", { blob = "\0\1\2\255" }, 1.5, nil)
  lu.assertNil(ins:step())          -- done
  ins:bind("second", { blob = "" }, 2.0, 42)
  lu.assertNil(ins:step())
  local sel = assert(db:prepare("SELECT id, s, b, typeof(s) AS ts, typeof(b) AS tb, f, n FROM t WHERE id >= :min ORDER BY id"))
  sel:bind_named{ min = 1 }
  local r1 = sel:step()
  lu.assertEquals(r1.s, "text\0with nul")
  lu.assertEquals(r1.b, "\0\1\2\255")
  lu.assertEquals(r1.ts, "text")
  lu.assertEquals(r1.tb, "blob")
  lu.assertEquals(r1.f, 1.5)
  lu.assertNil(r1.n)                -- NULL -> absent
  local r2 = sel:step()
  lu.assertEquals(math.type(r2.n), "integer")
  lu.assertEquals(r2.n, 42)
  lu.assertEquals(r2.b, "")
  lu.assertNil(sel:step())
  sel:reset()
  sel:bind_named{ min = 2 }
  lu.assertEquals(sel:step().id, 2)
  sel:finalize()
  sel:finalize()                    -- idempotent
  lu.assertErrorMsgContains("finalized", sel.step, sel)
  db:close()
end

function TestCoreStore:test_query_run()
  local db = assert(S.open(tmpdb()))
  assert(db:exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
  local changes, rowid = db:run("INSERT INTO t(v) VALUES (?)", "a")
  lu.assertEquals(changes, 1)
  lu.assertEquals(rowid, 1)
  db:run("INSERT INTO t(v) VALUES (?)", "b")
  lu.assertEquals(#db:query("SELECT * FROM t"), 2)
  lu.assertEquals(db:query("SELECT v FROM t WHERE id = ?", 2)[1].v, "b")
  -- constraint violation: nil, err object
  local ok, err = db:run("INSERT INTO t(v) VALUES (?)", "a")
  lu.assertNil(ok)
  lu.assertEquals(err.kind, "store")
  lu.assertEquals(err.code, "SQLITE_CONSTRAINT")
  lu.assertStrContains(err.message, "UNIQUE")
  -- the cached statement is reusable after the error
  lu.assertEquals(db:run("INSERT INTO t(v) VALUES (?)", "c"), 1)
  -- syntax error
  local rows, e2 = db:query("SELEKT 1")
  lu.assertNil(rows)
  lu.assertEquals(e2.code, "SQLITE_ERROR")
  -- misuse raises
  lu.assertErrorMsgContains("parameters", db.run, db, "INSERT INTO t(v) VALUES (?)", "x", "y")
  lu.assertErrorMsgContains("cannot bind", db.run, db, "INSERT INTO t(v) VALUES (?)", function() end)
  lu.assertErrorMsgContains("more than one statement", db.prepare, db, "SELECT 1; SELECT 2")
  db:close()
end

function TestCoreStore:test_transactions()
  local db = assert(S.open(tmpdb()))
  assert(db:exec("CREATE TABLE t(v INTEGER)"))
  assert(db:begin("immediate"))
  lu.assertTrue(db:in_transaction())
  db:run("INSERT INTO t VALUES (1)")
  assert(db:rollback())
  lu.assertFalse(db:in_transaction())
  lu.assertEquals(#db:query("SELECT * FROM t"), 0)
  assert(db:begin())
  db:run("INSERT INTO t VALUES (2)")
  assert(db:commit())
  lu.assertEquals(#db:query("SELECT * FROM t"), 1)
  lu.assertErrorMsgContains("invalid option", db.begin, db, "sometimes")
  db:close()
end

function TestCoreStore:test_locked_gives_busy_not_hang()
  local path = tmpdb()
  local a = assert(S.open(path))
  assert(a:exec("CREATE TABLE t(v INTEGER)"))
  local b = assert(S.open(path, { busy_timeout_ms = 50 }))
  assert(a:begin("exclusive"))
  a:run("INSERT INTO t VALUES (1)")
  local ok, err = b:begin("immediate")
  lu.assertNil(ok)
  lu.assertEquals(err.code, "SQLITE_BUSY")
  lu.assertStrContains(err.message, "locked")
  local n2, err2 = b:run("INSERT INTO t VALUES (2)")
  lu.assertNil(n2)
  lu.assertEquals(err2.code, "SQLITE_BUSY")
  assert(a:commit())
  lu.assertEquals(b:run("INSERT INTO t VALUES (3)"), 1)
  a:close()
  b:close()
end

function TestCoreStore:test_close_owns_statements()
  local db = assert(S.open(tmpdb()))
  local st = assert(db:prepare("SELECT 1 AS one"))
  local st2 = assert(db:prepare("SELECT 2 AS two"))
  lu.assertEquals(st:step().one, 1)
  st2:finalize()
  assert(db:close())
  assert(db:close())                 -- idempotent
  lu.assertErrorMsgContains("closed", db.query, db, "SELECT 1")
  lu.assertErrorMsgContains("finalized", st.step, st)
  st:finalize()                      -- safe after Db close
  lu.assertStrContains(tostring(db), "closed")
  -- Stmt collected after its Db was closed and collected
  do
    local d = assert(S.open(tmpdb()))
    local _ = assert(d:prepare("SELECT 1"))
    d:close()
  end
  collectgarbage()
  collectgarbage()
  -- Db collected while statements are alive in the same cycle
  do
    local d = assert(S.open(tmpdb()))
    for _ = 1, 10 do assert(d:prepare("SELECT 1")) end
  end
  collectgarbage()
  collectgarbage()
  -- to-be-closed
  do
    local d <close> = assert(S.open(tmpdb()))
    local s <close> = assert(d:prepare("SELECT 1"))
    lu.assertNotNil(s:step())
  end
end

function TestCoreStore:test_garbage_file()
  local path = tmpdb()
  local f = assert(io.open(path, "wb"))
  local junk = string.rep("not a database, just garbage bytes! ", 200)
  f:write(junk)
  f:close()
  local db, err = S.open(path)
  lu.assertNil(db)
  lu.assertEquals(err.code, "SQLITE_NOTADB")
  f = assert(io.open(path, "rb"))
  lu.assertEquals(f:read("a"), junk)
  f:close()
end

function TestCoreStore:test_open_missing_dir()
  local db, err = S.open(tmpdir .. "/no/such/dir/x.db")
  lu.assertNil(db)
  lu.assertEquals(err.code, "SQLITE_CANTOPEN")
  lu.assertStrContains(err.message, "x.db")
end

function TestCoreStore:test_private_file()
  local path = tmpdir .. "/private.key"
  assert(S.write_private_file(path, "0123456789"))
  local info = assert(S.file_info(path))
  lu.assertEquals(info.mode, 384)     -- 0600
  lu.assertEquals(info.size, 10)
  lu.assertTrue(info.regular)
  local ok, err = S.write_private_file(path, "other")
  lu.assertNil(ok)
  lu.assertEquals(err.code, "EEXIST")
  local f = assert(io.open(path, "rb"))
  lu.assertEquals(f:read("a"), "0123456789")   -- never overwritten
  f:close()
  local none, e2 = S.file_info(tmpdir .. "/nope")
  lu.assertNil(none)
  lu.assertEquals(e2.code, "ENOENT")
end

function TestCoreStore:test_lock_file()
  local path = tmpdir .. "/x.lock"
  local lock = assert(S.lock_file(path))
  lu.assertEquals(S.file_info(path).mode, 384)
  -- another process cannot take it
  local probe = "lua5.4 -e " .. string.format("%q", string.format(
    "local l, e = require('fiskaly.core').store.lock_file(%q); os.exit(l and 0 or (e.code == 'LOCKED' and 3 or 4))",
    path))
  local _, _, code = os.execute(probe)
  lu.assertEquals(code, 3)
  lock:release()
  lock:release()                       -- idempotent
  lu.assertStrContains(tostring(lock), "released")
  local _, _, code2 = os.execute(probe)
  lu.assertEquals(code2, 0)
  do
    local l2 <close> = assert(S.lock_file(path))
  end
  lu.assertEquals(select(3, os.execute(probe)), 0)   -- released by <close>
  local bad, err = S.lock_file(tmpdir .. "/no/such/dir/x.lock")
  lu.assertNil(bad)
  lu.assertEquals(err.code, "ENOENT")
end

TestAead = {}

function TestAead:test_roundtrip_and_layout()
  local key = string.rep("\7", 32)
  for _, pt in ipairs{ "", "x", string.rep("secret", 1000) } do
    local blob = crypto.aead_seal(key, pt, "tss:1:admin_puk")
    lu.assertEquals(#blob, 12 + #pt + 16)
    lu.assertEquals(crypto.aead_open(key, blob, "tss:1:admin_puk"), pt)
  end
  -- fresh nonce every time
  lu.assertNotEquals(crypto.aead_seal(key, "same", "a"), crypto.aead_seal(key, "same", "a"))
end

function TestAead:test_authentication()
  local key = string.rep("\7", 32)
  local blob = crypto.aead_seal(key, "PUK-1234567890", "tss:1:admin_puk")
  lu.assertNil((crypto.aead_open(key, blob, "tss:2:admin_puk")))            -- swapped record
  lu.assertNil((crypto.aead_open(string.rep("\8", 32), blob, "tss:1:admin_puk")))  -- wrong key
  for i = 1, #blob do                                                        -- any flipped byte
    local t = blob:sub(1, i - 1) .. string.char(blob:byte(i) ~ 1) .. blob:sub(i + 1)
    local pt, err = crypto.aead_open(key, t, "tss:1:admin_puk")
    lu.assertNil(pt)
    lu.assertStrContains(err, "authentication failed")
    lu.assertNotStrContains(err, "PUK-1234567890")
  end
  local pt, err = crypto.aead_open(key, "short", "x")
  lu.assertNil(pt)
  lu.assertStrContains(err, "too short")
end

local function unhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end

function TestAead:test_known_vector()
  -- McGrew/Viega GCM spec, test case 14: AES-256, K = 0^32, IV = 0^12, P = 0^16, no AAD.
  local key = string.rep("\0", 32)
  local blob = string.rep("\0", 12) .. unhex("cea7403d4d606b6e074ec5d3baf39d18")
    .. unhex("d0d1c8a799996bf0265b98b5d48ab919")
  lu.assertEquals(crypto.aead_open(key, blob), string.rep("\0", 16))
  lu.assertEquals(crypto.aead_open(key, blob, ""), string.rep("\0", 16))
  lu.assertNil((crypto.aead_open(key, blob, "aad")))
  -- test case 13: empty plaintext, tag only
  lu.assertEquals(crypto.aead_open(key, string.rep("\0", 12) .. unhex("530f8afbc74536b9a963b4f1c4cb738b")), "")
end

function TestAead:test_misuse_raises()
  lu.assertErrorMsgContains("32 bytes", crypto.aead_seal, "short", "x", "a")
  lu.assertErrorMsgContains("32 bytes", crypto.aead_open, "short", "x", "a")
end

local rc = lu.LuaUnit.run()
os.execute("rm -rf '" .. tmpdir .. "'")
os.exit(rc, true)
