/* runtime/lua_engine.c: the serving engine (hyb/engine.h) and memory planning for Lua.
 *
 *   local m = hyb.model("graphs/smollm2-135m.toml")          -- or a hyb.llm
 *   local e = hyb.engine(m, {slots = 8, max_ctx = 2048, prefill_chunk = 256, prefix_block = 0})
 *   local id = e:submit({1, 2, 3}, {max_tokens = 32, temperature = 0, eos = {2}})
 *   for _, c in ipairs(e:run()) do print(c.id, #c.tokens, c.ttft) end   -- or e:step() in a loop
 *   print(e:stats().prefix_hits)
 *   local p = hyb.plan_memory("graphs/apriel-nemotron-15b.toml", {budget_bytes = 80e9, context =
 * 8192})
 *
 * The engine keeps its model userdata alive (user value 1). It borrows the model's hyb_model: the
 * first field of both the hyb.model and the hyb.llm userdata is the hyb_model pointer (NULL once
 * closed), which this file reads to find the model and to notice that it was closed.
 */
#include <stdlib.h>
#include <string.h>

#include "hyb/config.h"
#include "hyb/engine.h"
#include "hyb/mixer.h"
#include "lhyb.h"

#define LHYB_ENGINE_MT "hyb.engine"

typedef struct lengine {
    hyb_engine *e;          /* NULL once closed */
    hyb_model *m;           /* the model it was made for */
    hyb_model *const *mref; /* the owner userdata's model pointer (first field) */
} lengine;

static lengine *check_engine(lua_State *L, int idx, const char *fname) {
    lengine *le = (lengine *)lhyb_test_class(L, idx, LHYB_ENGINE_MT, fname);
    if (!le->e) lhyb_error(L, "%s: the hyb.engine is closed", fname);
    if (*le->mref != le->m) lhyb_error(L, "%s: the engine's model was closed", fname);
    return le;
}

static int engine_gc(lua_State *L) {
    lengine *le = (lengine *)luaL_checkudata(L, 1, LHYB_ENGINE_MT);
    hyb_engine_free(le->e);
    le->e = NULL;
    return 0;
}

/* hyb.engine(model_or_llm[, {slots=, max_ctx=, prefill_chunk=, prefix_block=,
 * max_prefix_entries=, kv_cache=}]) */
static int l_engine(lua_State *L) {
    static const char *const allowed[] = {
        "slots", "max_ctx", "prefill_chunk", "prefix_block", "max_prefix_entries", "kv_cache", NULL};
    const char *F = "hyb.engine";
    char buf[96];
    void *ud = luaL_testudata(L, 1, LHYB_MODEL_MT);
    if (!ud) ud = luaL_testudata(L, 1, "hyb.llm");
    if (!ud)
        return lhyb_error(L, "%s: model must be a hyb.model or a hyb.llm, got %s", F,
                          lhyb_describe(L, 1, buf, sizeof buf));
    hyb_model *const *mref = (hyb_model *const *)ud;
    if (!*mref) return lhyb_error(L, "%s: the model is closed", F);
    lhyb_check_opts(L, 2, F, allowed);
    hyb_engine_opts o = hyb_engine_defaults();
    o.slots = (int)lhyb_opt_field_int(L, 2, F, "slots", 1, 65536, o.slots);
    o.max_ctx = (int)lhyb_opt_field_int(L, 2, F, "max_ctx", 2, 1 << 24, 0);
    o.prefill_chunk = (int)lhyb_opt_field_int(L, 2, F, "prefill_chunk", 0, 1 << 24, 0);
    o.prefix_block = (int)lhyb_opt_field_int(L, 2, F, "prefix_block", 0, 1 << 24, 0);
    o.max_prefix_entries =
        (int)lhyb_opt_field_int(L, 2, F, "max_prefix_entries", 0, 1 << 20, o.max_prefix_entries);
    o.kv_cache = lhyb_opt_kv_cache(L, 2, F);
    lengine *le = (lengine *)lua_newuserdatauv(L, sizeof(lengine), 1);
    memset(le, 0, sizeof *le);
    luaL_setmetatable(L, LHYB_ENGINE_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    le->m = *mref;
    le->mref = mref;
    if (hyb_engine_new(le->m, &o, &le->e) != HYB_OK) return lhyb_raise_hyb(L, F);
    return 1;
}

static int32_t *check_id_list(lua_State *L, int idx, const char *F, const char *arg, int V,
                              int *n) {
    char buf[96];
    lhyb_tensor *lt = lhyb_test_tensor(L, idx);
    int64_t len;
    if (lt)
        len = hyb_tensor_numel(lhyb_check_tensor(L, idx, F, arg)->t);
    else if (lua_istable(L, idx))
        len = (int64_t)lua_rawlen(L, idx);
    else {
        lhyb_error(L, "%s: %s must be a table of ids or a hyb.tensor, got %s", F, arg,
                   lhyb_describe(L, idx, buf, sizeof buf));
        return NULL;
    }
    if (len < 1 || len > (1 << 24))
        lhyb_error(L, "%s: %s must hold 1 or more ids, got %lld", F, arg, (long long)len);
    *n = (int)len;
    return lhyb_check_ids(L, idx, F, arg, len, 0, V - 1);
}

/* e:submit(ids[, {max_tokens=16, temperature=0, top_k=0, top_p=1, repetition_penalty=1, seed=0,
 * eos=id or {ids}}]) -> request id */
static int l_submit(lua_State *L) {
    static const char *const allowed[] = {"max_tokens",         "temperature", "top_k", "top_p",
                                          "repetition_penalty", "seed",        "eos",   NULL};
    const char *F = "engine:submit";
    char buf[96];
    lengine *le = check_engine(L, 1, F);
    lua_settop(L, 3); /* the id buffer pushed below must not take the options' place */
    int n = 0;
    int32_t *ids = check_id_list(L, 2, F, "ids", le->m->V, &n);
    lhyb_check_opts(L, 3, F, allowed);
    hyb_request_params p = hyb_request_defaults();
    p.max_tokens = (int)lhyb_opt_field_int(L, 3, F, "max_tokens", 1, 1 << 24, p.max_tokens);
    p.sampler.temperature = (float)lhyb_opt_field_number(L, 3, F, "temperature", 0.0);
    p.sampler.top_k = (int)lhyb_opt_field_int(L, 3, F, "top_k", 0, 1 << 30, 0);
    p.sampler.top_p = (float)lhyb_opt_field_number(L, 3, F, "top_p", 1.0);
    p.sampler.repetition_penalty = (float)lhyb_opt_field_number(L, 3, F, "repetition_penalty", 1.0);
    p.seed = (uint64_t)lhyb_opt_field_int(L, 3, F, "seed", 0, LUA_MAXINTEGER, 0);
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "eos");
        int t = lua_gettop(L);
        if (lua_isinteger(L, t)) {
            lua_Integer v = lua_tointeger(L, t);
            if (v < 0 || v >= le->m->V)
                lhyb_error(L, "%s: eos must be in [0, %d), got %lld", F, le->m->V, (long long)v);
            p.eos[p.n_eos++] = (int32_t)v;
        } else if (lua_istable(L, t)) {
            lua_Integer k = (lua_Integer)lua_rawlen(L, t);
            if (k > HYB_ENGINE_MAX_EOS)
                lhyb_error(L, "%s: eos holds %lld ids, at most %d", F, (long long)k,
                           HYB_ENGINE_MAX_EOS);
            for (lua_Integer i = 1; i <= k; i++) {
                lua_rawgeti(L, t, i);
                int isnum = 0;
                lua_Integer v = lua_tointegerx(L, -1, &isnum);
                if (!isnum || v < 0 || v >= le->m->V)
                    lhyb_error(L, "%s: eos entry %lld must be an id in [0, %d), got %s", F,
                               (long long)i, le->m->V, lhyb_describe(L, -1, buf, sizeof buf));
                lua_pop(L, 1);
                p.eos[p.n_eos++] = (int32_t)v;
            }
        } else if (!lua_isnil(L, t)) {
            lhyb_error(L, "%s: eos must be an id or a table of ids, got %s", F,
                       lhyb_describe(L, t, buf, sizeof buf));
        }
        lua_pop(L, 1);
    }
    int64_t id = -1;
    if (hyb_engine_submit(le->e, ids, n, &p, &id) != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

/* e:add_prefix(ids) */
static int l_add_prefix(lua_State *L) {
    const char *F = "engine:add_prefix";
    lengine *le = check_engine(L, 1, F);
    int n = 0;
    int32_t *ids = check_id_list(L, 2, F, "ids", le->m->V, &n);
    if (hyb_engine_add_prefix(le->e, ids, n) != HYB_OK) return lhyb_raise_hyb(L, F);
    return 0;
}

static const char *finish_name(int f) {
    switch (f) {
    case HYB_FINISH_LENGTH:
        return "length";
    case HYB_FINISH_EOS:
        return "eos";
    case HYB_FINISH_CTX:
        return "ctx";
    case HYB_FINISH_STOP:
        return "stop";
    default:
        return "error";
    }
}

void lhyb_set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}
/* Pops every finished request into the table at the top of the stack (appending). */
static void drain(lua_State *L, lengine *le) {
    hyb_completion c;
    while (hyb_engine_pop(le->e, &c)) {
        lua_createtable(L, 0, 12);
        lhyb_set_int(L, "id", c.id);
        lhyb_set_int(L, "prompt_tokens", c.n_prompt);
        lhyb_set_int(L, "prefix_tokens", c.prefix_tokens);
        lua_pushstring(L, finish_name(c.finish));
        lua_setfield(L, -2, "finish");
        lua_createtable(L, c.n_tokens, 0);
        for (int i = 0; i < c.n_tokens; i++) {
            lua_pushinteger(L, c.tokens[i]);
            lua_rawseti(L, -2, i + 1);
        }
        lua_setfield(L, -2, "tokens");
        lua_createtable(L, c.n_tokens, 0);
        for (int i = 0; i < c.n_tokens; i++) {
            lua_pushnumber(L, c.t_token[i]);
            lua_rawseti(L, -2, i + 1);
        }
        lua_setfield(L, -2, "token_times");
        lhyb_set_num(L, "arrival", c.t_arrival);
        lhyb_set_num(L, "admit", c.t_admit);
        lhyb_set_num(L, "done", c.t_done);
        lhyb_set_num(L, "prefill_s", c.prefill_s);
        lhyb_set_num(L, "decode_s", c.decode_s);
        if (c.n_tokens > 0) {
            lhyb_set_num(L, "first_token", c.t_token[0]);
            lhyb_set_num(L, "ttft", c.t_token[0] - c.t_arrival);
        }
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
        hyb_completion_free(&c);
    }
}

/* e:step() -> completions finished in this step (a list, possibly empty) */
static int l_step(lua_State *L) {
    const char *F = "engine:step";
    lengine *le = check_engine(L, 1, F);
    int rc = hyb_engine_step(le->e);
    if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_newtable(L);
    drain(L, le);
    return 1;
}

/* e:run([max_steps]) -> every completion, in finishing order, until nothing is pending */
static int l_run(lua_State *L) {
    const char *F = "engine:run";
    lengine *le = check_engine(L, 1, F);
    lua_Integer max_steps = lhyb_opt_int(L, 2, F, "max_steps", 1, LUA_MAXINTEGER, LUA_MAXINTEGER);
    lua_newtable(L);
    for (lua_Integer s = 0; s < max_steps && hyb_engine_pending(le->e); s++) {
        if (hyb_engine_step(le->e) != HYB_OK) return lhyb_raise_hyb(L, F);
        drain(L, le);
    }
    drain(L, le);
    return 1;
}

static int l_pending(lua_State *L) {
    lua_pushinteger(L, hyb_engine_pending(check_engine(L, 1, "engine:pending")->e));
    return 1;
}

static int l_stats(lua_State *L) {
    lengine *le = check_engine(L, 1, "engine:stats");
    hyb_engine_stats s;
    hyb_engine_get_stats(le->e, &s);
    lua_createtable(L, 0, 20);
    lhyb_set_int(L, "steps", s.steps);
    lhyb_set_int(L, "submitted", s.submitted);
    lhyb_set_int(L, "finished", s.finished);
    lhyb_set_int(L, "prefill_tokens", s.prefill_tokens);
    lhyb_set_int(L, "decode_tokens", s.decode_tokens);
    lhyb_set_int(L, "decode_calls", s.decode_calls);
    lhyb_set_int(L, "prefix_hits", s.prefix_hits);
    lhyb_set_int(L, "prefix_misses", s.prefix_misses);
    lhyb_set_int(L, "prefix_tokens_saved", s.prefix_tokens_saved);
    lhyb_set_int(L, "prefix_entries", s.prefix_entries);
    lhyb_set_int(L, "prefix_bytes", (lua_Integer)s.prefix_bytes);
    lhyb_set_int(L, "state_bytes", (lua_Integer)s.state_bytes);
    lhyb_set_int(L, "kv_bytes_per_token", (lua_Integer)s.kv_bytes_per_token);
    lua_pushstring(L, hyb_kv_dtype_name(s.kv_cache));
    lua_setfield(L, -2, "kv_cache");
    lhyb_set_int(L, "waiting", s.waiting);
    lhyb_set_int(L, "active", s.active);
    lhyb_set_int(L, "max_active", s.max_active);
    lhyb_set_num(L, "t_prefill", s.t_prefill);
    lhyb_set_num(L, "t_decode", s.t_decode);
    lhyb_set_num(L, "t_sample", s.t_sample);
    return 1;
}

/* hyb.plan_memory(layermap_path[, {budget_bytes=, context=, weight_dtype="f32"|"bf16"|"f16",
 * kv_cache="f16"|"q8_0"|"f32"}]) -> table (text = one line) */
static int l_plan_memory(lua_State *L) {
    static const char *const allowed[] = {"budget_bytes", "context", "weight_dtype", "kv_cache",
                                          NULL};
    const char *F = "hyb.plan_memory";
    char buf[1024];
    if (lua_type(L, 1) != LUA_TSTRING)
        return lhyb_error(L, "%s: layermap_path must be a string, got %s", F,
                          lhyb_describe(L, 1, buf, 96));
    lhyb_check_opts(L, 2, F, allowed);
    double budget = lhyb_opt_field_number(L, 2, F, "budget_bytes", 24e9);
    if (!(budget >= 1 && budget < 9.2e18))
        return lhyb_error(L, "%s: budget_bytes must be positive, got %g", F, budget);
    const char *wd = lhyb_opt_field_string(L, 2, F, "weight_dtype", "f32");
    int wb = strcmp(wd, "f32") == 0                                ? 4
             : (strcmp(wd, "bf16") == 0 || strcmp(wd, "f16") == 0) ? 2
                                                                   : 0;
    if (!wb)
        return lhyb_error(L, "%s: weight_dtype must be \"f32\", \"bf16\" or \"f16\", got \"%s\"", F,
                          wd);
    const int kv = lhyb_opt_kv_cache(L, 2, F);
    hyb_layermap *map = NULL;
    if (hyb_layermap_load(lua_tostring(L, 1), &map) != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_Integer ctx = lhyb_opt_field_int(L, 2, F, "context", 1, 1 << 30, map->max_seq);
    hyb_memory_plan p;
    int rc = hyb_plan_memory_kv(map, (size_t)budget, (int)ctx, wb, kv, &p);
    if (rc == HYB_OK) hyb_memory_plan_format(&p, map->name, buf, sizeof buf);
    hyb_layermap_free(map);
    if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_createtable(L, 0, 12);
    lhyb_set_int(L, "weight_bytes", (lua_Integer)p.weight_bytes);
    lhyb_set_int(L, "kv_bytes_per_token", (lua_Integer)p.kv_bytes_per_token);
    lhyb_set_int(L, "fixed_bytes_per_seq", (lua_Integer)p.fixed_bytes_per_seq);
    lhyb_set_int(L, "bytes_per_seq", (lua_Integer)p.bytes_per_seq);
    lhyb_set_int(L, "context", p.context);
    lhyb_set_int(L, "budget_bytes", (lua_Integer)p.budget_bytes);
    lhyb_set_int(L, "max_batch", p.max_batch);
    lhyb_set_int(L, "attention_layers", p.n_attn_layers);
    lhyb_set_int(L, "recurrent_layers", p.n_fixed_layers);
    lhyb_set_int(L, "identity_layers", p.n_identity_layers);
    lua_pushstring(L, buf);
    lua_setfield(L, -2, "text");
    return 1;
}

void lhyb_open_engine(lua_State *L); /* called from luaopen_hyb (lua_hyb.c) */
void lhyb_open_engine(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"submit", l_submit},   {"add_prefix", l_add_prefix}, {"step", l_step},     {"run", l_run},
        {"pending", l_pending}, {"stats", l_stats},           {"close", engine_gc}, {NULL, NULL}};
    lhyb_register_class(L, LHYB_ENGINE_MT, methods, engine_gc, engine_gc, NULL);
    lua_pushcfunction(L, l_engine);
    lua_setfield(L, -2, "engine");
    lua_pushcfunction(L, l_plan_memory);
    lua_setfield(L, -2, "plan_memory");
}
