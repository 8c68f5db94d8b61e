/*
 * fuzz_common.h -- shared libFuzzer harness code: one Lua state with fiskaly.core loaded,
 * and a protected call of core.tse.<name> that aborts on any raised error.
 * The Lua state is process-global: libFuzzer calls the target repeatedly in one process.
 */
#ifndef FISKALY_FUZZ_COMMON_H
#define FISKALY_FUZZ_COMMON_H

#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int luaopen_fiskaly_core(lua_State *L);

static lua_State *fuzz_L;

static void fuzz_init(void)
{
    fuzz_L = luaL_newstate();
    if (fuzz_L == NULL)
        abort();
    luaL_requiref(fuzz_L, "fiskaly.core", luaopen_fiskaly_core, 0);
    lua_getfield(fuzz_L, -1, "tse");
    lua_setglobal(fuzz_L, "tse");
    lua_settop(fuzz_L, 0);
}

/* Pushes core.tse[name]. */
static void fuzz_push_fn(const char *name)
{
    lua_getglobal(fuzz_L, "tse");
    lua_getfield(fuzz_L, -1, name);
    lua_remove(fuzz_L, -2);
}

/* Calls the function below nargs arguments; a raised error is a bug (inputs are strings). */
static void fuzz_call(int nargs, int nresults, const char *name)
{
    if (lua_pcall(fuzz_L, nargs, nresults, 0) != LUA_OK) {
        fprintf(stderr, "core.tse.%s raised: %s\n", name, lua_tostring(fuzz_L, -1));
        abort();
    }
}

/* A result table must have a boolean `valid`, and a reason and code when it is false. */
static void fuzz_check_result(const char *name)
{
    if (!lua_istable(fuzz_L, -1))
        abort();
    lua_getfield(fuzz_L, -1, "valid");
    int valid = lua_toboolean(fuzz_L, -1);
    if (!lua_isboolean(fuzz_L, -1))
        abort();
    lua_getfield(fuzz_L, -2, "reason");
    lua_getfield(fuzz_L, -3, "code");
    if (!valid && (!lua_isstring(fuzz_L, -1) || !lua_isstring(fuzz_L, -2))) {
        fprintf(stderr, "core.tse.%s: invalid result without reason/code\n", name);
        abort();
    }
    lua_pop(fuzz_L, 3);
}

#endif
