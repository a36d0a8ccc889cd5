/* core/optim.c: AdamW (decoupled weight decay, bias correction, f32 moments) and global-norm
 * gradient clipping. The update is the one torch.optim.AdamW performs:
 *
 * with lr = the optimiser's lr times the parameter's lr_scale (1 unless set):
 *
 *   p <- p * (1 - lr * wd)                  (only params with decay; norms/biases/no_decay skip it)
 *   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
 *   p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 *
 * Parameters without a gradient (requires_grad == 0 or grad == NULL: frozen) are left alone and
 * their moments do not advance.
 *
 * The arithmetic runs on the parameters' device through its backend (be->adamw, be->sumsq,
 * be->scale); the moments live there too and are read back only to be saved. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/backend.h"
#include "hyb/model.h"
#include "hyb/safetensors.h"

int hyb_adamw_new(hyb_tensor **params, int n, float lr, float wd, hyb_adamw **out) {
    *out = NULL;
    if (n < 0 || (n > 0 && !params))
        return hyb_error_set(HYB_ERR_ARG, "hyb_adamw_new: bad parameter list (n = %d)", n);
    if (!(lr >= 0) || !(wd >= 0))
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_adamw_new: lr (%g) and weight decay (%g) must be >= 0", lr, wd);
    hyb_adamw *o = calloc(1, sizeof *o);
    if (!o) return hyb_error_set(HYB_ERR_NOMEM, "hyb_adamw_new: out of memory");
    o->lr = lr;
    o->weight_decay = wd;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    o->eps = 1e-8f;
    o->n = n;
    o->params = calloc((size_t)n + 1, sizeof *o->params);
    o->m = calloc((size_t)n + 1, sizeof *o->m);
    o->v = calloc((size_t)n + 1, sizeof *o->v);
    o->decay = calloc((size_t)n + 1, sizeof *o->decay);
    o->lr_scale = calloc((size_t)n + 1, sizeof *o->lr_scale);
    if (!o->params || !o->m || !o->v || !o->decay || !o->lr_scale) goto oom;
    for (int i = 0; i < n; i++) {
        hyb_tensor *p = params[i];
        if (!p || p->dtype != HYB_F32 || !hyb_tensor_is_contiguous(p)) {
            hyb_adamw_free(o);
            return hyb_error_set(HYB_ERR_ARG,
                                 "hyb_adamw_new: parameter %d ('%s') must be a contiguous f32 "
                                 "tensor",
                                 i, p ? p->name : "(null)");
        }
        if (i > 0 && p->device != params[0]->device) {
            hyb_adamw_free(o);
            return hyb_error_set(HYB_ERR_ARG,
                                 "hyb_adamw_new: parameter %d ('%s') is on %s, parameter 0 on %s: "
                                 "one optimiser steps the parameters of one device",
                                 i, p->name, hyb_device_name(p->device),
                                 hyb_device_name(params[0]->device));
        }
        if (!o->be && !(o->be = hyb_backend_get(p->device))) {
            hyb_adamw_free(o);
            return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "hyb_adamw_new");
        }
        o->params[i] = p;
        /* a model's parameters get their grads lazily; the optimiser steps every parameter
         * that wants one, reached by a backward or not (weight decay), so allocate them now */
        if (p->owner == HYB_OWN_PARAM && hyb_tensor_grad_ensure(p) != HYB_OK) goto oom;
        int64_t ne = hyb_tensor_numel(p);
        size_t nb = (size_t)(ne ? ne : 1) * sizeof(float);
        o->m[i] = o->be->alloc(o->be, nb);
        o->v[i] = o->be->alloc(o->be, nb);
        if (!o->m[i] || !o->v[i]) goto oom;
        if (o->be->memset0(o->be, o->m[i], nb) != HYB_OK ||
            o->be->memset0(o->be, o->v[i], nb) != HYB_OK) {
            int rc = hyb_error_wrap(HYB_ERR, "hyb_adamw_new: moments of '%s'", p->name);
            hyb_adamw_free(o);
            return rc;
        }
        o->decay[i] = p->ndim >= 2; /* default: matrices decay, vectors (norms, biases) do not */
        o->lr_scale[i] = 1.0f;
    }
    *out = o;
    return HYB_OK;
oom:
    hyb_adamw_free(o);
    return hyb_error_set(HYB_ERR_NOMEM,
                         "hyb_adamw_new: out of memory for the moments of %d tensors", n);
}

int hyb_adamw_new_model(hyb_model *m, float lr, float wd, hyb_adamw **out) {
    int n;
    hyb_tensor **p = hyb_model_params(m, &n);
    HYB_TRY(hyb_adamw_new(p, n, lr, wd, out));
    for (int i = 0; i < n; i++)
        (*out)->decay[i] = !m->no_decay[i];
    return HYB_OK;
}

void hyb_adamw_set_decay(hyb_adamw *o, int i, int decay) {
    HYB_ASSERT(o && i >= 0 && i < o->n);
    o->decay[i] = decay != 0;
}

hyb_tensor hyb_adamw_moment(const hyb_adamw *o, int i, int second) {
    hyb_tensor mt = *o->params[i];
    mt.owner = HYB_OWN_EXTERNAL;
    mt.grad = NULL;
    mt.requires_grad = 0;
    mt.data = second ? o->v[i] : o->m[i];
    return mt;
}

int hyb_adamw_set_lr_scale(hyb_adamw *o, int i, float scale) {
    if (!o || i < 0 || i >= o->n)
        return hyb_error_set(HYB_ERR_ARG, "hyb_adamw_set_lr_scale: no parameter %d", i);
    if (!(scale >= 0) || !isfinite(scale))
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_adamw_set_lr_scale: scale %g for '%s' must be finite and >= 0",
                             scale, o->params[i]->name);
    o->lr_scale[i] = scale;
    return HYB_OK;
}

void hyb_adamw_free(hyb_adamw *o) {
    if (!o) return;
    for (int i = 0; i < o->n && o->be; i++) {
        if (o->m && o->m[i]) o->be->free(o->be, o->m[i]);
        if (o->v && o->v[i]) o->be->free(o->be, o->v[i]);
    }
    free(o->m);
    free(o->v);
    free(o->params);
    free(o->decay);
    free(o->lr_scale);
    free(o);
}

static int has_grad(const hyb_tensor *p) {
    return p && p->requires_grad && p->grad && p->grad->data &&
           hyb_tensor_numel(p->grad) == hyb_tensor_numel(p);
}

float hyb_grad_clip(hyb_tensor **params, int n, float max_norm) {
    double ss = 0;
    for (int i = 0; i < n; i++) {
        if (!has_grad(params[i])) continue;
        const hyb_backend *be = hyb_backend_get(params[i]->device);
        double s = 0;
        if (!be || be->sumsq(be, hyb_tensor_cf32(params[i]->grad), hyb_tensor_numel(params[i]),
                             &s) != HYB_OK) {
            hyb_error_wrap(HYB_ERR, "hyb_grad_clip: '%s'", params[i]->name);
            return NAN; /* the caller skips the step on a non-finite norm */
        }
        ss += s;
    }
    double norm = sqrt(ss);
    /* Non-finite norm: leave the grads alone and report it (the caller should skip the step). */
    if (max_norm > 0 && isfinite(norm) && norm > max_norm) {
        float scale = (float)((double)max_norm / (norm + 1e-6));
        for (int i = 0; i < n; i++) {
            if (!has_grad(params[i])) continue;
            const hyb_backend *be = hyb_backend_get(params[i]->device);
            if (!be || be->scale(be, hyb_tensor_f32(params[i]->grad), scale,
                                 hyb_tensor_numel(params[i])) != HYB_OK) {
                hyb_error_wrap(HYB_ERR, "hyb_grad_clip: '%s'", params[i]->name);
                return NAN;
            }
        }
    }
    return (float)norm;
}

int hyb_adamw_step(hyb_adamw *o) {
    if (!(o->lr >= 0) || !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) ||
        !(o->eps > 0) || !(o->weight_decay >= 0))
        return hyb_error_set(
            HYB_ERR_ARG,
            "hyb_adamw_step: bad hyper-parameters lr %g betas (%g, %g) eps %g weight_decay %g",
            o->lr, o->beta1, o->beta2, o->eps, o->weight_decay);
    if (o->step < 0 || o->step >= ((int64_t)1 << 53))
        return hyb_error_set(HYB_ERR_ARG, "hyb_adamw_step: step %lld out of range [0, 2^53)",
                             (long long)o->step);
    o->step++;
    const double t = (double)o->step;
    const double bc1 = 1.0 - pow((double)o->beta1, t);
    const double bc2 = 1.0 - pow((double)o->beta2, t);
    const float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    /* every parameter with a gradient in one backend call (be->adamw_multi) */
    hyb_adamw_tensor *tab = malloc(sizeof *tab * (size_t)(o->n ? o->n : 1));
    if (!tab) return hyb_error_set(HYB_ERR_NOMEM, "hyb_adamw_step: out of memory");
    int k = 0;
    for (int i = 0; i < o->n; i++) {
        hyb_tensor *p = o->params[i];
        if (!has_grad(p)) continue;
        const float lr = o->lr * o->lr_scale[i];
        tab[k++] = (hyb_adamw_tensor){.p = hyb_tensor_f32(p),
                                      .g = hyb_tensor_cf32(p->grad),
                                      .m = o->m[i],
                                      .v = o->v[i],
                                      .n = hyb_tensor_numel(p),
                                      .shrink = o->decay[i] ? 1.0f - lr * o->weight_decay : 1.0f,
                                      .step_size = (float)((double)lr / bc1)};
    }
    int rc = HYB_OK;
    if (o->be->adamw_multi)
        rc = o->be->adamw_multi(o->be, tab, k, b1, b2, eps, inv_sqrt_bc2);
    else /* a backend without the multi-tensor entry */
        for (int i = 0; i < k && rc == HYB_OK; i++)
            rc = o->be->adamw(o->be, tab[i].p, tab[i].g, tab[i].m, tab[i].v, tab[i].n, b1, b2, eps,
                              tab[i].shrink, tab[i].step_size, inv_sqrt_bc2);
    free(tab);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "hyb_adamw_step: %d parameter tensors", k);
    return HYB_OK;
}

// ---- state checkpoints
// ----------------------------------------------------------------------------

static void state_name(const hyb_adamw *o, int i, const char *suffix, char *buf, size_t n) {
    if (o->params[i]->name[0])
        snprintf(buf, n, "%s.%s", o->params[i]->name, suffix);
    else
        snprintf(buf, n, "param.%d.%s", i, suffix);
}

int hyb_adamw_save(const hyb_adamw *o, const char *path) {
    hyb_st_writer *w = hyb_st_writer_new();
    if (!w) return HYB_ERR_NOMEM;
    int rc = HYB_OK;
    char name[160], val[64];
    for (int i = 0; i < o->n && rc == HYB_OK; i++) {
        const hyb_tensor *p = o->params[i];
        (void)p;
        for (int k = 0; k < 2 && rc == HYB_OK; k++) {
            /* the moments as tensors of the parameter's device: the writer copies device data */
            hyb_tensor mt = hyb_adamw_moment(o, i, k);
            state_name(o, i, k ? "exp_avg_sq" : "exp_avg", name, sizeof name);
            rc = hyb_st_writer_add_tensor(w, name, &mt);
        }
    }
#define META(k, fmt, v)                                                                            \
    if (rc == HYB_OK) {                                                                            \
        snprintf(val, sizeof val, fmt, v);                                                         \
        rc = hyb_st_writer_meta(w, k, val);                                                        \
    }
    META("optimizer", "%s", "adamw")
    META("step", "%lld", (long long)o->step)
    META("lr", "%.9g", (double)o->lr)
    META("beta1", "%.9g", (double)o->beta1)
    META("beta2", "%.9g", (double)o->beta2)
    META("eps", "%.9g", (double)o->eps)
    META("weight_decay", "%.9g", (double)o->weight_decay)
#undef META
    if (rc == HYB_OK) rc = hyb_st_writer_save(w, path);
    hyb_st_writer_free(w);
    return rc;
}

int hyb_adamw_load(hyb_adamw *o, const char *path) {
    hyb_safetensors *st;
    HYB_TRY(hyb_safetensors_open(path, &st));
    int rc = HYB_OK;
    char name[160];
    const char *kind = hyb_safetensors_meta(st, "optimizer");
    const char *step = hyb_safetensors_meta(st, "step");
    char *end = NULL;
    errno = 0;
    long long stepv = step ? strtoll(step, &end, 10) : -1;
    /* the step is a counter in [0, 2^53] (exact in a double; step++ cannot overflow) */
    if (!kind || strcmp(kind, "adamw") != 0 || !step || !*step || *end || errno == ERANGE ||
        stepv < 0 || stepv > ((long long)1 << 53)) {
        rc = hyb_error_set(HYB_ERR_FORMAT,
                           "%s: not an AdamW state file (metadata optimizer/step missing or bad)",
                           path);
        goto done;
    }
    /* validate everything first (pass 0), then copy (pass 1) */
    for (int pass = 0; pass < 2 && rc == HYB_OK; pass++)
        for (int i = 0; i < o->n && rc == HYB_OK; i++) {
            const hyb_tensor *p = o->params[i];
            for (int k = 0; k < 2 && rc == HYB_OK; k++) {
                state_name(o, i, k ? "exp_avg_sq" : "exp_avg", name, sizeof name);
                const hyb_st_tensor *t = hyb_safetensors_find(st, name);
                if (!t) {
                    rc = hyb_error_set(HYB_ERR_NOTFOUND, "%s: optimiser state '%s' is missing",
                                       path, name);
                    break;
                }
                int same = t->ndim == p->ndim && t->dtype == HYB_ST_F32;
                for (int d = 0; same && d < p->ndim; d++)
                    same = t->shape[d] == p->shape[d];
                if (!same) {
                    char a[128], b[128];
                    rc = hyb_error_set(
                        HYB_ERR_FORMAT,
                        "%s: optimiser state '%s': file has %s %s, the parameter is %s", path, name,
                        hyb_shape_str(t->ndim, t->shape, a, sizeof a), hyb_st_dtype_name(t->dtype),
                        hyb_shape_str(p->ndim, p->shape, b, sizeof b));
                    break;
                }
                if (pass == 1) {
                    hyb_tensor mt = hyb_adamw_moment(o, i, k);
                    rc = hyb_safetensors_read_tensor(st, t, &mt);
                }
            }
        }
    if (rc == HYB_OK) o->step = stepv;
done:
    hyb_safetensors_close(st);
    return rc;
}
