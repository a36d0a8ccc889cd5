/* runtime/lua_train.c: distillation for Lua scripts: hyb.train (schedule, clone, load, freeze,
 * trainer, checkpoints, greedy decoding) and hyb.data.tokenizer / hyb.data.dataset.
 *
 *   local teacher = hyb.train.load("SmolLM2-135M-Instruct.Q4_1.gguf")
 *   local student = hyb.train.clone(teacher)
 *   student:swap({3, 5}, "mamba1", {init = "mil"})
 *   local tok = hyb.data.tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")
 *   local ds = hyb.data.dataset{files = {"/usr/share/common-licenses"}, tokenizer = tok,
 *                               cache = "run/data.bin", val_fraction = 0.05, seed = 1}
 *   local tr = hyb.train.trainer(student, {teacher = teacher, lr = 3e-4, min_lr = 3e-5,
 *                                          warmup = 20, steps = 1000, accum = 2})
 *   local ids = ds:batch(tr:steps(), 2 * B, T, seed)        -- accum * B rows
 *   local st = tr:step(ids, B, T)                         -- {loss=, rkl=, lr=, grad_norm=, ...}
 *   tr:save("run/ckpt.safetensors", {stage = "1"}); local meta = tr:load("run/ckpt.safetensors")
 *
 * A trainer keeps its student and teacher alive; a swap of the student after the trainer was made
 * makes every trainer call an error (make a new trainer).
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hyb/atomic.h"
#include "hyb/config.h"
#include "hyb/data.h"
#include "hyb/hf.h"
#include "hyb/train.h"
#include "hyb/backend.h"
#include "hyb/engine.h"
#include "hyb/comm.h"
#include "lhyb.h"

#define LHYB_TRAINER_MT "hyb.trainer"
#define LHYB_TOKENIZER_MT "hyb.tokenizer"
#define LHYB_DATASET_MT "hyb.dataset"

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}
static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static const char *check_string(lua_State *L, int idx, const char *F, const char *what) {
    char buf[96];
    if (lua_type(L, idx) != LUA_TSTRING)
        lhyb_error(L, "%s: %s must be a string, got %s", F, what,
                   lhyb_describe(L, idx, buf, sizeof buf));
    return lua_tostring(L, idx);
}

/* mkdir -p of the directory part of path */
static void make_parent(lua_State *L, const char *F, const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return;
    char dir[4096];
    size_t n = (size_t)(slash - path);
    if (n >= sizeof dir) lhyb_error(L, "%s: path too long", F);
    memcpy(dir, path, n);
    dir[n] = 0;
    if (hyb_mkdir_p(dir) != HYB_OK) lhyb_raise_hyb(L, F);
}

// ---- hyb.train: functions -----------------------------------------------------------------------

/* opts[key], a number in its stated range [lo, hi] ((lo, hi] with lo_open), def when absent;
 * checked as a double, before the caller narrows it to a float (1e300 is an error, not inf). */
static double opt_range(lua_State *L, int idx, const char *F, const char *key, double def,
                        double lo, double hi, int lo_open) {
    double v = lhyb_opt_field_number(L, idx, F, key, def);
    if (!(v >= lo && v <= hi) || (lo_open && v == lo))
        lhyb_error(L, "%s: option '%s' must be in %s%g, %g], got %g", F, key, lo_open ? "(" : "[",
                   lo, hi, v);
    return v;
}

static void sched_from_opts(lua_State *L, int idx, const char *F, hyb_lr_sched *s) {
    s->lr_max = (float)opt_range(L, idx, F, "lr", 3e-4, 0, 10, 0);
    s->lr_min = (float)opt_range(L, idx, F, "min_lr", s->lr_max * 0.1, 0, 10, 0);
    /* step counters: [0, 2^53], as a checkpoint's (core/train.c) */
    s->warmup = lhyb_opt_field_int(L, idx, F, "warmup", 0, (lua_Integer)1 << 53, 0);
    s->total = lhyb_opt_field_int(L, idx, F, "steps", 0, (lua_Integer)1 << 53, 0);
}

/* hyb.train.lr(step, {lr=, min_lr=, warmup=, steps=}) -> the learning rate of update `step`
 * (0-based) */
static int l_lr(lua_State *L) {
    static const char *const allowed[] = {"lr", "min_lr", "warmup", "steps", NULL};
    const char *F = "hyb.train.lr";
    lua_Integer step = lhyb_check_int(L, 1, F, "step", 0, LUA_MAXINTEGER);
    if (!lua_istable(L, 2))
        return lhyb_error(L, "%s: the schedule must be a table {lr=, min_lr=, warmup=, steps=}", F);
    lhyb_check_opts(L, 2, F, allowed);
    hyb_lr_sched s;
    sched_from_opts(L, 2, F, &s);
    lua_pushnumber(L, hyb_lr_at(&s, step));
    return 1;
}

/* hyb.train.clone(model) -> a new hyb.model with the same layers and parameters */
static int l_clone(lua_State *L) {
    hyb_model *src = lhyb_check_model(L, 1, "hyb.train.clone");
    hyb_model *m = NULL;
    if (hyb_model_clone(src, &m) != HYB_OK) return lhyb_raise_hyb(L, "hyb.train.clone");
    lhyb_push_model(L, m, "hyb.train.clone");
    return 1;
}

/* hyb.train.load(path[, {device = "cpu"|"cuda[:N]", quant = "off"|"precise"|"fast"}]) ->
 * hyb.model from a .gguf file, an HF directory (config.json), a directory saved by model:save
 * (layermap.toml) or a training checkpoint (.safetensors), on the device asked for. quant
 * (a .gguf only; default off = f32, trainable): keep the frozen weights in their blocks and
 * compute in that mode (inference only: a backward through them is refused) */
/* The base of a lean checkpoint (metadata hyb_base, hyb_base_hash; NULL / HYB_OK when it has
 * none) must still hash as it did when the checkpoint was written. */
static int check_base(const char *path, const hyb_ckpt_meta *meta, const char **base) {
    *base = hyb_ckpt_meta_get(meta, "hyb_base");
    if (!*base) return HYB_OK;
    const char *want = hyb_ckpt_meta_get(meta, "hyb_base_hash");
    char have[17];
    int rc = hyb_file_hash(*base, have);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s: its base (a lean checkpoint keeps only what training changed)", path);
    if (!want || strcmp(want, have) != 0)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: its base %s has changed since the checkpoint was written (hash %s, "
                             "recorded %s): the frozen parameters would not be the trained model's",
                             path, *base, have, want ? want : "(none)");
    return HYB_OK;
}

/* A model from any path hyb.train.load takes; a lean checkpoint loads its base first (depth:
 * chains of lean checkpoints, each stage's on the previous stage's). */
static int load_model(lua_State *L, const char *F, const char *path, int depth, int quant,
                      hyb_model **m) {
    char p[4200];
    *m = NULL;
    if (is_dir(path)) {
        snprintf(p, sizeof p, "%s/layermap.toml", path);
        if (is_file(p)) return hyb_model_load(path, m);
        return hyb_model_load_hf_dir(path, m);
    }
    if (ends_with(path, ".gguf")) return hyb_model_load_gguf_ex(path, quant, m);
    if (ends_with(path, ".safetensors")) {
        hyb_ckpt_meta meta;
        HYB_TRY(hyb_ckpt_read_meta(path, &meta));
        const char *base_path;
        int rc = check_base(path, &meta, &base_path);
        if (rc == HYB_OK && !base_path) rc = hyb_model_from_checkpoint(path, m);
        if (rc == HYB_OK && base_path) {
            hyb_model *base = NULL;
            if (depth >= 32)
                rc = hyb_error_set(HYB_ERR_FORMAT, "%s: more than 32 lean checkpoints on one another", path);
            else
                rc = load_model(L, F, base_path, depth + 1, 0, &base);
            if (rc == HYB_OK) rc = hyb_model_from_checkpoint_base(path, base, m);
            hyb_model_free(base);
        }
        hyb_ckpt_meta_free(&meta);
        return rc;
    }
    if (!is_file(path)) return hyb_error_set(HYB_ERR_NOTFOUND, "'%s' does not exist", path);
    return hyb_error_set(HYB_ERR_ARG,
                         "'%s': expected a .gguf file, a training checkpoint (.safetensors) or a "
                         "directory",
                         path);
}

static int l_load(lua_State *L) {
    static const char *const allowed[] = {"device", "quant", NULL};
    const char *F = "hyb.train.load";
    const char *path = check_string(L, 1, F, "path");
    lhyb_check_opts(L, 2, F, allowed);
    const hyb_backend *be = lhyb_opt_device(L, 2, F);
    /* f32 (trainable) unless quant is given: a frozen model (a teacher, an evaluation) may keep
     * a quantized GGUF's blocks */
    const int quant = lhyb_opt_quant(L, 2, F, 0);
    hyb_model *m = NULL;
    int rc = load_model(L, F, path, 0, quant, &m);
    if (rc == HYB_OK && be && (rc = hyb_model_to_device(m, be)) != HYB_OK) hyb_model_free(m);
    if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    lhyb_push_model(L, m, F);
    return 1;
}

/* hyb.train.freeze(model, pattern[, frozen = true]) -> number of parameters matched (glob) */
static int l_freeze(lua_State *L) {
    const char *F = "hyb.train.freeze";
    hyb_model *m = lhyb_check_model(L, 1, F);
    const char *pat = check_string(L, 2, F, "pattern");
    int frozen = lua_isnoneornil(L, 3) ? 1 : lua_toboolean(L, 3);
    if (!lua_isnoneornil(L, 3) && !lua_isboolean(L, 3))
        return lhyb_error(L, "%s: frozen must be a boolean", F);
    int n = hyb_model_freeze(m, pat, frozen);
    if (n < 0) return lhyb_raise_hyb(L, F);
    lua_pushinteger(L, n);
    return 1;
}

/* hyb.train.frozen(model) -> list of the frozen parameters' names */
static int l_frozen(lua_State *L) {
    hyb_model *m = lhyb_check_model(L, 1, "hyb.train.frozen");
    lua_newtable(L);
    int k = 0;
    for (int i = 0; i < m->n_params; i++)
        if (!m->params[i]->requires_grad) {
            lua_pushstring(L, m->params[i]->name);
            lua_rawseti(L, -2, ++k);
        }
    return 1;
}

static void push_meta(lua_State *L, const hyb_ckpt_meta *meta) {
    lua_createtable(L, 0, meta->n);
    for (int i = 0; i < meta->n; i++) {
        lua_pushstring(L, meta->vals[i]);
        lua_setfield(L, -2, meta->keys[i]);
    }
}

/* hyb.train.layermap_toml(model) -> the model's layer map as TOML text (what model:save writes) */
static int l_layermap_toml(lua_State *L) {
    hyb_model *m = lhyb_check_model(L, 1, "hyb.train.layermap_toml");
    char *t = hyb_model_layermap_toml(m);
    if (!t) return lhyb_raise_hyb(L, "hyb.train.layermap_toml");
    lua_pushstring(L, t);
    free(t);
    return 1;
}

/* hyb.train.checkpoint_meta(path) -> the metadata table of a training checkpoint */
static int l_checkpoint_meta(lua_State *L) {
    const char *F = "hyb.train.checkpoint_meta";
    const char *path = check_string(L, 1, F, "path");
    hyb_ckpt_meta meta;
    if (hyb_ckpt_read_meta(path, &meta) != HYB_OK) return lhyb_raise_hyb(L, F);
    push_meta(L, &meta);
    hyb_ckpt_meta_free(&meta);
    return 1;
}

/* hyb.train.greedy(model, prompt_ids, n) -> the n greedy continuation ids: one request of the
 * generation API (hyb/engine.h) on a one-slot engine of prompt + n tokens; no EOS stops it. */
static int l_greedy(lua_State *L) {
    const char *F = "hyb.train.greedy";
    hyb_model *m = lhyb_check_model(L, 1, F);
    if (!lua_istable(L, 2)) return lhyb_error(L, "%s: prompt must be a table of token ids", F);
    lua_Integer np = (lua_Integer)lua_rawlen(L, 2);
    if (np < 1) return lhyb_error(L, "%s: the prompt is empty", F);
    lua_Integer n = lhyb_check_int(L, 3, F, "n", 1, 1 << 20);
    int32_t *ids = lhyb_check_ids(L, 2, F, "prompt", np, 0, m->V - 1);
    if (m->map->max_seq > 0 && np + n > m->map->max_seq)
        return lhyb_error(L, "%s: prompt %lld + n %lld exceeds the model's max_seq %d", F,
                          (long long)np, (long long)n, m->map->max_seq);
    hyb_engine_opts o = hyb_engine_defaults();
    o.slots = 1;
    o.max_ctx = (int)(np + n);
    hyb_request_params p = hyb_request_defaults(); /* greedy */
    p.max_tokens = (int)n;
    hyb_engine *e = NULL;
    hyb_completion c = {0};
    int rc = hyb_engine_new(m, &o, &e);
    if (rc == HYB_OK) rc = hyb_engine_submit(e, ids, (int)np, &p, NULL);
    if (rc == HYB_OK) rc = hyb_engine_run(e);
    if (rc == HYB_OK && !hyb_engine_pop(e, &c))
        rc = hyb_error_set(HYB_ERR, "%s: the request did not finish", F);
    hyb_engine_free(e);
    if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_createtable(L, c.n_tokens, 0);
    for (int i = 0; i < c.n_tokens; i++) {
        lua_pushinteger(L, c.tokens[i]);
        lua_rawseti(L, -2, i + 1);
    }
    hyb_completion_free(&c);
    return 1;
}

static int toml_box_gc(lua_State *L) {
    hyb_toml **box = (hyb_toml **)lua_touserdata(L, 1);
    if (box && *box) hyb_toml_free(*box);
    if (box) *box = NULL;
    return 0;
}

/* Convert a TOML table into a Lua table (pushed); arrays of integers/strings/floats become lists.
 */
static void push_cfg_table(lua_State *L, const hyb_cfg_table *t, const char *F) {
    const char **keys = NULL;
    int nk = hyb_cfg_keys(t, &keys);
    lua_createtable(L, 0, nk);
    for (int i = 0; i < nk; i++) {
        const char *k = keys[i];
        const hyb_cfg_table *sub = hyb_cfg_subtable(t, k);
        int64_t iv;
        int bv;
        double fv;
        const char *sv;
        if (sub) {
            push_cfg_table(L, sub, F);
        } else if (hyb_cfg_int(t, k, 0, &iv) == HYB_OK) {
            lua_pushinteger(L, (lua_Integer)iv);
        } else if (hyb_cfg_bool(t, k, 0, &bv) == HYB_OK) {
            lua_pushboolean(L, bv);
        } else if (hyb_cfg_float(t, k, 0, &fv) == HYB_OK) {
            lua_pushnumber(L, fv);
        } else if (hyb_cfg_string(t, k, NULL, &sv) == HYB_OK && sv) {
            lua_pushstring(L, sv);
        } else {
            hyb_error_clear();
            int n = hyb_cfg_array_len(t, k);
            if (n < 0) lhyb_raise_hyb(L, F);
            lua_createtable(L, n, 0);
            for (int j = 0; j < n; j++) {
                if (hyb_cfg_array_int(t, k, j, &iv) == HYB_OK)
                    lua_pushinteger(L, (lua_Integer)iv);
                else if (hyb_cfg_array_string(t, k, j, &sv) == HYB_OK)
                    lua_pushstring(L, sv);
                else {
                    char where[200];
                    lhyb_error(L,
                               "%s: %s: key '%s': array element %d must be an integer or a string",
                               F, hyb_cfg_where(t, k, where, sizeof where), k, j + 1);
                }
                lua_rawseti(L, -2, j + 1);
            }
        }
        hyb_error_clear();
        lua_setfield(L, -2, k);
    }
    /* key order of the file (stages run in the order they are written) */
    lua_createtable(L, nk, 0);
    for (int i = 0; i < nk; i++) {
        lua_pushstring(L, keys[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "__order");
}

/* Into the table at the top of the stack: "<prefix>key" -> "source:line:col" of every key of t
 * and of its subtables (inline ones too), for messages that point into the file. */
static void push_cfg_positions(lua_State *L, const hyb_cfg_table *t, const char *prefix) {
    const char **keys = NULL;
    int nk = hyb_cfg_keys(t, &keys);
    for (int i = 0; i < nk; i++) {
        char where[1200], full[600];
        snprintf(full, sizeof full, "%s%s", prefix, keys[i]);
        lua_pushstring(L, hyb_cfg_where(t, keys[i], where, sizeof where));
        lua_setfield(L, -2, full);
        const hyb_cfg_table *sub = hyb_cfg_subtable(t, keys[i]);
        if (sub) {
            char sp[608];
            snprintf(sp, sizeof sp, "%s.", full);
            push_cfg_positions(L, sub, sp);
        }
    }
}

/* hyb.train.read_toml(path [, {positions = true}]) -> a Lua table (every table gets an "__order"
 * list of its keys); with positions, a second table: dotted key path ("train.lr",
 * "stages.h3.steps", "data.generate.n") -> "path:line:col" of that key in the file */
static int l_read_toml(lua_State *L) {
    static const char *const allowed[] = {"positions", NULL};
    const char *F = "hyb.train.read_toml";
    const char *path = check_string(L, 1, F, "path");
    lhyb_check_opts(L, 2, F, allowed);
    int want_pos = lua_istable(L, 2) && lhyb_opt_field_bool(L, 2, F, "positions", 0);
    lua_settop(L, 1);
    hyb_toml *doc = hyb_toml_parse_file(path);
    if (!doc) return lhyb_raise_hyb(L, F);
    /* free the document even when a conversion error is raised: a to-be-closed userdata */
    hyb_toml **box = (hyb_toml **)lua_newuserdatauv(L, sizeof(hyb_toml *), 0);
    *box = doc;
    lua_newtable(L);
    lua_pushcfunction(L, toml_box_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    push_cfg_table(L, hyb_toml_root(doc), F);
    if (want_pos) {
        lua_newtable(L);
        push_cfg_positions(L, hyb_toml_root(doc), "");
    }
    hyb_toml_free(doc);
    *box = NULL;
    return want_pos ? 2 : 1;
}

// ---- trainer ------------------------------------------------------------------------------------

typedef struct ltrainer {
    hyb_trainer *t; /* NULL once closed */
} ltrainer;

static ltrainer *check_trainer(lua_State *L, int idx, const char *F) {
    ltrainer *t = (ltrainer *)lhyb_test_class(L, idx, LHYB_TRAINER_MT, F);
    if (!t->t) lhyb_error(L, "%s: the trainer is closed", F);
    /* the models are kept alive by the user values; they may have been closed explicitly */
    lua_getiuservalue(L, idx, 1);
    lhyb_check_model(L, -1, F);
    lua_pop(L, 1);
    lua_getiuservalue(L, idx, 2);
    if (!lua_isnil(L, -1)) lhyb_check_model(L, -1, F);
    lua_pop(L, 1);
    return t;
}

/* hyb.train.trainer(student, {teacher=, lr=, min_lr=, warmup=, steps=, weight_decay=, betas=,
 *   eps=, clip=, accum=, loss="reverse_kl"|"forward_kl"|"ce"|"mix", weights={rkl=,fkl=,ce=},
 *   temperature=}) */
static int l_trainer(lua_State *L) {
    static const char *const allowed[] = {
        "teacher", "lr",   "min_lr", "warmup", "steps",   "weight_decay", "betas",
        "eps",     "clip", "accum",  "loss",   "weights", "temperature",  "data_parallel",
        "bucket_mb", "comm_profile", NULL};
    const char *F = "hyb.train.trainer";
    lua_settop(L, 2);
    hyb_model *student = lhyb_check_model(L, 1, F);
    lhyb_check_opts(L, 2, F, allowed);
    hyb_trainer_cfg c;
    hyb_trainer_cfg_default(&c);
    sched_from_opts(L, 2, F, &c.sched);
    /* the stated ranges: weight_decay [0, 10], eps (0, 1], clip [0, 1e6] (0: none),
     * temperature (0, 100], betas [0, 1), loss weights [0, 1e3] */
    c.weight_decay = (float)opt_range(L, 2, F, "weight_decay", c.weight_decay, 0, 10, 0);
    c.eps = (float)opt_range(L, 2, F, "eps", c.eps, 0, 1, 1);
    c.clip = (float)opt_range(L, 2, F, "clip", c.clip, 0, 1e6, 0);
    c.accum = (int)lhyb_opt_field_int(L, 2, F, "accum", 1, 1 << 16, 1);
    c.loss.temperature = (float)opt_range(L, 2, F, "temperature", 1.0, 0, 100, 1);
    const char *loss = lhyb_opt_field_string(L, 2, F, "loss", "reverse_kl");
    c.loss.w_rkl = c.loss.w_fkl = c.loss.w_ce = 0;
    int mix = 0;
    if (strcmp(loss, "reverse_kl") == 0)
        c.loss.w_rkl = 1;
    else if (strcmp(loss, "forward_kl") == 0)
        c.loss.w_fkl = 1;
    else if (strcmp(loss, "ce") == 0)
        c.loss.w_ce = 1;
    else if (strcmp(loss, "mix") == 0)
        mix = 1;
    else
        return lhyb_error(L,
                          "%s: option 'loss' must be \"reverse_kl\", \"forward_kl\", \"ce\" or "
                          "\"mix\", got \"%s\"",
                          F, loss);
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "weights");
        if (!lua_isnil(L, -1)) {
            static const char *const wk[] = {"rkl", "fkl", "ce", NULL};
            if (!mix) return lhyb_error(L, "%s: option 'weights' is for loss = \"mix\"", F);
            int wi = lua_gettop(L);
            lhyb_check_opts(L, wi, F, wk);
            c.loss.w_rkl = (float)opt_range(L, wi, F, "rkl", 0, 0, 1e3, 0);
            c.loss.w_fkl = (float)opt_range(L, wi, F, "fkl", 0, 0, 1e3, 0);
            c.loss.w_ce = (float)opt_range(L, wi, F, "ce", 0, 0, 1e3, 0);
        } else if (mix) {
            return lhyb_error(L, "%s: loss = \"mix\" needs option 'weights' = {rkl=, fkl=, ce=}",
                              F);
        }
        lua_pop(L, 1);
        lua_getfield(L, 2, "betas");
        if (!lua_isnil(L, -1)) {
            if (!lua_istable(L, -1) || lua_rawlen(L, -1) != 2)
                return lhyb_error(L, "%s: option 'betas' must be a table {beta1, beta2}", F);
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            double b1 = lhyb_check_number(L, -2, F, "betas[1]");
            double b2 = lhyb_check_number(L, -1, F, "betas[2]");
            if (!(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1))
                return lhyb_error(L, "%s: betas must be in [0, 1), got {%g, %g}", F, b1, b2);
            c.beta1 = (float)b1, c.beta2 = (float)b2;
            lua_pop(L, 2);
        }
        lua_pop(L, 1);
    } else if (mix) {
        return lhyb_error(L, "%s: loss = \"mix\" needs option 'weights' = {rkl=, fkl=, ce=}", F);
    }
    hyb_model *teacher = NULL;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "teacher");
        if (!lua_isnil(L, -1)) teacher = lhyb_check_model(L, -1, F);
        lua_pop(L, 1);
    }
    if ((c.loss.w_rkl > 0 || c.loss.w_fkl > 0) && !teacher)
        return lhyb_error(L, "%s: loss \"%s\" needs option 'teacher' (a hyb.model)", F, loss);
    ltrainer *t = (ltrainer *)lua_newuserdatauv(L, sizeof(ltrainer), 2);
    t->t = NULL;
    luaL_setmetatable(L, LHYB_TRAINER_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    if (teacher) {
        lua_getfield(L, 2, "teacher");
        lua_setiuservalue(L, -2, 2);
    }
    if (hyb_trainer_new(student, teacher, &c, &t->t) != HYB_OK) {
        t->t = NULL;
        return lhyb_raise_hyb(L, F);
    }
    /* data_parallel = true: sum the gradients over hyb.comm's ranks (docs/DISTRIBUTED.md) */
    if (lhyb_opt_field_bool(L, 2, F, "data_parallel", 0)) {
        double mb = lhyb_opt_field_number(L, 2, F, "bucket_mb", 0);
        if (mb < 0 || mb > 1 << 16)
            return lhyb_error(L, "%s: option 'bucket_mb' must be in (0, 65536], got %g", F, mb);
        /* CUDA gradients under mpirun: NCCL when it loads, else MPI with host staging (logged
         * once); host gradients: MPI (hyb_comm_grads) */
        hyb_device dev = student->be ? student->be->device : HYB_DEV_CPU;
        hyb_trainer_set_comm(t->t, hyb_comm_grads(dev), mb);
        t->t->comm_profile = lhyb_opt_field_bool(L, 2, F, "comm_profile", 0);
    }
    return 1;
}

/* ids, B, T and the {targets=, mask=} options at idx..idx+3 for K micro-batches */
typedef struct batch_args {
    int32_t *ids, *targets;
    float *mask;
    int B, T;
} batch_args;

static void check_batch(lua_State *L, hyb_trainer *t, int K, const char *F, batch_args *a) {
    static const char *const allowed[] = {"targets", "mask", NULL};
    hyb_model *m = t->student;
    int max_seq = m->map->max_seq > 0 ? m->map->max_seq : (1 << 24);
    a->B = (int)lhyb_check_int(L, 3, F, "B", 1, 1 << 20);
    a->T = (int)lhyb_check_int(L, 4, F, "T", 1, max_seq);
    int64_t n = (int64_t)K * a->B * a->T;
    if (n > ((int64_t)1 << 31) - 1) lhyb_error(L, "%s: accum*B*T is too large", F);
    lhyb_check_opts(L, 5, F, allowed);
    a->ids = lhyb_check_ids(L, 2, F, "ids", n, 0, m->V - 1);
    a->targets = NULL;
    a->mask = NULL;
    if (lua_istable(L, 5)) {
        lua_getfield(L, 5, "targets");
        if (!lua_isnil(L, -1))
            a->targets = lhyb_check_ids(L, -1, F, "option 'targets'", n, INT32_MIN, m->V - 1);
        lua_getfield(L, 5, "mask");
        if (!lua_isnil(L, -1)) a->mask = lhyb_check_floats(L, -1, F, "option 'mask'", n);
    }
    if (a->mask)
        for (int64_t i = 0; i < n; i++)
            if (!(a->mask[i] >= 0) || isinf(a->mask[i]))
                lhyb_error(L, "%s: option 'mask' entry %lld is %g; weights must be finite and >= 0",
                           F, (long long)i + 1, (double)a->mask[i]);
}

static void push_parts(lua_State *L, const double *parts) {
    static const char *const names[3] = {"rkl", "fkl", "ce"};
    for (int j = 0; j < 3; j++)
        if (!isnan(parts[j])) lhyb_set_num(L, names[j], parts[j]);
}

/* tr:step(ids, B, T[, {targets=, mask=}]) -> {loss=, rkl=, fkl=, ce=, grad_norm=, lr=, step=,
 * skipped=} ids: accum*B*T ids (a tensor [accum*B, T] or a table); B is the micro-batch size. */
static int t_step(lua_State *L) {
    const char *F = "trainer:step";
    lua_settop(L, 5);
    ltrainer *t = check_trainer(L, 1, F);
    batch_args a;
    check_batch(L, t->t, t->t->cfg.accum, F, &a);
    if (t->t->cfg.loss.w_ce > 0 && !a.targets)
        return lhyb_error(L, "%s: the loss has a CE term: pass option 'targets'", F);
    hyb_train_stats st;
    if (hyb_trainer_step(t->t, a.ids, a.targets, a.mask, a.B, a.T, &st) != HYB_OK)
        return lhyb_raise_hyb(L, F);
    lua_createtable(L, 0, 9);
    lhyb_set_num(L, "loss", st.loss);
    push_parts(L, st.parts);
    lhyb_set_num(L, "grad_norm", st.grad_norm);
    lhyb_set_num(L, "lr", st.lr);
    lhyb_set_num(L, "comm_s", st.comm_s);
    lhyb_set_num(L, "wait_s", st.wait_s);
    lhyb_set_int(L, "step", st.step);
    lua_pushboolean(L, st.skipped);
    lua_setfield(L, -2, "skipped");
    return 1;
}

/* tr:eval(ids, B, T[, {targets=, mask=}]) -> {loss=, rkl=, fkl=, ce=} without a tape (one batch) */
static int t_eval(lua_State *L) {
    const char *F = "trainer:eval";
    lua_settop(L, 5);
    ltrainer *t = check_trainer(L, 1, F);
    batch_args a;
    check_batch(L, t->t, 1, F, &a);
    double loss, parts[3];
    if (hyb_trainer_eval(t->t, a.ids, a.targets, a.mask, a.B, a.T, &loss, parts) != HYB_OK)
        return lhyb_raise_hyb(L, F);
    lua_createtable(L, 0, 4);
    lhyb_set_num(L, "loss", loss);
    push_parts(L, parts);
    return 1;
}

/* tr:save(path[, {key = "value", ...}[, {base = path, optimizer = true}]]) -> writes a training
 * checkpoint atomically. base: lean (the trainable parameters and their moments; the frozen ones
 * are the base's, recorded by path and content hash); optimizer = false: no moments (a model
 * snapshot, which tr:load refuses). */
static int t_save(lua_State *L) {
    const char *F = "trainer:save";
    lua_settop(L, 4);
    ltrainer *t = check_trainer(L, 1, F);
    const char *path = check_string(L, 2, F, "path");
    int n = 0;
    const char *keys[64], *vals[64];
    if (!lua_isnil(L, 3)) {
        if (!lua_istable(L, 3)) return lhyb_error(L, "%s: metadata must be a table of strings", F);
        /* copies in a scratch table keep the strings referenced while C holds their pointers */
        lua_newtable(L);
        int scratch = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return lhyb_error(L, "%s: metadata keys must be strings", F);
            if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
                return lhyb_error(L, "%s: metadata '%s' must be a string or a number", F,
                                  lua_tostring(L, -2));
            if (n == 64) return lhyb_error(L, "%s: at most 64 metadata entries", F);
            lua_pushvalue(L, -2);
            lua_rawseti(L, scratch, 2 * n + 1);
            lua_pushstring(L, lua_tostring(L, -1)); /* a number becomes a string in the copy */
            lua_rawseti(L, scratch, 2 * n + 2);
            lua_pop(L, 1);
            n++;
        }
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, scratch, 2 * i + 1);
            keys[i] = lua_tostring(L, -1);
            lua_rawgeti(L, scratch, 2 * i + 2);
            vals[i] = lua_tostring(L, -1);
            lua_pop(L, 2);
        }
    }
    hyb_ckpt_opts co = {NULL, NULL, 0};
    char hash[17], real[4096];
    if (!lua_isnil(L, 4)) {
        static const char *const allowed[] = {"base", "optimizer", NULL};
        lhyb_check_opts(L, 4, F, allowed);
        const char *base = lhyb_opt_field_string(L, 4, F, "base", NULL);
        co.no_optimizer = !lhyb_opt_field_bool(L, 4, F, "optimizer", 1);
        if (base) {
            if (!realpath(base, real)) return lhyb_error(L, "%s: base '%s': %s", F, base, strerror(errno));
            if (hyb_file_hash(real, hash) != HYB_OK) return lhyb_raise_hyb(L, F);
            co.base = real;
            co.base_hash = hash;
        }
    }
    make_parent(L, F, path);
    if (hyb_trainer_save_ex(t->t, path, &co, n, keys, vals) != HYB_OK) return lhyb_raise_hyb(L, F);
    return 0;
}

/* hyb.train.file_hash(path) -> 16 hex digits: the content hash a lean checkpoint records of its
 * base (a file, or a directory's files) */
static int l_file_hash(lua_State *L) {
    const char *F = "hyb.train.file_hash";
    const char *path = check_string(L, 1, F, "path");
    char h[17];
    if (hyb_file_hash(path, h) != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_pushstring(L, h);
    return 1;
}

/* tr:load(path) -> metadata table; restores params, moments, step, frozen flags */
static int t_load(lua_State *L) {
    const char *F = "trainer:load";
    ltrainer *t = check_trainer(L, 1, F);
    const char *path = check_string(L, 2, F, "path");
    hyb_ckpt_meta meta;
    /* a lean checkpoint: its base must be what it was (the student was built from it) */
    if (hyb_ckpt_read_meta(path, &meta) != HYB_OK) return lhyb_raise_hyb(L, F);
    const char *base;
    int rc = check_base(path, &meta, &base);
    hyb_ckpt_meta_free(&meta);
    if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    if (hyb_trainer_load(t->t, path, &meta) != HYB_OK) return lhyb_raise_hyb(L, F);
    push_meta(L, &meta);
    hyb_ckpt_meta_free(&meta);
    return 1;
}

static int t_steps(lua_State *L) {
    lua_pushinteger(L, check_trainer(L, 1, "trainer:steps")->t->step);
    return 1;
}
static int t_tokens(lua_State *L) {
    lua_pushinteger(L, check_trainer(L, 1, "trainer:tokens")->t->tokens);
    return 1;
}
static int t_accum(lua_State *L) {
    lua_pushinteger(L, check_trainer(L, 1, "trainer:accum")->t->cfg.accum);
    return 1;
}
/* tr:lr([step]) -> the schedule's lr for update `step` (default: the next one) */
static int t_lr(lua_State *L) {
    ltrainer *t = check_trainer(L, 1, "trainer:lr");
    lua_Integer s = lhyb_opt_int(L, 2, "trainer:lr", "step", 0, LUA_MAXINTEGER, t->t->step);
    lua_pushnumber(L, hyb_lr_at(&t->t->cfg.sched, s));
    return 1;
}
/* trainer:lr_scale(pattern, scale) -> n matched: parameters whose name matches the glob are
 * updated with lr * scale from the next step on (later calls override earlier ones). */
static int t_lr_scale(lua_State *L) {
    const char *F = "trainer:lr_scale";
    ltrainer *t = check_trainer(L, 1, F);
    const char *pat = check_string(L, 2, F, "pattern");
    double sc = lhyb_check_number(L, 3, F, "scale");
    if (!(sc >= 0) || !isfinite(sc) || sc > 1e6)
        return lhyb_error(L, "%s: scale must be a finite number in [0, 1e6], got %g", F, sc);
    int n = hyb_trainer_lr_scale(t->t, pat, (float)sc);
    if (n < 0) return lhyb_raise_hyb(L, F);
    lua_pushinteger(L, n);
    return 1;
}
static int trainer_gc(lua_State *L) {
    ltrainer *t = (ltrainer *)luaL_checkudata(L, 1, LHYB_TRAINER_MT);
    hyb_trainer_free(t->t);
    t->t = NULL;
    return 0;
}
static int trainer_tostring(lua_State *L) {
    ltrainer *t = (ltrainer *)luaL_checkudata(L, 1, LHYB_TRAINER_MT);
    if (!t->t)
        lua_pushstring(L, "hyb.trainer(closed)");
    else
        lua_pushfstring(L, "hyb.trainer(step %I, accum %d)", (lua_Integer)t->t->step,
                        t->t->cfg.accum);
    return 1;
}

// ---- hyb.data.tokenizer -------------------------------------------------------------------------

typedef struct ltok {
    hyb_tokenizer *tok;
    char *chat_template; /* what came with it (GGUF metadata, tokenizer_config.json), or NULL */
} ltok;

static ltok *check_tok(lua_State *L, int idx, const char *F) {
    ltok *t = (ltok *)lhyb_test_class(L, idx, LHYB_TOKENIZER_MT, F);
    if (!t->tok) lhyb_error(L, "%s: the tokenizer is closed", F);
    return t;
}

/* hyb.data.tokenizer(path): a .gguf file, a tokenizer.json, or a directory holding one */
static int l_tokenizer(lua_State *L) {
    const char *F = "hyb.data.tokenizer";
    const char *path = check_string(L, 1, F, "path");
    ltok *t = (ltok *)lua_newuserdatauv(L, sizeof(ltok), 0);
    t->tok = NULL;
    t->chat_template = NULL;
    luaL_setmetatable(L, LHYB_TOKENIZER_MT);
    char p[4200];
    if (is_dir(path)) {
        snprintf(p, sizeof p, "%s/tokenizer.json", path);
        t->tok = hyb_tokenizer_load_json(p);
    } else if (ends_with(path, ".gguf")) {
        t->tok = hyb_tokenizer_load_gguf(path);
    } else {
        t->tok = hyb_tokenizer_load_json(path);
    }
    if (!t->tok) return lhyb_raise_hyb(L, F);
    t->chat_template = hyb_tokenizer_chat_template(path);
    return 1;
}

/* tok:save(dir[, {max_len = n}]): dir/tokenizer.json + dir/tokenizer_config.json (the chat
 * template that came with the tokenizer, bos/eos, model_max_length = max_len), so a model saved
 * in dir opens with its tokenizer in hyb generate/chat/serve, hyb.llm and AutoTokenizer. */
static int tk_save(lua_State *L) {
    static const char *const allowed[] = {"max_len", NULL};
    const char *F = "tokenizer:save";
    ltok *t = check_tok(L, 1, F);
    const char *dir = check_string(L, 2, F, "dir");
    lhyb_check_opts(L, 3, F, allowed);
    lua_Integer max_len = lhyb_opt_field_int(L, 3, F, "max_len", 0, 1 << 30, 0);
    if (hyb_mkdir_p(dir) != HYB_OK ||
        hyb_tokenizer_save_hf(t->tok, dir, t->chat_template, (int)max_len) != HYB_OK)
        return lhyb_raise_hyb(L, F);
    return 0;
}

/* tok:chat_template() -> the template string that came with the tokenizer, or nil */
static int tk_chat_template(lua_State *L) {
    ltok *t = check_tok(L, 1, "tokenizer:chat_template");
    if (t->chat_template)
        lua_pushstring(L, t->chat_template);
    else
        lua_pushnil(L);
    return 1;
}

/* tok:encode(text) -> table of ids (special-token text is parsed; no bos/eos added) */
static int tk_encode(lua_State *L) {
    ltok *t = check_tok(L, 1, "tokenizer:encode");
    size_t len;
    const char *s = check_string(L, 2, "tokenizer:encode", "text");
    s = lua_tolstring(L, 2, &len);
    int32_t *ids = NULL;
    size_t n = 0;
    if (hyb_tokenizer_encode_alloc(t->tok, s, len, 0, &ids, &n) != HYB_OK)
        return lhyb_raise_hyb(L, "tokenizer:encode");
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushinteger(L, ids[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    free(ids);
    return 1;
}

/* tok:decode(ids) -> string */
static int tk_decode(lua_State *L) {
    const char *F = "tokenizer:decode";
    ltok *t = check_tok(L, 1, F);
    if (!lua_istable(L, 2) && !lhyb_test_tensor(L, 2))
        return lhyb_error(L, "%s: ids must be a table or a tensor", F);
    int64_t n = lua_istable(L, 2) ? (int64_t)lua_rawlen(L, 2)
                                  : hyb_tensor_numel(lhyb_check_tensor(L, 2, F, "ids")->t);
    int32_t *ids = lhyb_check_ids(L, 2, F, "ids", n, 0, hyb_tokenizer_vocab_size(t->tok) - 1);
    long need = hyb_tokenizer_decode(t->tok, ids, (size_t)n, 0, NULL, 0);
    if (need < 0) return lhyb_raise_hyb(L, F);
    char *buf = (char *)lua_newuserdatauv(L, (size_t)need + 1, 0);
    hyb_tokenizer_decode(t->tok, ids, (size_t)n, 0, buf, (size_t)need + 1);
    lua_pushlstring(L, buf, (size_t)need);
    return 1;
}

static int tk_vocab_size(lua_State *L) {
    lua_pushinteger(L, hyb_tokenizer_vocab_size(check_tok(L, 1, "tokenizer:vocab_size")->tok));
    return 1;
}
static int tk_eos(lua_State *L) {
    lua_pushinteger(L, hyb_tokenizer_eos_id(check_tok(L, 1, "tokenizer:eos")->tok));
    return 1;
}
static int tk_identity(lua_State *L) {
    char b[32];
    snprintf(
        b, sizeof b, "%016llx",
        (unsigned long long)hyb_tokenizer_identity(check_tok(L, 1, "tokenizer:identity")->tok));
    lua_pushstring(L, b);
    return 1;
}
static int tok_gc(lua_State *L) {
    ltok *t = (ltok *)luaL_checkudata(L, 1, LHYB_TOKENIZER_MT);
    hyb_tokenizer_free(t->tok);
    t->tok = NULL;
    free(t->chat_template);
    t->chat_template = NULL;
    return 0;
}
static int tok_tostring(lua_State *L) {
    ltok *t = (ltok *)luaL_checkudata(L, 1, LHYB_TOKENIZER_MT);
    if (!t->tok)
        lua_pushstring(L, "hyb.tokenizer(closed)");
    else
        lua_pushfstring(L, "hyb.tokenizer(%d tokens)", (int)hyb_tokenizer_vocab_size(t->tok));
    return 1;
}

// ---- hyb.data.dataset ---------------------------------------------------------------------------

typedef struct lds {
    hyb_dataset *d;
    int vocab; /* ids are < vocab (256 for bytes) */
    int n_files;
    int64_t bytes;                  /* of the files read */
    int64_t matched, matched_bytes; /* directory files passing the filters, before max_bytes */
} lds;

static lds *check_ds(lua_State *L, int idx, const char *F) {
    lds *d = (lds *)lhyb_test_class(L, idx, LHYB_DATASET_MT, F);
    if (!d->d) lhyb_error(L, "%s: the dataset is closed", F);
    return d;
}

/* Option `key` of the table at opts: nil (none), a string or a list of strings. The strings stay
 * referenced by the options table; the array lives in a userdata pushed on the stack (when n > 0).
 */
static const char **string_list(lua_State *L, int opts, const char *F, const char *key, int *n) {
    char buf[96];
    *n = 0;
    lua_getfield(L, opts, key);
    int t = lua_gettop(L);
    if (lua_isnil(L, t)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, t) == LUA_TSTRING) {
        const char **arr = (const char **)lua_newuserdatauv(L, sizeof(char *), 0);
        arr[0] = lua_tostring(L, t);
        lua_remove(L, t); /* still referenced by the options table */
        *n = 1;
        return arr;
    }
    if (!lua_istable(L, t))
        lhyb_error(L, "%s: option '%s' must be a pattern or a list of patterns, got %s", F, key,
                   lhyb_describe(L, t, buf, sizeof buf));
    int k = (int)lua_rawlen(L, t);
    const char **arr = (const char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)(k ? k : 1), 0);
    for (int i = 1; i <= k; i++) {
        lua_rawgeti(L, t, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            lhyb_error(L, "%s: option '%s' entry %d must be a string, got %s", F, key, i,
                       lhyb_describe(L, -1, buf, sizeof buf));
        arr[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    lua_remove(L, t);
    *n = k;
    return arr;
}

/* The files of `files` (a path or a list of paths, at files_idx) chosen by the include, exclude
 * and max_bytes options of the table at opts (hyb_data_list_files): pushes a table of paths and
 * returns their total size. */
static int64_t push_file_list(lua_State *L, const char *F, int files_idx, int opts,
                              int64_t *matched, int64_t *matched_bytes) {
    char buf[96];
    int top = lua_gettop(L);
    files_idx = lua_absindex(L, files_idx);
    int np = 0;
    const char **paths = NULL;
    if (lua_type(L, files_idx) == LUA_TSTRING) {
        paths = (const char **)lua_newuserdatauv(L, sizeof(char *), 0);
        paths[0] = lua_tostring(L, files_idx);
        np = 1;
    } else if (lua_istable(L, files_idx)) {
        np = (int)lua_rawlen(L, files_idx);
        if (np < 1) lhyb_error(L, "%s: the list of files is empty", F);
        paths = (const char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)np, 0);
        for (int i = 1; i <= np; i++) {
            lua_rawgeti(L, files_idx, i);
            if (lua_type(L, -1) != LUA_TSTRING)
                lhyb_error(L, "%s: files[%d] must be a string, got %s", F, i,
                           lhyb_describe(L, -1, buf, sizeof buf));
            paths[i - 1] = lua_tostring(L, -1); /* referenced by the files table */
            lua_pop(L, 1);
        }
    } else {
        lhyb_error(L, "%s: option 'files' must be a path or a table of paths, got %s", F,
                   lhyb_describe(L, files_idx, buf, sizeof buf));
    }
    hyb_data_select sel;
    memset(&sel, 0, sizeof sel);
    if (opts) {
        sel.include = string_list(L, opts, F, "include", &sel.n_include);
        sel.exclude = string_list(L, opts, F, "exclude", &sel.n_exclude);
        sel.max_bytes = (int64_t)lhyb_opt_field_int(L, opts, F, "max_bytes", 0, LUA_MAXINTEGER, 0);
    }
    hyb_file_list fl;
    if (hyb_data_list_files(paths, np, &sel, &fl) != HYB_OK) lhyb_raise_hyb(L, F);
    /* copy into Lua, then free (lua_createtable / pushstring may raise: check memory first) */
    if (!lua_checkstack(L, 4)) {
        hyb_file_list_free(&fl);
        lhyb_error(L, "%s: out of Lua stack", F);
    }
    lua_createtable(L, fl.n, 0);
    for (int i = 0; i < fl.n; i++) {
        lua_pushstring(L, fl.paths[i]);
        lua_rawseti(L, -2, i + 1);
    }
    int64_t bytes = fl.bytes;
    if (matched) *matched = fl.matched;
    if (matched_bytes) *matched_bytes = fl.matched_bytes;
    hyb_file_list_free(&fl);
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return bytes;
}

/* hyb.data.files(path | {paths}[, {include=, exclude=, max_bytes=}]) -> {paths}, bytes */
static int l_files(lua_State *L) {
    static const char *const allowed[] = {"include", "exclude", "max_bytes", NULL};
    const char *F = "hyb.data.files";
    lua_settop(L, 2);
    lhyb_check_opts(L, 2, F, allowed);
    int64_t bytes = push_file_list(L, F, 1, lua_istable(L, 2) ? 2 : 0, NULL, NULL);
    lua_pushinteger(L, (lua_Integer)bytes);
    return 2;
}

/* hyb.data.dataset{files = path | {paths}, include =, exclude =, max_bytes =, tokenizer = tok |
 *                  nil (bytes), special = false, cache = path, val_fraction = 0.05, seed = 1} */
static int l_dataset(lua_State *L) {
    static const char *const allowed[] = {"files",     "include", "exclude", "max_bytes",
                                          "tokenizer", "special", "cache",   "val_fraction",
                                          "seed",      NULL};
    const char *F = "hyb.data.dataset";
    lua_settop(L, 1);
    if (!lua_istable(L, 1))
        return lhyb_error(L, "%s: expected an options table {files=, tokenizer=, cache=, ...}", F);
    lhyb_check_opts(L, 1, F, allowed);
    lua_getfield(L, 1, "files");
    int64_t matched = 0, matched_bytes = 0;
    int64_t bytes = push_file_list(L, F, 2, 1, &matched, &matched_bytes);
    int list = lua_gettop(L);
    int nfiles = (int)lua_rawlen(L, list);
    if (nfiles < 1) return lhyb_error(L, "%s: no input files", F);
    const char **files = (const char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)nfiles, 0);
    for (int i = 0; i < nfiles; i++) {
        lua_rawgeti(L, list, i + 1);
        files[i] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    hyb_data_cfg c;
    memset(&c, 0, sizeof c);
    c.files = files;
    c.n_files = nfiles;
    c.val_fraction = lhyb_opt_field_number(L, 1, F, "val_fraction", 0.05);
    c.seed = (uint64_t)lhyb_opt_field_int(L, 1, F, "seed", 0, LUA_MAXINTEGER, 1);
    c.cache = lhyb_opt_field_string(L, 1, F, "cache", NULL);
    c.parse_special = lhyb_opt_field_bool(L, 1, F, "special", 0);
    if (!(c.val_fraction >= 0 && c.val_fraction < 1))
        return lhyb_error(L, "%s: option 'val_fraction' must be in [0, 1), got %g", F,
                          c.val_fraction);
    lua_getfield(L, 1, "tokenizer");
    int vocab = 256;
    if (!lua_isnil(L, -1)) {
        ltok *t = check_tok(L, -1, F);
        c.tok = t->tok;
        vocab = hyb_tokenizer_vocab_size(t->tok);
    }
    if (c.cache) make_parent(L, F, c.cache);
    lds *d = (lds *)lua_newuserdatauv(L, sizeof(lds), 0);
    d->d = NULL;
    d->vocab = vocab;
    d->n_files = nfiles;
    d->bytes = bytes;
    d->matched = matched;
    d->matched_bytes = matched_bytes;
    luaL_setmetatable(L, LHYB_DATASET_MT);
    if (hyb_dataset_open(&c, &d->d) != HYB_OK) {
        d->d = NULL;
        return lhyb_raise_hyb(L, F);
    }
    return 1;
}

static int push_batch(lua_State *L, lds *d, int split, int64_t step, int B, int T, uint64_t seed,
                      const char *F) {
    int64_t shape[2] = {B, T};
    lhyb_tensor *ids = lhyb_push_owned(L, hyb_tensor_new(HYB_I32, 2, shape), F);
    lhyb_tensor *tg = lhyb_push_owned(L, hyb_tensor_new(HYB_I32, 2, shape), F);
    if (hyb_dataset_batch(d->d, split, step, B, T, seed, (int32_t *)ids->t->data,
                          (int32_t *)tg->t->data) != HYB_OK)
        return lhyb_raise_hyb(L, F);
    return 2;
}

/* ds:batch(step, B, T, seed[, {rank=, world=, accum=}]) -> ids, targets (i32 [B, T]).
 * With the shard option: this rank's rows of the global batch of B rows, seen as accum
 * micro-batches of B/accum rows, each split in world equal parts: for every micro-batch k, rows
 * k*B/accum + rank*m .. + m-1 with m = B/(accum*world); ids, targets [accum*m, T]. The ranks'
 * rows together are the batch one process reads (hyb_dataset_batch_rows). */
static int ds_batch(lua_State *L) {
    const char *F = "dataset:batch";
    lds *d = check_ds(L, 1, F);
    lua_Integer step = lhyb_check_int(L, 2, F, "step", 0, (lua_Integer)1 << 40);
    int B = (int)lhyb_check_int(L, 3, F, "B", 1, 1 << 16);
    int T = (int)lhyb_check_int(L, 4, F, "T", 1, 1 << 24);
    lua_Integer seed = lhyb_check_int(L, 5, F, "seed", 0, LUA_MAXINTEGER);
    if (lua_isnoneornil(L, 6)) return push_batch(L, d, HYB_SPLIT_TRAIN, step, B, T, (uint64_t)seed, F);
    static const char *const allowed[] = {"rank", "world", "accum", NULL};
    lhyb_check_opts(L, 6, F, allowed);
    int world = (int)lhyb_opt_field_int(L, 6, F, "world", 1, 1 << 20, 1);
    int rank = (int)lhyb_opt_field_int(L, 6, F, "rank", 0, world - 1, 0);
    int accum = (int)lhyb_opt_field_int(L, 6, F, "accum", 1, 1 << 16, 1);
    if (B % accum != 0 || (B / accum) % world != 0)
        return lhyb_error(L,
                          "%s: a batch of %d rows does not split into accum %d micro-batches of "
                          "world %d equal shards",
                          F, B, accum, world);
    const int micro = B / accum, m = micro / world;
    int64_t shape[2] = {(int64_t)accum * m, T};
    lhyb_tensor *ids = lhyb_push_owned(L, hyb_tensor_new(HYB_I32, 2, shape), F);
    lhyb_tensor *tg = lhyb_push_owned(L, hyb_tensor_new(HYB_I32, 2, shape), F);
    for (int k = 0; k < accum; k++) {
        const int64_t o = (int64_t)k * m * T;
        if (hyb_dataset_batch_rows(d->d, HYB_SPLIT_TRAIN, step, B, k * micro + rank * m, m, T,
                                   (uint64_t)seed, (int32_t *)ids->t->data + o,
                                   (int32_t *)tg->t->data + o) != HYB_OK)
            return lhyb_raise_hyb(L, F);
    }
    return 2;
}

/* ds:val_batch(j, B, T) -> ids, targets of the fixed held-out batch j (0-based) */
static int ds_val_batch(lua_State *L) {
    const char *F = "dataset:val_batch";
    lds *d = check_ds(L, 1, F);
    lua_Integer j = lhyb_check_int(L, 2, F, "j", 0, (lua_Integer)1 << 40);
    int B = (int)lhyb_check_int(L, 3, F, "B", 1, 1 << 16);
    int T = (int)lhyb_check_int(L, 4, F, "T", 1, 1 << 24);
    return push_batch(L, d, HYB_SPLIT_VAL, j, B, T, 0, F);
}

/* ds:windows(T[, "train" | "val"]) -> number of windows of T + 1 tokens */
static int ds_windows(lua_State *L) {
    const char *F = "dataset:windows";
    lds *d = check_ds(L, 1, F);
    int T = (int)lhyb_check_int(L, 2, F, "T", 1, 1 << 24);
    const char *s = luaL_optstring(L, 3, "train");
    if (strcmp(s, "train") != 0 && strcmp(s, "val") != 0)
        return lhyb_error(L, "%s: split must be \"train\" or \"val\", got \"%s\"", F, s);
    lua_pushinteger(
        L, hyb_dataset_windows(d->d, strcmp(s, "val") == 0 ? HYB_SPLIT_VAL : HYB_SPLIT_TRAIN, T));
    return 1;
}

/* ds:info() -> {train_tokens=, val_tokens=, docs=, val_docs=, from_cache=, tokenizer=, files=,
 * bytes=, matched_files=, matched_bytes=} */
static int ds_info(lua_State *L) {
    lds *d = check_ds(L, 1, "dataset:info");
    char b[32];
    lua_createtable(L, 0, 6);
    lhyb_set_int(L, "train_tokens", d->d->n_train);
    lhyb_set_int(L, "val_tokens", d->d->n_val);
    lhyb_set_int(L, "docs", d->d->n_docs);
    lhyb_set_int(L, "val_docs", d->d->n_val_docs);
    lua_pushboolean(L, d->d->from_cache);
    lua_setfield(L, -2, "from_cache");
    lhyb_set_int(L, "files", d->n_files);
    lhyb_set_int(L, "bytes", (lua_Integer)d->bytes);
    lhyb_set_int(L, "matched_files", (lua_Integer)d->matched);
    lhyb_set_int(L, "matched_bytes", (lua_Integer)d->matched_bytes);
    snprintf(b, sizeof b, "%016llx", (unsigned long long)d->d->tok_hash);
    lua_pushstring(L, b);
    lua_setfield(L, -2, "tokenizer");
    return 1;
}

static int ds_gc(lua_State *L) {
    lds *d = (lds *)luaL_checkudata(L, 1, LHYB_DATASET_MT);
    hyb_dataset_free(d->d);
    d->d = NULL;
    return 0;
}
static int ds_tostring(lua_State *L) {
    lds *d = (lds *)luaL_checkudata(L, 1, LHYB_DATASET_MT);
    if (!d->d)
        lua_pushstring(L, "hyb.dataset(closed)");
    else
        lua_pushfstring(L, "hyb.dataset(%I train + %I held-out tokens)", (lua_Integer)d->d->n_train,
                        (lua_Integer)d->d->n_val);
    return 1;
}

// ---- registration -------------------------------------------------------------------------------

void *lhyb_test_class(lua_State *L, int idx, const char *mt, const char *fname) {
    char buf[96];
    void *ud = luaL_testudata(L, idx, mt);
    if (!ud)
        lhyb_error(L, "%s: expected a %s, got %s", fname, mt,
                   lhyb_describe(L, idx, buf, sizeof buf));
    return ud;
}

void lhyb_open_train(lua_State *L) {
    static const luaL_Reg trainer_methods[] = {
        {"step", t_step},         {"eval", t_eval},      {"save", t_save}, {"load", t_load},
        {"steps", t_steps},       {"tokens", t_tokens},  {"lr", t_lr},     {"accum", t_accum},
        {"lr_scale", t_lr_scale}, {"close", trainer_gc}, {NULL, NULL}};
    static const luaL_Reg tok_methods[] = {
        {"encode", tk_encode}, {"decode", tk_decode},     {"vocab_size", tk_vocab_size},
        {"eos", tk_eos},       {"identity", tk_identity}, {"close", tok_gc},
        {"save", tk_save},     {"chat_template", tk_chat_template},
        {NULL, NULL}};
    static const luaL_Reg ds_methods[] = {{"batch", ds_batch},     {"val_batch", ds_val_batch},
                                          {"windows", ds_windows}, {"info", ds_info},
                                          {"close", ds_gc},        {NULL, NULL}};
    lhyb_register_class(L, LHYB_TRAINER_MT, trainer_methods, trainer_gc, trainer_gc,
                        trainer_tostring);
    lhyb_register_class(L, LHYB_TOKENIZER_MT, tok_methods, tok_gc, tok_gc, tok_tostring);
    lhyb_register_class(L, LHYB_DATASET_MT, ds_methods, ds_gc, ds_gc, ds_tostring);
    static const luaL_Reg train_funcs[] = {{"lr", l_lr},
                                           {"clone", l_clone},
                                           {"load", l_load},
                                           {"freeze", l_freeze},
                                           {"frozen", l_frozen},
                                           {"trainer", l_trainer},
                                           {"checkpoint_meta", l_checkpoint_meta},
                                           {"file_hash", l_file_hash},
                                           {"greedy", l_greedy},
                                           {"read_toml", l_read_toml},
                                           {"layermap_toml", l_layermap_toml},
                                           {NULL, NULL}};
    luaL_newlib(L, train_funcs);
    lua_setfield(L, -2, "train");
    /* hyb.data exists (lua_data.c): add the tokenizer and dataset constructors */
    lua_getfield(L, -1, "data");
    if (lua_istable(L, -1)) {
        lua_pushcfunction(L, l_tokenizer);
        lua_setfield(L, -2, "tokenizer");
        lua_pushcfunction(L, l_dataset);
        lua_setfield(L, -2, "dataset");
        lua_pushcfunction(L, l_files);
        lua_setfield(L, -2, "files");
    }
    lua_pop(L, 1);
}
