/*
 * http.c -- fiskaly.core.http (being written; see the issue tracker).
 */
#include "internal.h"

void http_open(lua_State *L)
{
    lua_newtable(L);
    lua_setfield(L, -2, "http");
}
