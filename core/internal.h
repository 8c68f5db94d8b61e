/*
 * internal.h -- shared declarations of the fiskaly.core C module.
 * Everything here is hidden; only luaopen_fiskaly_core is exported.
 */
#ifndef FISKALY_INTERNAL_H
#define FISKALY_INTERNAL_H

#include <lua.h>
#include <lauxlib.h>

#define FISKALY_API __attribute__((visibility("default")))

#pragma GCC visibility push(hidden)

/*
 * Each <type>_open(L) is called with the module table on top of the stack
 * and adds its sub-table (e.g. module.crypto) to it.  Stack is balanced.
 */
void crypto_open(lua_State *L);
void tse_open(lua_State *L);
void http_open(lua_State *L);
void aead_open(lua_State *L);   /* adds AES-256-GCM to module.crypto */
void store_open(lua_State *L);

/*
 * Pushes nil, "<prefix>: <openssl reason>" and clears the OpenSSL error
 * queue.  Returns 2 (the number of pushed values).
 */
int fiskaly_push_openssl_error(lua_State *L, const char *prefix);

#pragma GCC visibility pop

FISKALY_API int luaopen_fiskaly_core(lua_State *L);

#endif
