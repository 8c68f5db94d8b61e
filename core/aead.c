/*
 * aead.c -- AES-256-GCM for secrets at rest, added to fiskaly.core.crypto:
 *
 *   crypto.aead_seal(key32, plaintext, aad)  -> nonce(12) || ciphertext || tag(16)
 *   crypto.aead_open(key32, blob, aad)       -> plaintext | nil, err
 *
 * The nonce is 12 random bytes from RAND_bytes.  aad binds a blob to the
 * record it belongs to (e.g. "tss:<id>:admin_puk") so blobs cannot be swapped.
 * A wrong key, a wrong aad or a modified blob all fail authentication; the
 * error message never contains key or plaintext bytes.
 *
 * The EVP_CIPHER_CTX lives in a boxed userdata (fiskaly.crypto.AeadCtx) that
 * is created before the context, so a raise (memory error) cannot leak it.
 */
#include "internal.h"

#include <limits.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define AEAD_CTX_MT "fiskaly.crypto.AeadCtx"
#define AEAD_KEY_LEN 32
#define AEAD_NONCE_LEN 12
#define AEAD_TAG_LEN 16

typedef struct aead_box {
    EVP_CIPHER_CTX *ctx;
} aead_box;

static int aead_box_close(lua_State *L)
{
    aead_box *b = (aead_box *)luaL_checkudata(L, 1, AEAD_CTX_MT);
    if (b->ctx != NULL) {
        EVP_CIPHER_CTX_free(b->ctx);
        b->ctx = NULL;
    }
    return 0;
}

static const luaL_Reg aead_box_meta[] = {
    {"__gc", aead_box_close},
    {"__close", aead_box_close},
    {NULL, NULL}
};

/* Pushes a box holding a fresh EVP_CIPHER_CTX; returns it (ctx NULL on failure). */
static aead_box *aead_box_new(lua_State *L)
{
    aead_box *b = (aead_box *)lua_newuserdatauv(L, sizeof *b, 0);
    b->ctx = NULL;
    luaL_setmetatable(L, AEAD_CTX_MT);
    b->ctx = EVP_CIPHER_CTX_new();
    return b;
}

static void aead_box_free(aead_box *b)
{
    if (b->ctx != NULL) {
        EVP_CIPHER_CTX_free(b->ctx);
        b->ctx = NULL;
    }
}

static const unsigned char *aead_check_key(lua_State *L, int idx)
{
    size_t klen;
    const char *key = luaL_checklstring(L, idx, &klen);
    luaL_argcheck(L, klen == AEAD_KEY_LEN, idx, "key must be 32 bytes");
    return (const unsigned char *)key;
}

static int aead_seal(lua_State *L)
{
    const unsigned char *key = aead_check_key(L, 1);
    size_t plen, alen;
    const char *pt = luaL_checklstring(L, 2, &plen);
    const char *aad = luaL_optlstring(L, 3, "", &alen);
    luaL_argcheck(L, plen <= (size_t)INT_MAX - 64, 2, "plaintext too long");
    luaL_argcheck(L, alen <= (size_t)INT_MAX, 3, "aad too long");

    size_t outlen = AEAD_NONCE_LEN + plen + AEAD_TAG_LEN;
    unsigned char *out = (unsigned char *)lua_newuserdatauv(L, outlen, 0);  /* scratch */
    aead_box *b = aead_box_new(L);
    int len = 0;
    if (b->ctx == NULL)
        return fiskaly_push_openssl_error(L, "aead_seal");
    if (RAND_bytes(out, AEAD_NONCE_LEN) != 1 ||
        EVP_EncryptInit_ex(b->ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(b->ctx, EVP_CTRL_GCM_SET_IVLEN, AEAD_NONCE_LEN, NULL) != 1 ||
        EVP_EncryptInit_ex(b->ctx, NULL, NULL, key, out) != 1 ||
        (alen > 0 && EVP_EncryptUpdate(b->ctx, NULL, &len, (const unsigned char *)aad, (int)alen) != 1) ||
        EVP_EncryptUpdate(b->ctx, out + AEAD_NONCE_LEN, &len, (const unsigned char *)pt, (int)plen) != 1) {
        aead_box_free(b);
        return fiskaly_push_openssl_error(L, "aead_seal");
    }
    int total = len;
    if (EVP_EncryptFinal_ex(b->ctx, out + AEAD_NONCE_LEN + total, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(b->ctx, EVP_CTRL_GCM_GET_TAG, AEAD_TAG_LEN,
                            out + AEAD_NONCE_LEN + plen) != 1) {
        aead_box_free(b);
        return fiskaly_push_openssl_error(L, "aead_seal");
    }
    aead_box_free(b);
    lua_pushlstring(L, (const char *)out, outlen);
    OPENSSL_cleanse(out + AEAD_NONCE_LEN, plen);  /* ciphertext only, but keep scratch clean */
    return 1;
}

static int aead_open_blob(lua_State *L)
{
    const unsigned char *key = aead_check_key(L, 1);
    size_t blen, alen;
    const unsigned char *blob = (const unsigned char *)luaL_checklstring(L, 2, &blen);
    const char *aad = luaL_optlstring(L, 3, "", &alen);
    luaL_argcheck(L, blen <= (size_t)INT_MAX - 64, 2, "blob too long");
    luaL_argcheck(L, alen <= (size_t)INT_MAX, 3, "aad too long");
    if (blen < AEAD_NONCE_LEN + AEAD_TAG_LEN) {
        lua_pushnil(L);
        lua_pushliteral(L, "aead_open: blob too short (truncated or not sealed)");
        return 2;
    }
    size_t clen = blen - AEAD_NONCE_LEN - AEAD_TAG_LEN;
    unsigned char *out = (unsigned char *)lua_newuserdatauv(L, clen + 1, 0);  /* scratch */
    aead_box *b = aead_box_new(L);
    int len = 0;
    if (b->ctx == NULL)
        return fiskaly_push_openssl_error(L, "aead_open");
    unsigned char tag[AEAD_TAG_LEN];
    memcpy(tag, blob + AEAD_NONCE_LEN + clen, AEAD_TAG_LEN);
    if (EVP_DecryptInit_ex(b->ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(b->ctx, EVP_CTRL_GCM_SET_IVLEN, AEAD_NONCE_LEN, NULL) != 1 ||
        EVP_DecryptInit_ex(b->ctx, NULL, NULL, key, blob) != 1 ||
        (alen > 0 && EVP_DecryptUpdate(b->ctx, NULL, &len, (const unsigned char *)aad, (int)alen) != 1) ||
        EVP_DecryptUpdate(b->ctx, out, &len, blob + AEAD_NONCE_LEN, (int)clen) != 1 ||
        EVP_CIPHER_CTX_ctrl(b->ctx, EVP_CTRL_GCM_SET_TAG, AEAD_TAG_LEN, tag) != 1) {
        aead_box_free(b);
        return fiskaly_push_openssl_error(L, "aead_open");
    }
    int total = len;
    if (EVP_DecryptFinal_ex(b->ctx, out + total, &len) != 1) {
        aead_box_free(b);
        OPENSSL_cleanse(out, clen);
        ERR_clear_error();
        lua_pushnil(L);
        lua_pushliteral(L, "aead_open: authentication failed (wrong key, wrong record, or modified data)");
        return 2;
    }
    aead_box_free(b);
    lua_pushlstring(L, (const char *)out, clen);
    OPENSSL_cleanse(out, clen);
    return 1;
}

static const luaL_Reg aead_funcs[] = {
    {"aead_seal", aead_seal},
    {"aead_open", aead_open_blob},
    {NULL, NULL}
};

void aead_open(lua_State *L)
{
    luaL_newmetatable(L, AEAD_CTX_MT);
    luaL_setfuncs(L, aead_box_meta, 0);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "crypto") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "crypto");
    }
    luaL_setfuncs(L, aead_funcs, 0);
    lua_pop(L, 1);
}
