/* tests/test_lua_mixer_harness.c: mixers defined in Lua (examples/mixers/gla.lua, layer-map type
 * "lua:examples/mixers/gla.lua", and examples/mixers/mamba2.lua) through the one mixer harness (tests/mixer_harness.h), as
 * test_mixers runs every plugin: finite-difference gradients of x and every parameter, prefill +
 * batched decode vs forward, chunked prefill vs one prefill, state snapshot/restore, the graph op
 * (tape backward, decode step) vs the kernels, every backend that opens vs the CPU, bad input.
 * Needs a Lua state with hyb installed (the runtime library, as the hyb binary has); runs from
 * the source tree (the path in the type is relative to it). */
#include <lauxlib.h>
#include <math.h>
#include <string.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>

#include "lhyb.h"
#include "mixer_harness.h"

int lhyb_verbose(void) { return 0; } /* main.c's, for the runtime library */

/* Mamba-2's test parameters as test_mixers.c's init_mamba2 (dt ~ 0.13..0.97: strong decays inside
 * a chunk; A_log = log U(1, 4); D, norm.weight, conv1d.bias away from their init) */
static void init_mamba2(mh_inst *I, uint64_t seed, float scale) {
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    const hyb_param_decl *d = I->m->decls;
    for (int i = 0; i < I->m->n_params; i++) {
        float *p = (float *)I->pp[i];
        const long n = mh_pnumel(I, i);
        if (!strcmp(d[i].name, "dt_bias")) {
            hyb_rng_fill_uniform(&r, p, n, -2.0f, 0.5f);
        } else if (!strcmp(d[i].name, "A_log")) {
            hyb_rng_fill_uniform(&r, p, n, 1.0f, 4.0f);
            for (long k = 0; k < n; k++)
                p[k] = logf(p[k]);
        } else if (!strcmp(d[i].name, "D")) {
            hyb_rng_fill_normal(&r, p, n, 1.0f, 0.5f);
        } else if (!strcmp(d[i].name, "norm.weight")) {
            hyb_rng_fill_normal(&r, p, n, 1.0f, 0.2f);
        } else if (!strcmp(d[i].name, "conv1d.bias")) {
            hyb_rng_fill_normal(&r, p, n, 0.0f, 0.3f);
        } else {
            hyb_rng_fill_normal(&r, p, n, 0.0f, scale / sqrtf((float)d[i].shape[d[i].ndim - 1]));
        }
    }
}

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
    /* the Mamba-2 prototype: 4 heads of 2 in 2 groups, N 3, K 3, chunks of 3 (test_mixers.c's
     * "mamba2 2 groups chunk 3" row: the 4-point rule, h 5e-3) */
    mh_case m2 = mh_default_case("lua:examples/mixers/mamba2.lua", 6,
                                 "d_inner = 8\nheaddim = 2\nngroups = 2\nd_state = 3\nd_conv = 3\n"
                                 "chunk_size = 3\n");
    m2.label = "lua mamba2";
    m2.init = init_mamba2;
    m2.init_seed = 31;
    m2.init_scale = 1.0f;
    m2.fd = (mh_fd_spec){2, 7, 4, 5e-3f, 3e-3, 3e-3, 2e-3};
    mh_run_case(&m2);
    int rc = harness_done();
    lua_close(L);
    return rc;
}
