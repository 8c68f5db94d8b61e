/*
 * tse.c -- fiskaly.core.tse: TR-03151 log messages (build, parse, verify) and DSFinV-K "V0" QR codes.
 *
 * Byte formats: shared/reference/tse-signature.md.  The signed bytes ("tbs") are the
 * LogMessage elements from version up to and including signatureCreationTime, exactly
 * as stored: built here in DER (or D-Trust's BER form for processData), and cut out of
 * parsed messages byte for byte, never re-encoded.
 */
#include "internal.h"
#include "crypto.h"

#include <limits.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/objects.h>

#define MAX_CHUNKS 64
#define MAX_ELEMENT (16 * 1024 * 1024)   /* largest element we build (processData etc.) */

/* ------------------------------------------------------------------ constants */

/* certifiedDataType OIDs 0.4.0.127.0.7.3.7.1.{1,2,3} (full TLV; last byte patched per type). */
static const unsigned char OID_CERTIFIED_TX[] = {
    0x06, 0x09, 0x04, 0x00, 0x7f, 0x00, 0x07, 0x03, 0x07, 0x01, 0x01 };
/* signatureAlgorithm SEQUENCE { OID 0.4.0.127.0.7.1.1.4.1.x } without the last OID byte. */
static const unsigned char ALG_PREFIX[] = {
    0x30, 0x0c, 0x06, 0x0a, 0x04, 0x00, 0x7f, 0x00, 0x07, 0x01, 0x01, 0x04, 0x01 };

typedef struct sig_alg {
    const char *name;        /* as printed in QR codes */
    const char *md;          /* OpenSSL digest name */
    unsigned char oid_last;  /* last arc of 0.4.0.127.0.7.1.1.4.1.x */
} sig_alg;

static const sig_alg sig_algs[] = {
    { "ecdsa-plain-SHA224", "SHA224", 2 },
    { "ecdsa-plain-SHA256", "SHA256", 3 },
    { "ecdsa-plain-SHA384", "SHA384", 4 },
    { "ecdsa-plain-SHA512", "SHA512", 5 },
};
#define NALGS (sizeof sig_algs / sizeof sig_algs[0])

static const sig_alg *alg_by_name(const char *s, size_t n)
{
    for (size_t i = 0; i < NALGS; i++)
        if (strlen(sig_algs[i].name) == n && memcmp(sig_algs[i].name, s, n) == 0)
            return &sig_algs[i];
    return NULL;
}

enum time_format { TF_UNIX, TF_UTC, TF_GENERALIZED };
static const char *const time_format_names[] = { "unixTime", "utcTime", "generalizedTime", NULL };

enum pd_style { PD_DER, PD_BER_INDEF };
static const char *const pd_style_names[] = { "der", "ber-indef", NULL };

static const char *const operation_names[] = {
    "StartTransaction", "UpdateTransaction", "FinishTransaction", NULL };
static const char *const build_log_type_names[] = { "transaction", "system", NULL };

/* A byte string that is not owned: it points into a Lua string anchored on the stack. */
typedef struct bytes {
    const char *p;
    size_t n;
} bytes;

/* The inputs of one transaction (or system) log message. */
typedef struct tse_fields {
    int system;                     /* 1: system log (certifiedData = [0] operationType, [1] data) */
    bytes system_operation_data;
    bytes operation_type;
    bytes client_id;
    bytes process_data;
    int has_process_type;           /* 0: element [3] absent */
    bytes process_type;
    int has_aed;                    /* additionalExternalData [4] */
    bytes aed;
    uint64_t transaction_number;
    unsigned char serial[32];
    const sig_alg *alg;
    uint64_t signature_counter;
    int64_t log_time;               /* Unix seconds */
    enum time_format time_format;
    enum pd_style pd_style;
    size_t nchunks;                 /* ber-indef: processData split as sent to the TSE */
    bytes chunks[MAX_CHUNKS];
} tse_fields;

/* ------------------------------------------------------------------ DER writing */

/* Append identifier and length octets (cls/tag as for ASN1_put_object; constructed 2 = indefinite). */
static void put_header(luaL_Buffer *b, int constructed, size_t len, int tag, int cls)
{
    unsigned char hdr[8];
    unsigned char *p = hdr;
    ASN1_put_object(&p, constructed, (int)len, tag, cls);
    luaL_addlstring(b, (const char *)hdr, (size_t)(p - hdr));
}

static void put_prim(luaL_Buffer *b, int tag, int cls, const char *s, size_t n)
{
    put_header(b, 0, n, tag, cls);
    luaL_addlstring(b, s, n);
}

/*
 * Minimal two's-complement content octets of an unsigned value (leading 00
 * when the top bit is set), via ASN1_INTEGER.  Returns the content length or 0.
 */
static size_t uint_content(uint64_t v, unsigned char out[16])
{
    unsigned char der[16];
    unsigned char *p = der;
    size_t n = 0;
    ASN1_INTEGER *ai = ASN1_INTEGER_new();
    if (ai != NULL && ASN1_INTEGER_set_uint64(ai, v) && i2d_ASN1_INTEGER(ai, NULL) <= (int)sizeof der
        && i2d_ASN1_INTEGER(ai, &p) > 2) {
        n = der[1];                     /* short-form length: at most 9 content bytes */
        memcpy(out, der + 2, n);
    }
    ASN1_INTEGER_free(ai);
    ERR_clear_error();
    return n;
}

/* Appends an INTEGER (or IMPLICIT tagged integer); returns 0 on failure. */
static int put_uint(luaL_Buffer *b, int tag, int cls, uint64_t v)
{
    unsigned char c[16];
    size_t n = uint_content(v, c);
    if (n == 0)
        return 0;
    put_prim(b, tag, cls, (const char *)c, n);
    return 1;
}

/* Appends signatureCreationTime in the chosen CHOICE; returns 0 if not representable. */
static int put_time(luaL_Buffer *b, int64_t t, enum time_format fmt)
{
    unsigned char der[32];
    unsigned char *p = der;
    int n = -1;
    if (t < 0)
        return 0;
    if (fmt == TF_UNIX)
        return put_uint(b, V_ASN1_INTEGER, V_ASN1_UNIVERSAL, (uint64_t)t);
    if (fmt == TF_UTC) {
        ASN1_UTCTIME *u = ASN1_UTCTIME_set(NULL, (time_t)t);   /* fails outside 1950..2049 */
        if (u != NULL && i2d_ASN1_UTCTIME(u, NULL) <= (int)sizeof der)
            n = i2d_ASN1_UTCTIME(u, &p);
        ASN1_UTCTIME_free(u);
    } else {
        ASN1_GENERALIZEDTIME *g = ASN1_GENERALIZEDTIME_set(NULL, (time_t)t);  /* YYYYMMDDhhmmssZ */
        if (g != NULL && i2d_ASN1_GENERALIZEDTIME(g, NULL) <= (int)sizeof der)
            n = i2d_ASN1_GENERALIZEDTIME(g, &p);
        ASN1_GENERALIZEDTIME_free(g);
    }
    ERR_clear_error();
    if (n <= 0)
        return 0;
    luaL_addlstring(b, (const char *)der, (size_t)n);
    return 1;
}

/* processData [2]: DER "82 len data", or D-Trust's "A2 80 (04 len chunk)* 00 00". */
static void put_process_data(luaL_Buffer *b, const tse_fields *f)
{
    if (f->pd_style == PD_DER) {
        put_prim(b, 2, V_ASN1_CONTEXT_SPECIFIC, f->process_data.p, f->process_data.n);
        return;
    }
    put_header(b, 2, 0, 2, V_ASN1_CONTEXT_SPECIFIC);            /* indefinite length */
    for (size_t i = 0; i < f->nchunks; i++)
        put_prim(b, V_ASN1_OCTET_STRING, V_ASN1_UNIVERSAL, f->chunks[i].p, f->chunks[i].n);
    luaL_addlstring(b, "\0\0", 2);                 /* end-of-contents */
}

/*
 * Appends the signed bytes of a transaction or system log message to b.
 * Returns NULL, or a message naming the field that cannot be encoded.
 */
static const char *tbs_build(luaL_Buffer *b, const tse_fields *f)
{
    luaL_addlstring(b, "\x02\x01\x02", 3);                                  /* version 2 */
    luaL_addlstring(b, (const char *)OID_CERTIFIED_TX, sizeof OID_CERTIFIED_TX - 1);
    luaL_addchar(b, f->system ? '\x02' : '\x01');                           /* ...7.1.1 / ...7.1.2 */
    put_prim(b, 0, V_ASN1_CONTEXT_SPECIFIC, f->operation_type.p, f->operation_type.n);
    if (f->system) {
        put_prim(b, 1, V_ASN1_CONTEXT_SPECIFIC, f->system_operation_data.p, f->system_operation_data.n);
    } else {
        put_prim(b, 1, V_ASN1_CONTEXT_SPECIFIC, f->client_id.p, f->client_id.n);
        put_process_data(b, f);
        if (f->has_process_type)
            put_prim(b, 3, V_ASN1_CONTEXT_SPECIFIC, f->process_type.p, f->process_type.n);
        if (f->has_aed)
            put_prim(b, 4, V_ASN1_CONTEXT_SPECIFIC, f->aed.p, f->aed.n);
        if (!put_uint(b, 5, V_ASN1_CONTEXT_SPECIFIC, f->transaction_number))
            return "transaction_number";
    }
    put_prim(b, V_ASN1_OCTET_STRING, V_ASN1_UNIVERSAL, (const char *)f->serial, sizeof f->serial);
    luaL_addlstring(b, (const char *)ALG_PREFIX, sizeof ALG_PREFIX);
    luaL_addchar(b, (char)f->alg->oid_last);
    if (!put_uint(b, V_ASN1_INTEGER, V_ASN1_UNIVERSAL, f->signature_counter))
        return "signature_counter";
    if (!put_time(b, f->log_time, f->time_format))
        return "log_time";
    return NULL;
}

/* ------------------------------------------------------------------ reading a fields table */

/* The value of t[key] is left on the stack (it anchors the returned string). */
static int field_bytes(lua_State *L, int t, const char *key, bytes *out, int required)
{
    int ty = lua_getfield(L, t, key);
    if (ty == LUA_TNIL && !required)
        return 0;
    if (ty != LUA_TSTRING)
        luaL_error(L, "field '%s' must be a string (got %s)", key, luaL_typename(L, -1));
    out->p = lua_tolstring(L, -1, &out->n);
    if (out->n > MAX_ELEMENT)
        luaL_error(L, "field '%s' is too long", key);
    return 1;
}

static uint64_t field_uint(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint || lua_type(L, -1) != LUA_TNUMBER || v < 0)
        luaL_error(L, "field '%s' must be a non-negative integer", key);
    lua_pop(L, 1);
    return (uint64_t)v;
}

static int field_option(lua_State *L, int t, const char *key, const char *def, const char *const names[])
{
    lua_getfield(L, t, key);
    const char *s = lua_isnil(L, -1) ? def : lua_tostring(L, -1);
    if (s == NULL || lua_type(L, -1) == LUA_TNUMBER)
        s = "";
    for (int i = 0; names[i] != NULL; i++)
        if (strcmp(names[i], s) == 0) {
            lua_pop(L, 1);
            return i;
        }
    return luaL_error(L, "field '%s': invalid value '%s'", key, s);
}

/* processData chunks for ber-indef (strings left on the stack); default: one chunk. */
static void fields_chunks(lua_State *L, int t, tse_fields *f)
{
    f->nchunks = 0;
    if (lua_getfield(L, t, "process_data_chunks") == LUA_TNIL) {
        lua_pop(L, 1);
        f->chunks[0] = f->process_data;
        f->nchunks = 1;
        return;
    }
    luaL_checktype(L, -1, LUA_TTABLE);
    int tab = lua_gettop(L);
    lua_Integer n = luaL_len(L, tab);
    if (n < 0 || n > MAX_CHUNKS)
        luaL_error(L, "field 'process_data_chunks': at most %d chunks", MAX_CHUNKS);
    luaL_checkstack(L, (int)n, "too many chunks");
    size_t total = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_geti(L, tab, i) != LUA_TSTRING)
            luaL_error(L, "field 'process_data_chunks': item %d must be a string", (int)i);
        bytes *c = &f->chunks[f->nchunks++];
        c->p = lua_tolstring(L, -1, &c->n);
        total += c->n;
    }
    if (total > MAX_ELEMENT)
        luaL_error(L, "field 'process_data_chunks' is too long");
}

static void fields_read_common(lua_State *L, int t, tse_fields *f, int want_serial);

/*
 * Fills f from the table at index t (raises on misuse).  The strings stay
 * anchored on the stack above t.  If want_serial is 0 the serial is not read.
 */
static void fields_read(lua_State *L, int t, tse_fields *f, int want_serial)
{
    memset(f, 0, sizeof *f);
    luaL_checktype(L, t, LUA_TTABLE);
    f->system = field_option(L, t, "log_type", "transaction", build_log_type_names);
    if (f->system) {
        /* any operationType text (real system logs: "updateTime", "exitSecureState", ...) */
        field_bytes(L, t, "operation_type", &f->operation_type, 1);
        if (f->operation_type.n == 0)
            luaL_error(L, "field 'operation_type' must not be empty");
        if (!field_bytes(L, t, "system_operation_data", &f->system_operation_data, 0)) {
            lua_pop(L, 1);
            f->system_operation_data.p = "";
        }
        fields_read_common(L, t, f, want_serial);
        return;
    }
    f->operation_type.p = operation_names[field_option(L, t, "operation_type", NULL, operation_names)];
    f->operation_type.n = strlen(f->operation_type.p);
    field_bytes(L, t, "client_id", &f->client_id, 1);
    if (!field_bytes(L, t, "process_data", &f->process_data, 0)) {
        lua_pop(L, 1);
        f->process_data.p = "";
    }
    f->has_process_type = field_bytes(L, t, "process_type", &f->process_type, 0);
    if (!f->has_process_type)
        lua_pop(L, 1);
    f->has_aed = field_bytes(L, t, "additional_external_data", &f->aed, 0);
    if (!f->has_aed)
        lua_pop(L, 1);
    f->transaction_number = field_uint(L, t, "transaction_number");
    f->pd_style = (enum pd_style)field_option(L, t, "process_data_style", "der", pd_style_names);
    if (f->pd_style == PD_BER_INDEF)
        fields_chunks(L, t, f);
    fields_read_common(L, t, f, want_serial);
}

/* The fields shared by transaction and system logs: counter, time, algorithm, serial. */
static void fields_read_common(lua_State *L, int t, tse_fields *f, int want_serial)
{
    bytes serial;
    f->signature_counter = field_uint(L, t, "signature_counter");
    uint64_t lt = field_uint(L, t, "log_time");
    if (lt > (uint64_t)INT64_MAX / 2)
        luaL_error(L, "field 'log_time' out of range");
    f->log_time = (int64_t)lt;
    f->time_format = (enum time_format)field_option(L, t, "log_time_format", "unixTime", time_format_names);
    lua_getfield(L, t, "sig_alg");
    size_t an = 0;
    const char *a = lua_tolstring(L, -1, &an);
    f->alg = a != NULL && lua_type(L, -1) == LUA_TSTRING ? alg_by_name(a, an) : NULL;
    if (f->alg == NULL && want_serial)
        luaL_error(L, "field 'sig_alg' must be ecdsa-plain-SHA224/256/384/512");
    lua_pop(L, 1);
    if (want_serial) {
        field_bytes(L, t, "serial_number", &serial, 1);
        if (serial.n != sizeof f->serial)
            luaL_error(L, "field 'serial_number' must be 32 raw bytes");
        memcpy(f->serial, serial.p, sizeof f->serial);
        lua_pop(L, 1);
    }
}

/* ------------------------------------------------------------------ log_message */

/* log_message(t) -> tbs [, full DER LogMessage when t.signature is given] */
static int tse_log_message(lua_State *L)
{
    tse_fields f;
    bytes sig = { NULL, 0 };
    fields_read(L, 1, &f, 1);
    int has_sig = field_bytes(L, 1, "signature", &sig, 0);
    if (!has_sig)
        lua_pop(L, 1);

    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *bad = tbs_build(&b, &f);
    if (bad != NULL)
        return luaL_error(L, "log_message: field '%s' cannot be encoded", bad);
    luaL_pushresult(&b);
    if (!has_sig)
        return 1;

    size_t tlen;
    const char *tbs = lua_tolstring(L, -1, &tlen);
    luaL_buffinit(L, &b);
    unsigned char sig_hdr[8];
    unsigned char *p = sig_hdr;
    ASN1_put_object(&p, 0, (int)sig.n, V_ASN1_OCTET_STRING, V_ASN1_UNIVERSAL);
    size_t body = tlen + (size_t)(p - sig_hdr) + sig.n;
    put_header(&b, 1, body, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
    luaL_addlstring(&b, tbs, tlen);
    luaL_addlstring(&b, (const char *)sig_hdr, (size_t)(p - sig_hdr));
    luaL_addlstring(&b, sig.p, sig.n);
    luaL_pushresult(&b);
    return 2;
}

/* ------------------------------------------------------------------ results */

#define E_MALFORMED_QR    "MALFORMED_QR"
#define E_MALFORMED_LOG   "MALFORMED_LOG"
#define E_SERIAL_MISMATCH "SERIAL_MISMATCH"

/* The outcome of one verification; valid is set only after a signature verified. */
typedef struct result {
    int valid;
    const char *code;                /* FISKALY_E_* / E_*; NULL when valid */
    char reason[320];
    int field;                       /* malformed QR field number, or 0 */
    const fiskaly_curve *curve;
    int has_serial;
    unsigned char serial[32];        /* SHA-256 of the public key point */
    const sig_alg *alg;
    const char *encoding;            /* signature encoding: "plain" / "der" */
    const char *pd_style;            /* processData form that verified */
} result;

static void result_fail(result *r, const char *code, const char *reason)
{
    r->valid = 0;
    r->code = code;
    snprintf(r->reason, sizeof r->reason, "%s", reason);
}

static void push_hex(lua_State *L, const unsigned char *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    luaL_Buffer b;
    char *o = luaL_buffinitsize(L, &b, 2 * n);
    for (size_t i = 0; i < n; i++) {
        o[2 * i] = digits[p[i] >> 4];
        o[2 * i + 1] = digits[p[i] & 0x0f];
    }
    luaL_pushresultsize(&b, 2 * n);
}

/* Pushes the result table; callers may add more fields to it. */
static void result_push(lua_State *L, const result *r)
{
    lua_createtable(L, 0, 10);
    lua_pushboolean(L, r->valid);
    lua_setfield(L, -2, "valid");
    if (!r->valid) {
        lua_pushstring(L, r->reason);
        lua_setfield(L, -2, "reason");
        lua_pushstring(L, r->code != NULL ? r->code : FISKALY_E_INTERNAL);
        lua_setfield(L, -2, "code");
    }
    if (r->field > 0) {
        lua_pushinteger(L, r->field);
        lua_setfield(L, -2, "field");
    }
    if (r->curve != NULL) {
        lua_pushstring(L, r->curve->name);
        lua_setfield(L, -2, "curve");
    }
    if (r->has_serial) {
        push_hex(L, r->serial, sizeof r->serial);
        lua_setfield(L, -2, "serial_number");
    }
    if (r->alg != NULL) {
        lua_pushstring(L, r->alg->name);
        lua_setfield(L, -2, "sig_alg");
    }
    if (r->encoding != NULL) {
        lua_pushstring(L, r->encoding);
        lua_setfield(L, -2, "signature_encoding");
    }
    if (r->pd_style != NULL) {
        lua_pushstring(L, r->pd_style);
        lua_setfield(L, -2, "process_data_style");
    }
}

/*
 * A userdata owning a decoded public key, so that a Lua error raised while
 * it is alive (out of memory while building the signed bytes) cannot leak it.
 * Verifiers free it explicitly when done; __gc is the safety net.
 */
#define PKEYBOX_MT "fiskaly.tse.PKeyBox"

static int pkeybox_close(lua_State *L)
{
    EVP_PKEY **box = luaL_checkudata(L, 1, PKEYBOX_MT);
    EVP_PKEY_free(*box);
    *box = NULL;
    return 0;
}

static void pkeybox_free(EVP_PKEY **box)
{
    EVP_PKEY_free(*box);
    *box = NULL;
}

/*
 * Pushes a box holding the decoded public key (raw point or SPKI) and fills
 * r->curve and r->serial (SHA-256 of the raw point).  Returns the box, whose
 * key is NULL when the key is unusable (then r says why).
 */
static EVP_PKEY **result_key(lua_State *L, result *r, const unsigned char *key, size_t key_len)
{
    unsigned char point[FISKALY_MAX_POINT];
    size_t point_len = 0;
    const char *code = FISKALY_E_INTERNAL;
    EVP_PKEY **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, PKEYBOX_MT);
    *box = fiskaly_pubkey_decode(key, key_len, &r->curve, point, &point_len, &code);
    if (*box == NULL) {
        result_fail(r, code, fiskaly_error_text(code));
        return box;
    }
    EVP_Digest(point, point_len, r->serial, NULL, EVP_sha256(), NULL);
    r->has_serial = 1;
    return box;
}

/* Verifies sig over each candidate message in order; the first that verifies wins.  Fills r. */
static void verify_candidates(result *r, EVP_PKEY *pkey, const unsigned char *sig, size_t sig_len,
                              const char *const msgs[], const size_t lens[], const char *const styles[],
                              size_t nmsgs)
{
    const char *code = FISKALY_E_INTERNAL;
    for (size_t i = 0; i < nmsgs && !r->valid; i++) {
        if (fiskaly_ecdsa_verify(pkey, r->curve, r->alg->md, (const unsigned char *)msgs[i], lens[i],
                                 sig, sig_len, &code, &r->encoding)) {
            r->valid = 1;
            r->code = NULL;
            r->pd_style = styles[i];
        } else if (strcmp(code, FISKALY_E_SIG_MISMATCH) != 0) {
            break;                          /* malformed signature: no candidate can verify */
        }
    }
    if (!r->valid)
        result_fail(r, code, fiskaly_error_text(code));
}

/* ------------------------------------------------------------------ time */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned mp = m > 2 ? m - 3 : m + 9;
    unsigned doy = (153 * mp + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned dm[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

/* n decimal digits at p -> value; 0 if any is not a digit. */
static int digits(const char *p, size_t n, unsigned *out)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    *out = v;
    return 1;
}

/* ISO 8601 "YYYY-MM-DDThh:mm:ss[.f+]Z" -> Unix seconds; *frac set if the fraction is not zero.
 * Returns 0 if malformed. */
static int iso_parse(const char *s, size_t n, int64_t *out, int *frac)
{
    unsigned y, mo, d, h, mi, se;
    if (n < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':'
        || s[n - 1] != 'Z' || !digits(s, 4, &y) || !digits(s + 5, 2, &mo) || !digits(s + 8, 2, &d)
        || !digits(s + 11, 2, &h) || !digits(s + 14, 2, &mi) || !digits(s + 17, 2, &se))
        return 0;
    if (n > 20) {                                       /* ".f+" between seconds and Z */
        unsigned f;
        if (s[19] != '.' || n < 22 || n > 30 || !digits(s + 20, n - 21, &f))
            return 0;
        *frac = f != 0;
    }
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59)
        return 0;
    *out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
    return 1;
}

static void push_iso(lua_State *L, int64_t t)
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (OPENSSL_gmtime(&tt, &tm) == NULL) {
        ERR_clear_error();
        lua_pushnil(L);
        return;
    }
    lua_pushfstring(L, "%d-%s%d-%s%dT%s%d:%s%d:%s%d.000Z", tm.tm_year + 1900,
                    tm.tm_mon < 9 ? "0" : "", tm.tm_mon + 1, tm.tm_mday < 10 ? "0" : "", tm.tm_mday,
                    tm.tm_hour < 10 ? "0" : "", tm.tm_hour, tm.tm_min < 10 ? "0" : "", tm.tm_min,
                    tm.tm_sec < 10 ? "0" : "", tm.tm_sec);
}

/* ------------------------------------------------------------------ QR codes */

#define QR_FIELDS 12
#define QR_MAX_SIG 256       /* decoded bytes; DER P-384 signatures are <= 104 */
#define QR_MAX_KEY 512       /* decoded bytes; SPKI of P-384 is 120 */

static const char *const qr_field_names[QR_FIELDS] = {
    "version", "client_id", "process_type", "process_data", "transaction_number",
    "signature_counter", "start_time", "log_time", "sig_alg", "log_time_format",
    "signature", "public_key" };

typedef struct qr_code {
    bytes f[QR_FIELDS];              /* the printed fields, pointing into the QR string */
    uint64_t transaction_number;
    uint64_t signature_counter;
    int64_t start_time;
    int64_t log_time;
    int log_time_frac;               /* log-time printed with non-zero fractional seconds */
    const sig_alg *alg;
    enum time_format time_format;
    unsigned char sig[QR_MAX_SIG];
    size_t sig_len;
    unsigned char key[QR_MAX_KEY];
    size_t key_len;
} qr_code;

/* Decimal string -> integer that also fits a Lua integer; 0 if malformed. */
static int parse_decimal(bytes b, uint64_t *out)
{
    uint64_t v = 0;
    if (b.n == 0 || b.n > 19)
        return 0;
    for (size_t i = 0; i < b.n; i++) {
        if (b.p[i] < '0' || b.p[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(b.p[i] - '0');
    }
    if (v > (uint64_t)INT64_MAX)
        return 0;
    *out = v;
    return 1;
}

static int bytes_eq(bytes b, const char *s)
{
    return b.n == strlen(s) && memcmp(b.p, s, b.n) == 0;
}

/*
 * Splits the QR string at ';'.  processData is free text, so when there are
 * more than 12 fields the surplus separators are taken to belong to field 4
 * (the signature decides whether that reading is right).  Returns the count.
 */
static size_t qr_split(const char *s, size_t n, bytes f[QR_FIELDS])
{
    size_t seps[QR_FIELDS + 1];
    size_t nsep = 0, total = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ';') {
            if (nsep < 3)
                seps[nsep++] = i;
            total++;
        }
    if (total < QR_FIELDS - 1)
        return total + 1;
    /* the last 8 separators, scanning from the end */
    size_t k = QR_FIELDS - 1;
    for (size_t i = n; i-- > 0 && k > 3;)
        if (s[i] == ';')
            seps[--k] = i;
    size_t start = 0;
    for (size_t i = 0; i < QR_FIELDS; i++) {
        size_t end = i < QR_FIELDS - 1 ? seps[i] : n;
        f[i].p = s + start;
        f[i].n = end - start;
        start = end + 1;
    }
    return QR_FIELDS;
}

/* Parses and validates a QR string.  On failure fills r (code, reason, field) and returns 0. */
static int qr_parse(const char *s, size_t n, qr_code *q, result *r)
{
    char why[160];
    int bad = 0, unused_frac = 0;
    memset(q, 0, sizeof *q);
    size_t count = qr_split(s, n, q->f);
    if (count != QR_FIELDS) {
        snprintf(r->reason, sizeof r->reason,
                 "malformed QR code: expected 12 fields separated by ';', got %zu", count);
        r->code = E_MALFORMED_QR;
        return 0;
    }
    why[0] = 0;
    if (!bytes_eq(q->f[0], "V0"))
        bad = 1, snprintf(why, sizeof why, "expected 'V0'");
    else if (!parse_decimal(q->f[4], &q->transaction_number))
        bad = 5, snprintf(why, sizeof why, "not a decimal integer");
    else if (!parse_decimal(q->f[5], &q->signature_counter))
        bad = 6, snprintf(why, sizeof why, "not a decimal integer");
    else if (!iso_parse(q->f[6].p, q->f[6].n, &q->start_time, &unused_frac))
        bad = 7, snprintf(why, sizeof why, "not a time like 2021-08-23T14:36:33.000Z");
    else if (!iso_parse(q->f[7].p, q->f[7].n, &q->log_time, &q->log_time_frac))
        bad = 8, snprintf(why, sizeof why, "not a time like 2021-08-23T14:36:33.000Z");
    else if ((q->alg = alg_by_name(q->f[8].p, q->f[8].n)) == NULL)
        bad = 9, snprintf(why, sizeof why, "unknown algorithm");
    else if (bytes_eq(q->f[9], "unixTime")) q->time_format = TF_UNIX;
    else if (bytes_eq(q->f[9], "utcTime")) q->time_format = TF_UTC;
    else if (bytes_eq(q->f[9], "generalizedTime")) q->time_format = TF_GENERALIZED;
    else
        bad = 10, snprintf(why, sizeof why, "expected unixTime, utcTime or generalizedTime");
    if (!bad && (q->f[10].n == 0 || q->f[10].n > 4 * QR_MAX_SIG / 3
                 || !fiskaly_b64_decode(q->f[10].p, q->f[10].n, q->sig, &q->sig_len)))
        bad = 11, snprintf(why, sizeof why, "not base64");
    if (!bad && (q->f[11].n == 0 || q->f[11].n > 4 * QR_MAX_KEY / 3
                 || !fiskaly_b64_decode(q->f[11].p, q->f[11].n, q->key, &q->key_len)))
        bad = 12, snprintf(why, sizeof why, "not base64");
    if (!bad && q->time_format == TF_UTC && q->log_time >= 2524608000)      /* 2050-01-01 */
        bad = 8, snprintf(why, sizeof why, "not representable as utcTime");
    if (!bad)
        return 1;
    r->field = bad;
    if (bad == 9) {
        r->code = FISKALY_E_UNKNOWN_ALG;
        snprintf(r->reason, sizeof r->reason, "unknown algorithm '%.*s' (QR field 9, sig_alg)",
                 (int)(q->f[8].n < 60 ? q->f[8].n : 60), q->f[8].p);
    } else {
        r->code = E_MALFORMED_QR;
        snprintf(r->reason, sizeof r->reason, "malformed QR field %d (%s): %s", bad, qr_field_names[bad - 1], why);
    }
    return 0;
}

/* Signed-message fields of the FinishTransaction a QR code carries. */
static void qr_to_fields(const qr_code *q, const unsigned char serial[32], tse_fields *f)
{
    memset(f, 0, sizeof *f);
    f->operation_type.p = "FinishTransaction";
    f->operation_type.n = strlen(f->operation_type.p);
    f->client_id = q->f[1];
    f->process_type = q->f[2];
    f->has_process_type = 1;
    f->process_data = q->f[3];
    f->transaction_number = q->transaction_number;
    memcpy(f->serial, serial, 32);
    f->alg = q->alg;
    f->signature_counter = q->signature_counter;
    f->log_time = q->log_time;
    f->time_format = q->time_format;
    f->pd_style = PD_DER;
    f->nchunks = 1;
    f->chunks[0] = q->f[3];
}

static void push_bytes_field(lua_State *L, bytes b, const char *name)
{
    lua_pushlstring(L, b.p, b.n);
    lua_setfield(L, -2, name);
}

static void push_int_field(lua_State *L, lua_Integer v, const char *name)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, name);
}

/* parse_qr(s) -> table | nil, err */
static int tse_parse_qr(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    qr_code *q = lua_newuserdatauv(L, sizeof *q, 0);        /* ~1 KiB: keep it off the C stack */
    result r;
    memset(&r, 0, sizeof r);
    if (!qr_parse(s, n, q, &r)) {
        lua_pushnil(L);
        lua_pushstring(L, r.reason);
        return 2;
    }
    lua_createtable(L, 0, 16);
    for (int i = 0; i < QR_FIELDS; i++)
        if (i != 4 && i != 5 && i != 10 && i != 11)
            push_bytes_field(L, q->f[i], qr_field_names[i]);
    push_int_field(L, (lua_Integer)q->transaction_number, "transaction_number");
    push_int_field(L, (lua_Integer)q->signature_counter, "signature_counter");
    push_int_field(L, (lua_Integer)q->log_time, "log_time_unix");
    push_int_field(L, (lua_Integer)q->start_time, "start_time_unix");
    lua_pushlstring(L, (const char *)q->sig, q->sig_len);
    lua_setfield(L, -2, "signature");
    lua_pushlstring(L, (const char *)q->key, q->key_len);
    lua_setfield(L, -2, "public_key");
    return 1;
}

/* verify_qr(s) -> result */
static int tse_verify_qr(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    qr_code *q = lua_newuserdatauv(L, sizeof *q, 0);
    tse_fields *f = lua_newuserdatauv(L, sizeof *f, 0);
    result r;
    memset(&r, 0, sizeof r);
    if (!qr_parse(s, n, q, &r)) {
        result_push(L, &r);
        return 1;
    }
    r.alg = q->alg;

    EVP_PKEY **pkey = result_key(L, &r, q->key, q->key_len);
    if (*pkey == NULL) {
        result_push(L, &r);
        return 1;
    }
    qr_to_fields(q, r.serial, f);

    /* Candidates: DER processData (everyone), then D-Trust's single-chunk BER form. */
    const char *msgs[2];
    size_t lens[2];
    static const char *const styles[2] = { "der", "ber-indef" };
    luaL_Buffer b;
    for (int i = 0; i < 2; i++) {
        f->pd_style = i == 0 ? PD_DER : PD_BER_INDEF;
        luaL_buffinit(L, &b);
        if (tbs_build(&b, f) != NULL) {                /* pre-validated: cannot happen */
            result_fail(&r, FISKALY_E_INTERNAL, "internal error: cannot encode the log message");
            result_push(L, &r);
            return 1;
        }
        luaL_pushresult(&b);
        msgs[i] = lua_tolstring(L, -1, &lens[i]);
    }
    verify_candidates(&r, *pkey, q->sig, q->sig_len, msgs, lens, styles, 2);
    pkeybox_free(pkey);
    if (r.valid && q->start_time > q->log_time) {
        /* start-zeit is not signed (it belongs to the Start log): the signed log time wins */
        result_fail(&r, E_MALFORMED_QR, "malformed QR field 7 (start_time): after the signed log time");
        r.field = 7;
    }
    if (r.valid && q->log_time_frac) {
        /* every supported time format is signed with whole seconds: the fraction is not authentic */
        result_fail(&r, E_MALFORMED_QR, "malformed QR field 8 (log_time): fractional seconds are not signed");
        r.field = 8;
    }
    result_push(L, &r);
    push_bytes_field(L, q->f[1], "client_id");
    push_int_field(L, (lua_Integer)q->transaction_number, "transaction_number");
    push_int_field(L, (lua_Integer)q->signature_counter, "signature_counter");
    push_int_field(L, (lua_Integer)q->log_time, "log_time_unix");
    push_bytes_field(L, q->f[7], "log_time");
    return 1;
}

/* verify_fields(t) -> result; t as for log_message plus public_key and signature. */
static int tse_verify_fields(lua_State *L)
{
    tse_fields *f = lua_newuserdatauv(L, sizeof *f, 0);
    bytes key, sig, serial;
    result r;
    memset(&r, 0, sizeof r);
    fields_read(L, 1, f, 0);
    field_bytes(L, 1, "public_key", &key, 1);
    field_bytes(L, 1, "signature", &sig, 1);
    int has_serial = field_bytes(L, 1, "serial_number", &serial, 0);
    if (f->alg == NULL) {
        lua_getfield(L, 1, "sig_alg");
        snprintf(r.reason, sizeof r.reason, "unknown algorithm '%.60s'",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
        lua_pop(L, 1);
        r.code = FISKALY_E_UNKNOWN_ALG;
        result_push(L, &r);
        return 1;
    }
    r.alg = f->alg;
    EVP_PKEY **pkey = result_key(L, &r, (const unsigned char *)key.p, key.n);
    if (*pkey == NULL) {
        result_push(L, &r);
        return 1;
    }
    memcpy(f->serial, r.serial, sizeof f->serial);
    if (has_serial && (serial.n != sizeof f->serial || memcmp(serial.p, f->serial, sizeof f->serial) != 0)) {
        result_fail(&r, E_SERIAL_MISMATCH, "serial mismatch: serial_number is not the SHA-256 of the public key");
        result_push(L, &r);
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (tbs_build(&b, f) != NULL) {
        result_fail(&r, E_MALFORMED_LOG, "a field cannot be encoded (log_time out of range for its format?)");
        result_push(L, &r);
        return 1;
    }
    luaL_pushresult(&b);
    const char *msg[1];
    size_t len[1];
    const char *style[1] = { pd_style_names[f->pd_style] };
    msg[0] = lua_tolstring(L, -1, &len[0]);
    verify_candidates(&r, *pkey, (const unsigned char *)sig.p, sig.n, msg, len, style, 1);
    pkeybox_free(pkey);
    result_push(L, &r);
    return 1;
}

/* ------------------------------------------------------------------ BER reading */

#define MAX_DEPTH 8
#define MAX_ELEMENTS 24

/* One BER TLV inside the caller's buffer. */
typedef struct tlv {
    const unsigned char *start;      /* identifier octet */
    const unsigned char *content;
    size_t content_len;              /* for indefinite length: up to the end-of-contents octets */
    size_t total;                    /* the whole TLV, end-of-contents included */
    int tag, cls, constructed, indefinite;
} tlv;

/* Reads the TLV at p (at most avail bytes), walking indefinite-length contents to their EOC. */
static int tlv_read(const unsigned char *p, size_t avail, int depth, tlv *t)
{
    const unsigned char *q = p;
    long len = 0;
    if (avail == 0 || avail > (size_t)LONG_MAX)
        return 0;
    int rc = ASN1_get_object(&q, &len, &t->tag, &t->cls, (long)avail);
    if (rc & 0x80) {                 /* malformed header or length beyond the buffer */
        ERR_clear_error();
        return 0;
    }
    size_t hdr = (size_t)(q - p);
    t->start = p;
    t->content = q;
    t->constructed = (rc & V_ASN1_CONSTRUCTED) != 0;
    t->indefinite = rc & 1;
    if (!t->indefinite) {
        t->content_len = (size_t)len;            /* ASN1_get_object checked len <= avail - hdr */
        t->total = hdr + (size_t)len;
        return 1;
    }
    if (depth >= MAX_DEPTH)
        return 0;
    size_t off = 0, rem = avail - hdr;
    for (;;) {
        if (rem - off >= 2 && q[off] == 0 && q[off + 1] == 0) {
            t->content_len = off;
            t->total = hdr + off + 2;
            return 1;
        }
        tlv child;
        if (!tlv_read(q + off, rem - off, depth + 1, &child))
            return 0;
        off += child.total;
    }
}

/* The children of a constructed TLV; returns their number, or -1 if malformed / too many. */
static int tlv_children(const tlv *t, tlv *kids, int max)
{
    int n = 0;
    size_t off = 0;
    while (off < t->content_len) {
        if (n == max || !tlv_read(t->content + off, t->content_len - off, 1, &kids[n]))
            return -1;
        off += kids[n++].total;
    }
    return n;
}

static int tlv_is(const tlv *t, int cls, int tag, int constructed)
{
    return t->cls == cls && t->tag == tag && t->constructed == constructed;
}

/* INTEGER contents (minimal, non-negative, fits a Lua integer) -> value. */
static int content_uint(const tlv *t, uint64_t *out)
{
    unsigned char der[12];
    if (t->constructed || t->content_len == 0 || t->content_len > 9)
        return 0;
    der[0] = V_ASN1_INTEGER;                     /* re-tag [n] IMPLICIT INTEGER for d2i */
    der[1] = (unsigned char)t->content_len;
    memcpy(der + 2, t->content, t->content_len);
    const unsigned char *p = der;
    ASN1_INTEGER *ai = d2i_ASN1_INTEGER(NULL, &p, (long)(t->content_len + 2));
    int ok = ai != NULL && ASN1_INTEGER_get_uint64(out, ai) == 1 && *out <= (uint64_t)INT64_MAX;
    ASN1_INTEGER_free(ai);
    ERR_clear_error();
    return ok;
}

/* UTCTime / GeneralizedTime TLV -> Unix seconds. */
static int time_value(const tlv *t, int64_t *out)
{
    const unsigned char *p = t->start;
    struct tm tm;
    ASN1_TIME *at = d2i_ASN1_TIME(NULL, &p, (long)t->total);
    int ok = at != NULL && p == t->start + t->total && ASN1_TIME_to_tm(at, &tm) == 1;
    ASN1_TIME_free(at);
    ERR_clear_error();
    if (!ok || tm.tm_year < 70)
        return 0;
    *out = days_from_civil(tm.tm_year + 1900, (unsigned)tm.tm_mon + 1, (unsigned)tm.tm_mday) * 86400
           + tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec;
    return 1;
}

/* ------------------------------------------------------------------ log messages */

enum log_type { LOG_UNKNOWN, LOG_TRANSACTION, LOG_SYSTEM, LOG_AUDIT };
static const char *const log_type_names[] = { "unknown", "transaction", "system", "audit" };

/* A parsed LogMessage: every pointer points into the caller's bytes. */
typedef struct log_msg {
    const unsigned char *tbs;
    size_t tbs_len;
    uint64_t version;
    tlv certified_type;
    enum log_type type;
    int ncert;
    tlv cert[MAX_ELEMENTS];          /* certifiedData: the context-tagged elements, in order */
    tlv serial;
    tlv alg_oid;
    const sig_alg *alg;
    int has_audit;
    tlv audit;
    uint64_t counter;
    tlv time;
    enum time_format time_format;
    int64_t log_time;
    tlv signature;
} log_msg;

static const sig_alg *alg_by_oid(const tlv *oid)
{
    /* ALG_PREFIX holds "30 0c" then the OID TLV without its last byte */
    const unsigned char *want = ALG_PREFIX + 2;
    size_t wn = sizeof ALG_PREFIX - 2;
    if (oid->total != wn + 1 || memcmp(oid->start, want, wn) != 0)
        return NULL;
    for (size_t i = 0; i < NALGS; i++)
        if (sig_algs[i].oid_last == oid->start[wn])
            return &sig_algs[i];
    return NULL;
}

/* Parses the elements after certifiedData (from index i); returns NULL or what is wrong. */
static const char *log_parse_tail(log_msg *m, const tlv *e, int n, int i)
{
    if (i >= n || !tlv_is(&e[i], V_ASN1_UNIVERSAL, V_ASN1_OCTET_STRING, 0))
        return "serialNumber (OCTET STRING) expected";
    m->serial = e[i++];
    if (i >= n || !tlv_is(&e[i], V_ASN1_UNIVERSAL, V_ASN1_SEQUENCE, 1))
        return "signatureAlgorithm (SEQUENCE) expected";
    tlv algs[4];
    int na = tlv_children(&e[i], algs, 4);
    if (na < 1 || !tlv_is(&algs[0], V_ASN1_UNIVERSAL, V_ASN1_OBJECT, 0))
        return "signatureAlgorithm: OBJECT IDENTIFIER expected";
    m->alg_oid = algs[0];
    m->alg = alg_by_oid(&algs[0]);
    i++;
    if (i < n - 1 && tlv_is(&e[i], V_ASN1_UNIVERSAL, V_ASN1_OCTET_STRING, 0)) {
        m->has_audit = 1;                                   /* seAuditData */
        m->audit = e[i++];
    }
    if (i >= n || !tlv_is(&e[i], V_ASN1_UNIVERSAL, V_ASN1_INTEGER, 0) || !content_uint(&e[i], &m->counter))
        return "signatureCounter (non-negative INTEGER) expected";
    i++;
    if (i >= n)
        return "signatureCreationTime expected";
    m->time = e[i];
    if (tlv_is(&e[i], V_ASN1_UNIVERSAL, V_ASN1_INTEGER, 0)) {
        uint64_t t;
        if (!content_uint(&e[i], &t))
            return "signatureCreationTime: bad unixTime";
        m->time_format = TF_UNIX;
        m->log_time = (int64_t)t;
    } else if (tlv_is(&e[i], V_ASN1_UNIVERSAL, V_ASN1_UTCTIME, 0)
               || tlv_is(&e[i], V_ASN1_UNIVERSAL, V_ASN1_GENERALIZEDTIME, 0)) {
        m->time_format = e[i].tag == V_ASN1_UTCTIME ? TF_UTC : TF_GENERALIZED;
        if (!time_value(&e[i], &m->log_time))
            return "signatureCreationTime: bad time";
    } else {
        return "signatureCreationTime: INTEGER, UTCTime or GeneralizedTime expected";
    }
    i++;
    if (i != n - 1 || !tlv_is(&e[i], V_ASN1_UNIVERSAL, V_ASN1_OCTET_STRING, 0))
        return "signatureValue (OCTET STRING) expected as the last element";
    m->signature = e[i];
    /* signed bytes: everything from version up to the signatureValue, as stored */
    m->tbs = e[0].start;
    m->tbs_len = (size_t)(e[i].start - e[0].start);
    return NULL;
}

/* Parses a whole LogMessage; returns NULL or a description of what is malformed. */
static const char *log_parse(const unsigned char *p, size_t n, log_msg *m, tlv *e)
{
    tlv outer;
    memset(m, 0, sizeof *m);
    if (!tlv_read(p, n, 0, &outer) || !tlv_is(&outer, V_ASN1_UNIVERSAL, V_ASN1_SEQUENCE, 1))
        return "not a BER SEQUENCE";
    if (outer.total != n)
        return "trailing bytes after the SEQUENCE";
    int ne = tlv_children(&outer, e, MAX_ELEMENTS + 10);
    if (ne < 0)
        return "bad element encoding";
    if (ne < 7)
        return "too few elements";
    if (!tlv_is(&e[0], V_ASN1_UNIVERSAL, V_ASN1_INTEGER, 0) || !content_uint(&e[0], &m->version))
        return "version (INTEGER) expected";
    if (!tlv_is(&e[1], V_ASN1_UNIVERSAL, V_ASN1_OBJECT, 0))
        return "certifiedDataType (OBJECT IDENTIFIER) expected";
    m->certified_type = e[1];
    if (e[1].total == sizeof OID_CERTIFIED_TX && memcmp(e[1].start, OID_CERTIFIED_TX, sizeof OID_CERTIFIED_TX - 1) == 0
        && e[1].start[sizeof OID_CERTIFIED_TX - 1] >= 1 && e[1].start[sizeof OID_CERTIFIED_TX - 1] <= 3)
        m->type = (enum log_type)e[1].start[sizeof OID_CERTIFIED_TX - 1];
    int i = 2;
    while (i < ne && e[i].cls == V_ASN1_CONTEXT_SPECIFIC) {
        if (m->ncert == MAX_ELEMENTS)
            return "too many certifiedData elements";
        m->cert[m->ncert++] = e[i++];
    }
    return log_parse_tail(m, e, ne, i);
}

/* Pushes the value of a certifiedData element: contents, or the joined OCTET STRING chunks of
 * a constructed one (D-Trust's BER processData).  Sets *style to "der" / "ber-indef" / "ber". */
static void push_cert_value(lua_State *L, const tlv *t, const char **style)
{
    tlv kids[MAX_CHUNKS];
    int nk = t->constructed ? tlv_children(t, kids, MAX_CHUNKS) : -1;
    int all_octets = nk >= 0;
    for (int i = 0; i < nk; i++)
        all_octets = all_octets && tlv_is(&kids[i], V_ASN1_UNIVERSAL, V_ASN1_OCTET_STRING, 0);
    *style = !t->constructed ? "der" : t->indefinite ? "ber-indef" : "ber";
    if (!all_octets) {
        lua_pushlstring(L, (const char *)t->content, t->content_len);
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; i < nk; i++)
        luaL_addlstring(&b, (const char *)kids[i].content, kids[i].content_len);
    luaL_pushresult(&b);
}

static void push_tlv_content(lua_State *L, const tlv *t, const char *name)
{
    lua_pushlstring(L, (const char *)t->content, t->content_len);
    lua_setfield(L, -2, name);
}

/* Names the certifiedData elements of transaction and system logs. */
static const char *cert_field_name(enum log_type type, int tag)
{
    static const char *const tx[] = { "operation_type", "client_id", "process_data", "process_type",
                                      "additional_external_data", "transaction_number",
                                      "additional_internal_data" };
    static const char *const sys[] = { "operation_type", "system_operation_data", "additional_internal_data" };
    if (type == LOG_TRANSACTION && tag >= 0 && tag < 7)
        return tx[tag];
    if (type == LOG_SYSTEM && tag >= 0 && tag < 3)
        return sys[tag];
    return NULL;
}

static void push_certified_data(lua_State *L, const log_msg *m)
{
    lua_createtable(L, m->ncert, 0);                      /* certified_data = { {tag=, value=}, ... } */
    for (int i = 0; i < m->ncert; i++) {
        const char *style;
        lua_createtable(L, 0, 2);
        push_int_field(L, m->cert[i].tag, "tag");
        push_cert_value(L, &m->cert[i], &style);
        lua_setfield(L, -2, "value");
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "certified_data");
    for (int i = 0; i < m->ncert; i++) {
        const char *name = cert_field_name(m->type, m->cert[i].tag);
        const char *style;
        uint64_t v;
        if (name == NULL)
            continue;
        if (m->type == LOG_TRANSACTION && m->cert[i].tag == 5 && content_uint(&m->cert[i], &v)) {
            push_int_field(L, (lua_Integer)v, name);
            continue;
        }
        push_cert_value(L, &m->cert[i], &style);
        lua_setfield(L, -2, name);
        if (m->type == LOG_TRANSACTION && m->cert[i].tag == 2) {
            lua_pushstring(L, style);
            lua_setfield(L, -2, "process_data_style");
        }
    }
}

static void push_oid_text(lua_State *L, const tlv *t, const char *name)
{
    char buf[128];
    const unsigned char *p = t->start;
    ASN1_OBJECT *o = d2i_ASN1_OBJECT(NULL, &p, (long)t->total);
    int ok = o != NULL && OBJ_obj2txt(buf, sizeof buf, o, 1) > 0;
    ASN1_OBJECT_free(o);
    ERR_clear_error();
    if (!ok)
        return;
    lua_pushstring(L, buf);
    lua_setfield(L, -2, name);
}

/* parse_log(bytes) -> table | nil, err */
static int tse_parse_log(lua_State *L)
{
    size_t n;
    const unsigned char *p = (const unsigned char *)luaL_checklstring(L, 1, &n);
    log_msg *m = lua_newuserdatauv(L, sizeof *m, 0);
    tlv *e = lua_newuserdatauv(L, sizeof(tlv) * (MAX_ELEMENTS + 10), 0);
    const char *bad = log_parse(p, n, m, e);
    if (bad != NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "malformed log message: %s", bad);
        return 2;
    }
    lua_createtable(L, 0, 24);
    push_int_field(L, (lua_Integer)m->version, "version");
    push_oid_text(L, &m->certified_type, "certified_data_type");
    lua_pushstring(L, log_type_names[m->type]);
    lua_setfield(L, -2, "log_type");
    push_certified_data(L, m);
    push_tlv_content(L, &m->serial, "serial_number");
    push_oid_text(L, &m->alg_oid, "sig_alg_oid");
    if (m->alg != NULL) {
        lua_pushstring(L, m->alg->name);
        lua_setfield(L, -2, "sig_alg");
    }
    if (m->has_audit)
        push_tlv_content(L, &m->audit, "se_audit_data");
    push_int_field(L, (lua_Integer)m->counter, "signature_counter");
    push_int_field(L, (lua_Integer)m->log_time, "log_time_unix");
    push_iso(L, m->log_time);
    lua_setfield(L, -2, "log_time");
    lua_pushstring(L, time_format_names[m->time_format]);
    lua_setfield(L, -2, "log_time_format");
    push_tlv_content(L, &m->signature, "signature");
    lua_pushlstring(L, (const char *)m->tbs, m->tbs_len);
    lua_setfield(L, -2, "tbs");
    return 1;
}

/* verify_log(bytes, pubkey) -> result */
static int tse_verify_log(lua_State *L)
{
    size_t n, key_len;
    const unsigned char *p = (const unsigned char *)luaL_checklstring(L, 1, &n);
    const unsigned char *key = (const unsigned char *)luaL_checklstring(L, 2, &key_len);
    log_msg *m = lua_newuserdatauv(L, sizeof *m, 0);
    tlv *e = lua_newuserdatauv(L, sizeof(tlv) * (MAX_ELEMENTS + 10), 0);
    result r;
    memset(&r, 0, sizeof r);
    const char *bad = log_parse(p, n, m, e);
    if (bad != NULL) {
        snprintf(r.reason, sizeof r.reason, "malformed log message: %s", bad);
        r.code = E_MALFORMED_LOG;
        result_push(L, &r);
        return 1;
    }
    r.alg = m->alg;
    if (m->alg == NULL) {
        result_fail(&r, FISKALY_E_UNKNOWN_ALG, "unknown algorithm (signatureAlgorithm OID)");
    } else {
        EVP_PKEY **pkey = result_key(L, &r, key, key_len);
        if (*pkey != NULL) {
            if (m->serial.content_len != 32 || memcmp(m->serial.content, r.serial, 32) != 0) {
                result_fail(&r, E_SERIAL_MISMATCH,
                            "serial mismatch: the log's serialNumber is not the SHA-256 of the public key");
            } else {
                const char *msg[1] = { (const char *)m->tbs };
                size_t len[1] = { m->tbs_len };
                const char *style[1] = { NULL };
                verify_candidates(&r, *pkey, m->signature.content, m->signature.content_len, msg, len, style, 1);
            }
            pkeybox_free(pkey);
        }
    }
    result_push(L, &r);
    lua_pushstring(L, log_type_names[m->type]);
    lua_setfield(L, -2, "log_type");
    push_int_field(L, (lua_Integer)m->counter, "signature_counter");
    push_int_field(L, (lua_Integer)m->log_time, "log_time_unix");
    return 1;
}
/* ------------------------------------------------------------------ registration */

static const luaL_Reg tse_funcs[] = {
    { "log_message", tse_log_message },
    { "parse_qr", tse_parse_qr },
    { "verify_qr", tse_verify_qr },
    { "verify_fields", tse_verify_fields },
    { "parse_log", tse_parse_log },
    { "verify_log", tse_verify_log },
    { NULL, NULL },
};

static const luaL_Reg pkeybox_meta[] = {
    { "__gc", pkeybox_close },
    { "__close", pkeybox_close },
    { NULL, NULL },
};

void tse_open(lua_State *L)
{
    luaL_newmetatable(L, PKEYBOX_MT);
    luaL_setfuncs(L, pkeybox_meta, 0);
    lua_pop(L, 1);
    luaL_newlib(L, tse_funcs);
    lua_setfield(L, -2, "tse");
}
