/*
 * crypto.c -- fiskaly.core.crypto (being written; see the issue tracker).
 */
#include "internal.h"

void crypto_open(lua_State *L)
{
    lua_newtable(L);
    lua_setfield(L, -2, "crypto");
}
