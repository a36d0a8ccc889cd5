/* core/model/build.c: building a model from its layer map (see hyb/model.h): parameters and the
 * parameter store, build/free, swapping a layer's mixer (and identity layers), placement on a
 * device. The forward and the inference state are in forward.c; the layer map writer, clone,
 * checkpoints and the HF config.json export glue in io.c. */
#include "hyb/model.h"
#include "hyb/memplan.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    /* normal == -2 (HYB_BUILD_NO_DATA): no data yet, the loader gives it (hyb_param_no_data) */
    hyb_tensor *t = normal == -2 ? hyb_param_no_data(HYB_F32, ndim, shape)
                                 : hyb_tensor_new(HYB_F32, ndim, shape);
    if (!t) return NULL;
    t->owner = HYB_OWN_PARAM;
    t->requires_grad = 1;
    snprintf(t->name, sizeof t->name, "%s", name);
    if (normal == -2) return t;
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
    hyb_model_capture_clear(m);
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
    /* after the parameters: quantized ones may point into it (a mapped GGUF) */
    if (m->source_free) m->source_free(m->source);
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
    /* N(0, 0.02), left zero, or (HYB_BUILD_NO_DATA) not even allocated */
    const int rnd = (flags & HYB_BUILD_NO_DATA) ? -2 : (flags & HYB_BUILD_NO_INIT) ? -1 : 1;
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
                                  HYB_MIXER_LAZY_GRAD |
                                      ((flags & HYB_BUILD_NO_INIT) ? HYB_MIXER_NO_INIT : 0) |
                                      ((flags & HYB_BUILD_NO_DATA) ? HYB_MIXER_NO_DATA : 0),
                                  &ly->mixer);
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
        if (m->params[i]->dtype != HYB_F32 && be->device != HYB_DEV_CPU)
            return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                 "model '%s' cannot run on %s: parameter '%s' is quantized (%s), "
                                 "which computes on the CPU only; load the model with quant = "
                                 "off (--quant off) to run it there",
                                 m->map->name, be->name, m->params[i]->name,
                                 hyb_dtype_name(m->params[i]->dtype));
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
