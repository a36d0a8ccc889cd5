/* runtime/lua_mixer.c: mixers defined in Lua as mixer types of layer maps.
 *
 *   [mixers.gla]
 *   type = "lua:examples/mixers/gla.lua"   # a path (relative to the working directory)
 *   heads = 2                              # the mixer's config keys (its `config` defaults)
 *
 * The hyb executable registers a resolver for the "lua:" prefix (hyb_plugin_set_resolver): the
 * first model that names a file gets a descriptor (hyb/plugin.h) whose functions call the Lua
 * table through scripts/mixerlib.lua, in the Lua state that runs the script. So a Lua mixer
 * works where the model code uses a plugin: build, swap, forward with the tape (its backward is
 * the Lua tape's reverse pass), checkpoints (parameters are ordinary model parameters, saved
 * under the layer's "mixer." prefix), prefill and decode (the Lua step, one sequence at a time).
 *  - create: ML.load(path); each key of the file's `config` is read from the TOML table with the
 *    type of its default (unknown keys are refused, naming the file:line:col); `params` gives
 *    the declarations (init "normal" with std, "zeros", "ones", or a constant).
 *  - forward with a tape: x and the parameters become leaf tensors over the host's memory; the
 *    output's tape is kept in a registry table keyed by the `saved` buffer until the backward,
 *    which runs y:backward(dy) and copies x.grad into dx and adds each parameter's .grad.
 *  - forward without a tape: no_grad; with states (prefill): the step form token by token.
 * The same functions serve the CPU and CUDA (the ops run where their tensors are). Limits: one Lua
 * state, so not from another thread (`hyb serve`'s engine thread); no init_from (MIL) yet. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/backend.h"
#include "hyb/common.h"
#include "hyb/config.h"
#include "hyb/mixer.h"
#include "hyb/plugin.h"
#include "lhyb.h"

#define MAX_LUA_MIXERS 32
#define SAVED_KEY "hyb.lua_mixer.saved"

static lua_State *g_L;       /* the main Lua state of the hyb executable */
static pthread_t g_L_thread; /* the thread that runs it: Lua states are not thread-safe */

/* Lua mixers run only on the script's thread (not hyb serve's engine thread). */
static int check_thread(const char *type, int layer) {
    if (pthread_equal(pthread_self(), g_L_thread)) return HYB_OK;
    return hyb_error_set(HYB_ERR_UNSUPPORTED,
                         "mixer %s (layer %d): a Lua mixer runs only on the thread of the script "
                         "that loaded it (not, e.g., hyb serve's engine thread)",
                         type, layer);
}

typedef struct lm_state_entry {
    char name[64];
    int ndim;
    int64_t shape[HYB_MAX_DIMS]; /* with the leading 1 (one sequence) */
    size_t offset;               /* bytes into a sequence's state */
} lm_state_entry;

typedef struct lm_self {
    const char *type; /* "lua:<path>" */
    int ref;          /* registry ref of the mixerlib instance */
    hyb_model_dims dims;
    int n_params;
    hyb_param_decl decls[64];
    float consts[64]; /* a constant init value (HYB_INIT_CUSTOM) */
    int n_state;
    lm_state_entry st[16];
    size_t state_bytes;
} lm_self;

typedef struct lm_type {
    char name[64];
    hyb_mixer_desc desc;
} lm_type;

static lm_type g_types[MAX_LUA_MIXERS];
static int g_n_types;

/* The error at the top of L as a hyb error (pops it). */
static int lua_fail(lua_State *L, const lm_self *s, const char *what) {
    const char *msg = lua_tostring(L, -1);
    int rc = hyb_error_set(HYB_ERR_ARG, "%s%s%s", msg ? msg : "(error object is not a string)",
                           what ? " " : "", what ? what : "");
    (void)s;
    lua_pop(L, 1);
    return rc;
}

/* Push a tensor over external memory (not freed by Lua), shape (nd, shape). */
static hyb_device g_dev = HYB_DEV_CPU; /* the device of the call in progress */

static hyb_tensor *push_ext(lua_State *L, const void *data, int nd, const int64_t *shape) {
    hyb_tensor *t = hyb_tensor_wrap(HYB_F32, nd, shape, (void *)data);
    if (!t) return NULL;
    t->owner = HYB_OWN_EXTERNAL;
    t->device = g_dev;
    lhyb_push_owned(L, t, "lua mixer");
    return t;
}

/* ---- create / params ------------------------------------------------------------------------ */

/* Push the mixerlib instance of s. */
static void push_inst(lua_State *L, const lm_self *s) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref);
}

/* Read the file's config keys from the TOML table into inst.cfg (at stack index inst). */
static int read_config(lua_State *L, int inst, const hyb_cfg_table *cfg, const char *type) {
    const char *allowed[66];
    int na = 0;
    allowed[na++] = "type";
    allowed[na++] = "symbol";
    lua_getfield(L, inst, "cfg");
    int c = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, c)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 1);
            continue;
        }
        const char *key = lua_tostring(L, -2);
        if (na < 64) allowed[na++] = key; /* the key string lives in the cfg table */
        int rc = HYB_OK;
        if (cfg && hyb_cfg_has(cfg, key)) {
            if (lua_type(L, -1) == LUA_TBOOLEAN) {
                int v;
                rc = hyb_cfg_bool(cfg, key, lua_toboolean(L, -1), &v);
                if (rc == HYB_OK) lua_pushboolean(L, v);
            } else if (lua_isinteger(L, -1)) {
                int64_t v;
                rc = hyb_cfg_int(cfg, key, lua_tointeger(L, -1), &v);
                if (rc == HYB_OK) lua_pushinteger(L, v);
            } else if (lua_type(L, -1) == LUA_TNUMBER) {
                double v;
                rc = hyb_cfg_float(cfg, key, lua_tonumber(L, -1), &v);
                if (rc == HYB_OK) lua_pushnumber(L, v);
            } else if (lua_type(L, -1) == LUA_TSTRING) {
                const char *v;
                rc = hyb_cfg_string(cfg, key, lua_tostring(L, -1), &v);
                if (rc == HYB_OK) lua_pushstring(L, v);
            } else {
                rc = hyb_error_set(HYB_ERR_ARG,
                                   "lua mixer %s: config default '%s' must be a number, boolean "
                                   "or string",
                                   type, key);
            }
            if (rc != HYB_OK) return rc;
            lua_pushvalue(L, -3);
            lua_insert(L, -2);
            lua_rawset(L, c); /* cfg[key] = v (an existing key: next() stays valid) */
        }
        lua_pop(L, 1);
    }
    allowed[na] = NULL;
    int rc = cfg ? hyb_cfg_check_keys(cfg, allowed) : HYB_OK;
    lua_pop(L, 1);
    return rc;
}

static int lm_create_type(const char *type, const hyb_model_dims *dims, const hyb_cfg_table *cfg,
                          void **out) {
    lua_State *L = g_L;
    *out = NULL;
    if (!L) return hyb_error_set(HYB_ERR_UNSUPPORTED, "mixer %s: no Lua state", type);
    HYB_TRY(check_thread(type, dims->layer));
    lm_self *s = calloc(1, sizeof *s);
    if (!s) return HYB_ERR_NOMEM;
    s->type = type;
    s->dims = *dims;
    s->ref = LUA_NOREF;
    int top = lua_gettop(L), rc = HYB_OK;
    luaL_checkstack(L, 16, "lua mixer");
    lua_getglobal(L, "require");
    lua_pushstring(L, "mixerlib");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        rc = lua_fail(L, s, NULL);
        goto done;
    }
    lua_getfield(L, -1, "load");
    lua_pushstring(L, type + 4);
    lua_pushnil(L);
    lua_createtable(L, 0, 5);
    lhyb_set_int(L, "d_model", dims->d_model);
    lhyb_set_int(L, "n_layers", dims->n_layers);
    lhyb_set_int(L, "layer", dims->layer);
    lhyb_set_int(L, "max_seq", dims->max_seq);
    lua_pushnumber(L, dims->norm_eps);
    lua_setfield(L, -2, "norm_eps");
    lua_pushinteger(L, dims->layer);
    if (lua_pcall(L, 4, 1, 0) != LUA_OK) {
        rc = lua_fail(L, s, NULL);
        goto done;
    }
    int inst = lua_gettop(L);
    if ((rc = read_config(L, inst, cfg, type)) != HYB_OK) goto done;
    /* parameters */
    lua_getfield(L, inst, "decls");
    lua_pushvalue(L, inst);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        rc = lua_fail(L, s, NULL);
        goto done;
    }
    int decls = lua_gettop(L);
    int n = (int)lua_rawlen(L, decls);
    if (n > 64) {
        rc = hyb_error_set(HYB_ERR_ARG, "mixer %s (layer %d): at most 64 parameters, got %d", type,
                           dims->layer, n);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        hyb_param_decl *d = &s->decls[i];
        lua_rawgeti(L, decls, i + 1);
        int e = lua_gettop(L);
        lua_getfield(L, e, "name");
        snprintf(d->name, sizeof d->name, "%s", lua_tostring(L, -1));
        lua_getfield(L, e, "shape");
        int sh = lua_gettop(L);
        d->ndim = (int)lua_rawlen(L, sh);
        if (d->ndim < 1 || d->ndim > 4) {
            rc = hyb_error_set(HYB_ERR_ARG, "mixer %s (layer %d): parameter '%s' needs 1 to 4 dims",
                               type, dims->layer, d->name);
            goto done;
        }
        for (int k = 0; k < d->ndim; k++) {
            lua_rawgeti(L, sh, k + 1);
            int isnum = 0;
            lua_Integer v = lua_tointegerx(L, -1, &isnum);
            lua_pop(L, 1);
            if (!isnum || v < 1 || v > (1 << 30)) {
                rc = hyb_error_set(HYB_ERR_ARG,
                                   "mixer %s (layer %d): parameter '%s' shape entry %d must be a "
                                   "positive integer",
                                   type, dims->layer, d->name, k + 1);
                goto done;
            }
            d->shape[k] = v;
        }
        lua_getfield(L, e, "init");
        lua_getfield(L, e, "std");
        double std = lua_isnil(L, -1) ? 0.02 : lua_tonumber(L, -1);
        const char *init = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (lua_type(L, -2) == LUA_TNUMBER) {
            d->init = HYB_INIT_CUSTOM;
            s->consts[i] = (float)lua_tonumber(L, -2);
        } else if (!init || strcmp(init, "normal") == 0) {
            d->init = HYB_INIT_NORMAL;
            d->init_a = (float)std;
        } else if (strcmp(init, "zeros") == 0) {
            d->init = HYB_INIT_ZEROS;
        } else if (strcmp(init, "ones") == 0) {
            d->init = HYB_INIT_ONES;
        } else {
            rc = hyb_error_set(HYB_ERR_ARG,
                               "mixer %s (layer %d): parameter '%s': unknown init '%s' (normal, "
                               "zeros, ones or a number)",
                               type, dims->layer, d->name, init);
            goto done;
        }
        lua_settop(L, decls);
    }
    s->n_params = n;
    /* the decode state */
    lua_settop(L, inst);
    lua_getfield(L, inst, "state_list");
    lua_pushvalue(L, inst);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        rc = lua_fail(L, s, NULL);
        goto done;
    }
    int sl = lua_gettop(L);
    s->n_state = (int)lua_rawlen(L, sl);
    if (s->n_state > 16) {
        rc = hyb_error_set(HYB_ERR_ARG, "mixer %s: at most 16 state tensors", type);
        goto done;
    }
    for (int i = 0; i < s->n_state; i++) {
        lm_state_entry *st = &s->st[i];
        lua_rawgeti(L, sl, i + 1);
        lua_rawgeti(L, -1, 1);
        snprintf(st->name, sizeof st->name, "%s", lua_tostring(L, -1));
        lua_rawgeti(L, -2, 2);
        int sh = lua_gettop(L);
        int nd = (int)lua_rawlen(L, sh);
        if (nd < 0 || nd > 3) {
            rc = hyb_error_set(HYB_ERR_ARG,
                               "mixer %s: state '%s' must have 0 to 3 dims (one sequence's)", type,
                               st->name);
            goto done;
        }
        st->ndim = nd + 1;
        st->shape[0] = 1;
        int64_t numel = 1;
        for (int k = 0; k < nd; k++) {
            lua_rawgeti(L, sh, k + 1);
            lua_Integer v = lua_tointeger(L, -1);
            lua_pop(L, 1);
            if (v < 1 || v > (1 << 30)) {
                rc = hyb_error_set(HYB_ERR_ARG, "mixer %s: state '%s' has a bad shape", type,
                                   st->name);
                goto done;
            }
            st->shape[k + 1] = v;
            numel *= v;
        }
        st->offset = s->state_bytes;
        s->state_bytes += (size_t)numel * sizeof(float);
        lua_settop(L, sl);
    }
    lua_pushvalue(L, inst);
    s->ref = luaL_ref(L, LUA_REGISTRYINDEX);
done:
    lua_settop(L, top);
    if (rc != HYB_OK) {
        free(s);
        return rc;
    }
    *out = s;
    return HYB_OK;
}

static void lm_destroy(void *self) {
    lm_self *s = self;
    if (!s) return;
    /* (from another thread the instance stays referenced: a small leak, never a race) */
    if (g_L && s->ref != LUA_NOREF && pthread_equal(pthread_self(), g_L_thread))
        luaL_unref(g_L, LUA_REGISTRYINDEX, s->ref);
    free(s);
}

static int lm_describe(void *self, char *buf, size_t n) {
    lm_self *s = self;
    lua_State *L = g_L;
    int top = lua_gettop(L);
    push_inst(L, s);
    lua_getfield(L, -1, "describe");
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        int rc = lua_fail(L, s, NULL);
        lua_settop(L, top);
        return rc;
    }
    snprintf(buf, n, "%s", lua_tostring(L, -1));
    lua_settop(L, top);
    return HYB_OK;
}

static int lm_n_params(void *self) {
    return ((lm_self *)self)->n_params;
}

static int lm_param_decl(void *self, int i, hyb_param_decl *out) {
    lm_self *s = self;
    if (i < 0 || i >= s->n_params) return hyb_error_set(HYB_ERR_ARG, "param_decl %d", i);
    *out = s->decls[i];
    return HYB_OK;
}

static int lm_init_params(void *self, float *const *params, uint64_t seed) {
    (void)seed;
    lm_self *s = self;
    for (int i = 0; i < s->n_params; i++) {
        if (s->decls[i].init != HYB_INIT_CUSTOM) continue;
        int64_t n = 1;
        for (int k = 0; k < s->decls[i].ndim; k++)
            n *= s->decls[i].shape[k];
        for (int64_t j = 0; j < n; j++)
            params[i][j] = s->consts[i];
    }
    return HYB_OK;
}

static size_t lm_saved_bytes(void *self, int B, int T) {
    (void)self, (void)B, (void)T;
    return 8; /* the key of the saved tape in the registry */
}

static size_t lm_state_bytes(void *self, int max_ctx) {
    (void)max_ctx;
    return ((lm_self *)self)->state_bytes;
}

/* ---- kernels --------------------------------------------------------------------------------- */

/* Push a table {name = param tensor} over the host's parameter memory. */
static int push_params(lua_State *L, lm_self *s, const float *const *params, int leaves) {
    lua_createtable(L, 0, s->n_params);
    for (int i = 0; i < s->n_params; i++) {
        hyb_tensor *t = push_ext(L, params[i], s->decls[i].ndim, s->decls[i].shape);
        if (!t) return HYB_ERR_NOMEM;
        t->requires_grad = leaves;
        lua_setfield(L, -2, s->decls[i].name);
    }
    return HYB_OK;
}

/* Copy the tensor at idx (contiguous or not) into dst (n floats) on be. */
static int copy_out(lua_State *L, int idx, const hyb_backend *be, float *dst, int64_t n) {
    idx = lua_absindex(L, idx);
    lua_getfield(L, idx, "contiguous");
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) return lua_fail(L, NULL, NULL);
    lhyb_tensor *b = lhyb_test_tensor(L, -1);
    if (!b || hyb_tensor_numel(b->t) != n) {
        lua_pop(L, 1);
        return hyb_error_set(HYB_ERR_ARG, "lua mixer: a result has the wrong size");
    }
    int rc = be->copy(be, dst, b->t->data, (size_t)n * sizeof(float));
    lua_pop(L, 1);
    return rc;
}

/* One sequence through the step form: x rows [T, D] from state memory `state` (pos tokens in);
 * y rows written; the state updated in place. */
static int run_steps(lua_State *L, lm_self *s, const hyb_backend *be, const float *x, float *y,
                     int T, void *state, int pos, const float *const *params) {
    int D = s->dims.d_model, top = lua_gettop(L), rc = HYB_OK;
    if (pos == 0) HYB_TRY(be->memset0(be, state, s->state_bytes));
    push_inst(L, s);
    int inst = lua_gettop(L);
    lua_createtable(L, 0, s->n_state);
    int st = lua_gettop(L);
    for (int i = 0; i < s->n_state; i++) {
        if (!push_ext(L, (char *)state + s->st[i].offset, s->st[i].ndim, s->st[i].shape))
            return HYB_ERR_NOMEM;
        lua_setfield(L, st, s->st[i].name);
    }
    int saved_mode = lhyb_set_grad_enabled(0);
    for (int t = 0; t < T && rc == HYB_OK; t++) {
        lua_getfield(L, inst, "step");
        lua_pushvalue(L, inst);
        int64_t xs[3] = {1, 1, D};
        if (!push_ext(L, x + (int64_t)t * D, 3, xs)) {
            rc = HYB_ERR_NOMEM;
            break;
        }
        lua_pushvalue(L, st);
        if (lua_pcall(L, 3, 2, 0) != LUA_OK) {
            rc = lua_fail(L, s, NULL);
            break;
        }
        rc = copy_out(L, -2, be, y + (int64_t)t * D, D);
        lua_replace(L, st); /* the new state table */
        lua_pop(L, 1);
    }
    /* write the final state back into the host's memory */
    for (int i = 0; i < s->n_state && rc == HYB_OK; i++) {
        int64_t n = (int64_t)((i + 1 < s->n_state ? s->st[i + 1].offset : s->state_bytes) -
                              s->st[i].offset) /
                    (int64_t)sizeof(float);
        lua_getfield(L, st, s->st[i].name);
        rc = copy_out(L, -1, be, (float *)((char *)state + s->st[i].offset), n);
        lua_pop(L, 1);
    }
    lhyb_set_grad_enabled(saved_mode);
    lua_settop(L, top);
    return rc;
}

static int lm_forward(void *self, const hyb_mixer_fwd *a) {
    lm_self *s = self;
    HYB_TRY(check_thread(s->type, s->dims.layer));
    g_dev = a->be->device;
    lua_State *L = g_L;
    int top = lua_gettop(L), rc = HYB_OK, D = s->dims.d_model;
    luaL_checkstack(L, 32, "lua mixer");
    /* the instance's params field: tensors over this call's parameter memory */
    push_inst(L, s);
    int inst = lua_gettop(L);
    if ((rc = push_params(L, s, a->params, a->saved != NULL)) != HYB_OK) goto done;
    lua_setfield(L, inst, "params");
    if (a->pos && !a->states) {
        rc = hyb_error_set(HYB_ERR_ARG, "mixer %s (layer %d): positions without states", s->type,
                           s->dims.layer);
        goto done;
    }
    if (a->states) {
        for (int b = 0; b < a->B; b++) {
            int p0 = a->pos ? a->pos[b] : 0;
            if (p0 < 0 || (int64_t)p0 + a->T > a->max_ctx) {
                rc = hyb_error_set(HYB_ERR_ARG,
                                   "mixer %s (layer %d): sequence %d: %d + %d tokens exceed "
                                   "max_ctx = %d",
                                   s->type, s->dims.layer, b, p0, a->T, a->max_ctx);
                goto done;
            }
        }
        for (int b = 0; b < a->B && rc == HYB_OK; b++)
            rc = run_steps(L, s, a->be, a->x + (int64_t)b * a->T * D, a->y + (int64_t)b * a->T * D,
                           a->T, a->states[b], a->pos ? a->pos[b] : 0, a->params);
        goto done;
    }
    int64_t xs[3] = {a->B, a->T, D};
    int saved_mode = lhyb_set_grad_enabled(a->saved != NULL);
    lua_getfield(L, inst, "forward");
    lua_pushvalue(L, inst);
    hyb_tensor *xt = push_ext(L, a->x, 3, xs);
    if (!xt) {
        lhyb_set_grad_enabled(saved_mode);
        rc = HYB_ERR_NOMEM;
        goto done;
    }
    xt->requires_grad = a->saved != NULL;
    int xi = lua_gettop(L);
    lua_pushvalue(L, xi);
    lua_insert(L, xi - 2); /* keep x below the call */
    int r = lua_pcall(L, 2, 1, 0);
    lhyb_set_grad_enabled(saved_mode);
    if (r != LUA_OK) {
        rc = lua_fail(L, s, NULL);
        goto done;
    }
    int y = lua_gettop(L);
    if ((rc = copy_out(L, y, a->be, a->y, (int64_t)a->B * a->T * D)) != HYB_OK) goto done;
    if (a->saved) { /* keep the tape: registry[SAVED_KEY][saved] = {y, x, params} */
        lua_getfield(L, LUA_REGISTRYINDEX, SAVED_KEY);
        lua_pushlightuserdata(L, a->saved);
        lua_createtable(L, 3, 0);
        lua_pushvalue(L, y);
        lua_rawseti(L, -2, 1);
        lua_pushvalue(L, y - 1); /* x */
        lua_rawseti(L, -2, 2);
        lua_getfield(L, inst, "params");
        lua_rawseti(L, -2, 3);
        lua_rawset(L, -3);
    }
done:
    lua_settop(L, top);
    return rc;
}

static int lm_backward(void *self, const hyb_mixer_bwd *a) {
    lm_self *s = self;
    HYB_TRY(check_thread(s->type, s->dims.layer));
    g_dev = a->be->device;
    lua_State *L = g_L;
    int top = lua_gettop(L), rc = HYB_OK, D = s->dims.d_model;
    int64_t n = (int64_t)a->B * a->T * D;
    luaL_checkstack(L, 32, "lua mixer");
    lua_getfield(L, LUA_REGISTRYINDEX, SAVED_KEY);
    int reg = lua_gettop(L);
    lua_pushlightuserdata(L, (void *)a->saved);
    if (lua_rawget(L, reg) != LUA_TTABLE) {
        lua_settop(L, top);
        return hyb_error_set(HYB_ERR_ARG, "mixer %s (layer %d): backward without its forward",
                             s->type, s->dims.layer);
    }
    int e = lua_gettop(L);
    lua_rawgeti(L, e, 1); /* y */
    int y = lua_gettop(L);
    lua_getfield(L, y, "backward");
    lua_pushvalue(L, y);
    int64_t xs[3] = {a->B, a->T, D};
    if (!push_ext(L, a->dy, 3, xs)) {
        lua_settop(L, top);
        return HYB_ERR_NOMEM;
    }
    int saved_mode = lhyb_set_grad_enabled(1);
    int r = lua_pcall(L, 2, 0, 0);
    lhyb_set_grad_enabled(saved_mode);
    if (r != LUA_OK) {
        rc = lua_fail(L, s, NULL);
        goto done;
    }
    lua_rawgeti(L, e, 2); /* x */
    lua_getfield(L, -1, "grad");
    if (lhyb_test_tensor(L, -1))
        rc = copy_out(L, -1, a->be, a->dx, n);
    else
        rc = a->be->memset0(a->be, a->dx, (size_t)n * sizeof(float));
    lua_pop(L, 2);
    lua_rawgeti(L, e, 3); /* params */
    int p = lua_gettop(L);
    for (int i = 0; i < s->n_params && rc == HYB_OK; i++) {
        lua_getfield(L, p, s->decls[i].name);
        lua_getfield(L, -1, "grad");
        lhyb_tensor *g = lhyb_test_tensor(L, -1);
        if (g && a->grads[i])
            rc = a->be->axpy(a->be, a->grads[i], g->t->data, 1.0f, hyb_tensor_numel(g->t));
        lua_pop(L, 2);
    }
    /* the tape is used: drop it */
    lua_pushlightuserdata(L, (void *)a->saved);
    lua_pushnil(L);
    lua_rawset(L, reg);
done:
    lua_settop(L, top);
    return rc;
}

static int lm_decode(void *self, const hyb_mixer_dec *a) {
    lm_self *s = self;
    HYB_TRY(check_thread(s->type, s->dims.layer));
    g_dev = a->be->device;
    lua_State *L = g_L;
    int top = lua_gettop(L), rc = HYB_OK, D = s->dims.d_model;
    push_inst(L, s);
    int inst = lua_gettop(L);
    for (int b = 0; b < a->n; b++)
        if (a->pos[b] < 0 || a->pos[b] >= a->max_ctx) {
            lua_settop(L, top);
            return hyb_error_set(HYB_ERR_ARG,
                                 "mixer %s (layer %d): sequence %d: position %d is outside "
                                 "max_ctx = %d",
                                 s->type, s->dims.layer, b, a->pos[b], a->max_ctx);
        }
    if ((rc = push_params(L, s, a->params, 0)) == HYB_OK) {
        lua_setfield(L, inst, "params");
        for (int b = 0; b < a->n && rc == HYB_OK; b++)
            rc = run_steps(L, s, a->be, a->x + (int64_t)b * D, a->y + (int64_t)b * D, 1,
                           a->states[b], a->pos[b], a->params);
    }
    lua_settop(L, top);
    return rc;
}

/* init_from: def.init_from(p, src, cfg) with p the new parameters and src = {type =, params =
 * {name = tensor}} (host memory, before the model moves); it returns {name = tensor} of values
 * to copy into p (each of its parameter's size). */
static int lm_init_from(void *self, float *const *params, const hyb_mixer_src *src, uint64_t seed) {
    (void)seed;
    lm_self *s = self;
    HYB_TRY(check_thread(s->type, s->dims.layer));
    g_dev = HYB_DEV_CPU;
    lua_State *L = g_L;
    int top = lua_gettop(L), rc = HYB_OK;
    luaL_checkstack(L, 16, "lua mixer");
    push_inst(L, s);
    int inst = lua_gettop(L);
    lua_getfield(L, inst, "def");
    lua_getfield(L, -1, "init_from");
    if (!lua_isfunction(L, -1)) {
        lua_settop(L, top);
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "mixer '%s' (layer %d) cannot be initialised from '%s': its Lua "
                             "table has no init_from",
                             s->type, s->dims.layer, src->type);
    }
    int fn = lua_gettop(L);
    if ((rc = push_params(L, s, (const float *const *)params, 0)) != HYB_OK) goto done;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, src->type);
    lua_setfield(L, -2, "type");
    lua_createtable(L, 0, src->n_params);
    for (int i = 0; i < src->n_params; i++) {
        if (!push_ext(L, src->params[i], src->decls[i].ndim, src->decls[i].shape)) {
            rc = HYB_ERR_NOMEM;
            goto done;
        }
        lua_setfield(L, -2, src->decls[i].name);
    }
    lua_setfield(L, -2, "params");
    lua_getfield(L, inst, "cfg");
    int saved_mode = lhyb_set_grad_enabled(0);
    int r = lua_pcall(L, 3, 1, 0);
    lhyb_set_grad_enabled(saved_mode);
    (void)fn;
    if (r != LUA_OK) {
        rc = hyb_error_set(HYB_ERR_ARG, "lua mixer %s (layer %d): init_from '%s': %s", s->type,
                           s->dims.layer, src->type, lua_tostring(L, -1));
        goto done;
    }
    if (!lua_istable(L, -1)) {
        rc = hyb_error_set(HYB_ERR_ARG,
                           "lua mixer %s (layer %d): init_from must return a table {name = "
                           "tensor}",
                           s->type, s->dims.layer);
        goto done;
    }
    int res = lua_gettop(L);
    const hyb_backend *cpu = hyb_backend_cpu();
    for (int i = 0; i < s->n_params && rc == HYB_OK; i++) {
        lua_getfield(L, res, s->decls[i].name);
        if (lhyb_test_tensor(L, -1)) {
            int64_t n = 1;
            for (int k = 0; k < s->decls[i].ndim; k++)
                n *= s->decls[i].shape[k];
            rc = copy_out(L, -1, cpu, params[i], n);
            if (rc != HYB_OK)
                hyb_error_wrap(rc,
                               "lua mixer %s (layer %d): init_from's '%s' (it must have %lld "
                               "elements)",
                               s->type, s->dims.layer, s->decls[i].name, (long long)n);
        }
        lua_pop(L, 1);
    }
done:
    lua_settop(L, top);
    return rc;
}

/* ---- the resolver ---------------------------------------------------------------------------- */

#define CREATE_N(i)                                                                                \
    static int lm_create_##i(const hyb_model_dims *d, const hyb_cfg_table *c, void **o) {          \
        return lm_create_type(g_types[i].name, d, c, o);                                           \
    }
CREATE_N(0)
CREATE_N(1)
CREATE_N(2)
CREATE_N(3) CREATE_N(4) CREATE_N(5) CREATE_N(6) CREATE_N(7) CREATE_N(8) CREATE_N(9) CREATE_N(10)
    CREATE_N(11) CREATE_N(12) CREATE_N(13) CREATE_N(14) CREATE_N(15) CREATE_N(16) CREATE_N(17)
        CREATE_N(18) CREATE_N(19) CREATE_N(20) CREATE_N(21) CREATE_N(22) CREATE_N(23) CREATE_N(24)
            CREATE_N(25) CREATE_N(26) CREATE_N(27) CREATE_N(28) CREATE_N(29) CREATE_N(30)
                CREATE_N(31) static int (*const CREATES[MAX_LUA_MIXERS])(const hyb_model_dims *,
                                                                         const hyb_cfg_table *,
                                                                         void **) = {
                    lm_create_0,  lm_create_1,  lm_create_2,  lm_create_3,  lm_create_4,
                    lm_create_5,  lm_create_6,  lm_create_7,  lm_create_8,  lm_create_9,
                    lm_create_10, lm_create_11, lm_create_12, lm_create_13, lm_create_14,
                    lm_create_15, lm_create_16, lm_create_17, lm_create_18, lm_create_19,
                    lm_create_20, lm_create_21, lm_create_22, lm_create_23, lm_create_24,
                    lm_create_25, lm_create_26, lm_create_27, lm_create_28, lm_create_29,
                    lm_create_30, lm_create_31};

static int lm_resolve(const char *name, const hyb_mixer_desc **out) {
    for (int i = 0; i < g_n_types; i++)
        if (strcmp(g_types[i].name, name) == 0) {
            *out = &g_types[i].desc;
            return HYB_OK;
        }
    if (strlen(name) >= sizeof g_types[0].name)
        return hyb_error_set(HYB_ERR_ARG, "mixer type '%s': too long (at most 63 bytes)", name);
    FILE *f = fopen(name + 4, "r");
    if (!f)
        return hyb_error_set(HYB_ERR_NOTFOUND,
                             "mixer type '%s': cannot open the Lua file '%s' (paths are relative "
                             "to the working directory)",
                             name, name + 4);
    fclose(f);
    if (g_n_types == MAX_LUA_MIXERS)
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "mixer type '%s': at most %d Lua mixer files",
                             name, MAX_LUA_MIXERS);
    lm_type *t = &g_types[g_n_types];
    snprintf(t->name, sizeof t->name, "%s", name);
    hyb_mixer_desc *d = &t->desc;
    memset(d, 0, sizeof *d);
    d->abi_version = HYB_PLUGIN_ABI_VERSION;
    d->struct_size = sizeof *d;
    d->name = t->name;
    d->version = "lua";
    d->description = "a mixer defined in Lua (scripts/mixerlib.lua)";
    d->hf_prefix = "mixer";
    d->create = CREATES[g_n_types];
    d->destroy = lm_destroy;
    d->describe = lm_describe;
    d->n_params = lm_n_params;
    d->param_decl = lm_param_decl;
    d->init_params = lm_init_params;
    d->saved_bytes = lm_saved_bytes;
    d->state_bytes = lm_state_bytes;
    d->kernels[HYB_DEV_CPU].forward = lm_forward;
    d->kernels[HYB_DEV_CPU].backward = lm_backward;
    d->kernels[HYB_DEV_CPU].decode = lm_decode;
    d->init_from = lm_init_from;
    /* the same functions on CUDA: the tensor ops run on the device of their inputs */
    d->kernels[HYB_DEV_CUDA] = d->kernels[HYB_DEV_CPU];
    g_n_types++;
    *out = d;
    return HYB_OK;
}

void lhyb_open_lua_mixers(lua_State *L) {
    lua_State *main;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    main = lua_tothread(L, -1);
    lua_pop(L, 1);
    g_L = main;
    g_L_thread = pthread_self();
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, SAVED_KEY);
    hyb_plugin_set_resolver("lua:", lm_resolve);
}
