/*
 * store.c -- fiskaly.core.store: SQLite primitives (being written; see issue 5).
 */
#include "internal.h"

void store_open(lua_State *L)
{
    lua_newtable(L);
    lua_setfield(L, -2, "store");
}
