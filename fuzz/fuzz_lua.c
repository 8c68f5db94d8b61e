/*
 * fuzz_lua.c -- libFuzzer target for the Lua-level verifiers: the TAR export reader
 * (fiskaly.verify.export_bytes) and SIGN DE transaction responses (fiskaly.json.decode
 * + fiskaly.verify.transaction).  The first input byte selects the entry point.
 * Note: libFuzzer's coverage feedback only sees the instrumented C core here, not the
 * Lua code; this target checks robustness (no raised error, explained results).
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_common.h"

#ifndef FISKALY_LUA_DIR
#error "build with -DFISKALY_LUA_DIR=\"<repo>/lua\""
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char harness[] =
    "package.path = " "'" FISKALY_LUA_DIR "/?.lua;' .. package.path\n"
    "package.preload['fiskaly.core'] = ...\n"
    "local verify = require 'fiskaly.verify'\n"
    "local json = require 'fiskaly.json'\n"
    "return function(kind, data)\n"
    "  local r\n"
    "  if kind % 2 == 0 then\n"
    "    r = verify.export_bytes(data)\n"
    "    assert(type(r.messages or {}) == 'table')\n"
    "  else\n"
    "    local doc = json.decode(data)\n"
    "    if type(doc) ~= 'table' then return end\n"
    "    r = verify.transaction(doc)\n"
    "  end\n"
    "  assert(type(r.valid) == 'boolean')\n"
    "  assert(r.valid or (type(r.reason) == 'string' and type(r.code) == 'string'), 'unexplained result')\n"
    "end\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    luaL_openlibs(fuzz_L);
    if (luaL_loadstring(fuzz_L, harness) != LUA_OK)
        abort();
    lua_pushcfunction(fuzz_L, luaopen_fiskaly_core);
    fuzz_call(1, 1, "harness");
    lua_setglobal(fuzz_L, "fuzz_one");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return -1;
    lua_getglobal(fuzz_L, "fuzz_one");
    lua_pushinteger(fuzz_L, data[0]);
    lua_pushlstring(fuzz_L, (const char *)data + 1, size - 1);
    fuzz_call(2, 0, "fuzz_one");
    lua_settop(fuzz_L, 0);
    return 0;
}
