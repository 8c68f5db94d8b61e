/*
 * aead.c -- AES-256-GCM for secrets at rest (being written; see issue 5).
 */
#include "internal.h"

void aead_open(lua_State *L)
{
    (void)L;
}
