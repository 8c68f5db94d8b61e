/*
 * host.c -- a C point-of-sale host that embeds Lua 5.4 and uses lua-fiskaly.
 *
 *   fiskaly-host <script.lua> [args...]
 *
 * Opens a lua_State, makes `require "fiskaly"` work (package.path/cpath from
 * FISKALY_LUA_PATH / FISKALY_LUA_CPATH, prepended to the defaults),
 * runs the script, and expects it to return a table
 *   { qr_code_data = "V0;...", ... }
 * The host then calls fiskaly.core.tse.verify_qr itself, from C, to show how
 * a host reaches the module's functions without any Lua glue of its own.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <stdio.h>
#include <stdlib.h>

/* Message handler: appends a traceback to the error message. */
static int msghandler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Calls the function below nargs arguments; on error prints it, returns 0. */
static int call(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;       /* function index */
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);                    /* handler below the function */
    int status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);                    /* drop the handler */
    if (status != LUA_OK) {
        fprintf(stderr, "fiskaly-host: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

/* Prepends the directories in $env to package[field] (path or cpath). */
static void set_path(lua_State *L, const char *field, const char *env)
{
    const char *v = getenv(env);
    if (v == NULL || *v == '\0')
        return;
    lua_getglobal(L, "package");            /* package */
    lua_getfield(L, -1, field);             /* package, old */
    lua_pushfstring(L, "%s;%s", v, lua_tostring(L, -1));
    lua_setfield(L, -3, field);             /* package[field] = v;old */
    lua_pop(L, 2);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fiskaly-host <script.lua> [args...]\n");
        return 2;
    }
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "fiskaly-host: cannot create a Lua state\n");
        return 1;
    }
    luaL_openlibs(L);
    set_path(L, "path", "FISKALY_LUA_PATH");
    set_path(L, "cpath", "FISKALY_LUA_CPATH");

    int rc = 1;
    if (luaL_loadfile(L, argv[1]) != LUA_OK) {
        fprintf(stderr, "fiskaly-host: %s\n", lua_tostring(L, -1));
        goto out;
    }
    for (int i = 2; i < argc; i++)
        lua_pushstring(L, argv[i]);
    if (!call(L, argc - 2, 1))
        goto out;
    if (!lua_istable(L, -1)) {
        fprintf(stderr, "fiskaly-host: script must return a table\n");
        goto out;
    }
    lua_getfield(L, -1, "qr_code_data");    /* result, qr */
    const char *qr = lua_tostring(L, -1);
    if (qr == NULL) {
        fprintf(stderr, "fiskaly-host: result has no qr_code_data\n");
        goto out;
    }
    printf("QR code data: %s\n", qr);

    /* verify from C: require("fiskaly.core").tse.verify_qr(qr) */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "fiskaly.core");
    if (!call(L, 1, 1))
        goto out;
    lua_getfield(L, -1, "tse");             /* result, qr, core, tse */
    lua_getfield(L, -1, "verify_qr");       /* ..., tse, verify_qr */
    lua_pushvalue(L, -4);                   /* ..., verify_qr, qr */
    if (!call(L, 1, 1))
        goto out;
    lua_getfield(L, -1, "valid");
    int valid = lua_toboolean(L, -1);
    lua_getfield(L, -2, "reason");
    printf("signature %s%s%s\n", valid ? "verified" : "INVALID",
           valid ? "" : ": ", valid ? "" : luaL_optstring(L, -1, "?"));
    rc = valid ? 0 : 1;
out:
    lua_close(L);
    return rc;
}
