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
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
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

/* A byte string that is not owned: it points into a Lua string anchored on the stack. */
typedef struct bytes {
    const char *p;
    size_t n;
} bytes;

/* The inputs of one transaction log message. */
typedef struct tse_fields {
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
 * Appends the signed bytes of a transaction log message to b.
 * Returns NULL, or a message naming the field that cannot be encoded.
 */
static const char *tbs_build(luaL_Buffer *b, const tse_fields *f)
{
    luaL_addlstring(b, "\x02\x01\x02", 3);                                  /* version 2 */
    luaL_addlstring(b, (const char *)OID_CERTIFIED_TX, sizeof OID_CERTIFIED_TX);
    put_prim(b, 0, V_ASN1_CONTEXT_SPECIFIC, f->operation_type.p, f->operation_type.n);
    put_prim(b, 1, V_ASN1_CONTEXT_SPECIFIC, f->client_id.p, f->client_id.n);
    put_process_data(b, f);
    if (f->has_process_type)
        put_prim(b, 3, V_ASN1_CONTEXT_SPECIFIC, f->process_type.p, f->process_type.n);
    if (f->has_aed)
        put_prim(b, 4, V_ASN1_CONTEXT_SPECIFIC, f->aed.p, f->aed.n);
    if (!put_uint(b, 5, V_ASN1_CONTEXT_SPECIFIC, f->transaction_number))
        return "transaction_number";
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

/*
 * Fills f from the table at index t (raises on misuse).  The strings stay
 * anchored on the stack above t.  If want_serial is 0 the serial is not read.
 */
static void fields_read(lua_State *L, int t, tse_fields *f, int want_serial)
{
    bytes serial;
    memset(f, 0, sizeof *f);
    luaL_checktype(L, t, LUA_TTABLE);
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
    f->signature_counter = field_uint(L, t, "signature_counter");
    uint64_t lt = field_uint(L, t, "log_time");
    if (lt > (uint64_t)INT64_MAX / 2)
        luaL_error(L, "field 'log_time' out of range");
    f->log_time = (int64_t)lt;
    f->time_format = (enum time_format)field_option(L, t, "log_time_format", "unixTime", time_format_names);
    f->pd_style = (enum pd_style)field_option(L, t, "process_data_style", "der", pd_style_names);
    if (f->pd_style == PD_BER_INDEF)
        fields_chunks(L, t, f);
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

/* ------------------------------------------------------------------ registration */

static const luaL_Reg tse_funcs[] = {
    { "log_message", tse_log_message },
    { NULL, NULL },
};

void tse_open(lua_State *L)
{
    luaL_newlib(L, tse_funcs);
    lua_setfield(L, -2, "tse");
}
