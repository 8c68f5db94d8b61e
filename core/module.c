/*
 * module.c -- fiskaly.core: aggregates the per-type C files into one module.
 */
#include "internal.h"

#include <openssl/err.h>
#include <stdio.h>

int fiskaly_push_openssl_error(lua_State *L, const char *prefix)
{
    char buf[256];
    unsigned long e = ERR_get_error();  /* oldest error: the root cause */
    if (e != 0)
        ERR_error_string_n(e, buf, sizeof buf);
    else
        snprintf(buf, sizeof buf, "unknown error");
    ERR_clear_error();
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", prefix, buf);
    return 2;
}

FISKALY_API int luaopen_fiskaly_core(lua_State *L)
{
    lua_newtable(L);                               /* module */
    lua_pushliteral(L, FISKALY_VERSION);
    lua_setfield(L, -2, "version");                /* module.version */
    crypto_open(L);                                /* module.crypto */
    tse_open(L);                                   /* module.tse */
    http_open(L);                                  /* module.http */
    aead_open(L);                                  /* module.crypto.aead_* */
    store_open(L);                                 /* module.store */
    return 1;
}
