/* tests/gradcheck.h: finite-difference gradient checks for graph ops (shared by the op tests).
 *
 * For an op (or a chain of ops) out = f(inputs) the check draws a fixed random projection c and
 * compares the tape's gradient of L = sum_i c_i out_i (seeded with c through the internal
 * graph_backward_seed) with a 4-point central difference of L, evaluated by re-running the f32
 * forward with grad mode off and summing in double:
 *     dL/dx ~ (8 (L(x+h) - L(x-h)) - (L(x+2h) - L(x-2h))) / (12 h)      truncation O(h^4)
 * Error measure per input: max_j |analytic_j - numeric_j| / max_j |numeric_j|.
 *
 * Tolerance: with h = 2e-2 and O(1) inputs the truncation term is ~h^4 f^(5)/30 ~ 5e-9 f^(5).
 * The noise is the f32 rounding of the forward: a scalar loss of size ~10 is an f32 with an ulp of
 * ~1e-6, amplified by 18/(12h) = 75 to ~4e-5 absolute against the largest gradients of a loss
 * averaged over 6 rows (~0.1-0.2): ~4e-4 relative, measured up to 6e-4 (forward KL; the other ops
 * stay below 2e-4, most below 2e-5). Halving h doubles the error and doubling h halves it, as
 * rounding noise does. Hence GC_TOL = 2e-3. To show the check has the power to fail, each call
 * also verifies that an analytic gradient off by 1% (scaled by 1.01) would exceed the tolerance.
 * HYB_GC_VERBOSE=1 prints every error. */
#ifndef HYB_TEST_GRADCHECK_H
#define HYB_TEST_GRADCHECK_H
#include <stdlib.h>
#include <string.h>

#include "graph/graph_internal.h"
#include "harness.h"
#include "hyb/graph.h"

#define GC_TOL 2e-3
#define GC_H 2e-2

typedef hyb_tensor *(*gc_fwd)(hyb_graph *g, hyb_tensor **in, void *ctx);

/* heap f32 tensor ~ N(mean, std), requires_grad with a zeroed heap grad */
static hyb_tensor *gc_param(int ndim, const int64_t *shape, uint64_t seed, float mean, float std) {
    hyb_tensor *t = hyb_tensor_new(HYB_F32, ndim, shape);
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    hyb_rng_fill_normal(&r, hyb_tensor_f32(t), hyb_tensor_numel(t), mean, std);
    t->requires_grad = 1;
    t->grad = hyb_tensor_new(HYB_F32, ndim, shape);
    return t;
}

static void gc_free(hyb_tensor *t) {
    if (!t) return;
    hyb_tensor_free(t->grad);
    hyb_tensor_free(t);
}

static void gc_zero_grad(hyb_tensor *t) {
    if (t->grad) memset(t->grad->data, 0, hyb_tensor_nbytes(t->grad));
}

static double gc_eval(hyb_graph *g, gc_fwd f, hyb_tensor **in, void *ctx, const float *c) {
    hyb_graph_reset(g);
    hyb_graph_set_grad(g, 0);
    hyb_tensor *out = f(g, in, ctx);
    hyb_graph_set_grad(g, 1);
    if (!out) {
        harness_fail(__FILE__, __LINE__, "forward failed: %s", hyb_error());
        return NAN;
    }
    const float *o = hyb_tensor_cf32(out);
    double L = 0;
    for (int64_t i = 0; i < hyb_tensor_numel(out); i++)
        L += (double)c[i] * o[i];
    return L;
}

/* Check every input with requires_grad (at most max_elems elements each, evenly spaced).
 * Returns the worst error over the inputs. */
static double gc_check(const char *what, gc_fwd f, hyb_tensor **in, int n_in, void *ctx,
                       int max_elems) {
    hyb_graph *g = hyb_graph_new();
    for (int k = 0; k < n_in; k++)
        gc_zero_grad(in[k]);
    hyb_tensor *out = f(g, in, ctx);
    if (!out) {
        harness_fail(__FILE__, __LINE__, "%s: forward failed: %s", what, hyb_error());
        hyb_graph_free(g);
        return INFINITY;
    }
    int64_t n_out = hyb_tensor_numel(out);
    float *c = malloc(sizeof(float) * (size_t)n_out);
    hyb_rng r;
    hyb_rng_seed(&r, 1234);
    hyb_rng_fill_normal(&r, c, n_out, 0.0f, 1.0f);
    int rc = graph_backward_seed(g, out, c);
    CHECK_MSG(rc == HYB_OK, "%s: backward failed: %s", what, hyb_error());
    double worst = 0;
    for (int k = 0; k < n_in; k++) {
        hyb_tensor *x = in[k];
        if (!x->requires_grad) continue;
        const int64_t n = hyb_tensor_numel(x);
        float *an = malloc(sizeof(float) * (size_t)n);
        memcpy(an, x->grad->data, sizeof(float) * (size_t)n);
        int64_t step = n > max_elems ? (n + max_elems - 1) / max_elems : 1;
        double maxnum = 0, maxdiff = 0, maxdiff_wrong = 0;
        float *xd = hyb_tensor_f32(x);
        for (int64_t j = 0; j < n; j += step) {
            const float x0 = xd[j];
            double Lv[4];
            const double off[4] = {GC_H, -GC_H, 2 * GC_H, -2 * GC_H};
            for (int s = 0; s < 4; s++) {
                xd[j] = (float)(x0 + off[s]);
                Lv[s] = gc_eval(g, f, in, ctx, c);
            }
            xd[j] = x0;
            double num = (8.0 * (Lv[0] - Lv[1]) - (Lv[2] - Lv[3])) / (12.0 * GC_H);
            double d = fabs((double)an[j] - num), dw = fabs(1.01 * (double)an[j] - num);
            if (fabs(num) > maxnum) maxnum = fabs(num);
            if (d > maxdiff || d != d) maxdiff = d;
            if (dw > maxdiff_wrong) maxdiff_wrong = dw;
        }
        double err = maxnum > 0 ? maxdiff / maxnum : maxdiff;
        double err_wrong = maxnum > 0 ? maxdiff_wrong / maxnum : maxdiff_wrong;
        CHECK_MSG(err <= GC_TOL, "%s: input %d (%s): gradient error %.3g > %.3g (max |grad| %.3g)",
                  what, k, x->name, err, GC_TOL, maxnum);
        CHECK_MSG(maxnum > 0, "%s: input %d has an all-zero gradient: the check is vacuous", what,
                  k);
        CHECK_MSG(err_wrong > GC_TOL,
                  "%s: input %d: a 1%% gradient error (%.3g) would go unnoticed", what, k,
                  err_wrong);
        if (getenv("HYB_GC_VERBOSE"))
            printf("  %-28s input %d: err %.2e (1%%-wrong %.2e)\n", what, k, err, err_wrong);
        if (err > worst || err != err) worst = err;
        free(an);
    }
    free(c);
    hyb_graph_free(g);
    return worst;
}
#endif
