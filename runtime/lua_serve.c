/* runtime/lua_serve.c: hyb.serve{...}, the Lua face of runtime/serve.c (scripts/serve.lua is
 * `hyb serve`).
 *
 *   hyb.serve{model = "x.gguf", host = "127.0.0.1", port = 8080, slots = 16, max_ctx = 2048,
 *             max_queue = 256, max_body = 1048576, threads = 2, device = "cpu",
 *             api_key = "secret", name = "smol", tokenizer = "tokenizer.json",
 *             prefill_chunk = 0, prefix_block = 0, quiet = false}
 *
 * Blocks until SIGTERM/SIGINT and returns true after the clean shutdown; a server that cannot
 * start (model, device, address) raises the reason.
 */
#include <string.h>

#include "hyb/common.h"
#include "lhyb.h"
#include "serve.h"

static int l_serve(lua_State *L) {
    static const char *const allowed[] = {"model",     "host",          "port",         "slots",
                                          "max_ctx",   "max_queue",     "max_body",     "threads",
                                          "device",    "api_key",       "name",         "tokenizer",
                                          "prefill_chunk", "prefix_block", "quiet",     "quant",
                                          "kv_cache",  NULL};
    const char *F = "hyb.serve";
    luaL_checktype(L, 1, LUA_TTABLE);
    lhyb_check_opts(L, 1, F, allowed);
    hyb_serve_config c = hyb_serve_defaults();
    c.model_path = lhyb_opt_field_string(L, 1, F, "model", NULL);
    if (!c.model_path) return luaL_error(L, "%s: model is required", F);
    c.host = lhyb_opt_field_string(L, 1, F, "host", c.host);
    c.port = (int)lhyb_opt_field_int(L, 1, F, "port", 0, 65535, c.port);
    c.slots = (int)lhyb_opt_field_int(L, 1, F, "slots", 1, 4096, c.slots);
    c.max_ctx = (int)lhyb_opt_field_int(L, 1, F, "max_ctx", 0, 1 << 24, 0);
    c.max_queue = (int)lhyb_opt_field_int(L, 1, F, "max_queue", 0, 1 << 20, c.max_queue);
    c.max_body =
        (size_t)lhyb_opt_field_int(L, 1, F, "max_body", 1, (lua_Integer)1 << 40, (lua_Integer)c.max_body);
    c.threads = (int)lhyb_opt_field_int(L, 1, F, "threads", 0, 1024, 0);
    c.prefill_chunk = (int)lhyb_opt_field_int(L, 1, F, "prefill_chunk", 0, 1 << 24, 0);
    c.prefix_block = (int)lhyb_opt_field_int(L, 1, F, "prefix_block", 0, 1 << 24, 0);
    c.device = lhyb_opt_field_string(L, 1, F, "device", NULL);
    c.quant = lhyb_opt_quant(L, 1, F, !c.device || !strcmp(c.device, "cpu"));
    c.api_key = lhyb_opt_field_string(L, 1, F, "api_key", NULL);
    c.name = lhyb_opt_field_string(L, 1, F, "name", NULL);
    c.tokenizer = lhyb_opt_field_string(L, 1, F, "tokenizer", NULL);
    c.quiet = lhyb_opt_field_bool(L, 1, F, "quiet", 0);
    c.kv_cache = lhyb_opt_kv_cache(L, 1, F);
    if (hyb_serve_run(&c) != HYB_OK) return luaL_error(L, "%s", hyb_error());
    lua_pushboolean(L, 1);
    return 1;
}

void lhyb_open_serve(lua_State *L) {
    lua_pushcfunction(L, l_serve);
    lua_setfield(L, -2, "serve");
}
