/* tests/test_optim.c: AdamW against a double-precision transcription of torch.optim.AdamW's
 * update (decoupled weight decay, bias correction), decay skipped for no-decay params, frozen
 * params untouched, per-parameter lr scales, the global-norm clip, and state save/resume. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "hyb/model.h"

static hyb_tensor *param(int ndim, const int64_t *shape, const char *name) {
    hyb_tensor *t = hyb_tensor_new(HYB_F32, ndim, shape);
    t->grad = hyb_tensor_new(HYB_F32, ndim, shape);
    t->requires_grad = 1;
    snprintf(t->name, sizeof t->name, "%s", name);
    return t;
}

static void param_free(hyb_tensor *t) {
    hyb_tensor_free(t->grad);
    t->grad = NULL;
    hyb_tensor_free(t);
}

/* Reference state for one tensor, in double. */
typedef struct {
    int n;
    double *p, *m, *v;
} ref_t;

static void ref_step(ref_t *r, const float *g, int t, double lr, double b1, double b2, double eps,
                     double wd, int decay) {
    double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    for (int i = 0; i < r->n; i++) {
        if (decay) r->p[i] *= 1 - lr * wd;
        r->m[i] = b1 * r->m[i] + (1 - b1) * g[i];
        r->v[i] = b2 * r->v[i] + (1 - b2) * (double)g[i] * g[i];
        double mhat = r->m[i] / bc1, vhat = r->v[i] / bc2;
        r->p[i] -= lr * mhat / (sqrt(vhat) + eps);
    }
}

static void test_adamw_matches_reference(void) {
    int64_t s2[2] = {3, 5}, s1[1] = {7};
    hyb_tensor *w = param(2, s2, "w"), *b = param(1, s1, "b");
    hyb_tensor *ps[2] = {w, b};
    hyb_rng r;
    hyb_rng_seed(&r, 11);
    hyb_rng_fill_normal(&r, hyb_tensor_f32(w), 15, 0, 1);
    hyb_rng_fill_normal(&r, hyb_tensor_f32(b), 7, 0, 1);
    ref_t ref[2];
    for (int k = 0; k < 2; k++) {
        int n = (int)hyb_tensor_numel(ps[k]);
        ref[k].n = n;
        ref[k].p = calloc((size_t)n, sizeof(double));
        ref[k].m = calloc((size_t)n, sizeof(double));
        ref[k].v = calloc((size_t)n, sizeof(double));
        for (int i = 0; i < n; i++)
            ref[k].p[i] = hyb_tensor_f32(ps[k])[i];
    }
    hyb_adamw *o;
    const double lr = 1e-2, wd = 0.1;
    CHECK(hyb_adamw_new(ps, 2, (float)lr, (float)wd, &o) == HYB_OK);
    CHECK(o->decay[0] == 1 && o->decay[1] == 0); /* default: vectors do not decay */
    o->beta1 = 0.8f;
    o->beta2 = 0.95f;
    o->eps = 1e-6f;
    for (int t = 1; t <= 4; t++) {
        for (int k = 0; k < 2; k++) {
            float *g = hyb_tensor_f32(ps[k]->grad);
            hyb_rng_fill_normal(&r, g, ref[k].n, 0,
                                t == 3 ? 1e-3f : 1.0f); /* one small-grad step */
            ref_step(&ref[k], g, t, lr, 0.8f, 0.95f, 1e-6f, wd, k == 0);
        }
        CHECK(hyb_adamw_step(o) == HYB_OK);
        CHECK(o->step == t);
        for (int k = 0; k < 2; k++) {
            double maxerr = 0;
            for (int i = 0; i < ref[k].n; i++) {
                double e =
                    fabs(hyb_tensor_f32(ps[k])[i] - ref[k].p[i]) / fmax(1e-3, fabs(ref[k].p[i]));
                if (e > maxerr) maxerr = e;
            }
            CHECK_MSG(maxerr < 2e-6, "step %d tensor %d: max rel err %g", t, k, maxerr);
        }
    }
    /* the update really moved the params (the check above could not pass with a no-op) */
    double moved = 0;
    hyb_rng_seed(&r, 11);
    float w0[15];
    hyb_rng_fill_normal(&r, w0, 15, 0, 1);
    for (int i = 0; i < 15; i++)
        moved += fabs(hyb_tensor_f32(w)[i] - w0[i]);
    CHECK(moved > 15 * 1e-2);
    hyb_adamw_free(o);
    for (int k = 0; k < 2; k++) {
        free(ref[k].p);
        free(ref[k].m);
        free(ref[k].v);
    }
    param_free(w);
    param_free(b);
}

/* With zero grads the Adam part is 0: decaying params shrink by (1 - lr wd)^t, others stay. */
static void test_weight_decay_only_where_asked(void) {
    int64_t s2[2] = {2, 2}, s1[1] = {3};
    hyb_tensor *w = param(2, s2, "w"), *n1 = param(1, s1, "norm"), *a = param(2, s2, "A_log");
    hyb_tensor *frozen = param(2, s2, "frozen");
    frozen->requires_grad = 0;
    hyb_tensor *ps[4] = {w, n1, a, frozen};
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < hyb_tensor_numel(ps[k]); i++)
            hyb_tensor_f32(ps[k])[i] = 1.0f + (float)i;
    for (int i = 0; i < 4; i++)
        hyb_tensor_f32(frozen->grad)[i] = 5.0f; /* must be ignored */
    hyb_adamw *o;
    CHECK(hyb_adamw_new(ps, 4, 0.1f, 0.5f, &o) == HYB_OK);
    hyb_adamw_set_decay(o, 2, 0); /* a matrix declared no_decay (like A_log) */
    for (int t = 0; t < 3; t++)
        CHECK(hyb_adamw_step(o) == HYB_OK);
    double f = pow(1 - 0.1 * 0.5, 3);
    for (int i = 0; i < 4; i++) {
        CHECK_NEAR(hyb_tensor_f32(w)[i], (1.0 + i) * f, 1e-6);
        CHECK(hyb_tensor_f32(a)[i] == 1.0f + (float)i);
        CHECK(hyb_tensor_f32(frozen)[i] == 1.0f + (float)i);
    }
    for (int i = 0; i < 3; i++)
        CHECK(hyb_tensor_f32(n1)[i] == 1.0f + (float)i);
    /* bad hyper-parameters are reported, not applied */
    o->beta1 = 1.5f;
    CHECK(hyb_adamw_step(o) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "betas") != NULL);
    hyb_adamw_free(o);
    CHECK(hyb_adamw_new(ps, 4, -1.0f, 0.0f, &o) == HYB_ERR_ARG);
    for (int k = 0; k < 4; k++)
        param_free(ps[k]);
}

/* lr groups: a parameter with lr_scale s is updated exactly as with lr * s (bitwise, for a scale
 * that is a power of two), decay included; scale 0 leaves it alone; bad scales are refused. */
static void test_lr_scale(void) {
    int64_t s2[2] = {3, 4};
    hyb_tensor *a = param(2, s2, "a"), *b = param(2, s2, "b"), *c = param(2, s2, "c");
    hyb_tensor *ps[3] = {a, b, c};
    hyb_rng r;
    hyb_rng_seed(&r, 5);
    for (int k = 0; k < 3; k++) {
        hyb_rng_fill_normal(&r, hyb_tensor_f32(ps[k]), 12, 0.0f, 1.0f);
        hyb_rng_fill_normal(&r, hyb_tensor_f32(ps[k]->grad), 12, 0.0f, 1.0f);
    }
    /* b is a copy of a (values and grad): stepped by a second optimiser at half the lr */
    memcpy(hyb_tensor_f32(b), hyb_tensor_f32(a), 12 * sizeof(float));
    memcpy(hyb_tensor_f32(b->grad), hyb_tensor_f32(a->grad), 12 * sizeof(float));
    float c0[12];
    memcpy(c0, hyb_tensor_f32(c), sizeof c0);
    hyb_tensor *pa[2] = {a, c}, *pb[1] = {b};
    hyb_adamw *oa, *ob;
    CHECK(hyb_adamw_new(pa, 2, 1e-2f, 0.1f, &oa) == HYB_OK);
    CHECK(hyb_adamw_new(pb, 1, 5e-3f, 0.1f, &ob) == HYB_OK);
    CHECK(hyb_adamw_set_lr_scale(oa, 0, 0.5f) == HYB_OK);
    CHECK(hyb_adamw_set_lr_scale(oa, 1, 0.0f) == HYB_OK);
    for (int t = 0; t < 4; t++) {
        CHECK(hyb_adamw_step(oa) == HYB_OK);
        CHECK(hyb_adamw_step(ob) == HYB_OK);
    }
    CHECK_MSG(memcmp(hyb_tensor_f32(a), hyb_tensor_f32(b), 12 * sizeof(float)) == 0,
              "lr 1e-2 x scale 0.5 differs from lr 5e-3");
    CHECK_MSG(memcmp(hyb_tensor_f32(c), c0, sizeof c0) == 0, "scale 0 changed the parameter");
    CHECK(hyb_tensor_f32(a)[0] != hyb_tensor_f32(c)[0]); /* the step did something */
    CHECK(hyb_adamw_set_lr_scale(oa, 0, -1.0f) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "'a'") != NULL);
    CHECK(hyb_adamw_set_lr_scale(oa, 0, NAN) == HYB_ERR_ARG);
    CHECK(hyb_adamw_set_lr_scale(oa, 2, 1.0f) == HYB_ERR_ARG);
    hyb_adamw_free(oa);
    hyb_adamw_free(ob);
    for (int k = 0; k < 3; k++)
        param_free(ps[k]);
}

static void test_grad_clip(void) {
    int64_t s1[1] = {2}, s2[2] = {1, 1};
    hyb_tensor *a = param(1, s1, "a"), *b = param(2, s2, "b"), *fr = param(1, s1, "frozen");
    fr->requires_grad = 0;
    hyb_tensor *ps[3] = {a, b, fr};
    float *ga = hyb_tensor_f32(a->grad), *gb = hyb_tensor_f32(b->grad),
          *gf = hyb_tensor_f32(fr->grad);
    ga[0] = 3;
    ga[1] = 0;
    gb[0] = -4;
    gf[0] = 100; /* frozen: neither counted nor scaled */
    gf[1] = 100;
    float n = hyb_grad_clip(ps, 3, 10.0f); /* below the limit: untouched */
    CHECK_NEAR(n, 5.0, 1e-6);
    CHECK(ga[0] == 3 && gb[0] == -4);
    n = hyb_grad_clip(ps, 3, 0.0f); /* no clipping */
    CHECK_NEAR(n, 5.0, 1e-6);
    CHECK(ga[0] == 3);
    n = hyb_grad_clip(ps, 3, 1.0f);
    CHECK_NEAR(n, 5.0, 1e-6);
    CHECK_NEAR(ga[0], 3.0 / (5.0 + 1e-6), 1e-7);
    CHECK_NEAR(gb[0], -4.0 / (5.0 + 1e-6), 1e-7);
    CHECK(gf[0] == 100);
    double after = sqrt((double)ga[0] * ga[0] + (double)gb[0] * gb[0]);
    CHECK_NEAR(after, 1.0, 1e-6);
    gb[0] = NAN;
    n = hyb_grad_clip(ps, 3, 1.0f);
    CHECK(isnan(n));
    CHECK_NEAR(ga[0], 3.0 / (5.0 + 1e-6), 1e-7); /* untouched */
    for (int k = 0; k < 3; k++)
        param_free(ps[k]);
}

/* Save after 3 steps, restore into a fresh optimiser over copies of the params, continue both:
 * the resumed run is bitwise identical to the uninterrupted one. */
static void test_state_save_resume(void) {
    char dir[64];
    snprintf(dir, sizeof dir, "%s/hyb_test_optim_XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    CHECK(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof path, "%s/optim.safetensors", dir);
    int64_t s2[2] = {4, 3}, s1[1] = {5};
    hyb_tensor *a[2] = {param(2, s2, "w"), param(1, s1, "b")};
    hyb_rng r;
    hyb_rng_seed(&r, 3);
    for (int k = 0; k < 2; k++)
        hyb_rng_fill_normal(&r, hyb_tensor_f32(a[k]), hyb_tensor_numel(a[k]), 0, 1);
    hyb_adamw *oa;
    CHECK(hyb_adamw_new(a, 2, 1e-2f, 0.1f, &oa) == HYB_OK);
    for (int t = 0; t < 3; t++) {
        for (int k = 0; k < 2; k++)
            hyb_rng_fill_normal(&r, hyb_tensor_f32(a[k]->grad), hyb_tensor_numel(a[k]), 0, 1);
        CHECK(hyb_adamw_step(oa) == HYB_OK);
    }
    CHECK(hyb_adamw_save(oa, path) == HYB_OK);
    hyb_tensor *b[2];
    for (int k = 0; k < 2; k++) {
        b[k] = param(a[k]->ndim, a[k]->shape, a[k]->name);
        memcpy(b[k]->data, a[k]->data, hyb_tensor_nbytes(a[k]));
    }
    hyb_adamw *ob;
    CHECK(hyb_adamw_new(b, 2, 1e-2f, 0.1f, &ob) == HYB_OK);
    CHECK(hyb_adamw_load(ob, path) == HYB_OK);
    CHECK(ob->step == 3);
    for (int t = 0; t < 2; t++) {
        for (int k = 0; k < 2; k++) {
            hyb_rng_fill_normal(&r, hyb_tensor_f32(a[k]->grad), hyb_tensor_numel(a[k]), 0, 1);
            memcpy(b[k]->grad->data, a[k]->grad->data, hyb_tensor_nbytes(a[k]));
        }
        CHECK(hyb_adamw_step(oa) == HYB_OK && hyb_adamw_step(ob) == HYB_OK);
    }
    for (int k = 0; k < 2; k++)
        CHECK(memcmp(a[k]->data, b[k]->data, hyb_tensor_nbytes(a[k])) == 0);
    /* an optimiser over a subset of the params restores its part */
    hyb_adamw *oc;
    hyb_tensor *c = param(a[0]->ndim, a[0]->shape, "w");
    CHECK(hyb_adamw_new(&c, 1, 1e-2f, 0.1f, &oc) == HYB_OK);
    CHECK(hyb_adamw_load(oc, path) == HYB_OK); /* extra state entries (for "b") are fine */
    hyb_adamw_free(oc);
    param_free(c);
    /* wrong shape and missing entries are named */
    int64_t s3[2] = {3, 4};
    hyb_tensor *bad = param(2, s3, "w");
    CHECK(hyb_adamw_new(&bad, 1, 1e-2f, 0.1f, &oc) == HYB_OK);
    CHECK(hyb_adamw_load(oc, path) == HYB_ERR_FORMAT);
    CHECK_MSG(strstr(hyb_error(), "w.exp_avg") && strstr(hyb_error(), "[4, 3]") &&
                  strstr(hyb_error(), "[3, 4]"),
              "%s", hyb_error());
    CHECK(oc->step == 0);
    snprintf(bad->name, sizeof bad->name, "other");
    CHECK(hyb_adamw_load(oc, path) == HYB_ERR_NOTFOUND);
    CHECK(strstr(hyb_error(), "other.exp_avg") != NULL);
    hyb_adamw_free(oc);
    param_free(bad);
    hyb_adamw_free(oa);
    hyb_adamw_free(ob);
    for (int k = 0; k < 2; k++) {
        param_free(a[k]);
        param_free(b[k]);
    }
    unlink(path);
    rmdir(dir);
}

int main(void) {
    RUN(test_adamw_matches_reference);
    RUN(test_weight_decay_only_where_asked);
    RUN(test_lr_scale);
    RUN(test_grad_clip);
    RUN(test_state_save_resume);
    return harness_done();
}
