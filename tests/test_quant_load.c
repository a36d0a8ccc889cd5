/* Quantized GGUF loading (issue 22) on a tiny llama written by this test with Q8_0 linear
 * weights (its own quantizer: 32-value blocks, d = absmax/127 as f16):
 *  - quant 1 keeps every linear weight (embedding, q/k/v/o, MLP, lm_head) in its blocks with no
 *    f32 copy: v/o/MLP/embedding point into the mapped file, q/k are row-permuted copies; the
 *    logits of a prefill and of decode steps (mha's projections through be->qmatmul, plugin ABI 3)
 *    match the same file loaded as f32 (quant 0) within f32 summation error in precise mode;
 *  - a backward through the quantized model is refused, naming the mixer; a clone is f32 and
 *    trainable; moving it off the CPU would be refused (checked through the mixer API);
 *  - bad input: a NaN or Inf block scale (refused naming the tensor and the block, in both
 *    modes), a truncated tensor (naming it), a type hyb cannot read (naming the tensor and type). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cpu/cpu_quant.h"
#include "harness.h"
#include "hyb/gguf.h"
#include "hyb/graph.h"
#include "hyb/hf.h"
#include "hyb/model.h"

enum { L = 2, D = 64, H = 4, KV = 2, HD = 16, F = 96, V = 64 };

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf_t;

static void put(buf_t *b, const void *x, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, x, n);
    b->n += n;
}
static void put_u32(buf_t *b, uint32_t v) {
    put(b, &v, 4);
}
static void put_u64(buf_t *b, uint64_t v) {
    put(b, &v, 8);
}
static void put_str(buf_t *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void kv_u32(buf_t *b, const char *k, uint32_t v) {
    put_str(b, k);
    put_u32(b, 4);
    put_u32(b, v);
}
static void kv_f32(buf_t *b, const char *k, float v) {
    put_str(b, k);
    put_u32(b, 6);
    put(b, &v, 4);
}
static void kv_str(buf_t *b, const char *k, const char *v) {
    put_str(b, k);
    put_u32(b, 8);
    put_str(b, v);
}

typedef struct {
    char name[64];
    int rows, cols;
    float *data; /* HF layout */
} wt_t;
static int n_w;
static wt_t W[64];

static void add_w(const char *name, int rows, int cols, uint64_t seed) {
    wt_t *w = &W[n_w++];
    snprintf(w->name, sizeof w->name, "%s", name);
    w->rows = rows, w->cols = cols;
    w->data = malloc(sizeof(float) * rows * cols);
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    hyb_rng_fill_normal(&r, w->data, (int64_t)rows * cols, cols == 1 ? 1.0f : 0.0f,
                        cols == 1 ? 0.1f : 0.2f);
}

/* llama.cpp's converter order for q/k: GGUF row h*hd + 2i + j is HF row h*hd + j*hd/2 + i */
static void permute_rows(const float *hf, int nh, int cols, float *g) {
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < HD / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(g + ((size_t)h * HD + 2 * i + j) * cols,
                       hf + ((size_t)h * HD + j * HD / 2 + i) * cols, sizeof(float) * cols);
}

/* Q8_0: 32 values per 34-byte block: f16 d = absmax/127, int8 q = round(x / d) */
static void quantize_q8_0(const float *x, int64_t n, buf_t *out) {
    for (int64_t b = 0; b < n / 32; b++) {
        float amax = 0;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(x[b * 32 + i]));
        const uint16_t dh = hyb_f32_to_f16(amax / 127.0f);
        const float d = hyb_f16_to_f32(dh), id = d != 0 ? 1.0f / d : 0.0f;
        put(out, &dh, 2);
        for (int i = 0; i < 32; i++) {
            float v = roundf(x[b * 32 + i] * id);
            int8_t q = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
            put(out, &q, 1);
        }
    }
}

typedef struct {
    int nan_scale;       /* 1: NaN d in block 3 of blk.1.ffn_up.weight; 2: +Inf */
    int truncate;        /* cut the file inside the last tensor */
    int bad_type;        /* write blk.0.ffn_gate.weight with GGML type 9 (Q8_1) */
} variant;

static void write_gguf(const char *path, const variant *v) {
    buf_t hdr = {0}, data = {0}, infos = {0}, kvs = {0};
    for (int i = 0; i < n_w; i++) {
        const wt_t *w = &W[i];
        const int vec = w->cols == 1;
        float *src = w->data, *perm = NULL;
        const int q = strstr(w->name, "attn_q.weight") != NULL, k = strstr(w->name, "attn_k.weight") != NULL;
        if (q || k) {
            perm = malloc(sizeof(float) * w->rows * w->cols);
            permute_rows(w->data, q ? H : KV, w->cols, perm);
            src = perm;
        }
        put_str(&infos, w->name);
        put_u32(&infos, vec ? 1 : 2);
        if (vec) {
            put_u64(&infos, (uint64_t)w->rows);
        } else {
            put_u64(&infos, (uint64_t)w->cols);
            put_u64(&infos, (uint64_t)w->rows);
        }
        const int bad = v->bad_type && !strcmp(w->name, "blk.0.ffn_gate.weight");
        put_u32(&infos, vec ? 0u : bad ? 9u : 8u); /* F32 / Q8_1 / Q8_0 */
        put_u64(&infos, data.n);
        const size_t at = data.n;
        if (vec)
            put(&data, src, sizeof(float) * w->rows);
        else if (bad) { /* Q8_1: 40 bytes per 32 values, which hyb does not read */
            for (int64_t b = 0; b < (int64_t)w->rows * w->cols / 32 * 40; b++)
                put(&data, "\0", 1);
        } else
            quantize_q8_0(src, (int64_t)w->rows * w->cols, &data);
        if (v->nan_scale && !strcmp(w->name, "blk.1.ffn_up.weight")) {
            const uint16_t s = v->nan_scale == 1 ? 0x7e00 : 0x7c00;
            memcpy(data.p + at + 3 * 34, &s, 2);
        }
        while (data.n % 32)
            put(&data, "\0", 1);
        free(perm);
    }
    int n_kv = 0;
    kv_str(&kvs, "general.architecture", "llama"), n_kv++;
    kv_str(&kvs, "general.name", "tiny q8 llama"), n_kv++;
    kv_u32(&kvs, "llama.block_count", L), n_kv++;
    kv_u32(&kvs, "llama.embedding_length", D), n_kv++;
    kv_u32(&kvs, "llama.feed_forward_length", F), n_kv++;
    kv_u32(&kvs, "llama.attention.head_count", H), n_kv++;
    kv_u32(&kvs, "llama.attention.head_count_kv", KV), n_kv++;
    kv_u32(&kvs, "llama.context_length", 64), n_kv++;
    kv_u32(&kvs, "llama.vocab_size", V), n_kv++;
    kv_f32(&kvs, "llama.rope.freq_base", 10000.0f), n_kv++;
    kv_f32(&kvs, "llama.attention.layer_norm_rms_epsilon", 1e-5f), n_kv++;
    put(&hdr, "GGUF", 4);
    put_u32(&hdr, 3);
    put_u64(&hdr, (uint64_t)n_w);
    put_u64(&hdr, (uint64_t)n_kv);
    put(&hdr, kvs.p, kvs.n);
    put(&hdr, infos.p, infos.n);
    while (hdr.n % 32)
        put(&hdr, "\0", 1);
    FILE *f = fopen(path, "wb");
    fwrite(hdr.p, 1, hdr.n, f);
    fwrite(data.p, 1, v->truncate ? data.n - 40 : data.n, f);
    fclose(f);
    free(hdr.p), free(data.p), free(infos.p), free(kvs.p);
}

static void make_weights(void) {
    uint64_t s = 1;
    char n[64];
    add_w("token_embd.weight", V, D, s++);
    add_w("output_norm.weight", D, 1, s++);
    add_w("output.weight", V, D, s++);
    for (int l = 0; l < L; l++) {
#define T_(name, r, c)                                                                             \
    do {                                                                                           \
        snprintf(n, sizeof n, "blk.%d." name, l);                                                  \
        add_w(n, r, c, s++);                                                                       \
    } while (0)
        T_("attn_norm.weight", D, 1);
        T_("attn_q.weight", H * HD, D);
        T_("attn_k.weight", KV * HD, D);
        T_("attn_v.weight", KV * HD, D);
        T_("attn_output.weight", D, H * HD);
        T_("ffn_norm.weight", D, 1);
        T_("ffn_gate.weight", F, D);
        T_("ffn_up.weight", F, D);
        T_("ffn_down.weight", D, F);
#undef T_
    }
}

static char g_path[256];

/* logits of a 7-token prefill then 4 decode steps: [11, V] */
static int run(hyb_model *m, float *out) {
    static const int32_t ids[11] = {3, 17, 42, 5, 60, 1, 33, 8, 21, 12, 50};
    hyb_kvstate *s = NULL;
    if (hyb_kvstate_new(m, 1, 32, &s) != HYB_OK) return HYB_ERR;
    int rc = hyb_model_prefill(m, s, 0, ids, 7, out + 6 * V);
    /* the whole prefill's logits too, through the full forward (no states, no grad) */
    hyb_graph *g = hyb_graph_new();
    hyb_graph_set_grad(g, 0);
    hyb_tensor *lg = rc == HYB_OK ? hyb_model_forward(m, g, ids, 1, 7) : NULL;
    if (!lg) rc = HYB_ERR;
    if (lg) memcpy(out, lg->data, sizeof(float) * 6 * V); /* positions 0..5 */
    hyb_graph_free(g);
    const int32_t seq = 0;
    for (int t = 7; t < 11 && rc == HYB_OK; t++)
        rc = hyb_model_decode(m, s, 1, &seq, &ids[t], out + (size_t)t * V);
    hyb_kvstate_free(s);
    return rc;
}

static void test_quantized_equals_f32(void) {
    variant v = {0};
    write_gguf(g_path, &v);
    const hyb_quant_config saved = hyb_quant_get();
    hyb_quant_config pre = saved;
    pre.mode = HYB_QUANT_PRECISE;
    hyb_quant_set(&pre);
    hyb_model *mf = NULL, *mq = NULL;
    CHECK_MSG(hyb_model_load_gguf_ex(g_path, 0, &mf) == HYB_OK, "%s", hyb_error());
    CHECK_MSG(hyb_model_load_gguf_ex(g_path, 1, &mq) == HYB_OK, "%s", hyb_error());
    if (!mf || !mq) goto done;
    /* every linear weight quantized in mq (norms stay f32), none in mf */
    int nq = 0;
    for (int i = 0; i < mq->n_params; i++) {
        hyb_tensor *p = mq->params[i];
        CHECK(mf->params[i]->dtype == HYB_F32);
        if (p->ndim == 2) {
            nq++;
            CHECK_MSG(p->dtype == HYB_Q8_0 && !p->requires_grad, "%s", p->name);
            const int qk = strstr(p->name, "q_proj") || strstr(p->name, "k_proj");
            /* v/o/MLP/embedding point into the mapping; q/k are permuted heap copies */
            CHECK_MSG(p->owner == (qk ? HYB_OWN_PARAM : HYB_OWN_EXTERNAL), "%s owner %d", p->name,
                      (int)p->owner);
        } else {
            CHECK(p->dtype == HYB_F32);
        }
    }
    CHECK(nq == 2 + 7 * L); /* embedding, lm_head, 7 per layer */
    CHECK(mq->source != NULL && mf->source == NULL);
    float *yf = calloc(11 * V, sizeof(float)), *yq = calloc(11 * V, sizeof(float));
    CHECK_MSG(run(mf, yf) == HYB_OK, "%s", hyb_error());
    CHECK_MSG(run(mq, yq) == HYB_OK, "%s", hyb_error());
    double worst = 0, scale = 0;
    for (int i = 0; i < 11 * V; i++) {
        worst = fmax(worst, fabs((double)yf[i] - yq[i]));
        scale = fmax(scale, fabs((double)yf[i]));
    }
    /* precise = the f32 computation up to summation order */
    CHECK_MSG(worst <= 1e-4 * scale, "max |f32 - precise| = %.3g (logits up to %.3g)", worst,
              scale);
    /* fast differs (its activation rounding) but stays close */
    hyb_quant_config fast = pre;
    fast.mode = HYB_QUANT_FAST;
    hyb_quant_set(&fast);
    CHECK(run(mq, yq) == HYB_OK);
    double wf = 0;
    for (int i = 0; i < 11 * V; i++)
        wf = fmax(wf, fabs((double)yf[i] - yq[i]));
    CHECK_MSG(wf > 0 && wf <= 0.05 * scale, "fast: max diff %.3g (scale %.3g)", wf, scale);
    hyb_quant_set(&pre);

    /* an inference load is frozen as a whole (norms too): a forward on a graph with grad on
     * records nothing; a clone is f32 and trainable */
    for (int i = 0; i < mq->n_params; i++)
        CHECK(!mq->params[i]->requires_grad);
    hyb_graph *g = hyb_graph_new();
    static const int32_t ids[4] = {1, 2, 3, 4};
    hyb_tensor *lg = hyb_model_forward(mq, g, ids, 1, 4);
    CHECK_MSG(lg != NULL, "%s", hyb_error());
    hyb_graph_free(g);
    hyb_model *c = NULL;
    CHECK_MSG(hyb_model_clone(mq, &c) == HYB_OK, "%s", hyb_error());
    if (c) {
        for (int i = 0; i < c->n_params; i++) {
            CHECK(c->params[i]->dtype == HYB_F32 && c->params[i]->requires_grad);
            /* the clone holds the dequantised weights = the f32 load (same HF order) */
            CHECK_MSG(memcmp(c->params[i]->data, mf->params[i]->data,
                             hyb_tensor_nbytes(mf->params[i])) == 0,
                      "clone %s", c->params[i]->name);
        }
        hyb_model_free(c);
    }
    /* a quantized mixer parameter asked for a gradient: the tape is refused, naming the mixer */
    hyb_tensor *wq = hyb_model_param(mq, "model.layers.0.self_attn.q_proj.weight");
    CHECK(wq && wq->dtype == HYB_Q8_0);
    if (wq) {
        wq->requires_grad = 1;
        g = hyb_graph_new();
        lg = hyb_model_forward(mq, g, ids, 1, 4);
        CHECK(lg == NULL);
        CHECK_MSG(strstr(hyb_error(), "mixer 'mha'") && strstr(hyb_error(), "q_proj.weight") &&
                      strstr(hyb_error(), "quantized"),
                  "%s", hyb_error());
        hyb_graph_free(g);
        wq->requires_grad = 0;
    }
    free(yf), free(yq);
done:
    hyb_model_free(mf);
    hyb_model_free(mq);
    hyb_quant_set(&saved);
}

static void expect_error(const variant *v, int quant, const char *s1, const char *s2,
                         const char *s3) {
    write_gguf(g_path, v);
    hyb_model *m = (hyb_model *)1;
    int rc = hyb_model_load_gguf_ex(g_path, quant, &m);
    CHECK_MSG(rc < 0, "loaded (quant %d)", quant);
    CHECK(m == NULL);
    CHECK_MSG(strstr(hyb_error(), s1) != NULL, "'%s' not in: %s", s1, hyb_error());
    if (s2) CHECK_MSG(strstr(hyb_error(), s2) != NULL, "'%s' not in: %s", s2, hyb_error());
    if (s3) CHECK_MSG(strstr(hyb_error(), s3) != NULL, "'%s' not in: %s", s3, hyb_error());
}

static void test_bad_input(void) {
    for (int quant = 0; quant <= 1; quant++) {
        variant nan = {.nan_scale = 1};
        expect_error(&nan, quant, "blk.1.ffn_up.weight", "block 3", "NaN/Inf");
        variant inf = {.nan_scale = 2};
        expect_error(&inf, quant, "blk.1.ffn_up.weight", "block 3", "Q8_0");
        variant trunc = {.truncate = 1};
        expect_error(&trunc, quant, "blk.1.ffn_down.weight", "beyond the end of the file", NULL);
        variant bad = {.bad_type = 1};
        expect_error(&bad, quant, "blk.0.ffn_gate.weight", "Q8_1", "Q4_K");
    }
}

int main(void) {
    snprintf(g_path, sizeof g_path, "/tmp/hyb_test_quant_load_%d.gguf", (int)getpid());
    make_weights();
    RUN(test_quantized_equals_f32);
    RUN(test_bad_input);
    unlink(g_path);
    for (int i = 0; i < n_w; i++)
        free(W[i].data);
    return harness_done();
}
