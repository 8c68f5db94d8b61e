/*
 * tse.c -- fiskaly.core.tse (being written; see the issue tracker).
 */
#include "internal.h"

void tse_open(lua_State *L)
{
    lua_newtable(L);
    lua_setfield(L, -2, "tse");
}
