/*
 * store.c -- fiskaly.core.store: SQLite primitives for the Lua layer.
 *
 * C only opens, prepares, binds, steps and wraps transactions; the schema
 * and every SQL statement live in lua/fiskaly/store.lua.
 *
 * Ownership: a Db (fiskaly.store.Db) owns its sqlite3 handle and every
 * statement prepared on it.  Each Stmt (fiskaly.store.Stmt) is linked into
 * its Db's list and keeps the Db userdata alive through its user value, so
 * the Db's memory outlives every Stmt's finalizer.  Closing the Db finalizes
 * all its statements and detaches them (stmt->db = NULL); a detached Stmt's
 * close does nothing.  __gc and __close share one idempotent close.
 *
 * Misuse (wrong types, a closed handle, too many bind values) raises;
 * SQLite failures return nil, { kind = "store", code = "SQLITE_BUSY", ... }.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#define STORE_DB_MT   "fiskaly.store.Db"
#define STORE_STMT_MT "fiskaly.store.Stmt"

typedef struct store_stmt store_stmt;

typedef struct store_db {
    sqlite3 *db;
    store_stmt *stmts;          /* doubly linked list of live statements */
} store_db;

struct store_stmt {
    sqlite3_stmt *stmt;
    store_db *db;               /* NULL once detached (finalized or Db closed) */
    store_stmt *prev, *next;
};

/* ------------------------------------------------------------------ errors */

static const char *store_code_name(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:         return "SQLITE_OK";
    case SQLITE_ERROR:      return "SQLITE_ERROR";
    case SQLITE_INTERNAL:   return "SQLITE_INTERNAL";
    case SQLITE_PERM:       return "SQLITE_PERM";
    case SQLITE_ABORT:      return "SQLITE_ABORT";
    case SQLITE_BUSY:       return "SQLITE_BUSY";
    case SQLITE_LOCKED:     return "SQLITE_LOCKED";
    case SQLITE_NOMEM:      return "SQLITE_NOMEM";
    case SQLITE_READONLY:   return "SQLITE_READONLY";
    case SQLITE_INTERRUPT:  return "SQLITE_INTERRUPT";
    case SQLITE_IOERR:      return "SQLITE_IOERR";
    case SQLITE_CORRUPT:    return "SQLITE_CORRUPT";
    case SQLITE_NOTFOUND:   return "SQLITE_NOTFOUND";
    case SQLITE_FULL:       return "SQLITE_FULL";
    case SQLITE_CANTOPEN:   return "SQLITE_CANTOPEN";
    case SQLITE_PROTOCOL:   return "SQLITE_PROTOCOL";
    case SQLITE_EMPTY:      return "SQLITE_EMPTY";
    case SQLITE_SCHEMA:     return "SQLITE_SCHEMA";
    case SQLITE_TOOBIG:     return "SQLITE_TOOBIG";
    case SQLITE_CONSTRAINT: return "SQLITE_CONSTRAINT";
    case SQLITE_MISMATCH:   return "SQLITE_MISMATCH";
    case SQLITE_MISUSE:     return "SQLITE_MISUSE";
    case SQLITE_NOLFS:      return "SQLITE_NOLFS";
    case SQLITE_AUTH:       return "SQLITE_AUTH";
    case SQLITE_FORMAT:     return "SQLITE_FORMAT";
    case SQLITE_RANGE:      return "SQLITE_RANGE";
    case SQLITE_NOTADB:     return "SQLITE_NOTADB";
    case SQLITE_NOTICE:     return "SQLITE_NOTICE";
    case SQLITE_WARNING:    return "SQLITE_WARNING";
    default:                return "SQLITE_UNKNOWN";
    }
}

/* Pushes nil, { kind = "store", code =, extended_code =, message = }; returns 2. */
static int store_push_error(lua_State *L, sqlite3 *db, int rc, const char *what)
{
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    lua_pushnil(L);
    lua_createtable(L, 0, 4);
    lua_pushliteral(L, "store");
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, store_code_name(rc));
    lua_setfield(L, -2, "code");
    lua_pushinteger(L, rc);
    lua_setfield(L, -2, "extended_code");
    if (what)
        lua_pushfstring(L, "%s: %s", what, msg ? msg : sqlite3_errstr(rc));
    else
        lua_pushstring(L, msg ? msg : sqlite3_errstr(rc));
    lua_setfield(L, -2, "message");
    return 2;
}

/* nil, { kind = "store", code = "<errno name>", message = } for file helpers. */
static int store_push_errno(lua_State *L, const char *path, int err)
{
    lua_pushnil(L);
    lua_createtable(L, 0, 4);
    lua_pushliteral(L, "store");
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, err == ENOENT ? "ENOENT" : err == EEXIST ? "EEXIST"
                      : err == EACCES ? "EACCES" : "EIO");
    lua_setfield(L, -2, "code");
    lua_pushinteger(L, err);
    lua_setfield(L, -2, "errno");
    lua_pushfstring(L, "%s: %s", path, strerror(err));
    lua_setfield(L, -2, "message");
    return 2;
}

/* ------------------------------------------------------------------ Stmt */

static store_stmt *check_stmt(lua_State *L, int idx)
{
    return (store_stmt *)luaL_checkudata(L, idx, STORE_STMT_MT);
}

/* A Stmt that is still usable (not finalized, Db open); raises otherwise. */
static store_stmt *check_live_stmt(lua_State *L, int idx)
{
    store_stmt *s = check_stmt(L, idx);
    if (s->stmt == NULL || s->db == NULL || s->db->db == NULL)
        luaL_error(L, "fiskaly.store.Stmt: statement is finalized (or its Db is closed)");
    return s;
}

static void stmt_detach(store_stmt *s)
{
    store_db *d = s->db;
    if (d != NULL) {
        if (s->prev) s->prev->next = s->next;
        else d->stmts = s->next;
        if (s->next) s->next->prev = s->prev;
    }
    s->prev = s->next = NULL;
    s->db = NULL;
}

/* Idempotent: finalize and unlink.  Safe after the Db was closed. */
static void stmt_release(store_stmt *s)
{
    if (s->stmt != NULL) {
        sqlite3_finalize(s->stmt);
        s->stmt = NULL;
    }
    stmt_detach(s);
}

static int stmt_finalize(lua_State *L)
{
    stmt_release(check_stmt(L, 1));
    return 0;
}

static int stmt_tostring(lua_State *L)
{
    store_stmt *s = check_stmt(L, 1);
    lua_pushfstring(L, STORE_STMT_MT " (%p%s)", (void *)s, s->stmt ? "" : ", finalized");
    return 1;
}

/* Binds the value at Lua index idx to parameter i.  Strings bind as TEXT;
 * a table { blob = string } binds as BLOB; nil as NULL; booleans as 0/1. */
static int stmt_bind_value(lua_State *L, store_stmt *s, int i, int idx)
{
    sqlite3_stmt *st = s->stmt;
    size_t len;
    const char *p;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
    case LUA_TNONE:
        return sqlite3_bind_null(st, i);
    case LUA_TBOOLEAN:
        return sqlite3_bind_int(st, i, lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return sqlite3_bind_int64(st, i, (sqlite3_int64)lua_tointeger(L, idx));
        return sqlite3_bind_double(st, i, (double)lua_tonumber(L, idx));
    case LUA_TSTRING:
        p = lua_tolstring(L, idx, &len);
        return sqlite3_bind_text64(st, i, p, (sqlite3_uint64)len, SQLITE_TRANSIENT, SQLITE_UTF8);
    case LUA_TTABLE:
        lua_getfield(L, idx, "blob");
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            return luaL_error(L, "fiskaly.store.Stmt: bind value %d: a table must be { blob = string }", i);
        }
        p = lua_tolstring(L, -1, &len);
        {
            int rc = sqlite3_bind_blob64(st, i, p, (sqlite3_uint64)len, SQLITE_TRANSIENT);
            lua_pop(L, 1);
            return rc;
        }
    default:
        return luaL_error(L, "fiskaly.store.Stmt: cannot bind a %s (parameter %d)",
                          luaL_typename(L, idx), i);
    }
}

/* Binds values first..last (Lua stack indices) to parameters 1..n. */
static int stmt_bind_range(lua_State *L, store_stmt *s, int first, int last)
{
    int n = last - first + 1;
    int count = sqlite3_bind_parameter_count(s->stmt);
    sqlite3_reset(s->stmt);
    sqlite3_clear_bindings(s->stmt);
    if (n > count)
        return luaL_error(L, "fiskaly.store.Stmt: %d values for %d parameters", n, count);
    for (int i = 1; i <= n; i++) {
        int rc = stmt_bind_value(L, s, i, first + i - 1);
        if (rc != SQLITE_OK)
            return store_push_error(L, s->db->db, rc, "bind");
    }
    return 0;
}

static int stmt_bind(lua_State *L)
{
    store_stmt *s = check_live_stmt(L, 1);
    int r = stmt_bind_range(L, s, 2, lua_gettop(L));
    if (r) return r;
    lua_settop(L, 1);
    return 1;
}

static int stmt_bind_named(lua_State *L)
{
    store_stmt *s = check_live_stmt(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    sqlite3_reset(s->stmt);
    sqlite3_clear_bindings(s->stmt);
    int count = sqlite3_bind_parameter_count(s->stmt);
    for (int i = 1; i <= count; i++) {
        const char *name = sqlite3_bind_parameter_name(s->stmt, i);
        if (name == NULL)
            return luaL_error(L, "fiskaly.store.Stmt: parameter %d has no name", i);
        lua_getfield(L, 2, name + 1);  /* skip the ':', '@' or '$' */
        int rc = stmt_bind_value(L, s, i, lua_gettop(L));
        lua_pop(L, 1);
        if (rc != SQLITE_OK)
            return store_push_error(L, s->db->db, rc, "bind");
    }
    lua_settop(L, 1);
    return 1;
}

static void stmt_push_row(lua_State *L, sqlite3_stmt *st)
{
    int n = sqlite3_column_count(st);
    lua_createtable(L, 0, n);
    for (int i = 0; i < n; i++) {
        switch (sqlite3_column_type(st, i)) {
        case SQLITE_INTEGER:
            lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, i));
            break;
        case SQLITE_FLOAT:
            lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, i));
            break;
        case SQLITE_TEXT: {
            const unsigned char *t = sqlite3_column_text(st, i);
            lua_pushlstring(L, (const char *)t, (size_t)sqlite3_column_bytes(st, i));
            break;
        }
        case SQLITE_BLOB: {
            const void *b = sqlite3_column_blob(st, i);
            int len = sqlite3_column_bytes(st, i);
            lua_pushlstring(L, b ? (const char *)b : "", (size_t)len);
            break;
        }
        default:
            continue;  /* NULL: the key stays absent */
        }
        lua_setfield(L, -2, sqlite3_column_name(st, i));
    }
}

/* Steps once: pushes a row (1 result), nothing (0: done) or nil, err (2).
 * On error the statement is reset so it can be reused. */
static int stmt_step_raw(lua_State *L, store_stmt *s)
{
    int rc = sqlite3_step(s->stmt);
    if (rc == SQLITE_ROW) {
        stmt_push_row(L, s->stmt);
        return 1;
    }
    if (rc == SQLITE_DONE)
        return 0;
    /* sqlite3_reset returns the same error code; the message is on the db. */
    int r = store_push_error(L, s->db->db, rc, NULL);
    sqlite3_reset(s->stmt);
    return r;
}

static int stmt_step(lua_State *L)
{
    store_stmt *s = check_live_stmt(L, 1);
    int r = stmt_step_raw(L, s);
    if (r == 0) {
        lua_pushnil(L);
        return 1;
    }
    return r;
}

static int stmt_reset(lua_State *L)
{
    store_stmt *s = check_live_stmt(L, 1);
    sqlite3_reset(s->stmt);
    sqlite3_clear_bindings(s->stmt);
    lua_settop(L, 1);
    return 1;
}

static int stmt_sql(lua_State *L)
{
    store_stmt *s = check_live_stmt(L, 1);
    lua_pushstring(L, sqlite3_sql(s->stmt));
    return 1;
}

static const luaL_Reg store_stmt_methods[] = {
    {"bind", stmt_bind},
    {"bind_named", stmt_bind_named},
    {"step", stmt_step},
    {"reset", stmt_reset},
    {"sql", stmt_sql},
    {"finalize", stmt_finalize},
    {"close", stmt_finalize},
    {NULL, NULL}
};

static const luaL_Reg store_stmt_meta[] = {
    {"__gc", stmt_finalize},
    {"__close", stmt_finalize},
    {"__tostring", stmt_tostring},
    {"__index", NULL},
    {NULL, NULL}
};

/* ------------------------------------------------------------------ Db */

static store_db *check_db(lua_State *L, int idx)
{
    return (store_db *)luaL_checkudata(L, idx, STORE_DB_MT);
}

static store_db *check_open_db(lua_State *L, int idx)
{
    store_db *d = check_db(L, idx);
    if (d->db == NULL)
        luaL_error(L, "fiskaly.store.Db: database is closed");
    return d;
}

/* Idempotent: finalize every statement, then close the connection. */
static void db_release(store_db *d)
{
    while (d->stmts != NULL)
        stmt_release(d->stmts);
    if (d->db != NULL) {
        sqlite3_close_v2(d->db);
        d->db = NULL;
    }
}

static int db_close(lua_State *L)
{
    db_release(check_db(L, 1));
    lua_pushboolean(L, 1);
    return 1;
}

static int db_gc(lua_State *L)
{
    db_release(check_db(L, 1));
    return 0;
}

static int db_tostring(lua_State *L)
{
    store_db *d = check_db(L, 1);
    lua_pushfstring(L, STORE_DB_MT " (%p%s)", (void *)d, d->db ? "" : ", closed");
    return 1;
}

/* Prepares sql on the Db at idx 1; pushes the Stmt (1) or nil, err (2).
 * The Stmt userdata exists before the sqlite3_stmt it holds. */
static int db_push_prepared(lua_State *L, store_db *d, const char *sql, size_t len)
{
    store_stmt *s = (store_stmt *)lua_newuserdatauv(L, sizeof *s, 1);
    s->stmt = NULL;
    s->db = NULL;
    s->prev = s->next = NULL;
    luaL_setmetatable(L, STORE_STMT_MT);
    lua_pushvalue(L, 1);                 /* keep the Db alive while the Stmt lives */
    lua_setiuservalue(L, -2, 1);
    if (len > INT_MAX)
        return luaL_error(L, "fiskaly.store.Db: SQL text too long");
    const char *tail = NULL;
    int rc = sqlite3_prepare_v2(d->db, sql, (int)len, &s->stmt, &tail);
    if (rc != SQLITE_OK) {
        lua_pop(L, 1);
        return store_push_error(L, d->db, rc, "prepare");
    }
    if (s->stmt == NULL) {
        lua_pop(L, 1);
        return luaL_error(L, "fiskaly.store.Db: prepare: no statement in SQL text");
    }
    while (tail && *tail && strchr(" \t\r\n;", *tail)) tail++;
    if (tail && *tail) {
        sqlite3_finalize(s->stmt);
        s->stmt = NULL;
        lua_pop(L, 1);
        return luaL_error(L, "fiskaly.store.Db: prepare: more than one statement (use db:exec)");
    }
    s->db = d;
    s->next = d->stmts;
    if (d->stmts) d->stmts->prev = s;
    d->stmts = s;
    return 1;
}

static int db_prepare(lua_State *L)
{
    store_db *d = check_open_db(L, 1);
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);
    return db_push_prepared(L, d, sql, len);
}

/* Pushes the cached Stmt for the SQL at idx 2 (preparing it once). */
static int db_push_cached(lua_State *L, store_db *d)
{
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);
    lua_getiuservalue(L, 1, 1);          /* cache table */
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) == LUA_TUSERDATA) {
        store_stmt *s = (store_stmt *)lua_touserdata(L, -1);
        if (s->stmt != NULL && s->db == d) {
            lua_remove(L, -2);
            return 1;
        }
    }
    lua_pop(L, 1);
    int r = db_push_prepared(L, d, sql, len);
    if (r != 1) {
        lua_remove(L, -r - 1);           /* drop the cache table under nil, err */
        return r;
    }
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);                   /* cache[sql] = stmt */
    lua_remove(L, -2);
    return 1;
}

/* db:query(sql, ...) -> list of rows, or nil, err */
static int db_query(lua_State *L)
{
    store_db *d = check_open_db(L, 1);
    int top = lua_gettop(L);
    int r = db_push_cached(L, d);
    if (r != 1) return r;
    int si = lua_gettop(L);
    store_stmt *s = (store_stmt *)lua_touserdata(L, si);
    r = stmt_bind_range(L, s, 3, top);
    if (r) return r;
    lua_newtable(L);
    for (lua_Integer n = 1;; n++) {
        r = stmt_step_raw(L, s);
        if (r == 0) break;
        if (r == 2) return 2;
        lua_rawseti(L, -2, n);
    }
    sqlite3_reset(s->stmt);
    sqlite3_clear_bindings(s->stmt);
    return 1;
}

/* db:run(sql, ...) -> changes, last_insert_rowid, or nil, err */
static int db_run(lua_State *L)
{
    store_db *d = check_open_db(L, 1);
    int top = lua_gettop(L);
    int r = db_push_cached(L, d);
    if (r != 1) return r;
    store_stmt *s = (store_stmt *)lua_touserdata(L, -1);
    r = stmt_bind_range(L, s, 3, top);
    if (r) return r;
    for (;;) {
        r = stmt_step_raw(L, s);
        if (r == 0) break;
        if (r == 2) return 2;
        lua_pop(L, 1);                   /* ignore rows */
    }
    sqlite3_reset(s->stmt);
    sqlite3_clear_bindings(s->stmt);
    lua_pushinteger(L, (lua_Integer)sqlite3_changes64(d->db));
    lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(d->db));
    return 2;
}

static int db_exec(lua_State *L)
{
    store_db *d = check_open_db(L, 1);
    const char *sql = luaL_checkstring(L, 2);
    int rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return store_push_error(L, d->db, rc, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

static int db_begin(lua_State *L)
{
    static const char *const modes[] = {"deferred", "immediate", "exclusive", NULL};
    static const char *const sql[] = {"BEGIN DEFERRED", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"};
    store_db *d = check_open_db(L, 1);
    int m = luaL_checkoption(L, 2, "deferred", modes);
    int rc = sqlite3_exec(d->db, sql[m], NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return store_push_error(L, d->db, rc, "begin");
    lua_pushboolean(L, 1);
    return 1;
}

static int db_commit(lua_State *L)
{
    store_db *d = check_open_db(L, 1);
    int rc = sqlite3_exec(d->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return store_push_error(L, d->db, rc, "commit");
    lua_pushboolean(L, 1);
    return 1;
}

static int db_rollback(lua_State *L)
{
    store_db *d = check_open_db(L, 1);
    if (sqlite3_get_autocommit(d->db)) {   /* nothing open: not an error */
        lua_pushboolean(L, 1);
        return 1;
    }
    int rc = sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return store_push_error(L, d->db, rc, "rollback");
    lua_pushboolean(L, 1);
    return 1;
}

static int db_in_transaction(lua_State *L)
{
    store_db *d = check_open_db(L, 1);
    lua_pushboolean(L, !sqlite3_get_autocommit(d->db));
    return 1;
}

static int db_changes(lua_State *L)
{
    store_db *d = check_open_db(L, 1);
    lua_pushinteger(L, (lua_Integer)sqlite3_changes64(d->db));
    return 1;
}

static int db_last_insert_rowid(lua_State *L)
{
    store_db *d = check_open_db(L, 1);
    lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(d->db));
    return 1;
}

static int db_is_open(lua_State *L)
{
    lua_pushboolean(L, check_db(L, 1)->db != NULL);
    return 1;
}

static const luaL_Reg store_db_methods[] = {
    {"exec", db_exec},
    {"prepare", db_prepare},
    {"query", db_query},
    {"run", db_run},
    {"begin", db_begin},
    {"commit", db_commit},
    {"rollback", db_rollback},
    {"in_transaction", db_in_transaction},
    {"changes", db_changes},
    {"last_insert_rowid", db_last_insert_rowid},
    {"is_open", db_is_open},
    {"close", db_close},
    {NULL, NULL}
};

static const luaL_Reg store_db_meta[] = {
    {"__gc", db_gc},
    {"__close", db_gc},
    {"__tostring", db_tostring},
    {"__index", NULL},
    {NULL, NULL}
};

/* core.store.open(path, { busy_timeout_ms =, readonly =, create = }) -> Db | nil, err */
static int store_open_db(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer busy = 5000;
    int readonly = 0, create = 1;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (lua_getfield(L, 2, "busy_timeout_ms") != LUA_TNIL) {
            busy = luaL_checkinteger(L, -1);
            luaL_argcheck(L, busy >= 0 && busy <= INT_MAX, 2, "busy_timeout_ms out of range");
        }
        lua_pop(L, 1);
        lua_getfield(L, 2, "readonly");
        readonly = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 2, "create") != LUA_TNIL)
            create = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    lua_settop(L, 2);

    store_db *d = (store_db *)lua_newuserdatauv(L, sizeof *d, 1);
    d->db = NULL;
    d->stmts = NULL;
    luaL_setmetatable(L, STORE_DB_MT);
    lua_newtable(L);                     /* statement cache */
    lua_setiuservalue(L, -2, 1);

    int flags = readonly ? SQLITE_OPEN_READONLY
                         : (SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0));
    flags |= SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path, &d->db, flags, NULL);
    if (rc != SQLITE_OK) {
        int r = store_push_error(L, d->db, rc, path);
        db_release(d);
        return r;
    }
    sqlite3_extended_result_codes(d->db, 1);
    sqlite3_busy_timeout(d->db, (int)busy);
    /* journal_mode first: it reads the header, so garbage fails here
     * (SQLITE_NOTADB) before anything is written. */
    static const char *const pragmas_rw[] = {
        "PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON", NULL
    };
    static const char *const pragmas_ro[] = {
        "PRAGMA foreign_keys=ON", "SELECT count(*) FROM sqlite_master", NULL
    };
    const char *const *pragmas = readonly ? pragmas_ro : pragmas_rw;
    for (int i = 0; pragmas[i]; i++) {
        rc = sqlite3_exec(d->db, pragmas[i], NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            int r = store_push_error(L, d->db, rc, path);
            db_release(d);
            return r;
        }
    }
    lua_pushvalue(L, 3);
    return 1;
}

/* core.store.write_private_file(path, bytes) -> true | nil, err
 * Creates path exclusively (O_EXCL) with mode 0600, writes bytes, fsyncs.
 * Fails with code "EEXIST" when the file exists (never overwrites). */
static int store_write_private_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, S_IRUSR | S_IWUSR);
    if (fd < 0)
        return store_push_errno(L, path, errno);
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            unlink(path);
            return store_push_errno(L, path, e);
        }
        off += (size_t)w;
    }
    if (fchmod(fd, S_IRUSR | S_IWUSR) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(path);
        return store_push_errno(L, path, e);
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(path);
        return store_push_errno(L, path, e);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.store.file_info(path) -> { mode = int (permission bits), size =, uid = } | nil, err */
static int store_file_info(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(path, &st) != 0)
        return store_push_errno(L, path, errno);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    lua_setfield(L, -2, "mode");
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, (lua_Integer)st.st_uid);
    lua_setfield(L, -2, "uid");
    lua_pushboolean(L, S_ISREG(st.st_mode));
    lua_setfield(L, -2, "regular");
    return 1;
}

/* ------------------------------------------------------------------ Lock */

#define STORE_LOCK_MT "fiskaly.store.Lock"

typedef struct store_lock {
    int fd;                     /* -1 once released */
} store_lock;

static int lock_release(lua_State *L)
{
    store_lock *k = (store_lock *)luaL_checkudata(L, 1, STORE_LOCK_MT);
    if (k->fd >= 0) {
        close(k->fd);           /* closing the descriptor drops the fcntl lock */
        k->fd = -1;
    }
    return 0;
}

static int lock_tostring(lua_State *L)
{
    store_lock *k = (store_lock *)luaL_checkudata(L, 1, STORE_LOCK_MT);
    lua_pushfstring(L, STORE_LOCK_MT " (%p%s)", (void *)k, k->fd >= 0 ? "" : ", released");
    return 1;
}

static const luaL_Reg store_lock_methods[] = {
    {"release", lock_release},
    {"close", lock_release},
    {NULL, NULL}
};

static const luaL_Reg store_lock_meta[] = {
    {"__gc", lock_release},
    {"__close", lock_release},
    {"__tostring", lock_tostring},
    {"__index", NULL},
    {NULL, NULL}
};

/* core.store.lock_file(path) -> Lock | nil, err
 * An exclusive, non-blocking fcntl write lock on path (created 0600 if
 * missing).  Held until lock:release(), garbage collection or process exit
 * (also SIGKILL: the kernel drops it).  err.code = "LOCKED" when another
 * process holds it. */
static int store_lock_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    store_lock *k = (store_lock *)lua_newuserdatauv(L, sizeof *k, 0);
    k->fd = -1;
    luaL_setmetatable(L, STORE_LOCK_MT);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, S_IRUSR | S_IWUSR);
    if (fd < 0)
        return store_push_errno(L, path, errno);
    k->fd = fd;
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        int e = errno;
        close(fd);
        k->fd = -1;
        if (e == EACCES || e == EAGAIN) {
            lua_pushnil(L);
            lua_createtable(L, 0, 3);
            lua_pushliteral(L, "store");
            lua_setfield(L, -2, "kind");
            lua_pushliteral(L, "LOCKED");
            lua_setfield(L, -2, "code");
            lua_pushfstring(L, "%s is locked by another process", path);
            lua_setfield(L, -2, "message");
            return 2;
        }
        return store_push_errno(L, path, e);
    }
    return 1;
}

static int store_sqlite_version(lua_State *L)
{
    lua_pushstring(L, sqlite3_libversion());
    return 1;
}

static const luaL_Reg store_funcs[] = {
    {"open", store_open_db},
    {"write_private_file", store_write_private_file},
    {"file_info", store_file_info},
    {"lock_file", store_lock_file},
    {"sqlite_version", store_sqlite_version},
    {NULL, NULL}
};

static void store_new_meta(lua_State *L, const char *name, const luaL_Reg *meta,
                           const luaL_Reg *methods)
{
    luaL_newmetatable(L, name);
    luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void store_open(lua_State *L)
{
    store_new_meta(L, STORE_DB_MT, store_db_meta, store_db_methods);
    store_new_meta(L, STORE_STMT_MT, store_stmt_meta, store_stmt_methods);
    store_new_meta(L, STORE_LOCK_MT, store_lock_meta, store_lock_methods);
    lua_newtable(L);
    luaL_setfuncs(L, store_funcs, 0);
    lua_setfield(L, -2, "store");
}
