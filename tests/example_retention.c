/* tests/example_retention.c: the out-of-tree example plugin examples/plugin/retention.c, built by
 * the ctest fixture example_plugin_build into <build>/example-plugin and found through
 * $HYB_PLUGIN_PATH like any third-party plugin (never by path).
 *
 *  - forward vs a naive reference written here: the recurrent form, token by token, in double
 *    (projections, S_t = gamma S_{t-1} + k_t^T v_t, o_t = q_t S_t / sqrt(dk), RMS group norm,
 *    swish gate, out_proj): max |ours - ref| / max(|ref|, 1) < 1e-5
 *  - finite-difference gradients (4-point central difference in double of the f32 forward) of
 *    L = sum c . y for x and all six parameters, each also shown able to fail (1% off)
 *  - prefill then batched decode (n > 1, sequences at different positions) equals the forward
 *  - chunked prefill (two chunks continuing at pos) equals one prefill, states included
 *  - snapshot -> decode -> restore -> decode equals the uninterrupted run
 *  - config errors name file:line:col and the key; overflow of max_ctx is refused
 *  - through a wrapped CPU backend that owns every buffer: no sgemm/copy operand that is not the
 *    backend's memory (scratch from be->alloc), and results identical to the plain CPU backend
 *  - the whole tiny hybrid (examples/plugin/tiny-retention.toml): logits of prefill + decode at
 *    every position equal the full forward's
 * Odd shapes on purpose: D = 8, H = 3, dk = 5, dv = 6 (dk != dv, dk != D / H).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mixer_harness.h"
#include "hyb/config.h"
#include "hyb/graph.h"
#include "hyb/mixer.h"
#include "hyb/model.h"

enum { D = 8, NH = 3, DK = 5, DV = 6, QK = NH * DK, VD = NH * DV, NP = 6 };
static const char *TOML = "type = \"retention\"\nn_heads = 3\nhead_dim = 5\nvalue_dim = 6\n";
static const float EPS = 1e-5f;

typedef struct inst {
    hyb_mixer *m;
    hyb_toml *doc;
    const float *pp[NP];
    float *gp[NP];
    hyb_rng rng; /* the test's data: seeded with the instance's seed + 1 */
} inst;

static int inst_new(inst *I, uint64_t seed) {
    memset(I, 0, sizeof *I);
    hyb_rng_seed(&I->rng, seed + 1);
    I->doc = hyb_toml_parse_string(TOML, "test.toml");
    hyb_model_dims dims = {.d_model = D, .n_layers = 1, .layer = 0, .max_seq = 64, .norm_eps = EPS};
    int rc = hyb_mixer_new("retention", &dims, hyb_toml_root(I->doc), seed, &I->m);
    CHECK_MSG(rc == HYB_OK, "hyb_mixer_new: %s", hyb_error());
    if (rc != HYB_OK) return -1;
    CHECK(I->m->n_params == NP);
    hyb_rng r;
    hyb_rng_seed(&r, seed * 7 + 1);
    for (int i = 0; i < NP; i++) {
        hyb_tensor *t = I->m->params[i];
        /* larger than the N(0, 0.02) init, and a non-trivial group-norm weight */
        hyb_rng_fill_normal(&r, hyb_tensor_f32(t), hyb_tensor_numel(t), i == 4 ? 1.0f : 0.0f,
                            i == 4 ? 0.3f : 0.4f);
        I->pp[i] = hyb_tensor_f32(t);
        I->gp[i] = hyb_tensor_f32(t->grad);
    }
    return 0;
}

static void inst_free(inst *I) {
    hyb_mixer_free(I->m);
    hyb_toml_free(I->doc);
}

/* on the plain CPU backend with the instance's parameters */
static int fwd(inst *I, int B, int T, const float *x, float *y, void *saved, void *const *states,
               const int32_t *pos, int max_ctx) {
    return mh_fwd_on(I->m, hyb_backend_cpu(), I->pp, B, T, x, y, saved, states, pos, max_ctx);
}
static void zero_grads(inst *I) {
    for (int i = 0; i < NP; i++)
        memset(I->gp[i], 0, hyb_tensor_nbytes(I->m->params[i]));
}


/* ---- the naive reference: recurrent form, one token at a time, in double --------------------*/
static void reference(const float *const *p, const float *x, int T, double *y) {
    double S[NH][DK][DV] = {{{0}}};
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * D;
        double q[QK], k[QK], v[VD], g[VD], z[VD];
        for (int o = 0; o < QK; o++) {
            q[o] = k[o] = 0;
            for (int i = 0; i < D; i++) {
                q[o] += (double)p[0][o * D + i] * xt[i];
                k[o] += (double)p[1][o * D + i] * xt[i];
            }
        }
        for (int o = 0; o < VD; o++) {
            v[o] = g[o] = 0;
            for (int i = 0; i < D; i++) {
                v[o] += (double)p[2][o * D + i] * xt[i];
                g[o] += (double)p[3][o * D + i] * xt[i];
            }
        }
        for (int h = 0; h < NH; h++) {
            double gamma = 1.0 - pow(2.0, -5.0 - h), o[DV], ss = 0;
            for (int a = 0; a < DK; a++)
                for (int b = 0; b < DV; b++)
                    S[h][a][b] = gamma * S[h][a][b] + k[h * DK + a] * v[h * DV + b];
            for (int b = 0; b < DV; b++) {
                o[b] = 0;
                for (int a = 0; a < DK; a++)
                    o[b] += q[h * DK + a] * S[h][a][b];
                o[b] /= sqrt((double)DK);
                ss += o[b] * o[b];
            }
            double rstd = 1.0 / sqrt(ss / DV + EPS);
            for (int b = 0; b < DV; b++) {
                double gg = g[h * DV + b];
                z[h * DV + b] = gg / (1.0 + exp(-gg)) * o[b] * rstd * p[4][h * DV + b];
            }
        }
        for (int o = 0; o < D; o++) {
            y[(size_t)t * D + o] = 0;
            for (int i = 0; i < VD; i++)
                y[(size_t)t * D + o] += (double)p[5][o * VD + i] * z[i];
        }
    }
}

static void test_forward_vs_reference(void) {
    inst I;
    if (inst_new(&I, 1) != 0) return inst_free(&I);
    enum { B = 2, T = 9 };
    float *x = mh_randn(&I.rng, B * T * D, 1.0f), y[B * T * D];
    void *saved = malloc(I.m->desc->saved_bytes(I.m->self, B, T));
    CHECK_MSG(fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK, "%s", hyb_error());
    double worst = 0, ymax = 0, ref[T * D];
    for (int b = 0; b < B; b++) {
        reference(I.pp, x + b * T * D, T, ref);
        for (int i = 0; i < T * D; i++) {
            double e = fabs(y[b * T * D + i] - ref[i]) / fmax(fabs(ref[i]), 1.0);
            worst = fmax(worst, e);
            ymax = fmax(ymax, fabs(ref[i]));
        }
    }
    printf("   forward vs recurrent reference: max rel err %.3g (max |y| %.3g)\n", worst, ymax);
    CHECK(ymax > 0.1); /* not a vacuous comparison */
    CHECK_MSG(worst < 1e-5, "forward vs reference: %g", worst);
    free(saved);
    free(x);
    inst_free(&I);
}

/* ---- finite differences -------------------------------------------------------------------- */
/* L = sum_i c_i y_i; analytic = backward with dy = c. Numeric: (8 (L(+h) - L(-h)) - (L(+2h) -
 * L(-2h))) / (12 h) with h = 1e-2: truncation O(h^4) ~ 1e-8; the noise is the f32 forward (L ~ 10,
 * ulp ~ 1e-6, times 18 / (12 h) = 150: ~2e-4 absolute against gradients of O(1)). Tolerance:
 * 2e-3 of the largest numeric gradient of each tensor; a gradient 1% off must exceed it. */
static double loss_at(inst *I, int B, int T, const float *x, const float *c) {
    float *y = malloc((size_t)B * T * D * sizeof(float));
    CHECK(fwd(I, B, T, x, y, NULL, NULL, NULL, 0) == HYB_OK);
    double L = 0;
    for (int i = 0; i < B * T * D; i++)
        L += (double)c[i] * y[i];
    free(y);
    return L;
}

static double numeric(inst *I, int B, int T, float *x, const float *c, float *v) {
    const float h = 1e-2f, v0 = *v;
    double L[4];
    const float off[4] = {h, -h, 2 * h, -2 * h};
    for (int k = 0; k < 4; k++) {
        *v = v0 + off[k];
        L[k] = loss_at(I, B, T, x, c);
    }
    *v = v0;
    return (8 * (L[0] - L[1]) - (L[2] - L[3])) / (12 * (double)h);
}

static void test_gradients(void) {
    inst I;
    if (inst_new(&I, 3) != 0) return inst_free(&I);
    enum { B = 2, T = 6 };
    float *x = mh_randn(&I.rng, B * T * D, 1.0f), *c = mh_randn(&I.rng, B * T * D, 1.0f);
    float y[B * T * D], dx[B * T * D];
    void *saved = malloc(I.m->desc->saved_bytes(I.m->self, B, T));
    zero_grads(&I);
    CHECK(fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
    CHECK_MSG(mh_bwd_on(I.m, hyb_backend_cpu(), I.pp, I.gp, B, T, x, c, dx, saved) == HYB_OK, "%s",
              hyb_error());
    const char *names[NP + 1] = {"x",      "q_proj",     "k_proj",  "v_proj",
                                 "g_proj", "group_norm", "out_proj"};
    for (int w = 0; w <= NP; w++) {
        float *val = w == 0 ? x : (float *)I.pp[w - 1];
        const float *an = w == 0 ? dx : I.gp[w - 1];
        long n = w == 0 ? B * T * D : (long)hyb_tensor_numel(I.m->params[w - 1]);
        double *num = malloc((size_t)n * sizeof(double)), nmax = 0, err = 0, err_off = 0;
        for (long i = 0; i < n; i++) {
            num[i] = numeric(&I, B, T, x, c, val + i);
            nmax = fmax(nmax, fabs(num[i]));
        }
        for (long i = 0; i < n; i++) {
            err = fmax(err, fabs(an[i] - num[i]));
            err_off = fmax(err_off, fabs(1.01 * an[i] - num[i]));
        }
        err /= nmax;
        err_off /= nmax;
        printf("   d%-10s rel err %.2e (1%% off: %.2e, max |grad| %.3g)\n", names[w], err, err_off,
               nmax);
        CHECK_MSG(nmax > 1e-3, "%s: vanishing gradient", names[w]);
        CHECK_MSG(err < 2e-3, "%s: gradient off by %g", names[w], err);
        CHECK_MSG(err_off > 2e-3, "%s: the check could not see a 1%% error", names[w]);
        free(num);
    }
    free(saved);
    free(x);
    free(c);
    inst_free(&I);
}

/* ---- prefill, decode, chunks, snapshots ------------------------------------------------------*/

static void test_prefill_decode(void) {
    inst I;
    if (inst_new(&I, 5) != 0) return inst_free(&I);
    enum { NS = 3, MAXC = 16 };
    const int len[NS] = {7, 12, 10}, pre[NS] = {3, 1, 6};
    size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    CHECK(sb == NH * DK * DV * sizeof(float));
    float *x[NS], *yfull[NS];
    void *st[NS];
    double worst = 0;
    for (int s = 0; s < NS; s++) {
        x[s] = mh_randn(&I.rng, (size_t)len[s] * D, 1.0f);
        yfull[s] = malloc((size_t)len[s] * D * 4);
        CHECK(fwd(&I, 1, len[s], x[s], yfull[s], NULL, NULL, NULL, 0) == HYB_OK);
        st[s] = malloc(sb);
        memset(st[s], 0xff, sb); /* NaN garbage: a prefill at pos 0 must not read it */
        float *y = malloc((size_t)pre[s] * D * 4);
        void *sp[1] = {st[s]};
        CHECK(fwd(&I, 1, pre[s], x[s], y, NULL, sp, NULL, MAXC) == HYB_OK);
        worst = fmax(worst, harness_max_rel(y, yfull[s], (long)pre[s] * D, 1.0));
        free(y);
    }
    int pos[NS], steps = 0, max_n = 0;
    for (int s = 0; s < NS; s++)
        pos[s] = pre[s];
    for (;;) { /* batched decode of every sequence that still has tokens */
        float xs[NS * D], ys[NS * D];
        void *sp[NS];
        int32_t ps[NS];
        int which[NS], n = 0;
        for (int s = 0; s < NS; s++)
            if (pos[s] < len[s]) {
                memcpy(xs + n * D, x[s] + (size_t)pos[s] * D, D * 4);
                sp[n] = st[s];
                ps[n] = pos[s];
                which[n++] = s;
            }
        if (!n) break;
        max_n = n > max_n ? n : max_n;
        CHECK_MSG(hyb_mixer_decode(I.m, xs, ys, n, sp, ps, MAXC) == HYB_OK, "%s", hyb_error());
        for (int k = 0; k < n; k++) {
            int s = which[k];
            worst = fmax(worst, harness_max_rel(ys + k * D, yfull[s] + (size_t)pos[s] * D, D, 1.0));
            pos[s]++;
        }
        steps++;
    }
    printf("   prefill + %d decode steps (up to %d sequences): max rel err vs forward %.3g\n",
           steps, max_n, worst);
    CHECK(max_n == NS);
    CHECK_MSG(worst < 1e-5, "decode vs forward: %g", worst);
    /* a decode from a fresh (garbage) state at pos 0 equals the forward's first token */
    float ys[D];
    void *sp[1] = {st[0]};
    int32_t p0 = 0;
    memset(st[0], 0xff, sb);
    CHECK(hyb_mixer_decode(I.m, x[0], ys, 1, sp, &p0, MAXC) == HYB_OK);
    CHECK(harness_max_rel(ys, yfull[0], D, 1.0) < 1e-5);
    /* past the capacity: an argument error */
    p0 = MAXC;
    CHECK(hyb_mixer_decode(I.m, x[0], ys, 1, sp, &p0, MAXC) == HYB_ERR_ARG);
    CHECK_MSG(strstr(hyb_error(), "retention (layer 0): decode at pos 16, max_ctx = 16"), "%s",
              hyb_error());
    for (int s = 0; s < NS; s++) {
        free(x[s]);
        free(yfull[s]);
        free(st[s]);
    }
    inst_free(&I);
}

static void test_chunks_and_snapshots(void) {
    inst I;
    if (inst_new(&I, 7) != 0) return inst_free(&I);
    enum { MAXC = 20, N1 = 5, N2 = 4, N = N1 + N2 };
    size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    float *x = mh_randn(&I.rng, N * D, 1.0f), yone[N * D], ych[N * D];
    void *s_one = malloc(sb), *s_ch = malloc(sb);
    void *sp[1] = {s_one};
    CHECK(fwd(&I, 1, N, x, yone, NULL, sp, NULL, MAXC) == HYB_OK);
    sp[0] = s_ch;
    int32_t p = N1;
    CHECK(fwd(&I, 1, N1, x, ych, NULL, sp, NULL, MAXC) == HYB_OK);
    CHECK_MSG(fwd(&I, 1, N2, x + N1 * D, ych + N1 * D, NULL, sp, &p, MAXC) == HYB_OK, "%s",
              hyb_error());
    double e = harness_max_rel(ych, yone, N * D, 1.0);
    double es = harness_max_rel(s_ch, s_one, NH * DK * DV, 1.0);
    printf("   chunked vs one prefill: outputs %.3g, states %.3g\n", e, es);
    CHECK_MSG(e < 1e-5 && es < 1e-5, "chunked prefill: %g %g", e, es);
    /* snapshot after N tokens, decode 3, restore into a garbage state, decode the same 3 */
    int64_t nb = hyb_mixer_state_snapshot(I.m, s_one, N, MAXC, NULL);
    CHECK(nb == (int64_t)sb);
    void *snap = malloc((size_t)nb);
    CHECK(hyb_mixer_state_snapshot(I.m, s_one, N, MAXC, snap) == nb);
    float *xd = mh_randn(&I.rng, 3 * D, 1.0f), y1[3 * D], y2[3 * D];
    sp[0] = s_one;
    for (int t = 0; t < 3; t++) {
        int32_t pt = N + t;
        CHECK(hyb_mixer_decode(I.m, xd + t * D, y1 + t * D, 1, sp, &pt, MAXC) == HYB_OK);
    }
    memset(s_one, 0xff, sb);
    CHECK(hyb_mixer_state_restore(I.m, s_one, snap, N, MAXC) == HYB_OK);
    for (int t = 0; t < 3; t++) {
        int32_t pt = N + t;
        CHECK(hyb_mixer_decode(I.m, xd + t * D, y2 + t * D, 1, sp, &pt, MAXC) == HYB_OK);
    }
    CHECK_MSG(memcmp(y1, y2, sizeof y1) == 0, "restore: decode differs");
    /* refused: overflowing max_ctx, backward through a continued prefill */
    p = 18;
    CHECK(fwd(&I, 1, N2, x, ych, NULL, sp, &p, MAXC) == HYB_ERR_ARG);
    CHECK_MSG(strstr(hyb_error(), "exceed max_ctx = 20") != NULL, "%s", hyb_error());
    CHECK(fwd(&I, 1, N2, x, ych, NULL, NULL, &p, MAXC) == HYB_ERR_ARG); /* pos without states */
    void *saved = malloc(I.m->desc->saved_bytes(I.m->self, 1, 2));
    p = 1;
    CHECK(fwd(&I, 1, 2, x, ych, saved, sp, &p, MAXC) == HYB_ERR_UNSUPPORTED);
    free(saved);
    free(snap);
    free(xd);
    free(x);
    free(s_one);
    free(s_ch);
    inst_free(&I);
}

static void test_config_errors(void) {
    static const struct {
        const char *toml, *want;
    } cases[] = {
        {"type = \"retention\"\nn_heads = 0\n",
         "test.toml:2:1: retention (layer 0): n_heads must be in [1, 256], got 0"},
        {"type = \"retention\"\nn_heads = 3\n", "head_dim must be in [1, 1024], got 0"},
        {"type = \"retention\"\nvalue_dim = -2\n",
         "test.toml:2:1: retention (layer 0): value_dim must be in [1, 1024], got -2"},
        {"type = \"retention\"\nn_head = 2\n", "test.toml:2:1"},
        {"type = \"retention\"\nhead_dim = \"x\"\n", "test.toml:2:12"},
    };
    hyb_model_dims dims = {.d_model = 64, .n_layers = 1, .layer = 0, .max_seq = 8, .norm_eps = EPS};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        hyb_toml *doc = hyb_toml_parse_string(cases[i].toml, "test.toml");
        hyb_mixer *m = NULL;
        CHECK(hyb_mixer_new("retention", &dims, hyb_toml_root(doc), 1, &m) < 0);
        CHECK_MSG(strstr(hyb_error(), cases[i].want) != NULL, "case %zu: '%s' lacks '%s'", i,
                  hyb_error(), cases[i].want);
        hyb_mixer_free(m);
        hyb_toml_free(doc);
    }
    /* no table: defaults (H = d_model / 64, dk = dv = 64), or an error when they cannot be */
    hyb_mixer *m = NULL;
    CHECK_MSG(hyb_mixer_new("retention", &dims, NULL, 1, &m) == HYB_OK, "%s", hyb_error());
    CHECK(m && m->params[0]->shape[0] == 64 && m->params[0]->shape[1] == 64);
    hyb_mixer_free(m);
    dims.d_model = 100;
    CHECK(hyb_mixer_new("retention", &dims, NULL, 1, &m) == HYB_ERR_ARG);
    CHECK_MSG(strstr(hyb_error(), "no [mixers] table and d_model = 100"), "%s", hyb_error());
}

/* ---- only memory of the call's backend reaches it ------------------------------------------ */
/* A wrapper of the CPU backend that records its allocations and counts every sgemm/copy operand
 * it did not allocate ("foreign"). Everything the kernels get is allocated through it; the
 * kernels must then hand it only its own memory (scratch from be->alloc, views into its blocks)
 * and compute exactly what they compute on the CPU backend. */
static hyb_backend g_be;
static struct {
    const char *p[64];
    size_t n[64];
    int count;
} g_own;
static int g_foreign, g_sgemms;

static int own(const void *q) {
    for (int i = 0; i < g_own.count; i++)
        if (g_own.p[i] && (const char *)q >= g_own.p[i] &&
            (const char *)q < g_own.p[i] + g_own.n[i])
            return 1;
    return 0;
}
static void *w_alloc(const hyb_backend *be, size_t n) {
    void *q = hyb_backend_cpu()->alloc(hyb_backend_cpu(), n);
    if (q && g_own.count < 64) g_own.p[g_own.count] = q, g_own.n[g_own.count++] = n;
    return q;
}
static void w_free(const hyb_backend *be, void *q) {
    for (int i = 0; i < g_own.count; i++)
        if (g_own.p[i] == q) g_own.p[i] = NULL;
    hyb_backend_cpu()->free(hyb_backend_cpu(), q);
}
static int w_copy(const hyb_backend *be, void *d, const void *s, size_t n) {
    g_foreign += !own(d) + !own(s);
    return hyb_backend_cpu()->copy(hyb_backend_cpu(), d, s, n);
}
static int w_sgemm(const hyb_backend *be, int ta, int tb, int M, int N, int K, float al,
                   const float *A, int lda, const float *B, int ldb, float bt, float *C, int ldc) {
    g_foreign += !own(A) + !own(B) + !own(C);
    g_sgemms++;
    return hyb_backend_cpu()->sgemm(hyb_backend_cpu(), ta, tb, M, N, K, al, A, lda, B, ldb, bt, C,
                                    ldc);
}
static void *w_dup(const void *src, size_t n) {
    void *q = w_alloc(&g_be, n);
    memcpy(q, src, n);
    return q;
}

static void test_backend_memory_only(void) {
    inst I;
    if (inst_new(&I, 9) != 0) return inst_free(&I);
    g_be = *hyb_backend_cpu();
    g_be.name = "wrapped-cpu", g_be.alloc = w_alloc, g_be.free = w_free, g_be.copy = w_copy;
    g_be.sgemm = w_sgemm;
    enum { B = 2, T = 5, MAXC = 8 };
    float *x = mh_randn(&I.rng, B * T * D, 1.0f), y[B * T * D], dx[B * T * D], yd[B * D];
    size_t sv = I.m->desc->saved_bytes(I.m->self, B, T), sb = hyb_mixer_state_bytes(I.m, MAXC);
    /* the CPU run */
    void *saved = malloc(sv), *st[B] = {malloc(sb), malloc(sb)};
    zero_grads(&I);
    CHECK(fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
    CHECK(mh_bwd_on(I.m, hyb_backend_cpu(), I.pp, I.gp, B, T, x, x, dx, saved) == HYB_OK);
    CHECK(fwd(&I, B, T, x, y, NULL, st, NULL, MAXC) == HYB_OK);
    int32_t pos[B] = {T, T};
    CHECK(mh_dec_on(I.m, hyb_backend_cpu(), I.pp, B, x, yd, st, pos, MAXC) == HYB_OK);
    /* the same through the wrapper, every buffer its own */
    g_foreign = g_sgemms = 0;
    const float *wp[NP];
    float *wg[NP];
    for (int i = 0; i < NP; i++) {
        size_t n = hyb_tensor_nbytes(I.m->params[i]);
        wp[i] = w_dup(I.pp[i], n);
        wg[i] = w_alloc(&g_be, n);
        memset(wg[i], 0, n);
    }
    float *wx = w_dup(x, sizeof y), *wy = w_alloc(&g_be, sizeof y), *wdx = w_alloc(&g_be, sizeof y);
    float *wyd = w_alloc(&g_be, sizeof yd);
    void *wsaved = w_alloc(&g_be, sv), *wst[B] = {w_alloc(&g_be, sb), w_alloc(&g_be, sb)};
    CHECK_MSG(mh_fwd_on(I.m, &g_be, wp, B, T, wx, wy, wsaved, NULL, NULL, 0) == HYB_OK, "%s",
              hyb_error());
    CHECK(mh_bwd_on(I.m, &g_be, wp, wg, B, T, wx, wx, wdx, wsaved) == HYB_OK);
    CHECK(mh_fwd_on(I.m, &g_be, wp, B, T, wx, wy, NULL, wst, NULL, MAXC) == HYB_OK);
    CHECK(mh_dec_on(I.m, &g_be, wp, B, wx, wyd, wst, pos, MAXC) == HYB_OK);
    void *snap = w_alloc(&g_be, sb);
    CHECK(I.m->desc->state_snapshot(I.m->self, &g_be, wst[0], T + 1, MAXC, snap) == (int64_t)sb);
    CHECK(I.m->desc->state_restore(I.m->self, &g_be, wst[1], snap, T + 1, MAXC) == HYB_OK);
    printf("   through a wrapped backend: %d sgemm calls, %d foreign operands\n", g_sgemms,
           g_foreign);
    CHECK(g_sgemms > 0);
    CHECK_MSG(g_foreign == 0, "%d backend operands were not the backend's memory", g_foreign);
    CHECK(memcmp(wy, y, sizeof y) == 0 && memcmp(wdx, dx, sizeof dx) == 0);
    CHECK(memcmp(wyd, yd, sizeof yd) == 0);
    for (int i = 0; i < NP; i++)
        CHECK(memcmp(wg[i], I.gp[i], hyb_tensor_nbytes(I.m->params[i])) == 0);
    CHECK(memcmp(wst[1], wst[0], sb) == 0);
    for (int i = 0; i < g_own.count; i++)
        if (g_own.p[i]) w_free(&g_be, (void *)g_own.p[i]);
    free(saved);
    free(st[0]);
    free(st[1]);
    free(x);
    inst_free(&I);
}

/* ---- the tiny hybrid: prefill + decode logits equal the full forward's ----------------------- */
static void test_model_decode(void) {
    char path[4096];
    const char *src = getenv("HYB_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/examples/plugin/tiny-retention.toml", src ? src : ".");
    hyb_layermap *map;
    hyb_model *m;
    CHECK_MSG(hyb_layermap_load(path, &map) == HYB_OK, "%s", hyb_error());
    CHECK_MSG(hyb_model_build(map, 11, &m) == HYB_OK, "%s", hyb_error());
    enum { T = 24, P = 5 };
    int32_t ids[T];
    for (int t = 0; t < T; t++)
        ids[t] = (int32_t)((t * 37 + 11) % 256);
    hyb_graph *g = hyb_graph_new();
    hyb_graph_set_grad(g, 0);
    hyb_tensor *lg = hyb_model_forward(m, g, ids, 1, T);
    CHECK_MSG(lg != NULL, "%s", hyb_error());
    const int V = m->V;
    const float *full = hyb_tensor_cf32(lg);
    hyb_kvstate *kv;
    CHECK(hyb_kvstate_new_ex(m, 1, 64, HYB_KV_F32, &kv) == HYB_OK); /* f32 cache: exact */
    float *step = malloc((size_t)V * 4);
    CHECK(hyb_model_prefill(m, kv, 0, ids, P, step) == HYB_OK);
    double worst = harness_max_rel(step, full + (size_t)(P - 1) * V, V, 1.0), spread = 0;
    int32_t seq = 0;
    for (int t = P; t < T; t++) {
        CHECK(hyb_model_decode(m, kv, 1, &seq, ids + t, step) == HYB_OK);
        worst = fmax(worst, harness_max_rel(step, full + (size_t)t * V, V, 1.0));
        spread = fmax(spread, fabs(full[(size_t)t * V] - full[(size_t)(t - 1) * V]));
    }
    printf("   tiny-retention: prefill %d + decode %d, max rel err of logits %.3g\n", P, T - P,
           worst);
    CHECK(spread > 1e-3); /* positions differ: comparing against the wrong one would show */
    CHECK_MSG(worst < 1e-4, "model decode vs forward: %g", worst);
    free(step);
    hyb_kvstate_free(kv);
    hyb_graph_free(g);
    hyb_model_free(m);
}

int main(void) {
    const hyb_mixer_desc *d;
    if (hyb_plugin_find("retention", &d) != HYB_OK) {
        fprintf(stderr, "%s\n", hyb_error());
        return 1;
    }
    RUN(test_forward_vs_reference);
    RUN(test_gradients);
    RUN(test_prefill_decode);
    RUN(test_chunks_and_snapshots);
    RUN(test_config_errors);
    RUN(test_backend_memory_only);
    RUN(test_model_decode);
    return harness_done();
}
