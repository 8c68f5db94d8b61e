/*
 * main.c -- fiskaly-sandbox: an offline emulator of the fiskaly Management
 * API v0 and SIGN DE API v2 on 127.0.0.1.
 *
 * This file is only the host: options, libmicrohttpd, one lua_State behind a
 * mutex.  The API logic is Lua (sandbox/server.lua and its modules).  For each
 * request the host collects the body, locks, calls the Lua handler with
 *   { method=, path=, query={name=value}, query_list={{name,value},...},
 *     headers={lowercased name=value}, body=, received_ms=, handled_ms=,
 *     body_too_large=? }
 * and copies the returned response table
 *   { status=, headers={name=value}, body=, delay_ms=?, drop=? }
 * out of Lua before it unlocks.  delay_ms is slept outside the lock (each
 * connection has its own thread), and `drop` (any true value, e.g. "before"
 * or "after") closes the connection without an answer (after the delay);
 * drop = "truncate" sends the status line and headers (Content-Length of the
 * full body) and then closes the connection before the body:
 * whether the request was applied first is the Lua side's decision, and
 * `status` may then be absent.
 *
 * With --tls it serves HTTPS (libmicrohttpd with GnuTLS) with a CA and a server
 * certificate made at start by sandbox/tls.lua (core.crypto); the CA PEM is
 * written to a file whose path is printed as FISKALY_CA_FILE.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <lualib.h>
#include <microhttpd.h>
#include <openssl/crypto.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SANDBOX_MAX_BODY (1024u * 1024u)     /* fiskaly: 1 MB, larger gets 413 */
#define SANDBOX_MAX_DELAY_MS 600000L

typedef struct sandbox_options {
    unsigned port;
    long token_ttl;
    long tss_limit;             /* -1: the Lua default (5, as fiskaly TEST) */
    long tss_create_delay_ms;   /* extra delay of PUT /api/v2/tss/{id} */
    const char *seed;           /* NULL: random ids and secrets */
    int die_with_parent;
    int verbose;
    int tls;                    /* serve HTTPS */
    const char *ca_file;        /* where to write the CA PEM (NULL: a temporary file) */
} sandbox_options;

/* The PEMs of --tls, copied out of Lua (owned here; the key is wiped on free). */
typedef struct sandbox_tls {
    char *ca_pem;
    char *cert_pem;
    char *key_pem;
    size_t key_len;
    char ca_path[4096];         /* the file the CA was written to */
    int ca_path_temporary;      /* created by us: removed at exit */
} sandbox_tls;

typedef struct sandbox_server {
    pthread_mutex_t lock;       /* guards L */
    lua_State *L;
    int handler_ref;            /* registry ref of the Lua handler function */
    int verbose;
    pthread_mutex_t stop_lock;  /* guards stopping; delays wait on stop_cond */
    pthread_cond_t stop_cond;
    int stopping;
} sandbox_server;

/* One key/value pair borrowed from libmicrohttpd (valid while the request lives). */
typedef struct kv_pair {
    const char *key;
    const char *value;
} kv_pair;

typedef struct kv_list {
    kv_pair *items;
    size_t n, cap;
    int failed;                 /* allocation failed while collecting */
} kv_list;

/* Per-connection request state, owned by libmicrohttpd's con_cls slot. */
typedef struct sandbox_request {
    char *body;
    size_t len, cap;
    int too_large;
    long long received_ms;      /* wall clock (ms since the epoch) when the headers arrived */
} sandbox_request;

/* A key/value pair this program allocated. */
typedef struct owned_pair {
    char *key;
    char *value;
} owned_pair;

/* What the Lua handler answered, copied out of the Lua state (owned here). */
typedef struct sandbox_response {
    unsigned status;
    char *body;
    size_t body_len;
    owned_pair *headers;
    size_t n_headers;
    long delay_ms;
    int drop;                   /* 1: close without an answer, 2: after the headers */
} sandbox_response;

/* Everything the protected Lua call needs. */
typedef struct sandbox_exchange {
    sandbox_server *srv;
    const char *method;
    const char *path;
    const char *body;
    size_t body_len;
    int too_large;              /* the body was over SANDBOX_MAX_BODY and dropped */
    long long received_ms;
    kv_list *headers;
    kv_list *query;
    sandbox_response *resp;
} sandbox_exchange;

/* ------------------------------------------------------------------ utils */

static long long wall_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static char *dup_mem(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        if (n)
            memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static void response_free(sandbox_response *r)
{
    free(r->body);
    for (size_t i = 0; i < r->n_headers; i++) {
        free(r->headers[i].key);
        free(r->headers[i].value);
    }
    free(r->headers);
    memset(r, 0, sizeof *r);
}

static void kv_list_free(kv_list *l)
{
    free(l->items);
    memset(l, 0, sizeof *l);
}

static enum MHD_Result collect_kv(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    kv_list *l = cls;
    (void)kind;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        kv_pair *items = realloc(l->items, cap * sizeof *items);
        if (!items) {
            l->failed = 1;
            return MHD_NO;
        }
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n].key = key;
    l->items[l->n].value = value ? value : "";
    l->n++;
    return MHD_YES;
}

/* Waits ms milliseconds, or less when the server is stopping. */
static void server_sleep(sandbox_server *srv, long ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&srv->stop_lock);
    while (!srv->stopping &&
           pthread_cond_timedwait(&srv->stop_cond, &srv->stop_lock, &until) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&srv->stop_lock);
}

/* ------------------------------------------------------------ Lua bridge */

/* Copies a string field of the table at idx, or NULL when absent. */
static int copy_string_field(lua_State *L, int idx, const char *name, char **out, size_t *len)
{
    size_t n;
    const char *s;
    *out = NULL;
    if (len)
        *len = 0;
    lua_getfield(L, idx, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 1;
    }
    s = lua_tolstring(L, -1, &n);
    if (!s)
        return luaL_error(L, "response.%s: expected a string", name);
    *out = dup_mem(s, n);
    lua_pop(L, 1);
    if (!*out)
        return luaL_error(L, "out of memory");
    if (len)
        *len = n;
    return 1;
}

/* Runs under lua_pcall: builds the request table, calls the handler and copies
 * the response into ex->resp.  May raise; the caller frees ex->resp either way. */
static int exchange_call(lua_State *L)
{
    sandbox_exchange *ex = lua_touserdata(L, 1);
    sandbox_response *resp = ex->resp;
    int t;

    lua_rawgeti(L, LUA_REGISTRYINDEX, ex->srv->handler_ref);
    lua_createtable(L, 0, 7);
    lua_pushstring(L, ex->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, ex->path);
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, ex->body ? ex->body : "", ex->body_len);
    lua_setfield(L, -2, "body");
    if (ex->too_large) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "body_too_large");
    }
    lua_pushinteger(L, (lua_Integer)ex->received_ms);
    lua_setfield(L, -2, "received_ms");
    lua_pushinteger(L, (lua_Integer)wall_ms());     /* under the lock: handled now */
    lua_setfield(L, -2, "handled_ms");

    lua_createtable(L, 0, (int)ex->headers->n);
    for (size_t i = 0; i < ex->headers->n; i++) {
        luaL_Buffer b;
        const char *k = ex->headers->items[i].key;
        luaL_buffinit(L, &b);
        for (; *k; k++) {
            char c = *k;
            luaL_addchar(&b, (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c);
        }
        luaL_pushresult(&b);
        lua_pushstring(L, ex->headers->items[i].value);
        lua_settable(L, -3);
    }
    lua_setfield(L, -2, "headers");

    lua_createtable(L, 0, (int)ex->query->n);
    lua_createtable(L, (int)ex->query->n, 0);
    for (size_t i = 0; i < ex->query->n; i++) {
        lua_pushstring(L, ex->query->items[i].key);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {                     /* first value wins in `query` */
            lua_pushstring(L, ex->query->items[i].value);
            lua_setfield(L, -4, ex->query->items[i].key);
        }
        lua_pop(L, 1);
        lua_createtable(L, 2, 0);
        lua_pushstring(L, ex->query->items[i].key);
        lua_rawseti(L, -2, 1);
        lua_pushstring(L, ex->query->items[i].value);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -3, "query_list");
    lua_setfield(L, -2, "query");

    lua_call(L, 1, 1);
    t = lua_gettop(L);
    if (!lua_istable(L, t))
        return luaL_error(L, "handler returned %s, expected a table", luaL_typename(L, t));

    lua_getfield(L, t, "drop");
    if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "truncate") == 0)
        resp->drop = 2;
    else
        resp->drop = lua_toboolean(L, -1);
    lua_pop(L, 1);

    lua_getfield(L, t, "status");
    if (!(resp->drop && lua_isnil(L, -1))) {        /* a dropped answer needs none */
        int isnum;
        lua_Integer st = lua_tointegerx(L, -1, &isnum);
        if (!isnum || st < 100 || st > 599)
            return luaL_error(L, "response.status: expected an integer in 100..599");
        resp->status = (unsigned)st;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "delay_ms");
    if (!lua_isnil(L, -1)) {
        int isnum;
        lua_Integer d = lua_tointegerx(L, -1, &isnum);
        if (!isnum || d < 0 || d > SANDBOX_MAX_DELAY_MS)
            return luaL_error(L, "response.delay_ms: expected an integer in 0..%d",
                              (int)SANDBOX_MAX_DELAY_MS);
        resp->delay_ms = (long)d;
    }
    lua_pop(L, 1);

    copy_string_field(L, t, "body", &resp->body, &resp->body_len);

    lua_getfield(L, t, "headers");
    if (lua_istable(L, -1)) {
        size_t cap = 0;
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            const char *k, *v;
            size_t kl, vl;
            if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
                return luaL_error(L, "response.headers: expected string names and values");
            if (resp->n_headers == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                owned_pair *h = realloc(resp->headers, ncap * sizeof *h);
                if (!h)
                    return luaL_error(L, "out of memory");
                resp->headers = h;
                cap = ncap;
            }
            k = lua_tolstring(L, -2, &kl);
            v = lua_tolstring(L, -1, &vl);
            resp->headers[resp->n_headers].key = dup_mem(k, kl);
            resp->headers[resp->n_headers].value = dup_mem(v, vl);
            resp->n_headers++;
            if (!resp->headers[resp->n_headers - 1].key || !resp->headers[resp->n_headers - 1].value)
                return luaL_error(L, "out of memory");
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return 0;
}

/* Calls the handler; on any failure fills resp with a fiskaly-style 500. */
static void server_dispatch(sandbox_exchange *ex)
{
    sandbox_server *srv = ex->srv;
    lua_State *L;
    int rc;

    pthread_mutex_lock(&srv->lock);
    L = srv->L;
    lua_pushcfunction(L, exchange_call);
    lua_pushlightuserdata(L, ex);
    rc = lua_pcall(L, 1, 0, 0);
    if (rc != LUA_OK) {
        if (srv->verbose) {
            const char *m = lua_tostring(L, -1);
            fprintf(stderr, "fiskaly-sandbox: handler error: %s\n", m ? m : "(not a string)");
        }
        lua_pop(L, 1);
    }
    lua_settop(L, 0);
    pthread_mutex_unlock(&srv->lock);

    if (rc != LUA_OK) {
        static const char err500[] =
            "{\"status_code\":500,\"error\":\"Internal Server Error\","
            "\"code\":\"E_INTERNAL\",\"message\":\"sandbox handler failed\"}";
        response_free(ex->resp);
        ex->resp->status = 500;
        ex->resp->body = dup_mem(err500, sizeof err500 - 1);
        ex->resp->body_len = ex->resp->body ? sizeof err500 - 1 : 0;
    }
}

/* --------------------------------------------------------- libmicrohttpd */

/* The body of a truncated answer: none; MHD closes the connection after the headers. */
static ssize_t truncate_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    (void)pos;
    (void)buf;
    (void)max;
    return MHD_CONTENT_READER_END_WITH_ERROR;
}

/*
 * Adds resp's headers to r (NULL: MHD could not create it) and queues it with
 * resp's status. Frees resp and r either way.
 */
static enum MHD_Result queue_response(struct MHD_Connection *conn, sandbox_response *resp,
                                      struct MHD_Response *r)
{
    enum MHD_Result ret = MHD_NO;
    if (r != NULL) {
        for (size_t i = 0; i < resp->n_headers; i++)
            MHD_add_response_header(r, resp->headers[i].key, resp->headers[i].value);
        ret = MHD_queue_response(conn, resp->status, r);
        MHD_destroy_response(r);
    }
    response_free(resp);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    sandbox_server *srv = cls;
    sandbox_request *req = *con_cls;
    sandbox_response resp;
    sandbox_exchange ex;
    kv_list headers, query;
    struct MHD_Response *r;
    (void)version;

    if (!req) {                                      /* first call: headers only */
        req = calloc(1, sizeof *req);
        if (!req)
            return MHD_NO;
        req->received_ms = wall_ms();
        *con_cls = req;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {                     /* a body chunk */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->too_large || req->len + n > SANDBOX_MAX_BODY) {
            req->too_large = 1;
            return MHD_YES;
        }
        if (req->len + n + 1 > req->cap) {
            size_t cap = req->cap ? req->cap : 4096;
            char *b;
            while (cap < req->len + n + 1)
                cap *= 2;
            b = realloc(req->body, cap);
            if (!b)
                return MHD_NO;
            req->body = b;
            req->cap = cap;
        }
        memcpy(req->body + req->len, upload_data, n);
        req->len += n;
        return MHD_YES;
    }

    memset(&resp, 0, sizeof resp);
    memset(&headers, 0, sizeof headers);
    memset(&query, 0, sizeof query);
    MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_kv, &headers);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_kv, &query);
    if (headers.failed || query.failed) {
        kv_list_free(&headers);
        kv_list_free(&query);
        return MHD_NO;
    }
    ex.srv = srv;
    ex.method = method;
    ex.path = url;
    ex.body = req->too_large ? NULL : req->body;
    ex.body_len = req->too_large ? 0 : req->len;
    ex.too_large = req->too_large;
    ex.received_ms = req->received_ms;
    ex.headers = &headers;
    ex.query = &query;
    ex.resp = &resp;
    server_dispatch(&ex);
    kv_list_free(&headers);
    kv_list_free(&query);

    if (srv->verbose) {
        if (resp.drop && resp.status == 0)
            fprintf(stderr, "fiskaly-sandbox: %s %s -> dropped before handling%s\n", method, url,
                    resp.delay_ms ? " (delayed)" : "");
        else
            fprintf(stderr, "fiskaly-sandbox: %s %s -> %u%s%s\n", method, url, resp.status,
                    resp.delay_ms ? " (delayed)" : "",
                    resp.drop == 2 ? " (truncated)" : resp.drop ? " (dropped)" : "");
    }
    if (resp.delay_ms > 0)
        server_sleep(srv, resp.delay_ms);            /* outside the Lua lock */
    if (resp.drop == 2) {                            /* headers, then close */
        r = MHD_create_response_from_callback(resp.body_len > 0 ? resp.body_len : 1, 4096,
                                              truncate_reader, NULL, NULL);
        return queue_response(conn, &resp, r);
    }
    if (resp.drop) {                                 /* close without an answer */
        response_free(&resp);
        return MHD_NO;
    }
    r = MHD_create_response_from_buffer(resp.body_len, resp.body ? resp.body : (char *)"",
                                        MHD_RESPMEM_MUST_COPY);
    return queue_response(conn, &resp, r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    sandbox_request *req = *con_cls;
    (void)cls;
    (void)conn;
    (void)toe;
    if (req) {
        free(req->body);
        free(req);
        *con_cls = NULL;
    }
}

/* ------------------------------------------------------------- Lua setup */

/* Runs under lua_pcall: package.path, fiskaly.core preload, server.lua. */
static int setup_lua(lua_State *L)
{
    const sandbox_options *o = lua_touserdata(L, 1);
    luaL_openlibs(L);

    lua_getglobal(L, "package");
    /* fiskaly.* from lua/, sandbox.* (server modules) from the source tree. */
    lua_pushliteral(L, FISKALY_LUA_DIR "/?.lua;" FISKALY_LUA_DIR "/?/init.lua;"
                       FISKALY_SANDBOX_LUA_DIR "/../?.lua");
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_fiskaly_core);
    lua_setfield(L, -2, "fiskaly.core");
    lua_pop(L, 2);

    if (luaL_loadfile(L, FISKALY_SANDBOX_LUA_DIR "/server.lua") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 1);                               /* the server module */
    lua_getfield(L, -1, "new");
    if (!lua_isfunction(L, -1))
        return luaL_error(L, "server.lua: expected a module with new(opts)");
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, o->token_ttl);
    lua_setfield(L, -2, "token_ttl");
    if (o->seed) {
        lua_pushstring(L, o->seed);
        lua_setfield(L, -2, "seed");
    }
    lua_pushboolean(L, o->verbose);
    lua_setfield(L, -2, "verbose");
    if (o->tss_limit >= 0) {
        lua_pushinteger(L, o->tss_limit);
        lua_setfield(L, -2, "tss_limit");
    }
    if (o->tss_create_delay_ms > 0) {
        lua_pushinteger(L, o->tss_create_delay_ms);
        lua_setfield(L, -2, "tss_create_delay_ms");
    }
    lua_call(L, 1, 2);                               /* handler, credentials */
    if (!lua_isfunction(L, -2) || !lua_istable(L, -1))
        return luaL_error(L, "server.new: expected a handler function and a credentials table");
    if (!o->tls) {
        lua_pushnil(L);
        return 3;
    }
    if (luaL_loadfile(L, FISKALY_SANDBOX_LUA_DIR "/tls.lua") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 1);                               /* the tls module */
    lua_getfield(L, -1, "generate");
    lua_remove(L, -2);
    lua_call(L, 0, 1);                               /* { ca_pem, cert_pem, key_pem } */
    if (!lua_istable(L, -1))
        return luaL_error(L, "tls.generate: expected a table");
    return 3;
}

/* Copies the PEMs of the table at idx into t (under pcall: may raise). */
static int copy_tls(lua_State *L)
{
    sandbox_tls *t = lua_touserdata(L, 1);
    size_t n;
    copy_string_field(L, 2, "ca_pem", &t->ca_pem, NULL);
    copy_string_field(L, 2, "cert_pem", &t->cert_pem, NULL);
    copy_string_field(L, 2, "key_pem", &t->key_pem, &n);
    t->key_len = n;
    if (!t->ca_pem || !t->cert_pem || !t->key_pem)
        return luaL_error(L, "tls.generate: missing ca_pem, cert_pem or key_pem");
    return 0;
}

static void tls_free(sandbox_tls *t)
{
    if (t->key_pem)
        OPENSSL_cleanse(t->key_pem, t->key_len);
    free(t->key_pem);
    free(t->cert_pem);
    free(t->ca_pem);
    t->key_pem = t->cert_pem = t->ca_pem = NULL;
    if (t->ca_path_temporary && t->ca_path[0])
        unlink(t->ca_path);
    t->ca_path_temporary = 0;
}

/* Writes the CA PEM to o->ca_file, or to a new $TMPDIR/fiskaly-sandbox-ca-XXXXXX.pem. */
static int write_ca_file(sandbox_tls *t, const char *path)
{
    size_t len = strlen(t->ca_pem), off = 0;
    int fd;
    if (path) {
        if (strlen(path) >= sizeof t->ca_path) {
            fprintf(stderr, "fiskaly-sandbox: --ca-file path too long\n");
            return 0;
        }
        strcpy(t->ca_path, path);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    } else {
        const char *dir = getenv("TMPDIR");
        int n;
        if (!dir || !*dir)
            dir = "/tmp";
        n = snprintf(t->ca_path, sizeof t->ca_path, "%s/fiskaly-sandbox-ca-XXXXXX.pem", dir);
        if (n < 0 || (size_t)n >= sizeof t->ca_path) {
            fprintf(stderr, "fiskaly-sandbox: TMPDIR too long\n");
            return 0;
        }
        fd = mkstemps(t->ca_path, 4);
        if (fd >= 0) {
            t->ca_path_temporary = 1;
            if (fchmod(fd, 0644) != 0) {             /* a certificate is public */
                close(fd);
                fd = -1;
            }
        }
    }
    if (fd < 0) {
        fprintf(stderr, "fiskaly-sandbox: cannot create %s: %s\n", t->ca_path, strerror(errno));
        return 0;
    }
    while (off < len) {
        ssize_t w = write(fd, t->ca_pem + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "fiskaly-sandbox: cannot write %s: %s\n", t->ca_path, strerror(errno));
            close(fd);
            return 0;
        }
        off += (size_t)w;
    }
    if (close(fd) != 0) {
        fprintf(stderr, "fiskaly-sandbox: cannot write %s: %s\n", t->ca_path, strerror(errno));
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
    fputs("usage: fiskaly-sandbox [options]\n"
          "\n"
          "Offline emulator of the fiskaly Management API v0 (/api/v0) and SIGN DE API v2\n"
          "(/api/v2) on 127.0.0.1.  Prints FISKALY_BASE_URL, FISKALY_API_KEY,\n"
          "FISKALY_API_SECRET, FISKALY_ORGANIZATION_ID and FISKALY_SANDBOX_PID on stdout.\n"
          "\n"
          "  --port N            TCP port (default 0: a free port)\n"
          "  --token-ttl SECONDS access token lifetime (default 86400)\n"
          "  --seed N            deterministic ids and secrets (same seed, same account)\n"
          "  --tss-limit N       TSS per organization in CREATED/UNINITIALIZED/INITIALIZED\n"
          "                      (default 5 as in fiskaly TEST; 0: no limit)\n"
          "  --tss-create-delay-ms N  answer PUT /api/v2/tss/{id} N ms late (slow TSS creation)\n"
          "  --tls               serve HTTPS with a CA and server certificate made at start;\n"
          "                      prints FISKALY_CA_FILE (the CA PEM to trust)\n"
          "  --ca-file PATH      with --tls: write the CA there (default: a temporary file,\n"
          "                      removed at exit)\n"
          "  --die-with-parent   exit when the parent process exits\n"
          "  --verbose           log requests to stderr\n"
          "  --help              this text\n", f);
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

static int parse_options(int argc, char **argv, sandbox_options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long v;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--die-with-parent") == 0) {
            o->die_with_parent = 1;
        } else if (strcmp(a, "--verbose") == 0) {
            o->verbose = 1;
        } else if (strcmp(a, "--tls") == 0) {
            o->tls = 1;
        } else if (strcmp(a, "--ca-file") == 0 && i + 1 < argc) {
            o->ca_file = argv[++i];
        } else if (strcmp(a, "--port") == 0 && i + 1 < argc) {
            if (!parse_long(argv[++i], 0, 65535, &v)) {
                fprintf(stderr, "fiskaly-sandbox: bad --port %s\n", argv[i]);
                return 0;
            }
            o->port = (unsigned)v;
        } else if (strcmp(a, "--token-ttl") == 0 && i + 1 < argc) {
            if (!parse_long(argv[++i], 1, 100L * 365 * 86400, &v)) {
                fprintf(stderr, "fiskaly-sandbox: bad --token-ttl %s\n", argv[i]);
                return 0;
            }
            o->token_ttl = v;
        } else if (strcmp(a, "--tss-limit") == 0 && i + 1 < argc) {
            if (!parse_long(argv[++i], 0, 1000000, &v)) {
                fprintf(stderr, "fiskaly-sandbox: bad --tss-limit %s\n", argv[i]);
                return 0;
            }
            o->tss_limit = v;
        } else if (strcmp(a, "--tss-create-delay-ms") == 0 && i + 1 < argc) {
            if (!parse_long(argv[++i], 0, SANDBOX_MAX_DELAY_MS, &v)) {
                fprintf(stderr, "fiskaly-sandbox: bad --tss-create-delay-ms %s\n", argv[i]);
                return 0;
            }
            o->tss_create_delay_ms = v;
        } else if (strcmp(a, "--seed") == 0 && i + 1 < argc) {
            if (!parse_long(argv[++i], LONG_MIN, LONG_MAX, &v)) {
                fprintf(stderr, "fiskaly-sandbox: bad --seed %s\n", argv[i]);
                return 0;
            }
            o->seed = argv[i];
        } else {
            fprintf(stderr, "fiskaly-sandbox: unknown option %s (see --help)\n", a);
            return 0;
        }
    }
    if (o->ca_file && !o->tls) {
        fprintf(stderr, "fiskaly-sandbox: --ca-file needs --tls\n");
        return 0;
    }
    return 1;
}

static const char *cred(lua_State *L, int idx, const char *name)
{
    const char *s;
    lua_getfield(L, idx, name);
    s = lua_tostring(L, -1);                         /* stays referenced by the table */
    lua_pop(L, 1);
    return s ? s : "";
}

int main(int argc, char **argv)
{
    sandbox_options opt = { 0, 86400, -1, 0, NULL, 0, 0, 0, NULL };
    sandbox_tls tls;
    struct MHD_OptionItem tls_opts[3];
    pthread_condattr_t cattr;
    sandbox_server srv;
    struct MHD_Daemon *d;
    const union MHD_DaemonInfo *info;
    struct sockaddr_in addr;
    sigset_t sigs;
    int sig = 0, creds_ref, creds;

    if (!parse_options(argc, argv, &opt))
        return 2;
    if (opt.die_with_parent) {
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) {
            perror("fiskaly-sandbox: prctl");
            return 1;
        }
        if (getppid() == 1)                          /* parent already gone */
            return 0;
    }

    /* Block the stop signals in every thread; main waits for them with sigwait. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    memset(&srv, 0, sizeof srv);
    memset(&tls, 0, sizeof tls);
    srv.verbose = opt.verbose;
    pthread_mutex_init(&srv.stop_lock, NULL);
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
    pthread_cond_init(&srv.stop_cond, &cattr);
    pthread_condattr_destroy(&cattr);
    srv.L = luaL_newstate();
    if (!srv.L) {
        fputs("fiskaly-sandbox: cannot create a Lua state\n", stderr);
        pthread_cond_destroy(&srv.stop_cond);
        pthread_mutex_destroy(&srv.stop_lock);
        return 1;
    }
    lua_pushcfunction(srv.L, setup_lua);
    lua_pushlightuserdata(srv.L, &opt);
    if (lua_pcall(srv.L, 1, 3, 0) != LUA_OK) {
        const char *m = lua_tostring(srv.L, -1);
        fprintf(stderr, "fiskaly-sandbox: %s\n", m ? m : "start-up failed");
        lua_close(srv.L);
        pthread_cond_destroy(&srv.stop_cond);
        pthread_mutex_destroy(&srv.stop_lock);
        return 1;
    }
    if (opt.tls) {                                   /* copy the PEMs out, then drop them */
        int rc;
        lua_pushcfunction(srv.L, copy_tls);
        lua_pushlightuserdata(srv.L, &tls);
        lua_pushvalue(srv.L, -3);
        rc = lua_pcall(srv.L, 2, 0, 0);
        if (rc != LUA_OK || !write_ca_file(&tls, opt.ca_file)) {
            if (rc != LUA_OK) {
                const char *m = lua_tostring(srv.L, -1);
                fprintf(stderr, "fiskaly-sandbox: %s\n", m ? m : "tls set-up failed");
            }
            tls_free(&tls);
            lua_close(srv.L);
            pthread_cond_destroy(&srv.stop_cond);
            pthread_mutex_destroy(&srv.stop_lock);
            return 1;
        }
    }
    lua_pop(srv.L, 1);
    lua_gc(srv.L, LUA_GCCOLLECT);                    /* the key PEM string goes now */
    /* Both results go to the registry: request threads reset the stack. */
    creds_ref = luaL_ref(srv.L, LUA_REGISTRYINDEX);
    srv.handler_ref = luaL_ref(srv.L, LUA_REGISTRYINDEX);
    pthread_mutex_init(&srv.lock, NULL);

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt.port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    tls_opts[0].option = MHD_OPTION_HTTPS_MEM_KEY;
    tls_opts[0].value = 0;
    tls_opts[0].ptr_value = tls.key_pem;
    tls_opts[1].option = MHD_OPTION_HTTPS_MEM_CERT;
    tls_opts[1].value = 0;
    tls_opts[1].ptr_value = tls.cert_pem;
    tls_opts[2].option = MHD_OPTION_END;
    tls_opts[2].value = 0;
    tls_opts[2].ptr_value = NULL;
    if (opt.tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        fputs("fiskaly-sandbox: --tls: this libmicrohttpd has no TLS support\n", stderr);
        d = NULL;
    } else {
        d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD
                             | (opt.tls ? MHD_USE_TLS : 0),
                         (uint16_t)opt.port, NULL, NULL, on_request, &srv,
                         MHD_OPTION_ARRAY, opt.tls ? tls_opts : &tls_opts[2],
                         MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, (void *)NULL,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)120,
                         MHD_OPTION_END);
    }
    if (!d) {
        fprintf(stderr, "fiskaly-sandbox: cannot listen on 127.0.0.1:%u\n", opt.port);
        tls_free(&tls);
        pthread_mutex_destroy(&srv.lock);
        pthread_cond_destroy(&srv.stop_cond);
        pthread_mutex_destroy(&srv.stop_lock);
        lua_close(srv.L);
        return 1;
    }
    info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);

    pthread_mutex_lock(&srv.lock);
    lua_rawgeti(srv.L, LUA_REGISTRYINDEX, creds_ref);
    creds = lua_gettop(srv.L);
    printf("FISKALY_BASE_URL=%s://127.0.0.1:%u\n", opt.tls ? "https" : "http",
           info ? (unsigned)info->port : opt.port);
    printf("FISKALY_API_KEY=%s\n", cred(srv.L, creds, "api_key"));
    printf("FISKALY_API_SECRET=%s\n", cred(srv.L, creds, "api_secret"));
    printf("FISKALY_ORGANIZATION_ID=%s\n", cred(srv.L, creds, "organization_id"));
    if (opt.tls)
        printf("FISKALY_CA_FILE=%s\n", tls.ca_path);
    printf("FISKALY_SANDBOX_PID=%ld\n", (long)getpid());
    fflush(stdout);
    lua_settop(srv.L, 0);
    luaL_unref(srv.L, LUA_REGISTRYINDEX, creds_ref);
    pthread_mutex_unlock(&srv.lock);

    while (sigwait(&sigs, &sig) != 0)
        ;
    if (opt.verbose)
        fprintf(stderr, "fiskaly-sandbox: signal %d, stopping\n", sig);

    /* Wake delayed responses, then stop (MHD joins the connection threads). */
    pthread_mutex_lock(&srv.stop_lock);
    srv.stopping = 1;
    pthread_cond_broadcast(&srv.stop_cond);
    pthread_mutex_unlock(&srv.stop_lock);
    MHD_stop_daemon(d);
    tls_free(&tls);
    pthread_mutex_destroy(&srv.lock);
    pthread_cond_destroy(&srv.stop_cond);
    pthread_mutex_destroy(&srv.stop_lock);
    lua_close(srv.L);
    return 0;
}
