/* tests/test_deltanet.c: the `deltanet` and `gated_deltanet` mixer plugins (plugins/common/
 * deltanet_impl.h), loaded through the search path. Every test runs for both mixers.
 *
 *  - forward, final state (S and conv windows) and all gradients against the float64 PyTorch
 *    reference (tests/reference/deltanet_ref.py -> tests/data/deltanet/<type>.bin; fla's naive
 *    recurrent form, cross-checked there against the naive chunked form): relative RMS error
 *    below SPEC.md section 8's flash-linear-attention bars (0.006 DeltaNet, 0.002 Gated
 *    DeltaNet; 0.008 gradients), run with chunk 16 so the last of the 3 chunks is partial
 *  - finite-difference gradients for x and every parameter on a tiny shape (partial chunks)
 *  - chunked forward with chunk 1, 5 and 64 agree; full forward equals token-by-token decode
 *    (the recurrent form)
 *  - prefill then batched decode (n > 1, different positions) equals the full forward
 *  - two-chunk (continued) prefill equals one prefill, states included
 *  - snapshot -> decode -> restore -> decode equals the uninterrupted run
 *  - DIL init from an `mha` mixer copies exactly (GQA heads repeated), and shape mismatches fail
 *  - config errors name file:line:col and the key
 *  - in a model (mha + deltanet + gated_deltanet layers): prefill + batched decode equals the
 *    forward, a training backward reaches the mixers, and a DIL swap of an attention layer
 *    starts as an identity mixer (zero output gate): logits equal the leave-one-out model's
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/config.h"
#include "hyb/graph.h"
#include "hyb/mixer.h"
#include "hyb/model.h"

static const char *TYPES[2] = {"deltanet", "gated_deltanet"};

typedef struct inst {
    hyb_mixer *m;
    hyb_toml *doc;
    const float *pp[16];
    float *gp[16];
} inst;

static int inst_new(inst *I, const char *type, int D, const char *toml, uint64_t seed,
                    float wscale) {
    memset(I, 0, sizeof *I);
    I->doc = hyb_toml_parse_string(toml, "test.toml");
    CHECK_MSG(I->doc != NULL, "toml: %s", hyb_error());
    if (!I->doc) return -1;
    hyb_model_dims dims = {
        .d_model = D, .n_layers = 1, .layer = 0, .max_seq = 64, .norm_eps = 1e-5f};
    int rc = hyb_mixer_new(type, &dims, hyb_toml_root(I->doc), seed, &I->m);
    CHECK_MSG(rc == HYB_OK, "hyb_mixer_new(%s): %s", type, hyb_error());
    if (rc != HYB_OK) return -1;
    hyb_rng r;
    hyb_rng_seed(&r, seed * 7 + 1);
    for (int i = 0; i < I->m->n_params; i++) {
        hyb_tensor *t = I->m->params[i];
        const char *nm = I->m->decls[i].name;
        float *p = hyb_tensor_f32(t);
        int64_t n = hyb_tensor_numel(t);
        if (wscale > 0) {
            hyb_rng_fill_normal(&r, p, n, 0.0f, wscale);
            if (!strcmp(nm, "o_norm.weight"))
                for (int64_t j = 0; j < n; j++)
                    p[j] += 1.0f;
            if (!strcmp(nm, "dt_bias"))
                for (int64_t j = 0; j < n; j++)
                    p[j] -= 1.0f;
        }
        I->pp[i] = p;
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

/* ---- golden: float64 PyTorch reference ---------------------------------------------------------
 */

static void golden_case(int gated) {
    const char *type = TYPES[gated];
    char path[4096];
    const char *dd = getenv("HYB_TEST_DATA");
    snprintf(path, sizeof path, "%s/deltanet/%s.bin", dd ? dd : "tests/data", type);
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s (run tests/reference/deltanet_ref.py)", path);
    if (!f) return;
    int32_t h[8] = {0};
    double eps = 0;
    CHECK(fread(h, 4, 8, f) == 8 && fread(&eps, 8, 1, f) == 1);
    CHECK(h[0] == 0x31544e44 && h[7] == gated);
    const int B = h[1], T = h[2], D = h[3], H = h[4], n = h[5], K = h[6];
    char toml[256];
    snprintf(toml, sizeof toml,
             "type = \"%s\"\nn_heads = %d\nhead_dim = %d\nconv_size = %d\nchunk = 16\n"
             "norm_eps = %.17g\n",
             type, H, n, K, eps);
    inst I;
    if (inst_new(&I, type, D, toml, 1, 0) != 0) {
        fclose(f);
        inst_free(&I);
        return;
    }
    const int np = I.m->n_params;
    CHECK(np == (gated ? 13 : 10));
    const size_t nx = (size_t)B * T * D, C = (size_t)H * n;
    const size_t nS = (size_t)B * H * n * n, nW = (size_t)B * 3 * C * (K - 1);
    float *x = malloc(nx * 4), *yr = malloc(nx * 4), *Sr = malloc(nS * 4), *Wr = malloc(nW * 4),
          *dy = malloc(nx * 4), *dxr = malloc(nx * 4), *gr[16];
    int ok = fread(x, 4, nx, f) == nx;
    for (int i = 0; i < np; i++)
        ok = ok && fread((float *)I.pp[i], 4, (size_t)hyb_tensor_numel(I.m->params[i]), f) ==
                       (size_t)hyb_tensor_numel(I.m->params[i]);
    ok = ok && fread(yr, 4, nx, f) == nx && fread(Sr, 4, nS, f) == nS &&
         fread(Wr, 4, nW, f) == nW && fread(dy, 4, nx, f) == nx && fread(dxr, 4, nx, f) == nx;
    for (int i = 0; i < np; i++) {
        size_t k = (size_t)hyb_tensor_numel(I.m->params[i]);
        gr[i] = malloc(k * 4);
        ok = ok && fread(gr[i], 4, k, f) == k;
    }
    fclose(f);
    CHECK_MSG(ok, "%s: short read", path);
    const double tol_y = gated ? 0.002 : 0.006, tol_g = 0.008;
    float *y = malloc(nx * 4), *dx = malloc(nx * 4);
    void *saved = malloc(I.m->desc->saved_bytes(I.m->self, B, T));
    CHECK(fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
    double e = harness_rel_rms(y, yr, (long)nx), worst_g = 0;
    printf("   %s [B=%d T=%d D=%d H=%d hd=%d K=%d chunk 16]\n", type, B, T, D, H, n, K);
    printf("   y   rel rms %.3g (bar %g)\n", e, tol_y);
    CHECK_MSG(e < tol_y && e < 1e-5, "y: rel rms %g", e);
    /* prefill into states: the final state S and the conv windows */
    size_t sb = hyb_mixer_state_bytes(I.m, T);
    CHECK(sb == ((size_t)H * n * n + 3 * C * (K - 1)) * 4);
    float *st[2] = {malloc(sb), malloc(sb)};
    for (int b = 0; b < 2; b++)
        memset(st[b], 0x7f, sb); /* garbage: a pos-0 prefill must not read it */
    CHECK(fwd(&I, B, T, x, y, NULL, (void *const *)st, NULL, T) == HYB_OK);
    float *Sc = malloc(nS * 4), *Wc = malloc(nW * 4);
    for (int b = 0; b < B; b++) {
        memcpy(Sc + (size_t)b * H * n * n, st[b], (size_t)H * n * n * 4);
        memcpy(Wc + (size_t)b * 3 * C * (K - 1), st[b] + (size_t)H * n * n, 3 * C * (K - 1) * 4);
    }
    double es = harness_rel_rms(Sc, Sr, (long)nS), ew = harness_rel_rms(Wc, Wr, (long)nW);
    printf("   S   rel rms %.3g (bar %g), conv windows %.3g\n", es, tol_y, ew);
    CHECK_MSG(es < tol_y && es < 1e-5, "S: rel rms %g", es);
    CHECK_MSG(ew < 1e-6, "windows: rel rms %g", ew);
    CHECK_MSG(bwd(&I, B, T, x, dy, dx, saved) == HYB_OK, "%s", hyb_error());
    e = harness_rel_rms(dx, dxr, (long)nx);
    printf("   dx  rel rms %.3g\n", e);
    CHECK_MSG(e < tol_g && e < 1e-5, "dx: rel rms %g", e);
    for (int i = 0; i < np; i++) {
        long k = (long)hyb_tensor_numel(I.m->params[i]);
        e = harness_rel_rms(I.gp[i], gr[i], k);
        worst_g = e > worst_g ? e : worst_g;
        CHECK_MSG(e < tol_g && e < 1e-4, "d%s: rel rms %g", I.m->decls[i].name, e);
    }
    printf("   param grads: worst rel rms %.3g (bar %g)\n", worst_g, tol_g);
    /* a second backward accumulates */
    CHECK(bwd(&I, B, T, x, dy, dx, saved) == HYB_OK);
    for (int i = 0; i < np; i++) {
        long k = (long)hyb_tensor_numel(I.m->params[i]);
        for (long j = 0; j < k; j++)
            gr[i][j] *= 2.0f;
        e = harness_rel_rms(I.gp[i], gr[i], k);
        CHECK_MSG(e < 1e-4, "accumulated d%s: rel rms %g", I.m->decls[i].name, e);
        free(gr[i]);
    }
    free(st[0]);
    free(st[1]);
    free(Sc);
    free(Wc);
    free(x);
    free(yr);
    free(Sr);
    free(Wr);
    free(dy);
    free(dxr);
    free(y);
    free(dx);
    free(saved);
    inst_free(&I);
}

static void test_golden_deltanet(void) {
    golden_case(0);
}
static void test_golden_gated(void) {
    golden_case(1);
}

/* ---- finite differences -----------------------------------------------------------------------
 */

static double loss(inst *I, int B, int T, const float *x, const float *dy, float *y) {
    CHECK(fwd(I, B, T, x, y, NULL, NULL, NULL, 0) == HYB_OK);
    double L = 0;
    for (long i = 0; i < (long)B * T * I->m->dims.d_model; i++)
        L += (double)y[i] * dy[i];
    return L;
}

/* 4-point central differences (truncation O(h^4)) with h = 5e-3 on every element, L = sum(y * dy)
 * from an f32 forward summed in double. L ~ 10 carries f32 rounding noise ~1e-6, amplified by
 * 18 / (12 h) = 300 to ~3e-4 absolute; the q/k L2 normalisation of short (hd = 3) vectors makes
 * the curvature large, which is why the O(h^2) 2-point rule is not enough here. Per element
 * |fd - an| <= 3e-3 + 3e-3 |an|, normwise ||fd - an|| / ||an|| < 2e-3. A missing term (decay,
 * beta, conv tap, norm) gives errors of order |an|. (The golden test checks the same gradients
 * against autograd at ~1e-6.) */
static void fd_check(inst *I, const char *what, float *v, const float *an, long n, int B, int T,
                     const float *x, const float *dy, float *y) {
    const float h = 5e-3f;
    double num = 0, den = 0, worst = 0;
    long bad = 0;
    for (long i = 0; i < n; i++) {
        const float keep = v[i];
        const float off[4] = {h, -h, 2 * h, -2 * h};
        double L[4];
        for (int s = 0; s < 4; s++) {
            v[i] = keep + off[s];
            L[s] = loss(I, B, T, x, dy, y);
        }
        v[i] = keep;
        double fd = (8.0 * (L[0] - L[1]) - (L[2] - L[3])) / (12.0 * h);
        double d = fabs(fd - an[i]);
        if (d > 3e-3 + 3e-3 * fabs(an[i])) {
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
    printf("   %-16s n=%-4ld |grad| %.3g  normwise rel err %.2g  max abs err %.2g\n", what, n,
           sqrt(den), rel, worst);
    CHECK_MSG(rel < 2e-3, "%s: normwise rel err %g", what, rel);
    CHECK_MSG(den > 0, "%s: gradient is all zero", what);
}

static void fd_case(int gated) {
    /* H = 2, hd = 5 (odd, != D / H), K = 3, chunk 3 over T = 7: two full chunks and a partial */
    const int B = 2, T = 7, D = 8;
    inst I;
    if (inst_new(&I, TYPES[gated], D, "n_heads = 2\nhead_dim = 5\nconv_size = 3\nchunk = 3\n", 5,
                 0.5f) != 0) {
        inst_free(&I);
        return;
    }
    hyb_rng r;
    hyb_rng_seed(&r, 99);
    long nx = (long)B * T * D;
    float *x = randn(&r, nx, 1.0f), *dy = randn(&r, nx, 1.0f), *y = malloc(nx * 4),
          *dx = malloc(nx * 4);
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

static void test_fd_deltanet(void) {
    fd_case(0);
}
static void test_fd_gated(void) {
    fd_case(1);
}

/* ---- chunk sizes and the recurrent form -------------------------------------------------------
 */

#define DD 16
static const char *DEC_TOML[3] = {"n_heads = 2\nhead_dim = 8\nchunk = 4\n",
                                  "n_heads = 2\nhead_dim = 8\nchunk = 1\n",
                                  "n_heads = 2\nhead_dim = 8\nchunk = 64\n"};

static void test_chunk_sizes(void) {
    for (int gated = 0; gated < 2; gated++) {
        enum { B = 2, T = 23 };
        hyb_rng r;
        hyb_rng_seed(&r, 4);
        float *x = randn(&r, (size_t)B * T * DD, 1.0f), y[3][B * T * DD];
        for (int v = 0; v < 3; v++) {
            inst I;
            if (inst_new(&I, TYPES[gated], DD, DEC_TOML[v], 21, 0.3f) == 0)
                CHECK(fwd(&I, B, T, x, y[v], NULL, NULL, NULL, 0) == HYB_OK);
            inst_free(&I);
        }
        double e1 = harness_max_rel(y[1], y[0], B * T * DD, 1.0),
               e2 = harness_max_rel(y[2], y[0], B * T * DD, 1.0);
        printf("   %s: chunk 1 vs 4 %.3g, chunk 64 vs 4 %.3g\n", TYPES[gated], e1, e2);
        CHECK_MSG(e1 < 1e-5 && e2 < 1e-5, "%s: chunk sizes disagree: %g %g", TYPES[gated], e1, e2);
        /* the recurrent form: decode all T tokens from an empty state */
        inst I;
        if (inst_new(&I, TYPES[gated], DD, DEC_TOML[0], 21, 0.3f) == 0) {
            size_t sb = hyb_mixer_state_bytes(I.m, T);
            void *st[B] = {malloc(sb), malloc(sb)};
            float yd[B * DD], yrec[B * T * DD], xs[B * DD];
            void *sp[1] = {st[0]};
            float one[DD];
            /* start: prefill token 0 (so the state is initialised), then decode the rest */
            for (int b = 0; b < B; b++) {
                sp[0] = st[b];
                CHECK(fwd(&I, 1, 1, x + (size_t)b * T * DD, one, NULL, sp, NULL, T) == HYB_OK);
                memcpy(yrec + (size_t)b * T * DD, one, sizeof one);
            }
            for (int t = 1; t < T; t++) {
                int32_t ps[B];
                for (int b = 0; b < B; b++) {
                    memcpy(xs + b * DD, x + ((size_t)b * T + t) * DD, DD * 4);
                    ps[b] = t;
                }
                CHECK(hyb_mixer_decode(I.m, xs, yd, B, st, ps, T) == HYB_OK);
                for (int b = 0; b < B; b++)
                    memcpy(yrec + ((size_t)b * T + t) * DD, yd + b * DD, DD * 4);
            }
            double e = harness_max_rel(yrec, y[0], B * T * DD, 1.0);
            printf("   %s: recurrent (decode) vs chunked forward %.3g\n", TYPES[gated], e);
            CHECK_MSG(e < 1e-5, "recurrent vs chunked: %g", e);
            free(st[0]);
            free(st[1]);
        }
        inst_free(&I);
        free(x);
    }
}

/* ---- decode -----------------------------------------------------------------------------------
 */

static void test_prefill_then_decode(void) {
    for (int gated = 0; gated < 2; gated++) {
        inst I;
        if (inst_new(&I, TYPES[gated], DD, DEC_TOML[0], 11, 0.3f) != 0) {
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
        for (int s = 0; s < NS; s++) {
            x[s] = randn(&r, (size_t)len[s] * DD, 1.0f);
            yfull[s] = malloc((size_t)len[s] * DD * 4);
            CHECK(fwd(&I, 1, len[s], x[s], yfull[s], NULL, NULL, NULL, 0) == HYB_OK);
            st[s] = malloc(sb);
            memset(st[s], 0x7f, sb);
        }
        double worst = 0;
        float ybuf[MAXC * DD];
        for (int s = 0; s < NS; s++) {
            void *sp[1] = {st[s]};
            CHECK(fwd(&I, 1, pre[s], x[s], ybuf, NULL, sp, NULL, MAXC) == HYB_OK);
            double e = harness_max_rel(ybuf, yfull[s], (long)pre[s] * DD, 1.0);
            worst = e > worst ? e : worst;
        }
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
        printf("   %s: %d decode steps (up to %d sequences), max rel err vs forward %.3g\n",
               TYPES[gated], steps, max_n, worst);
        CHECK(max_n == NS);
        CHECK_MSG(worst < 1e-5, "decode vs forward: %g", worst);
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
}

static void test_chunked_prefill(void) {
    for (int gated = 0; gated < 2; gated++) {
        inst I;
        if (inst_new(&I, TYPES[gated], DD, DEC_TOML[0], 12, 0.3f) != 0) {
            inst_free(&I);
            return;
        }
        enum { MAXC = 20 };
        /* first chunks shorter and longer than the conv window (K - 1 = 3), second of 6 */
        const int first[2] = {2, 5}, second = 6;
        hyb_rng r;
        hyb_rng_seed(&r, 6);
        size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
        double worst = 0, worst_s = 0;
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
        float x2[2 * second * DD], y2[2 * second * DD];
        for (int s = 0; s < 2; s++)
            memcpy(x2 + s * second * DD, x[s] + (size_t)first[s] * DD, second * DD * 4);
        int32_t pos[2] = {first[0], first[1]};
        CHECK_MSG(fwd(&I, 2, second, x2, y2, NULL, st_chunk, pos, MAXC) == HYB_OK, "%s",
                  hyb_error());
        for (int s = 0; s < 2; s++) {
            double e = harness_max_rel(y2 + s * second * DD, yone[s] + (size_t)first[s] * DD,
                                       second * DD, 1.0);
            worst = e > worst ? e : worst;
            e = harness_max_rel(st_chunk[s], st_one[s], (long)(sb / 4), 1.0);
            worst_s = e > worst_s ? e : worst_s;
        }
        printf("   %s: two-chunk vs one prefill: y %.3g, state %.3g\n", TYPES[gated], worst,
               worst_s);
        CHECK_MSG(worst < 1e-5 && worst_s < 1e-5, "chunked prefill: %g %g", worst, worst_s);
        float yb[2 * 20 * DD], xb[2 * 20 * DD];
        memset(xb, 0, sizeof xb);
        int32_t p2[2] = {10, 17};
        CHECK(fwd(&I, 2, 4, xb, yb, NULL, st_chunk, p2, MAXC) == HYB_ERR_ARG);
        CHECK_MSG(strstr(hyb_error(), "exceeds") != NULL, "%s", hyb_error());
        void *saved = malloc(I.m->desc->saved_bytes(I.m->self, 2, 2));
        int32_t p3[2] = {1, 0};
        CHECK(fwd(&I, 2, 2, xb, yb, saved, st_chunk, p3, MAXC) == HYB_ERR_UNSUPPORTED);
        CHECK(fwd(&I, 2, 2, xb, yb, NULL, NULL, p3, MAXC) == HYB_ERR_ARG);
        /* no CUDA kernels: asking for them is a clear error naming mixer, layer, op, device */
        CHECK(hyb_mixer_kernel_check(I.m, HYB_DEV_CUDA, HYB_MIXER_FORWARD) == HYB_ERR_UNSUPPORTED);
        CHECK_MSG(strstr(hyb_error(), "has no forward kernel for device cuda") != NULL, "%s",
                  hyb_error());
        /* backward without a matching forward is an argument error */
        CHECK(bwd(&I, 2, 3, xb, xb, yb, saved) == HYB_ERR_ARG);
        free(saved);
        for (int s = 0; s < 2; s++) {
            free(x[s]);
            free(yone[s]);
            free(st_one[s]);
            free(st_chunk[s]);
        }
        inst_free(&I);
    }
}

static void test_snapshot_restore(void) {
    for (int gated = 0; gated < 2; gated++) {
        inst I;
        if (inst_new(&I, TYPES[gated], DD, DEC_TOML[0], 13, 0.3f) != 0) {
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
        CHECK(nb == (int64_t)sb);
        void *snap = malloc((size_t)nb);
        CHECK(d->state_snapshot(I.m->self, hyb_backend_cpu(), st, P, MAXC, snap) == nb);
        for (int t = 0; t < N; t++) {
            int32_t p = P + t;
            CHECK(hyb_mixer_decode(I.m, xalt + t * DD, ya + t * DD, 1, sp, &p, MAXC) == HYB_OK);
        }
        CHECK(d->state_restore(I.m->self, hyb_backend_cpu(), st, snap, P, MAXC) == HYB_OK);
        for (int t = 0; t < N; t++) {
            int32_t p = P + t;
            CHECK(hyb_mixer_decode(I.m, x + (P + t) * DD, ya + t * DD, 1, sp, &p, MAXC) == HYB_OK);
        }
        void *sp2[1] = {st2};
        CHECK(fwd(&I, 1, P, x, y, NULL, sp2, NULL, MAXC) == HYB_OK);
        for (int t = 0; t < N; t++) {
            int32_t p = P + t;
            CHECK(hyb_mixer_decode(I.m, x + (P + t) * DD, yb + t * DD, 1, sp2, &p, MAXC) == HYB_OK);
        }
        CHECK(memcmp(ya, yb, sizeof ya) == 0);
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
}

/* ---- a longer sequence on the threaded path ----------------------------------------------------
 * T = 150 with the default chunk 64 (two full chunks and a partial one), hd 32: large enough for
 * the OpenMP loops over (sequence, head). Prefill of 140 tokens + 10 decode steps equals the
 * forward, and the backward passes a directional-derivative check: for a random direction u,
 * the 4-point central difference of L along u against <grad, u>, for x and every parameter at
 * once. */
static void test_long_sequence(void) {
    for (int gated = 0; gated < 2; gated++) {
        enum { B = 2, T = 150, D = 64, P = 140 };
        inst I;
        if (inst_new(&I, TYPES[gated], D, "n_heads = 2\nhead_dim = 32\n", 31, 0.15f) != 0) {
            inst_free(&I);
            continue;
        }
        hyb_rng r;
        hyb_rng_seed(&r, 17);
        const long nx = (long)B * T * D;
        float *x = randn(&r, nx, 1.0f), *dy = randn(&r, nx, 1.0f), *y = malloc(nx * 4),
              *dx = malloc(nx * 4), *yd = malloc(nx * 4);
        void *saved = malloc(I.m->desc->saved_bytes(I.m->self, B, T));
        double t0 = hyb_time_now();
        CHECK(fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
        double t1 = hyb_time_now();
        CHECK(bwd(&I, B, T, x, dy, dx, saved) == HYB_OK);
        double t2 = hyb_time_now();
        /* prefill + decode */
        size_t sb = hyb_mixer_state_bytes(I.m, T);
        void *st[B] = {malloc(sb), malloc(sb)};
        float *xp = malloc((size_t)B * P * D * 4), *yp = malloc((size_t)B * P * D * 4);
        for (int b = 0; b < B; b++)
            memcpy(xp + (size_t)b * P * D, x + (size_t)b * T * D, (size_t)P * D * 4);
        CHECK(fwd(&I, B, P, xp, yp, NULL, st, NULL, T) == HYB_OK);
        double worst = 0;
        for (int t = P; t < T; t++) {
            float xs[B * D], ys[B * D];
            int32_t ps[B] = {t, t};
            for (int b = 0; b < B; b++)
                memcpy(xs + b * D, x + ((size_t)b * T + t) * D, D * 4);
            CHECK(hyb_mixer_decode(I.m, xs, ys, B, st, ps, T) == HYB_OK);
            for (int b = 0; b < B; b++) {
                double e = harness_max_rel(ys + b * D, y + ((size_t)b * T + t) * D, D, 1.0);
                worst = e > worst ? e : worst;
            }
        }
        for (int b = 0; b < B; b++) {
            double e =
                harness_max_rel(yp + (size_t)b * P * D, y + (size_t)b * T * D, (long)P * D, 1.0);
            worst = e > worst ? e : worst;
        }
        CHECK_MSG(worst < 1e-5, "long: prefill/decode vs forward %g", worst);
        /* directional derivative over x and all parameters */
        const int np = I.m->n_params;
        float *u[17];
        float *vals[17];
        long cnt[17];
        double an = 0;
        for (int i = 0; i <= np; i++) {
            vals[i] = i < np ? (float *)I.pp[i] : x;
            cnt[i] = i < np ? (long)hyb_tensor_numel(I.m->params[i]) : nx;
            u[i] = randn(&r, (size_t)cnt[i], 1.0f);
            const float *gsrc = i < np ? I.gp[i] : dx;
            for (long j = 0; j < cnt[i]; j++)
                an += (double)gsrc[j] * u[i][j];
        }
        const float h = 1e-3f, off[4] = {h, -h, 2 * h, -2 * h};
        double L[4];
        for (int s = 0; s < 4; s++) {
            for (int i = 0; i <= np; i++)
                for (long j = 0; j < cnt[i]; j++)
                    vals[i][j] += off[s] * u[i][j];
            CHECK(fwd(&I, B, T, x, yd, NULL, NULL, NULL, 0) == HYB_OK);
            L[s] = 0;
            for (long j = 0; j < nx; j++)
                L[s] += (double)yd[j] * dy[j];
            for (int i = 0; i <= np; i++)
                for (long j = 0; j < cnt[i]; j++)
                    vals[i][j] -= off[s] * u[i][j];
        }
        double fd = (8.0 * (L[0] - L[1]) - (L[2] - L[3])) / (12.0 * h),
               rel = fabs(fd - an) / fabs(an);
        printf("   %s T=%d: fwd %.1f ms, bwd %.1f ms; prefill+decode vs fwd %.3g; "
               "directional derivative %.6g vs <grad, u> %.6g (rel %.2g)\n",
               TYPES[gated], T, 1e3 * (t1 - t0), 1e3 * (t2 - t1), worst, fd, an, rel);
        /* 4-point rule: truncation O(h^4) is negligible (the 2-point rule's O(h^2) error was
         * measured at 4e-4 for h = 1e-3, shrinking 4x per halving); what remains is f32 noise in
         * L (~1e3 in size) of ~1e-4 relative to |<grad, u>| ~ 3e3. A dropped term anywhere in
         * the backward shifts <grad, u> by far more. */
        CHECK_MSG(rel < 3e-4, "directional derivative: rel %g", rel);
        for (int i = 0; i <= np; i++)
            free(u[i]);
        free(st[0]);
        free(st[1]);
        free(xp);
        free(yp);
        free(x);
        free(dy);
        free(y);
        free(dx);
        free(yd);
        free(saved);
        inst_free(&I);
    }
}

/* ---- DIL init from mha --------------------------------------------------------------------------
 */

static void test_init_from_mha(void) {
    const int D = 32;
    hyb_toml *tdoc = hyb_toml_parse_string("n_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n", "t.toml");
    hyb_model_dims dims = {
        .d_model = D, .n_layers = 1, .layer = 0, .max_seq = 64, .norm_eps = 1e-5f};
    hyb_mixer *teacher = NULL;
    CHECK_MSG(hyb_mixer_new("mha", &dims, hyb_toml_root(tdoc), 3, &teacher) == HYB_OK, "%s",
              hyb_error());
    if (!teacher) {
        hyb_toml_free(tdoc);
        return;
    }
    const float *tq = hyb_tensor_f32(teacher->params[0]), *tk = hyb_tensor_f32(teacher->params[1]),
                *tv = hyb_tensor_f32(teacher->params[2]), *to = hyb_tensor_f32(teacher->params[3]);
    for (int gated = 0; gated < 2; gated++) {
        inst I;
        if (inst_new(&I, TYPES[gated], D, "n_heads = 4\nhead_dim = 8\n", 9, 0.3f) != 0) {
            inst_free(&I);
            continue;
        }
        CHECK_MSG(hyb_mixer_init_from(I.m, teacher, hyb_toml_root(tdoc), 5) == HYB_OK, "%s",
                  hyb_error());
        const float *const *p = I.pp;
        int bad = 0;
        for (int h = 0; h < 4; h++)
            for (int i = 0; i < 8 * D; i++) {
                size_t o = (size_t)h * 8 * D + i, okv = (size_t)(h / 2) * 8 * D + i;
                bad += p[0][o] != tq[o] || p[1][o] != tk[okv] || p[2][o] != tv[okv];
                bad += p[7][o] != 0.0f; /* g_proj */
            }
        for (int i = 0; i < D * 32; i++)
            bad += p[9][i] != to[i];
        for (int i = 0; i < 4 * D; i++)
            bad += p[3][i] != 0.0f; /* b_proj: beta = 0.5 */
        for (int s = 0; s < 3; s++)
            for (int ch = 0; ch < 32; ch++)
                for (int j = 0; j < 4; j++)
                    bad += p[4 + s][ch * 4 + j] != (j == 3 ? 1.0f : 0.0f);
        for (int i = 0; i < 8; i++)
            bad += p[8][i] != 1.0f;
        if (gated)
            for (int h = 0; h < 4; h++) {
                float A = expf(p[11][h]), dt = log1pf(expf(p[12][h]));
                bad += !(A > 0 && A <= 16.0f) || !(dt > 0.9e-4f && dt < 0.11f);
            }
        CHECK_MSG(bad == 0, "%s: %d values not as DIL prescribes", TYPES[gated], bad);
        inst_free(&I);
        /* mismatched shapes and unknown sources fail with a message */
        if (inst_new(&I, TYPES[gated], D, "n_heads = 2\nhead_dim = 16\n", 9, 0) == 0) {
            CHECK(hyb_mixer_init_from(I.m, teacher, hyb_toml_root(tdoc), 5) == HYB_ERR_ARG);
            CHECK_MSG(strstr(hyb_error(), "teacher has n_heads 4, head_dim 8") != NULL, "%s",
                      hyb_error());
            printf("   %s\n", hyb_error());
            CHECK(hyb_mixer_init_from(I.m, I.m, NULL, 5) == HYB_ERR_UNSUPPORTED);
        }
        inst_free(&I);
    }
    hyb_mixer_free(teacher);
    hyb_toml_free(tdoc);
}

/* ---- config errors ----------------------------------------------------------------------------
 */

static void test_config_errors(void) {
    static const struct {
        const char *toml, *key, *where;
    } cases[] = {
        {"type = \"X\"\nn_heads = 0\n", "n_heads", "test.toml:2:"},
        {"type = \"X\"\nn_heads = 3\n", "n_heads", "test.toml:2:"}, /* 32 % 3 != 0 */
        {"type = \"X\"\nn_heads = 2\nhead_dim = 0\n", "head_dim", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nhead_dim = 1000\n", "head_dim", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nconv_size = 0\n", "conv_size", "test.toml:3:"},
        {"type = \"X\"\nchunk = 0\nn_heads = 2\n", "chunk", "test.toml:2:"},
        {"type = \"X\"\nn_heads = 2\nnorm_eps = -1.0\n", "norm_eps", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nchunk = \"big\"\n", "chunk", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nexpand_v = 2\n", "expand_v", "test.toml:3:"},
    };
    for (int gated = 0; gated < 2; gated++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            hyb_toml *doc = hyb_toml_parse_string(cases[i].toml, "test.toml");
            CHECK(doc != NULL);
            if (!doc) continue;
            hyb_model_dims dims = {
                .d_model = 32, .n_layers = 1, .layer = 0, .max_seq = 64, .norm_eps = 1e-5f};
            hyb_mixer *m = NULL;
            int rc = hyb_mixer_new(TYPES[gated], &dims, hyb_toml_root(doc), 1, &m);
            CHECK_MSG(rc < 0, "case %zu accepted", i);
            const char *e = hyb_error();
            CHECK_MSG(strstr(e, cases[i].where) && strstr(e, cases[i].key),
                      "case %zu: message '%s' lacks '%s' / '%s'", i, e, cases[i].where,
                      cases[i].key);
            if (gated == 0) printf("   %s\n", e);
            hyb_mixer_free(m);
            hyb_toml_free(doc);
        }
}

/* ---- in a hybrid model ------------------------------------------------------------------------
 */

static const char *HYB_MAP =
    "[model]\nname = \"dn-hybrid\"\nd_model = 32\nn_layers = 3\nvocab_size = 40\nd_ff = 48\n"
    "norm_eps = 1e-5\ntie_embeddings = true\nmax_seq = 64\n"
    "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n"
    "[mixers.dn]\ntype = \"deltanet\"\nsymbol = \"d\"\nn_heads = 4\nhead_dim = 8\nchunk = 4\n"
    "[mixers.gdn]\ntype = \"gated_deltanet\"\nsymbol = \"g\"\nn_heads = 4\nhead_dim = 8\n"
    "chunk = 4\n"
    "[layout]\npattern = \"dtg\"\n";

static float *model_logits(hyb_model *m, const int32_t *ids, int B, int T) {
    hyb_graph *g = hyb_graph_new();
    hyb_graph_set_grad(g, 0);
    hyb_tensor *lg = hyb_model_forward(m, g, ids, B, T);
    float *out = NULL;
    CHECK_MSG(lg != NULL, "forward: %s", hyb_error());
    if (lg) {
        out = malloc(hyb_tensor_nbytes(lg));
        memcpy(out, lg->data, hyb_tensor_nbytes(lg));
    }
    hyb_graph_free(g);
    return out;
}

/* the model owns (and frees) its layer map */
static hyb_model *hybrid_model(void) {
    hyb_layermap *map = NULL;
    hyb_model *m = NULL;
    CHECK_MSG(hyb_layermap_parse(HYB_MAP, "hybrid.toml", &map) == HYB_OK, "%s", hyb_error());
    if (!map) return NULL;
    CHECK_MSG(hyb_model_build(map, 77, &m) == HYB_OK, "%s", hyb_error());
    return m;
}

static void test_hybrid_model(void) {
    hyb_model *m = hybrid_model();
    if (!m) return;
    enum { NS = 2, LEN = 11 };
    const int V = 40, len[NS] = {11, 8}, prompt[NS] = {5, 3};
    int32_t ids[NS][LEN];
    for (int s = 0; s < NS; s++)
        for (int t = 0; t < LEN; t++)
            ids[s][t] = (int32_t)((t * 7 + s * 13 + 3) % V);
    float *full[NS];
    for (int s = 0; s < NS; s++)
        full[s] = model_logits(m, ids[s], 1, len[s]);
    hyb_kvstate *kv = NULL;
    CHECK_MSG(hyb_kvstate_new(m, NS, 32, &kv) == HYB_OK, "%s", hyb_error());
    double worst = 0;
    float lg[NS * 40];
    if (kv && full[0] && full[1]) {
        /* sequence 0: two-part prefill; sequence 1: one */
        CHECK(hyb_model_prefill(m, kv, 0, ids[0], 2, lg) == HYB_OK);
        worst = fmax(worst, harness_max_rel(lg, full[0] + V, V, 1.0));
        CHECK_MSG(hyb_model_prefill(m, kv, 0, ids[0] + 2, prompt[0] - 2, lg) == HYB_OK, "%s",
                  hyb_error());
        worst = fmax(worst, harness_max_rel(lg, full[0] + (size_t)(prompt[0] - 1) * V, V, 1.0));
        CHECK(hyb_model_prefill(m, kv, 1, ids[1], prompt[1], lg) == HYB_OK);
        worst = fmax(worst, harness_max_rel(lg, full[1] + (size_t)(prompt[1] - 1) * V, V, 1.0));
        int at[NS] = {prompt[0], prompt[1]};
        for (;;) {
            int32_t seqs[NS], tok[NS], who[NS];
            int n = 0;
            for (int s = 0; s < NS; s++)
                if (at[s] < len[s]) {
                    who[n] = s;
                    seqs[n] = s;
                    tok[n++] = ids[s][at[s]];
                }
            if (!n) break;
            CHECK_MSG(hyb_model_decode(m, kv, n, seqs, tok, lg) == HYB_OK, "%s", hyb_error());
            for (int i = 0; i < n; i++) {
                int s = who[i];
                worst = fmax(worst, harness_max_rel(lg + (size_t)i * V, full[s] + (size_t)at[s] * V,
                                                    V, 1.0));
                at[s]++;
            }
        }
    }
    printf("   model 'dtg': prefill + decode vs forward logits: max rel err %.3g\n", worst);
    CHECK_MSG(worst < 1e-5, "model prefill/decode: %g", worst);
    hyb_kvstate_free(kv);

    /* training: gradients reach both linear mixers */
    {
        enum { B = 2, T = 9 };
        int32_t tid[B * T], tg[B * T];
        for (int i = 0; i < B * T; i++) {
            tid[i] = (i * 5 + 1) % V;
            tg[i] = (i * 3 + 2) % V;
        }
        hyb_graph *g = hyb_graph_new();
        hyb_tensor *lgt = hyb_model_forward(m, g, tid, B, T);
        hyb_tensor *L = lgt ? hyb_cross_entropy(g, lgt, tg, NULL) : NULL;
        CHECK_MSG(L && hyb_graph_backward(g, L, 1.0f) == HYB_OK, "%s", hyb_error());
        const char *names[3] = {"model.layers.0.mixer.q_conv1d.weight",
                                "model.layers.2.mixer.A_log", "model.layers.2.mixer.k_proj.weight"};
        for (int k = 0; k < 3; k++) {
            hyb_tensor *p = hyb_model_param(m, names[k]);
            CHECK_MSG(p != NULL && p->grad, "no parameter %s", names[k]);
            if (!p || !p->grad) continue;
            double s2 = 0;
            const float *gd = hyb_tensor_f32(p->grad);
            for (int64_t i = 0; i < hyb_tensor_numel(p); i++)
                s2 += (double)gd[i] * gd[i];
            CHECK_MSG(s2 > 0 && isfinite(s2), "%s: |grad|^2 = %g", names[k], s2);
        }
        hyb_graph_free(g);
    }
    for (int s = 0; s < NS; s++)
        free(full[s]);
    hyb_model_free(m);

    /* DIL: swapping attention layer 1 for a DeltaNet initialised from it gives a zero mixer
     * output (output gate 0), so the logits equal those with layer 1 left out (identity) */
    for (int gated = 0; gated < 2; gated++) {
        hyb_model *a = hybrid_model(), *b = hybrid_model();
        hyb_toml *doc = hyb_toml_parse_string("n_heads = 4\nhead_dim = 8\n", "swap.toml");
        if (a && b && doc) {
            CHECK_MSG(hyb_model_swap(a, 1, TYPES[gated], hyb_toml_root(doc), 1, 5) == HYB_OK, "%s",
                      hyb_error());
            CHECK(hyb_model_set_identity(b, 1) == HYB_OK);
            float *la = model_logits(a, ids[0], 1, LEN), *lb = model_logits(b, ids[0], 1, LEN);
            if (la && lb) {
                double e = harness_max_rel(la, lb, LEN * V, 1e-30);
                printf("   DIL %s at layer 1 vs identity layer: max rel diff %.3g\n", TYPES[gated],
                       e);
                CHECK_MSG(e == 0, "DIL swap is not a zero mixer: %g", e);
            }
            free(la);
            free(lb);
        }
        hyb_model_free(a);
        hyb_model_free(b);
        hyb_toml_free(doc);
    }
}

int main(void) {
    for (int i = 0; i < 2; i++) {
        const hyb_mixer_desc *d;
        if (hyb_plugin_find(TYPES[i], &d) != HYB_OK) {
            fprintf(stderr, "%s\n", hyb_error());
            return 1;
        }
    }
    RUN(test_golden_deltanet);
    RUN(test_golden_gated);
    RUN(test_fd_deltanet);
    RUN(test_fd_gated);
    RUN(test_chunk_sizes);
    RUN(test_prefill_then_decode);
    RUN(test_chunked_prefill);
    RUN(test_snapshot_restore);
    RUN(test_long_sequence);
    RUN(test_init_from_mha);
    RUN(test_config_errors);
    RUN(test_hybrid_model);
    return harness_done();
}
