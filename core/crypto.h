/*
 * crypto.h -- EC curve, public-key, ECDSA and base64 helpers shared by crypto.c and tse.c.
 * Everything here is hidden (the targets build with -fvisibility=hidden).
 * None of these functions touch the Lua state; failures are reported as
 * one of the FISKALY_E_* codes below and always leave the OpenSSL error queue empty.
 */
#ifndef FISKALY_CRYPTO_H
#define FISKALY_CRYPTO_H

#include <stddef.h>
#include <openssl/evp.h>

#define FISKALY_MAX_POINT 97     /* 04 || X || Y on a 384-bit curve */
#define FISKALY_MAX_FIELD 48

typedef struct fiskaly_curve {
    const char *name;    /* our name: "P-256", "brainpoolP256r1", "P-384", "brainpoolP384r1" */
    const char *group;   /* OpenSSL group name */
    size_t field_len;    /* bytes per coordinate / per signature half: 32 or 48 */
    const char *md;      /* digest Key:sign uses: "SHA256" or "SHA384" */
    int nid;             /* OpenSSL NID of the group */
} fiskaly_curve;

/* Failure codes (stable strings, also exposed to Lua as result.code). */
#define FISKALY_E_BAD_KEY        "BAD_KEY"         /* not a raw point nor an EC SPKI */
#define FISKALY_E_NOT_ON_CURVE   "NOT_ON_CURVE"    /* point not on any supported curve */
#define FISKALY_E_BAD_SIGNATURE  "BAD_SIGNATURE"   /* wrong length / malformed DER */
#define FISKALY_E_SIG_MISMATCH   "SIGNATURE_MISMATCH"
#define FISKALY_E_UNKNOWN_ALG    "UNKNOWN_ALGORITHM"
#define FISKALY_E_INTERNAL       "INTERNAL"

/* Human-readable text for a FISKALY_E_* code. */
const char *fiskaly_error_text(const char *code);

const fiskaly_curve *fiskaly_curve_by_name(const char *name);
const fiskaly_curve *fiskaly_curve_of_pkey(const EVP_PKEY *pkey);

/*
 * Decode a public key given as a raw uncompressed point (65/97 bytes, 04||X||Y)
 * or as DER SubjectPublicKeyInfo.  For a raw point the curve is found by
 * trying each supported curve of that size.  On success returns the key
 * (caller frees), sets *curve, and copies the raw uncompressed point to
 * point/point_len.  On failure returns NULL and sets *code.
 */
EVP_PKEY *fiskaly_pubkey_decode(const unsigned char *key, size_t len,
                                const fiskaly_curve **curve,
                                unsigned char point[FISKALY_MAX_POINT], size_t *point_len,
                                const char **code);

/* Raw uncompressed point of a key; returns 0 on failure. */
int fiskaly_pkey_point(EVP_PKEY *pkey, unsigned char point[FISKALY_MAX_POINT], size_t *point_len);

/*
 * ECDSA verification of msg (hashed with md: "SHA256", "SHA384", ...).
 * sig is plain r||s (exactly 2*field_len bytes) or DER ECDSA-Sig-Value.
 * Returns 1 if the signature verified; 0 otherwise with *code set.
 * *encoding (may be NULL) receives "plain" or "der".
 */
int fiskaly_ecdsa_verify(EVP_PKEY *pkey, const fiskaly_curve *curve, const char *md,
                         const unsigned char *msg, size_t msg_len,
                         const unsigned char *sig, size_t sig_len,
                         const char **code, const char **encoding);

/*
 * Strict standard base64 (with padding, no whitespace, canonical trailing bits).
 * out must hold at least 3 * (n / 4) bytes.  Returns 1 and sets *out_len,
 * or 0 on malformed input.
 */
int fiskaly_b64_decode(const char *s, size_t n, unsigned char *out, size_t *out_len);

#endif
