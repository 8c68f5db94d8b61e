/* fuzz_qr.c -- libFuzzer target: core.tse.parse_qr and verify_qr on arbitrary strings. */
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
    /* parse_qr: a table, or nil plus a message naming the field */
    fuzz_push_fn("parse_qr");
    lua_pushlstring(fuzz_L, (const char *)data, size);
    fuzz_call(1, 2, "parse_qr");
    if (!lua_istable(fuzz_L, -2) && !(lua_isnil(fuzz_L, -2) && lua_isstring(fuzz_L, -1)))
        abort();
    lua_settop(fuzz_L, 0);

    fuzz_push_fn("verify_qr");
    lua_pushlstring(fuzz_L, (const char *)data, size);
    fuzz_call(1, 1, "verify_qr");
    fuzz_check_result("verify_qr");
    lua_settop(fuzz_L, 0);
    return 0;
}
