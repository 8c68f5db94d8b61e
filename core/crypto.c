/*
 * crypto.c -- fiskaly.core.crypto: digests, hex/base64, randomness, EC keys (fiskaly.crypto.Key), ECDSA.
 */
#include "internal.h"
#include "crypto.h"

#include <ctype.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define KEY_MT "fiskaly.crypto.Key"
#define BIOBOX_MT "fiskaly.crypto.BIOBox"
#define MAX_DER_SIG 160   /* DER ECDSA-Sig-Value of a 384-bit curve is at most 104 bytes */

/* ------------------------------------------------------------------ curves */

static const fiskaly_curve curves[] = {
    { "P-256",           "prime256v1",      32, "SHA256", NID_X9_62_prime256v1 },
    { "brainpoolP256r1", "brainpoolP256r1", 32, "SHA256", NID_brainpoolP256r1 },
    { "P-384",           "secp384r1",       48, "SHA384", NID_secp384r1 },
    { "brainpoolP384r1", "brainpoolP384r1", 48, "SHA384", NID_brainpoolP384r1 },
};
#define NCURVES (sizeof curves / sizeof curves[0])

static const struct { const char *code, *text; } error_texts[] = {
    { FISKALY_E_BAD_KEY,       "malformed public key (neither a raw EC point nor an EC SubjectPublicKeyInfo)" },
    { FISKALY_E_NOT_ON_CURVE,  "point not on any supported curve" },
    { FISKALY_E_BAD_SIGNATURE, "malformed signature (neither plain r||s of the curve's size nor DER)" },
    { FISKALY_E_SIG_MISMATCH,  "signature mismatch" },
    { FISKALY_E_UNKNOWN_ALG,   "unknown algorithm" },
    { FISKALY_E_INTERNAL,      "internal error" },
};

const char *fiskaly_error_text(const char *code)
{
    for (size_t i = 0; i < sizeof error_texts / sizeof error_texts[0]; i++)
        if (strcmp(error_texts[i].code, code) == 0)
            return error_texts[i].text;
    return code;
}

const fiskaly_curve *fiskaly_curve_by_name(const char *name)
{
    for (size_t i = 0; i < NCURVES; i++)
        if (strcmp(curves[i].name, name) == 0)
            return &curves[i];
    return NULL;
}

const fiskaly_curve *fiskaly_curve_of_pkey(const EVP_PKEY *pkey)
{
    char group[64];
    size_t len = 0;
    if (!EVP_PKEY_is_a(pkey, "EC")
        || !EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len)) {
        ERR_clear_error();
        return NULL;
    }
    int nid = OBJ_txt2nid(group);
    for (size_t i = 0; i < NCURVES; i++)
        if (curves[i].nid == nid)
            return &curves[i];
    return NULL;
}

/* ------------------------------------------------------------------ public keys */

int fiskaly_pkey_point(EVP_PKEY *pkey, unsigned char point[FISKALY_MAX_POINT], size_t *point_len)
{
    /* Force the uncompressed form: the TSE serial is SHA-256 over 04||X||Y. */
    if (!EVP_PKEY_set_utf8_string_param(pkey, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                        OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_UNCOMPRESSED)
        || !EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, point,
                                            FISKALY_MAX_POINT, point_len)
        || *point_len < 1 || point[0] != 0x04) {
        ERR_clear_error();
        return 0;
    }
    return 1;
}

/* Key from a raw point on one named group; NULL (queue cleared) if the point is not on it. */
static EVP_PKEY *pubkey_from_point(const fiskaly_curve *c, const unsigned char *pt, size_t len)
{
    char group[32];
    unsigned char buf[FISKALY_MAX_POINT];
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = NULL;

    if (len > sizeof buf || strlen(c->group) >= sizeof group)
        return NULL;
    memcpy(buf, pt, len);                  /* OSSL_PARAM wants non-const buffers */
    strcpy(group, c->group);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, buf, len),
        OSSL_PARAM_construct_end(),
    };
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0
        || EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        goto fail;
    /* Invariant: fromdata (EC_POINT_oct2point) rejects points that are not on the curve, and
     * all four curves have cofactor 1, so an on-curve point other than infinity (which has no
     * 65/97-byte encoding) lies in the prime-order group: no further public-key check needed. */
    EVP_PKEY_CTX_free(ctx);
    return pkey;
fail:
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return NULL;
}

EVP_PKEY *fiskaly_pubkey_decode(const unsigned char *key, size_t len,
                                const fiskaly_curve **curve,
                                unsigned char point[FISKALY_MAX_POINT], size_t *point_len,
                                const char **code)
{
    if ((len == 65 || len == 97) && key[0] == 0x04) {
        for (size_t i = 0; i < NCURVES; i++) {
            if (2 * curves[i].field_len + 1 != len)
                continue;
            EVP_PKEY *pkey = pubkey_from_point(&curves[i], key, len);
            if (pkey != NULL) {
                *curve = &curves[i];
                memcpy(point, key, len);
                *point_len = len;
                return pkey;
            }
        }
        *code = FISKALY_E_NOT_ON_CURVE;
        return NULL;
    }
    if (len > 2 && key[0] == 0x30 && len <= 1024) {
        const unsigned char *p = key;
        EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)len);
        if (pkey == NULL || p != key + len || !EVP_PKEY_is_a(pkey, "EC")) {
            EVP_PKEY_free(pkey);
            ERR_clear_error();
            *code = FISKALY_E_BAD_KEY;
            return NULL;
        }
        const fiskaly_curve *c = fiskaly_curve_of_pkey(pkey);
        if (c == NULL || !fiskaly_pkey_point(pkey, point, point_len)) {
            EVP_PKEY_free(pkey);
            *code = c == NULL ? FISKALY_E_NOT_ON_CURVE : FISKALY_E_BAD_KEY;
            return NULL;
        }
        *curve = c;
        return pkey;
    }
    *code = FISKALY_E_BAD_KEY;
    return NULL;
}

/* ------------------------------------------------------------------ ECDSA */

/* plain r||s (2*flen bytes) -> DER ECDSA-Sig-Value; returns DER length or 0. */
static size_t plain_to_der(const unsigned char *sig, size_t flen, unsigned char der[MAX_DER_SIG])
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)flen, NULL);
    BIGNUM *s = BN_bin2bn(sig + flen, (int)flen, NULL);
    size_t out = 0;
    if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        goto done;
    }
    /* es owns r and s now */
    int n = i2d_ECDSA_SIG(es, NULL);
    if (n > 0 && n <= MAX_DER_SIG) {
        unsigned char *p = der;
        if (i2d_ECDSA_SIG(es, &p) == n)
            out = (size_t)n;
    }
done:
    ECDSA_SIG_free(es);
    ERR_clear_error();
    return out;
}

/* 1 if sig is canonical DER whose r and s fit the curve's field size. */
static int der_sig_ok(const unsigned char *sig, size_t len, size_t flen)
{
    unsigned char re[MAX_DER_SIG];
    const unsigned char *p = sig;
    int ok = 0;
    if (len < 8 || len > MAX_DER_SIG || sig[0] != 0x30)
        return 0;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)len);
    if (es != NULL && p == sig + len) {
        const BIGNUM *r, *s;
        ECDSA_SIG_get0(es, &r, &s);
        unsigned char *q = re;
        ok = (size_t)BN_num_bytes(r) <= flen && (size_t)BN_num_bytes(s) <= flen
             && i2d_ECDSA_SIG(es, &q) == (int)len && memcmp(re, sig, len) == 0;
    }
    ECDSA_SIG_free(es);
    ERR_clear_error();
    return ok;
}

/* 1 verified, 0 mismatch, -1 internal error.  Queue cleared. */
static int digest_verify(EVP_PKEY *pkey, const char *md, const unsigned char *msg, size_t msg_len,
                         const unsigned char *der, size_t der_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = -1;
    if (ctx != NULL && EVP_DigestVerifyInit_ex(ctx, NULL, md, NULL, NULL, pkey, NULL) == 1)
        rc = EVP_DigestVerify(ctx, der, der_len, msg, msg_len) == 1 ? 1 : 0;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

int fiskaly_ecdsa_verify(EVP_PKEY *pkey, const fiskaly_curve *curve, const char *md,
                         const unsigned char *msg, size_t msg_len,
                         const unsigned char *sig, size_t sig_len,
                         const char **code, const char **encoding)
{
    unsigned char der[MAX_DER_SIG];
    int rc = 0;
    int tried = 0;
    if (sig_len == 2 * curve->field_len) {
        size_t n = plain_to_der(sig, curve->field_len, der);
        if (n == 0) {
            *code = FISKALY_E_INTERNAL;
            return 0;
        }
        tried = 1;
        rc = digest_verify(pkey, md, msg, msg_len, der, n);
        if (rc == 1) {
            if (encoding) *encoding = "plain";
            return 1;
        }
    }
    /* A DER signature can, rarely, have exactly 2*flen bytes too: try it as DER as well. */
    if (der_sig_ok(sig, sig_len, curve->field_len)) {
        tried = 1;
        rc = digest_verify(pkey, md, msg, msg_len, sig, sig_len);
        if (rc == 1) {
            if (encoding) *encoding = "der";
            return 1;
        }
    }
    *code = !tried ? FISKALY_E_BAD_SIGNATURE : rc < 0 ? FISKALY_E_INTERNAL : FISKALY_E_SIG_MISMATCH;
    return 0;
}

/* ------------------------------------------------------------------ base64 */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int fiskaly_b64_decode(const char *s, size_t n, unsigned char *out, size_t *out_len)
{
    size_t pad = 0;
    if (n % 4 != 0)
        return 0;
    if (n == 0) {
        *out_len = 0;
        return 1;
    }
    if (s[n - 1] == '=') pad++;
    if (s[n - 2] == '=') pad++;
    for (size_t i = 0; i < n - pad; i++)
        if (b64_value((unsigned char)s[i]) < 0)
            return 0;
    /* Canonical form: the bits below the last data character's payload are zero,
     * so every encoded byte string has exactly one accepted spelling. */
    if (pad == 1 && (b64_value((unsigned char)s[n - 2]) & 0x03) != 0) return 0;
    if (pad == 2 && (b64_value((unsigned char)s[n - 3]) & 0x0f) != 0) return 0;
    if (n > (size_t)0x3fffffff)
        return 0;
    int m = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    if (m < 0 || (size_t)m != 3 * (n / 4)) {
        ERR_clear_error();
        return 0;
    }
    *out_len = (size_t)m - pad;
    return 1;
}

/* ------------------------------------------------------------------ BIO box */

/*
 * A userdata owning a memory BIO, so that Lua errors raised while it is
 * alive (e.g. out of memory in lua_pushlstring) cannot leak it.
 */
static int biobox_close(lua_State *L)
{
    BIO **box = luaL_checkudata(L, 1, BIOBOX_MT);
    if (*box != NULL) {
        BIO_free(*box);
        *box = NULL;
    }
    return 0;
}

static BIO *biobox_new(lua_State *L)
{
    BIO **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, BIOBOX_MT);
    *box = BIO_new(BIO_s_mem());
    return *box;
}

/* Replace the box on top of the stack by the BIO's contents as a string. */
static void biobox_push_contents(lua_State *L)
{
    BIO **box = luaL_checkudata(L, -1, BIOBOX_MT);
    char *data = NULL;
    long n = BIO_get_mem_data(*box, &data);
    lua_pushlstring(L, data, n > 0 ? (size_t)n : 0);
    BIO_free(*box);
    *box = NULL;
    lua_remove(L, -2);
}

/* ------------------------------------------------------------------ digests, encodings */

static int crypto_digest(lua_State *L, const EVP_MD *md)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!EVP_Digest(s, n, out, &len, md, NULL))
        return fiskaly_push_openssl_error(L, "digest");
    lua_pushlstring(L, (const char *)out, len);
    return 1;
}

static int crypto_sha256(lua_State *L) { return crypto_digest(L, EVP_sha256()); }
static int crypto_sha384(lua_State *L) { return crypto_digest(L, EVP_sha384()); }

static int crypto_hex(lua_State *L)
{
    static const char digits[] = "0123456789abcdef";
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, 2 * n);
    for (size_t i = 0; i < n; i++) {
        p[2 * i] = digits[s[i] >> 4];
        p[2 * i + 1] = digits[s[i] & 0x0f];
    }
    luaL_pushresultsize(&b, 2 * n);
    return 1;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int crypto_unhex(lua_State *L)
{
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    if (n % 2 != 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "unhex: odd number of hex digits");
        return 2;
    }
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, n / 2);
    for (size_t i = 0; i < n; i += 2) {
        int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
        if (hi < 0 || lo < 0) {
            lua_pushnil(L);
            lua_pushfstring(L, "unhex: invalid hex digit at position %d", (int)(i + (hi < 0 ? 1 : 2)));
            return 2;
        }
        p[i / 2] = (char)(hi << 4 | lo);
    }
    luaL_pushresultsize(&b, n / 2);
    return 1;
}

static int crypto_b64encode(lua_State *L)
{
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    luaL_argcheck(L, n <= 0x30000000, 1, "string too long");
    size_t out = 4 * ((n + 2) / 3);
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, out + 1);   /* EVP_EncodeBlock writes a NUL */
    int m = EVP_EncodeBlock((unsigned char *)p, s, (int)n);
    luaL_pushresultsize(&b, (size_t)m);
    return 1;
}

static int crypto_b64decode(lua_State *L)
{
    size_t n, out = 0;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, 3 * (n / 4) + 1);
    if (!fiskaly_b64_decode(s, n, (unsigned char *)p, &out)) {
        lua_pushnil(L);
        lua_pushliteral(L, "b64decode: invalid base64");
        return 2;
    }
    luaL_pushresultsize(&b, out);
    return 1;
}

static int crypto_random_bytes(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 1 && n <= 65536, 1, "must be between 1 and 65536");
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, (size_t)n);
    if (RAND_bytes((unsigned char *)p, (int)n) != 1)
        return fiskaly_push_openssl_error(L, "random_bytes");
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

static int crypto_uuid4(lua_State *L)
{
    unsigned char u[16];
    char out[37];
    if (RAND_bytes(u, sizeof u) != 1)
        return fiskaly_push_openssl_error(L, "uuid4");
    u[6] = (unsigned char)((u[6] & 0x0f) | 0x40);   /* version 4 */
    u[8] = (unsigned char)((u[8] & 0x3f) | 0x80);   /* RFC 4122 variant */
    static const char digits[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = digits[u[i] >> 4];
        out[o++] = digits[u[i] & 0x0f];
    }
    lua_pushlstring(L, out, o);
    return 1;
}

/* ------------------------------------------------------------------ Key */

typedef struct key_ud {
    EVP_PKEY *pkey;              /* owned; NULL once closed */
    const fiskaly_curve *curve;
} key_ud;

static key_ud *check_key(lua_State *L, int idx)
{
    key_ud *k = luaL_checkudata(L, idx, KEY_MT);
    if (k->pkey == NULL)
        luaL_error(L, "attempt to use a closed " KEY_MT);
    return k;
}

/* Push an empty Key userdata (resource acquired afterwards, so errors cannot leak). */
static key_ud *key_new(lua_State *L)
{
    key_ud *k = lua_newuserdatauv(L, sizeof *k, 0);
    k->pkey = NULL;
    k->curve = NULL;
    luaL_setmetatable(L, KEY_MT);
    return k;
}

static int key_close(lua_State *L)
{
    key_ud *k = luaL_checkudata(L, 1, KEY_MT);
    if (k->pkey != NULL) {
        EVP_PKEY_free(k->pkey);
        k->pkey = NULL;
    }
    return 0;
}

static int key_tostring(lua_State *L)
{
    key_ud *k = luaL_checkudata(L, 1, KEY_MT);
    if (k->pkey == NULL)
        lua_pushfstring(L, KEY_MT " (closed)");
    else
        lua_pushfstring(L, KEY_MT " %s (%p)", k->curve->name, (void *)k);
    return 1;
}

static int key_curve(lua_State *L)
{
    lua_pushstring(L, check_key(L, 1)->curve->name);
    return 1;
}

static int key_public_point(lua_State *L)
{
    unsigned char pt[FISKALY_MAX_POINT];
    size_t n = 0;
    if (!fiskaly_pkey_point(check_key(L, 1)->pkey, pt, &n))
        return fiskaly_push_openssl_error(L, "public_point");
    lua_pushlstring(L, (const char *)pt, n);
    return 1;
}

static int key_public_spki(lua_State *L)
{
    unsigned char der[256];
    key_ud *k = check_key(L, 1);
    int n = i2d_PUBKEY(k->pkey, NULL);
    if (n <= 0 || n > (int)sizeof der)
        return fiskaly_push_openssl_error(L, "public_spki");
    unsigned char *p = der;
    if (i2d_PUBKEY(k->pkey, &p) != n)
        return fiskaly_push_openssl_error(L, "public_spki");
    lua_pushlstring(L, (const char *)der, (size_t)n);
    return 1;
}

static int key_private_pem(lua_State *L)
{
    key_ud *k = check_key(L, 1);
    BIO *bio = biobox_new(L);
    if (bio == NULL || !PEM_write_bio_PrivateKey(bio, k->pkey, NULL, NULL, 0, NULL, NULL))
        return fiskaly_push_openssl_error(L, "private_pem");
    biobox_push_contents(L);
    return 1;
}

static int key_sign(lua_State *L)
{
    key_ud *k = check_key(L, 1);
    size_t n;
    const char *msg = luaL_checklstring(L, 2, &n);
    unsigned char der[MAX_DER_SIG];
    unsigned char plain[2 * FISKALY_MAX_FIELD];
    size_t der_len = sizeof der;
    size_t flen = k->curve->field_len;
    int ok = 0;

    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx != NULL && EVP_DigestSignInit_ex(ctx, NULL, k->curve->md, NULL, NULL, k->pkey, NULL) == 1
        && EVP_DigestSign(ctx, der, &der_len, (const unsigned char *)msg, n) == 1) {
        const unsigned char *p = der;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
        if (es != NULL) {
            const BIGNUM *r, *s;
            ECDSA_SIG_get0(es, &r, &s);
            ok = BN_bn2binpad(r, plain, (int)flen) == (int)flen
                 && BN_bn2binpad(s, plain + flen, (int)flen) == (int)flen;
            ECDSA_SIG_free(es);
        }
    }
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return fiskaly_push_openssl_error(L, "sign");
    lua_pushlstring(L, (const char *)plain, 2 * flen);
    return 1;
}

/* Adds extension nid=value to a self-signed certificate. */
static int cert_add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

/* Fill and sign a self-signed X.509v3 certificate; returns 1 on success. */
static int cert_build(X509 *x, EVP_PKEY *pkey, const fiskaly_curve *c, const char *cn, long days)
{
    unsigned char rnd[16];
    X509_NAME *name = X509_get_subject_name(x);
    BIGNUM *bn = NULL;
    int ok = RAND_bytes(rnd, sizeof rnd) == 1;
    rnd[0] &= 0x7f;                                  /* positive serial */
    ok = ok && (bn = BN_bin2bn(rnd, sizeof rnd, NULL)) != NULL
         && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL
         && X509_set_version(x, X509_VERSION_3)
         && X509_gmtime_adj(X509_getm_notBefore(x), 0) != NULL
         && X509_time_adj_ex(X509_getm_notAfter(x), (int)days, 0, NULL) != NULL
         && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0)
         && X509_set_issuer_name(x, name)
         && X509_set_pubkey(x, pkey)
         && cert_add_ext(x, NID_basic_constraints, "critical,CA:FALSE")
         && cert_add_ext(x, NID_key_usage, "critical,digitalSignature")
         && cert_add_ext(x, NID_subject_key_identifier, "hash")
         && X509_sign(x, pkey, EVP_get_digestbyname(c->md)) > 0;
    BN_free(bn);
    return ok;
}

static int key_certificate(lua_State *L)
{
    key_ud *k = check_key(L, 1);
    const char *cn = luaL_checkstring(L, 2);
    lua_Integer days = luaL_optinteger(L, 3, 365);
    luaL_argcheck(L, days >= 1 && days <= 36500, 3, "days must be between 1 and 36500");
    BIO *bio = biobox_new(L);
    X509 *x = X509_new();
    int ok = bio != NULL && x != NULL && cert_build(x, k->pkey, k->curve, cn, (long)days)
             && PEM_write_bio_X509(bio, x);
    X509_free(x);
    if (!ok)
        return fiskaly_push_openssl_error(L, "certificate");
    biobox_push_contents(L);
    return 1;
}

static int crypto_generate_key(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const fiskaly_curve *c = fiskaly_curve_by_name(name);
    if (c == NULL)
        return luaL_argerror(L, 1, "curve must be P-256, brainpoolP256r1, P-384 or brainpoolP384r1");
    key_ud *k = key_new(L);
    k->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", c->group);
    if (k->pkey == NULL)
        return fiskaly_push_openssl_error(L, "generate_key");
    k->curve = c;
    return 1;
}

static int crypto_load_key(lua_State *L)
{
    size_t n;
    const char *pem = luaL_checklstring(L, 1, &n);
    luaL_argcheck(L, n <= 0x100000, 1, "PEM too long");
    key_ud *k = key_new(L);
    BIO *bio = BIO_new_mem_buf(pem, (int)n);
    if (bio != NULL)
        k->pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (k->pkey == NULL)
        return fiskaly_push_openssl_error(L, "load_key");
    k->curve = fiskaly_curve_of_pkey(k->pkey);
    if (k->curve == NULL) {
        EVP_PKEY_free(k->pkey);
        k->pkey = NULL;
        ERR_clear_error();
        lua_pushnil(L);
        lua_pushliteral(L, "load_key: not an EC key on P-256, brainpoolP256r1, P-384 or brainpoolP384r1");
        return 2;
    }
    return 1;
}

/* ------------------------------------------------------------------ certificates */

/* What certificate_info reports, copied out of the X509 before Lua is touched. */
typedef struct cert_fields {
    const fiskaly_curve *curve;
    unsigned char point[FISKALY_MAX_POINT];
    size_t point_len;
    unsigned char spki[256];
    size_t spki_len;
    char serial[2 * 64 + 1];           /* hex */
    char subject[512];                 /* RFC 2253, truncated if longer */
    char issuer[512];
    int has_validity;
    int64_t not_before, not_after;     /* Unix seconds */
} cert_fields;

/* Reads a PEM or DER certificate; NULL (queue cleared) if it is neither. */
static X509 *cert_read(const char *data, size_t n)
{
    X509 *x = NULL;
    if (n > 0 && data[0] == 0x30) {
        const unsigned char *p = (const unsigned char *)data;
        x = d2i_X509(NULL, &p, (long)n);
        if (x != NULL && p != (const unsigned char *)data + n) {
            X509_free(x);
            x = NULL;
        }
    } else {
        BIO *bio = BIO_new_mem_buf(data, (int)n);
        if (bio != NULL)
            x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        BIO_free(bio);
    }
    ERR_clear_error();
    return x;
}

static void name_to_buf(const X509_NAME *name, char *buf, size_t size)
{
    BIO *bio = BIO_new(BIO_s_mem());
    int len = 0;
    if (bio != NULL && X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0)
        len = BIO_read(bio, buf, (int)size - 1);
    buf[len > 0 ? len : 0] = 0;
    BIO_free(bio);
}

static int time_to_unix(const ASN1_TIME *t, int64_t *out)
{
    int days = 0, secs = 0;
    ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
    int ok = epoch != NULL && ASN1_TIME_diff(&days, &secs, epoch, t);
    ASN1_TIME_free(epoch);
    *out = (int64_t)days * 86400 + secs;
    return ok;
}

/* Fills cf from x; returns 0 if the key is not EC on a supported curve. */
static int cert_extract(X509 *x, cert_fields *cf)
{
    EVP_PKEY *pkey = X509_get0_pubkey(x);             /* owned by x */
    int spki_len;
    cf->curve = pkey != NULL ? fiskaly_curve_of_pkey(pkey) : NULL;
    if (cf->curve == NULL || !fiskaly_pkey_point(pkey, cf->point, &cf->point_len)
        || (spki_len = i2d_PUBKEY(pkey, NULL)) <= 0 || spki_len > (int)sizeof cf->spki)
        return 0;
    unsigned char *sp = cf->spki;
    cf->spki_len = (size_t)i2d_PUBKEY(pkey, &sp);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    if (hex != NULL && strlen(hex) < sizeof cf->serial)
        strcpy(cf->serial, hex);
    OPENSSL_free(hex);
    BN_free(bn);
    name_to_buf(X509_get_subject_name(x), cf->subject, sizeof cf->subject);
    name_to_buf(X509_get_issuer_name(x), cf->issuer, sizeof cf->issuer);
    cf->has_validity = time_to_unix(X509_get0_notBefore(x), &cf->not_before)
                       && time_to_unix(X509_get0_notAfter(x), &cf->not_after);
    return 1;
}

/*
 * certificate_info(pem_or_der) -> { public_key = raw point, public_spki, curve, subject,
 * issuer, serial (hex), not_before, not_after } | nil, err.  The certificate's own
 * signature is not checked here (chain validation is a separate step).
 */
static int crypto_certificate_info(lua_State *L)
{
    size_t n;
    const char *data = luaL_checklstring(L, 1, &n);
    luaL_argcheck(L, n <= 0x100000, 1, "certificate too long");
    cert_fields *cf = lua_newuserdatauv(L, sizeof *cf, 0);    /* plain memory, owned by Lua */
    memset(cf, 0, sizeof *cf);
    X509 *x = cert_read(data, n);
    int ok = x != NULL && cert_extract(x, cf);
    X509_free(x);
    ERR_clear_error();
    if (!ok) {
        lua_pushnil(L);
        lua_pushstring(L, x == NULL ? "certificate_info: not a PEM or DER X.509 certificate"
                                    : "certificate_info: not an EC key on a supported curve");
        return 2;
    }
    lua_createtable(L, 0, 8);
    lua_pushlstring(L, (const char *)cf->point, cf->point_len);
    lua_setfield(L, -2, "public_key");
    lua_pushlstring(L, (const char *)cf->spki, cf->spki_len);
    lua_setfield(L, -2, "public_spki");
    lua_pushstring(L, cf->curve->name);
    lua_setfield(L, -2, "curve");
    lua_pushstring(L, cf->serial);
    lua_setfield(L, -2, "serial");
    lua_pushstring(L, cf->subject);
    lua_setfield(L, -2, "subject");
    lua_pushstring(L, cf->issuer);
    lua_setfield(L, -2, "issuer");
    if (cf->has_validity) {
        lua_pushinteger(L, (lua_Integer)cf->not_before);
        lua_setfield(L, -2, "not_before");
        lua_pushinteger(L, (lua_Integer)cf->not_after);
        lua_setfield(L, -2, "not_after");
    }
    return 1;
}

/* verify(pubkey, msg, sig, hash) -> true, curve | false, reason */
static int crypto_verify(lua_State *L)
{
    static const char *const hashes[] = { "SHA224", "SHA256", "SHA384", "SHA512", NULL };
    size_t klen, mlen, slen;
    const unsigned char *key = (const unsigned char *)luaL_checklstring(L, 1, &klen);
    const unsigned char *msg = (const unsigned char *)luaL_checklstring(L, 2, &mlen);
    const unsigned char *sig = (const unsigned char *)luaL_checklstring(L, 3, &slen);
    const char *md = hashes[luaL_checkoption(L, 4, NULL, hashes)];
    const fiskaly_curve *c = NULL;
    const char *code = FISKALY_E_INTERNAL;
    unsigned char pt[FISKALY_MAX_POINT];
    size_t ptlen = 0;

    EVP_PKEY *pkey = fiskaly_pubkey_decode(key, klen, &c, pt, &ptlen, &code);
    int ok = pkey != NULL && fiskaly_ecdsa_verify(pkey, c, md, msg, mlen, sig, slen, &code, NULL);
    EVP_PKEY_free(pkey);
    lua_pushboolean(L, ok);
    lua_pushstring(L, ok ? c->name : fiskaly_error_text(code));
    return 2;
}

/* ------------------------------------------------------------------ issuing certificates */

/* Adds extension nid=value; issuer (may equal x) supplies the authority key id. */
static int cert_add_ext_issued(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

/* Each SAN entry: "DNS:<name>" or "IP:<address>" of harmless characters only. */
static int san_entry_ok(const char *s, size_t n)
{
    size_t skip;
    if (n > 4 && memcmp(s, "DNS:", 4) == 0)
        skip = 4;
    else if (n > 3 && memcmp(s, "IP:", 3) == 0)
        skip = 3;
    else
        return 0;
    if (n - skip > 253)
        return 0;
    for (size_t i = skip; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '.' || c == '-' || c == ':' || c == '*'))
            return 0;
    }
    return 1;
}

typedef struct issue_args {
    EVP_PKEY *subject;           /* borrowed from the Key userdata */
    EVP_PKEY *issuer_key;        /* borrowed */
    const fiskaly_curve *issuer_curve;
    const char *issuer_pem;      /* NULL: self-signed */
    size_t issuer_pem_len;
    const char *cn;
    const char *san;             /* "DNS:a,IP:b" or NULL */
    long days;
    int ca;
} issue_args;

/* Builds and signs the certificate into bio; returns 1, or 0 with a reason
 * (queue left for the caller) or with *why set (queue clear). */
static int cert_issue(const issue_args *a, BIO *bio, const char **why)
{
    unsigned char rnd[16];
    X509 *x = X509_new();
    X509 *issuer = NULL;
    BIGNUM *bn = NULL;
    int ok = x != NULL;
    *why = NULL;
    if (ok && a->issuer_pem != NULL) {
        issuer = cert_read(a->issuer_pem, a->issuer_pem_len);
        if (issuer == NULL) {
            *why = "issue_certificate: issuer_cert is not a PEM or DER X.509 certificate";
            ok = 0;
        } else if (X509_check_private_key(issuer, a->issuer_key) != 1) {
            ERR_clear_error();
            *why = "issue_certificate: issuer_key does not belong to issuer_cert";
            ok = 0;
        }
    }
    ok = ok && RAND_bytes(rnd, sizeof rnd) == 1;
    rnd[0] &= 0x7f;                                  /* positive serial */
    X509_NAME *name = ok ? X509_get_subject_name(x) : NULL;
    ok = ok && (bn = BN_bin2bn(rnd, sizeof rnd, NULL)) != NULL
         && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL
         && X509_set_version(x, X509_VERSION_3)
         && X509_gmtime_adj(X509_getm_notBefore(x), -60) != NULL
         && X509_time_adj_ex(X509_getm_notAfter(x), (int)a->days, 0, NULL) != NULL
         && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)a->cn, -1, -1, 0)
         && X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name)
         && X509_set_pubkey(x, a->subject)
         && cert_add_ext_issued(x, x, NID_subject_key_identifier, "hash");
    if (ok && a->ca)
        ok = cert_add_ext_issued(x, x, NID_basic_constraints, "critical,CA:TRUE")
             && cert_add_ext_issued(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    else if (ok)
        ok = cert_add_ext_issued(x, x, NID_basic_constraints, "critical,CA:FALSE")
             && cert_add_ext_issued(x, x, NID_key_usage, "critical,digitalSignature");
    if (ok && a->san != NULL)
        ok = cert_add_ext_issued(x, x, NID_subject_alt_name, a->san)
             && (a->ca || cert_add_ext_issued(x, x, NID_ext_key_usage, "serverAuth"));
    if (ok && issuer != NULL)
        ok = cert_add_ext_issued(x, issuer, NID_authority_key_identifier, "keyid:always");
    ok = ok && X509_sign(x, a->issuer_key, EVP_get_digestbyname(a->issuer_curve->md)) > 0
         && PEM_write_bio_X509(bio, x);
    BN_free(bn);
    X509_free(issuer);
    X509_free(x);
    return ok;
}

/*
 * issue_certificate{ key =, common_name =, days = 365, ca = false, san = {...},
 *                    issuer_key = key, issuer_cert = pem } -> PEM | nil, err
 */
static int crypto_issue_certificate(lua_State *L)
{
    issue_args a;
    memset(&a, 0, sizeof a);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);

    lua_getfield(L, 1, "key");                       /* 2 */
    a.subject = check_key(L, 2)->pkey;
    lua_getfield(L, 1, "common_name");               /* 3 */
    if (lua_type(L, 3) != LUA_TSTRING)
        return luaL_error(L, "issue_certificate: common_name must be a string");
    a.cn = lua_tostring(L, 3);
    luaL_argcheck(L, a.cn[0] != '\0' && strlen(a.cn) <= 64, 1, "common_name must be 1..64 bytes");
    lua_getfield(L, 1, "days");                      /* 4 */
    lua_Integer days = luaL_optinteger(L, 4, 365);
    luaL_argcheck(L, days >= 1 && days <= 36500, 1, "days must be between 1 and 36500");
    a.days = (long)days;
    lua_getfield(L, 1, "ca");                        /* 5 */
    a.ca = lua_toboolean(L, 5);
    lua_getfield(L, 1, "issuer_key");                /* 6 */
    if (lua_isnil(L, 6)) {
        key_ud *k = check_key(L, 2);
        a.issuer_key = k->pkey;
        a.issuer_curve = k->curve;
    } else {
        key_ud *k = check_key(L, 6);
        a.issuer_key = k->pkey;
        a.issuer_curve = k->curve;
    }
    lua_getfield(L, 1, "issuer_cert");               /* 7 */
    if (!lua_isnil(L, 7)) {
        if (lua_type(L, 7) != LUA_TSTRING)
            return luaL_error(L, "issue_certificate: issuer_cert must be a PEM string");
        a.issuer_pem = lua_tolstring(L, 7, &a.issuer_pem_len);
        luaL_argcheck(L, a.issuer_pem_len <= 0x100000, 1, "issuer_cert too long");
    } else if (!lua_isnil(L, 6)) {
        return luaL_error(L, "issue_certificate: issuer_key needs issuer_cert");
    }
    lua_getfield(L, 1, "san");                       /* 8 */
    if (!lua_isnil(L, 8)) {
        luaL_checktype(L, 8, LUA_TTABLE);
        lua_Integer n = luaL_len(L, 8);
        luaL_argcheck(L, n >= 1 && n <= 32, 1, "san must list 1..32 entries");
        luaL_Buffer b;
        luaL_buffinit(L, &b);                        /* buffer at 9 (maybe) */
        for (lua_Integer i = 1; i <= n; i++) {
            size_t len;
            const char *e = lua_geti(L, 8, i) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (e == NULL || !san_entry_ok(e, len))
                return luaL_error(L, "issue_certificate: san entries must be \"DNS:<name>\" or \"IP:<address>\"");
            if (i > 1)
                luaL_addchar(&b, ',');
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
        a.san = lua_tostring(L, -1);
    }

    BIO *bio = biobox_new(L);
    const char *why = NULL;
    if (bio == NULL || !cert_issue(&a, bio, &why)) {
        if (why != NULL) {
            lua_pushnil(L);
            lua_pushstring(L, why);
            return 2;
        }
        return fiskaly_push_openssl_error(L, "issue_certificate");
    }
    biobox_push_contents(L);
    return 1;
}

/* ------------------------------------------------------------------ registration */

static const luaL_Reg key_methods[] = {
    { "curve", key_curve },
    { "public_point", key_public_point },
    { "public_spki", key_public_spki },
    { "private_pem", key_private_pem },
    { "sign", key_sign },
    { "certificate", key_certificate },
    { "close", key_close },
    { NULL, NULL },
};

static const luaL_Reg key_meta[] = {
    { "__gc", key_close },
    { "__close", key_close },
    { "__tostring", key_tostring },
    { NULL, NULL },
};

static const luaL_Reg biobox_meta[] = {
    { "__gc", biobox_close },
    { "__close", biobox_close },
    { NULL, NULL },
};

static const luaL_Reg crypto_funcs[] = {
    { "sha256", crypto_sha256 },
    { "sha384", crypto_sha384 },
    { "hex", crypto_hex },
    { "unhex", crypto_unhex },
    { "b64encode", crypto_b64encode },
    { "b64decode", crypto_b64decode },
    { "random_bytes", crypto_random_bytes },
    { "uuid4", crypto_uuid4 },
    { "generate_key", crypto_generate_key },
    { "load_key", crypto_load_key },
    { "verify", crypto_verify },
    { "certificate_info", crypto_certificate_info },
    { "issue_certificate", crypto_issue_certificate },
    { NULL, NULL },
};

void crypto_open(lua_State *L)
{
    luaL_newmetatable(L, KEY_MT);
    luaL_setfuncs(L, key_meta, 0);
    luaL_newlib(L, key_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newmetatable(L, BIOBOX_MT);
    luaL_setfuncs(L, biobox_meta, 0);
    lua_pop(L, 1);

    luaL_newlib(L, crypto_funcs);
    lua_setfield(L, -2, "crypto");
}
