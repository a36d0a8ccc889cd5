/* runtime/lua_generate.c: text generation for Lua: a loaded language model with its tokenizer
 * and context (hyb.llm), and the sampler (hyb.sampler).
 *
 *   local llm = hyb.llm()                        -- $HYB_MODEL or the default teacher GGUF
 *   local s = hyb.sampler{temperature = 0.7, top_k = 40, top_p = 0.9, repetition_penalty = 1.1,
 *                         seed = 42}             -- {} = greedy
 *   local r = llm:generate(llm:encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
 *                          {sampler = s, max_tokens = 64, stop = {"<|im_end|>"},
 *                           on_text = function(t) io.write(t) end})
 *   print(r.reason, #r.ids, r.decode_tokens / r.decode_s)
 *
 * llm:generate is one request of the generation API (hyb/engine.h): the llm holds a one-slot
 * hyb_engine whose slot is the context, and each call continues it (HYB_REQ_CONTINUE), so a chat
 * prefills only its new turn. The per-token pieces (llm:prefill, llm:feed, llm:sample) work on
 * the same slot. The context's token list may end with one token not computed yet: the last of
 * a generate that stopped at max_tokens; the next call that needs it computes it first.
 *
 * hyb.llm(path[, {max_ctx = n}]): a .gguf file (llama architecture; tokenizer from its metadata)
 * or an HF checkpoint directory (config.json + safetensors + tokenizer.json). The context holds
 * at most max_ctx tokens (default: the model's max_seq, at most 4096); going past it is an error.
 * Per-token work happens in C; Lua drives the loop, one call per token.
 */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hyb/engine.h"
#include "hyb/hf.h"
#include "hyb/sample.h"
#include "hyb/tokenizer.h"
#include "hyb/backend.h"
#include "lhyb.h"

#define LHYB_LLM_MT "hyb.llm"
#define LHYB_SAMPLER_MT "hyb.sampler"

typedef struct lllm {
    hyb_model *m; /* first field: hyb.engine reads it (lua_engine.c) */
    hyb_tokenizer *tok;
    hyb_engine *e;  /* one slot: the context */
    hyb_kvstate *s; /* the engine's */
    int max_ctx;
    float *logits; /* [V] of the last token computed */
    int have_logits;
    int32_t *hist; /* [max_ctx] tokens in the context: [0, s->pos[0]) computed, the rest not yet */
    int n_hist;
    double t_prefill, t_decode; /* seconds spent */
    long n_prefill, n_decode;   /* tokens */
    char *chat_template;        /* the model's own, else hyb's ChatML (malloc'ed) */
    int own_template;           /* 1: it came with the model / tokenizer */
} lllm;

static void llm_release(lllm *l) {
    hyb_engine_free(l->e);
    hyb_model_free(l->m);
    hyb_tokenizer_free(l->tok);
    free(l->logits);
    free(l->hist);
    free(l->chat_template);
    memset(l, 0, sizeof *l);
}

static lllm *check_llm(lua_State *L, int idx, const char *fname) {
    lllm *l = (lllm *)lhyb_test_class(L, idx, LHYB_LLM_MT, fname);
    if (!l->m) luaL_error(L, "%s: the hyb.llm is closed", fname);
    return l;
}

static int is_directory(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The tokenizer at `tp`: a .gguf, a tokenizer.json, or a directory holding one. */
static hyb_tokenizer *load_tokenizer(const char *tp) {
    size_t n = strlen(tp);
    if (is_directory(tp)) {
        char p[4200];
        snprintf(p, sizeof p, "%s/tokenizer.json", tp);
        return hyb_tokenizer_load_json(p);
    }
    if (n > 5 && !strcmp(tp + n - 5, ".gguf")) return hyb_tokenizer_load_gguf(tp);
    return hyb_tokenizer_load_json(tp);
}

/* hyb.llm([path][, {max_ctx = n, device = "cpu"|"cuda[:N]", tokenizer = path,
 *                   quant = "off"|"precise"|"fast", kv_cache = "f16"|"q8_0"|"f32"}]) */
static int l_llm(lua_State *L) {
    static const char *const allowed[] = {"max_ctx", "device", "tokenizer", "quant", "kv_cache",
                                          NULL};
    const char *F = "hyb.llm";
    char buf[1024];
    const char *path = NULL;
    int opt_idx = 2;
    if (lua_type(L, 1) == LUA_TSTRING) {
        path = lua_tostring(L, 1);
    } else if (lua_istable(L, 1)) {
        opt_idx = 1;
    } else if (!lua_isnoneornil(L, 1)) {
        return luaL_error(L, "%s: path must be a string, got %s", F, lhyb_describe(L, 1, buf, 96));
    }
    if (!path) {
        const char *env = getenv("HYB_MODEL");
        if (env && *env)
            path = env;
        else {
            const char *home = getenv("HOME");
            snprintf(buf, sizeof buf, "%s/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                     home ? home : ".");
            path = buf;
        }
    }
    lhyb_check_opts(L, opt_idx, F, allowed);
    lua_Integer max_ctx = lhyb_opt_field_int(L, opt_idx, F, "max_ctx", 1, 1 << 24, 0);
    const int kv_cache = lhyb_opt_kv_cache(L, opt_idx, F);
    const char *tok_path = NULL;
    if (lua_istable(L, opt_idx)) {
        lua_getfield(L, opt_idx, "tokenizer");
        if (lua_type(L, -1) == LUA_TSTRING)
            tok_path = lua_tostring(L, -1); /* stays on the stack (and alive) until we return */
        else if (!lua_isnil(L, -1))
            return luaL_error(L, "%s: tokenizer must be a path string, got %s", F,
                              lhyb_describe(L, -1, buf, 96));
    }
    const hyb_backend *be = lhyb_opt_device(L, opt_idx, F); /* opened before the model loads */
    /* quantized weights compute on the CPU: another device loads f32 unless quant is given */
    const int quant = lhyb_opt_quant(L, opt_idx, F, !be || be->device == HYB_DEV_CPU);

    lllm *l = (lllm *)lua_newuserdatauv(L, sizeof(lllm), 0);
    memset(l, 0, sizeof *l);
    luaL_setmetatable(L, LHYB_LLM_MT);
    int dir = is_directory(path);
    /* a directory hyb saved (layermap.toml: the exact layer map, whatever HF can express), else
     * an HF checkpoint directory (config.json), else a GGUF file */
    char lm_path[1200];
    snprintf(lm_path, sizeof lm_path, "%s/layermap.toml", path);
    struct stat lm_st;
    int rc = !dir                         ? hyb_model_load_gguf_ex(path, quant, &l->m)
             : stat(lm_path, &lm_st) == 0 ? hyb_model_load(path, &l->m)
                                          : hyb_model_load_hf_dir(path, &l->m);
    if (rc != HYB_OK) {
        l->m = NULL;
        return lhyb_raise_hyb(L, F);
    }
    if (tok_path) {
        l->tok = load_tokenizer(tok_path);
    } else if (dir) {
        char tp[1200];
        snprintf(tp, sizeof tp, "%s/tokenizer.json", path);
        struct stat st;
        if (stat(tp, &st) != 0) {
            llm_release(l);
            return luaL_error(L,
                              "%s: %s has no tokenizer.json (a model saved without its tokenizer): "
                              "pass the teacher's with --tokenizer PATH (a .gguf, a tokenizer.json "
                              "or a directory holding one)",
                              F, path);
        }
        l->tok = hyb_tokenizer_load_json(tp);
    } else {
        l->tok = hyb_tokenizer_load_gguf(path);
    }
    if (l->tok && hyb_tokenizer_vocab_size(l->tok) > l->m->V) { /* padded embeddings are fine */
        int tv = hyb_tokenizer_vocab_size(l->tok), mv = l->m->V;
        llm_release(l);
        return luaL_error(L, "%s: the tokenizer has %d tokens but the model's vocabulary only %d", F,
                          tv, mv);
    }
    if (!l->tok || (be && hyb_model_to_device(l->m, be) != HYB_OK)) {
        llm_release(l);
        return lhyb_raise_hyb(L, F);
    }
    /* the chat template that came with the tokenizer (or the model file), else hyb's ChatML */
    l->chat_template = hyb_tokenizer_chat_template(tok_path ? tok_path : path);
    if (l->chat_template && hyb_chat_template_check(l->chat_template) != HYB_OK) {
        hyb_log(HYB_LOG_WARN, "%s: the model's chat template cannot be used (%s); using ChatML", F,
                hyb_error());
        hyb_error_clear();
        free(l->chat_template);
        l->chat_template = NULL;
    }
    l->own_template = l->chat_template != NULL;
    if (!l->chat_template && !(l->chat_template = strdup(hyb_chat_template_chatml()))) {
        llm_release(l);
        return luaL_error(L, "%s: out of memory", F);
    }
    if (max_ctx == 0) max_ctx = l->m->map->max_seq < 4096 ? l->m->map->max_seq : 4096;
    if (max_ctx > l->m->map->max_seq) {
        int max_seq = l->m->map->max_seq;
        llm_release(l);
        return luaL_error(L, "%s: max_ctx %d is larger than the model's max_seq %d (range [1, %d])",
                          F, (int)max_ctx, max_seq, max_seq);
    }
    l->max_ctx = (int)max_ctx;
    l->logits = malloc(sizeof(float) * (size_t)l->m->V);
    l->hist = malloc(sizeof(int32_t) * (size_t)l->max_ctx);
    if (!l->logits || !l->hist) {
        llm_release(l);
        return luaL_error(L, "%s: out of memory", F);
    }
    hyb_engine_opts eo = hyb_engine_defaults();
    eo.slots = 1;
    eo.max_ctx = l->max_ctx;
    eo.kv_cache = kv_cache;
    if (hyb_engine_new(l->m, &eo, &l->e) != HYB_OK) {
        l->e = NULL;
        llm_release(l);
        return lhyb_raise_hyb(L, F);
    }
    l->s = hyb_engine_kvstate(l->e);
    return 1;
}

/* A Lua array of ids (or a single integer) -> malloc'ed array, each in [0, V). */
static int32_t *ids_arg(lua_State *L, int idx, const char *fname, int V, int *n) {
    char buf[96];
    if (lua_isinteger(L, idx)) {
        lua_Integer v = lua_tointeger(L, idx);
        if (v < 0 || v >= V) luaL_error(L, "%s: token id %I is outside [0, %d)", fname, v, V);
        int32_t *ids = malloc(sizeof *ids);
        if (!ids) luaL_error(L, "%s: out of memory", fname);
        ids[0] = (int32_t)v;
        *n = 1;
        return ids;
    }
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: ids must be an array of integers, got %s", fname,
                   lhyb_describe(L, idx, buf, sizeof buf));
    lua_Integer len = luaL_len(L, idx);
    int32_t *ids = malloc(sizeof *ids * (size_t)(len > 0 ? len : 1));
    if (!ids) luaL_error(L, "%s: out of memory", fname);
    for (lua_Integer i = 1; i <= len; i++) {
        lua_geti(L, idx, i);
        int isnum = 0;
        lua_Integer v = lua_tointegerx(L, -1, &isnum);
        lua_pop(L, 1);
        if (!isnum || v < 0 || v >= V) {
            free(ids);
            luaL_error(L, "%s: ids[%I] must be an integer in [0, %d)", fname, i, V);
        }
        ids[i - 1] = (int32_t)v;
    }
    *n = (int)len;
    return ids;
}

static void push_ids(lua_State *L, const int32_t *ids, size_t n) {
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushinteger(L, ids[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

/* llm:encode(text[, {special = true, add_special = false}]) -> {ids} */
static int m_encode(lua_State *L) {
    static const char *const allowed[] = {"special", "add_special", NULL};
    const char *F = "llm:encode";
    lllm *l = check_llm(L, 1, F);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    lhyb_check_opts(L, 3, F, allowed);
    int flags = 0;
    if (!lhyb_opt_field_bool(L, 3, F, "special", 1)) flags |= HYB_TOK_NO_PARSE_SPECIAL;
    if (lhyb_opt_field_bool(L, 3, F, "add_special", 0)) flags |= HYB_TOK_ADD_SPECIAL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (hyb_tokenizer_encode_alloc(l->tok, text, len, flags, &ids, &n) != HYB_OK)
        return lhyb_raise_hyb(L, F);
    push_ids(L, ids, n);
    free(ids);
    return 1;
}

/* llm:decode(ids[, {skip_special = false}]) -> string */
static int m_decode(lua_State *L) {
    static const char *const allowed[] = {"skip_special", NULL};
    const char *F = "llm:decode";
    lllm *l = check_llm(L, 1, F);
    lhyb_check_opts(L, 3, F, allowed);
    int flags = lhyb_opt_field_bool(L, 3, F, "skip_special", 0) ? HYB_TOK_SKIP_SPECIAL : 0;
    int n;
    int32_t *ids = ids_arg(L, 2, F, hyb_tokenizer_vocab_size(l->tok), &n);
    long nb = hyb_tokenizer_decode(l->tok, ids, (size_t)n, flags, NULL, 0);
    char *out = nb > 0 ? malloc((size_t)nb) : NULL;
    if (nb >= 0 && (nb == 0 || out))
        nb = hyb_tokenizer_decode(l->tok, ids, (size_t)n, flags, out, (size_t)nb);
    free(ids);
    if (nb < 0) {
        free(out);
        return lhyb_raise_hyb(L, F);
    }
    lua_pushlstring(L, out ? out : "", (size_t)nb);
    free(out);
    return 1;
}

/* llm:piece(id) -> the token's bytes */
static int m_piece(lua_State *L) {
    lllm *l = check_llm(L, 1, "llm:piece");
    lua_Integer id =
        lhyb_check_int(L, 2, "llm:piece", "id", 0, hyb_tokenizer_vocab_size(l->tok) - 1);
    size_t len = 0;
    const char *p = hyb_tokenizer_token_to_piece(l->tok, (int32_t)id, &len);
    lua_pushlstring(L, p ? p : "", p ? len : 0);
    return 1;
}

/* A token id, or nil for a negative one (not in the vocabulary / none). */
static int push_id_or_nil(lua_State *L, int32_t id) {
    if (id < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, id);
    return 1;
}

/* llm:token_id(text) -> id or nil */
static int m_token_id(lua_State *L) {
    lllm *l = check_llm(L, 1, "llm:token_id");
    return push_id_or_nil(L, hyb_tokenizer_token_id(l->tok, luaL_checkstring(L, 2)));
}

static int m_eos(lua_State *L) {
    return push_id_or_nil(L, hyb_tokenizer_eos_id(check_llm(L, 1, "llm:eos")->tok));
}

static int m_bos(lua_State *L) {
    return push_id_or_nil(L, hyb_tokenizer_bos_id(check_llm(L, 1, "llm:bos")->tok));
}

/* A Lua value as JSON for a chat template's variables: tables with items 1..n (n > 0) are lists,
 * other tables objects with string keys; strings, numbers, booleans, nil. Called twice: with
 * build = 0 it only checks, raising a Lua error that names the place (messages[2].content), so
 * that with build = 1 nothing can raise while cJSON memory is held. */
static cJSON *lua_to_json(lua_State *L, int idx, const char *F, char *path, size_t cap, int depth,
                          int build) {
    static cJSON checked; /* what the checking pass returns: not NULL */
    idx = lua_absindex(L, idx);
    if (depth > 64) luaL_error(L, "%s: %s is nested too deeply", F, path);
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return build ? cJSON_CreateNull() : &checked;
    case LUA_TBOOLEAN: return build ? cJSON_CreateBool(lua_toboolean(L, idx)) : &checked;
    case LUA_TNUMBER: {
        double d = lua_tonumber(L, idx);
        if (!isfinite(d)) luaL_error(L, "%s: %s is not a finite number", F, path);
        return build ? cJSON_CreateNumber(d) : &checked;
    }
    case LUA_TSTRING: return build ? cJSON_CreateString(lua_tostring(L, idx)) : &checked;
    case LUA_TTABLE: {
        lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
        size_t plen = strlen(path);
        cJSON *a = !build ? &checked : n > 0 ? cJSON_CreateArray() : cJSON_CreateObject();
        if (n > 0) {
            for (lua_Integer i = 1; a && i <= n; i++) {
                lua_rawgeti(L, idx, i);
                snprintf(path + plen, cap - plen, "[%lld]", (long long)i);
                cJSON *v = lua_to_json(L, -1, F, path, cap, depth + 1, build);
                path[plen] = 0;
                lua_pop(L, 1);
                if (!build) continue;
                if (!v) {
                    cJSON_Delete(a);
                    return NULL;
                }
                cJSON_AddItemToArray(a, v);
            }
            return a;
        }
        lua_pushnil(L);
        while (a && lua_next(L, idx)) {
            if (lua_type(L, -2) != LUA_TSTRING) /* only in the checking pass: nothing held */
                luaL_error(L, "%s: %s has a non-string key (%s)", F, path, luaL_typename(L, -2));
            const char *k = lua_tostring(L, -2);
            snprintf(path + plen, cap - plen, ".%s", k);
            cJSON *v = lua_to_json(L, -1, F, path, cap, depth + 1, build);
            path[plen] = 0;
            lua_pop(L, 1);
            if (!build) continue;
            if (!v) {
                lua_pop(L, 1);
                cJSON_Delete(a);
                return NULL;
            }
            cJSON_AddItemToObject(a, k, v);
        }
        return a;
    }
    default:
        luaL_error(L, "%s: %s is a %s (a template takes strings, numbers, booleans and tables)", F,
                   path, luaL_typename(L, idx));
        return NULL;
    }
}

/* llm:chat_template() -> the template text, and true when it came with the model (false: hyb's
 * ChatML, used when the model has none) */
static int m_chat_template(lua_State *L) {
    lllm *l = check_llm(L, 1, "llm:chat_template");
    lua_pushstring(L, l->chat_template);
    lua_pushboolean(L, l->own_template);
    return 2;
}

/* llm:apply_chat_template(messages[, {add_generation_prompt = true, template = text, <name> =
 * value...}]) -> the prompt text. messages: {{role = "user", content = "Hi"}, ...}. The model's
 * template (or opts.template) is rendered as HF's apply_chat_template does, with bos_token and
 * eos_token from the tokenizer and any other option as a template variable (e.g. tools). */
static int m_apply_chat_template(lua_State *L) {
    const char *F = "llm:apply_chat_template";
    lllm *l = check_llm(L, 1, F);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        if (!lua_istable(L, -1))
            return luaL_error(L, "%s: messages[%d] must be a table {role = ..., content = ...}, got %s",
                              F, (int)i, luaL_typename(L, -1));
        lua_getfield(L, -1, "role");
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "%s: messages[%d].role must be a string, got %s", F, (int)i,
                              luaL_typename(L, -1));
        lua_pop(L, 2);
    }
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    const char *tmpl = l->chat_template;
    char path[256] = "messages";
    /* check everything first (errors raise here, holding nothing) */
    if (n > 0) lua_to_json(L, 2, F, path, sizeof path, 0, 0);
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "%s: option keys must be strings", F);
            const char *k = lua_tostring(L, -2);
            if (!strcmp(k, "template")) {
                if (lua_type(L, -1) != LUA_TSTRING)
                    return luaL_error(L, "%s: template must be a string, got %s", F,
                                      luaL_typename(L, -1));
                tmpl = lua_tostring(L, -1); /* stays alive: the options table holds it */
            } else if (!strcmp(k, "messages")) {
                return luaL_error(L, "%s: pass messages as the first argument, not an option", F);
            } else {
                snprintf(path, sizeof path, "%s", k);
                lua_to_json(L, -1, F, path, sizeof path, 0, 0);
            }
            lua_pop(L, 1);
        }
    }
    /* then build: nothing below raises before the cJSON tree is freed */
    cJSON *ctx = cJSON_CreateObject();
    snprintf(path, sizeof path, "messages");
    cJSON *msgs = n > 0 ? lua_to_json(L, 2, F, path, sizeof path, 0, 1) : cJSON_CreateArray();
    if (!ctx || !msgs) {
        cJSON_Delete(ctx), cJSON_Delete(msgs);
        return luaL_error(L, "%s: out of memory", F);
    }
    cJSON_AddItemToObject(ctx, "messages", msgs);
    for (int k = 0; k < 2; k++) {
        char *t = hyb_tokenizer_special_text(
            l->tok, k ? hyb_tokenizer_eos_id(l->tok) : hyb_tokenizer_bos_id(l->tok));
        cJSON_AddStringToObject(ctx, k ? "eos_token" : "bos_token", t ? t : "");
        free(t);
    }
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            const char *k = lua_tostring(L, -2);
            if (strcmp(k, "template") != 0) {
                snprintf(path, sizeof path, "%s", k);
                cJSON *v = lua_to_json(L, -1, F, path, sizeof path, 0, 1);
                cJSON_DeleteItemFromObject(ctx, k);
                if (v) cJSON_AddItemToObject(ctx, k, v);
            }
            lua_pop(L, 1);
        }
    }
    if (!cJSON_GetObjectItem(ctx, "add_generation_prompt"))
        cJSON_AddTrueToObject(ctx, "add_generation_prompt");
    char *json = cJSON_PrintUnformatted(ctx), *out = NULL;
    cJSON_Delete(ctx);
    if (!json) return luaL_error(L, "%s: out of memory", F);
    int rc = hyb_chat_template_render(tmpl, json, &out);
    free(json);
    if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_pushstring(L, out);
    free(out);
    return 1;
}

static int m_vocab_size(lua_State *L) {
    lua_pushinteger(L, check_llm(L, 1, "llm:vocab_size")->m->V);
    return 1;
}
static int m_max_ctx(lua_State *L) {
    lua_pushinteger(L, check_llm(L, 1, "llm:max_ctx")->max_ctx);
    return 1;
}
static int m_pos(lua_State *L) {
    lua_pushinteger(L, check_llm(L, 1, "llm:pos")->n_hist);
    return 1;
}

/* llm:reset(): empty context (KV cache, history, timers) */
static int m_reset(lua_State *L) {
    lllm *l = check_llm(L, 1, "llm:reset");
    hyb_kvstate_reset_seq(l->s, 0);
    l->n_hist = 0;
    l->have_logits = 0;
    l->t_prefill = l->t_decode = 0;
    l->n_prefill = l->n_decode = 0;
    return 0;
}

static void check_room(lua_State *L, lllm *l, int n, const char *fname) {
    if (n > l->max_ctx - l->n_hist)
        luaL_error(L, "%s: %d more tokens do not fit: the context holds %d of max_ctx %d", fname, n,
                   l->n_hist, l->max_ctx);
}

/* Compute the context's tokens not computed yet (hist[pos, n_hist)): one decode step when it is
 * a single token after others and as_decode, else a prefill. On failure the list is cut back to
 * old_n. */
static int llm_compute(lllm *l, int as_decode, int old_n) {
    int pos = l->s->pos[0], n = l->n_hist - pos;
    if (n <= 0) return HYB_OK;
    double t0 = hyb_time_now();
    int rc;
    if (as_decode && n == 1 && pos > 0) {
        int32_t seq = 0;
        rc = hyb_model_decode(l->m, l->s, 1, &seq, l->hist + pos, l->logits);
        l->t_decode += hyb_time_now() - t0;
        if (rc == HYB_OK) l->n_decode++;
    } else {
        rc = hyb_model_prefill(l->m, l->s, 0, l->hist + pos, n, l->logits);
        l->t_prefill += hyb_time_now() - t0;
        if (rc == HYB_OK) l->n_prefill += n;
    }
    if (rc != HYB_OK) {
        l->n_hist = old_n < l->s->pos[0] ? l->s->pos[0] : old_n;
        return rc;
    }
    l->have_logits = 1;
    return HYB_OK;
}

/* llm:prefill(ids) -> tokens in the context. Continues after what is already there. */
static int m_prefill(lua_State *L) {
    const char *F = "llm:prefill";
    lllm *l = check_llm(L, 1, F);
    int n;
    int32_t *ids = ids_arg(L, 2, F, l->m->V, &n);
    if (n > l->max_ctx - l->n_hist) free(ids);
    check_room(L, l, n, F);
    int old = l->n_hist;
    memcpy(l->hist + l->n_hist, ids, sizeof *ids * (size_t)n);
    l->n_hist += n;
    free(ids);
    if (llm_compute(l, 0, old) != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_pushinteger(L, l->n_hist);
    return 1;
}

/* llm:feed(id): one decode step through the KV cache */
static int m_feed(lua_State *L) {
    const char *F = "llm:feed";
    lllm *l = check_llm(L, 1, F);
    int32_t id = (int32_t)lhyb_check_int(L, 2, F, "id", 0, l->m->V - 1);
    check_room(L, l, 1, F);
    int old = l->n_hist;
    l->hist[l->n_hist++] = id;
    if (llm_compute(l, 1, old) != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_pushinteger(L, l->n_hist);
    return 1;
}

/* llm:logits() -> a new hyb.tensor [V] (copy) of the last position's logits */
static int m_logits(lua_State *L) {
    lllm *l = check_llm(L, 1, "llm:logits");
    if (llm_compute(l, 0, l->n_hist) != HYB_OK) return lhyb_raise_hyb(L, "llm:logits");
    if (!l->have_logits) return luaL_error(L, "llm:logits: nothing fed yet (call llm:prefill)");
    int64_t shape[1] = {l->m->V};
    hyb_tensor *t = hyb_tensor_new(HYB_F32, 1, shape);
    if (t) memcpy(t->data, l->logits, sizeof(float) * (size_t)l->m->V);
    lhyb_push_owned(L, t, "llm:logits");
    return 1;
}

/* llm:stats() -> {prefill_tokens, prefill_s, decode_tokens, decode_s} */
static int m_stats(lua_State *L) {
    lllm *l = check_llm(L, 1, "llm:stats");
    lua_createtable(L, 0, 4);
    lhyb_set_int(L, "prefill_tokens", l->n_prefill);
    lhyb_set_num(L, "prefill_s", l->t_prefill);
    lhyb_set_int(L, "decode_tokens", l->n_decode);
    lhyb_set_num(L, "decode_s", l->t_decode);
    return 1;
}

static int m_close(lua_State *L) {
    lllm *l = (lllm *)luaL_checkudata(L, 1, LHYB_LLM_MT);
    llm_release(l);
    return 0;
}

static int m_tostring(lua_State *L) {
    lllm *l = (lllm *)luaL_checkudata(L, 1, LHYB_LLM_MT);
    if (!l->m)
        lua_pushstring(L, "hyb.llm(closed)");
    else
        lua_pushfstring(L, "hyb.llm(%s, %d layers, vocab %d, %d/%d tokens)", l->m->map->name,
                        l->m->L, l->m->V, l->n_hist, l->max_ctx);
    return 1;
}

/* ---- sampler ----------------------------------------------------------------------------------*/

typedef struct lsampler {
    hyb_sampler_params p;
    uint64_t seed;
    hyb_sampler *s; /* made on first use, for the vocabulary it meets */
} lsampler;

static lsampler *check_sampler(lua_State *L, int idx, const char *fname) {
    lsampler *s = (lsampler *)lhyb_test_class(L, idx, LHYB_SAMPLER_MT, fname);
    return s;
}

static hyb_sampler *sampler_for(lua_State *L, lsampler *ls, int V, const char *fname) {
    if (ls->s && ls->s->V != V) {
        hyb_sampler_free(ls->s);
        ls->s = NULL;
    }
    if (!ls->s && hyb_sampler_new(V, &ls->p, ls->seed, &ls->s) != HYB_OK) {
        ls->s = NULL;
        lhyb_raise_hyb(L, fname);
    }
    return ls->s;
}

/* hyb.sampler{temperature = 0, top_k = 0, top_p = 1, repetition_penalty = 1, seed = 0} */
static int l_sampler(lua_State *L) {
    static const char *const allowed[] = {"temperature",        "top_k", "top_p",
                                          "repetition_penalty", "seed",  NULL};
    const char *F = "hyb.sampler";
    lhyb_check_opts(L, 1, F, allowed);
    hyb_sampler_params p = hyb_sampler_defaults();
    p.temperature = (float)lhyb_opt_field_number(L, 1, F, "temperature", 0.0);
    p.top_k = (int)lhyb_opt_field_int(L, 1, F, "top_k", 0, 1 << 30, 0);
    p.top_p = (float)lhyb_opt_field_number(L, 1, F, "top_p", 1.0);
    p.repetition_penalty = (float)lhyb_opt_field_number(L, 1, F, "repetition_penalty", 1.0);
    lua_Integer seed = lhyb_opt_field_int(L, 1, F, "seed", 0, LUA_MAXINTEGER, 0);
    hyb_sampler *probe = NULL;
    if (hyb_sampler_new(1, &p, 0, &probe) != HYB_OK) return lhyb_raise_hyb(L, F); /* validate */
    hyb_sampler_free(probe);
    lsampler *ls = (lsampler *)lua_newuserdatauv(L, sizeof(lsampler), 0);
    memset(ls, 0, sizeof *ls);
    luaL_setmetatable(L, LHYB_SAMPLER_MT);
    ls->p = p;
    ls->seed = (uint64_t)seed;
    return 1;
}

/* llm:sample([sampler]) -> id: from the last logits, penalising the whole context */
static int m_sample(lua_State *L) {
    const char *F = "llm:sample";
    lllm *l = check_llm(L, 1, F);
    if (llm_compute(l, 0, l->n_hist) != HYB_OK) return lhyb_raise_hyb(L, F);
    if (!l->have_logits) return luaL_error(L, "%s: nothing fed yet (call llm:prefill)", F);
    int32_t tok;
    if (lua_isnoneornil(L, 2)) {
        tok = hyb_sample_argmax(l->logits, l->m->V);
    } else {
        lsampler *ls = check_sampler(L, 2, F);
        tok = hyb_sampler_sample(sampler_for(L, ls, l->m->V, F), l->logits, l->hist, l->n_hist);
    }
    if (tok < 0) return lhyb_raise_hyb(L, F);
    lua_pushinteger(L, tok);
    return 1;
}

/* ---- llm:generate: one request of the generation API (hyb/engine.h) ---------------------*/

typedef struct gen_cb {
    lua_State *L;
    lllm *l;
    int fn;     /* stack index of on_text (0: none) */
    int failed; /* on_text raised: its error is on the stack */
} gen_cb;

static int gen_on_token(void *user, const hyb_token_event *ev) {
    gen_cb *cb = (gen_cb *)user;
    if (ev->finish >= 0) { /* the context's last logits: those the final token came from */
        memcpy(cb->l->logits, ev->logits, sizeof(float) * (size_t)cb->l->m->V);
        cb->l->have_logits = 1;
    }
    if (!cb->fn || ev->text_len == 0) return 0;
    lua_pushvalue(cb->L, cb->fn);
    lua_pushlstring(cb->L, ev->text, ev->text_len);
    if (lua_pcall(cb->L, 1, 0, 0) != LUA_OK) {
        cb->failed = 1;
        return HYB_ERR_ARG;
    }
    return 0;
}

/* genlib's names for the ways a generate call ends, by HYB_FINISH_* */
static const char *const reason_names[] = {"max_tokens", "eos", "context", "stop", "error"};

/* llm:generate(ids[, {sampler=, max_tokens=128, stop={...}, on_text=fn}]) -> {text, ids, reason,
 * prefill_tokens, prefill_s, decode_tokens, decode_s}. Continues the context with ids, then
 * samples until the tokenizer's EOS, a stop string, max_tokens or a full context. */
static int m_generate(lua_State *L) {
    static const char *const allowed[] = {"sampler", "max_tokens", "stop", "on_text", NULL};
    const char *F = "llm:generate";
    char buf[96];
    lllm *l = check_llm(L, 1, F);
    lua_settop(L, 3);
    lhyb_check_opts(L, 3, F, allowed);
    int n;
    int32_t *ids = ids_arg(L, 2, F, l->m->V, &n);
    free(ids); /* checked here; copied into the context below */
    if (n == 0 && l->n_hist == l->s->pos[0]) return luaL_error(L, "%s: ids is empty", F);
    if (n >= l->max_ctx - l->n_hist)
        return luaL_error(L,
                          "%s: ids (%d tokens) leave no room for a new token: the context holds "
                          "%d of max_ctx %d",
                          F, n, l->n_hist, l->max_ctx);
    hyb_request_params p = hyb_request_defaults();
    p.max_tokens = (int)lhyb_opt_field_int(L, 3, F, "max_tokens", 1, l->max_ctx - 1, 128);
    int hist0 = l->n_hist;
    const char *stops[HYB_ENGINE_MAX_STOP];
    gen_cb cb = {L, l, 0, 0};
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "sampler"); /* 4 */
        if (!lua_isnil(L, 4)) p.sampler_state = sampler_for(L, check_sampler(L, 4, F), l->m->V, F);
        lua_getfield(L, 3, "stop"); /* 5 */
        if (lua_istable(L, 5)) {
            lua_Integer k = (lua_Integer)lua_rawlen(L, 5);
            if (k > HYB_ENGINE_MAX_STOP)
                return luaL_error(L, "%s: stop holds %d strings, at most %d", F, (int)k,
                                  HYB_ENGINE_MAX_STOP);
            for (lua_Integer i = 1; i <= k; i++) {
                lua_rawgeti(L, 5, i);
                if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
                    return luaL_error(L, "%s: stop[%d] must be a non-empty string, got %s", F,
                                      (int)i, lhyb_describe(L, -1, buf, sizeof buf));
                stops[p.n_stop++] = lua_tostring(L, -1);
                lua_pop(L, 1); /* the table holds it */
            }
        } else if (!lua_isnil(L, 5)) {
            return luaL_error(L, "%s: stop must be a table of strings, got %s", F,
                              lhyb_describe(L, 5, buf, sizeof buf));
        }
        lua_getfield(L, 3, "on_text"); /* 6 */
        if (lua_isfunction(L, 6))
            cb.fn = 6;
        else if (!lua_isnil(L, 6))
            return luaL_error(L, "%s: on_text must be a function, got %s", F,
                              lhyb_describe(L, 6, buf, sizeof buf));
    }
    /* the request's prompt: the whole context (the slot holds its computed part) + ids */
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        l->hist[l->n_hist + i] = (int32_t)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    int n_prompt = l->n_hist + n;
    p.stop = stops;
    p.tok = l->tok;
    p.on_token = gen_on_token;
    p.user = &cb;
    p.flags = HYB_REQ_PIN | HYB_REQ_CONTINUE | HYB_REQ_FINAL_LOGITS; /* gen_on_token reads the
                                                                        final token's only */
    p.slot = 0;
    int32_t eos = hyb_tokenizer_eos_id(l->tok);
    if (eos >= 0 && eos < l->m->V) p.eos[p.n_eos++] = eos;
    if (hyb_engine_submit(l->e, l->hist, n_prompt, &p, NULL) != HYB_OK) return lhyb_raise_hyb(L, F);
    int rc = hyb_engine_run(l->e);
    hyb_completion c;
    int got = hyb_engine_pop(l->e, &c);
    /* the context: the prompt and what was fed; a max_tokens ending keeps its last token, to be
     * computed when needed (as if fed) */
    if (got) {
        int keep = c.n_tokens - 1 + (c.finish == HYB_FINISH_LENGTH);
        if (keep < 0) keep = 0;
        if (n_prompt + keep > l->max_ctx) keep = l->max_ctx - n_prompt;
        memcpy(l->hist + n_prompt, c.tokens, sizeof(int32_t) * (size_t)keep);
        l->n_hist = n_prompt + keep;
        l->n_prefill += c.prefill_tokens;
        l->t_prefill += c.prefill_s;
        l->n_decode += c.decode_tokens;
        l->t_decode += c.decode_s;
    } else {
        l->n_hist = hist0 > l->s->pos[0] ? hist0 : l->s->pos[0];
    }
    if (l->n_hist < l->s->pos[0]) l->n_hist = l->s->pos[0];
    if (rc != HYB_OK || !got) {
        if (got) hyb_completion_free(&c);
        if (cb.failed) return lua_error(L); /* on_text's error, as it raised it */
        return lhyb_raise_hyb(L, F);
    }
    lua_createtable(L, 0, 8);
    lua_pushlstring(L, c.text ? c.text : "", c.text_len);
    lua_setfield(L, -2, "text");
    push_ids(L, c.tokens, (size_t)(c.n_tokens - (c.finish == HYB_FINISH_EOS)));
    lua_setfield(L, -2, "ids");
    int why = c.finish >= 0 && c.finish <= HYB_FINISH_ERROR ? c.finish : HYB_FINISH_ERROR;
    lua_pushstring(L, reason_names[why]);
    lua_setfield(L, -2, "reason");
    lhyb_set_int(L, "prefill_tokens", c.prefill_tokens);
    lhyb_set_num(L, "prefill_s", c.prefill_s);
    lhyb_set_int(L, "decode_tokens", c.decode_tokens);
    lhyb_set_num(L, "decode_s", c.decode_s);
    hyb_completion_free(&c);
    return 1;
}

/* sampler:sample(logits tensor[, history ids]) -> id */
static int s_sample(lua_State *L) {
    const char *F = "sampler:sample";
    lsampler *ls = check_sampler(L, 1, F);
    lhyb_tensor *t = lhyb_check_tensor(L, 2, F, "logits");
    if (t->t->dtype != HYB_F32 || !hyb_tensor_is_contiguous(t->t))
        return luaL_error(L, "%s: logits must be a contiguous f32 tensor", F);
    int V = (int)t->t->shape[t->t->ndim - 1];
    int64_t rows = hyb_tensor_numel(t->t) / V;
    const float *lg = hyb_tensor_cf32(t->t) + (rows - 1) * V; /* last row */
    int n = 0;
    int32_t *hist = lua_isnoneornil(L, 3) ? NULL : ids_arg(L, 3, F, V, &n);
    int32_t tok = hyb_sampler_sample(sampler_for(L, ls, V, F), lg, hist, n);
    free(hist);
    if (tok < 0) return lhyb_raise_hyb(L, F);
    lua_pushinteger(L, tok);
    return 1;
}

static int s_reseed(lua_State *L) {
    lsampler *ls = check_sampler(L, 1, "sampler:reseed");
    lua_Integer seed = lhyb_check_int(L, 2, "sampler:reseed", "seed", 0, LUA_MAXINTEGER);
    ls->seed = (uint64_t)seed;
    if (ls->s) hyb_sampler_reseed(ls->s, ls->seed);
    return 0;
}

static int s_gc(lua_State *L) {
    lsampler *ls = (lsampler *)luaL_checkudata(L, 1, LHYB_SAMPLER_MT);
    hyb_sampler_free(ls->s);
    ls->s = NULL;
    return 0;
}

static int s_tostring(lua_State *L) {
    lsampler *ls = (lsampler *)luaL_checkudata(L, 1, LHYB_SAMPLER_MT);
    char buf[160];
    snprintf(buf, sizeof buf,
             "hyb.sampler(temperature=%g, top_k=%d, top_p=%g, repetition_penalty=%g)",
             (double)ls->p.temperature, ls->p.top_k, (double)ls->p.top_p,
             (double)ls->p.repetition_penalty);
    lua_pushstring(L, buf);
    return 1;
}

void lhyb_open_generate(lua_State *L) {
    static const luaL_Reg llm_methods[] = {
        {"encode", m_encode},         {"decode", m_decode},     {"piece", m_piece},
        {"token_id", m_token_id},     {"eos", m_eos},           {"bos", m_bos},
        {"vocab_size", m_vocab_size}, {"max_ctx", m_max_ctx},   {"pos", m_pos},
        {"reset", m_reset},           {"prefill", m_prefill},   {"feed", m_feed},
        {"sample", m_sample},         {"generate", m_generate}, {"logits", m_logits},
        {"stats", m_stats},           {"close", m_close},
        {"chat_template", m_chat_template}, {"apply_chat_template", m_apply_chat_template},
        {NULL, NULL}};
    static const luaL_Reg sampler_methods[] = {
        {"sample", s_sample}, {"reseed", s_reseed}, {NULL, NULL}};
    lhyb_register_class(L, LHYB_LLM_MT, llm_methods, m_close, m_close, m_tostring);
    lhyb_register_class(L, LHYB_SAMPLER_MT, sampler_methods, s_gc, NULL, s_tostring);

    /* into the module table at the top of the stack */
    lua_pushcfunction(L, l_llm);
    lua_setfield(L, -2, "llm");
    lua_pushcfunction(L, l_sampler);
    lua_setfield(L, -2, "sampler");
}
