/* runtime/lua_model.c: layer maps, models, losses and the AdamW optimiser for Lua.
 *
 *   local model = hyb.model("graphs/tiny.toml", {seed = 1})
 *   local opt = hyb.optim.adamw(model, {lr = 3e-3, weight_decay = 0.1, clip = 1.0})
 *   local ids, targets = hyb.data.batch(tokens, B, T, step, seed)
 *   local logits = model:forward(ids, B, T)             -- [B, T, V], lives until the next forward
 *   local loss = model:loss(logits, targets)            -- {kind = "ce"} by default
 *   opt:zero_grad(); loss:backward(); opt:step()
 *   model:save("out/tiny"); local again = hyb.load("out/tiny")
 *
 * Each model owns one graph (the tape and its activation arena). model:forward resets it (unless
 * {reset = false}), which makes every tensor handed out from the previous forward stale: using it
 * raises an error that says so (t:clone() keeps a copy). A loss remembers its value, so
 * loss:value() works at any time; loss:backward() needs the graph it was computed on.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "hyb/config.h"
#include "hyb/graph.h"
#include "hyb/model.h"
#include "hyb/backend.h"
#include "lhyb.h"

/* ---- layer maps ------------------------------------------------------------------------------ */

typedef struct lmap {
    hyb_layermap *map; /* NULL once closed */
    char *source;      /* path (from_text == 0) or TOML text (from_text == 1); hyb_malloc'ed */
    char *name;        /* source name for parsed text */
    int from_text;
} lmap;

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *d = (char *)hyb_malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

static lmap *check_map(lua_State *L, int idx, const char *fname) {
    lmap *m = (lmap *)lhyb_check_udata(L, idx, LHYB_LAYERMAP_MT, fname, "a hyb.layermap");
    if (!m->map) lhyb_error(L, "%s: the hyb.layermap is closed", fname);
    return m;
}

static lmap *new_map_box(lua_State *L) {
    return (lmap *)lhyb_new_object(L, sizeof(lmap), 0, LHYB_LAYERMAP_MT);
}

/* A fresh copy of the map from its source (hyb_model_build takes ownership of the map it gets). */
static int map_reload(const lmap *m, hyb_layermap **out) {
    if (m->from_text) return hyb_layermap_parse(m->source, m->name, out);
    return hyb_layermap_load(m->source, out);
}

/* hyb.layermap(path) */
static int l_layermap(lua_State *L) {
    const char *path = lhyb_check_string(L, 1, "hyb.layermap", "path");
    lmap *m = new_map_box(L);
    m->source = dup_str(path);
    if (!m->source) return lhyb_error(L, "hyb.layermap: out of memory");
    if (hyb_layermap_load(path, &m->map) != HYB_OK) return lhyb_raise_hyb(L, "hyb.layermap");
    return 1;
}

/* hyb.parse_layermap(text[, source_name]) */
static int l_parse_layermap(lua_State *L) {
    const char *text = lhyb_check_string(L, 1, "hyb.parse_layermap", "text");
    const char *name = lua_isnoneornil(L, 2)
                           ? "<string>"
                           : lhyb_check_string(L, 2, "hyb.parse_layermap", "source name");
    lmap *m = new_map_box(L);
    m->from_text = 1;
    m->source = dup_str(text);
    m->name = dup_str(name);
    if (!m->source || !m->name) return lhyb_error(L, "hyb.parse_layermap: out of memory");
    if (hyb_layermap_parse(text, name, &m->map) != HYB_OK)
        return lhyb_raise_hyb(L, "hyb.parse_layermap");
    return 1;
}

static void push_map_config(lua_State *L, const hyb_layermap *map) {
    char pat[4096];
    lua_createtable(L, 0, 10);
    lhyb_set_str(L, "name", map->name);
    lhyb_set_str(L, "path", map->path);
    lhyb_set_int(L, "d_model", map->d_model);
    lhyb_set_int(L, "n_layers", map->n_layers);
    lhyb_set_int(L, "vocab_size", map->vocab_size);
    lhyb_set_int(L, "d_ff", map->d_ff);
    lhyb_set_int(L, "max_seq", map->max_seq);
    lua_pushnumber(L, map->norm_eps);
    lua_setfield(L, -2, "norm_eps");
    lua_pushboolean(L, map->tie_embeddings);
    lua_setfield(L, -2, "tie_embeddings");
    lhyb_set_str(L, "pattern", hyb_layermap_pattern(map, pat, sizeof pat));
}

/* The layer map's describe() text (can be long: one line per run of layers). */
static void push_describe(lua_State *L, const hyb_layermap *map) {
    size_t n = 65536;
    char *buf = (char *)lua_newuserdatauv(L, n, 0);
    buf[0] = 0;
    hyb_layermap_describe(map, buf, n);
    lua_pushstring(L, buf);
    lua_remove(L, -2);
}

static int map_describe(lua_State *L) {
    push_describe(L, check_map(L, 1, "layermap:describe")->map);
    return 1;
}
static int map_n_layers(lua_State *L) {
    lua_pushinteger(L, check_map(L, 1, "layermap:n_layers")->map->n_layers);
    return 1;
}
static int map_pattern(lua_State *L) {
    char pat[4096];
    lua_pushstring(L,
                   hyb_layermap_pattern(check_map(L, 1, "layermap:pattern")->map, pat, sizeof pat));
    return 1;
}
static int map_config(lua_State *L) {
    push_map_config(L, check_map(L, 1, "layermap:config")->map);
    return 1;
}
static int map_tostring(lua_State *L) {
    lmap *m = (lmap *)luaL_checkudata(L, 1, LHYB_LAYERMAP_MT);
    if (!m->map)
        lua_pushstring(L, "hyb.layermap(closed)");
    else
        lua_pushfstring(L, "hyb.layermap(%s, %d layers)", m->map->path, m->map->n_layers);
    return 1;
}
static int map_gc(lua_State *L) {
    lmap *m = (lmap *)luaL_checkudata(L, 1, LHYB_LAYERMAP_MT);
    if (m->map) hyb_layermap_free(m->map);
    hyb_free(m->source);
    hyb_free(m->name);
    m->map = NULL;
    m->source = m->name = NULL;
    return 0;
}

/* ---- models ---------------------------------------------------------------------------------- */

typedef struct lmodel {
    hyb_model *m;       /* NULL once closed */
    hyb_graph *g;       /* the model's graph: tape + activation arena */
    uint64_t graph_gen; /* +1 at every graph reset: tensors from the old graph go stale */
    uint64_t param_gen; /* +1 when parameters are replaced (swap) or the model is closed */
    int backward_done;  /* a backward already ran on the current graph */
    hyb_toml **docs;    /* configs given to model:swap (the layer map refers to their tables) */
    int n_docs;
} lmodel;

static lmodel *check_model(lua_State *L, int idx, const char *fname) {
    lmodel *lm = (lmodel *)lhyb_check_udata(L, idx, LHYB_MODEL_MT, fname, "a hyb.model");
    if (!lm->m) lhyb_error(L, "%s: the hyb.model is closed", fname);
    return lm;
}

static lmodel *new_model_box(lua_State *L) {
    return (lmodel *)lhyb_new_object(L, sizeof(lmodel), 0, LHYB_MODEL_MT);
}

static void model_attach_graph(lua_State *L, lmodel *lm, const char *fname) {
    lm->g = hyb_graph_new();
    if (!lm->g) lhyb_raise_hyb(L, fname);
}

/* hyb.model(path_or_map[, {seed = n}]) */
static int l_model(lua_State *L) {
    lua_settop(L, 2);
    static const char *const allowed[] = {"seed", NULL};
    char buf[96];
    const char *F = "hyb.model";
    lmap *src = (lmap *)luaL_testudata(L, 1, LHYB_LAYERMAP_MT);
    if (!src && lua_type(L, 1) != LUA_TSTRING)
        return lhyb_error(L, "%s: expected a layer map path (string) or a hyb.layermap, got %s", F,
                          lhyb_describe(L, 1, buf, sizeof buf));
    if (src) check_map(L, 1, F);
    lhyb_check_opts(L, 2, F, allowed);
    lua_Integer seed = lhyb_opt_field_int(L, 2, F, "seed", 0, LUA_MAXINTEGER, 1234);
    hyb_layermap *map = NULL;
    int rc = src ? map_reload(src, &map) : hyb_layermap_load(lua_tostring(L, 1), &map);
    if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    lmodel *lm = new_model_box(L); /* may raise on OOM: map would leak, acceptable */
    if (hyb_model_build(map, (uint64_t)seed, &lm->m) != HYB_OK) { /* takes ownership of map */
        lm->m = NULL;
        return lhyb_raise_hyb(L, F);
    }
    model_attach_graph(L, lm, F);
    return 1;
}

/* hyb.load(dir) */
static int l_load(lua_State *L) {
    const char *dir = lhyb_check_string(L, 1, "hyb.load", "dir");
    lmodel *lm = new_model_box(L);
    if (hyb_model_load(dir, &lm->m) != HYB_OK) {
        lm->m = NULL;
        return lhyb_raise_hyb(L, "hyb.load");
    }
    model_attach_graph(L, lm, "hyb.load");
    return 1;
}

/* model:clone() -> an independent copy (same layout, parameter values and frozen flags, zero
 * grads, its own graph): e.g. a student made from its teacher before swapping layers. */
static int m_clone(lua_State *L) {
    lmodel *lm = check_model(L, 1, "model:clone");
    lmodel *c = new_model_box(L);
    if (hyb_model_clone(lm->m, &c->m) != HYB_OK) {
        c->m = NULL;
        return lhyb_raise_hyb(L, "model:clone");
    }
    model_attach_graph(L, c, "model:clone");
    return 1;
}

static void graph_reset(lmodel *lm) {
    hyb_graph_reset(lm->g);
    lm->graph_gen++;
    lm->backward_done = 0;
}

/* model:forward(ids, B, T[, {grad = true, reset = true}]) -> logits [B, T, V] */
static int m_forward(lua_State *L) {
    lua_settop(L, 5);
    static const char *const allowed[] = {"grad", "reset", NULL};
    const char *F = "model:forward";
    lmodel *lm = check_model(L, 1, F);
    hyb_model *m = lm->m;
    int max_seq = m->map && m->map->max_seq > 0 ? m->map->max_seq : (1 << 30);
    lua_Integer B = lhyb_check_int(L, 3, F, "B", 1, 1 << 20);
    lua_Integer T = lhyb_check_int(L, 4, F, "T", 1, max_seq);
    if (B * T > ((lua_Integer)1 << 31) - 1) return lhyb_error(L, "%s: B*T is too large", F);
    lhyb_check_opts(L, 5, F, allowed);
    int grad = lhyb_opt_field_bool(L, 5, F, "grad", 1);
    int reset = lhyb_opt_field_bool(L, 5, F, "reset", 1);
    int32_t *ids = lhyb_check_ids(L, 2, F, "ids", B * T, 0, m->V - 1);
    if (reset) graph_reset(lm);
    hyb_graph_set_grad(lm->g, grad);
    hyb_tensor *logits = hyb_model_forward(m, lm->g, ids, (int)B, (int)T);
    if (!logits) return lhyb_raise_hyb(L, F);
    lhyb_push_borrowed(L, logits, 1, &lm->graph_gen, "graph");
    return 1;
}

/* ---- losses ---------------------------------------------------------------------------------- */

typedef struct lloss {
    hyb_tensor *loss; /* [1] in the model's graph */
    lmodel *lm;       /* the model (kept alive by the user value) */
    uint64_t gen;     /* lm->graph_gen when computed */
    int grad;         /* grad mode was on: backward possible */
    double value;
    char kind[16];
} lloss;

/* A copy of x (f32, contiguous) in g's arena: keeps inputs alive as long as the graph. */
static hyb_tensor *arena_copy(hyb_graph *g, const hyb_tensor *x) {
    hyb_tensor *c = hyb_graph_tensor(g, x->dtype, x->ndim, x->shape);
    if (c) memcpy(c->data, x->data, hyb_tensor_nbytes(x));
    return c;
}

/* model:loss(logits, targets[, {kind=, teacher=, mask=, temperature=}]) -> loss */
static int m_loss(lua_State *L) {
    lua_settop(L, 4);
    static const char *const allowed[] = {"kind", "teacher", "mask", "temperature", NULL};
    const char *F = "model:loss";
    char sa[128], sb[128];
    lmodel *lm = check_model(L, 1, F);
    lhyb_tensor *lt = lhyb_check_tensor(L, 2, F, "logits");
    if (lt->genp != &lm->graph_gen)
        return lhyb_error(L, "%s: logits must be the output of this model's forward", F);
    hyb_tensor *logits = lt->t;
    if (logits->dtype != HYB_F32 || logits->ndim < 2)
        return lhyb_error(L, "%s: logits must be f32 [B, T, V], got %s", F,
                          hyb_tensor_shape_str(logits, sa, sizeof sa));
    int64_t V = logits->shape[logits->ndim - 1];
    int64_t n = hyb_tensor_numel(logits) / V;
    lhyb_check_opts(L, 4, F, allowed);
    const char *kind = lhyb_opt_field_string(L, 4, F, "kind", "ce");
    int k = strcmp(kind, "ce") == 0           ? 0
            : strcmp(kind, "kl_forward") == 0 ? 1
            : strcmp(kind, "kl_reverse") == 0 ? 2
                                              : -1;
    if (k < 0)
        return lhyb_error(L,
                          "%s: option 'kind' must be \"ce\", \"kl_forward\" or \"kl_reverse\", "
                          "got \"%s\"",
                          F, kind);
    double temp = lhyb_opt_field_number(L, 4, F, "temperature", 1.0);
    if (!(temp > 0)) return lhyb_error(L, "%s: option 'temperature' must be > 0, got %g", F, temp);
    int base = lua_gettop(L);

    /* mask: B*T weights, copied into the graph's arena so it lives as long as the tape */
    const float *mask = NULL;
    if (lua_istable(L, 4)) {
        lua_getfield(L, 4, "mask");
        if (!lua_isnil(L, -1)) {
            float *mk = lhyb_check_floats(L, -1, F, "option 'mask'", n);
            int64_t sh[1] = {n};
            hyb_tensor *mt = hyb_graph_tensor(lm->g, HYB_F32, 1, sh);
            if (!mt) return lhyb_raise_hyb(L, F);
            memcpy(mt->data, mk, (size_t)n * sizeof(float));
            mask = hyb_tensor_cf32(mt);
        }
    }

    hyb_tensor *loss = NULL;
    if (k == 0) {
        if (lua_istable(L, 4)) {
            lua_getfield(L, 4, "teacher");
            if (!lua_isnil(L, -1))
                return lhyb_error(L,
                                  "%s: option 'teacher' is only used by kind \"kl_forward\" and "
                                  "\"kl_reverse\" (kind is \"ce\")",
                                  F);
        }
        if (lua_isnoneornil(L, 3))
            return lhyb_error(L, "%s: kind \"ce\" needs targets (B*T token ids)", F);
        int32_t *tg = lhyb_check_ids(L, 3, F, "targets", n, INT32_MIN, V - 1);
        int64_t sh[1] = {n};
        hyb_tensor *tt = hyb_graph_tensor(lm->g, HYB_I32, 1, sh);
        if (!tt) return lhyb_raise_hyb(L, F);
        memcpy(tt->data, tg, (size_t)n * sizeof(int32_t));
        loss = hyb_cross_entropy(lm->g, logits, (const int32_t *)tt->data, mask);
    } else {
        if (!lua_isnoneornil(L, 3))
            return lhyb_error(L, "%s: kind \"%s\" takes no targets (pass nil)", F, kind);
        if (lua_istable(L, 4))
            lua_getfield(L, 4, "teacher");
        else
            lua_pushnil(L);
        if (lua_isnil(L, -1))
            return lhyb_error(L, "%s: kind \"%s\" needs option 'teacher' (the teacher's logits)", F,
                              kind);
        hyb_tensor *te = lhyb_check_tensor(L, -1, F, "option 'teacher'")->t;
        if (te->dtype != HYB_F32 || !hyb_tensor_same_shape(te, logits) ||
            !hyb_tensor_is_contiguous(te) || te->device != logits->device)
            return lhyb_error(L, "%s: teacher logits %s must match the student's %s", F,
                              hyb_tensor_shape_str(te, sa, sizeof sa),
                              hyb_tensor_shape_str(logits, sb, sizeof sb));
        hyb_tensor *tc = arena_copy(lm->g, te);
        if (!tc) return lhyb_raise_hyb(L, F);
        loss = k == 1 ? hyb_kl_forward(lm->g, logits, tc, mask, (float)temp)
                      : hyb_kl_reverse(lm->g, logits, tc, mask, (float)temp);
    }
    if (!loss) return lhyb_raise_hyb(L, F);
    lua_settop(L, base);
    lloss *ls = (lloss *)lhyb_new_object(L, sizeof(lloss), 1, LHYB_LOSS_MT);
    ls->loss = loss;
    ls->lm = lm;
    ls->gen = lm->graph_gen;
    ls->grad = hyb_graph_grad_enabled(lm->g);
    ls->value = hyb_tensor_cf32(loss)[0];
    snprintf(ls->kind, sizeof ls->kind, "%s", kind);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    return 1;
}

static lloss *check_loss(lua_State *L, int idx, const char *fname) {
    return (lloss *)lhyb_check_udata(L, idx, LHYB_LOSS_MT, fname, "a hyb.loss");
}

static int loss_value(lua_State *L) {
    lua_pushnumber(L, check_loss(L, 1, "loss:value")->value);
    return 1;
}

/* loss:backward([scale]) accumulates d(scale * loss)/d(param) into every parameter's grad. */
static int loss_backward(lua_State *L) {
    lua_settop(L, 2);
    const char *F = "loss:backward";
    lloss *ls = check_loss(L, 1, F);
    double scale = lua_isnoneornil(L, 2) ? 1.0 : lhyb_check_number(L, 2, F, "scale");
    lmodel *lm = ls->lm;
    if (!lm->m) return lhyb_error(L, "%s: the model is closed", F);
    if (ls->gen != lm->graph_gen)
        return lhyb_error(L,
                          "%s: the graph of this loss was reset by a later forward; call "
                          "backward before the next forward",
                          F);
    if (!ls->grad)
        return lhyb_error(L,
                          "%s: the forward ran with {grad = false}: there is nothing to "
                          "differentiate",
                          F);
    if (lm->backward_done)
        return lhyb_error(L, "%s: backward already ran on this graph; run forward again", F);
    if (hyb_graph_backward(lm->g, ls->loss, (float)scale) != HYB_OK) return lhyb_raise_hyb(L, F);
    lm->backward_done = 1;
    return 0;
}

static int loss_tostring(lua_State *L) {
    lloss *ls = check_loss(L, 1, "loss:__tostring");
    lua_pushfstring(L, "hyb.loss(%s %f)", ls->kind, ls->value);
    return 1;
}

/* ---- model methods --------------------------------------------------------------------------- */

static int m_zero_grad(lua_State *L) {
    hyb_model_zero_grad(check_model(L, 1, "model:zero_grad")->m);
    return 0;
}

static int m_params(lua_State *L) {
    int n = 0;
    hyb_tensor **p = hyb_model_params(check_model(L, 1, "model:params")->m, &n);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, p[i]->name);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static hyb_tensor *check_param(lua_State *L, lmodel *lm, int idx, const char *fname) {
    hyb_tensor *p = hyb_model_param(lm->m, lhyb_check_string(L, idx, fname, "name"));
    if (!p)
        lhyb_error(L, "%s: the model has no parameter '%s' (see model:params())", fname,
                   lua_tostring(L, idx));
    return p;
}

/* model:param(name) -> the parameter tensor itself (writes through t:set change the model) */
static int m_param(lua_State *L) {
    lmodel *lm = check_model(L, 1, "model:param");
    hyb_tensor *p = check_param(L, lm, 2, "model:param");
    lhyb_push_borrowed(L, p, 1, &lm->param_gen, "parameter");
    return 1;
}

/* model:grad(name) -> the parameter's accumulated gradient */
static int m_grad(lua_State *L) {
    lmodel *lm = check_model(L, 1, "model:grad");
    hyb_tensor *p = check_param(L, lm, 2, "model:grad");
    if (!p->grad && (p->owner != HYB_OWN_PARAM || hyb_tensor_grad_ensure(p) != HYB_OK))
        return lhyb_error(L, "model:grad: parameter '%s' has no gradient", p->name);
    lhyb_push_borrowed(L, p->grad, 1, &lm->param_gen, "parameter");
    return 1;
}

static int m_n_params(lua_State *L) {
    lua_pushinteger(L, hyb_model_n_elements(check_model(L, 1, "model:n_params")->m));
    return 1;
}

/* mkdir -p */
static int make_dirs(const char *path, char *err, size_t n) {
    char tmp[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof tmp) {
        snprintf(err, n, "bad directory name '%s'", path);
        return -1;
    }
    memcpy(tmp, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (tmp[i] == '/' || tmp[i] == 0) {
            char c = tmp[i];
            tmp[i] = 0;
            if (mkdir(tmp, 0777) != 0 && errno != EEXIST) {
                snprintf(err, n, "cannot create directory '%s': %s", tmp, strerror(errno));
                return -1;
            }
            tmp[i] = c;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, n, "'%s' is not a directory", path);
        return -1;
    }
    return 0;
}

/* Create the directory that will hold `path` (mkdir -p of its dirname). */
static int make_parent_dirs(const char *path, char *err, size_t n) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return 0;
    size_t len = (size_t)(slash - path);
    if (len >= sizeof dir) {
        snprintf(err, n, "path too long");
        return -1;
    }
    memcpy(dir, path, len);
    dir[len] = 0;
    return make_dirs(dir, err, n);
}

/* The string argument at idx naming where fname writes; the directory it names (parent = 0) or
 * the one that will hold it (parent = 1) is created first. Raises "<fname>: <reason>". */
static const char *check_out_path(lua_State *L, int idx, const char *fname, const char *argname,
                                  int parent) {
    char err[4400];
    const char *path = lhyb_check_string(L, idx, fname, argname);
    int rc = parent ? make_parent_dirs(path, err, sizeof err) : make_dirs(path, err, sizeof err);
    if (rc != 0) lhyb_error(L, "%s: %s", fname, err);
    return path;
}

/* model:to(device) -> model (moved in place: "cpu", "cuda", "cuda:N"); model:device() -> name */
static int m_to(lua_State *L) {
    const char *F = "model:to";
    hyb_model *m = lhyb_check_model(L, 1, F);
    const char *name = luaL_checkstring(L, 2);
    const hyb_backend *be = NULL;
    if (hyb_backend_open(name, &be) != HYB_OK || hyb_model_to_device(m, be) != HYB_OK)
        return lhyb_raise_hyb(L, F);
    lua_settop(L, 1);
    return 1;
}

static int m_device(lua_State *L) {
    hyb_model *m = lhyb_check_model(L, 1, "model:device");
    lua_pushstring(L, hyb_model_backend(m)->name);
    return 1;
}

/* model:save(dir[, {dtype = "f32"|"bf16"}]) */
static int m_save(lua_State *L) {
    static const char *const allowed[] = {"dtype", NULL};
    const char *F = "model:save";
    lmodel *lm = check_model(L, 1, F);
    const char *dir = check_out_path(L, 2, F, "dir", 0);
    lhyb_check_opts(L, 3, F, allowed);
    hyb_dtype dt = HYB_F32;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "dtype");
        if (!lua_isnil(L, -1)) {
            const char *s = lua_tostring(L, -1);
            if (!s || (strcmp(s, "f32") && strcmp(s, "bf16")))
                return luaL_error(L, "%s: dtype must be \"f32\" or \"bf16\", got %s", F,
                                  s ? s : luaL_typename(L, -1));
            dt = strcmp(s, "bf16") ? HYB_F32 : HYB_BF16;
        }
        lua_pop(L, 1);
    }
    if (hyb_model_save_as(lm->m, dir, dt) != HYB_OK) return lhyb_raise_hyb(L, F);
    return 0;
}

static int m_load_params(lua_State *L) {
    lmodel *lm = check_model(L, 1, "model:load_params");
    const char *path = lhyb_check_string(L, 2, "model:load_params", "path");
    if (hyb_model_load_params(lm->m, path) != HYB_OK) return lhyb_raise_hyb(L, "model:load_params");
    return 0;
}

static int m_layout(lua_State *L) {
    lmodel *lm = check_model(L, 1, "model:layout");
    push_describe(L, lm->m->map);
    return 1;
}

static int m_pattern(lua_State *L) {
    char pat[4096];
    lmodel *lm = check_model(L, 1, "model:pattern");
    lua_pushstring(L, hyb_layermap_pattern(lm->m->map, pat, sizeof pat));
    return 1;
}

static int m_config(lua_State *L) {
    push_map_config(L, check_model(L, 1, "model:config")->m->map);
    return 1;
}

/* model:graph_stats() -> {nodes=, bytes=, peak_bytes=} of the model's graph */
static int m_graph_stats(lua_State *L) {
    lmodel *lm = check_model(L, 1, "model:graph_stats");
    lua_createtable(L, 0, 3);
    lhyb_set_int(L, "nodes", hyb_graph_n_nodes(lm->g));
    lhyb_set_int(L, "bytes", (lua_Integer)hyb_graph_bytes(lm->g));
    lhyb_set_int(L, "peak_bytes", (lua_Integer)hyb_graph_peak_bytes(lm->g));
    return 1;
}

/* Layer indices (0-based, as in layer maps and HF names) from an integer or a table at idx into a
 * userdata buffer pushed on the stack; returns the count. Each must be in [0, L), no repeats. */
static int check_layers(lua_State *L, int idx, const char *F, int n_layers, int **out) {
    char buf[96];
    int n = 1;
    if (lua_istable(L, idx)) {
        n = (int)lua_rawlen(L, idx);
        if (n < 1) lhyb_error(L, "%s: layers must not be empty", F);
    } else if (lua_type(L, idx) != LUA_TNUMBER) {
        lhyb_error(L, "%s: layers must be a layer index or a table of them (0-based), got %s", F,
                   lhyb_describe(L, idx, buf, sizeof buf));
    }
    int *ls = (int *)lua_newuserdatauv(L, sizeof(int) * (size_t)n, 0);
    for (int i = 0; i < n; i++) {
        char name[48];
        if (lua_istable(L, idx)) {
            lua_rawgeti(L, idx, i + 1);
            snprintf(name, sizeof name, "layers[%d]", i + 1);
        } else {
            lua_pushvalue(L, idx);
            snprintf(name, sizeof name, "layer");
        }
        ls[i] = (int)lhyb_check_int(L, -1, F, name, 0, n_layers - 1);
        lua_pop(L, 1);
        for (int j = 0; j < i; j++)
            if (ls[j] == ls[i]) lhyb_error(L, "%s: layer %d is listed twice", F, ls[i]);
    }
    *out = ls;
    return n;
}

/* After a structural change: parameters, optimisers and the graph's tensors are stale. */
static void model_changed(lmodel *lm) {
    lm->param_gen++;
    graph_reset(lm);
}

/* model:swap(layers, mixer[, {init = "random" | "mil" | "from_old", seed = n, config = toml}])
 *   layers: a 0-based layer index or a table of them.
 *   mixer:  the name of a mixer in the model's layer map ([mixers.<name>]: its type and table are
 *           used), a plugin type (e.g. "mamba1") configured by option `config` (TOML text of the
 *           mixer's table, without a header) or by its defaults, or "identity".
 *   init:   "random" (default) keeps the new mixer's own init; "mil" / "dil" / "from_old"
 *           initialise it from the layer's old mixer (the plugin's init_from: MIL from attention).
 * Parameters (model:param tensors) and optimisers made before the swap become stale. */
static int m_swap(lua_State *L) {
    static const char *const allowed[] = {"init", "seed", "config", NULL};
    const char *F = "model:swap";
    char buf[96];
    lua_settop(L, 4);
    lmodel *lm = check_model(L, 1, F);
    hyb_model *m = lm->m;
    if (lua_type(L, 3) != LUA_TSTRING)
        return lhyb_error(L,
                          "%s: mixer must be a string (a mixer name of the layer map, a plugin "
                          "type or \"identity\"), got %s",
                          F, lhyb_describe(L, 3, buf, sizeof buf));
    const char *mixer = lua_tostring(L, 3);
    lhyb_check_opts(L, 4, F, allowed);
    const char *init = lhyb_opt_field_string(L, 4, F, "init", "random");
    int from_old;
    if (strcmp(init, "random") == 0)
        from_old = 0;
    else if (strcmp(init, "mil") == 0 || strcmp(init, "dil") == 0 || strcmp(init, "from_old") == 0)
        from_old = 1;
    else
        return lhyb_error(L,
                          "%s: option 'init' must be \"random\", \"mil\", \"dil\" or "
                          "\"from_old\", got \"%s\"",
                          F, init);
    lua_Integer seed = lhyb_opt_field_int(L, 4, F, "seed", 0, LUA_MAXINTEGER, 1234);
    const char *config = lhyb_opt_field_string(L, 4, F, "config", NULL);
    int *layers = NULL;
    int n = check_layers(L, 2, F, m->L, &layers);

    /* resolve the mixer: a spec of the layer map by name, else a plugin type */
    const char *type = mixer;
    const hyb_cfg_table *cfg = NULL;
    for (int i = 0; i < m->map->n_mixers; i++)
        if (strcmp(m->map->mixers[i].name, mixer) == 0) {
            type = m->map->mixers[i].type;
            cfg = m->map->mixers[i].table;
            break;
        }
    if (config) {
        if (cfg)
            return lhyb_error(L,
                              "%s: '%s' is a mixer of the layer map, which has its own config; "
                              "option 'config' is for plugin types",
                              F, mixer);
        if (strcmp(mixer, HYB_MIXER_IDENTITY) == 0)
            return lhyb_error(L, "%s: the identity mixer takes no config", F);
        hyb_toml **docs = (hyb_toml **)hyb_malloc(sizeof(hyb_toml *) * (size_t)(lm->n_docs + 1));
        if (!docs) return lhyb_error(L, "%s: out of memory", F);
        if (lm->n_docs) memcpy(docs, lm->docs, sizeof(hyb_toml *) * (size_t)lm->n_docs);
        hyb_free(lm->docs);
        lm->docs = docs;
        char name[96];
        snprintf(name, sizeof name, "<%s config>", mixer);
        hyb_toml *doc = hyb_toml_parse_string(config, name);
        if (!doc) return lhyb_raise_hyb(L, F);
        lm->docs[lm->n_docs++] = doc;
        cfg = hyb_toml_root(doc);
    }
    for (int i = 0; i < n; i++) {
        int rc =
            hyb_model_swap(m, layers[i], type, cfg, from_old, (uint64_t)seed + (uint64_t)layers[i]);
        if (i > 0 || rc == HYB_OK) model_changed(lm);
        if (rc != HYB_OK) {
            if (i > 0) hyb_error_wrap(rc, "layers listed before %d were swapped", layers[i]);
            return lhyb_raise_hyb(L, F);
        }
    }
    lua_settop(L, 1);
    return 1;
}

/* model:set_identity(layers): replace the layers' mixers by identity (h' = h; the MLP stays). */
static int m_set_identity(lua_State *L) {
    const char *F = "model:set_identity";
    lua_settop(L, 2);
    lmodel *lm = check_model(L, 1, F);
    int *layers = NULL;
    int n = check_layers(L, 2, F, lm->m->L, &layers);
    for (int i = 0; i < n; i++) {
        int rc = hyb_model_set_identity(lm->m, layers[i]);
        if (i > 0 || rc == HYB_OK) model_changed(lm);
        if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    }
    lua_settop(L, 1);
    return 1;
}

/* ---- capture (hyb_model_capture): activations and their gradients for analysis -------------- */

/* model:capture({layers = {..} | n, points = {..} | "name", grads = false}) or model:capture(nil)
 *   layers: 0-based layer indices (default: every layer); points: names among block_in,
 *   mixer_in, mixer_out, mlp_in, mlp_out, block_out (default: all); grads: also the gradients of
 *   the loss w.r.t. them after loss:backward(). nil clears. Returns the model. */
static int m_capture(lua_State *L) {
    static const char *const allowed[] = {"layers", "points", "grads", NULL};
    const char *F = "model:capture";
    char buf[96];
    lua_settop(L, 2);
    lmodel *lm = check_model(L, 1, F);
    hyb_model *m = lm->m;
    if (lua_isnil(L, 2)) {
        hyb_model_capture_clear(m);
        lua_settop(L, 1);
        return 1;
    }
    if (!lua_istable(L, 2))
        return lhyb_error(L, "%s: expected a table {layers =, points =, grads =} or nil, got %s", F,
                          lhyb_describe(L, 2, buf, sizeof buf));
    lhyb_check_opts(L, 2, F, allowed);
    int grads = lhyb_opt_field_bool(L, 2, F, "grads", 0);
    /* points: a name or a table of names */
    unsigned points = 0;
    lua_getfield(L, 2, "points"); /* 3 */
    if (lua_isnil(L, 3)) {
        points = (1u << HYB_CAP_COUNT) - 1;
    } else {
        int n = 1, tbl = lua_istable(L, 3);
        if (tbl) {
            n = (int)lua_rawlen(L, 3);
            if (n < 1) return lhyb_error(L, "%s: points must not be empty", F);
        } else if (lua_type(L, 3) != LUA_TSTRING) {
            return lhyb_error(L, "%s: points must be a point name or a table of them, got %s", F,
                              lhyb_describe(L, 3, buf, sizeof buf));
        }
        for (int i = 0; i < n; i++) {
            if (tbl)
                lua_rawgeti(L, 3, i + 1);
            else
                lua_pushvalue(L, 3);
            int p = lua_type(L, -1) == LUA_TSTRING
                        ? hyb_capture_point_from_name(lua_tostring(L, -1))
                        : -1;
            if (p < 0)
                return lhyb_error(L,
                                  "%s: points[%d] must be one of block_in, mixer_in, mixer_out, "
                                  "mlp_in, mlp_out, block_out, got %s",
                                  F, i + 1, lhyb_describe(L, -1, buf, sizeof buf));
            lua_pop(L, 1);
            points |= HYB_CAP_BIT(p);
        }
    }
    lua_getfield(L, 2, "layers"); /* 4 */
    int *layers = NULL, n;
    if (lua_isnil(L, 4)) {
        layers = (int *)lua_newuserdatauv(L, sizeof(int) * (size_t)m->L, 0);
        for (int l = 0; l < m->L; l++)
            layers[l] = l;
        n = m->L;
    } else {
        n = check_layers(L, 4, F, m->L, &layers);
    }
    if (hyb_model_capture(m, layers, n, points, grads) != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_settop(L, 1);
    return 1;
}

/* a host copy the script owns of a captured tensor */
static void push_capture_copy(lua_State *L, const hyb_tensor *t, const char *F) {
    hyb_tensor *c = hyb_tensor_new(HYB_F32, t->ndim, t->shape);
    if (c && hyb_tensor_download(t, c->data) != HYB_OK) {
        hyb_tensor_free(c);
        c = NULL;
    }
    lhyb_push_owned(L, c, F);
}

/* model:captured([{grads = true}]) -> {[layer] = {[point] = {value = t, grad = t}}} from the last
 * forward (and the backward after it). grads = false leaves the gradients out (before a
 * backward). */
static int m_captured(lua_State *L) {
    static const char *const allowed[] = {"grads", NULL};
    const char *F = "model:captured";
    lua_settop(L, 2);
    lmodel *lm = check_model(L, 1, F);
    hyb_model *m = lm->m;
    lhyb_check_opts(L, 2, F, allowed);
    uint64_t forwards = 0;
    int grads_req = 0, taped = 0, ready = 0;
    if (!hyb_model_capture_info(m, &forwards, &grads_req, &taped, &ready))
        return lhyb_error(L, "%s: no capture is set (call model:capture{layers =, points =} first)",
                          F);
    if (forwards == 0) return lhyb_error(L, "%s: no forward ran since model:capture", F);
    int want_grads = lhyb_opt_field_bool(L, 2, F, "grads", 1);
    if (!grads_req && lua_istable(L, 2)) {
        lua_getfield(L, 2, "grads");
        if (lua_toboolean(L, -1))
            return lhyb_error(L,
                              "%s: grads = true but the capture was made without gradients "
                              "(model:capture{..., grads = true})",
                              F);
        lua_pop(L, 1);
    }
    if (grads_req && want_grads) {
        if (!taped)
            return lhyb_error(L,
                              "%s: grads = true but the last forward had no tape (it ran with "
                              "{grad = false}); run model:forward with grad on, then "
                              "loss:backward(), or pass {grads = false}",
                              F);
        if (!ready)
            return lhyb_error(L,
                              "%s: grads = true but no backward ran since the last forward; call "
                              "loss:backward() first, or pass {grads = false}",
                              F);
    }
    lua_newtable(L);
    for (int l = 0; l < m->L; l++) {
        int any = 0;
        for (int p = 0; p < HYB_CAP_COUNT; p++) {
            const hyb_tensor *v = hyb_model_captured(m, l, (hyb_capture_point)p, 0);
            if (!v) continue;
            if (!any) {
                lua_newtable(L);
                any = 1;
            }
            lua_createtable(L, 0, 2);
            push_capture_copy(L, v, F);
            lua_setfield(L, -2, "value");
            const hyb_tensor *gr =
                grads_req && want_grads ? hyb_model_captured(m, l, (hyb_capture_point)p, 1) : NULL;
            if (gr) {
                push_capture_copy(L, gr, F);
                lua_setfield(L, -2, "grad");
            }
            lua_setfield(L, -2, hyb_capture_point_name(p));
        }
        if (any) lua_rawseti(L, -2, l);
    }
    return 1;
}

static int model_tostring(lua_State *L) {
    char pat[4096];
    lmodel *lm = (lmodel *)luaL_checkudata(L, 1, LHYB_MODEL_MT);
    if (!lm->m)
        lua_pushstring(L, "hyb.model(closed)");
    else
        lua_pushfstring(L, "hyb.model(%s, %d layers %s, %I params)", lm->m->map->name, lm->m->L,
                        hyb_layermap_pattern(lm->m->map, pat, sizeof pat),
                        (lua_Integer)hyb_model_n_elements(lm->m));
    return 1;
}

static int model_gc(lua_State *L) {
    lmodel *lm = (lmodel *)luaL_checkudata(L, 1, LHYB_MODEL_MT);
    if (lm->g) hyb_graph_free(lm->g);
    if (lm->m) hyb_model_free(lm->m);
    for (int i = 0; i < lm->n_docs; i++)
        hyb_toml_free(lm->docs[i]);
    hyb_free(lm->docs);
    lm->docs = NULL;
    lm->n_docs = 0;
    lm->g = NULL;
    lm->m = NULL;
    lm->graph_gen++;
    lm->param_gen++;
    return 0;
}

/* ---- AdamW ----------------------------------------------------------------------------------- */

typedef struct ladamw {
    hyb_adamw *o;       /* NULL once closed */
    lmodel *lm;         /* kept alive by the user value */
    uint64_t param_gen; /* lm->param_gen when made: a swap invalidates the optimiser */
    float clip;
    float last_norm;
} ladamw;

static ladamw *check_adamw(lua_State *L, int idx, const char *fname) {
    ladamw *a = (ladamw *)lhyb_check_udata(L, idx, LHYB_ADAMW_MT, fname, "a hyb.adamw optimiser");
    if (!a->o) lhyb_error(L, "%s: the optimiser is closed", fname);
    if (!a->lm->m || a->param_gen != a->lm->param_gen)
        lhyb_error(L,
                   "%s: the model's parameters changed (swap or close) after this optimiser was "
                   "made; make a new one",
                   fname);
    return a;
}

/* hyb.optim.adamw(model[, {lr=1e-3, weight_decay=0.01, betas={0.9, 0.999}, eps=1e-8, clip=0}]) */
static int l_adamw(lua_State *L) {
    lua_settop(L, 2);
    static const char *const allowed[] = {"lr", "weight_decay", "betas", "eps", "clip", NULL};
    const char *F = "hyb.optim.adamw";
    lmodel *lm = check_model(L, 1, F);
    lhyb_check_opts(L, 2, F, allowed);
    double lr = lhyb_opt_field_number(L, 2, F, "lr", 1e-3);
    double wd = lhyb_opt_field_number(L, 2, F, "weight_decay", 0.01);
    double eps = lhyb_opt_field_number(L, 2, F, "eps", 1e-8);
    double clip = lhyb_opt_field_number(L, 2, F, "clip", 0.0);
    double b1 = 0.9, b2 = 0.999;
    if (!(lr > 0)) return lhyb_error(L, "%s: option 'lr' must be > 0, got %g", F, lr);
    if (!(wd >= 0)) return lhyb_error(L, "%s: option 'weight_decay' must be >= 0, got %g", F, wd);
    if (!(eps > 0)) return lhyb_error(L, "%s: option 'eps' must be > 0, got %g", F, eps);
    if (!(clip >= 0))
        return lhyb_error(L, "%s: option 'clip' must be >= 0 (0 = off), got %g", F, clip);
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "betas");
        if (!lua_isnil(L, -1)) {
            char buf[96];
            if (!lua_istable(L, -1) || lua_rawlen(L, -1) != 2)
                return lhyb_error(L, "%s: option 'betas' must be a table {beta1, beta2}, got %s", F,
                                  lhyb_describe(L, -1, buf, sizeof buf));
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            b1 = lhyb_check_number(L, -2, F, "betas[1]");
            b2 = lhyb_check_number(L, -1, F, "betas[2]");
            if (!(b1 >= 0 && b1 < 1))
                return lhyb_error(L, "%s: betas[1] must be in [0, 1), got %g", F, b1);
            if (!(b2 >= 0 && b2 < 1))
                return lhyb_error(L, "%s: betas[2] must be in [0, 1), got %g", F, b2);
            lua_pop(L, 2);
        }
        lua_pop(L, 1);
    }
    ladamw *a = (ladamw *)lhyb_new_object(L, sizeof(ladamw), 1, LHYB_ADAMW_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    /* the model's no_decay flags: norms and biases are not decayed */
    if (hyb_adamw_new_model(lm->m, (float)lr, (float)wd, &a->o) != HYB_OK) {
        a->o = NULL;
        return lhyb_raise_hyb(L, F);
    }
    a->o->beta1 = (float)b1;
    a->o->beta2 = (float)b2;
    a->o->eps = (float)eps;
    a->lm = lm;
    a->param_gen = lm->param_gen;
    a->clip = (float)clip;
    return 1;
}

/* opt:step() -> the gradient's global norm before clipping */
static int o_step(lua_State *L) {
    ladamw *a = check_adamw(L, 1, "opt:step");
    float norm = hyb_grad_clip(a->o->params, a->o->n, a->clip);
    if (!isfinite(norm))
        return lhyb_error(L,
                          "opt:step: the gradient norm is %f (NaN/Inf in the gradients); "
                          "step skipped",
                          (double)norm);
    if (hyb_adamw_step(a->o) != HYB_OK) return lhyb_raise_hyb(L, "opt:step");
    a->last_norm = norm;
    lua_pushnumber(L, norm);
    return 1;
}

static int o_set_lr(lua_State *L) {
    ladamw *a = check_adamw(L, 1, "opt:set_lr");
    double lr = lhyb_check_number(L, 2, "opt:set_lr", "lr");
    if (!(lr >= 0)) return lhyb_error(L, "opt:set_lr: lr must be >= 0, got %g", lr);
    a->o->lr = (float)lr;
    return 0;
}

static int o_lr(lua_State *L) {
    lua_pushnumber(L, check_adamw(L, 1, "opt:lr")->o->lr);
    return 1;
}

static int o_steps(lua_State *L) {
    lua_pushinteger(L, check_adamw(L, 1, "opt:steps")->o->step);
    return 1;
}

static int o_zero_grad(lua_State *L) {
    ladamw *a = check_adamw(L, 1, "opt:zero_grad");
    hyb_model_zero_grad(a->lm->m);
    return 0;
}

/* opt:save(path): the optimiser's state (step, moments) for resuming, written atomically. */
static int o_save(lua_State *L) {
    ladamw *a = check_adamw(L, 1, "opt:save");
    const char *path = check_out_path(L, 2, "opt:save", "path", 1);
    if (hyb_adamw_save(a->o, path) != HYB_OK) return lhyb_raise_hyb(L, "opt:save");
    return 0;
}

/* opt:load(path): restore the step and moments saved by opt:save (same parameters); the
 * hyper-parameters (lr, betas ...) stay this optimiser's. */
static int o_load(lua_State *L) {
    ladamw *a = check_adamw(L, 1, "opt:load");
    if (hyb_adamw_load(a->o, lhyb_check_string(L, 2, "opt:load", "path")) != HYB_OK)
        return lhyb_raise_hyb(L, "opt:load");
    return 0;
}

static int adamw_tostring(lua_State *L) {
    ladamw *a = (ladamw *)luaL_checkudata(L, 1, LHYB_ADAMW_MT);
    if (!a->o)
        lua_pushstring(L, "hyb.adamw(closed)");
    else
        lua_pushfstring(L, "hyb.adamw(lr=%f, step %I)", (double)a->o->lr, (lua_Integer)a->o->step);
    return 1;
}

static int adamw_gc(lua_State *L) {
    ladamw *a = (ladamw *)luaL_checkudata(L, 1, LHYB_ADAMW_MT);
    if (a->o) hyb_adamw_free(a->o);
    a->o = NULL;
    return 0;
}

/* ---- registration ---------------------------------------------------------------------------- */

static const luaL_Reg map_methods[] = {{"describe", map_describe},
                                       {"n_layers", map_n_layers},
                                       {"pattern", map_pattern},
                                       {"config", map_config},
                                       {NULL, NULL}};

static const luaL_Reg model_methods[] = {{"forward", m_forward},
                                         {"loss", m_loss},
                                         {"zero_grad", m_zero_grad},
                                         {"params", m_params},
                                         {"param", m_param},
                                         {"grad", m_grad},
                                         {"n_params", m_n_params},
                                         {"save", m_save},
                                         {"to", m_to},
                                         {"device", m_device},
                                         {"load_params", m_load_params},
                                         {"layout", m_layout},
                                         {"pattern", m_pattern},
                                         {"config", m_config},
                                         {"graph_stats", m_graph_stats},
                                         {"swap", m_swap},
                                         {"clone", m_clone},
                                         {"set_identity", m_set_identity},
                                         {"capture", m_capture},
                                         {"captured", m_captured},
                                         {NULL, NULL}};

static const luaL_Reg loss_methods[] = {
    {"value", loss_value}, {"backward", loss_backward}, {NULL, NULL}};

static const luaL_Reg adamw_methods[] = {
    {"step", o_step},           {"set_lr", o_set_lr}, {"lr", o_lr},     {"steps", o_steps},
    {"zero_grad", o_zero_grad}, {"save", o_save},     {"load", o_load}, {NULL, NULL}};

void lhyb_open_model(lua_State *L) {
    lhyb_register_class(L, LHYB_LAYERMAP_MT, map_methods, map_gc, map_gc, map_tostring);
    lhyb_register_class(L, LHYB_MODEL_MT, model_methods, model_gc, model_gc, model_tostring);
    lhyb_register_class(L, LHYB_LOSS_MT, loss_methods, NULL, NULL, loss_tostring);
    lhyb_register_class(L, LHYB_ADAMW_MT, adamw_methods, adamw_gc, adamw_gc, adamw_tostring);
    static const luaL_Reg funcs[] = {{"layermap", l_layermap},
                                     {"parse_layermap", l_parse_layermap},
                                     {"model", l_model},
                                     {"load", l_load},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_adamw);
    lua_setfield(L, -2, "adamw");
    lua_setfield(L, -2, "optim");
}

/* ---- for other runtime modules (lua_train.c) ---------------------------------------------------
 */

hyb_model *lhyb_check_model(lua_State *L, int idx, const char *fname) {
    return check_model(L, idx, fname)->m;
}

void lhyb_push_model(lua_State *L, hyb_model *m, const char *fname) {
    lmodel *lm = new_model_box(L);
    lm->m = m;
    model_attach_graph(L, lm, fname);
}
