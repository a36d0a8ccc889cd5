/* tests/test_mha.c: the `mha` mixer plugin (plugins/mha), loaded through the search path.
 *
 *  - forward and all gradients against HF LlamaAttention (float64, tests/reference/mha_ref.py ->
 *    tests/data/mha_golden.bin): max |ours - ref| / max(|ref|, 1) < 1e-5
 *  - finite-difference gradients for x and every parameter (bias variant, GQA, hd != D/H)
 *  - prefill then batched decode (n > 1, different positions) equals the full forward, also
 *    across the 512-key decode chunks with GQA groups (and alone == batched, bitwise)
 *  - chunked (continued) prefill equals one prefill, caches included
 *  - snapshot -> decode -> restore -> decode equals the uninterrupted run
 *  - forward and backward bitwise independent of the thread count (1, 2, 3)
 *  - argument errors (context overflow, backward of a continued prefill, wrong device)
 */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/config.h"
#include "hyb/graph.h"
#include "hyb/mixer.h"

typedef struct inst {
    hyb_mixer *m;
    hyb_toml *doc;
    const float *pp[8];
    float *gp[8];
} inst;

static int inst_new(inst *I, int D, const char *toml, uint64_t seed, float wscale) {
    memset(I, 0, sizeof *I);
    I->doc = hyb_toml_parse_string(toml, "test.toml");
    CHECK_MSG(I->doc != NULL, "toml: %s", hyb_error());
    if (!I->doc) return -1;
    hyb_model_dims dims = {
        .d_model = D, .n_layers = 1, .layer = 0, .max_seq = 64, .norm_eps = 1e-5f};
    int rc = hyb_mixer_new("mha", &dims, hyb_toml_root(I->doc), seed, &I->m);
    CHECK_MSG(rc == HYB_OK, "hyb_mixer_new: %s", hyb_error());
    if (rc != HYB_OK) return -1;
    hyb_rng r;
    hyb_rng_seed(&r, seed * 7 + 1);
    for (int i = 0; i < I->m->n_params; i++) {
        hyb_tensor *t = I->m->params[i];
        /* larger than the N(0, 0.02) init so the softmax is far from uniform */
        if (wscale > 0)
            hyb_rng_fill_normal(&r, hyb_tensor_f32(t), hyb_tensor_numel(t), 0.0f, wscale);
        I->pp[i] = hyb_tensor_f32(t);
        I->gp[i] = hyb_tensor_f32(t->grad);
    }
    return 0;
}

static void inst_free(inst *I) {
    hyb_mixer_free(I->m);
    hyb_toml_free(I->doc);
}

static int fwd(inst *I, int B, int T, const float *x, float *y, void *saved, void *const *states,
               const int32_t *pos, int max_ctx) {
    hyb_mixer_fwd a = {.B = B,
                       .T = T,
                       .be = hyb_backend_cpu(),
                       .x = x,
                       .y = y,
                       .params = I->pp,
                       .saved = saved,
                       .states = states,
                       .pos = pos,
                       .max_ctx = max_ctx};
    return I->m->desc->kernels[HYB_DEV_CPU].forward(I->m->self, &a);
}

static int bwd(inst *I, int B, int T, const float *x, const float *dy, float *dx,
               const void *saved) {
    hyb_mixer_bwd a = {.B = B,
                       .T = T,
                       .be = hyb_backend_cpu(),
                       .x = x,
                       .dy = dy,
                       .dx = dx,
                       .params = I->pp,
                       .grads = I->gp,
                       .saved = saved};
    return I->m->desc->kernels[HYB_DEV_CPU].backward(I->m->self, &a);
}

static float *randn(hyb_rng *r, size_t n, float s) {
    float *p = malloc(n * sizeof(float));
    hyb_rng_fill_normal(r, p, (int64_t)n, 0.0f, s);
    return p;
}

static double max_abs(const float *a, long n) {
    double m = 0;
    for (long i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* ---- golden: HF LlamaAttention ----------------------------------------------------------------
 */

static void golden_case(const char *file) {
    char path[4096];
    const char *dd = getenv("HYB_TEST_DATA");
    snprintf(path, sizeof path, "%s/%s", dd ? dd : "tests/data", file);
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s (run tests/reference/mha_ref.py)", path);
    if (!f) return;
    int32_t h[8];
    double theta;
    CHECK(fread(h, 4, 8, f) == 8 && fread(&theta, 8, 1, f) == 1);
    CHECK(h[0] == 0x4D484131);
    int B = h[1], T = h[2], D = h[3], H = h[4], KV = h[5], hd = h[6];
    size_t nx = (size_t)B * T * D, nq = (size_t)H * hd * D, nk = (size_t)KV * hd * D;
    size_t sizes[12] = {nx, nq, nk, nk, nq, nx, nx, nx, nq, nk, nk, nq};
    float *arr[12];
    for (int i = 0; i < 12; i++) {
        arr[i] = malloc(sizes[i] * sizeof(float));
        CHECK(fread(arr[i], sizeof(float), sizes[i], f) == sizes[i]);
    }
    fclose(f);
    char toml[256];
    snprintf(toml, sizeof toml,
             "type = \"mha\"\nn_heads = %d\nn_kv_heads = %d\nhead_dim = %d\n"
             "rope_theta = %.17g\n",
             H, KV, hd, theta);
    inst I;
    if (inst_new(&I, D, toml, 1, 0) == 0) {
        for (int i = 0; i < 4; i++)
            memcpy((float *)I.pp[i], arr[1 + i], sizes[1 + i] * sizeof(float));
        float *y = malloc(nx * sizeof(float)), *dx = malloc(nx * sizeof(float));
        CHECK(I.m->n_params == 4);
        void *saved = malloc(I.m->desc->saved_bytes(I.m->self, B, T));
        CHECK(fwd(&I, B, T, arr[0], y, saved, NULL, NULL, 0) == HYB_OK);
        double e = harness_max_rel(y, arr[5], (long)nx, 1.0);
        printf("   %s [B=%d T=%d D=%d H=%d KV=%d hd=%d]\n", file, B, T, D, H, KV, hd);
        printf("   y vs HF: max rel err %.3g (max |y| %.3g)\n", e, max_abs(arr[5], (long)nx));
        CHECK_MSG(e < 1e-5, "y: max rel err %g", e);
        CHECK_MSG(bwd(&I, B, T, arr[0], arr[6], dx, saved) == HYB_OK, "%s", hyb_error());
        e = harness_max_rel(dx, arr[7], (long)nx, 1.0);
        printf("   dx vs HF: max rel err %.3g\n", e);
        CHECK_MSG(e < 1e-5, "dx: max rel err %g", e);
        /* weight gradients are sums over all B*T tokens, so single elements can cancel far
         * below the size of their terms: compare max |ours - ref| against the largest element
         * (a stricter reading of Fast-LLM's relative RMS 1e-5), and report the relative RMS */
        const char *gn[4] = {"dWq", "dWk", "dWv", "dWo"};
        for (int i = 0; i < 4; i++) {
            long n = (long)sizes[8 + i];
            double mx = max_abs(arr[8 + i], n);
            e = harness_max_rel(I.gp[i], arr[8 + i], n, mx);
            double rr = harness_rel_rms(I.gp[i], arr[8 + i], n);
            printf("   %s vs HF: max err / max|ref| %.3g, rel rms %.3g (max|ref| %.3g)\n", gn[i], e,
                   rr, mx);
            CHECK_MSG(e < 1e-5 && rr < 1e-5, "%s: max err / max|ref| %g, rel rms %g", gn[i], e, rr);
        }
        /* gradients accumulate: a second backward doubles them */
        CHECK(bwd(&I, B, T, arr[0], arr[6], dx, saved) == HYB_OK);
        e = 0;
        for (size_t k = 0; k < sizes[8]; k++) {
            double d = fabs(I.gp[0][k] - 2.0 * arr[8][k]);
            e = d > e ? d : e;
        }
        CHECK_MSG(e < 1e-4 * (1 + max_abs(arr[8], (long)sizes[8])), "accumulation: %g", e);
        free(y);
        free(dx);
        free(saved);
    }
    inst_free(&I);
    for (int i = 0; i < 12; i++)
        free(arr[i]);
}

static void test_golden_hf(void) {
    golden_case("mha_golden.bin");
}
/* T = 150: several 64-query attention blocks, the last one partial */
static void test_golden_hf_long(void) {
    golden_case("mha_golden_long.bin");
}

/* ---- finite differences -----------------------------------------------------------------------
 */

/* L = sum(y * dy) in double from one f32 forward. */
static double loss(inst *I, int B, int T, const float *x, const float *dy, float *y) {
    CHECK(fwd(I, B, T, x, y, NULL, NULL, NULL, 0) == HYB_OK);
    double L = 0;
    for (long i = 0; i < (long)B * T * I->m->dims.d_model; i++)
        L += (double)y[i] * dy[i];
    return L;
}

/* Central differences, step h, on every element of v (a parameter or x). The forward is f32,
 * so L carries rounding noise of ~1e-7 * sum|y*dy| (~1e-6 here); with h = 1e-2 that is ~1e-4
 * in the quotient, and the O(h^2) truncation is ~1e-5. Tolerance per element:
 * |fd - an| <= 2e-3 + 2e-3 |an|, and normwise ||fd - an|| / ||an|| < 1e-3. A wrong term in the
 * backward (sign, missing softmax or RoPE term, wrong head group) gives errors of order |an|. */
static void fd_check(inst *I, const char *what, float *v, const float *an, long n, int B, int T,
                     const float *x, const float *dy, float *y) {
    const float h = 1e-2f;
    double num = 0, den = 0, worst = 0;
    long bad = 0;
    for (long i = 0; i < n; i++) {
        float keep = v[i];
        v[i] = keep + h;
        double lp = loss(I, B, T, x, dy, y);
        v[i] = keep - h;
        double lm = loss(I, B, T, x, dy, y);
        v[i] = keep;
        double fd = (lp - lm) / ((double)(keep + h) - (double)(keep - h));
        double d = fabs(fd - an[i]);
        if (d > 2e-3 + 2e-3 * fabs(an[i])) {
            if (bad < 3)
                harness_fail(__FILE__, __LINE__, "%s[%ld]: fd %.6g vs analytic %.6g", what, i, fd,
                             (double)an[i]);
            bad++;
        }
        num += d * d;
        den += (double)an[i] * an[i];
        worst = d > worst ? d : worst;
    }
    double rel = sqrt(num / (den > 0 ? den : 1));
    printf("   %-14s n=%-4ld |grad| %.3g  normwise rel err %.2g  max abs err %.2g\n", what, n,
           sqrt(den), rel, worst);
    CHECK_MSG(rel < 1e-3, "%s: normwise rel err %g", what, rel);
    CHECK_MSG(den > 0, "%s: gradient is all zero", what);
}

static void test_fd_gradients(void) {
    /* GQA 4:2, hd = 6 != D / H = 2, q/k/v biases, positions up to T-1 with a small theta so
     * the rotation angles are large */
    const int B = 2, T = 5, D = 8;
    inst I;
    if (inst_new(&I, D,
                 "n_heads = 4\nn_kv_heads = 2\nhead_dim = 6\nrope_theta = 50.0\nbias = true\n", 5,
                 0.4f) != 0) {
        inst_free(&I);
        return;
    }
    hyb_rng r;
    hyb_rng_seed(&r, 99);
    long nx = (long)B * T * D;
    float *x = randn(&r, nx, 1.0f), *dy = randn(&r, nx, 1.0f), *y = malloc(nx * 4),
          *dx = malloc(nx * 4);
    for (int i = 4; i < 7; i++)
        hyb_rng_fill_normal(&r, (float *)I.pp[i], hyb_tensor_numel(I.m->params[i]), 0, 0.3f);
    void *saved = malloc(I.m->desc->saved_bytes(I.m->self, B, T));
    CHECK(fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
    CHECK(bwd(&I, B, T, x, dy, dx, saved) == HYB_OK);
    fd_check(&I, "x", x, dx, nx, B, T, x, dy, y);
    for (int i = 0; i < I.m->n_params; i++)
        fd_check(&I, I.m->decls[i].name, (float *)I.pp[i], I.gp[i],
                 (long)hyb_tensor_numel(I.m->params[i]), B, T, x, dy, y);
    free(x);
    free(dy);
    free(y);
    free(dx);
    free(saved);
    inst_free(&I);
}

/* ---- decode -----------------------------------------------------------------------------------
 */

#define DD 16
static const char *DEC_TOML = "n_heads = 4\nn_kv_heads = 2\nhead_dim = 8\nrope_theta = 10000.0\n";

static void test_prefill_then_decode(void) {
    inst I;
    if (inst_new(&I, DD, DEC_TOML, 11, 0.3f) != 0) {
        inst_free(&I);
        return;
    }
    enum { NS = 3, MAXC = 16 };
    const int len[NS] = {9, 6, 11}, pre[NS] = {4, 1, 7};
    hyb_rng r;
    hyb_rng_seed(&r, 5);
    float *x[NS], *yfull[NS];
    void *st[NS];
    size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    CHECK(sb == (size_t)2 * 2 * 8 * MAXC * 4);
    for (int s = 0; s < NS; s++) {
        x[s] = randn(&r, (size_t)len[s] * DD, 1.0f);
        yfull[s] = malloc((size_t)len[s] * DD * 4);
        CHECK(fwd(&I, 1, len[s], x[s], yfull[s], NULL, NULL, NULL, 0) == HYB_OK);
        st[s] = calloc(1, sb);
    }
    double worst = 0;
    float ybuf[MAXC * DD];
    /* prefill each sequence's prefix (different lengths) into its own state */
    for (int s = 0; s < NS; s++) {
        void *sp[1] = {st[s]};
        CHECK(fwd(&I, 1, pre[s], x[s], ybuf, NULL, sp, NULL, MAXC) == HYB_OK);
        double e = harness_max_rel(ybuf, yfull[s], (long)pre[s] * DD, 1.0);
        worst = e > worst ? e : worst;
    }
    /* then batched decode: every step takes all sequences that still have tokens */
    int pos[NS];
    for (int s = 0; s < NS; s++)
        pos[s] = pre[s];
    int steps = 0, max_n = 0;
    for (;;) {
        float xs[NS * DD], ys[NS * DD];
        void *sp[NS];
        int32_t ps[NS];
        int which[NS], n = 0;
        for (int s = 0; s < NS; s++)
            if (pos[s] < len[s]) {
                memcpy(xs + n * DD, x[s] + (size_t)pos[s] * DD, DD * 4);
                sp[n] = st[s];
                ps[n] = pos[s];
                which[n++] = s;
            }
        if (!n) break;
        max_n = n > max_n ? n : max_n;
        CHECK_MSG(hyb_mixer_decode(I.m, xs, ys, n, sp, ps, MAXC) == HYB_OK, "%s", hyb_error());
        for (int k = 0; k < n; k++) {
            int s = which[k];
            double e = harness_max_rel(ys + k * DD, yfull[s] + (size_t)pos[s] * DD, DD, 1.0);
            worst = e > worst ? e : worst;
            pos[s]++;
        }
        steps++;
    }
    printf("   %d decode steps (up to %d sequences each), max rel err vs full forward %.3g\n",
           steps, max_n, worst);
    CHECK(max_n == NS);
    CHECK_MSG(worst < 1e-5, "decode vs forward: %g", worst);
    /* decode past the capacity is an argument error, not a crash */
    {
        float xs[DD], ys[DD];
        int32_t p = MAXC;
        void *sp[1] = {st[0]};
        memset(xs, 0, sizeof xs);
        CHECK(hyb_mixer_decode(I.m, xs, ys, 1, sp, &p, MAXC) == HYB_ERR_ARG);
        CHECK_MSG(strstr(hyb_error(), "max_ctx = 16") != NULL, "%s", hyb_error());
    }
    for (int s = 0; s < NS; s++) {
        free(x[s]);
        free(yfull[s]);
        free(st[s]);
    }
    inst_free(&I);
}

static void test_chunked_prefill(void) {
    inst I;
    if (inst_new(&I, DD, DEC_TOML, 12, 0.3f) != 0) {
        inst_free(&I);
        return;
    }
    enum { MAXC = 20 };
    const int first[2] = {3, 5}, second = 4;
    hyb_rng r;
    hyb_rng_seed(&r, 6);
    size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    double worst = 0;
    float *x[2], *yone[2];
    void *st_one[2], *st_chunk[2];
    for (int s = 0; s < 2; s++) {
        int n = first[s] + second;
        x[s] = randn(&r, (size_t)n * DD, 1.0f);
        yone[s] = malloc((size_t)n * DD * 4);
        st_one[s] = calloc(1, sb);
        st_chunk[s] = calloc(1, sb);
        void *sp[1] = {st_one[s]};
        CHECK(fwd(&I, 1, n, x[s], yone[s], NULL, sp, NULL, MAXC) == HYB_OK);
        float *y1 = malloc((size_t)first[s] * DD * 4);
        sp[0] = st_chunk[s];
        CHECK(fwd(&I, 1, first[s], x[s], y1, NULL, sp, NULL, MAXC) == HYB_OK);
        double e = harness_max_rel(y1, yone[s], (long)first[s] * DD, 1.0);
        worst = e > worst ? e : worst;
        free(y1);
    }
    /* second chunk of both sequences in one batch, each continuing at its own position */
    float x2[2 * second * DD], y2[2 * second * DD];
    for (int s = 0; s < 2; s++)
        memcpy(x2 + s * second * DD, x[s] + (size_t)first[s] * DD, second * DD * 4);
    int32_t pos[2] = {first[0], first[1]};
    CHECK_MSG(fwd(&I, 2, second, x2, y2, NULL, st_chunk, pos, MAXC) == HYB_OK, "%s", hyb_error());
    for (int s = 0; s < 2; s++) {
        double e = harness_max_rel(y2 + s * second * DD, yone[s] + (size_t)first[s] * DD,
                                   second * DD, 1.0);
        worst = e > worst ? e : worst;
        /* caches agree on the filled rows (head-major: [2 KV heads, MAXC, 8] for K, then V) */
        long filled = (long)(first[s] + second) * 8;
        const float *a = st_chunk[s], *b = st_one[s];
        double ek = 0, ev = 0;
        for (int g = 0; g < 2; g++) {
            double e1 = harness_max_rel(a + g * MAXC * 8, b + g * MAXC * 8, filled, 1.0);
            double e2 =
                harness_max_rel(a + (2 + g) * MAXC * 8, b + (2 + g) * MAXC * 8, filled, 1.0);
            ek = e1 > ek ? e1 : ek;
            ev = e2 > ev ? e2 : ev;
        }
        CHECK_MSG(ek < 1e-6 && ev < 1e-6, "cache: K %g V %g", ek, ev);
    }
    printf("   chunked vs one prefill: max rel err %.3g\n", worst);
    CHECK_MSG(worst < 1e-5, "chunked prefill: %g", worst);
    /* overflow of the capacity and backward through a continued prefill are refused */
    float yb[2 * 20 * DD], xb[2 * 20 * DD];
    memset(xb, 0, sizeof xb);
    int32_t p2[2] = {10, 17};
    CHECK(fwd(&I, 2, 4, xb, yb, NULL, st_chunk, p2, MAXC) == HYB_ERR_ARG);
    CHECK_MSG(strstr(hyb_error(), "exceeds") != NULL, "%s", hyb_error());
    void *saved = malloc(I.m->desc->saved_bytes(I.m->self, 2, 2));
    int32_t p3[2] = {1, 0};
    CHECK(fwd(&I, 2, 2, xb, yb, saved, st_chunk, p3, MAXC) == HYB_ERR_UNSUPPORTED);
    CHECK(fwd(&I, 2, 2, xb, yb, NULL, NULL, p3, MAXC) == HYB_ERR_ARG); /* pos without states */
    /* no CUDA kernels: asking for them is a clear error naming mixer, layer, op, device */
    CHECK(hyb_mixer_kernel_check(I.m, HYB_DEV_CUDA, HYB_MIXER_FORWARD) == HYB_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(hyb_error(), "has no forward kernel for device cuda") != NULL, "%s",
              hyb_error());
    free(saved);
    for (int s = 0; s < 2; s++) {
        free(x[s]);
        free(yone[s]);
        free(st_one[s]);
        free(st_chunk[s]);
    }
    inst_free(&I);
}

static void test_snapshot_restore(void) {
    inst I;
    if (inst_new(&I, DD, DEC_TOML, 13, 0.3f) != 0) {
        inst_free(&I);
        return;
    }
    enum { MAXC = 24, P = 6, N = 5 };
    hyb_rng r;
    hyb_rng_seed(&r, 7);
    float *x = randn(&r, (size_t)(P + N) * DD, 1.0f), *xalt = randn(&r, (size_t)N * DD, 1.0f);
    size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    void *st = calloc(1, sb), *st2 = calloc(1, sb);
    float y[(P + N) * DD], ya[N * DD], yb[N * DD];
    void *sp[1] = {st};
    CHECK(fwd(&I, 1, P, x, y, NULL, sp, NULL, MAXC) == HYB_OK);
    const hyb_mixer_desc *d = I.m->desc;
    int64_t nb = d->state_snapshot(I.m->self, hyb_backend_cpu(), st, P, MAXC, NULL);
    CHECK(nb == (int64_t)2 * P * 2 * 8 * 4); /* only the first P tokens */
    void *snap = malloc((size_t)nb);
    CHECK(d->state_snapshot(I.m->self, hyb_backend_cpu(), st, P, MAXC, snap) == nb);
    /* decode N other tokens (diverging), then restore and decode the real ones */
    for (int t = 0; t < N; t++) {
        int32_t p = P + t;
        CHECK(hyb_mixer_decode(I.m, xalt + t * DD, ya + t * DD, 1, sp, &p, MAXC) == HYB_OK);
    }
    CHECK(d->state_restore(I.m->self, hyb_backend_cpu(), st, snap, P, MAXC) == HYB_OK);
    for (int t = 0; t < N; t++) {
        int32_t p = P + t;
        CHECK(hyb_mixer_decode(I.m, x + (P + t) * DD, ya + t * DD, 1, sp, &p, MAXC) == HYB_OK);
    }
    /* uninterrupted: a fresh state, same prefill, same decode */
    void *sp2[1] = {st2};
    CHECK(fwd(&I, 1, P, x, y, NULL, sp2, NULL, MAXC) == HYB_OK);
    for (int t = 0; t < N; t++) {
        int32_t p = P + t;
        CHECK(hyb_mixer_decode(I.m, x + (P + t) * DD, yb + t * DD, 1, sp2, &p, MAXC) == HYB_OK);
    }
    CHECK(memcmp(ya, yb, sizeof ya) == 0); /* bitwise: same computation on the same state */
    /* restore into another, garbage-filled state works too (the snapshot is self-contained) */
    void *st3 = malloc(sb);
    memset(st3, 0x7f, sb);
    CHECK(d->state_restore(I.m->self, hyb_backend_cpu(), st3, snap, P, MAXC) == HYB_OK);
    void *sp3[1] = {st3};
    for (int t = 0; t < N; t++) {
        int32_t p = P + t;
        CHECK(hyb_mixer_decode(I.m, x + (P + t) * DD, ya + t * DD, 1, sp3, &p, MAXC) == HYB_OK);
    }
    CHECK(memcmp(ya, yb, sizeof ya) == 0);
    CHECK(d->state_snapshot(I.m->self, hyb_backend_cpu(), st, MAXC + 1, MAXC, NULL) < 0);
    free(st3);
    free(snap);
    free(x);
    free(xalt);
    free(st);
    free(st2);
    inst_free(&I);
}

/* Long sequences: the blocked prefill (64-query blocks) against the per-token decode path (a
 * separate implementation), and a chunked prefill whose chunks straddle block boundaries. */
static void test_long_sequence(void) {
    inst I;
    if (inst_new(&I, DD, DEC_TOML, 15, 0.3f) != 0) {
        inst_free(&I);
        return;
    }
    enum { T = 150, C1 = 70, MAXC = 160 };
    hyb_rng r;
    hyb_rng_seed(&r, 9);
    float *x = randn(&r, (size_t)T * DD, 1.0f), *yf = malloc((size_t)T * DD * 4),
          *yc = malloc((size_t)T * DD * 4), *yd = malloc((size_t)T * DD * 4);
    size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    void *st = calloc(1, sb), *st2 = calloc(1, sb);
    CHECK(fwd(&I, 1, T, x, yf, NULL, NULL, NULL, 0) == HYB_OK);
    void *sp[1] = {st};
    int32_t p = C1;
    CHECK(fwd(&I, 1, C1, x, yc, NULL, sp, NULL, MAXC) == HYB_OK);
    CHECK(fwd(&I, 1, T - C1, x + C1 * DD, yc + C1 * DD, NULL, sp, &p, MAXC) == HYB_OK);
    double ec = harness_max_rel(yc, yf, T * DD, 1.0);
    void *sp2[1] = {st2};
    CHECK(fwd(&I, 1, 1, x, yd, NULL, sp2, NULL, MAXC) == HYB_OK);
    for (int t = 1; t < T; t++) {
        p = t;
        CHECK(hyb_mixer_decode(I.m, x + t * DD, yd + t * DD, 1, sp2, &p, MAXC) == HYB_OK);
    }
    double ed = harness_max_rel(yd, yf, T * DD, 1.0);
    printf("   T=%d: chunked (%d+%d) vs one prefill %.3g, token-by-token decode vs prefill %.3g\n",
           T, C1, T - C1, ec, ed);
    CHECK_MSG(ec < 1e-5 && ed < 1e-5, "chunked %g decode %g", ec, ed);
    free(x);
    free(yf);
    free(yc);
    free(yd);
    free(st);
    free(st2);
    inst_free(&I);
}

/* A decode step big enough for mha to open its OpenMP region (n * H * ctx * hd > 2e5):
 * realistic head size 64, multi-query (KV = 1), 4 sequences at different positions ~200. */
static void test_decode_large_step(void) {
    enum { D = 64, NS = 4, MAXC = 256 };
    inst I;
    if (inst_new(&I, D, "n_heads = 4\nn_kv_heads = 1\nhead_dim = 64\nrope_theta = 100000.0\n", 16,
                 0.15f) != 0) {
        inst_free(&I);
        return;
    }
    const int len[NS] = {230, 201, 256, 215};
    hyb_rng r;
    hyb_rng_seed(&r, 10);
    size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    void *st[NS];
    float *x[NS], *yf[NS], xs[NS * D], ys[NS * D];
    int32_t pos[NS];
    for (int s = 0; s < NS; s++) {
        x[s] = randn(&r, (size_t)len[s] * D, 1.0f);
        yf[s] = malloc((size_t)len[s] * D * 4);
        st[s] = calloc(1, sb);
        void *sp[1] = {st[s]};
        /* prefill all but the last token into the state, full forward for the reference */
        CHECK(fwd(&I, 1, len[s], x[s], yf[s], NULL, NULL, NULL, 0) == HYB_OK);
        float *yp = malloc((size_t)len[s] * D * 4);
        CHECK(fwd(&I, 1, len[s] - 1, x[s], yp, NULL, sp, NULL, MAXC) == HYB_OK);
        free(yp);
        pos[s] = len[s] - 1;
        memcpy(xs + s * D, x[s] + (size_t)pos[s] * D, D * 4);
    }
    CHECK_MSG(hyb_mixer_decode(I.m, xs, ys, NS, st, pos, MAXC) == HYB_OK, "%s", hyb_error());
    double worst = 0;
    for (int s = 0; s < NS; s++) {
        double e = harness_max_rel(ys + s * D, yf[s] + (size_t)pos[s] * D, D, 1.0);
        worst = e > worst ? e : worst;
        free(x[s]);
        free(yf[s]);
        free(st[s]);
    }
    printf("   n=%d at positions %d..%d (hd=64, KV=1): max rel err vs prefill %.3g\n", NS, 200, 255,
           worst);
    CHECK_MSG(worst < 1e-5, "large decode step: %g", worst);
    inst_free(&I);
}

/* ---- as a graph node (core/graph/mixer_apply.c) -----------------------------------------------
 */

/* Decode across the 512-key chunks of mha's decode (tasks per sequence x KV head x chunk, merged
 * afterwards), GQA groups of 3, a batch of sequences at different lengths on both sides of the
 * chunk boundaries: equals the full forward, and a sequence decoded alone gives bitwise the same
 * output as in the batch (the chunking depends only on its own length). */
static void test_decode_chunks(void) {
    enum { D = 48, NS = 4, MAXC = 1200, STEPS = 4 };
    inst I;
    if (inst_new(&I, D, "n_heads = 6\nn_kv_heads = 2\nhead_dim = 16\nrope_theta = 10000.0\n", 17,
                 0.15f) != 0) {
        inst_free(&I);
        return;
    }
    /* decode positions pre .. pre+STEPS-1: 509..512 crosses one boundary (1 -> 2 chunks),
     * 1021..1024 the next, 3 stays in one chunk, 700 in two */
    const int pre[NS] = {509, 1021, 3, 700};
    hyb_rng r;
    hyb_rng_seed(&r, 11);
    size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    void *st[NS], *st1[NS];
    float *x[NS], *yf[NS];
    for (int s = 0; s < NS; s++) {
        int len = pre[s] + STEPS;
        x[s] = randn(&r, (size_t)len * D, 1.0f);
        yf[s] = malloc((size_t)len * D * 4);
        st[s] = calloc(1, sb);
        st1[s] = calloc(1, sb);
        CHECK(fwd(&I, 1, len, x[s], yf[s], NULL, NULL, NULL, 0) == HYB_OK);
        float *yp = malloc((size_t)pre[s] * D * 4);
        void *sp[1] = {st[s]};
        CHECK(fwd(&I, 1, pre[s], x[s], yp, NULL, sp, NULL, MAXC) == HYB_OK);
        memcpy(st1[s], st[s], sb);
        free(yp);
    }
    double worst = 0;
    int same = 1;
    for (int k = 0; k < STEPS; k++) {
        float xs[NS * D], ys[NS * D], y1[D];
        int32_t pos[NS];
        for (int s = 0; s < NS; s++) {
            pos[s] = pre[s] + k;
            memcpy(xs + s * D, x[s] + (size_t)pos[s] * D, D * 4);
        }
        CHECK_MSG(hyb_mixer_decode(I.m, xs, ys, NS, st, pos, MAXC) == HYB_OK, "%s", hyb_error());
        for (int s = 0; s < NS; s++) {
            double e = harness_max_rel(ys + s * D, yf[s] + (size_t)pos[s] * D, D, 1.0);
            worst = e > worst ? e : worst;
            void *sp[1] = {st1[s]};
            CHECK(hyb_mixer_decode(I.m, xs + s * D, y1, 1, sp, &pos[s], MAXC) == HYB_OK);
            same &= memcmp(y1, ys + s * D, sizeof y1) == 0;
        }
    }
    for (int s = 0; s < NS; s++) {
        free(x[s]);
        free(yf[s]);
        free(st[s]);
        free(st1[s]);
    }
    printf("   n=%d, positions up to %d (H=6, KV=2, hd=16): max rel err vs forward %.3g, "
           "alone == batched: %s\n",
           NS, pre[1] + STEPS - 1, worst, same ? "yes" : "no");
    CHECK_MSG(worst < 1e-5, "decode across chunks: %g", worst);
    CHECK_MSG(same, "a sequence decoded alone differs from the same sequence in a batch");
    inst_free(&I);
}

/* y = mixer(x), loss = CE(y Wl^T): the tape's backward must hand the plugin dL/dy and collect
 * exactly what a direct backward with that dy gives (dx accumulated into x->grad, parameter grads
 * into ->grad). */
static void test_graph_node(void) {
    inst I;
    if (inst_new(&I, DD, DEC_TOML, 14, 0.3f) != 0) {
        inst_free(&I);
        return;
    }
    enum { B = 2, T = 5, V = 11 };
    hyb_rng r;
    hyb_rng_seed(&r, 8);
    int64_t xs[3] = {B, T, DD}, ws[2] = {V, DD};
    hyb_tensor *x = hyb_tensor_new(HYB_F32, 3, xs), *W = hyb_tensor_new(HYB_F32, 2, ws);
    x->grad = hyb_tensor_new(HYB_F32, 3, xs);
    W->grad = hyb_tensor_new(HYB_F32, 2, ws);
    x->requires_grad = W->requires_grad = 1;
    hyb_rng_fill_normal(&r, hyb_tensor_f32(x), B * T * DD, 0, 1);
    hyb_rng_fill_normal(&r, hyb_tensor_f32(W), V * DD, 0, 0.5f);
    int32_t tgt[B * T];
    for (int i = 0; i < B * T; i++)
        tgt[i] = (i * 7 + 3) % V;
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *y = hyb_mixer_apply(g, I.m, x, NULL, NULL, 0);
    CHECK_MSG(y != NULL, "%s", hyb_error());
    hyb_tensor *L = y ? hyb_cross_entropy(g, hyb_matmul(g, y, W), tgt, NULL) : NULL;
    CHECK_MSG(L && hyb_graph_backward(g, L, 1.0f) == HYB_OK, "%s", hyb_error());
    if (L && y->grad) {
        float yd[B * T * DD], dx[B * T * DD];
        void *saved = malloc(I.m->desc->saved_bytes(I.m->self, B, T));
        CHECK(fwd(&I, B, T, hyb_tensor_f32(x), yd, saved, NULL, NULL, 0) == HYB_OK);
        CHECK(harness_max_rel(hyb_tensor_f32(y), yd, B * T * DD, 1.0) == 0);
        float *gd[8];
        for (int i = 0; i < I.m->n_params; i++)
            gd[i] = calloc((size_t)hyb_tensor_numel(I.m->params[i]), 4);
        hyb_mixer_bwd a = {.B = B,
                           .T = T,
                           .be = hyb_backend_cpu(),
                           .x = hyb_tensor_f32(x),
                           .dy = hyb_tensor_f32(y->grad),
                           .dx = dx,
                           .params = I.pp,
                           .grads = gd,
                           .saved = saved};
        CHECK(I.m->desc->kernels[HYB_DEV_CPU].backward(I.m->self, &a) == HYB_OK);
        double e = harness_max_rel(hyb_tensor_f32(x->grad), dx, B * T * DD, 1e-3);
        CHECK_MSG(e < 1e-6, "dx via graph vs direct: %g", e);
        for (int i = 0; i < I.m->n_params; i++) {
            long n = (long)hyb_tensor_numel(I.m->params[i]);
            e = harness_max_rel(I.gp[i], gd[i], n, 1e-3);
            CHECK_MSG(e < 1e-6 && max_abs(gd[i], n) > 0, "%s via graph vs direct: %g",
                      I.m->decls[i].name, e);
            free(gd[i]);
        }
        free(saved);
    }
    hyb_graph_free(g);
    hyb_tensor_free(x->grad);
    x->grad = NULL;
    hyb_tensor_free(W->grad);
    W->grad = NULL;
    hyb_tensor_free(x);
    hyb_tensor_free(W);
    inst_free(&I);
}

/* Forward and backward must not depend on the number of threads: the prefill/training region
 * splits (sequence, head, query block) tasks and backward (sequence, KV head) tasks over threads
 * with dynamic scheduling, and each task must own its outputs and keep a fixed summation order.
 * Large enough to open the regions (score work > 2e5 multiply-adds); bitwise comparison. */
static void test_threads_bitwise(void) {
#ifdef _OPENMP
    inst I;
    if (inst_new(&I, DD, DEC_TOML, 17, 0.3f) != 0) {
        inst_free(&I);
        return;
    }
    enum { B = 3, T = 150 };
    const long n = (long)B * T * DD;
    hyb_rng r;
    hyb_rng_seed(&r, 21);
    float *x = randn(&r, (size_t)n, 1.0f), *dy = randn(&r, (size_t)n, 1.0f);
    void *saved = malloc(I.m->desc->saved_bytes(I.m->self, B, T));
    const int threads[3] = {1, 2, 3};
    float *out[3][2 + 8] = {{0}};
    const int saved_threads = omp_get_max_threads();
    for (int k = 0; k < 3; k++) {
        omp_set_num_threads(threads[k]);
        for (int i = 0; i < I.m->n_params; i++)
            memset(I.gp[i], 0, (size_t)hyb_tensor_numel(I.m->params[i]) * sizeof(float));
        out[k][0] = malloc((size_t)n * 4);
        out[k][1] = calloc((size_t)n, 4);
        CHECK(fwd(&I, B, T, x, out[k][0], saved, NULL, NULL, 0) == HYB_OK);
        CHECK(bwd(&I, B, T, x, dy, out[k][1], saved) == HYB_OK);
        for (int i = 0; i < I.m->n_params; i++) {
            size_t bytes = (size_t)hyb_tensor_numel(I.m->params[i]) * sizeof(float);
            out[k][2 + i] = malloc(bytes);
            memcpy(out[k][2 + i], I.gp[i], bytes);
        }
    }
    omp_set_num_threads(saved_threads);
    for (int k = 1; k < 3; k++) {
        CHECK_MSG(memcmp(out[k][0], out[0][0], (size_t)n * 4) == 0, "y: %d threads != 1 thread",
                  threads[k]);
        CHECK_MSG(memcmp(out[k][1], out[0][1], (size_t)n * 4) == 0, "dx: %d threads != 1 thread",
                  threads[k]);
        for (int i = 0; i < I.m->n_params; i++)
            CHECK_MSG(memcmp(out[k][2 + i], out[0][2 + i],
                             (size_t)hyb_tensor_numel(I.m->params[i]) * sizeof(float)) == 0,
                      "grad of %s: %d threads != 1 thread", I.m->params[i]->name, threads[k]);
    }
    printf("   B=%d T=%d: y, dx and %d parameter grads bitwise equal with 1, 2 and 3 threads\n", B,
           T, I.m->n_params);
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 2 + I.m->n_params; i++)
            free(out[k][i]);
    free(x);
    free(dy);
    free(saved);
    inst_free(&I);
#else
    printf("   skip: built without OpenMP\n");
#endif
}

int main(void) {
    const hyb_mixer_desc *d;
    if (hyb_plugin_find("mha", &d) != HYB_OK) {
        fprintf(stderr, "%s\n", hyb_error());
        return 1;
    }
    RUN(test_golden_hf);
    RUN(test_golden_hf_long);
    RUN(test_fd_gradients);
    RUN(test_prefill_then_decode);
    RUN(test_chunked_prefill);
    RUN(test_snapshot_restore);
    RUN(test_long_sequence);
    RUN(test_threads_bitwise);
    RUN(test_decode_large_step);
    RUN(test_decode_chunks);
    RUN(test_graph_node);
    return harness_done();
}
