/* tests/test_ops.c: every core op against a double-precision reference written here, and its
 * gradient against finite differences (gradcheck.h explains the method and the tolerance). */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_math.h"
#include "gradcheck.h"
#include "harness.h"
#include "hyb/graph.h"
#include "hyb/mixer.h"

static hyb_tensor *leaf(int ndim, const int64_t *shape, uint64_t seed, float mean, float std) {
    hyb_tensor *t = gc_param(ndim, shape, seed, mean, std);
    return t;
}

static double max_abs_diff(const float *a, const double *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

// ---- the vectorised exp of the row kernels --------------------------------------------------

static void test_fast_expf(void) {
    double worst = 0;
    int nonmono = 0;
    float prev = 0;
    for (double x = -86.5; x < 88.7; x += 3.1e-5) {
        float xf = (float)x;
        double ref = exp((double)xf), e = fabs(hyb_fast_expf(xf) - ref) / ref;
        if (e > worst) worst = e;
        nonmono += hyb_fast_expf(xf) < prev;
        prev = hyb_fast_expf(xf);
    }
    CHECK_MSG(worst < 2.5e-7, "fast expf relative error %.3g", worst); /* ~2 ulp */
    CHECK(nonmono == 0);
    CHECK(hyb_fast_expf(0.0f) == 1.0f);
    CHECK(hyb_fast_expf(-87.0f) == 0.0f && hyb_fast_expf(-INFINITY) == 0.0f);
    CHECK(hyb_fast_expf(88.8f) == INFINITY && hyb_fast_expf(INFINITY) == INFINITY);
    CHECK(isnan(hyb_fast_expf(NAN)));
    CHECK(fabs(hyb_fast_expf(88.72f) / exp((double)88.72f) - 1) <
          2.5e-7); /* 2^128 range: no overflow */
}

// ---- matmul ---------------------------------------------------------------------------------

static hyb_tensor *f_matmul(hyb_graph *g, hyb_tensor **in, void *ctx) {
    (void)ctx;
    return hyb_matmul(g, in[0], in[1]);
}

static void test_matmul(void) {
    int64_t xs[3] = {2, 3, 5}, ws[2] = {4, 5};
    hyb_tensor *x = leaf(3, xs, 1, 0, 1), *W = leaf(2, ws, 2, 0, 1);
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *y = hyb_matmul(g, x, W);
    CHECK(y && y->ndim == 3 && y->shape[0] == 2 && y->shape[1] == 3 && y->shape[2] == 4);
    double ref[24];
    for (int m = 0; m < 6; m++)
        for (int n = 0; n < 4; n++) {
            double s = 0;
            for (int k = 0; k < 5; k++)
                s += (double)hyb_tensor_f32(x)[m * 5 + k] * hyb_tensor_f32(W)[n * 5 + k];
            ref[m * 4 + n] = s;
        }
    CHECK(max_abs_diff(hyb_tensor_f32(y), ref, 24) < 1e-5);
    CHECK(hyb_graph_n_nodes(g) == 1);
    hyb_graph_free(g);
    hyb_tensor *in[2] = {x, W};
    gc_check("matmul", f_matmul, in, 2, NULL, 1000);
    /* only W trainable: x gets nothing, W still checked */
    x->requires_grad = 0;
    gc_check("matmul (x frozen)", f_matmul, in, 2, NULL, 1000);
    gc_free(x);
    gc_free(W);
}

// ---- embedding ------------------------------------------------------------------------------

static const int32_t EMB_IDS[6] = {3, 1, 3, 0, 4, 3}; /* repeats: scatter-add must accumulate */

static hyb_tensor *f_embedding(hyb_graph *g, hyb_tensor **in, void *ctx) {
    (void)ctx;
    return hyb_embedding(g, in[0], EMB_IDS, 2, 3);
}

static void test_embedding(void) {
    int64_t ws[2] = {5, 4};
    hyb_tensor *W = leaf(2, ws, 3, 0, 1);
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *y = hyb_embedding(g, W, EMB_IDS, 2, 3);
    CHECK(y && y->ndim == 3 && y->shape[0] == 2 && y->shape[1] == 3 && y->shape[2] == 4);
    for (int i = 0; i < 6; i++)
        CHECK(memcmp(hyb_tensor_f32(y) + i * 4, hyb_tensor_f32(W) + EMB_IDS[i] * 4, 16) == 0);
    /* exact backward: row 3 receives three upstream rows, row 2 none */
    float ones[24];
    for (int i = 0; i < 24; i++)
        ones[i] = (float)(i % 4 + 1);
    gc_zero_grad(W);
    CHECK(graph_backward_seed(g, y, ones) == HYB_OK);
    const float *dW = hyb_tensor_cf32(W->grad);
    CHECK(dW[3 * 4 + 2] == 9.0f && dW[2 * 4 + 1] == 0.0f && dW[1 * 4 + 0] == 1.0f);
    hyb_graph_free(g);
    hyb_tensor *in[1] = {W};
    gc_check("embedding", f_embedding, in, 1, NULL, 1000);
    gc_free(W);
}

// ---- rmsnorm --------------------------------------------------------------------------------

static hyb_tensor *f_rmsnorm(hyb_graph *g, hyb_tensor **in, void *ctx) {
    return hyb_rmsnorm(g, in[0], in[1], *(float *)ctx);
}

static void test_rmsnorm(void) {
    int64_t xs[3] = {2, 3, 8}, ws[1] = {8};
    hyb_tensor *x = leaf(3, xs, 4, 0.3f, 1), *w = leaf(1, ws, 5, 1, 0.3f);
    float eps = 1e-5f;
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *y = hyb_rmsnorm(g, x, w, eps);
    double ref[48];
    const float *xd = hyb_tensor_f32(x), *wd = hyb_tensor_f32(w);
    for (int r = 0; r < 6; r++) {
        double ss = 0;
        for (int i = 0; i < 8; i++)
            ss += (double)xd[r * 8 + i] * xd[r * 8 + i];
        double rs = 1.0 / sqrt(ss / 8 + eps);
        for (int i = 0; i < 8; i++)
            ref[r * 8 + i] = wd[i] * xd[r * 8 + i] * rs;
    }
    CHECK(y && max_abs_diff(hyb_tensor_f32(y), ref, 48) < 2e-6);
    hyb_graph_free(g);
    hyb_tensor *in[2] = {x, w};
    gc_check("rmsnorm", f_rmsnorm, in, 2, &eps, 1000);
    gc_free(x);
    gc_free(w);
}

/* the fused residual add + rmsnorm: both outputs used (y + h), so gradients flow through the
 * norm and straight through the residual */
static hyb_tensor *f_add_rmsnorm(hyb_graph *g, hyb_tensor **in, void *ctx) {
    hyb_tensor *h = NULL;
    hyb_tensor *y = hyb_add_rmsnorm(g, in[0], in[1], in[2], *(float *)ctx, &h);
    return y ? hyb_add(g, y, h) : NULL;
}
static hyb_tensor *f_add_then_rmsnorm(hyb_graph *g, hyb_tensor **in, void *ctx) {
    hyb_tensor *h = hyb_add(g, in[0], in[1]);
    hyb_tensor *y = h ? hyb_rmsnorm(g, h, in[2], *(float *)ctx) : NULL;
    return y ? hyb_add(g, y, h) : NULL;
}

static void test_add_rmsnorm(void) {
    int64_t xs[3] = {2, 3, 8}, ws[1] = {8};
    hyb_tensor *a = leaf(3, xs, 6, 0.3f, 1), *b = leaf(3, xs, 7, -0.1f, 0.5f);
    hyb_tensor *w = leaf(1, ws, 8, 1, 0.3f);
    float eps = 1e-5f;
    hyb_tensor *in[3] = {a, b, w};
    gc_check("add_rmsnorm", f_add_rmsnorm, in, 3, &eps, 1000);
    /* the same values, nodes and gradients as the separate ops, bit for bit (CPU) */
    float out[2][48], grad[2][3][48];
    int nodes[2];
    float seed[48];
    for (int i = 0; i < 48; i++)
        seed[i] = (float)(i % 7) - 3.0f;
    for (int k = 0; k < 2; k++) {
        hyb_graph *g = hyb_graph_new();
        for (int i = 0; i < 3; i++)
            gc_zero_grad(in[i]);
        hyb_tensor *y = (k ? f_add_then_rmsnorm : f_add_rmsnorm)(g, in, &eps);
        CHECK(y != NULL);
        if (!y) return;
        memcpy(out[k], hyb_tensor_f32(y), sizeof out[k]);
        nodes[k] = hyb_graph_n_nodes(g);
        CHECK(graph_backward_seed(g, y, seed) == HYB_OK);
        for (int i = 0; i < 3; i++)
            memcpy(grad[k][i], hyb_tensor_cf32(in[i]->grad),
                   sizeof(float) * (size_t)hyb_tensor_numel(in[i]));
        hyb_graph_free(g);
    }
    CHECK(nodes[0] == nodes[1] && memcmp(out[0], out[1], sizeof out[0]) == 0);
    CHECK(memcmp(grad[0][0], grad[1][0], sizeof(float) * 48) == 0 &&
          memcmp(grad[0][1], grad[1][1], sizeof(float) * 48) == 0 &&
          memcmp(grad[0][2], grad[1][2], sizeof(float) * 8) == 0);
    /* shape errors name the op and the shapes */
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *h = NULL;
    CHECK(hyb_add_rmsnorm(g, a, w, w, eps, &h) == NULL && h == NULL);
    CHECK_MSG(strstr(hyb_error(), "hyb_add_rmsnorm") && strstr(hyb_error(), "[2, 3, 8]"), "%s",
              hyb_error());
    hyb_graph_free(g);
    gc_free(a);
    gc_free(b);
    gc_free(w);
}

// ---- rope -----------------------------------------------------------------------------------

static const int32_t ROPE_POS[3] = {5, 0, 417};

static hyb_tensor *f_rope(hyb_graph *g, hyb_tensor **in, void *ctx) {
    (void)ctx;
    return hyb_rope(g, in[0], ROPE_POS, 10000.0f);
}

/* transformers' rotate_half form: out = x * cos + rotate_half(x) * sin, emb = cat(freqs, freqs) */
static void rope_ref(const float *x, double *out, int B, int T, int H, int hd, const int32_t *pos,
                     double theta) {
    int half = hd / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int j = 0; j < hd; j++) {
                    int i = j % half;
                    double ang = (pos ? pos[t] : t) * pow(theta, -2.0 * i / hd);
                    const float *xv = x + (((int64_t)b * T + t) * H + h) * hd;
                    double rot = j < half ? -(double)xv[j + half] : (double)xv[j - half];
                    out[(((int64_t)b * T + t) * H + h) * hd + j] =
                        xv[j] * cos(ang) + rot * sin(ang);
                }
}

static void test_rope(void) {
    int64_t xs[4] = {2, 3, 2, 8};
    hyb_tensor *x = leaf(4, xs, 6, 0, 1);
    hyb_graph *g = hyb_graph_new();
    double ref[96];
    hyb_tensor *y = hyb_rope(g, x, ROPE_POS, 10000.0f);
    rope_ref(hyb_tensor_f32(x), ref, 2, 3, 2, 8, ROPE_POS, 10000.0);
    /* the kernel forms angles in f32 as HF does: at position 417 the angle's rounding is
     * ~ulp(417) = 3e-5 rad, so outputs of size ~3 may differ from the exact formula by ~1e-4 */
    CHECK(y && max_abs_diff(hyb_tensor_f32(y), ref, 96) < 2e-4);
    hyb_tensor *y0 = hyb_rope(g, x, NULL, 100000.0f); /* pos NULL = 0..T-1 */
    rope_ref(hyb_tensor_f32(x), ref, 2, 3, 2, 8, NULL, 100000.0);
    CHECK(y0 && max_abs_diff(hyb_tensor_f32(y0), ref, 96) < 1e-5);
    /* position 0 is the identity; the inverse undoes the forward */
    CHECK(memcmp(hyb_tensor_f32(y0), hyb_tensor_f32(x), 8 * 2 * 4) == 0);
    float buf[96];
    memcpy(buf, hyb_tensor_f32(y), sizeof buf);
    for (int b = 0; b < 2; b++)
        hyb_cpu_rope(buf + b * 48, 3, 2, 8, ROPE_POS, 10000.0f, 1);
    double xr[96];
    for (int i = 0; i < 96; i++)
        xr[i] = hyb_tensor_f32(x)[i];
    CHECK(max_abs_diff(buf, xr, 96) < 1e-5);
    hyb_graph_free(g);
    hyb_tensor *in[1] = {x};
    gc_check("rope", f_rope, in, 1, NULL, 1000);
    gc_free(x);
}

// ---- swiglu, add, softmax -------------------------------------------------------------------

static hyb_tensor *f_swiglu(hyb_graph *g, hyb_tensor **in, void *ctx) {
    (void)ctx;
    return hyb_swiglu(g, in[0], in[1]);
}
static hyb_tensor *f_add(hyb_graph *g, hyb_tensor **in, void *ctx) {
    (void)ctx;
    return hyb_add(g, in[0], in[1]);
}
static hyb_tensor *f_add_self(hyb_graph *g, hyb_tensor **in, void *ctx) {
    (void)ctx;
    return hyb_add(g, in[0], in[0]);
}
static hyb_tensor *f_softmax(hyb_graph *g, hyb_tensor **in, void *ctx) {
    (void)ctx;
    return hyb_softmax(g, in[0]);
}

static void test_elementwise(void) {
    int64_t s[2] = {3, 7};
    hyb_tensor *a = leaf(2, s, 7, 0, 2), *b = leaf(2, s, 8, 0, 1);
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *y = hyb_swiglu(g, a, b), *z = hyb_add(g, a, b), *p = hyb_softmax(g, a);
    double rs[21], ra[21], rp[21];
    const float *ad = hyb_tensor_f32(a), *bd = hyb_tensor_f32(b);
    for (int i = 0; i < 21; i++) {
        rs[i] = ad[i] / (1.0 + exp(-(double)ad[i])) * bd[i];
        ra[i] = (double)ad[i] + bd[i];
    }
    for (int r = 0; r < 3; r++) {
        double m = -1e300, sum = 0;
        for (int v = 0; v < 7; v++)
            m = fmax(m, ad[r * 7 + v]);
        for (int v = 0; v < 7; v++)
            sum += exp(ad[r * 7 + v] - m);
        for (int v = 0; v < 7; v++)
            rp[r * 7 + v] = exp(ad[r * 7 + v] - m) / sum;
    }
    CHECK(y && max_abs_diff(hyb_tensor_f32(y), rs, 21) < 1e-5);
    CHECK(z && max_abs_diff(hyb_tensor_f32(z), ra, 21) < 1e-6);
    CHECK(p && max_abs_diff(hyb_tensor_f32(p), rp, 21) < 1e-6);
    hyb_graph_free(g);
    hyb_tensor *in[2] = {a, b};
    gc_check("swiglu", f_swiglu, in, 2, NULL, 1000);
    gc_check("add", f_add, in, 2, NULL, 1000);
    gc_check("add(a, a)", f_add_self, in, 1, NULL, 1000);
    gc_check("softmax", f_softmax, in, 1, NULL, 1000);
    gc_free(a);
    gc_free(b);
}

// ---- losses ---------------------------------------------------------------------------------

enum { LR = 6, LV = 7 };
static const int32_t CE_T[LR] = {2, -1, 6, 0, 3, 3};
static const float L_MASK[LR] = {1, 1, 0, 0.5f, 1, 1};

static double lse_d(const double *x, int64_t V) {
    double m = -INFINITY, s = 0;
    for (int64_t v = 0; v < V; v++)
        m = fmax(m, x[v]);
    for (int64_t v = 0; v < V; v++)
        s += exp(x[v] - m);
    return m + log(s);
}

static double ce_ref(const float *x, const int32_t *t, const float *mask, int64_t R, int64_t V) {
    double num = 0, den = 0;
    double *row = malloc(sizeof(double) * (size_t)V);
    for (int64_t r = 0; r < R; r++) {
        double w = (mask ? mask[r] : 1.0) * (t[r] >= 0);
        if (w == 0) continue;
        for (int64_t v = 0; v < V; v++)
            row[v] = x[r * V + v];
        num += w * (lse_d(row, V) - row[t[r]]);
        den += w;
    }
    free(row);
    return den > 0 ? num / den : 0;
}

/* SPEC.md section 5, straight from the formula, in double */
static double kl_ref(const float *s, const float *t, const float *mask, int64_t R, int64_t V,
                     double T, int reverse) {
    double num = 0, den = 0;
    double *a = malloc(sizeof(double) * (size_t)V), *b = malloc(sizeof(double) * (size_t)V);
    for (int64_t r = 0; r < R; r++) {
        double w = mask ? mask[r] : 1.0;
        if (w == 0) continue;
        for (int64_t v = 0; v < V; v++) {
            a[v] = fmin(100, fmax(-100, (double)s[r * V + v]));
            b[v] = fmin(100, fmax(-100, (double)t[r * V + v] / T));
        }
        double la = lse_d(a, V), lb = lse_d(b, V), kl = 0;
        for (int64_t v = 0; v < V; v++) {
            double q = a[v] - la, p = b[v] - lb;
            kl += reverse ? exp(q) * (q - p) : exp(p) * (p - q);
        }
        num += w * kl;
        den += w;
    }
    free(a);
    free(b);
    return den > 0 ? num / den : 0;
}

static hyb_tensor *f_ce(hyb_graph *g, hyb_tensor **in, void *ctx) {
    return hyb_cross_entropy(g, in[0], CE_T, ctx ? L_MASK : NULL);
}

typedef struct {
    hyb_tensor *teacher;
    float T;
    int reverse;
    const float *mask;
} kl_ctx;

static hyb_tensor *f_kl(hyb_graph *g, hyb_tensor **in, void *ctx) {
    kl_ctx *k = ctx;
    return k->reverse ? hyb_kl_reverse(g, in[0], k->teacher, k->mask, k->T)
                      : hyb_kl_forward(g, in[0], k->teacher, k->mask, k->T);
}

static void test_cross_entropy(void) {
    int64_t s[3] = {2, 3, LV};
    hyb_tensor *x = leaf(3, s, 9, 0, 2);
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *L = hyb_cross_entropy(g, x, CE_T, L_MASK);
    CHECK(L && hyb_tensor_numel(L) == 1);
    CHECK_NEAR(hyb_tensor_f32(L)[0], ce_ref(hyb_tensor_f32(x), CE_T, L_MASK, LR, LV), 1e-6);
    hyb_tensor *L2 = hyb_cross_entropy(g, x, CE_T, NULL);
    CHECK_NEAR(hyb_tensor_f32(L2)[0], ce_ref(hyb_tensor_f32(x), CE_T, NULL, LR, LV), 1e-6);
    /* nothing to average: loss 0, backward gives zero grads */
    const int32_t none[LR] = {-1, -1, -1, -1, -1, -1};
    hyb_tensor *L0 = hyb_cross_entropy(g, x, none, NULL);
    CHECK(L0 && hyb_tensor_f32(L0)[0] == 0.0f);
    gc_zero_grad(x);
    CHECK(hyb_graph_backward(g, L0, 1.0f) == HYB_OK);
    float mx = 0;
    for (int i = 0; i < LR * LV; i++)
        mx = fmaxf(mx, fabsf(hyb_tensor_f32(x->grad)[i]));
    CHECK(mx == 0.0f);
    hyb_graph_free(g);
    hyb_tensor *in[1] = {x};
    gc_check("cross_entropy (mask)", f_ce, in, 1, (void *)1, 1000);
    gc_check("cross_entropy", f_ce, in, 1, NULL, 1000);
    gc_free(x);
}

static void test_kl(void) {
    int64_t s[2] = {LR, LV};
    hyb_tensor *st = leaf(2, s, 10, 0, 2), *te = leaf(2, s, 11, 0, 3);
    /* one student logit beyond the clamp: it must get exactly zero gradient (flat region) */
    hyb_tensor_f32(st)[9] = 150.0f;
    hyb_tensor_f32(te)[20] = -400.0f; /* teacher clamp: -400 / T = -200 -> -100 */
    te->requires_grad = 0;
    for (int reverse = 0; reverse < 2; reverse++) {
        const char *nm = reverse ? "kl_reverse" : "kl_forward";
        for (int variant = 0; variant < 2; variant++) {
            kl_ctx k = {te, variant ? 2.0f : 1.0f, reverse, variant ? L_MASK : NULL};
            hyb_graph *g = hyb_graph_new();
            hyb_tensor *in[1] = {st};
            hyb_tensor *L = f_kl(g, in, &k);
            double ref =
                kl_ref(hyb_tensor_f32(st), hyb_tensor_f32(te), k.mask, LR, LV, k.T, reverse);
            CHECK_MSG(L && fabs(hyb_tensor_f32(L)[0] - ref) <= 1e-6 * fmax(1, fabs(ref)),
                      "%s T=%g: %.9g vs reference %.9g", nm, (double)k.T,
                      L ? hyb_tensor_f32(L)[0] : NAN, ref);
            CHECK(ref > 0);
            hyb_graph_free(g);
            char what[64];
            snprintf(what, sizeof what, "%s T=%g%s", nm, (double)k.T, variant ? " mask" : "");
            gc_check(what, f_kl, in, 1, &k, 1000);
            CHECK(hyb_tensor_f32(st->grad)[9] == 0.0f);
        }
    }
    /* KL of a distribution with itself is 0; the teacher never receives a gradient */
    te->requires_grad = 1;
    gc_zero_grad(te);
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *L = hyb_kl_reverse(g, st, st, NULL, 1.0f);
    CHECK(L && fabsf(hyb_tensor_f32(L)[0]) < 1e-6f);
    L = hyb_kl_reverse(g, st, te, NULL, 1.0f);
    CHECK(hyb_graph_backward(g, L, 1.0f) == HYB_OK);
    float mx = 0;
    for (int i = 0; i < LR * LV; i++)
        mx = fmaxf(mx, fabsf(hyb_tensor_f32(te->grad)[i]));
    CHECK(mx == 0.0f);
    /* a teacher that requires grad with a student that does not: nothing recorded */
    st->requires_grad = 0;
    hyb_graph_reset(g);
    L = hyb_kl_forward(g, st, te, NULL, 1.0f);
    CHECK(L && hyb_graph_n_nodes(g) == 0 && L->requires_grad == 0);
    hyb_graph_free(g);
    gc_free(st);
    gc_free(te);
}

/* SmolLM2's vocabulary: losses stay finite and match the double reference; the gradient matches
 * the closed forms (softmax - onehot; SPEC's e^q((q - p) - KL)) evaluated in double. */
static void test_losses_large_vocab(void) {
    enum { R = 4, V = 49152 };
    int64_t s[2] = {R, V};
    hyb_tensor *x = leaf(2, s, 12, 0, 4), *t = leaf(2, s, 13, 0, 4);
    float *xd = hyb_tensor_f32(x), *td = hyb_tensor_f32(t);
    for (int v = 0; v < V; v += 7)
        xd[V + v] += 90.0f; /* huge logits in row 1 */
    xd[2 * V + 5] = 300.0f; /* beyond the KL clamp */
    for (int v = 0; v < V; v += 5)
        td[3 * V + v] -= 80.0f;
    t->requires_grad = 0;
    const int32_t tg[R] = {0, 7, 49151, 1000};
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *ce = hyb_cross_entropy(g, x, tg, NULL);
    double rce = ce_ref(xd, tg, NULL, R, V);
    CHECK(ce && fabs(hyb_tensor_f32(ce)[0] - rce) <= 2e-6 * fabs(rce));
    CHECK(hyb_graph_backward(g, ce, 1.0f) == HYB_OK);
    double *row = malloc(sizeof(double) * V);
    double maxerr = 0;
    for (int r = 0; r < R; r++) {
        for (int v = 0; v < V; v++)
            row[v] = xd[(int64_t)r * V + v];
        double l = lse_d(row, V);
        for (int v = 0; v < V; v++) {
            double want = (exp(row[v] - l) - (v == tg[r])) / R;
            maxerr = fmax(maxerr, fabs(hyb_tensor_f32(x->grad)[(int64_t)r * V + v] - want));
        }
    }
    CHECK_MSG(maxerr < 1e-6, "CE grad error %.3g at V=49152", maxerr);
    for (int reverse = 0; reverse < 2; reverse++) {
        hyb_graph_reset(g);
        gc_zero_grad(x);
        hyb_tensor *L =
            reverse ? hyb_kl_reverse(g, x, t, NULL, 1.5f) : hyb_kl_forward(g, x, t, NULL, 1.5f);
        double ref = kl_ref(xd, td, NULL, R, V, 1.5, reverse);
        CHECK_MSG(L && fabs(hyb_tensor_f32(L)[0] - ref) <= 1e-5 * fabs(ref) + 1e-6,
                  "KL(%d) %.9g vs %.9g", reverse, L ? hyb_tensor_f32(L)[0] : NAN, ref);
        CHECK(hyb_graph_backward(g, L, 1.0f) == HYB_OK);
        maxerr = 0;
        double *a = malloc(sizeof(double) * V), *b = malloc(sizeof(double) * V);
        for (int r = 0; r < R; r++) {
            for (int v = 0; v < V; v++) {
                a[v] = fmin(100, fmax(-100, (double)xd[(int64_t)r * V + v]));
                b[v] = fmin(100, fmax(-100, (double)td[(int64_t)r * V + v] / 1.5));
            }
            double la = lse_d(a, V), lb = lse_d(b, V), kl = 0;
            for (int v = 0; v < V; v++)
                kl += reverse ? exp(a[v] - la) * ((a[v] - la) - (b[v] - lb))
                              : exp(b[v] - lb) * ((b[v] - lb) - (a[v] - la));
            for (int v = 0; v < V; v++) {
                double q = a[v] - la, p = b[v] - lb, x0 = xd[(int64_t)r * V + v];
                double want = (x0 > 100 || x0 < -100)
                                  ? 0
                                  : (reverse ? exp(q) * ((q - p) - kl) : exp(q) - exp(p)) / R;
                maxerr = fmax(maxerr, fabs(hyb_tensor_f32(x->grad)[(int64_t)r * V + v] - want));
            }
        }
        free(a);
        free(b);
        CHECK_MSG(maxerr < 1e-6, "KL(%d) grad error %.3g at V=49152", reverse, maxerr);
    }
    free(row);
    hyb_graph_free(g);
    gc_free(x);
    gc_free(t);
}

// ---- mixer node -----------------------------------------------------------------------------

/* A toy mixer with a causal time mix: y[b,t,d] = a[d] x[b,t,d] + c x[b,t-1,d] (params a [D],
 * c [1]). It saves a copy of x in `saved` and checks in backward that it came back intact. */
static int toy_fail;
static size_t toy_saved_bytes(void *self, int B, int T) {
    return sizeof(float) * (size_t)B * T * *(int *)self;
}
static int toy_forward(void *self, const hyb_mixer_fwd *f) {
    int D = *(int *)self;
    if (toy_fail) return hyb_error_set(HYB_ERR_ARG, "toy: asked to fail");
    const float *a = f->params[0], c = f->params[1][0];
    for (int b = 0; b < f->B; b++)
        for (int t = 0; t < f->T; t++)
            for (int d = 0; d < D; d++) {
                int64_t i = ((int64_t)b * f->T + t) * D + d;
                f->y[i] = a[d] * f->x[i] + (t ? c * f->x[i - D] : 0.0f);
            }
    if (f->saved) memcpy(f->saved, f->x, toy_saved_bytes(self, f->B, f->T));
    return 0;
}
static int toy_backward(void *self, const hyb_mixer_bwd *k) {
    int D = *(int *)self;
    if (memcmp(k->saved, k->x, toy_saved_bytes(self, k->B, k->T)) != 0)
        return hyb_error_set(HYB_ERR, "toy: saved buffer changed");
    const float *a = k->params[0], c = k->params[1][0];
    for (int b = 0; b < k->B; b++)
        for (int t = 0; t < k->T; t++)
            for (int d = 0; d < D; d++) {
                int64_t i = ((int64_t)b * k->T + t) * D + d;
                float nxt = t + 1 < k->T ? k->dy[i + D] : 0.0f;
                k->dx[i] = a[d] * k->dy[i] + c * nxt; /* written */
                k->grads[0][d] += k->dy[i] * k->x[i];
                if (t) k->grads[1][0] += k->dy[i] * k->x[i - D];
            }
    return 0;
}

static hyb_mixer *toy_mixer(int *D, hyb_mixer_desc *desc) {
    memset(desc, 0, sizeof *desc);
    desc->name = "toy";
    desc->saved_bytes = toy_saved_bytes;
    desc->kernels[HYB_DEV_CPU].forward = toy_forward;
    desc->kernels[HYB_DEV_CPU].backward = toy_backward;
    hyb_mixer *m = calloc(1, sizeof *m);
    m->desc = desc;
    m->self = D;
    snprintf(m->type, sizeof m->type, "toy");
    m->dims.d_model = *D;
    m->dims.layer = 3;
    m->n_params = 2;
    m->decls = calloc(2, sizeof *m->decls);
    snprintf(m->decls[0].name, sizeof m->decls[0].name, "a");
    m->decls[0].ndim = 1;
    m->decls[0].shape[0] = *D;
    snprintf(m->decls[1].name, sizeof m->decls[1].name, "c");
    m->decls[1].ndim = 1;
    m->decls[1].shape[0] = 1;
    m->params = calloc(2, sizeof *m->params);
    int64_t s0 = *D, s1 = 1;
    m->params[0] = gc_param(1, &s0, 21, 1, 0.5f);
    m->params[1] = gc_param(1, &s1, 22, 0.5f, 0.1f);
    return m;
}

static void toy_free(hyb_mixer *m) {
    gc_free(m->params[0]);
    gc_free(m->params[1]);
    free(m->params);
    free(m->decls);
    free(m);
}

/* the checked inputs: x, a, c (a and c are the mixer's own tensors) */
static hyb_tensor *f_mixer(hyb_graph *g, hyb_tensor **in, void *ctx) {
    return hyb_mixer_apply(g, (hyb_mixer *)ctx, in[0], NULL, NULL, 0);
}

static void test_mixer_apply(void) {
    int D = 5;
    hyb_mixer_desc desc;
    hyb_mixer *m = toy_mixer(&D, &desc);
    int64_t xs[3] = {2, 4, 5};
    hyb_tensor *x = leaf(3, xs, 23, 0, 1);
    hyb_tensor *in[3] = {x, m->params[0], m->params[1]};
    gc_check("mixer_apply", f_mixer, in, 3, m, 1000);
    /* frozen params: x still gets its gradient, the params' grads are untouched */
    m->params[0]->requires_grad = m->params[1]->requires_grad = 0;
    gc_zero_grad(m->params[0]);
    gc_check("mixer_apply (params frozen)", f_mixer, in, 3, m, 1000);
    CHECK(hyb_tensor_f32(m->params[0]->grad)[0] == 0.0f);
    m->params[0]->requires_grad = m->params[1]->requires_grad = 1;
    /* x frozen (a first layer's input): the node is still recorded for the params */
    x->requires_grad = 0;
    gc_check("mixer_apply (x frozen)", f_mixer, in, 3, m, 1000);
    x->requires_grad = 1;
    /* a plugin error comes back with the mixer and layer named */
    hyb_graph *g = hyb_graph_new();
    toy_fail = 1;
    CHECK(hyb_mixer_apply(g, m, x, NULL, NULL, 0) == NULL);
    CHECK(strstr(hyb_error(), "toy") && strstr(hyb_error(), "layer 3") &&
          strstr(hyb_error(), "asked to fail"));
    toy_fail = 0;
    int64_t bad[3] = {2, 4, 6};
    hyb_tensor *xb = hyb_tensor_new(HYB_F32, 3, bad);
    CHECK(hyb_mixer_apply(g, m, xb, NULL, NULL, 0) == NULL);
    CHECK(strstr(hyb_error(), "[2, 4, 6]") && strstr(hyb_error(), "[B, T, 5]"));
    hyb_tensor_free(xb);
    hyb_graph_free(g);
    gc_free(x);
    toy_free(m);
}

// ---- results do not depend on the number of threads ----------------------------------------

static void run_kernels(int nthreads, float *out, int64_t R, int64_t V, const float *x,
                        const float *t, const int32_t *tg) {
    omp_set_num_threads(nthreads);
    int32_t ids[64];
    for (int i = 0; i < 64; i++)
        ids[i] = (int32_t)((uint32_t)tg[i] % (uint32_t)R);
    int32_t targets[64];
    for (int i = 0; i < 64; i++)
        targets[i] = (int32_t)((uint32_t)tg[i] % (uint32_t)V);
    float wts[64], stats[3 * 64], lse[64], rstd[64];
    for (int i = 0; i < 64; i++)
        wts[i] = (i % 5) ? 1.0f : 0.5f;
    double sum;
    int64_t k = 0;
    memset(out, 0, sizeof(float) * (size_t)(8 * R * V + 16));
    hyb_cpu_ce_fwd(x, targets, wts, lse, R, V, &sum);
    out[k++] = (float)sum;
    hyb_cpu_ce_bwd(x, targets, wts, lse, out + k, R, V, 0.1f);
    k += R * V;
    hyb_cpu_kl_fwd(x, t, wts, stats, R, V, 1.3f, 1, &sum);
    out[k++] = (float)sum;
    hyb_cpu_kl_bwd(x, t, wts, stats, out + k, R, V, 1.3f, 1, 0.1f);
    k += R * V;
    hyb_cpu_softmax_fwd(x, out + k, R, V);
    hyb_cpu_softmax_bwd(out + k, t, out + k + R * V, R, V);
    k += 2 * R * V;
    hyb_cpu_rmsnorm_fwd(x, t, out + k, rstd, R, V, 1e-5f);
    hyb_cpu_rmsnorm_bwd(x, t, rstd, x, out + k + R * V, out + k + 2 * R * V, R, V);
    k += 3 * R * V;
    hyb_cpu_embedding_bwd(out + k, ids, x, 64, V / 64); /* scatter-add with repeated ids */
}

static void test_thread_invariance(void) {
    enum { R = 64, V = 4096 };
    float *x = malloc(sizeof(float) * R * V), *t = malloc(sizeof(float) * R * V);
    int32_t w[64];
    hyb_rng r;
    hyb_rng_seed(&r, 77);
    hyb_rng_fill_normal(&r, x, R * V, 0, 3);
    hyb_rng_fill_normal(&r, t, R * V, 0, 3);
    for (int i = 0; i < 64; i++)
        w[i] = (int32_t)(hyb_rng_next(&r) >> 33);
    size_t n = (size_t)(8 * R * V + 16);
    float *o1 = malloc(sizeof(float) * n), *o2 = malloc(sizeof(float) * n);
    int before = omp_get_max_threads();
    run_kernels(1, o1, R, V, x, t, w);
    run_kernels(3, o2, R, V, x, t, w);
    omp_set_num_threads(before);
    CHECK_MSG(memcmp(o1, o2, sizeof(float) * n) == 0,
              "kernel results differ between 1 and 3 threads");
    free(x);
    free(t);
    free(o1);
    free(o2);
}

// ---- grad mode, errors ----------------------------------------------------------------------

static void test_no_grad_records_nothing(void) {
    int64_t s[2] = {3, 4}, ws[2] = {2, 4};
    hyb_tensor *x = leaf(2, s, 30, 0, 1), *W = leaf(2, ws, 31, 0, 1);
    hyb_graph *g = hyb_graph_new();
    hyb_graph_set_grad(g, 0);
    CHECK(!hyb_graph_grad_enabled(g));
    hyb_tensor *y = hyb_matmul(g, x, W);
    hyb_tensor *z = hyb_softmax(g, y);
    CHECK(y && z && hyb_graph_n_nodes(g) == 0 && !z->requires_grad);
    const int32_t tg[3] = {0, 1, 1};
    hyb_tensor *L = hyb_cross_entropy(g, y, tg, NULL);
    CHECK(hyb_graph_backward(g, L, 1.0f) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "requires grad") != NULL);
    hyb_graph_set_grad(g, 1);
    /* inputs without requires_grad: nothing recorded either */
    x->requires_grad = W->requires_grad = 0;
    y = hyb_matmul(g, x, W);
    CHECK(y && hyb_graph_n_nodes(g) == 0);
    hyb_graph_free(g);
    gc_free(x);
    gc_free(W);
}

#define EXPECT_ERR(call, ...)                                                                      \
    do {                                                                                           \
        hyb_error_clear();                                                                         \
        CHECK_MSG((call) == NULL, "%s should fail", #call);                                        \
        const char *subs_[] = {__VA_ARGS__};                                                       \
        for (size_t i_ = 0; i_ < sizeof subs_ / sizeof subs_[0]; i_++)                             \
            CHECK_MSG(strstr(hyb_error(), subs_[i_]) != NULL, "%s: message '%s' lacks '%s'",       \
                      #call, hyb_error(), subs_[i_]);                                              \
    } while (0)

static void test_errors(void) {
    hyb_graph *g = hyb_graph_new();
    int64_t xs[3] = {2, 5, 576}, ws[2] = {1536, 512}, v8[1] = {8}, s37[2] = {3, 7}, s38[2] = {3, 8};
    hyb_tensor *x = hyb_tensor_new(HYB_F32, 3, xs), *W = hyb_tensor_new(HYB_F32, 2, ws);
    hyb_tensor *w8 = hyb_tensor_new(HYB_F32, 1, v8), *a = hyb_tensor_new(HYB_F32, 2, s37);
    hyb_tensor *b = hyb_tensor_new(HYB_F32, 2, s38), *h = hyb_tensor_new(HYB_F16, 2, s37);
    EXPECT_ERR(hyb_matmul(g, x, W), "hyb_matmul", "[2, 5, 576]", "[1536, 512]", "576 vs 512");
    EXPECT_ERR(hyb_matmul(g, x, w8), "hyb_matmul", "[8]", "2-D");
    EXPECT_ERR(hyb_matmul(g, h, W), "hyb_matmul", "[3, 7]", "f16");
    EXPECT_ERR(hyb_rmsnorm(g, x, w8, 1e-5f), "hyb_rmsnorm", "[2, 5, 576]", "[8]");
    EXPECT_ERR(hyb_add(g, a, b), "hyb_add", "[3, 7]", "[3, 8]");
    EXPECT_ERR(hyb_swiglu(g, a, b), "hyb_swiglu", "[3, 7]", "[3, 8]");
    EXPECT_ERR(hyb_swiglu(g, a, NULL), "hyb_swiglu", "NULL");
    EXPECT_ERR(hyb_softmax(g, h), "hyb_softmax", "f16");
    const int32_t ids[3] = {0, 2, 8};
    EXPECT_ERR(hyb_embedding(g, a, ids, 1, 3), "hyb_embedding", "ids[2] = 8", "[3, 7]");
    const int32_t tg[3] = {0, 7, 1};
    EXPECT_ERR(hyb_cross_entropy(g, a, tg, NULL), "hyb_cross_entropy", "targets[1] = 7", "[3, 7]");
    const float badmask[3] = {1, -1, 0};
    const int32_t tg_ok[3] = {0, 1, 2};
    EXPECT_ERR(hyb_cross_entropy(g, a, tg_ok, badmask), "hyb_cross_entropy", "mask[1]");
    EXPECT_ERR(hyb_kl_reverse(g, a, b, NULL, 1.0f), "hyb_kl_reverse", "[3, 7]", "[3, 8]");
    EXPECT_ERR(hyb_kl_forward(g, a, a, NULL, 0.0f), "hyb_kl_forward", "temperature");
    int64_t r4[4] = {1, 2, 3, 5};
    hyb_tensor *odd = hyb_tensor_new(HYB_F32, 4, r4);
    EXPECT_ERR(hyb_rope(g, odd, NULL, 1e4f), "hyb_rope", "[1, 2, 3, 5]", "even");
    EXPECT_ERR(hyb_rope(g, a, NULL, 1e4f), "hyb_rope", "[3, 7]", "4-D");
    /* a tensor claiming to live on the GPU: device mismatch, and no CUDA backend on this build */
    hyb_tensor *gpu = hyb_tensor_wrap(HYB_F32, 2, s37, hyb_tensor_f32(a));
    gpu->device = HYB_DEV_CUDA;
    EXPECT_ERR(hyb_add(g, a, gpu), "hyb_add", "cpu", "cuda");
    EXPECT_ERR(hyb_softmax(g, gpu), "hyb_softmax", "cuda");
    /* a view does not carry autodiff: a trainable view without a grad is reported in backward */
    hyb_tensor *p = gc_param(2, s37, 40, 0, 1);
    int64_t flat[1] = {21};
    hyb_tensor *pv = hyb_tensor_view(p, 1, flat);
    hyb_tensor *sm = hyb_softmax(g, pv);
    float c21[21];
    for (int i = 0; i < 21; i++)
        c21[i] = 1.0f;
    CHECK(sm && graph_backward_seed(g, sm, c21) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "[21]") && strstr(hyb_error(), "no ->grad"));
    /* the loss must be a scalar */
    CHECK(hyb_graph_backward(g, sm, 1.0f) == HYB_ERR_ARG && strstr(hyb_error(), "[21]"));
    hyb_tensor_free(pv);
    gc_free(p);
    hyb_tensor_free(gpu);
    hyb_tensor_free(odd);
    hyb_tensor_free(x);
    hyb_tensor_free(W);
    hyb_tensor_free(w8);
    hyb_tensor_free(a);
    hyb_tensor_free(b);
    hyb_tensor_free(h);
    hyb_graph_free(g);
}

int main(void) {
    RUN(test_fast_expf);
    RUN(test_matmul);
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_add_rmsnorm);
    RUN(test_rope);
    RUN(test_elementwise);
    RUN(test_cross_entropy);
    RUN(test_kl);
    RUN(test_losses_large_vocab);
    RUN(test_mixer_apply);
    RUN(test_thread_invariance);
    RUN(test_no_grad_records_nothing);
    RUN(test_errors);
    return harness_done();
}
