/* tests/test_lua_mixer_harness.c: a mixer defined in Lua (examples/mixers/gla.lua, layer-map type
 * "lua:examples/mixers/gla.lua") through the one mixer harness (tests/mixer_harness.h), as
 * test_mixers runs every plugin: finite-difference gradients of x and every parameter, prefill +
 * batched decode vs forward, chunked prefill vs one prefill, state snapshot/restore, the graph op
 * (tape backward, decode step) vs the kernels, every backend that opens vs the CPU, bad input.
 * Needs a Lua state with hyb installed (the runtime library, as the hyb binary has); runs from
 * the source tree (the path in the type is relative to it). */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>

#include "lhyb.h"
#include "mixer_harness.h"

int lhyb_verbose(void) { return 0; } /* main.c's, for the runtime library */

int main(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lhyb_install(L); /* registers the "lua:" mixer types over this state */
    /* scripts/ on package.path, for mixerlib.lua (main.c does this for the hyb binary) */
    const char *src = getenv("HYB_SOURCE_DIR");
    char code[4200];
    snprintf(code, sizeof code, "package.path = '%s/scripts/?.lua;' .. package.path",
             src ? src : ".");
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    mh_case c = mh_default_case("lua:examples/mixers/gla.lua", 16, "heads = 2\nhead_dim = 4\n");
    c.label = "lua gla";
    c.init = mh_init_normal;
    mh_run_case(&c);
    int rc = harness_done();
    lua_close(L);
    return rc;
}
