/* core/model/forward.c: running a model (see hyb/model.h): the residual trunk (the one block code
 * of training, prefill and decode), the full-sequence forward, and the inference state: kvstates,
 * prefill and the batched decode step. */
#include "hyb/model.h"
#include "hyb/memplan.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* hyb_model_capture (the functions are at the end of this file) */
struct hyb_capture {
    int L;
    unsigned *points;     /* [L] HYB_CAP_BIT masks */
    int grads;            /* gradients requested */
    hyb_tensor **val;     /* [L * HYB_CAP_COUNT] owned copies, on the model's device */
    hyb_tensor **grad;    /* [L * HYB_CAP_COUNT] owned gradient destinations */
    unsigned char *have;  /* [L * HYB_CAP_COUNT] recorded by the last forward */
    uint64_t forwards;    /* forwards recorded */
    int taped;            /* the last forward tapped the points */
    int grad_done;        /* a backward filled the gradients since (set by the graph's taps) */
    hyb_graph *tap_graph; /* the graph holding the taps, NULL once it dropped them (reset, free):
                             untapped before the dst tensors go */
};

// ---- forward -----------------------------------------------------------------------------------

/* The residual trunk: embedding, L blocks, final norm -> [B, T, D]. The one block code of the
 * model: training (states NULL), prefill (B = 1 sequence of T tokens) and decode (B sequences of
 * T = 1 token, hyb_mixer_apply then runs the mixers' decode kernels) all come through here.
 * states: NULL or per layer a pointer to B per-sequence states (states(sctx, l)); pos [B] or
 * NULL. */
typedef void *const *(*state_fn)(void *ctx, int layer);

/* The residual add of a block is fused with the norm that follows it (the next block's input
 * norm, the MLP's norm or the final norm): `pend` holds the branch output not yet added to h, and
 * norm() adds it and normalises in one backend call (hyb_add_rmsnorm: same values and tape). */
static hyb_tensor *norm(hyb_graph *g, hyb_tensor **h, hyb_tensor **pend, hyb_tensor *w, float eps) {
    if (!*pend) return hyb_rmsnorm(g, *h, w, eps);
    hyb_tensor *y = hyb_add_rmsnorm(g, *h, *pend, w, eps, h);
    *pend = NULL;
    return y;
}

static int cap_record(hyb_model *m, hyb_graph *g, int l, int p, hyb_tensor *t);
static void cap_begin(hyb_model *m, hyb_graph *g);

/* with a capture set (hyb_model_capture): copy (and tap) point P of layer L; nothing otherwise */
#define CAPTURE(L, P, T)                                                                           \
    do {                                                                                           \
        if (m->capture && cap_record(m, g, (L), (P), (T)) != HYB_OK) {                             \
            hyb_error_wrap(HYB_ERR, "model forward: capture of %s at layer %d",                    \
                           hyb_capture_point_name(P), (L));                                        \
            return NULL;                                                                           \
        }                                                                                          \
    } while (0)

static hyb_tensor *trunk(hyb_model *m, hyb_graph *g, const int32_t *ids, int B, int T,
                         state_fn states, void *sctx, const int32_t *pos, int max_ctx, int kv) {
    const float eps = (float)m->map->norm_eps;
    if (m->capture) cap_begin(m, g);
    hyb_tensor *h = hyb_embedding(g, m->embed, ids, B, T), *pend = NULL;
    if (!h) {
        hyb_error_wrap(HYB_ERR_ARG, "model forward: embedding");
        return NULL;
    }
    /* capturing gradients: record the whole trunk, so that every tapped activation is on the
     * tape before its first reader (also when the parameters below it are frozen) */
    if (m->capture && m->capture->taped) h->requires_grad = 1;
    for (int l = 0; l < m->L; l++) {
        hyb_layer *ly = &m->layers[l];
        if (ly->mixer) {
            hyb_tensor *u = norm(g, &h, &pend, ly->norm_in, eps);
            if (!u) goto fail_layer;
            /* h is now the block's input: the previous block's output */
            if (l > 0) CAPTURE(l - 1, HYB_CAP_BLOCK_OUT, h);
            CAPTURE(l, HYB_CAP_BLOCK_IN, h);
            CAPTURE(l, HYB_CAP_MIXER_IN, u);
            hyb_tensor *y =
                hyb_mixer_apply_kv(g, ly->mixer, u, states ? states(sctx, l) : NULL, pos, max_ctx, kv);
            if (!y) goto fail_layer;
            CAPTURE(l, HYB_CAP_MIXER_OUT, y);
            pend = y; /* h + y, added by the next norm */
        }
        hyb_tensor *v = norm(g, &h, &pend, ly->norm_post, eps);
        if (!v) goto fail_layer;
        if (!ly->mixer) { /* identity layer: h is the block's input */
            if (l > 0) CAPTURE(l - 1, HYB_CAP_BLOCK_OUT, h);
            CAPTURE(l, HYB_CAP_BLOCK_IN, h);
        }
        CAPTURE(l, HYB_CAP_MLP_IN, v);
        hyb_tensor *gt = hyb_matmul(g, v, ly->w_gate);
        hyb_tensor *up = gt ? hyb_matmul(g, v, ly->w_up) : NULL;
        hyb_tensor *a = up ? hyb_swiglu(g, gt, up) : NULL;
        hyb_tensor *d = a ? hyb_matmul(g, a, ly->w_down) : NULL;
        if (!d) goto fail_layer;
        CAPTURE(l, HYB_CAP_MLP_OUT, d);
        pend = d;
        continue;
    fail_layer:
        hyb_error_wrap(HYB_ERR, "model forward: layer %d (%s)", l,
                       ly->mixer ? ly->mixer->type : HYB_MIXER_IDENTITY);
        return NULL;
    }
    hyb_tensor *hn = norm(g, &h, &pend, m->norm_f, eps);
    if (!hn) {
        hyb_error_wrap(HYB_ERR, "model forward: final norm");
        return NULL;
    }
    CAPTURE(m->L - 1, HYB_CAP_BLOCK_OUT, h);
    return hn;
}

hyb_tensor *hyb_model_forward(hyb_model *m, hyb_graph *g, const int32_t *ids, int B, int T) {
    if (B <= 0 || T <= 0 || !ids) {
        hyb_error_set(HYB_ERR_ARG, "hyb_model_forward: bad batch B=%d T=%d", B, T);
        return NULL;
    }
    hyb_tensor *hn = trunk(m, g, ids, B, T, NULL, NULL, NULL, 0, HYB_KV_F32);
    if (!hn) return NULL;
    hyb_tensor *logits = hyb_matmul(g, hn, m->lm_head);
    if (!logits) hyb_error_wrap(HYB_ERR, "model forward: lm_head");
    return logits;
}

// ---- inference state ---------------------------------------------------------------------------

int hyb_kvstate_new(hyb_model *m, int n_seq, int max_ctx, hyb_kvstate **out) {
    return hyb_kvstate_new_ex(m, n_seq, max_ctx, HYB_KV_DEFAULT, out);
}

int hyb_kvstate_new_ex(hyb_model *m, int n_seq, int max_ctx, int kv, hyb_kvstate **out) {
    *out = NULL;
    if (!hyb_kv_dtype_name(kv))
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_kvstate_new: unknown KV cache type %d (allowed: HYB_KV_F16, "
                             "HYB_KV_Q8_0, HYB_KV_F32)",
                             kv);
    if (n_seq <= 0 || max_ctx <= 0)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_kvstate_new: n_seq (%d) and max_ctx (%d) must be positive", n_seq,
                             max_ctx);
    { /* the state's bytes against the memory available, before allocating (hyb/memplan.h) */
        uint64_t need;
        char what[600], detail[96];
        snprintf(what, sizeof what, "hyb_kvstate_new: the decode state of %s", m->map->path);
        snprintf(detail, sizeof detail, "%d sequence%s of %d tokens, %s KV cache", n_seq,
                 n_seq > 1 ? "s" : "", max_ctx, hyb_kv_dtype_name(kv));
        HYB_TRY(hyb_mem_plan_state_kv(m, n_seq, max_ctx, kv, &need));
        HYB_TRY(hyb_mem_check(what, need, detail));
    }
    hyb_kvstate *s = calloc(1, sizeof *s);
    if (!s) return hyb_error_set(HYB_ERR_NOMEM, "hyb_kvstate_new: out of memory");
    const hyb_backend *be = m->be ? m->be : hyb_backend_cpu();
    s->be = be;
    s->n_seq = n_seq;
    s->max_ctx = max_ctx;
    s->kv = kv;
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
        size_t per = hyb_mixer_state_bytes_kv(mx, max_ctx, kv);
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
        if (mx && s->be->memset0(s->be, s->state[l][seq],
                                 hyb_mixer_state_bytes_kv(mx, s->max_ctx, s->kv)))
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
    hyb_tensor *hn = trunk(m, g, ids, 1, T, prefill_states, &c, &s->pos[seq], s->max_ctx, s->kv);
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

static int decode(hyb_model *m, hyb_kvstate *s, int n, const int32_t *seqs, const int32_t *ids,
                  float *logits, int on_device) {
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
    hyb_tensor *hn = trunk(m, g, ids, n, 1, decode_states, &c, pos, s->max_ctx, s->kv);
    hyb_tensor *lg = hn ? hyb_matmul(g, hn, m->lm_head) : NULL;
    if (!lg)
        rc = hyb_error_wrap(HYB_ERR, "hyb_model_decode: %d sequence%s", n, n == 1 ? "" : "s");
    else {
        if (logits) {
            const hyb_backend *be = hyb_backend_get(lg->device);
            const size_t nb = (size_t)n * (size_t)m->V * sizeof(float);
            rc = !be         ? HYB_ERR_UNSUPPORTED
                 : on_device ? be->copy(be, logits, lg->data, nb)
                             : be->download(be, logits, lg->data, nb);
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

int hyb_model_decode(hyb_model *m, hyb_kvstate *s, int n, const int32_t *seqs, const int32_t *ids,
                     float *logits) {
    return decode(m, s, n, seqs, ids, logits, 0);
}

int hyb_model_decode_dev(hyb_model *m, hyb_kvstate *s, int n, const int32_t *seqs,
                         const int32_t *ids, float *dev_logits) {
    return decode(m, s, n, seqs, ids, dev_logits, 1);
}

// ---- capture -----------------------------------------------------------------------------------

static const char *const cap_names[HYB_CAP_COUNT] = {"block_in", "mixer_in", "mixer_out",
                                                     "mlp_in",   "mlp_out",  "block_out"};

const char *hyb_capture_point_name(int p) {
    return p >= 0 && p < HYB_CAP_COUNT ? cap_names[p] : NULL;
}

int hyb_capture_point_from_name(const char *name) {
    for (int p = 0; name && p < HYB_CAP_COUNT; p++)
        if (strcmp(cap_names[p], name) == 0) return p;
    return -1;
}

static void capture_free(hyb_capture *c) {
    if (!c) return;
    if (c->tap_graph) /* still holds the taps (a reset or freed graph NULLs it) */
        hyb_graph_untap(c->tap_graph, &c->grad_done);
    for (int i = 0; i < c->L * HYB_CAP_COUNT; i++) {
        if (c->val) hyb_tensor_free(c->val[i]);
        if (c->grad) hyb_tensor_free(c->grad[i]);
    }
    free(c->val);
    free(c->grad);
    free(c->have);
    free(c->points);
    free(c);
}

void hyb_model_capture_clear(hyb_model *m) {
    if (!m) return;
    capture_free(m->capture);
    m->capture = NULL;
}

int hyb_model_capture(hyb_model *m, const int *layers, int n, unsigned points, int grads) {
    if (!m) return hyb_error_set(HYB_ERR_ARG, "hyb_model_capture: model is NULL");
    if (n < 1 || !layers)
        return hyb_error_set(HYB_ERR_ARG, "hyb_model_capture: no layers given (n = %d)", n);
    if (points == 0 || (points >> HYB_CAP_COUNT) != 0)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_model_capture: points mask 0x%x names no point or an unknown one",
                             points);
    for (int i = 0; i < n; i++)
        if (layers[i] < 0 || layers[i] >= m->L)
            return hyb_error_set(HYB_ERR_ARG, "hyb_model_capture: layer %d out of range [0, %d)",
                                 layers[i], m->L);
    hyb_capture *c = calloc(1, sizeof *c);
    size_t k = (size_t)m->L * HYB_CAP_COUNT;
    if (c) {
        c->L = m->L;
        c->points = calloc((size_t)m->L, sizeof *c->points);
        c->val = calloc(k, sizeof *c->val);
        c->grad = calloc(k, sizeof *c->grad);
        c->have = calloc(k, 1);
    }
    if (!c || !c->points || !c->val || !c->grad || !c->have) {
        capture_free(c);
        return hyb_error_set(HYB_ERR_NOMEM, "hyb_model_capture: out of memory");
    }
    for (int i = 0; i < n; i++)
        c->points[layers[i]] |= points;
    c->grads = grads ? 1 : 0;
    hyb_model_capture_clear(m);
    m->capture = c;
    return HYB_OK;
}

const hyb_tensor *hyb_model_captured(const hyb_model *m, int layer, hyb_capture_point p, int grad) {
    const hyb_capture *c = m ? m->capture : NULL;
    if (!c || layer < 0 || layer >= c->L || (int)p < 0 || p >= HYB_CAP_COUNT) return NULL;
    size_t k = (size_t)layer * HYB_CAP_COUNT + (size_t)p;
    if (!c->have[k]) return NULL;
    if (!grad) return c->val[k];
    return c->taped && c->grad_done ? c->grad[k] : NULL;
}

int hyb_model_capture_info(const hyb_model *m, uint64_t *forwards, int *grads, int *taped,
                           int *grads_ready) {
    const hyb_capture *c = m ? m->capture : NULL;
    if (forwards) *forwards = c ? c->forwards : 0;
    if (grads) *grads = c ? c->grads : 0;
    if (taped) *taped = c ? c->taped : 0;
    if (grads_ready) *grads_ready = c ? (c->taped && c->grad_done) : 0;
    return c != NULL;
}

/* an owned f32 tensor shaped like t on t's device in *slot (reused when it already fits) */
static int cap_fit(hyb_tensor **slot, const hyb_tensor *t) {
    hyb_tensor *v = *slot;
    if (v && v->device == t->device && v->ndim == t->ndim &&
        memcmp(v->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) == 0)
        return HYB_OK;
    hyb_tensor_free(v);
    *slot = hyb_tensor_new_on(hyb_backend_get(t->device), HYB_F32, t->ndim, t->shape);
    return *slot ? HYB_OK : hyb_error_wrap(HYB_ERR_NOMEM, "capture");
}

static void cap_begin(hyb_model *m, hyb_graph *g) {
    hyb_capture *c = m->capture;
    c->forwards++;
    memset(c->have, 0, (size_t)c->L * HYB_CAP_COUNT);
    if (c->tap_graph) hyb_graph_untap(c->tap_graph, &c->grad_done); /* the last forward's taps */
    c->tap_graph = NULL;
    c->taped = c->grads && hyb_graph_grad_enabled(g);
    c->grad_done = 0;
}

/* copy t (point p of layer l) out of the graph; with grads, tap it */
static int cap_record(hyb_model *m, hyb_graph *g, int l, int p, hyb_tensor *t) {
    hyb_capture *c = m->capture;
    if (!(c->points[l] & HYB_CAP_BIT(p))) return HYB_OK;
    size_t k = (size_t)l * HYB_CAP_COUNT + (size_t)p;
    const hyb_backend *be = hyb_backend_get(t->device);
    if (!be) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "capture");
    HYB_TRY(cap_fit(&c->val[k], t));
    HYB_TRY(be->copy(be, c->val[k]->data, t->data, hyb_tensor_nbytes(t)));
    c->have[k] = 1;
    if (c->taped) {
        HYB_TRY(cap_fit(&c->grad[k], t));
        /* the graph NULLs tap_graph when it drops the taps (reset, free) */
        HYB_TRY(hyb_graph_tap_grad(g, t, c->grad[k], &c->grad_done, &c->tap_graph));
    }
    return HYB_OK;
}
