/* core/model.c: a language model built from a layer map (see hyb/model.h).
 *
 * Sections: parameters and the store, build/free, swap/identity, forward, inference state
 * (prefill, batched decode), checkpoints (safetensors + layer map TOML). */
#include "hyb/model.h"
#include "hyb/memplan.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hyb/atomic.h"
#include "hyb/safetensors.h"
#include "strbuf.h"

#define INIT_STD 0.02f /* HF llama initializer_range */

// ---- parameters ---------------------------------------------------------------------------------

/* A mix of (seed, stream) into an independent RNG seed (splitmix64 finaliser). */
static uint64_t seed_mix(uint64_t seed, uint64_t stream) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void param_free(hyb_tensor *t) {
    if (!t) return;
    if (t->grad) hyb_tensor_free(t->grad);
    t->grad = NULL;
    hyb_tensor_free(t);
}

/* A trainable f32 tensor. init: 0 = ones, 1 = N(0, INIT_STD). Its grad is allocated on first
 * need (backward, optimiser; owner HYB_OWN_PARAM): an inference-only model holds no gradients. */
static hyb_tensor *param_new(const char *name, int ndim, const int64_t *shape, int normal,
                             uint64_t seed) {
    hyb_tensor *t = hyb_tensor_new(HYB_F32, ndim, shape);
    if (!t) return NULL;
    t->owner = HYB_OWN_PARAM;
    t->requires_grad = 1;
    snprintf(t->name, sizeof t->name, "%s", name);
    float *p = hyb_tensor_f32(t);
    int64_t n = hyb_tensor_numel(t);
    if (normal < 0) {
        /* zeros (hyb_tensor_new zeroes) */
    } else if (normal) {
        hyb_rng r;
        hyb_rng_seed(&r, seed);
        hyb_rng_fill_normal(&r, p, n, 0.0f, INIT_STD);
    } else {
        for (int64_t i = 0; i < n; i++)
            p[i] = 1.0f;
    }
    return t;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* (Re)build the parameter store in the stable order: embedding; per layer input norm, mixer
 * params (declaration order), post norm, gate, up, down; final norm; untied lm_head. Also names
 * the mixer parameters with their full HF names. */
static int rebuild_store(hyb_model *m) {
    int n = 1 + 1 + (m->lm_head != m->embed);
    for (int l = 0; l < m->L; l++)
        n += 5 + (m->layers[l].mixer ? m->layers[l].mixer->n_params : 0);
    hyb_tensor **p = calloc((size_t)n, sizeof *p);
    int *nd = calloc((size_t)n, sizeof *nd);
    if (!p || !nd) {
        free(p);
        free(nd);
        return hyb_error_set(HYB_ERR_NOMEM, "model: out of memory for the parameter store");
    }
    int k = 0;
#define PUSH(t, nodecay)                                                                           \
    do {                                                                                           \
        p[k] = (t);                                                                                \
        nd[k] = (nodecay);                                                                         \
        k++;                                                                                       \
    } while (0)
    PUSH(m->embed, 0);
    for (int l = 0; l < m->L; l++) {
        hyb_layer *ly = &m->layers[l];
        PUSH(ly->norm_in, 1);
        if (ly->mixer) {
            hyb_mixer *mx = ly->mixer;
            const char *pre = mx->desc->hf_prefix ? mx->desc->hf_prefix : "mixer";
            for (int i = 0; i < mx->n_params; i++) {
                hyb_tensor *t = mx->params[i];
                snprintf(t->name, sizeof t->name, "model.layers.%d.%s.%s", l, pre,
                         mx->decls[i].name);
                PUSH(t, mx->decls[i].no_decay || t->ndim < 2 || ends_with(t->name, "bias"));
            }
        }
        PUSH(ly->norm_post, 1);
        PUSH(ly->w_gate, 0);
        PUSH(ly->w_up, 0);
        PUSH(ly->w_down, 0);
    }
    PUSH(m->norm_f, 1);
    if (m->lm_head != m->embed) PUSH(m->lm_head, 0);
#undef PUSH
    HYB_ASSERT(k == n);
    free(m->params);
    free(m->no_decay);
    m->params = p;
    m->no_decay = nd;
    m->n_params = n;
    return HYB_OK;
}

hyb_tensor **hyb_model_params(hyb_model *m, int *n) {
    if (n) *n = m->n_params;
    return m->params;
}

hyb_tensor *hyb_model_param(hyb_model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i]->name, name) == 0) return m->params[i];
    if (m->lm_head == m->embed && strcmp(name, "lm_head.weight") == 0) return m->embed;
    return NULL;
}

int64_t hyb_model_n_elements(const hyb_model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        n += hyb_tensor_numel(m->params[i]);
    return n;
}

void hyb_model_zero_grad(hyb_model *m) {
    const hyb_backend *be = hyb_model_backend(m);
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i]->grad &&
            be->memset0(be, m->params[i]->grad->data, hyb_tensor_nbytes(m->params[i]->grad)))
            hyb_log(HYB_LOG_ERROR, "hyb_model_zero_grad: '%s': %s", m->params[i]->name,
                    hyb_error());
}

// ---- build / free -------------------------------------------------------------------------------

static int is_identity(const char *type) {
    return strcmp(type, HYB_MIXER_IDENTITY) == 0;
}

static hyb_model_dims model_dims(const hyb_model *m, int layer) {
    hyb_model_dims d;
    memset(&d, 0, sizeof d);
    d.d_model = m->D;
    d.n_layers = m->L;
    d.layer = layer;
    d.max_seq = m->map->max_seq;
    d.norm_eps = (float)m->map->norm_eps;
    return d;
}

void hyb_model_free(hyb_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->L; l++) {
            hyb_layer *ly = &m->layers[l];
            param_free(ly->norm_in);
            hyb_mixer_free(ly->mixer);
            param_free(ly->norm_post);
            param_free(ly->w_gate);
            param_free(ly->w_up);
            param_free(ly->w_down);
        }
        free(m->layers);
    }
    if (m->lm_head != m->embed) param_free(m->lm_head);
    param_free(m->embed);
    param_free(m->norm_f);
    free(m->params);
    free(m->no_decay);
    if (m->scratch) hyb_graph_free(m->scratch);
    hyb_layermap_free(m->map);
    free(m);
}

/* Log the resolved layout and one line per mixer spec in use. */
static void log_layout(const hyb_model *m) {
    size_t cap = 16384;
    char *buf = malloc(cap);
    if (!buf) return;
    hyb_layermap_describe(m->map, buf, cap);
    hyb_log(HYB_LOG_INFO, "model '%s': %" PRId64 " parameters (%d tensors)\n%s", m->map->name,
            hyb_model_n_elements(m), m->n_params, buf);
    for (int s = 0; s < m->map->n_mixers; s++) {
        for (int l = 0; l < m->L; l++) {
            if (m->map->layer_mixer[l] != s) continue;
            const hyb_mixer *mx = m->layers[l].mixer;
            if (mx) {
                buf[0] = 0;
                mx->desc->describe(mx->self, buf, cap);
                hyb_log(HYB_LOG_INFO, "  mixer '%s' (%s %s): %s", m->map->mixers[s].name,
                        mx->desc->name, mx->desc->version ? mx->desc->version : "", buf);
            } else {
                hyb_log(HYB_LOG_INFO, "  mixer '%s': identity", m->map->mixers[s].name);
            }
            break;
        }
    }
    free(buf);
}

int hyb_model_build(hyb_layermap *map, uint64_t seed, hyb_model **out) {
    return hyb_model_build_ex(map, seed, 0, out);
}

int hyb_model_build_ex(hyb_layermap *map, uint64_t seed, unsigned flags, hyb_model **out) {
    *out = NULL;
    if (!map) return hyb_error_set(HYB_ERR_ARG, "hyb_model_build: no layer map");
    if (map->d_model <= 0 || map->n_layers <= 0 || map->vocab_size <= 0 || map->d_ff <= 0) {
        int rc = hyb_error_set(HYB_ERR_ARG,
                               "%s: bad model dims d_model %d n_layers %d vocab_size %d d_ff %d",
                               map->path, map->d_model, map->n_layers, map->vocab_size, map->d_ff);
        hyb_layermap_free(map);
        return rc;
    }
    { /* the parameters' bytes against the memory available, before allocating (hyb/memplan.h) */
        uint64_t need;
        int prc = hyb_mem_plan_weights(map, &need);
        if (prc == HYB_OK) prc = hyb_mem_check(map->path, need, "f32 weights");
        if (prc != HYB_OK) {
            prc = hyb_error_wrap(prc, "hyb_model_build");
            hyb_layermap_free(map);
            return prc;
        }
    }
    hyb_model *m = calloc(1, sizeof *m);
    if (!m) {
        hyb_layermap_free(map);
        return hyb_error_set(HYB_ERR_NOMEM, "hyb_model_build: out of memory");
    }
    m->map = map;
    m->D = map->d_model;
    m->V = map->vocab_size;
    m->F = map->d_ff;
    m->L = map->n_layers;
    int rc = HYB_OK;
    const int rnd = (flags & HYB_BUILD_NO_INIT) ? -1 : 1; /* N(0, 0.02) or left zero */
    const int64_t D = m->D, V = m->V, F = m->F;
    int64_t sh_vd[2] = {V, D}, sh_d[1] = {D}, sh_fd[2] = {F, D}, sh_df[2] = {D, F};
    m->layers = calloc((size_t)m->L, sizeof *m->layers);
    if (!m->layers) {
        rc = hyb_error_set(HYB_ERR_NOMEM, "hyb_model_build: out of memory");
        goto fail;
    }
    if (!(m->embed = param_new("model.embed_tokens.weight", 2, sh_vd, rnd, seed_mix(seed, 0))))
        goto fail_err;
    for (int l = 0; l < m->L; l++) {
        hyb_layer *ly = &m->layers[l];
        char name[96];
        const hyb_mixer_spec *spec = &map->mixers[map->layer_mixer[l]];
        uint64_t ls = seed_mix(seed, 16 + 8 * (uint64_t)l);
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if (!(ly->norm_in = param_new(name, 1, sh_d, 0, 0))) goto fail_err;
        if (!is_identity(spec->type)) {
            hyb_model_dims dims = model_dims(m, l);
            rc = hyb_mixer_new_ex(spec->type, &dims, spec->table, seed_mix(ls, 1),
                                  HYB_MIXER_LAZY_GRAD, &ly->mixer);
            if (rc != HYB_OK) {
                ly->mixer = NULL;
                rc = hyb_error_wrap(rc, "%s: layer %d (mixer '%s', type '%s')", spec->where, l,
                                    spec->name, spec->type);
                goto fail;
            }
        }
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if (!(ly->norm_post = param_new(name, 1, sh_d, 0, 0))) goto fail_err;
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate_proj.weight", l);
        if (!(ly->w_gate = param_new(name, 2, sh_fd, rnd, seed_mix(ls, 2)))) goto fail_err;
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", l);
        if (!(ly->w_up = param_new(name, 2, sh_fd, rnd, seed_mix(ls, 3)))) goto fail_err;
        snprintf(name, sizeof name, "model.layers.%d.mlp.down_proj.weight", l);
        if (!(ly->w_down = param_new(name, 2, sh_df, rnd, seed_mix(ls, 4)))) goto fail_err;
    }
    if (!(m->norm_f = param_new("model.norm.weight", 1, sh_d, 0, 0))) goto fail_err;
    if (map->tie_embeddings)
        m->lm_head = m->embed;
    else if (!(m->lm_head = param_new("lm_head.weight", 2, sh_vd, rnd, seed_mix(seed, 1))))
        goto fail_err;
    if ((rc = rebuild_store(m)) != HYB_OK) goto fail;
    log_layout(m);
    *out = m;
    return HYB_OK;
fail_err:
    rc = hyb_error_wrap(HYB_ERR_NOMEM, "hyb_model_build (%s)", map->path);
fail:
    hyb_model_free(m);
    return rc;
}

// ---- swap / identity ----------------------------------------------------------------------------

int hyb_model_swap(hyb_model *m, int layer, const char *type, const hyb_cfg_table *cfg,
                   int init_from_old, uint64_t seed) {
    if (layer < 0 || layer >= m->L)
        return hyb_error_set(HYB_ERR_ARG, "hyb_model_swap: layer %d out of range [0, %d)", layer,
                             m->L);
    if (!type || !*type)
        return hyb_error_set(HYB_ERR_ARG, "hyb_model_swap: layer %d: empty mixer type", layer);
    hyb_layermap *map = m->map;
    hyb_mixer *old = m->layers[layer].mixer;
    const hyb_mixer_spec *old_spec = &map->mixers[map->layer_mixer[layer]];
    hyb_mixer *nm = NULL;
    int rc;
    if (!is_identity(type)) {
        hyb_model_dims dims = model_dims(m, layer);
        rc = hyb_mixer_new_ex(type, &dims, cfg, seed, HYB_MIXER_LAZY_GRAD, &nm);
        if (rc != HYB_OK)
            return hyb_error_wrap(rc, "hyb_model_swap: layer %d to '%s'", layer, type);
        if (init_from_old) {
            if (!old) {
                hyb_mixer_free(nm);
                return hyb_error_set(
                    HYB_ERR_ARG,
                    "hyb_model_swap: layer %d is an identity layer: no mixer to initialise "
                    "'%s' from",
                    layer, type);
            }
            rc = hyb_mixer_init_from(nm, old, old_spec->table, seed);
            if (rc != HYB_OK) {
                hyb_mixer_free(nm);
                return hyb_error_wrap(rc, "hyb_model_swap: layer %d: init '%s' from '%s'", layer,
                                      type, old->type);
            }
        }
        /* built and initialised on the CPU; then onto the model's device */
        if (m->be && (rc = hyb_mixer_move(nm, m->be)) != HYB_OK) {
            hyb_mixer_free(nm);
            return hyb_error_wrap(rc, "hyb_model_swap: layer %d to '%s'", layer, type);
        }
    }
    /* the layer map: reuse a spec with the same type and table, else add one with a fresh name */
    int idx = -1;
    for (int s = 0; s < map->n_mixers; s++)
        if (strcmp(map->mixers[s].type, type) == 0 && map->mixers[s].table == cfg) {
            idx = s;
            break;
        }
    if (idx < 0) {
        char name[64];
        for (int k = 1;; k++) {
            if (k == 1)
                snprintf(name, sizeof name, "%s", type);
            else
                snprintf(name, sizeof name, "%s_%d", type, k);
            int taken = 0;
            for (int s = 0; s < map->n_mixers; s++)
                taken |= strcmp(map->mixers[s].name, name) == 0;
            if (!taken) break;
        }
        idx = hyb_layermap_add_mixer(map, name, type, cfg);
        if (idx < 0) {
            hyb_mixer_free(nm);
            return hyb_error_wrap(idx, "hyb_model_swap: layer %d", layer);
        }
    }
    int prev_idx = map->layer_mixer[layer];
    if ((rc = hyb_layermap_set_layer(map, layer, idx)) != HYB_OK) {
        hyb_mixer_free(nm);
        return hyb_error_wrap(rc, "hyb_model_swap: layer %d", layer);
    }
    m->layers[layer].mixer = nm;
    if ((rc = rebuild_store(m)) != HYB_OK) {
        m->layers[layer].mixer = old;
        hyb_layermap_set_layer(map, layer, prev_idx);
        hyb_mixer_free(nm);
        return rc;
    }
    hyb_mixer_free(old);
    m->generation++;
    hyb_log(HYB_LOG_INFO, "model '%s': layer %d is now '%s' (%s)", map->name, layer,
            map->mixers[idx].name, type);
    return HYB_OK;
}

int hyb_model_check_device(const hyb_model *m, hyb_device dev, int training) {
    for (int l = 0; l < m->L; l++) {
        const hyb_mixer *mx = m->layers[l].mixer;
        if (!mx) continue;
        HYB_TRY(hyb_mixer_kernel_check(mx, dev, HYB_MIXER_FORWARD));
        HYB_TRY(hyb_mixer_kernel_check(mx, dev, HYB_MIXER_DECODE));
        if (training) HYB_TRY(hyb_mixer_kernel_check(mx, dev, HYB_MIXER_BACKWARD));
    }
    return HYB_OK;
}

int hyb_model_to_device(hyb_model *m, const hyb_backend *be) {
    if (!be) return hyb_error_set(HYB_ERR_ARG, "hyb_model_to_device: no backend");
    const hyb_backend *cur = m->be ? m->be : hyb_backend_cpu();
    if (cur == be) return HYB_OK;
    /* every kernel the model will ask for exists there, before anything moves */
    int rc = hyb_model_check_device(m, be->device, 0);
    if (rc != HYB_OK)
        return hyb_error_wrap(rc, "model '%s' cannot run on %s", m->map->name, be->name);
    for (int i = 0; i < m->n_params; i++)
        if ((rc = hyb_tensor_move(m->params[i], be)) != HYB_OK)
            return hyb_error_wrap(rc,
                                  "model '%s': moving parameter '%s' to %s (the model is now "
                                  "split across devices: free it)",
                                  m->map->name, m->params[i]->name, be->name);
    m->be = be->device == HYB_DEV_CPU ? NULL : be;
    m->generation++; /* states made for the old device are refused (check_state) */
    hyb_log(HYB_LOG_INFO, "model '%s' is on %s", m->map->name, be->name);
    return HYB_OK;
}

const hyb_backend *hyb_model_backend(const hyb_model *m) {
    return m->be ? m->be : hyb_backend_cpu();
}

int hyb_model_set_identity(hyb_model *m, int layer) {
    return hyb_model_swap(m, layer, HYB_MIXER_IDENTITY, NULL, 0, 0);
}

// ---- forward -----------------------------------------------------------------------------------

/* The residual trunk: embedding, L blocks, final norm -> [B, T, D]. The one block code of the
 * model: training (states NULL), prefill (B = 1 sequence of T tokens) and decode (B sequences of
 * T = 1 token, hyb_mixer_apply then runs the mixers' decode kernels) all come through here.
 * states: NULL or per layer a pointer to B per-sequence states (states(sctx, l)); pos [B] or
 * NULL. */
typedef void *const *(*state_fn)(void *ctx, int layer);

static hyb_tensor *trunk(hyb_model *m, hyb_graph *g, const int32_t *ids, int B, int T,
                         state_fn states, void *sctx, const int32_t *pos, int max_ctx) {
    const float eps = (float)m->map->norm_eps;
    hyb_tensor *h = hyb_embedding(g, m->embed, ids, B, T);
    if (!h) {
        hyb_error_wrap(HYB_ERR_ARG, "model forward: embedding");
        return NULL;
    }
    for (int l = 0; l < m->L; l++) {
        hyb_layer *ly = &m->layers[l];
        if (ly->mixer) {
            hyb_tensor *u = hyb_rmsnorm(g, h, ly->norm_in, eps);
            hyb_tensor *y =
                u ? hyb_mixer_apply(g, ly->mixer, u, states ? states(sctx, l) : NULL, pos, max_ctx)
                  : NULL;
            h = y ? hyb_add(g, h, y) : NULL;
            if (!h) goto fail_layer;
        }
        hyb_tensor *v = hyb_rmsnorm(g, h, ly->norm_post, eps);
        hyb_tensor *gt = v ? hyb_matmul(g, v, ly->w_gate) : NULL;
        hyb_tensor *up = gt ? hyb_matmul(g, v, ly->w_up) : NULL;
        hyb_tensor *a = up ? hyb_swiglu(g, gt, up) : NULL;
        hyb_tensor *d = a ? hyb_matmul(g, a, ly->w_down) : NULL;
        h = d ? hyb_add(g, h, d) : NULL;
        if (!h) goto fail_layer;
        continue;
    fail_layer:
        hyb_error_wrap(HYB_ERR, "model forward: layer %d (%s)", l,
                       ly->mixer ? ly->mixer->type : HYB_MIXER_IDENTITY);
        return NULL;
    }
    hyb_tensor *hn = hyb_rmsnorm(g, h, m->norm_f, eps);
    if (!hn) hyb_error_wrap(HYB_ERR, "model forward: final norm");
    return hn;
}

hyb_tensor *hyb_model_forward(hyb_model *m, hyb_graph *g, const int32_t *ids, int B, int T) {
    if (B <= 0 || T <= 0 || !ids) {
        hyb_error_set(HYB_ERR_ARG, "hyb_model_forward: bad batch B=%d T=%d", B, T);
        return NULL;
    }
    hyb_tensor *hn = trunk(m, g, ids, B, T, NULL, NULL, NULL, 0);
    if (!hn) return NULL;
    hyb_tensor *logits = hyb_matmul(g, hn, m->lm_head);
    if (!logits) hyb_error_wrap(HYB_ERR, "model forward: lm_head");
    return logits;
}

// ---- inference state ---------------------------------------------------------------------------

int hyb_kvstate_new(hyb_model *m, int n_seq, int max_ctx, hyb_kvstate **out) {
    *out = NULL;
    if (n_seq <= 0 || max_ctx <= 0)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_kvstate_new: n_seq (%d) and max_ctx (%d) must be positive", n_seq,
                             max_ctx);
    { /* the state's bytes against the memory available, before allocating (hyb/memplan.h) */
        uint64_t need;
        char what[600], detail[96];
        snprintf(what, sizeof what, "hyb_kvstate_new: the decode state of %s", m->map->path);
        snprintf(detail, sizeof detail, "%d sequence%s of %d tokens", n_seq, n_seq > 1 ? "s" : "",
                 max_ctx);
        HYB_TRY(hyb_mem_plan_state(m, n_seq, max_ctx, &need));
        HYB_TRY(hyb_mem_check(what, need, detail));
    }
    hyb_kvstate *s = calloc(1, sizeof *s);
    if (!s) return hyb_error_set(HYB_ERR_NOMEM, "hyb_kvstate_new: out of memory");
    const hyb_backend *be = m->be ? m->be : hyb_backend_cpu();
    s->be = be;
    s->n_seq = n_seq;
    s->max_ctx = max_ctx;
    s->L = m->L;
    s->model = m;
    s->generation = m->generation;
    s->pos = calloc((size_t)n_seq, sizeof *s->pos);
    s->state = calloc((size_t)m->L, sizeof *s->state);
    s->layer_mem = calloc((size_t)m->L, sizeof *s->layer_mem);
    if (!s->pos || !s->state || !s->layer_mem) goto oom;
    for (int l = 0; l < m->L; l++) {
        s->state[l] = calloc((size_t)n_seq, sizeof(void *));
        if (!s->state[l]) goto oom;
        const hyb_mixer *mx = m->layers[l].mixer;
        if (!mx) continue;
        size_t per = hyb_mixer_state_bytes(mx, max_ctx);
        if (per == 0) continue;
        size_t stride = (per + 63) & ~(size_t)63;
        if (stride > SIZE_MAX / (size_t)n_seq) goto oom;
        s->layer_mem[l] = be->alloc(be, stride * (size_t)n_seq);
        if (!s->layer_mem[l]) goto oom;
        if (be->memset0(be, s->layer_mem[l], stride * (size_t)n_seq) != HYB_OK) {
            hyb_kvstate_free(s);
            return hyb_error_wrap(HYB_ERR, "hyb_kvstate_new: layer %d", l);
        }
        for (int i = 0; i < n_seq; i++)
            s->state[l][i] = (char *)s->layer_mem[l] + stride * (size_t)i;
        s->bytes += stride * (size_t)n_seq;
    }
    *out = s;
    return HYB_OK;
oom:
    hyb_kvstate_free(s);
    return hyb_error_set(HYB_ERR_NOMEM,
                         "hyb_kvstate_new: out of memory for %d sequences of %d tokens", n_seq,
                         max_ctx);
}

void hyb_kvstate_free(hyb_kvstate *s) {
    if (!s) return;
    for (int l = 0; l < s->L; l++) {
        if (s->state) free(s->state[l]);
        if (s->layer_mem && s->layer_mem[l]) s->be->free(s->be, s->layer_mem[l]);
    }
    free(s->state);
    free(s->layer_mem);
    free(s->pos);
    free(s);
}

void hyb_kvstate_reset_seq(hyb_kvstate *s, int seq) {
    HYB_ASSERT(s && seq >= 0 && seq < s->n_seq);
    s->pos[seq] = 0;
    const hyb_model *m = s->model;
    for (int l = 0; l < s->L; l++) {
        if (!s->state[l][seq]) continue;
        const hyb_mixer *mx = (m && m->generation == s->generation) ? m->layers[l].mixer : NULL;
        if (mx && s->be->memset0(s->be, s->state[l][seq], hyb_mixer_state_bytes(mx, s->max_ctx)))
            hyb_log(HYB_LOG_ERROR, "hyb_kvstate_reset_seq: layer %d: %s", l, hyb_error());
    }
}

static int check_state(const hyb_model *m, const hyb_kvstate *s, const char *who) {
    if (s->model != m || s->generation != m->generation || s->L != m->L)
        return hyb_error_set(
            HYB_ERR_ARG,
            "%s: the kvstate was made for another model or before a layer swap; make a new one",
            who);
    return HYB_OK;
}

static hyb_graph *scratch_graph(hyb_model *m) {
    if (!m->scratch && !(m->scratch = hyb_graph_new())) return NULL;
    hyb_graph_reset(m->scratch);
    hyb_graph_set_grad(m->scratch, 0);
    return m->scratch;
}

typedef struct {
    hyb_kvstate *s;
    int seq;
} prefill_ctx;

static void *const *prefill_states(void *ctx, int layer) {
    prefill_ctx *c = ctx;
    return &c->s->state[layer][c->seq];
}

int hyb_model_prefill(hyb_model *m, hyb_kvstate *s, int seq, const int32_t *ids, int T,
                      float *out_logits) {
    HYB_TRY(check_state(m, s, "hyb_model_prefill"));
    if (seq < 0 || seq >= s->n_seq)
        return hyb_error_set(HYB_ERR_ARG, "hyb_model_prefill: sequence %d out of range [0, %d)",
                             seq, s->n_seq);
    if (T <= 0 || !ids)
        return hyb_error_set(HYB_ERR_ARG, "hyb_model_prefill: no tokens (T = %d)", T);
    if ((int64_t)s->pos[seq] + T > s->max_ctx)
        return hyb_error_set(
            HYB_ERR_ARG,
            "hyb_model_prefill: sequence %d holds %d tokens, %d more exceed max_ctx %d", seq,
            s->pos[seq], T, s->max_ctx);
    hyb_graph *g = scratch_graph(m);
    if (!g) return hyb_error_wrap(HYB_ERR_NOMEM, "hyb_model_prefill");
    prefill_ctx c = {s, seq};
    int rc = HYB_OK;
    hyb_tensor *hn = trunk(m, g, ids, 1, T, prefill_states, &c, &s->pos[seq], s->max_ctx);
    if (!hn) {
        rc = hyb_error_wrap(HYB_ERR, "hyb_model_prefill: sequence %d", seq);
        goto done;
    }
    if (out_logits) {
        int64_t sh[2] = {1, m->D};
        hyb_tensor *last =
            hyb_tensor_wrap(HYB_F32, 2, sh, hyb_tensor_f32(hn) + (size_t)(T - 1) * (size_t)m->D);
        if (last) last->device = hn->device;
        hyb_tensor *lg = last ? hyb_matmul(g, last, m->lm_head) : NULL;
        const hyb_backend *be = lg ? hyb_backend_get(lg->device) : NULL;
        if (!lg)
            rc = hyb_error_wrap(HYB_ERR, "hyb_model_prefill: lm_head");
        else if (!be || be->download(be, out_logits, lg->data, (size_t)m->V * sizeof(float)))
            rc = hyb_error_wrap(HYB_ERR, "hyb_model_prefill: logits");
        hyb_tensor_free(last);
    }
    if (rc == HYB_OK) s->pos[seq] += T;
done:
    hyb_graph_reset(g);
    return rc;
}

typedef struct {
    hyb_kvstate *s;
    const int32_t *seqs;
    int n;
    void **st; /* [n], refilled per layer (the layer's mixer reads it before the next call) */
} decode_ctx;

static void *const *decode_states(void *ctx, int layer) {
    decode_ctx *c = ctx;
    for (int i = 0; i < c->n; i++)
        c->st[i] = c->s->state[layer][c->seqs[i]];
    return c->st;
}

int hyb_model_decode(hyb_model *m, hyb_kvstate *s, int n, const int32_t *seqs, const int32_t *ids,
                     float *logits) {
    HYB_TRY(check_state(m, s, "hyb_model_decode"));
    if (n <= 0 || !seqs || !ids)
        return hyb_error_set(HYB_ERR_ARG, "hyb_model_decode: no sequences (n = %d)", n);
    for (int i = 0; i < n; i++) {
        if (seqs[i] < 0 || seqs[i] >= s->n_seq)
            return hyb_error_set(HYB_ERR_ARG,
                                 "hyb_model_decode: seqs[%d] = %d out of range [0, %d)", i, seqs[i],
                                 s->n_seq);
        if (s->pos[seqs[i]] >= s->max_ctx)
            return hyb_error_set(HYB_ERR_ARG, "hyb_model_decode: sequence %d is full (max_ctx %d)",
                                 seqs[i], s->max_ctx);
        for (int j = 0; j < i; j++)
            if (seqs[j] == seqs[i])
                return hyb_error_set(HYB_ERR_ARG,
                                     "hyb_model_decode: sequence %d appears twice in one step",
                                     seqs[i]);
    }
    hyb_graph *g = scratch_graph(m);
    void **st = malloc((size_t)n * sizeof *st);
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    if (!g || !st || !pos) {
        free(st);
        free(pos);
        return hyb_error_set(HYB_ERR_NOMEM, "hyb_model_decode: out of memory");
    }
    for (int i = 0; i < n; i++)
        pos[i] = s->pos[seqs[i]];
    /* the same blocks as training and prefill (trunk), on [n, 1] tokens with their states */
    decode_ctx c = {s, seqs, n, st};
    int rc = HYB_OK;
    hyb_tensor *hn = trunk(m, g, ids, n, 1, decode_states, &c, pos, s->max_ctx);
    hyb_tensor *lg = hn ? hyb_matmul(g, hn, m->lm_head) : NULL;
    if (!lg)
        rc = hyb_error_wrap(HYB_ERR, "hyb_model_decode: %d sequence%s", n, n == 1 ? "" : "s");
    else {
        if (logits) {
            const hyb_backend *be = hyb_backend_get(lg->device);
            rc = be ? be->download(be, logits, lg->data, (size_t)n * (size_t)m->V * sizeof(float))
                    : HYB_ERR_UNSUPPORTED;
        }
        if (rc == HYB_OK)
            for (int i = 0; i < n; i++)
                s->pos[seqs[i]]++;
    }
    hyb_graph_reset(g);
    free(st);
    free(pos);
    return rc;
}

// ---- layer map as TOML
// ---------------------------------------------------------------------------

/* The text is built in a hyb_strbuf (core/strbuf.h). */

/* TOML basic string. */
static void sb_tstr(hyb_strbuf *b, const char *s) {
    hyb_strbuf_putn(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"')
            hyb_strbuf_puts(b, "\\\"");
        else if (*p == '\\')
            hyb_strbuf_puts(b, "\\\\");
        else if (*p == '\n')
            hyb_strbuf_puts(b, "\\n");
        else if (*p == '\t')
            hyb_strbuf_puts(b, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            hyb_strbuf_printf(b, "\\u%04x", *p);
        else
            hyb_strbuf_putn(b, (const char *)p, 1);
    }
    hyb_strbuf_putn(b, "\"", 1);
}

/* A key: bare when it can be, else quoted. */
static void sb_tkey(hyb_strbuf *b, const char *k) {
    int bare = *k != 0;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            bare = 0;
    if (bare)
        hyb_strbuf_puts(b, k);
    else
        sb_tstr(b, k);
}

static void sb_tfloat(hyb_strbuf *b, double v) {
    if (isnan(v)) {
        hyb_strbuf_puts(b, "nan");
        return;
    }
    if (isinf(v)) {
        hyb_strbuf_puts(b, v > 0 ? "inf" : "-inf");
        return;
    }
    char tmp[64];
    if (v == floor(v) && fabs(v) < 1e15) { /* 10000.0, not 1e+04 */
        snprintf(tmp, sizeof tmp, "%.1f", v);
        hyb_strbuf_puts(b, tmp);
        return;
    }
    snprintf(tmp, sizeof tmp, "%.17g", v);
    /* shortest form that reads back to the same double */
    for (int prec = 1; prec <= 17; prec++) {
        char t2[64];
        snprintf(t2, sizeof t2, "%.*g", prec, v);
        if (strtod(t2, NULL) == v) {
            memcpy(tmp, t2, sizeof t2);
            break;
        }
    }
    hyb_strbuf_puts(b, tmp);
    if (!strpbrk(tmp, ".eE")) hyb_strbuf_puts(b, ".0"); /* keep it a float in TOML */
}

/* Emit `prefix.key = value` lines for every key of t except `skip` (NULL-terminated). */
static int emit_table(hyb_strbuf *b, const hyb_cfg_table *t, const char *prefix,
                      const char *const *skip) {
    const char **keys = NULL;
    int nk = hyb_cfg_keys(t, &keys);
    for (int i = 0; i < nk; i++) {
        const char *k = keys[i];
        int skipped = 0;
        for (const char *const *s = skip; s && *s; s++)
            skipped |= strcmp(*s, k) == 0;
        if (skipped) continue;
        const hyb_cfg_table *sub = hyb_cfg_subtable(t, k);
        if (sub) {
            hyb_strbuf pre = {0};
            if (prefix) {
                hyb_strbuf_puts(&pre, prefix);
                hyb_strbuf_puts(&pre, ".");
            }
            sb_tkey(&pre, k);
            if (pre.oom) return hyb_error_set(HYB_ERR_NOMEM, "layer map TOML: out of memory");
            int rc = emit_table(b, sub, pre.p, NULL);
            free(pre.p);
            HYB_TRY(rc);
            continue;
        }
        if (prefix) {
            hyb_strbuf_puts(b, prefix);
            hyb_strbuf_puts(b, ".");
        }
        sb_tkey(b, k);
        hyb_strbuf_puts(b, " = ");
        int64_t iv;
        int bv;
        double fv;
        const char *sv;
        char where[200];
        if (hyb_cfg_int(t, k, 0, &iv) == HYB_OK)
            hyb_strbuf_printf(b, "%" PRId64, iv);
        else if (hyb_cfg_bool(t, k, 0, &bv) == HYB_OK)
            hyb_strbuf_puts(b, bv ? "true" : "false");
        else if (hyb_cfg_float(t, k, 0, &fv) == HYB_OK)
            sb_tfloat(b, fv);
        else if (hyb_cfg_string(t, k, NULL, &sv) == HYB_OK && sv)
            sb_tstr(b, sv);
        else {
            hyb_error_clear();
            int n = hyb_cfg_array_len(t, k);
            if (n < 0)
                return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                     "%s: key '%s': value type cannot be written back to TOML",
                                     hyb_cfg_where(t, k, where, sizeof where), k);
            hyb_strbuf_puts(b, "[");
            for (int j = 0; j < n; j++) {
                if (j) hyb_strbuf_puts(b, ", ");
                if (hyb_cfg_array_int(t, k, j, &iv) == HYB_OK)
                    hyb_strbuf_printf(b, "%" PRId64, iv);
                else if (hyb_cfg_array_string(t, k, j, &sv) == HYB_OK)
                    sb_tstr(b, sv);
                else
                    return hyb_error_set(
                        HYB_ERR_UNSUPPORTED,
                        "%s: key '%s': array element %d cannot be written back to TOML",
                        hyb_cfg_where(t, k, where, sizeof where), k, j);
            }
            hyb_strbuf_puts(b, "]");
        }
        hyb_error_clear();
        hyb_strbuf_puts(b, "\n");
    }
    return HYB_OK;
}

char *hyb_model_layermap_toml(const hyb_model *m) {
    const hyb_layermap *map = m->map;
    hyb_strbuf b = {0};
    hyb_strbuf_puts(&b, "# layer map written by hyb_model_save\n\n[model]\n");
    hyb_strbuf_puts(&b, "name = ");
    sb_tstr(&b, map->name);
    hyb_strbuf_printf(&b, "\nd_model = %d\nn_layers = %d\nvocab_size = %d\nd_ff = %d\nnorm_eps = ",
                      map->d_model, map->n_layers, map->vocab_size, map->d_ff);
    sb_tfloat(&b, map->norm_eps);
    hyb_strbuf_printf(&b, "\ntie_embeddings = %s\nmax_seq = %d\n",
                      map->tie_embeddings ? "true" : "false", map->max_seq);
    /* other root tables of the source document, verbatim (none today; future-proof) */
    if (map->doc) {
        const hyb_cfg_table *root = hyb_toml_root(map->doc);
        const char **keys = NULL;
        int nk = root ? hyb_cfg_keys(root, &keys) : 0;
        for (int i = 0; i < nk; i++) {
            if (!strcmp(keys[i], "model") || !strcmp(keys[i], "mixers") ||
                !strcmp(keys[i], "layout"))
                continue;
            const hyb_cfg_table *sub = hyb_cfg_subtable(root, keys[i]);
            if (!sub) continue;
            hyb_strbuf_puts(&b, "\n[");
            sb_tkey(&b, keys[i]);
            hyb_strbuf_puts(&b, "]\n");
            if (emit_table(&b, sub, NULL, NULL) != HYB_OK) goto fail;
        }
    }
    static const char *const skip[] = {"type", "symbol", NULL};
    for (int s = 0; s < map->n_mixers; s++) {
        const hyb_mixer_spec *sp = &map->mixers[s];
        hyb_strbuf_puts(&b, "\n[mixers.");
        sb_tkey(&b, sp->name);
        hyb_strbuf_puts(&b, "]\ntype = ");
        sb_tstr(&b, sp->type);
        hyb_strbuf_puts(&b, "\n");
        if (sp->symbol) {
            char sym[2] = {sp->symbol, 0};
            hyb_strbuf_puts(&b, "symbol = ");
            sb_tstr(&b, sym);
            hyb_strbuf_puts(&b, "\n");
        }
        if (sp->table && emit_table(&b, sp->table, NULL, skip) != HYB_OK) goto fail;
    }
    hyb_strbuf_puts(&b, "\n[layout]\nlayers = [");
    for (int l = 0; l < map->n_layers; l++) {
        hyb_strbuf_puts(&b, l ? (l % 8 ? ", " : ",\n  ") : "\n  ");
        sb_tstr(&b, map->mixers[map->layer_mixer[l]].name);
    }
    hyb_strbuf_puts(&b, ",\n]\n");
    if (b.oom) {
        hyb_error_set(HYB_ERR_NOMEM, "layer map TOML: out of memory");
        goto fail;
    }
    return b.p;
fail:
    free(b.p);
    return NULL;
}

int hyb_model_clone(const hyb_model *src, hyb_model **out) {
    *out = NULL;
    char *toml = hyb_model_layermap_toml(src);
    if (!toml) return hyb_error_wrap(HYB_ERR, "hyb_model_clone");
    hyb_layermap *map = NULL;
    int rc = hyb_layermap_parse(toml, src->map->path, &map);
    free(toml);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "hyb_model_clone: re-reading the layer map");
    hyb_model *m = NULL;
    if ((rc = hyb_model_build_ex(map, 0, HYB_BUILD_NO_INIT, &m)) != HYB_OK)
        return hyb_error_wrap(rc, "hyb_model_clone");
    if (m->n_params != src->n_params) {
        hyb_model_free(m);
        return hyb_error_set(HYB_ERR,
                             "hyb_model_clone: %d parameters in the copy, %d in the source",
                             m->n_params, src->n_params);
    }
    for (int i = 0; i < m->n_params; i++) {
        const hyb_tensor *a = src->params[i];
        hyb_tensor *b = m->params[i];
        if (strcmp(a->name, b->name) != 0 || hyb_tensor_numel(a) != hyb_tensor_numel(b)) {
            hyb_model_free(m);
            return hyb_error_set(
                HYB_ERR, "hyb_model_clone: parameter %d is '%s' in the source, '%s' in the copy", i,
                a->name, b->name);
        }
        if (a->device == HYB_DEV_CPU)
            memcpy(b->data, a->data, hyb_tensor_nbytes(a));
        else if ((rc = hyb_tensor_download(a, b->data)) != HYB_OK) { /* the copy is on the CPU */
            hyb_model_free(m);
            return hyb_error_wrap(rc, "hyb_model_clone");
        }
        b->requires_grad = a->requires_grad;
        m->no_decay[i] = src->no_decay[i];
    }
    /* the copy lives where the source does */
    if (src->be && (rc = hyb_model_to_device(m, src->be)) != HYB_OK) {
        hyb_model_free(m);
        return hyb_error_wrap(rc, "hyb_model_clone");
    }
    *out = m;
    return HYB_OK;
}

// ---- checkpoints
// ---------------------------------------------------------------------------------

static char *join_path(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, file);
    else
        hyb_error_set(HYB_ERR_NOMEM, "out of memory");
    return p;
}

/* The shortest %g form that reads back as the same double (finite v). */
static void sb_shortest(hyb_strbuf *b, double v) {
    char tmp[64];
    if (v == floor(v) && fabs(v) < 1e15) { /* 10000.0, not 1e+04 */
        snprintf(tmp, sizeof tmp, "%.1f", v);
        hyb_strbuf_puts(b, tmp);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    hyb_strbuf_puts(b, tmp);
}

/* HF config.json for a model every layer of which is the same `mha` mixer (a llama checkpoint
 * that transformers and hyb_model_load_hf_dir read back). Returns NULL (no error) when the
 * layout is not a plain llama: hybrids, identity layers, per-layer attention shapes. */
static char *llama_config_json(const hyb_model *m) {
    const hyb_mixer_spec *spec = NULL;
    for (int l = 0; l < m->L; l++) {
        const hyb_mixer *mx = m->layers[l].mixer;
        const hyb_mixer_spec *sp = &m->map->mixers[m->map->layer_mixer[l]];
        if (!mx || strcmp(mx->type, "mha") != 0) return NULL;
        if (spec && sp != spec) return NULL;
        spec = sp;
    }
    /* the mha plugin's keys and defaults (plugins/mha/mha.c) */
    const hyb_cfg_table *t = spec->table;
    int64_t nh = 0, nkv = 0, hd = 0;
    double theta = 10000.0;
    int bias = 0;
    int ok = hyb_cfg_int(t, "n_heads", m->D % 64 == 0 ? m->D / 64 : 0, &nh) == HYB_OK && nh > 0 &&
             hyb_cfg_int(t, "n_kv_heads", nh, &nkv) == HYB_OK && nkv > 0 &&
             hyb_cfg_int(t, "head_dim", m->D % nh == 0 ? m->D / nh : 0, &hd) == HYB_OK && hd > 0 &&
             hyb_cfg_float(t, "rope_theta", 10000.0, &theta) == HYB_OK &&
             hyb_cfg_bool(t, "bias", 0, &bias) == HYB_OK;
    hyb_error_clear();
    if (!ok) return NULL;
    /* cross-check with the declared shapes: q_proj [H*hd, D], k_proj [KV*hd, D] */
    const hyb_mixer *mx = m->layers[0].mixer;
    int seen = 0;
    for (int i = 0; i < mx->n_params; i++) {
        const hyb_param_decl *d = &mx->decls[i];
        if (!strcmp(d->name, "q_proj.weight"))
            seen += d->shape[0] == nh * hd && d->shape[1] == m->D;
        if (!strcmp(d->name, "k_proj.weight"))
            seen += d->shape[0] == nkv * hd && d->shape[1] == m->D;
    }
    if (seen != 2) return NULL;
    hyb_strbuf b = {0};
    hyb_strbuf_puts(
        &b, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n");
    hyb_strbuf_printf(
        &b, "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n",
        m->D, m->F, m->L);
    hyb_strbuf_printf(&b,
                      "  \"num_attention_heads\": %" PRId64 ",\n  \"num_key_value_heads\": %" PRId64
                      ",\n  \"head_dim\": %" PRId64 ",\n",
                      nh, nkv, hd);
    hyb_strbuf_printf(&b, "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n", m->V,
                      m->map->max_seq);
    hyb_strbuf_puts(&b, "  \"rms_norm_eps\": ");
    sb_shortest(&b, m->map->norm_eps);
    hyb_strbuf_puts(&b, ",\n  \"rope_theta\": ");
    sb_shortest(&b, theta);
    hyb_strbuf_puts(&b, ",\n");
    hyb_strbuf_printf(&b, "  \"tie_word_embeddings\": %s,\n  \"attention_bias\": %s,\n",
                      m->lm_head == m->embed ? "true" : "false", bias ? "true" : "false");
    hyb_strbuf_puts(
        &b, "  \"mlp_bias\": false,\n  \"hidden_act\": \"silu\",\n  \"initializer_range\": 0.02,\n"
            "  \"dtype\": \"float32\",\n  \"torch_dtype\": \"float32\"\n}\n");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- HF apriel_h config.json (hybrids of mha / mamba1 / identity layers) --------------------
 * Facts confirmed from the public Fast-LLM HF code (fast_llm_external_models/apriel_hybrid_ssm:
 * configuration_apriel_hybrid_ssm.py, modeling_apriel_hybrid_ssm.py), read, not copied:
 *   - the config is a MistralConfig subclass with `hybrid_block_layout` (one of "t", "m2", "m2d",
 *     "i" per layer) and one `ssm_cfg` dict shared by every SSM layer; Fast-LLM names the type
 *     "apriel_hybrid_ssm", the released Apriel-H1 checkpoints "apriel_h" (SPEC.md section 1);
 *   - "t" is a MistralDecoderLayer (no q/k/v bias); "m2" is a decoder layer whose `mixer` is the
 *     Mamba module with in_proj [2*d_xb + 2*d_inner, D] split (z, x, B, C), dt_in_proj [dt_rank,
 * D], dt_proj [d_inner, dt_rank] with bias (added twice: once by the Linear, again as the scan's
 *     delta_bias), conv1d [d_inner, 1, d_conv] over x repeated to d_inner (repeat_kv_before_conv),
 *     A_log [d_inner, d_state], D [d_inner], out_proj [D, d_inner], no other biases; the
 *     conv activation is always silu; dt_rank "auto" = ceil(D / 16);
 *   - "i" (AprielHybridIdentity) returns the hidden states unchanged: the WHOLE block, MLP
 *     included, is skipped. A hyb identity layer keeps its MLP, so it is written as "i" only
 *     when its MLP is exactly zero (then both compute h unchanged); hyb_model_load_hf_dir builds
 *     "i" layers that way. */
typedef struct attn_hp {
    int64_t nh, nkv, hd;
    double theta;
    int bias;
} attn_hp;

/* The mha hyper-parameters of layer l (the plugin's keys and defaults, plugins/mha/mha.c),
 * cross-checked with the declared q/k shapes. 0 when they cannot be determined. */
static int mha_hparams(const hyb_model *m, int l, attn_hp *a) {
    const hyb_mixer *mx = m->layers[l].mixer;
    const hyb_cfg_table *t = m->map->mixers[m->map->layer_mixer[l]].table;
    memset(a, 0, sizeof *a);
    a->theta = 10000.0;
    int ok = hyb_cfg_int(t, "n_heads", m->D % 64 == 0 ? m->D / 64 : 0, &a->nh) == HYB_OK &&
             a->nh > 0 && hyb_cfg_int(t, "n_kv_heads", a->nh, &a->nkv) == HYB_OK && a->nkv > 0 &&
             hyb_cfg_int(t, "head_dim", m->D % a->nh == 0 ? m->D / a->nh : 0, &a->hd) == HYB_OK &&
             a->hd > 0 && hyb_cfg_float(t, "rope_theta", 10000.0, &a->theta) == HYB_OK &&
             hyb_cfg_bool(t, "bias", 0, &a->bias) == HYB_OK;
    hyb_error_clear();
    if (!ok) return 0;
    int seen = 0;
    for (int i = 0; i < mx->n_params; i++) {
        const hyb_param_decl *d = &mx->decls[i];
        if (!strcmp(d->name, "q_proj.weight"))
            seen += d->shape[0] == a->nh * a->hd && d->shape[1] == m->D;
        if (!strcmp(d->name, "k_proj.weight"))
            seen += d->shape[0] == a->nkv * a->hd && d->shape[1] == m->D;
    }
    return seen == 2;
}

typedef struct ssm_hp {
    int64_t di, dx, n, r, k;
    int dbl;
} ssm_hp;

/* The mamba1 shapes of layer l, from its declared parameters (plugins/mamba1/mamba1.c):
 * A_log [Di, N], dt_in_proj [R, D], conv1d [Di, 1, K], in_proj [2 Di + 2 Dx, D]. */
static int mamba1_hparams(const hyb_model *m, int l, ssm_hp *s) {
    const hyb_mixer *mx = m->layers[l].mixer;
    const hyb_cfg_table *t = m->map->mixers[m->map->layer_mixer[l]].table;
    memset(s, 0, sizeof *s);
    int64_t p = 0;
    for (int i = 0; i < mx->n_params; i++) {
        const hyb_param_decl *d = &mx->decls[i];
        if (!strcmp(d->name, "A_log")) s->di = d->shape[0], s->n = d->shape[1];
        if (!strcmp(d->name, "dt_in_proj.weight")) s->r = d->shape[0];
        if (!strcmp(d->name, "conv1d.weight")) s->k = d->shape[2];
        if (!strcmp(d->name, "in_proj.weight")) p = d->shape[0];
    }
    s->dx = (p - 2 * s->di) / 2;
    s->dbl = 1;
    int ok = hyb_cfg_bool(t, "double_dt_bias", 1, &s->dbl) == HYB_OK;
    hyb_error_clear();
    return ok && s->di > 0 && s->n > 0 && s->r > 0 && s->k > 0 && s->dx > 0 &&
           2 * s->di + 2 * s->dx == p;
}

static int all_zero(const hyb_tensor *t) {
    const float *x = hyb_tensor_f32((hyb_tensor *)t);
    for (int64_t i = 0, n = hyb_tensor_numel(t); i < n; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

/* Returns the apriel_h config.json text, or NULL with *why set (a static reason, no error) when
 * the model is not such a hybrid or cannot be expressed in that format. */
static char *apriel_config_json(const hyb_model *m, const char **why) {
    attn_hp a = {0}, a1;
    ssm_hp s = {0}, s1;
    int n_attn = 0, n_ssm = 0;
    *why = NULL;
    for (int l = 0; l < m->L; l++) {
        const hyb_mixer *mx = m->layers[l].mixer;
        if (!mx) {
            const hyb_layer *ly = &m->layers[l];
            if (!all_zero(ly->w_gate) || !all_zero(ly->w_up) || !all_zero(ly->w_down)) {
                *why = "an identity layer keeps a non-zero MLP, but apriel_h \"i\" skips the "
                       "whole block";
                return NULL;
            }
        } else if (!strcmp(mx->type, "mha")) {
            if (!mha_hparams(m, l, &a1)) {
                *why = "an mha layer's shape cannot be determined";
                return NULL;
            }
            if (a1.bias) {
                *why = "mha layers with q/k/v biases (apriel_h attention has none)";
                return NULL;
            }
            if (n_attn++ &&
                (a.nh != a1.nh || a.nkv != a1.nkv || a.hd != a1.hd || a.theta != a1.theta)) {
                *why = "mha layers with different shapes (apriel_h has one attention config)";
                return NULL;
            }
            a = a1;
        } else if (!strcmp(mx->type, "mamba1")) {
            if (!mamba1_hparams(m, l, &s1)) {
                *why = "a mamba1 layer's shape cannot be determined";
                return NULL;
            }
            if (!s1.dbl) {
                *why = "mamba1 with double_dt_bias = false (apriel_h \"m2\" adds the bias twice)";
                return NULL;
            }
            if (n_ssm++ &&
                (s.di != s1.di || s.dx != s1.dx || s.n != s1.n || s.r != s1.r || s.k != s1.k)) {
                *why = "mamba1 layers with different configs (apriel_h has one ssm_cfg)";
                return NULL;
            }
            s = s1;
        } else {
            *why = "a layer's mixer has no apriel_h block type (only mha, mamba1, identity)";
            return NULL;
        }
    }
    if (!n_ssm) return NULL; /* not a hybrid: the llama path (or nothing) */
    if (!n_attn) {
        /* MistralConfig still needs the attention keys; use the llama defaults */
        a.nh = m->D % 64 == 0 ? m->D / 64 : 1;
        a.nkv = a.nh;
        a.hd = m->D / a.nh;
        a.theta = 10000.0;
    }
    hyb_strbuf b = {0};
    hyb_strbuf_puts(
        &b, "{\n  \"architectures\": [\"AprielHForCausalLM\"],\n  \"model_type\": \"apriel_h\",\n");
    hyb_strbuf_printf(
        &b, "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n",
        m->D, m->F, m->L);
    hyb_strbuf_printf(&b,
                      "  \"num_attention_heads\": %" PRId64 ",\n  \"num_key_value_heads\": %" PRId64
                      ",\n  \"head_dim\": %" PRId64 ",\n",
                      a.nh, a.nkv, a.hd);
    hyb_strbuf_printf(&b, "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n", m->V,
                      m->map->max_seq);
    hyb_strbuf_puts(&b, "  \"rms_norm_eps\": ");
    sb_shortest(&b, m->map->norm_eps);
    hyb_strbuf_puts(&b, ",\n  \"rope_theta\": ");
    sb_shortest(&b, a.theta);
    hyb_strbuf_printf(&b, ",\n  \"tie_word_embeddings\": %s,\n",
                      m->lm_head == m->embed ? "true" : "false");
    hyb_strbuf_puts(&b, "  \"sliding_window\": null,\n  \"hidden_act\": \"silu\",\n"
                        "  \"initializer_range\": 0.02,\n  \"torch_dtype\": \"float32\",\n"
                        "  \"hybrid_block_layout\": [");
    for (int l = 0; l < m->L; l++) {
        const hyb_mixer *mx = m->layers[l].mixer;
        hyb_strbuf_printf(&b, "%s\"%s\"", l ? ", " : "",
                          !mx                        ? "i"
                          : !strcmp(mx->type, "mha") ? "t"
                                                     : "m2");
    }
    hyb_strbuf_printf(&b,
                      "],\n  \"ssm_cfg\": {\n    \"d_state\": %" PRId64 ",\n    \"d_xb\": %" PRId64
                      ",\n    \"d_inner\": %" PRId64 ",\n    \"dt_rank\": %" PRId64
                      ",\n    \"d_conv\": %" PRId64 ",\n",
                      s.n, s.dx, s.di, s.r, s.k);
    hyb_strbuf_puts(&b,
                    "    \"expand\": 1,\n    \"conv_bias\": true,\n    \"bias\": false,\n"
                    "    \"dt_proj_bias\": true,\n    \"repeat_kv_before_conv\": true,\n"
                    "    \"activation\": \"silu\",\n    \"dt_min\": 0.001,\n    \"dt_max\": 0.1,\n"
                    "    \"dt_init\": \"random\",\n    \"dt_scale\": 1.0,\n"
                    "    \"dt_init_floor\": 0.0001\n  }\n}\n");
    if (b.oom) {
        free(b.p);
        *why = "out of memory";
        return NULL;
    }
    return b.p;
}

int hyb_model_save(hyb_model *m, const char *dir) {
    HYB_TRY(hyb_mkdir_p(dir));
    int rc = HYB_OK;
    char *toml = hyb_model_layermap_toml(m);
    char *p_map = join_path(dir, "layermap.toml");
    char *p_st = join_path(dir, "model.safetensors");
    hyb_st_writer *w = hyb_st_writer_new();
    if (!toml || !p_map || !p_st || !w) {
        rc = hyb_error_wrap(HYB_ERR_NOMEM, "hyb_model_save %s", dir);
        goto done;
    }
    for (int i = 0; i < m->n_params && rc == HYB_OK; i++)
        rc = hyb_st_writer_add_tensor(w, m->params[i]->name, m->params[i]);
    if (rc == HYB_OK) rc = hyb_st_writer_meta(w, "format", "pt");
    if (rc == HYB_OK) rc = hyb_st_writer_meta(w, "hyb_version", HYB_VERSION);
    if (rc == HYB_OK) rc = hyb_st_writer_meta(w, "hyb_layermap", toml);
    /* weights first: a layer map never describes weights that are not on disk yet */
    if (rc == HYB_OK) rc = hyb_st_writer_save(w, p_st);
    if (rc == HYB_OK) rc = hyb_atomic_write_buf(p_map, toml, strlen(toml));
    if (rc == HYB_OK) {
        char *cfg = llama_config_json(m);
        const char *why = NULL;
        if (!cfg) cfg = apriel_config_json(m, &why);
        char *p_cfg = join_path(dir, "config.json");
        if (cfg && p_cfg)
            rc = hyb_atomic_write_buf(p_cfg, cfg, strlen(cfg));
        else if (!cfg && p_cfg) { /* and none left over from an earlier save of another layout */
            if (why)
                hyb_log(HYB_LOG_INFO,
                        "%s: no config.json: the hybrid cannot be written as HF apriel_h (%s); "
                        "layermap.toml describes it",
                        dir, why);
            else
                hyb_log(HYB_LOG_DEBUG,
                        "%s: no config.json (the layout is neither a plain llama nor an apriel_h "
                        "hybrid)",
                        dir);
            if (unlink(p_cfg) != 0 && errno != ENOENT)
                rc = hyb_error_set(HYB_ERR_IO, "%s: cannot remove a stale config.json: %s", dir,
                                   strerror(errno));
        }
        free(cfg);
        free(p_cfg);
    }
    if (rc == HYB_OK)
        hyb_log(HYB_LOG_INFO, "saved %s (%d tensors, %" PRId64 " parameters)", dir, m->n_params,
                hyb_model_n_elements(m));
done:
    hyb_st_writer_free(w);
    free(toml);
    free(p_map);
    free(p_st);
    return rc;
}

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

int hyb_model_load_params(hyb_model *m, const char *path) {
    return hyb_model_load_params_ex(m, path, 0);
}

int hyb_model_load_params_ex(hyb_model *m, const char *path, unsigned flags) {
    hyb_safetensors *st;
    HYB_TRY(hyb_safetensors_open(path, &st));
    int rc = HYB_OK;
    char a[128], b[128];
    const hyb_st_tensor **src = calloc((size_t)m->n_params + 1, sizeof *src);
    if (!src) {
        rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    /* 1. every parameter present, same shape, convertible */
    for (int i = 0; i < m->n_params; i++) {
        const hyb_tensor *p = m->params[i];
        const hyb_st_tensor *t = hyb_safetensors_find(st, p->name);
        if (!t) {
            rc = hyb_error_set(HYB_ERR_NOTFOUND, "%s: tensor '%s' %s is missing", path, p->name,
                               shape_str(p->ndim, p->shape, a, sizeof a));
            goto done;
        }
        int same = t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++)
            same = t->shape[d] == p->shape[d];
        if (!same) {
            rc = hyb_error_set(
                HYB_ERR_FORMAT, "%s: tensor '%s': file has %s %s, the model expects %s", path,
                p->name, shape_str(t->ndim, t->shape, a, sizeof a), hyb_st_dtype_name(t->dtype),
                shape_str(p->ndim, p->shape, b, sizeof b));
            goto done;
        }
        if (t->dtype == HYB_ST_F8_E4M3 || t->dtype == HYB_ST_F8_E5M2) {
            rc = hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: tensor '%s': dtype %s is not supported",
                               path, p->name, hyb_st_dtype_name(t->dtype));
            goto done;
        }
        src[i] = t;
    }
    /* 2. nothing else in the file (unless allowed) */
    int n_extra = 0;
    for (int j = 0; j < hyb_safetensors_count(st); j++) {
        const hyb_st_tensor *t = hyb_safetensors_tensor(st, j);
        int found = 0;
        for (int i = 0; i < m->n_params && !found; i++)
            found = src[i] == t;
        if (found) continue;
        if (m->lm_head == m->embed && strcmp(t->name, "lm_head.weight") == 0) continue;
        if (!(flags & HYB_LOAD_ALLOW_EXTRA)) {
            rc = hyb_error_set(
                HYB_ERR_FORMAT,
                "%s: tensor '%s' %s is not a parameter of this model (layer map '%s'); pass "
                "HYB_LOAD_ALLOW_EXTRA to ignore extra tensors",
                path, t->name, shape_str(t->ndim, t->shape, a, sizeof a), m->map->path);
            goto done;
        }
        n_extra++;
    }
    if (n_extra)
        hyb_log(HYB_LOG_WARN, "%s: ignored %d tensors that are not parameters of the model", path,
                n_extra);
    /* 3. copy */
    for (int i = 0; i < m->n_params && rc == HYB_OK; i++)
        rc = hyb_safetensors_read_tensor(st, src[i], m->params[i]);
done:
    free(src);
    hyb_safetensors_close(st);
    return rc;
}

int hyb_model_load(const char *dir, hyb_model **out) {
    *out = NULL;
    char *p_map = join_path(dir, "layermap.toml");
    char *p_st = join_path(dir, "model.safetensors");
    int rc = HYB_OK;
    hyb_layermap *map = NULL;
    hyb_model *m = NULL;
    if (!p_map || !p_st) {
        rc = HYB_ERR_NOMEM;
        goto done;
    }
    if ((rc = hyb_layermap_load(p_map, &map)) != HYB_OK) goto done;
    if ((rc = hyb_model_build_ex(map, 0, HYB_BUILD_NO_INIT, &m)) != HYB_OK) goto done;
    if ((rc = hyb_model_load_params(m, p_st)) != HYB_OK) {
        hyb_model_free(m);
        goto done;
    }
    *out = m;
done:
    free(p_map);
    free(p_st);
    return rc;
}
