/*
 * fuzz_log.c -- libFuzzer target: core.tse.parse_log and verify_log.
 * Input: 1 byte key length k, k bytes public key, then the log message bytes
 * (the seed corpus pairs every vector log with its TSE key, so mutations reach
 * the signature check as well as the BER parser and the key decoder).
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || (size_t)data[0] + 1 > size)
        return -1;                               /* reject: not in the input format */
    size_t klen = data[0];
    const char *key = (const char *)data + 1;
    const char *msg = key + klen;
    size_t mlen = size - 1 - klen;

    fuzz_push_fn("parse_log");
    lua_pushlstring(fuzz_L, msg, mlen);
    fuzz_call(1, 2, "parse_log");
    if (lua_istable(fuzz_L, -2)) {
        /* the signed bytes are a byte-exact slice of the input */
        lua_getfield(fuzz_L, -2, "tbs");
        size_t tlen = 0;
        const char *tbs = lua_tolstring(fuzz_L, -1, &tlen);
        if (tbs == NULL || tlen >= mlen)
            abort();
        int found = 0;
        for (size_t off = 0; off + tlen <= mlen && !found; off++)
            found = memcmp(msg + off, tbs, tlen) == 0;
        if (!found)
            abort();
    } else if (!(lua_isnil(fuzz_L, -2) && lua_isstring(fuzz_L, -1))) {
        abort();
    }
    lua_settop(fuzz_L, 0);

    fuzz_push_fn("verify_log");
    lua_pushlstring(fuzz_L, msg, mlen);
    lua_pushlstring(fuzz_L, key, klen);
    fuzz_call(2, 1, "verify_log");
    fuzz_check_result("verify_log");
    lua_settop(fuzz_L, 0);
    return 0;
}
