/*
 * http.c -- fiskaly.core.http: an HTTP session over libcurl.
 *
 *   local s = core.http.session{ ca_file =, timeout_ms =, connect_timeout_ms =, user_agent = }
 *   local res, err = s:request{ method =, url =, headers = {}, body =, timeout_ms =, fresh_connect = }
 *   local h = s:submit{ ... }; local finished = s:step(timeout_ms); h:result()
 *
 * Design (so a non-blocking driver can be added without a rewrite):
 *
 * - A Session (fiskaly.http.Session) owns one CURLM multi handle and a small
 *   pool of idle easy handles.  Every transfer runs on the multi, so all
 *   connections live in the multi's connection cache and are kept alive and
 *   reused across requests (and across easy handles).
 * - A Transfer (fiskaly.http.Transfer, internal) owns everything one request
 *   needs while in flight: its easy handle, its header list, its response
 *   buffers.  It is a userdata created before any of those resources, so a
 *   Lua error at any point frees them through __gc.  While attached to a
 *   session it is linked into the session's list; closing the session
 *   detaches every transfer first.
 * - session:request drives the multi (curl_multi_perform/curl_multi_poll)
 *   until its own transfer is done.
 * - session:submit(req) starts a transfer and returns it as a Request
 *   (fiskaly.http.Request, same struct with two user values: its Session and,
 *   once finished, its result); session:step(timeout_ms) drives the same
 *   multi for at most timeout_ms and returns the Requests that finished.
 *   http.wait polls the sockets of several sessions at once.  Submitted
 *   transfers progress during a blocking :request too; step reports them.
 *
 * libcurl callbacks never call Lua: the write and header callbacks append to
 * malloc'd buffers owned by the transfer and report out-of-memory (or an
 * oversized response) by returning 0, which aborts the transfer; the error is
 * turned into nil, err after the transfer ends.
 *
 * TLS peer and host verification are always on; there is no option to turn
 * them off.  Only http and https are allowed, redirects are not followed,
 * and signals are never used (CURLOPT_NOSIGNAL).
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <poll.h>
#include <sys/select.h>
#include <time.h>

#include <curl/curl.h>

#define HTTP_SESSION_MT  "fiskaly.http.Session"
#define HTTP_TRANSFER_MT "fiskaly.http.Transfer"
#define HTTP_REQUEST_MT  "fiskaly.http.Request"

#define HTTP_POOL_MAX            16
#define HTTP_DEFAULT_TIMEOUT_MS  30000L
#define HTTP_DEFAULT_CONNECT_MS  5000L
#define HTTP_DEFAULT_MAX_BODY    ((size_t)256 * 1024 * 1024)
#define HTTP_MAX_HEADER_BYTES    ((size_t)256 * 1024)
#define HTTP_POLL_MS             1000

typedef struct http_session http_session;
typedef struct http_transfer http_transfer;

typedef struct http_buf {
    char *data;
    size_t len, cap;
} http_buf;

struct http_session {
    CURLM *multi;
    CURL *pool[HTTP_POOL_MAX];      /* idle easy handles, reset */
    int npool;
    http_transfer *active;          /* transfers attached to multi */
    char *ca_file;                  /* owned (strdup) or NULL */
    char *user_agent;               /* owned (strdup) */
    long timeout_ms, connect_timeout_ms;
    size_t max_body;
    int global_init;                /* 1 when this session holds a curl_global_init reference */
    int closed;
};

struct http_transfer {
    http_session *session;          /* non-NULL while attached to session->multi */
    CURL *easy;                     /* owned until handed back to the pool */
    struct curl_slist *headers;     /* owned */
    http_buf body;                  /* response body */
    http_buf head;                  /* raw header lines of the last response */
    size_t max_body;
    int oom;                        /* a callback ran out of memory */
    int too_large;                  /* body exceeded max_body or headers too big */
    int done;
    int async;                      /* a Request made by session:submit */
    int reported;                   /* its result is stored in uservalue 2 */
    CURLcode result;
    http_transfer *prev, *next;
    char errbuf[CURL_ERROR_SIZE];
};

/* ------------------------------------------------------------------ global init */

/*
 * libcurl >= 7.84 built thread-safe (CURL_VERSION_THREADSAFE) makes
 * curl_global_init/cleanup reference counted and thread-safe, so each
 * session takes one reference and gives it back on close: no state of ours.
 * Older or non-threadsafe builds fall back to one pthread_once'd init that is
 * never undone (the only process-wide state in this file, written once).
 */
static pthread_once_t http_init_once = PTHREAD_ONCE_INIT;
static CURLcode http_init_once_result = CURLE_OK;

static void http_init_once_fn(void)
{
    http_init_once_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int http_threadsafe(void)
{
#ifdef CURL_VERSION_THREADSAFE
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    return v != NULL && (v->features & CURL_VERSION_THREADSAFE) != 0;
#else
    return 0;
#endif
}

/* Returns CURLE_OK and sets *ref when the caller must call curl_global_cleanup later. */
static CURLcode http_global_acquire(int *ref)
{
    *ref = 0;
    if (http_threadsafe()) {
        CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        if (rc == CURLE_OK)
            *ref = 1;
        return rc;
    }
    pthread_once(&http_init_once, http_init_once_fn);
    return http_init_once_result;
}

/* ------------------------------------------------------------------ clock */

static lua_Integer http_monotonic_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (lua_Integer)ts.tv_sec * 1000 + (lua_Integer)(ts.tv_nsec / 1000000);
}

/* ------------------------------------------------------------------ errors */

#define HTTP_CODE(x) case CURLE_##x: return #x;
static const char *http_code_name(CURLcode rc)
{
    switch (rc) {
    HTTP_CODE(OK)
    HTTP_CODE(UNSUPPORTED_PROTOCOL)
    HTTP_CODE(FAILED_INIT)
    HTTP_CODE(URL_MALFORMAT)
    HTTP_CODE(NOT_BUILT_IN)
    HTTP_CODE(COULDNT_RESOLVE_PROXY)
    HTTP_CODE(COULDNT_RESOLVE_HOST)
    HTTP_CODE(COULDNT_CONNECT)
    HTTP_CODE(WEIRD_SERVER_REPLY)
    HTTP_CODE(REMOTE_ACCESS_DENIED)
    HTTP_CODE(HTTP2)
    HTTP_CODE(PARTIAL_FILE)
    HTTP_CODE(QUOTE_ERROR)
    HTTP_CODE(HTTP_RETURNED_ERROR)
    HTTP_CODE(WRITE_ERROR)
    HTTP_CODE(UPLOAD_FAILED)
    HTTP_CODE(READ_ERROR)
    HTTP_CODE(OUT_OF_MEMORY)
    HTTP_CODE(OPERATION_TIMEDOUT)
    HTTP_CODE(RANGE_ERROR)
    HTTP_CODE(HTTP_POST_ERROR)
    HTTP_CODE(SSL_CONNECT_ERROR)
    HTTP_CODE(BAD_DOWNLOAD_RESUME)
    HTTP_CODE(FUNCTION_NOT_FOUND)
    HTTP_CODE(ABORTED_BY_CALLBACK)
    HTTP_CODE(BAD_FUNCTION_ARGUMENT)
    HTTP_CODE(INTERFACE_FAILED)
    HTTP_CODE(TOO_MANY_REDIRECTS)
    HTTP_CODE(UNKNOWN_OPTION)
    HTTP_CODE(GOT_NOTHING)
    HTTP_CODE(SSL_ENGINE_NOTFOUND)
    HTTP_CODE(SSL_ENGINE_SETFAILED)
    HTTP_CODE(SEND_ERROR)
    HTTP_CODE(RECV_ERROR)
    HTTP_CODE(SSL_CERTPROBLEM)
    HTTP_CODE(SSL_CIPHER)
    HTTP_CODE(PEER_FAILED_VERIFICATION)
    HTTP_CODE(BAD_CONTENT_ENCODING)
    HTTP_CODE(FILESIZE_EXCEEDED)
    HTTP_CODE(USE_SSL_FAILED)
    HTTP_CODE(SEND_FAIL_REWIND)
    HTTP_CODE(SSL_ENGINE_INITFAILED)
    HTTP_CODE(LOGIN_DENIED)
    HTTP_CODE(SSL_CACERT_BADFILE)
    HTTP_CODE(SSL_SHUTDOWN_FAILED)
    HTTP_CODE(AGAIN)
    HTTP_CODE(SSL_CRL_BADFILE)
    HTTP_CODE(SSL_ISSUER_ERROR)
    HTTP_CODE(CHUNK_FAILED)
    HTTP_CODE(NO_CONNECTION_AVAILABLE)
    HTTP_CODE(SSL_PINNEDPUBKEYNOTMATCH)
    HTTP_CODE(SSL_INVALIDCERTSTATUS)
    HTTP_CODE(HTTP2_STREAM)
    HTTP_CODE(RECURSIVE_API_CALL)
    HTTP_CODE(PROXY)
    HTTP_CODE(SSL_CLIENTCERT)
    HTTP_CODE(UNRECOVERABLE_POLL)
    default: return "UNKNOWN";
    }
}
#undef HTTP_CODE

static const char *http_code_kind(CURLcode rc)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    default:
        return "network";
    }
}

/* Pushes nil, { kind =, code =, message = }; returns 2. */
static int http_push_error(lua_State *L, const char *kind, const char *code, const char *message)
{
    lua_pushnil(L);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
    return 2;
}

static int http_push_curl_error(lua_State *L, CURLcode rc, const char *errbuf)
{
    const char *msg = (errbuf != NULL && errbuf[0] != '\0') ? errbuf : curl_easy_strerror(rc);
    return http_push_error(L, http_code_kind(rc), http_code_name(rc), msg);
}

/* ------------------------------------------------------------------ buffers */

/* Appends n bytes; returns 0 on success, -1 when out of memory. Never raises. */
static int http_buf_append(http_buf *b, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    if (n > SIZE_MAX - b->len)
        return -1;
    if (b->len + n > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 1024;
        while (cap < b->len + n) {
            if (cap > SIZE_MAX / 2)
                return -1;
            cap *= 2;
        }
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void http_buf_free(http_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ callbacks (never raise) */

static size_t http_write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    http_transfer *t = ud;
    size_t n = size * nmemb;
    if (n > t->max_body || t->body.len > t->max_body - n) {
        t->too_large = 1;
        return 0;
    }
    if (http_buf_append(&t->body, ptr, n) != 0) {
        t->oom = 1;
        return 0;
    }
    return n;
}

static size_t http_header_cb(char *ptr, size_t size, size_t nitems, void *ud)
{
    http_transfer *t = ud;
    size_t n = size * nitems;
    /* A new status line starts a new response (100 Continue, then the real one). */
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0)
        t->head.len = 0;
    if (t->head.len + n > HTTP_MAX_HEADER_BYTES) {
        t->too_large = 1;
        return 0;
    }
    if (http_buf_append(&t->head, ptr, n) != 0) {
        t->oom = 1;
        return 0;
    }
    return n;
}

/* ------------------------------------------------------------------ session internals */

static CURL *session_take_easy(http_session *s)
{
    if (s->npool > 0)
        return s->pool[--s->npool];
    return curl_easy_init();
}

static void session_give_easy(http_session *s, CURL *easy)
{
    if (easy == NULL)
        return;
    if (s != NULL && !s->closed && s->npool < HTTP_POOL_MAX) {
        curl_easy_reset(easy);
        s->pool[s->npool++] = easy;
    } else {
        curl_easy_cleanup(easy);
    }
}

static void session_link(http_session *s, http_transfer *t)
{
    t->session = s;
    t->prev = NULL;
    t->next = s->active;
    if (s->active != NULL)
        s->active->prev = t;
    s->active = t;
}

static void session_unlink(http_session *s, http_transfer *t)
{
    if (t->prev != NULL)
        t->prev->next = t->next;
    else
        s->active = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
    t->session = NULL;
}

/* Removes t from its session's multi (if attached) and returns its easy handle to the pool. */
static void transfer_detach(http_transfer *t)
{
    http_session *s = t->session;
    if (s != NULL) {
        if (t->easy != NULL)
            curl_multi_remove_handle(s->multi, t->easy);
        session_unlink(s, t);
        session_give_easy(s, t->easy);
        t->easy = NULL;
    } else if (t->easy != NULL) {
        curl_easy_cleanup(t->easy);
        t->easy = NULL;
    }
}

/* Idempotent: frees everything the transfer owns. */
static void transfer_close(http_transfer *t)
{
    transfer_detach(t);
    if (t->headers != NULL) {
        curl_slist_free_all(t->headers);
        t->headers = NULL;
    }
    http_buf_free(&t->body);
    http_buf_free(&t->head);
}

/* Reads finished transfers off the multi and marks them done. */
static void session_collect(http_session *s)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        if (curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv) == CURLE_OK && priv != NULL) {
            http_transfer *t = (http_transfer *)(void *)priv;
            t->done = 1;
            t->result = m->data.result;
        }
    }
}

/* Idempotent: detaches every transfer, frees the pool and the multi. */
static void session_close(http_session *s)
{
    if (s->closed)
        return;
    s->closed = 1;
    while (s->active != NULL) {
        http_transfer *t = s->active;
        if (t->easy != NULL) {
            curl_multi_remove_handle(s->multi, t->easy);
            curl_easy_cleanup(t->easy);
            t->easy = NULL;
        }
        t->done = 1;
        t->result = CURLE_ABORTED_BY_CALLBACK;
        session_unlink(s, t);
    }
    while (s->npool > 0)
        curl_easy_cleanup(s->pool[--s->npool]);
    if (s->multi != NULL) {
        curl_multi_cleanup(s->multi);
        s->multi = NULL;
    }
    free(s->ca_file);
    s->ca_file = NULL;
    free(s->user_agent);
    s->user_agent = NULL;
    if (s->global_init) {
        s->global_init = 0;
        curl_global_cleanup();
    }
}

/* ------------------------------------------------------------------ Transfer userdata */

static int transfer_gc(lua_State *L)
{
    http_transfer *t = luaL_checkudata(L, 1, HTTP_TRANSFER_MT);
    transfer_close(t);
    return 0;
}

static const luaL_Reg http_transfer_meta[] = {
    {"__gc", transfer_gc},
    {"__close", transfer_gc},
    {NULL, NULL}
};

static http_transfer *transfer_new(lua_State *L, size_t max_body)
{
    http_transfer *t = lua_newuserdatauv(L, sizeof *t, 0);
    memset(t, 0, sizeof *t);
    t->max_body = max_body;
    luaL_setmetatable(L, HTTP_TRANSFER_MT);
    return t;
}

/* ------------------------------------------------------------------ Session userdata */

static http_session *check_session(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, HTTP_SESSION_MT);
}

static http_session *check_open_session(lua_State *L, int idx)
{
    http_session *s = check_session(L, idx);
    if (s->closed)
        luaL_error(L, "attempt to use a closed " HTTP_SESSION_MT);
    return s;
}

static int session_gc(lua_State *L)
{
    session_close(check_session(L, 1));
    return 0;
}

static int session_tostring(lua_State *L)
{
    http_session *s = check_session(L, 1);
    if (s->closed)
        lua_pushliteral(L, HTTP_SESSION_MT " (closed)");
    else
        lua_pushfstring(L, HTTP_SESSION_MT " (%p)", (void *)s);
    return 1;
}

/* Reads an optional positive integer field of the table at idx. */
static long opt_ms_field(lua_State *L, int idx, const char *name, long def)
{
    long v = def;
    int t = lua_getfield(L, idx, name);
    if (t != LUA_TNIL) {
        int isnum = 0;
        lua_Integer i = lua_tointegerx(L, -1, &isnum);
        if (!isnum || i <= 0 || i > INT_MAX)
            luaL_error(L, "%s must be a positive integer (milliseconds)", name);
        v = (long)i;
    }
    lua_pop(L, 1);
    return v;
}

static const char *opt_string_field(lua_State *L, int idx, const char *name)
{
    const char *v = NULL;
    int t = lua_getfield(L, idx, name);
    if (t == LUA_TSTRING)
        v = lua_tostring(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "%s must be a string", name);
    lua_pop(L, 1);  /* the string stays referenced by the table */
    return v;
}

static char *dup_or_raise(lua_State *L, const char *s)
{
    char *d = strdup(s);
    if (d == NULL)
        luaL_error(L, "out of memory");
    return d;
}

/* http.session([opts]) */
static int http_session_new(lua_State *L)
{
    if (!lua_isnoneornil(L, 1))
        luaL_checktype(L, 1, LUA_TTABLE);
    int has_opts = lua_istable(L, 1);

    /* Validate every option before acquiring anything. */
    long timeout_ms = HTTP_DEFAULT_TIMEOUT_MS, connect_ms = HTTP_DEFAULT_CONNECT_MS;
    const char *ca_file = NULL, *user_agent = NULL;
    size_t max_body = HTTP_DEFAULT_MAX_BODY;
    long max_connections = 0;   /* 0: no limit */
    if (has_opts) {
        timeout_ms = opt_ms_field(L, 1, "timeout_ms", timeout_ms);
        connect_ms = opt_ms_field(L, 1, "connect_timeout_ms", connect_ms);
        ca_file = opt_string_field(L, 1, "ca_file");
        user_agent = opt_string_field(L, 1, "user_agent");
        if (lua_getfield(L, 1, "max_body_bytes") != LUA_TNIL) {
            int isnum = 0;
            lua_Integer i = lua_tointegerx(L, -1, &isnum);
            if (!isnum || i <= 0)
                luaL_error(L, "max_body_bytes must be a positive integer");
            max_body = (size_t)i;
        }
        lua_pop(L, 1);
        if (lua_getfield(L, 1, "max_connections") != LUA_TNIL) {
            int isnum = 0;
            lua_Integer i = lua_tointegerx(L, -1, &isnum);
            if (!isnum || i <= 0 || i > 65536)
                luaL_error(L, "max_connections must be a positive integer");
            max_connections = (long)i;
        }
        lua_pop(L, 1);
    }

    /* The userdata first, then the resources it holds. */
    http_session *s = lua_newuserdatauv(L, sizeof *s, 1);
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, HTTP_SESSION_MT);
    lua_newtable(L);                       /* in flight: lightuserdata(t) -> Request (weak values) */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setiuservalue(L, -2, 1);
    s->timeout_ms = timeout_ms;
    s->connect_timeout_ms = connect_ms;
    s->max_body = max_body;
    s->ca_file = ca_file != NULL ? dup_or_raise(L, ca_file) : NULL;
    s->user_agent = dup_or_raise(L, user_agent != NULL ? user_agent : "lua-fiskaly/" FISKALY_VERSION);

    CURLcode rc = http_global_acquire(&s->global_init);
    if (rc != CURLE_OK) {
        session_close(s);
        return http_push_curl_error(L, rc, NULL);
    }
    s->multi = curl_multi_init();
    if (s->multi == NULL) {
        session_close(s);
        return http_push_error(L, "network", "OUT_OF_MEMORY", "curl_multi_init failed");
    }
    if (max_connections > 0) {
        /* Requests beyond the limit wait in libcurl's queue for a free connection. */
        CURLMcode mc = curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_connections);
        if (mc != CURLM_OK) {
            session_close(s);
            return http_push_error(L, "network", "MULTI_SETOPT_FAILED", curl_multi_strerror(mc));
        }
    }
    return 1;
}

static int session_close_method(lua_State *L)
{
    session_close(check_session(L, 1));
    return 0;
}

static int valid_token(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL) || c == 0)
            return 0;
    }
    return 1;
}

static int valid_header_value(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n' || c == 0)
            return 0;
    }
    return 1;
}

/* Appends "Name: value" to t->headers; raises on misuse or OOM (t owns the list). */
static void transfer_add_header(lua_State *L, http_transfer *t, const char *line)
{
    struct curl_slist *l = curl_slist_append(t->headers, line);
    if (l == NULL)
        luaL_error(L, "out of memory");
    t->headers = l;
}

static void transfer_build_headers(lua_State *L, http_transfer *t, int req)
{
    if (lua_getfield(L, req, "headers") != LUA_TNIL) {
        luaL_argcheck(L, lua_istable(L, -1), 2, "headers must be a table");
        int h = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, h) != 0) {
            size_t nk, nv;
            if (lua_type(L, -2) != LUA_TSTRING)
                luaL_error(L, "header names must be strings");
            if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
                luaL_error(L, "header values must be strings");
            const char *k = lua_tolstring(L, -2, &nk);
            const char *v = lua_tolstring(L, -1, &nv);  /* converts the value only, never the key */
            if (!valid_token(k, nk))
                luaL_error(L, "invalid header name '%s'", k);
            if (!valid_header_value(v, nv))
                luaL_error(L, "invalid value for header '%s' (control characters)", k);
            transfer_add_header(L, t, lua_pushfstring(L, "%s: %s", k, v));
            lua_pop(L, 2);                      /* line, value */
        }
    }
    lua_pop(L, 1);
    /* No "Expect: 100-continue" round trip for request bodies. */
    transfer_add_header(L, t, "Expect:");
}

#define SETOPT(easy, opt, val) \
    do { CURLcode rc_ = curl_easy_setopt((easy), (opt), (val)); if (rc_ != CURLE_OK) return rc_; } while (0)

static CURLcode transfer_setup(http_transfer *t, http_session *s, const char *method,
                               const char *url, const char *body, size_t body_len, long timeout_ms,
                               int fresh_connect)
{
    CURL *e = t->easy;
    SETOPT(e, CURLOPT_PRIVATE, (void *)t);
    SETOPT(e, CURLOPT_ERRORBUFFER, t->errbuf);
    SETOPT(e, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    SETOPT(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    SETOPT(e, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SETOPT(e, CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(e, CURLOPT_NOSIGNAL, 1L);
    SETOPT(e, CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (s->ca_file != NULL)
        SETOPT(e, CURLOPT_CAINFO, s->ca_file);
    SETOPT(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, s->connect_timeout_ms < timeout_ms ? s->connect_timeout_ms : timeout_ms);
    SETOPT(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* A request that must never be sent twice gets a new connection: libcurl
     * silently resends a request once when a *reused* connection dies before
     * any answer byte, which would repeat e.g. an admin PIN the server had
     * already processed. */
    SETOPT(e, CURLOPT_FRESH_CONNECT, fresh_connect ? 1L : 0L);
    SETOPT(e, CURLOPT_USERAGENT, s->user_agent);
    SETOPT(e, CURLOPT_WRITEFUNCTION, http_write_cb);
    SETOPT(e, CURLOPT_WRITEDATA, (void *)t);
    SETOPT(e, CURLOPT_HEADERFUNCTION, http_header_cb);
    SETOPT(e, CURLOPT_HEADERDATA, (void *)t);
    SETOPT(e, CURLOPT_HTTPHEADER, t->headers);

    if (strcmp(method, "GET") == 0 && body == NULL) {
        SETOPT(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        SETOPT(e, CURLOPT_NOBODY, 1L);
    } else {
        if (body != NULL || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0
            || strcmp(method, "PATCH") == 0) {
            /* The body is copied: the transfer does not depend on the Lua string. */
            SETOPT(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body != NULL ? body_len : 0));
            SETOPT(e, CURLOPT_COPYPOSTFIELDS, body != NULL ? body : "");
        }
        if (strcmp(method, "POST") != 0)
            SETOPT(e, CURLOPT_CUSTOMREQUEST, method);
    }
    return CURLE_OK;
}
#undef SETOPT

/* Drives the session's multi until t is done.  Never raises. */
static CURLMcode session_run_until(http_session *s, http_transfer *t)
{
    while (!t->done) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(s->multi, &running);
        if (mc != CURLM_OK)
            return mc;
        session_collect(s);
        if (t->done)
            break;
        mc = curl_multi_poll(s->multi, NULL, 0, HTTP_POLL_MS, NULL);
        if (mc != CURLM_OK)
            return mc;
    }
    return CURLM_OK;
}

/* Pushes the parsed header lines as { [lowercased name] = value } (last wins). */
static void push_headers(lua_State *L, const http_buf *head)
{
    lua_newtable(L);
    const char *p = head->data, *end = head->data + head->len;
    while (p != NULL && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl != NULL ? nl : end;
        const char *line_end = le;
        if (line_end > p && line_end[-1] == '\r')
            line_end--;
        const char *colon = memchr(p, ':', (size_t)(line_end - p));
        if (colon != NULL && colon > p && *p != ' ' && *p != '\t') {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *c = p; c < colon; c++)
                luaL_addchar(&b, (char)tolower((unsigned char)*c));
            luaL_pushresult(&b);
            const char *v = colon + 1;
            while (v < line_end && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = line_end;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            lua_pushlstring(L, v, (size_t)(ve - v));
            lua_rawset(L, -3);
        }
        p = nl != NULL ? nl + 1 : end;
    }
}

/*
 * Reads the request table at req, builds headers, takes an easy handle,
 * sets it up and adds it to the session's multi.  Misuse raises (t is a
 * userdata on the stack, so its __gc frees what it holds).  Returns 0 when
 * the transfer is in flight, or pushes nil, err and returns 2.
 */
static int transfer_start(lua_State *L, http_session *s, int req, http_transfer *t)
{
    int top = lua_gettop(L);
    size_t nmethod = 3;
    const char *method = "GET";
    if (lua_getfield(L, req, "method") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "method must be a string");
        method = lua_tolstring(L, -1, &nmethod);
    }
    if (!valid_token(method, nmethod))
        luaL_error(L, "invalid method '%s'", method);
    /* the string stays on the stack */

    if (lua_getfield(L, req, "url") != LUA_TSTRING)
        luaL_error(L, "url must be a string");
    size_t nurl;
    const char *url = lua_tolstring(L, -1, &nurl);
    if (strlen(url) != nurl)
        luaL_error(L, "url contains a NUL byte");

    size_t body_len = 0;
    const char *body = NULL;
    int bt = lua_getfield(L, req, "body");
    if (bt == LUA_TSTRING)
        body = lua_tolstring(L, -1, &body_len);
    else if (bt != LUA_TNIL)
        luaL_error(L, "body must be a string");

    long timeout_ms = opt_ms_field(L, req, "timeout_ms", s->timeout_ms);
    lua_getfield(L, req, "fresh_connect");
    int fresh_connect = lua_toboolean(L, -1);
    lua_pop(L, 1);
    transfer_build_headers(L, t, req);

    /* From here on nothing raises until the transfer is detached. */
    t->easy = session_take_easy(s);
    if (t->easy == NULL) {
        lua_settop(L, top);
        transfer_close(t);
        return http_push_error(L, "network", "OUT_OF_MEMORY", "curl_easy_init failed");
    }
    CURLcode rc = transfer_setup(t, s, method, url, body, body_len, timeout_ms, fresh_connect);
    lua_settop(L, top);   /* url and body were copied by libcurl (CURLOPT_URL, COPYPOSTFIELDS) */
    if (rc != CURLE_OK) {
        transfer_close(t);
        return http_push_curl_error(L, rc, NULL);
    }
    CURLMcode mc = curl_multi_add_handle(s->multi, t->easy);
    if (mc != CURLM_OK) {
        transfer_close(t);
        return http_push_error(L, "network", "MULTI_ADD_FAILED", curl_multi_strerror(mc));
    }
    session_link(s, t);
    return 0;
}

/*
 * t is done: reads its info, gives its easy handle back to the pool and
 * pushes the response table or nil, err (the shapes of session:request).
 * Frees t's buffers.  Returns the number of pushed values.
 */
static int transfer_finish(lua_State *L, http_transfer *t)
{
    long status = 0;
    curl_off_t total_us = 0;
    long connects = 0;
    if (t->easy != NULL) {
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &total_us);
        curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects);
    }
    transfer_detach(t);   /* easy back to the pool; buffers stay with t */

    if (t->result != CURLE_OK) {
        if (t->oom) {
            transfer_close(t);
            return http_push_error(L, "network", "OUT_OF_MEMORY", "out of memory while receiving the response");
        }
        if (t->too_large) {
            transfer_close(t);
            return http_push_error(L, "network", "RESPONSE_TOO_LARGE", "response exceeds max_body_bytes");
        }
        int n = http_push_curl_error(L, t->result, t->errbuf);
        lua_pushnumber(L, (lua_Number)total_us / 1000.0);
        lua_setfield(L, -2, "time_ms");
        transfer_close(t);
        return n;
    }

    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)status);
    lua_setfield(L, -2, "status");
    push_headers(L, &t->head);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, t->body.data != NULL ? t->body.data : "", t->body.len);
    lua_setfield(L, -2, "body");
    lua_pushnumber(L, (lua_Number)total_us / 1000.0);
    lua_setfield(L, -2, "time_ms");
    lua_pushinteger(L, (lua_Integer)connects);
    lua_setfield(L, -2, "connects");
    transfer_close(t);
    return 1;
}

/* session:request{ method, url, headers, body, timeout_ms } */
static int session_request(lua_State *L)
{
    http_session *s = check_open_session(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);

    http_transfer *t = transfer_new(L, s->max_body);
    int n = transfer_start(L, s, 2, t);
    if (n != 0)
        return n;

    CURLMcode mc = session_run_until(s, t);
    if (mc != CURLM_OK) {
        transfer_close(t);
        return http_push_error(L, "network", "MULTI_FAILED", curl_multi_strerror(mc));
    }
    return transfer_finish(L, t);
}

/* ------------------------------------------------------------------ non-blocking driver */

/*
 * A Request (fiskaly.http.Request) is an http_transfer with two user values:
 *   1: the Session (keeps it alive while the Request is reachable)
 *   2: once reported, { ok = bool, [1] = response or error table }
 * The Session's user value is a weak-valued table lightuserdata(t) -> Request
 * of the requests in flight, so step() can return the userdata of a finished
 * transfer.  A Request that becomes garbage while in flight is cancelled by
 * its __gc (removed from the multi; its connection is not reused).
 */

static http_transfer *check_request(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, HTTP_REQUEST_MT);
}

static int session_count_pending(const http_session *s)
{
    int n = 0;
    for (const http_transfer *t = s->active; t != NULL; t = t->next)
        if (t->async && !t->reported)
            n++;
    return n;
}

/* Stores the pushed results (1 or 2 values on top) in the Request at idx as user value 2. */
static void request_store(lua_State *L, int idx, int nres)
{
    lua_createtable(L, 1, 1);
    lua_insert(L, -1 - nres);
    if (nres == 1) {
        lua_rawseti(L, -2, 1);
        lua_pushboolean(L, 1);
    } else {
        lua_rawseti(L, -3, 1);   /* err */
        lua_pop(L, 1);           /* nil */
        lua_pushboolean(L, 0);
    }
    lua_setfield(L, -2, "ok");
    lua_setiuservalue(L, idx, 2);
}

/* Removes lightuserdata(t) from the session's in-flight table (session userdata at sidx). */
static void session_forget(lua_State *L, int sidx, http_transfer *t)
{
    if (lua_getiuservalue(L, sidx, 1) == LUA_TTABLE) {
        lua_pushlightuserdata(L, (void *)t);
        lua_pushnil(L);
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
}

/* session:submit(req) -> Request, or nil, err */
static int session_submit(lua_State *L)
{
    http_session *s = check_open_session(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);

    http_transfer *t = lua_newuserdatauv(L, sizeof *t, 2);
    memset(t, 0, sizeof *t);
    t->max_body = s->max_body;
    t->async = 1;
    luaL_setmetatable(L, HTTP_REQUEST_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, 3, 1);

    int n = transfer_start(L, s, 2, t);
    if (n != 0)
        return n;
    if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {
        lua_pushlightuserdata(L, (void *)t);
        lua_pushvalue(L, 3);
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
    lua_settop(L, 3);
    return 1;
}

/* Appends every finished, unreported Request of s to the table on top; returns how many. */
static int session_report(lua_State *L, http_session *s, int sidx)
{
    int list = lua_gettop(L);
    int count = 0;
    if (lua_getiuservalue(L, sidx, 1) != LUA_TTABLE) {
        lua_pop(L, 1);
        return 0;
    }
    int map = lua_gettop(L);
    http_transfer *t = s->active;
    while (t != NULL) {
        http_transfer *next = t->next;   /* finishing unlinks t */
        if (t->async && t->done && !t->reported) {
            lua_pushlightuserdata(L, (void *)t);
            if (lua_rawget(L, map) == LUA_TUSERDATA) {
                int ud = lua_gettop(L);
                int nres = transfer_finish(L, t);
                request_store(L, ud, nres);
                t->reported = 1;
                lua_pushlightuserdata(L, (void *)t);
                lua_pushnil(L);
                lua_rawset(L, map);
                lua_rawseti(L, list, ++count);   /* the Request */
            } else {
                lua_pop(L, 1);   /* being collected: its __gc detaches it */
            }
        }
        t = next;
    }
    lua_settop(L, list);
    return count;
}

/* session:step([timeout_ms]) -> list of the Requests that finished (possibly empty) */
static int session_step(lua_State *L)
{
    http_session *s = check_open_session(L, 1);
    lua_Integer timeout = luaL_optinteger(L, 2, 0);
    luaL_argcheck(L, timeout >= 0, 2, "timeout_ms must be >= 0");
    if (timeout > INT_MAX)
        timeout = INT_MAX;
    lua_settop(L, 2);
    lua_newtable(L);

    lua_Integer deadline = http_monotonic_ms() + timeout;
    for (;;) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(s->multi, &running);
        if (mc != CURLM_OK)
            return luaL_error(L, "curl_multi_perform: %s", curl_multi_strerror(mc));
        session_collect(s);
        if (session_report(L, s, 1) > 0 || session_count_pending(s) == 0)
            break;
        lua_Integer left = deadline - http_monotonic_ms();
        if (left <= 0)
            break;
        mc = curl_multi_poll(s->multi, NULL, 0, (int)left, NULL);
        if (mc != CURLM_OK)
            return luaL_error(L, "curl_multi_poll: %s", curl_multi_strerror(mc));
    }
    return 1;
}

/* session:pending() -> number of submitted Requests not yet reported by step() */
static int session_pending(lua_State *L)
{
    http_session *s = check_session(L, 1);
    lua_pushinteger(L, s->closed ? 0 : session_count_pending(s));
    return 1;
}

/* Has s a finished submitted request that step() has not reported yet? */
static int session_has_finished(const http_session *s)
{
    for (const http_transfer *t = s->active; t != NULL; t = t->next)
        if (t->async && t->done && !t->reported)
            return 1;
    return 0;
}

#define HTTP_WAIT_MAX_SESSIONS 64
#define HTTP_WAIT_BLIND_MS     10   /* cap when a session cannot name its sockets */

/*
 * http.wait(sessions, timeout_ms) -> true when a submitted request of one of
 * them has finished (step() will report it), false when the timeout passed.
 * Waits on the sockets of all sessions at once (one poll), for at most
 * timeout_ms; lets a runtime drive several sessions without slicing.
 */
static int http_wait(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer timeout = luaL_checkinteger(L, 2);
    luaL_argcheck(L, timeout >= 0, 2, "timeout_ms must be >= 0");
    if (timeout > INT_MAX)
        timeout = INT_MAX;
    lua_Integer n = luaL_len(L, 1);
    luaL_argcheck(L, n >= 0 && n <= HTTP_WAIT_MAX_SESSIONS, 1, "at most 64 sessions");
    http_session *ss[HTTP_WAIT_MAX_SESSIONS];
    int ns = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        http_session *s = check_open_session(L, -1);
        lua_pop(L, 1);   /* the table keeps it alive */
        ss[ns++] = s;
    }
    /* Room for every descriptor libcurl may name; a userdata, freed by the GC. */
    struct pollfd *fds = lua_newuserdatauv(L, sizeof *fds * (size_t)FD_SETSIZE, 0);

    lua_Integer deadline = http_monotonic_ms() + timeout;
    for (;;) {
        int pending = 0;
        for (int i = 0; i < ns; i++) {
            int running = 0;
            CURLMcode mc = curl_multi_perform(ss[i]->multi, &running);
            if (mc != CURLM_OK)
                return luaL_error(L, "curl_multi_perform: %s", curl_multi_strerror(mc));
            session_collect(ss[i]);
            if (session_has_finished(ss[i])) {
                lua_pushboolean(L, 1);
                return 1;
            }
            pending += session_count_pending(ss[i]);
        }
        lua_Integer left = deadline - http_monotonic_ms();
        if (pending == 0 || left <= 0)
            break;
        long wait = (long)left;
        nfds_t nfds = 0;
        for (int i = 0; i < ns; i++) {
            fd_set r, w, x;
            int maxfd = -1;
            long t = -1;
            FD_ZERO(&r);
            FD_ZERO(&w);
            FD_ZERO(&x);
            if (curl_multi_fdset(ss[i]->multi, &r, &w, &x, &maxfd) != CURLM_OK)
                maxfd = -1;
            if (curl_multi_timeout(ss[i]->multi, &t) == CURLM_OK && t >= 0 && t < wait)
                wait = t;
            if (maxfd < 0 && session_count_pending(ss[i]) > 0 && wait > HTTP_WAIT_BLIND_MS)
                wait = HTTP_WAIT_BLIND_MS;
            for (int fd = 0; fd <= maxfd && nfds < (nfds_t)FD_SETSIZE; fd++) {
                short ev = (short)((FD_ISSET(fd, &r) ? POLLIN : 0) | (FD_ISSET(fd, &w) ? POLLOUT : 0)
                                   | (FD_ISSET(fd, &x) ? POLLPRI : 0));
                if (ev != 0) {
                    fds[nfds].fd = fd;
                    fds[nfds].events = ev;
                    fds[nfds].revents = 0;
                    nfds++;
                }
            }
        }
        if (poll(fds, nfds, (int)wait) < 0 && errno != EINTR)
            break;
    }
    lua_pushboolean(L, 0);
    return 1;
}

static int request_gc(lua_State *L)
{
    transfer_close(check_request(L, 1));
    return 0;
}

/* request:done() -> true when its result is available (step() reported it, it was cancelled, or its session closed) */
static int request_done(lua_State *L)
{
    http_transfer *t = check_request(L, 1);
    lua_pushboolean(L, t->reported || (t->done && t->session == NULL));
    return 1;
}

/* request:result() -> response, or nil, err; raises while still in flight */
static int request_result(lua_State *L)
{
    http_transfer *t = check_request(L, 1);
    if (!t->reported) {
        if (t->done && t->session == NULL) {
            transfer_close(t);
            return http_push_error(L, "network", "SESSION_CLOSED", "the session was closed while the request was in flight");
        }
        return luaL_error(L, "request still in flight (drive it with session:step)");
    }
    lua_getiuservalue(L, 1, 2);
    lua_getfield(L, -1, "ok");
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (ok) {
        lua_rawgeti(L, -1, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_rawgeti(L, -2, 1);
    return 2;
}

/* request:cancel(): stops a request in flight (its result becomes nil, { code = "CANCELLED" }); no-op once done */
static int request_cancel(lua_State *L)
{
    http_transfer *t = check_request(L, 1);
    lua_settop(L, 1);
    if (t->reported || (t->done && t->session == NULL))
        return 0;
    if (t->session != NULL && lua_getiuservalue(L, 1, 1) == LUA_TUSERDATA)
        session_forget(L, 2, t);
    lua_settop(L, 1);
    transfer_close(t);
    t->done = 1;
    t->reported = 1;
    t->result = CURLE_ABORTED_BY_CALLBACK;
    int n = http_push_error(L, "network", "CANCELLED", "request cancelled");
    request_store(L, 1, n);
    return 0;
}

static int request_tostring(lua_State *L)
{
    http_transfer *t = check_request(L, 1);
    const char *state = t->reported ? "done" : (t->done && t->session == NULL) ? "closed" : "in flight";
    lua_pushfstring(L, HTTP_REQUEST_MT " (%s)", state);
    return 1;
}

static const luaL_Reg http_request_methods[] = {
    {"result", request_result},
    {"done", request_done},
    {"cancel", request_cancel},
    {NULL, NULL}
};

static const luaL_Reg http_request_meta[] = {
    {"__gc", request_gc},
    {"__close", request_gc},
    {"__tostring", request_tostring},
    {"__index", NULL},
    {NULL, NULL}
};

static const luaL_Reg http_session_methods[] = {
    {"request", session_request},
    {"submit", session_submit},
    {"step", session_step},
    {"pending", session_pending},
    {"close", session_close_method},
    {NULL, NULL}
};

static const luaL_Reg http_session_meta[] = {
    {"__gc", session_gc},
    {"__close", session_gc},
    {"__tostring", session_tostring},
    {"__index", NULL},
    {NULL, NULL}
};

/* http.now_ms() -> monotonic milliseconds (integer) */
static int http_now_ms(lua_State *L)
{
    lua_pushinteger(L, http_monotonic_ms());
    return 1;
}

/* http.sleep_ms(ms): blocks the calling thread for ms milliseconds (nanosleep, no busy wait). */
static int http_sleep_ms(lua_State *L)
{
    lua_Integer ms = luaL_checkinteger(L, 1);
    luaL_argcheck(L, ms >= 0, 1, "must be >= 0 milliseconds");
    struct timespec req, rem;
    req.tv_sec = (time_t)(ms / 1000);
    req.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&req, &rem) != 0 && errno == EINTR)
        req = rem;
    return 0;
}

static const luaL_Reg http_funcs[] = {
    {"session", http_session_new},
    {"now_ms", http_now_ms},
    {"sleep_ms", http_sleep_ms},
    {"wait", http_wait},
    {NULL, NULL}
};

void http_open(lua_State *L)
{
    luaL_newmetatable(L, HTTP_TRANSFER_MT);
    luaL_setfuncs(L, http_transfer_meta, 0);
    lua_pop(L, 1);

    luaL_newmetatable(L, HTTP_REQUEST_MT);
    luaL_setfuncs(L, http_request_meta, 0);
    luaL_newlib(L, http_request_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newmetatable(L, HTTP_SESSION_MT);
    luaL_setfuncs(L, http_session_meta, 0);
    luaL_newlib(L, http_session_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newlib(L, http_funcs);
    {
        const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
        lua_pushstring(L, v != NULL ? v->version : "?");
        lua_setfield(L, -2, "curl_version");
    }
    lua_setfield(L, -2, "http");
}
