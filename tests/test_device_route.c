/* tests/test_device_route.c: the one compute route, checked without a GPU.
 *
 * A "mock" backend is registered as the provider of a second device kind (HYB_DEV_CUDA): its
 * memory is host memory, its kernels are the CPU backend's, and every entry counts its calls and
 * checks that the pointers it gets were allocated by it (so a host pointer that leaks into a
 * device call, or a device pointer into a host memcpy, is caught). A tiny model is then moved to
 * it and must give, bit for bit, what the same model gives on the CPU: training steps (forward,
 * cross-entropy, backward, clipping, AdamW), prefill and batched decode, checkpoints saved from
 * the device. And the refusals: a mixer with no kernel for the device (the error names the mixer,
 * the layer, the op and the device), an unknown device, a device that is not there.
 *
 * With HYB_ROUTE_DEVICE=cuda and HYB_CUDA_EMULATE=1 (ctest test_device_route_emu) the same model
 * runs on the real CUDA backend, emulated (core/backend/cuda/emu): its kernels, launches, pool,
 * cuBLAS stand-in and transfers; results are then compared at f32 tolerances (the CUDA kernels
 * sum in other orders). The mixers' "CUDA kernels" there are their CPU kernels, which is only
 * valid because emulated device memory is host memory: this checks the core's route (ops,
 * losses, optimiser, states, checkpoints) on CUDA, not mixer kernels (issue 14).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/backend.h"
#include "hyb/engine.h"
#include "hyb/model.h"

/* ---- the mock device --------------------------------------------------------------------------
 */

#define MAX_BLOCKS 4096
static struct {
    void *p[MAX_BLOCKS];
    size_t n[MAX_BLOCKS];
    int count;
} g_blocks;
static long g_calls[8]; /* sgemm, rope, rmsnorm, adamw, alloc, copy/upload/download, kl/ce, other */
static int g_foreign;   /* calls that got a pointer the mock did not allocate */

static int owned(const void *p) {
    if (!p) return 1;
    const char *c = p;
    for (int i = 0; i < g_blocks.count; i++)
        if (g_blocks.p[i] && c >= (const char *)g_blocks.p[i] &&
            c < (const char *)g_blocks.p[i] + g_blocks.n[i])
            return 1;
    return 0;
}
static void own(const void *p, const char *what) {
    if (!owned(p)) {
        if (g_foreign++ < 5) printf("  mock: %s got a pointer it did not allocate\n", what);
    }
}

static hyb_backend MOCK;

static void *mock_alloc(const hyb_backend *be, size_t n) {
    (void)be;
    g_calls[4]++;
    void *p = hyb_malloc(n);
    for (int i = 0; p && i < MAX_BLOCKS; i++)
        if (!g_blocks.p[i]) {
            g_blocks.p[i] = p;
            g_blocks.n[i] = n;
            if (i >= g_blocks.count) g_blocks.count = i + 1;
            return p;
        }
    return p;
}
static void mock_free(const hyb_backend *be, void *p) {
    (void)be;
    for (int i = 0; i < g_blocks.count; i++)
        if (g_blocks.p[i] == p) g_blocks.p[i] = NULL;
    hyb_free(p);
}
static int mock_memset0(const hyb_backend *be, void *p, size_t n) {
    (void)be;
    own(p, "memset0");
    return hyb_backend_cpu()->memset0(hyb_backend_cpu(), p, n);
}
static int mock_copy(const hyb_backend *be, void *d, const void *s, size_t n) {
    (void)be;
    g_calls[5]++;
    own(d, "copy dst");
    own(s, "copy src");
    return hyb_backend_cpu()->copy(hyb_backend_cpu(), d, s, n);
}
static int mock_upload(const hyb_backend *be, void *d, const void *s, size_t n) {
    (void)be;
    g_calls[5]++;
    own(d, "upload dst");
    return hyb_backend_cpu()->upload(hyb_backend_cpu(), d, s, n);
}
static int mock_download(const hyb_backend *be, void *d, const void *s, size_t n) {
    (void)be;
    g_calls[5]++;
    own(s, "download src");
    return hyb_backend_cpu()->download(hyb_backend_cpu(), d, s, n);
}
static int mock_sgemm(const hyb_backend *be, int tA, int tB, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      int ldc) {
    (void)be;
    g_calls[0]++;
    own(A, "sgemm A");
    own(B, "sgemm B");
    own(C, "sgemm C");
    const hyb_backend *c = hyb_backend_cpu();
    return c->sgemm(c, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static int mock_rope(const hyb_backend *be, float *x, int B, int T, int H, int hd,
                     const int32_t *pos, float theta, int inverse) {
    (void)be;
    g_calls[1]++;
    own(x, "rope x");
    const hyb_backend *c = hyb_backend_cpu();
    return c->rope(c, x, B, T, H, hd, pos, theta, inverse);
}
static int mock_rmsnorm_fwd(const hyb_backend *be, const float *x, const float *w, float *y,
                            float *rstd, int64_t rows, int64_t D, float eps) {
    (void)be;
    g_calls[2]++;
    own(x, "rmsnorm x");
    own(w, "rmsnorm w");
    own(y, "rmsnorm y");
    const hyb_backend *c = hyb_backend_cpu();
    return c->rmsnorm_fwd(c, x, w, y, rstd, rows, D, eps);
}
static int mock_add_rmsnorm_fwd(const hyb_backend *be, const float *a, const float *b,
                                const float *w, float *h, float *y, float *rstd, int64_t rows,
                                int64_t D, float eps) {
    (void)be;
    g_calls[2]++;
    own(a, "add_rmsnorm a");
    own(b, "add_rmsnorm b");
    own(w, "add_rmsnorm w");
    own(h, "add_rmsnorm h");
    own(y, "add_rmsnorm y");
    const hyb_backend *c = hyb_backend_cpu();
    return c->add_rmsnorm_fwd(c, a, b, w, h, y, rstd, rows, D, eps);
}
static int mock_adamw(const hyb_backend *be, float *p, const float *g, float *m, float *v,
                      int64_t n, float b1, float b2, float eps, float shrink, float step,
                      float ibc2) {
    (void)be;
    g_calls[3]++;
    own(p, "adamw p");
    own(g, "adamw g");
    own(m, "adamw m");
    own(v, "adamw v");
    const hyb_backend *c = hyb_backend_cpu();
    return c->adamw(c, p, g, m, v, n, b1, b2, eps, shrink, step, ibc2);
}
static int mock_adamw_multi(const hyb_backend *be, const hyb_adamw_tensor *t, int count, float b1,
                            float b2, float eps, float ibc2) {
    (void)be;
    g_calls[3]++;
    for (int i = 0; i < count; i++) {
        own(t[i].p, "adamw_multi p");
        own(t[i].g, "adamw_multi g");
        own(t[i].m, "adamw_multi m");
        own(t[i].v, "adamw_multi v");
    }
    const hyb_backend *c = hyb_backend_cpu();
    return c->adamw_multi(c, t, count, b1, b2, eps, ibc2);
}
static int mock_sample(const hyb_backend *be, const float *lg, int64_t n, int64_t V,
                       const hyb_sample_row *rows, int32_t *out) {
    (void)be;
    g_calls[7]++;
    own(lg, "sample logits");
    const hyb_backend *c = hyb_backend_cpu();
    return c->sample(c, lg, n, V, rows, out);
}
static int mock_ce_fwd(const hyb_backend *be, const float *lg, const int32_t *t, const float *w,
                       float *lse, int64_t rows, int64_t V, double *sum) {
    (void)be;
    g_calls[6]++;
    own(lg, "ce_fwd logits");
    const hyb_backend *c = hyb_backend_cpu();
    return c->ce_fwd(c, lg, t, w, lse, rows, V, sum);
}

static int mock_open(int ordinal, const hyb_backend **out) {
    if (ordinal != 0) return hyb_error_set(HYB_ERR_ARG, "mock device %d does not exist", ordinal);
    *out = &MOCK;
    return hyb_backend_register(&MOCK);
}
static int mock_probe(void) {
    return 1;
}
static const hyb_backend_provider MOCK_PROVIDER = {
    .kind = "mock", .device = HYB_DEV_CUDA, .open = mock_open, .probe = mock_probe};

static void mock_init(void) {
    MOCK = *hyb_backend_cpu(); /* every other kernel: the CPU's, on host memory */
    MOCK.name = "mock:0";
    MOCK.device = HYB_DEV_CUDA;
    MOCK.alloc = mock_alloc;
    MOCK.free = mock_free;
    MOCK.memset0 = mock_memset0;
    MOCK.copy = mock_copy;
    MOCK.upload = mock_upload;
    MOCK.download = mock_download;
    MOCK.sgemm = mock_sgemm;
    MOCK.rope = mock_rope;
    MOCK.rmsnorm_fwd = mock_rmsnorm_fwd;
    MOCK.add_rmsnorm_fwd = mock_add_rmsnorm_fwd;
    MOCK.adamw = mock_adamw;
    MOCK.adamw_multi = mock_adamw_multi;
    MOCK.sample = mock_sample;
    MOCK.ce_fwd = mock_ce_fwd;
    CHECK(hyb_backend_add_provider(&MOCK_PROVIDER) == HYB_OK);
}

/* ---- models -----------------------------------------------------------------------------------
 */

static const char *MAP = HARNESS_MAP_MODEL("route", 3, 53) HARNESS_MAP_ATTN
                         "[mixers.ssm]\n"
                         "type = \"mamba1\"\n"
                         "symbol = \"m\"\n"
                         "d_state = 8\n"
                         "[layout]\n"
                         "pattern = \"tmt\"\n";

static hyb_model *build(void) {
    return harness_build_model(MAP, "route.toml", 11);
}

/* Mixer descriptors with the CPU kernels declared for the mock device too (its memory is host
 * memory, so the CPU kernels are right there; they compute through the `be` they are given), or
 * (strip_device_kernels) with no kernels for it, whatever the plugins ship, so the refusals do
 * not depend on which mixers have CUDA kernels yet. */
typedef struct desc_set {
    hyb_mixer_desc d[8];
    int n;
} desc_set;
static desc_set g_mock_descs, g_cpu_only_descs;
static void swap_descs(hyb_model *m, desc_set *s, int give) {
    for (int l = 0; l < m->L; l++) {
        hyb_mixer *mx = m->layers[l].mixer;
        if (!mx) continue;
        int k = 0;
        while (k < s->n && strcmp(s->d[k].name, mx->desc->name) != 0)
            k++;
        if (k == s->n) {
            s->d[k] = *mx->desc;
            if (give)
                s->d[k].kernels[HYB_DEV_CUDA] = s->d[k].kernels[HYB_DEV_CPU];
            else
                memset(&s->d[k].kernels[HYB_DEV_CUDA], 0, sizeof s->d[k].kernels[HYB_DEV_CUDA]);
            s->n++;
        }
        mx->desc = &s->d[k];
    }
}
static void give_mock_kernels(hyb_model *m) {
    swap_descs(m, &g_mock_descs, 1);
}
static void strip_device_kernels(hyb_model *m) {
    swap_descs(m, &g_cpu_only_descs, 0);
}

static void params_host(hyb_model *m, float **out, int64_t *total) {
    int64_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        n += hyb_tensor_numel(m->params[i]);
    float *p = malloc(sizeof(float) * (size_t)n);
    int64_t o = 0;
    for (int i = 0; i < m->n_params; i++) {
        CHECK(hyb_tensor_download(m->params[i], p + o) == HYB_OK);
        o += hyb_tensor_numel(m->params[i]);
    }
    *out = p;
    *total = n;
}

static void test_refusals(void) {
    const hyb_backend *be = NULL;
    CHECK(hyb_backend_open("tpu", &be) == HYB_ERR_ARG);
    CHECK_MSG(strstr(hyb_error(), "unknown device 'tpu'") && strstr(hyb_error(), "mock"), "%s",
              hyb_error());
    CHECK(hyb_backend_open("mock:3", &be) != HYB_OK);
    CHECK_MSG(strstr(hyb_error(), "mock:3") && strstr(hyb_error(), "does not exist"), "%s",
              hyb_error());
    CHECK(hyb_backend_open("mock:x", &be) == HYB_ERR_ARG);
    CHECK(hyb_backend_open("mock", &be) == HYB_OK && be == &MOCK);
    CHECK(hyb_backend_get(HYB_DEV_CUDA) == &MOCK);

    /* mixers with CPU kernels only: moving there is refused, naming what is missing, and
     * nothing moves */
    hyb_model *m = build();
    if (!m) return;
    strip_device_kernels(m);
    CHECK(hyb_model_to_device(m, be) == HYB_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(hyb_error(), "mixer 'mha' (layer 0) has no forward kernel for device cuda") &&
                  strstr(hyb_error(), "kernels for: cpu"),
              "%s", hyb_error());
    for (int i = 0; i < m->n_params; i++)
        CHECK(m->params[i]->device == HYB_DEV_CPU);
    CHECK(hyb_model_backend(m) == hyb_backend_cpu());
    hyb_model_free(m);
}

static const char *g_dev = "mock"; /* HYB_ROUTE_DEVICE */
static int g_mock = 1;             /* the mock device: bitwise checks and pointer ownership */

/* a equal to b: bitwise on the mock, else within rel (of the largest |b|) */
static int same(const float *a, const float *b, int64_t n, double rel, const char *what) {
    if (g_mock) return memcmp(a, b, sizeof(float) * (size_t)n) == 0;
    double e = harness_max_rel(a, b, n, 1e-3);
    printf("  %s: max rel err %.3g\n", what, e);
    return e <= rel;
}

static void test_train_on_device(void) {
    hyb_model *ref = build(), *dev = build();
    if (!ref || !dev) return;
    const hyb_backend *be = NULL;
    CHECK_MSG(hyb_backend_open(g_dev, &be) == HYB_OK, "%s", hyb_error());
    if (!be) return;
    give_mock_kernels(dev);
    long alloc0 = g_calls[4];
    CHECK_MSG(hyb_model_to_device(dev, be) == HYB_OK, "%s", hyb_error());
    CHECK(!g_mock || g_calls[4] > alloc0);
    for (int i = 0; i < dev->n_params; i++)
        CHECK(dev->params[i]->device == HYB_DEV_CUDA && (!g_mock || owned(dev->params[i]->data)));
    enum { B = 2, T = 12 };
    int32_t ids[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (i * 7 + 3) % 53;
        tg[i] = (i * 11 + 5) % 53;
    }
    hyb_adamw *o1 = NULL, *o2 = NULL;
    CHECK(hyb_adamw_new_model(ref, 1e-2f, 0.1f, &o1) == HYB_OK);
    CHECK_MSG(hyb_adamw_new_model(dev, 1e-2f, 0.1f, &o2) == HYB_OK, "%s", hyb_error());
    if (!o1 || !o2) return;
    CHECK(o2->be == be && (!g_mock || (owned(o2->m[0]) && owned(o2->v[0]))));
    hyb_graph *g1 = hyb_graph_new(), *g2 = hyb_graph_new();
    long sg0 = g_calls[0], ad0 = g_calls[3], ce0 = g_calls[6];
    for (int step = 0; step < 3; step++) {
        hyb_model *ms[2] = {ref, dev};
        hyb_graph *gs[2] = {g1, g2};
        hyb_adamw *os[2] = {o1, o2};
        float loss[2] = {0, 0};
        for (int k = 0; k < 2; k++) {
            hyb_graph_reset(gs[k]);
            hyb_model_zero_grad(ms[k]);
            hyb_tensor *lg = hyb_model_forward(ms[k], gs[k], ids, B, T);
            hyb_tensor *L = lg ? hyb_cross_entropy(gs[k], lg, tg, NULL) : NULL;
            CHECK_MSG(L != NULL, "step %d model %d: %s", step, k, hyb_error());
            if (!L) return;
            CHECK(hyb_tensor_download(L, &loss[k]) == HYB_OK);
            CHECK_MSG(hyb_graph_backward(gs[k], L, 1.0f) == HYB_OK, "%s", hyb_error());
            int n;
            hyb_tensor **p = hyb_model_params(ms[k], &n);
            hyb_grad_clip(p, n, 0.5f);
            CHECK_MSG(hyb_adamw_step(os[k]) == HYB_OK, "%s", hyb_error());
        }
        CHECK_MSG(g_mock ? loss[0] == loss[1] : fabs(loss[0] - loss[1]) <= 1e-5 * fabs(loss[0]),
                  "step %d: loss cpu %.9g device %.9g", step, loss[0], loss[1]);
    }
    CHECK(!g_mock || (g_calls[0] > sg0 && g_calls[3] > ad0 && g_calls[6] > ce0));
    float *a, *b;
    int64_t na, nb;
    params_host(ref, &a, &na);
    params_host(dev, &b, &nb);
    /* 1e-3 off the mock: AdamW divides by sqrt(v), so parameters with tiny gradients move by about
     * lr whatever the gradient's last bits; summation-order differences (~1e-7 relative in the
     * gradients) show up amplified in them after a few steps (measured 1.5e-4 here) */
    CHECK(na == nb && same(b, a, na, 1e-3, "parameters after 3 steps"));
    free(a);
    free(b);

    /* a checkpoint written from the device loads on the CPU, bit for bit */
    char dir[] = "/tmp/hyb-route-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK_MSG(hyb_model_save(dev, dir) == HYB_OK, "%s", hyb_error());
    hyb_model *back = NULL;
    CHECK_MSG(hyb_model_load(dir, &back) == HYB_OK, "%s", hyb_error());
    if (back) {
        params_host(dev, &a, &na); /* what the device held, read back */
        params_host(back, &b, &nb);
        CHECK(na == nb && memcmp(a, b, sizeof(float) * (size_t)na) == 0);
        free(a);
        free(b);
        hyb_model_free(back);
    }
    harness_rm_rf(dir);

    /* prefill + batched decode on the device == on the CPU; states live on the device */
    hyb_kvstate *k1 = NULL, *k2 = NULL;
    /* f32 caches: the two models' parameters differ in their last bits after training (above),
     * and an f16 cache turns that into a different rounding of some K/V values (measured 4e-4 in
     * the logits); this compares the route, the cache types have their own tests (test_mha_kv,
     * model_kvcache, the harness's device rows) */
    CHECK(hyb_kvstate_new_ex(ref, 2, 32, HYB_KV_F32, &k1) == HYB_OK);
    CHECK(hyb_kvstate_new_ex(dev, 2, 32, HYB_KV_F32, &k2) == HYB_OK);
    if (!k1 || !k2) return;
    CHECK(!g_mock || (owned(k2->layer_mem[0]) && owned(k2->layer_mem[1])));
    float l1[2 * 53], l2[2 * 53];
    for (int s = 0; s < 2; s++) {
        CHECK(hyb_model_prefill(ref, k1, s, ids + s * 5, 4 + s, l1) == HYB_OK);
        CHECK_MSG(hyb_model_prefill(dev, k2, s, ids + s * 5, 4 + s, l2) == HYB_OK, "%s",
                  hyb_error());
        CHECK(same(l2, l1, 53, 1e-4, "prefill logits"));
    }
    int32_t seqs[2] = {1, 0}, next[2] = {7, 9};
    for (int t = 0; t < 4; t++) {
        CHECK(hyb_model_decode(ref, k1, 2, seqs, next, l1) == HYB_OK);
        CHECK_MSG(hyb_model_decode(dev, k2, 2, seqs, next, l2) == HYB_OK, "%s", hyb_error());
        CHECK_MSG(same(l2, l1, 2 * 53, 1e-4, "decode logits"), "decode step %d differs", t);
        next[0] = (next[0] + 5) % 53;
        next[1] = (next[1] + 3) % 53;
    }
    /* a swap on a device model builds the new mixer on the CPU, then moves it: refused when the
     * plugin has no kernels for the device (the layer keeps its mixer), else done */
    const hyb_mixer_desc *mha_desc = NULL;
    CHECK(hyb_plugin_find("mha", &mha_desc) == HYB_OK && mha_desc);
    if (mha_desc && !mha_desc->kernels[HYB_DEV_CUDA].forward) {
        CHECK(hyb_model_swap(dev, 1, "mha", dev->map->mixers[0].table, 0, 3) ==
              HYB_ERR_UNSUPPORTED);
        CHECK_MSG(strstr(hyb_error(), "no forward kernel for device cuda"), "%s", hyb_error());
        CHECK(dev->layers[1].mixer && strcmp(dev->layers[1].mixer->type, "mamba1") == 0);
    } else if (mha_desc) {
        CHECK_MSG(hyb_model_swap(dev, 1, "mha", dev->map->mixers[0].table, 0, 3) == HYB_OK, "%s",
                  hyb_error());
        CHECK(dev->layers[1].mixer && strcmp(dev->layers[1].mixer->type, "mha") == 0);
        for (int i = 0; i < dev->n_params; i++)
            CHECK(dev->params[i]->device == HYB_DEV_CUDA);
    }

    hyb_kvstate_free(k1);
    hyb_kvstate_free(k2);
    hyb_graph_free(g1);
    hyb_graph_free(g2);
    hyb_adamw_free(o1);
    hyb_adamw_free(o2);
    hyb_model_free(ref);
    hyb_model_free(dev);
    CHECK_MSG(g_foreign == 0, "%d device calls got pointers the device did not allocate",
              g_foreign);
}

/* ---- the engine on the device: sampling there (be->sample) gives the CPU's tokens ---------- */
typedef struct {
    int events, with_logits, final_with_logits;
} ev_count;
static int count_event(void *user, const hyb_token_event *ev) {
    ev_count *c = user;
    c->events++;
    c->with_logits += ev->logits != NULL;
    if (ev->finish >= 0) c->final_with_logits += ev->logits != NULL;
    return 0;
}

enum { N_REQ = 4, MAX_TOK = 10 };
static void engine_tokens(hyb_model *m, int32_t toks[N_REQ][MAX_TOK], int *n_toks, ev_count ec[2]) {
    hyb_engine_opts o = hyb_engine_defaults();
    o.slots = 3; /* 4 requests: one waits for a slot */
    o.max_ctx = 32;
    hyb_engine *e = NULL;
    CHECK_MSG(hyb_engine_new(m, &o, &e) == HYB_OK, "%s", hyb_error());
    if (!e) return;
    static const hyb_sampler_params sp[N_REQ] = {{0.0f, 0, 1.0f, 1.0f},
                                                 {0.9f, 10, 1.0f, 1.0f},
                                                 {1.2f, 0, 0.8f, 1.2f},
                                                 {0.7f, 5, 0.9f, 1.0f}};
    for (int r = 0; r < N_REQ; r++) {
        int32_t prompt[6];
        for (int i = 0; i < 6; i++)
            prompt[i] = (r * 13 + i * 7 + 2) % 53;
        hyb_request_params p = hyb_request_defaults();
        p.max_tokens = MAX_TOK;
        p.sampler = sp[r];
        p.seed = 100 + (uint64_t)r;
        if (r >= 2) { /* a callback that wants every row's logits, and one the final only */
            p.on_token = count_event;
            p.user = &ec[r - 2];
            if (r == 3) p.flags = HYB_REQ_FINAL_LOGITS;
        }
        CHECK_MSG(hyb_engine_submit(e, prompt, 2 + r, &p, NULL) == HYB_OK, "%s", hyb_error());
    }
    CHECK_MSG(hyb_engine_run(e) == HYB_OK, "%s", hyb_error());
    hyb_completion c;
    while (hyb_engine_pop(e, &c)) {
        const int r = (int)c.id - 1;
        if (r >= 0 && r < N_REQ) {
            n_toks[r] = c.n_tokens;
            memcpy(toks[r], c.tokens, sizeof(int32_t) * (size_t)c.n_tokens);
        }
        hyb_completion_free(&c);
    }
    hyb_engine_free(e);
}

static void test_engine_on_device(void) {
    hyb_model *ref = build(), *dev = build();
    if (!ref || !dev) return;
    const hyb_backend *be = NULL;
    CHECK_MSG(hyb_backend_open(g_dev, &be) == HYB_OK, "%s", hyb_error());
    if (!be) return;
    give_mock_kernels(dev);
    CHECK_MSG(hyb_model_to_device(dev, be) == HYB_OK, "%s", hyb_error());
    int32_t t1[N_REQ][MAX_TOK], t2[N_REQ][MAX_TOK];
    int n1[N_REQ] = {0}, n2[N_REQ] = {0};
    ev_count e1[2] = {{0}}, e2[2] = {{0}};
    engine_tokens(ref, t1, n1, e1);
    long s0 = g_calls[7];
    engine_tokens(dev, t2, n2, e2);
    CHECK(!g_mock || g_calls[7] > s0); /* it sampled on the device */
    for (int r = 0; r < N_REQ; r++) {
        CHECK_MSG(n1[r] == MAX_TOK && n2[r] == n1[r] &&
                      memcmp(t1[r], t2[r], sizeof(int32_t) * (size_t)n1[r]) == 0,
                  "request %d: the device's tokens differ from the CPU's", r);
        printf("  request %d:", r);
        for (int i = 0; i < n2[r]; i++)
            printf(" %d", t2[r][i]);
        printf("\n");
    }
    /* every event of the plain callback has logits; with HYB_REQ_FINAL_LOGITS the final one
     * does (on the CPU all do) */
    CHECK(e2[0].events == MAX_TOK && e2[0].with_logits == MAX_TOK);
    CHECK(e2[1].events == MAX_TOK && e2[1].final_with_logits == 1);
    CHECK_MSG(e2[1].with_logits == 2, "%d events with logits", /* + the prefill token's */
              e2[1].with_logits);
    hyb_model_free(ref);
    hyb_model_free(dev);
}

int main(void) {
    const char *d = getenv("HYB_ROUTE_DEVICE");
    if (d && *d && strcmp(d, "mock") != 0) {
        g_dev = d;
        g_mock = 0;
        const hyb_backend *be = NULL;
        if (hyb_backend_open(g_dev, &be) != HYB_OK) {
            printf("skipped: device %s: %s\n", g_dev, hyb_error());
            return HARNESS_SKIP;
        }
        RUN(test_train_on_device);
        RUN(test_engine_on_device);
        return harness_done();
    }
    mock_init();
    RUN(test_refusals);
    RUN(test_train_on_device);
    RUN(test_engine_on_device);
    return harness_done();
}
