/* core/train.c: the distillation pieces (see hyb/train.h).
 *
 * Sections: schedule, freeze, clone, distillation loss (a weighted-sum node), trainer (gradient
 * accumulation, clip, AdamW), checkpoints (one safetensors file with params, moments, metadata). */
#include "hyb/train.h"

#include <dirent.h>
#include <fnmatch.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "graph/graph_internal.h"
#include "hyb/atomic.h"
#include "hyb/comm.h"
#include "hyb/safetensors.h"

/* A checkpoint's counters are integers in [0, HYB_CKPT_COUNTER_MAX] (2^53: exact in a double, and
 * far enough from INT64_MAX that step++ and tokens += n cannot overflow). */
#define HYB_CKPT_COUNTER_MAX ((int64_t)1 << 53)

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

// ---- schedule -----------------------------------------------------------------------------------

float hyb_lr_at(const hyb_lr_sched *s, int64_t step) {
    if (step < 0) step = 0;
    if (s->warmup > 0 && step < s->warmup)
        return (float)((double)s->lr_max * (double)(step + 1) / (double)s->warmup);
    if (s->total <= 0) return s->lr_max;
    int64_t span = s->total - s->warmup - 1;
    if (span < 1) span = 1;
    double p = (double)(step - s->warmup) / (double)span;
    if (p > 1) p = 1;
    return (float)((double)s->lr_min +
                   ((double)s->lr_max - (double)s->lr_min) * 0.5 * (1.0 + cos(M_PI * p)));
}

// ---- freeze -------------------------------------------------------------------------------------

int hyb_model_freeze(hyb_model *m, const char *pattern, int frozen) {
    if (!m || !pattern) return hyb_error_set(HYB_ERR_ARG, "hyb_model_freeze: NULL argument");
    int n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (fnmatch(pattern, m->params[i]->name, 0) == 0) {
            m->params[i]->requires_grad = !frozen;
            n++;
        }
    return n;
}

int hyb_trainer_lr_scale(hyb_trainer *t, const char *pattern, float scale) {
    if (!t || !pattern) return hyb_error_set(HYB_ERR_ARG, "hyb_trainer_lr_scale: NULL argument");
    if (!(scale >= 0) || !isfinite(scale))
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_trainer_lr_scale: scale %g for '%s' must be finite and >= 0",
                             scale, pattern);
    int n = 0;
    for (int i = 0; i < t->opt->n; i++)
        if (fnmatch(pattern, t->opt->params[i]->name, 0) == 0) {
            HYB_TRY(hyb_adamw_set_lr_scale(t->opt, i, scale));
            n++;
        }
    return n;
}

int hyb_model_n_frozen(const hyb_model *m) {
    int n = 0;
    for (int i = 0; i < m->n_params; i++)
        n += !m->params[i]->requires_grad;
    return n;
}

// ---- distillation loss --------------------------------------------------------------------------

/* Term k of the distillation loss: l (NULL: its op failed) into parts[k] and the weighted sum's
 * inputs. 0 on failure. */
static int add_term(hyb_tensor *l, float wk, int k, float *parts, hyb_tensor **ins, float *w,
                    int *n) {
    if (!l) return 0;
    if (parts && hyb_tensor_download(l, &parts[k]) != HYB_OK) return 0;
    ins[*n] = l;
    w[(*n)++] = wk;
    return 1;
}

hyb_tensor *hyb_distill_loss_apply(hyb_graph *g, const hyb_distill_loss *cfg, hyb_tensor *student,
                                   hyb_tensor *teacher, const int32_t *targets, const float *mask,
                                   float parts[3]) {
    if (parts) parts[0] = parts[1] = parts[2] = NAN;
    if (!(cfg->w_rkl >= 0 && cfg->w_fkl >= 0 && cfg->w_ce >= 0) ||
        cfg->w_rkl + cfg->w_fkl + cfg->w_ce <= 0)
        OP_ERR("hyb_distill_loss: weights (rkl %g, fkl %g, ce %g) must be >= 0 with a positive sum",
               (double)cfg->w_rkl, (double)cfg->w_fkl, (double)cfg->w_ce);
    if (!(cfg->temperature > 0))
        OP_ERR("hyb_distill_loss: temperature %g must be > 0", (double)cfg->temperature);
    if ((cfg->w_rkl > 0 || cfg->w_fkl > 0) && !teacher)
        OP_ERR("hyb_distill_loss: a KL term needs the teacher's logits");
    if (cfg->w_ce > 0 && !targets) OP_ERR("hyb_distill_loss: the CE term needs targets");
    hyb_tensor *ins[3];
    float w[3];
    int n = 0;
    if (cfg->w_rkl > 0 && !add_term(hyb_kl_reverse(g, student, teacher, mask, cfg->temperature),
                                    cfg->w_rkl, 0, parts, ins, w, &n))
        return NULL;
    if (cfg->w_fkl > 0 && !add_term(hyb_kl_forward(g, student, teacher, mask, cfg->temperature),
                                    cfg->w_fkl, 1, parts, ins, w, &n))
        return NULL;
    if (cfg->w_ce > 0 &&
        !add_term(hyb_cross_entropy(g, student, targets, mask), cfg->w_ce, 2, parts, ins, w, &n))
        return NULL;
    if (n == 1 && w[0] == 1.0f) return ins[0]; /* the plain loss: no extra node */
    return hyb_weighted_sum(g, ins, w, n);
}

// ---- trainer ------------------------------------------------------------------------------------

void hyb_trainer_cfg_default(hyb_trainer_cfg *c) {
    memset(c, 0, sizeof *c);
    c->sched.lr_max = 3e-4f;
    c->sched.lr_min = 3e-5f;
    c->weight_decay = 0.1f;
    c->beta1 = 0.9f;
    c->beta2 = 0.95f;
    c->eps = 1e-8f;
    c->clip = 1.0f;
    c->accum = 1;
    c->loss.w_rkl = 1.0f;
    c->loss.temperature = 1.0f;
}

static int needs_teacher(const hyb_distill_loss *l) {
    return l->w_rkl > 0 || l->w_fkl > 0;
}

int hyb_trainer_new(hyb_model *student, hyb_model *teacher, const hyb_trainer_cfg *cfg,
                    hyb_trainer **out) {
    *out = NULL;
    if (!student || !cfg) return hyb_error_set(HYB_ERR_ARG, "hyb_trainer_new: no student / config");
    if (cfg->accum < 1)
        return hyb_error_set(HYB_ERR_ARG, "hyb_trainer_new: accum %d must be >= 1", cfg->accum);
    if (!(cfg->sched.lr_max >= 0) || !(cfg->sched.lr_min >= 0) || cfg->sched.warmup < 0)
        return hyb_error_set(
            HYB_ERR_ARG, "hyb_trainer_new: bad schedule (lr %g, min_lr %g, warmup %" PRId64 ")",
            (double)cfg->sched.lr_max, (double)cfg->sched.lr_min, cfg->sched.warmup);
    if (!(cfg->loss.w_rkl >= 0 && cfg->loss.w_fkl >= 0 && cfg->loss.w_ce >= 0) ||
        !(cfg->loss.w_rkl + cfg->loss.w_fkl + cfg->loss.w_ce > 0) || !(cfg->loss.temperature > 0))
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_trainer_new: bad loss weights (rkl %g fkl %g ce %g, T %g)",
                             (double)cfg->loss.w_rkl, (double)cfg->loss.w_fkl,
                             (double)cfg->loss.w_ce, (double)cfg->loss.temperature);
    if (needs_teacher(&cfg->loss) && !teacher)
        return hyb_error_set(HYB_ERR_ARG, "hyb_trainer_new: a KL loss needs a teacher");
    if (teacher && teacher->V != student->V)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_trainer_new: teacher vocabulary %d != student vocabulary %d",
                             teacher->V, student->V);
    if (teacher == student)
        return hyb_error_set(HYB_ERR_ARG, "hyb_trainer_new: the teacher is the student");
    hyb_trainer *t = calloc(1, sizeof *t);
    if (!t) return hyb_error_set(HYB_ERR_NOMEM, "hyb_trainer_new: out of memory");
    t->cfg = *cfg;
    t->student = student;
    t->teacher = teacher;
    t->generation = student->generation;
    int rc = hyb_adamw_new_model(student, cfg->sched.lr_max, cfg->weight_decay, &t->opt);
    if (rc != HYB_OK) {
        free(t);
        return rc;
    }
    t->opt->beta1 = cfg->beta1;
    t->opt->beta2 = cfg->beta2;
    t->opt->eps = cfg->eps;
    t->g = hyb_graph_new();
    t->tg = hyb_graph_new();
    if (!t->g || !t->tg) {
        hyb_trainer_free(t);
        return hyb_error_set(HYB_ERR_NOMEM, "hyb_trainer_new: out of memory");
    }
    hyb_graph_set_grad(t->tg, 0);
    *out = t;
    return HYB_OK;
}

void hyb_trainer_free(hyb_trainer *t) {
    if (!t) return;
    hyb_adamw_free(t->opt);
    if (t->g) hyb_graph_free(t->g);
    if (t->tg) hyb_graph_free(t->tg);
    free(t);
}

static int check_fresh(const hyb_trainer *t, const char *who) {
    if (t->student->generation != t->generation)
        return hyb_error_set(
            HYB_ERR_ARG,
            "%s: the student's layers changed (swap/identity) after the trainer was made; "
            "make a new trainer",
            who);
    return HYB_OK;
}

// ---- data parallel: the gradient all-reduce ----------------------------------------------------

void hyb_trainer_set_comm(hyb_trainer *t, hyb_comm *comm, double bucket_mb) {
    t->comm = comm;
    if (bucket_mb <= 0) {
        const char *e = getenv("HYB_COMM_BUCKET_MB");
        bucket_mb = e && atof(e) > 0 ? atof(e) : 25.0;
    }
    t->bucket_bytes = (size_t)(bucket_mb * 1024 * 1024);
    if (t->bucket_bytes < sizeof(float)) t->bucket_bytes = sizeof(float);
    const char *o = getenv("HYB_COMM_OVERLAP");
    t->overlap = !(o && strcmp(o, "0") == 0);
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One bucket: the gradients of params[lo..hi] (walking down: hi >= lo), packed in data. */
typedef struct grad_bucket {
    float *data;
    size_t n;    /* floats */
    int hi, lo;
    int inplace; /* one host gradient reduced where it is (no copies) */
    int left;    /* overlap: trainable parameters of the bucket whose gradient is not final */
    int done;    /* overlap: the request has completed (hyb_comm_test) */
    hyb_comm_req *req;
} grad_bucket;

/* The buckets, from the last parameter down (the order a backward produces them): a host
 * gradient of 1 MB or more (or half a bucket when buckets are smaller) is a bucket of its own,
 * reduced in place (no copies); smaller (and device) gradients are packed into buckets of up to
 * bucket_bytes. The composition depends only on the parameters (count, size, device, flags), so
 * every rank makes the same buckets in the same order, overlapped or not. */
static int plan_buckets(const hyb_trainer *t, hyb_tensor **p, int np, grad_bucket **out, int *nout) {
    const size_t cap = t->bucket_bytes / sizeof(float);
    const size_t own = cap / 2 < ((size_t)1 << 18) ? (cap / 2 ? cap / 2 : 1) : ((size_t)1 << 18);
    grad_bucket *b = NULL;
    int nb = 0, cb = 0;
    int i = np - 1;
    while (i >= 0) {
        while (i >= 0 && !p[i]->requires_grad)
            i--;
        if (i < 0) break;
        grad_bucket g = {0};
        g.hi = g.lo = i;
        for (; i >= 0; i--) {
            if (!p[i]->requires_grad) continue;
            size_t k = (size_t)hyb_tensor_numel(p[i]);
            int big = p[i]->device == HYB_DEV_CPU && k >= own;
            if (g.n > 0 && (g.n + k > cap || big)) break;
            g.n += k;
            g.lo = i;
            g.left++;
            if (big) { /* alone */
                g.inplace = 1;
                i--;
                break;
            }
        }
        if (nb == cb) {
            cb = cb ? 2 * cb : 16;
            grad_bucket *b2 = realloc(b, sizeof *b * (size_t)cb);
            if (!b2) {
                free(b);
                return hyb_error_set(HYB_ERR_NOMEM, "hyb_trainer_step: out of memory");
            }
            b = b2;
        }
        b[nb++] = g;
    }
    *out = b;
    *nout = nb;
    return HYB_OK;
}

/* Pack bucket b (download device gradients) and post its non-blocking all-reduce. */
static int bucket_post(hyb_trainer *t, hyb_tensor **p, grad_bucket *b) {
    static const char W[] = "hyb_trainer_step: gradient all-reduce";
    for (int i = b->hi; i >= b->lo; i--) {
        if (!p[i]->requires_grad) continue;
        if (p[i]->device == HYB_DEV_CPU) HYB_TRY(hyb_tensor_grad_ensure(p[i]));
        if (!p[i]->grad) return hyb_error_set(HYB_ERR, "%s: '%s' has no gradient", W, p[i]->name);
    }
    b->data = b->inplace ? hyb_tensor_f32(p[b->lo]->grad) : malloc(sizeof(float) * b->n);
    if (!b->data)
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory (%zu bytes)", W,
                             b->n * sizeof(float));
    size_t off = 0;
    for (int j = b->hi; !b->inplace && j >= b->lo; j--) {
        if (!p[j]->requires_grad) continue;
        HYB_TRY(hyb_tensor_download(p[j]->grad, b->data + off));
        off += (size_t)hyb_tensor_numel(p[j]);
    }
    return hyb_comm_iallreduce_f32(t->comm, b->data, b->n, &b->req);
}

/* Wait for a posted bucket and unpack it. */
static int bucket_finish(hyb_trainer *t, hyb_tensor **p, grad_bucket *b) {
    int rc = hyb_comm_wait(t->comm, b->req);
    b->req = NULL;
    if (b->inplace) {
        b->data = NULL;
        return rc;
    }
    size_t off = 0;
    for (int i = b->hi; rc == HYB_OK && i >= b->lo; i--) {
        if (!p[i]->requires_grad) continue;
        rc = hyb_tensor_upload(p[i]->grad, b->data + off);
        off += (size_t)hyb_tensor_numel(p[i]);
    }
    free(b->data);
    b->data = NULL;
    return rc;
}

/* Free the packed buffers; after an error a posted request's buffer is left to the ending job
 * (MPI may still write it). */
static void buckets_free(grad_bucket *b, int nb) {
    for (int k = 0; k < nb; k++)
        if (!b[k].inplace && !b[k].req) free(b[k].data);
    free(b);
}

/* Sum every trainable parameter's gradient over the ranks after the backward: the buckets of
 * plan_buckets in order, each one's non-blocking all-reduce posted while the next is prepared, at
 * most two in flight. (The overlapped path posts the same buckets in the same order from the
 * backward's gradient-ready hook: overlap_* below.) */
static int reduce_grads(hyb_trainer *t) {
    int np;
    hyb_tensor **p = hyb_model_params(t->student, &np);
    /* an NCCL comm reduces device gradients in place on the GPU, tensor by tensor */
    if (strcmp(hyb_comm_kind(t->comm), "nccl") == 0) {
        for (int i = np - 1; i >= 0; i--) {
            if (!p[i]->requires_grad) continue;
            if (p[i]->device == HYB_DEV_CPU) HYB_TRY(hyb_tensor_grad_ensure(p[i]));
            if (!p[i]->grad)
                return hyb_error_set(HYB_ERR, "hyb_trainer_step: gradient all-reduce: '%s' has "
                                              "no gradient", p[i]->name);
            HYB_TRY(hyb_comm_allreduce_f32(t->comm, hyb_tensor_f32(p[i]->grad),
                                           (size_t)hyb_tensor_numel(p[i]), p[i]->device));
        }
        return HYB_OK;
    }
    grad_bucket *b;
    int nb, rc = HYB_OK, oldest = 0;
    HYB_TRY(plan_buckets(t, p, np, &b, &nb));
    for (int k = 0; k < nb && rc == HYB_OK; k++) {
        if (k - oldest == 2) rc = bucket_finish(t, p, &b[oldest++]); /* at most two in flight */
        if (rc == HYB_OK) rc = bucket_post(t, p, &b[k]);
    }
    for (int k = oldest; k < nb && rc == HYB_OK; k++)
        rc = bucket_finish(t, p, &b[k]);
    buckets_free(b, nb);
    return rc;
}

/* ---- overlap: buckets posted from the backward ---------------------------------------------
 * Before the step's last backward the buckets are planned (plan_buckets) and the graph's
 * gradient-ready hook set: each call marks one parameter final; when the next bucket in order
 * has none left it is packed and posted (then any later complete ones), so every rank posts the
 * same buckets in the same order as reduce_grads, and the sums are the same bits. Each call also
 * tests the posted requests, which is what moves MPI's transfer forward during the backward.
 * After the backward: the rest is posted (parameters no node read), all are waited for. */
typedef struct overlap {
    hyb_trainer *t;
    hyb_tensor **p;
    grad_bucket *b;
    int nb, next;   /* next: the first bucket not posted */
    int *bucket_of; /* [np]: the bucket of parameter i (-1: frozen) */
    struct pidx {
        const hyb_tensor *t;
        int i;
    } *by_ptr;      /* [np] sorted by tensor address */
    int np;
    double hook_s;  /* seconds spent in the hook (packing, posting, testing) */
} overlap;

static int pidx_cmp(const void *a, const void *b) {
    const struct pidx *x = a, *y = b;
    return x->t == y->t ? 0 : ((uintptr_t)x->t < (uintptr_t)y->t ? -1 : 1);
}

static int overlap_post_ready(overlap *o) {
    while (o->next < o->nb && o->b[o->next].left == 0)
        HYB_TRY(bucket_post(o->t, o->p, &o->b[o->next++]));
    return HYB_OK;
}

static int overlap_hook(void *ctx, hyb_tensor *pt) {
    overlap *o = ctx;
    double t0 = mono_s();
    struct pidx key = {pt, 0};
    struct pidx *f = bsearch(&key, o->by_ptr, (size_t)o->np, sizeof key, pidx_cmp);
    if (f && o->bucket_of[f->i] >= 0) {
        grad_bucket *b = &o->b[o->bucket_of[f->i]];
        if (b->left <= 0)
            return hyb_error_set(HYB_ERR, "hyb_trainer_step: gradient of '%s' reported final "
                                          "twice", pt->name);
        b->left--;
        HYB_TRY(overlap_post_ready(o));
    }
    for (int k = 0; k < o->next; k++) {
        if (o->b[k].done) continue;
        HYB_TRY(hyb_comm_test(o->t->comm, o->b[k].req, &o->b[k].done));
    }
    o->hook_s += mono_s() - t0;
    return HYB_OK;
}

static void overlap_free(overlap *o) {
    if (o->t) hyb_graph_on_grad_ready(o->t->g, NULL, NULL);
    if (o->b) buckets_free(o->b, o->nb);
    free(o->bucket_of);
    free(o->by_ptr);
    memset(o, 0, sizeof *o);
}

static int overlap_begin(hyb_trainer *t, overlap *o) {
    memset(o, 0, sizeof *o);
    int np;
    hyb_tensor **p = hyb_model_params(t->student, &np);
    o->p = p;
    o->np = np;
    HYB_TRY(plan_buckets(t, p, np, &o->b, &o->nb));
    o->t = t;
    o->bucket_of = malloc(sizeof(int) * (size_t)(np ? np : 1));
    o->by_ptr = malloc(sizeof *o->by_ptr * (size_t)(np ? np : 1));
    if (!o->bucket_of || !o->by_ptr) {
        overlap_free(o);
        return hyb_error_set(HYB_ERR_NOMEM, "hyb_trainer_step: out of memory");
    }
    for (int i = 0; i < np; i++) {
        o->bucket_of[i] = -1;
        o->by_ptr[i] = (struct pidx){p[i], i};
    }
    for (int k = 0; k < o->nb; k++)
        for (int i = o->b[k].hi; i >= o->b[k].lo; i--)
            if (p[i]->requires_grad) o->bucket_of[i] = k;
    qsort(o->by_ptr, (size_t)np, sizeof *o->by_ptr, pidx_cmp);
    hyb_graph_on_grad_ready(t->g, overlap_hook, o);
    return HYB_OK;
}

/* After the backward: post what the hook did not (in order), wait for everything. */
static int overlap_end(overlap *o) {
    hyb_graph_on_grad_ready(o->t->g, NULL, NULL);
    int rc = HYB_OK;
    for (; o->next < o->nb && rc == HYB_OK; o->next++)
        rc = bucket_post(o->t, o->p, &o->b[o->next]);
    for (int k = 0; k < o->next && rc == HYB_OK; k++)
        rc = bucket_finish(o->t, o->p, &o->b[k]);
    overlap_free(o);
    return rc;
}

/* Forward the teacher (no tape) and the student for one micro-batch; returns the loss node. */
static hyb_tensor *micro_loss(hyb_trainer *t, const hyb_distill_loss *lc, const int32_t *ids,
                              const int32_t *targets, const float *mask, int B, int T, int grad,
                              float parts[3]) {
    hyb_graph_reset(t->g);
    hyb_graph_reset(t->tg);
    hyb_tensor *tl = NULL;
    if (t->teacher && (lc->w_rkl > 0 || lc->w_fkl > 0)) {
        tl = hyb_model_forward(t->teacher, t->tg, ids, B, T);
        if (!tl) {
            hyb_error_wrap(HYB_ERR, "teacher forward");
            return NULL;
        }
    }
    hyb_graph_set_grad(t->g, grad);
    hyb_tensor *sl = hyb_model_forward(t->student, t->g, ids, B, T);
    if (!sl) {
        hyb_error_wrap(HYB_ERR, "student forward");
        return NULL;
    }
    return hyb_distill_loss_apply(t->g, lc, sl, tl, targets, mask, parts);
}

int hyb_trainer_step(hyb_trainer *t, const int32_t *ids, const int32_t *targets, const float *mask,
                     int B, int T, hyb_train_stats *st) {
    static const char W[] = "hyb_trainer_step";
    HYB_TRY(check_fresh(t, W));
    if (B < 1 || T < 1)
        return hyb_error_set(HYB_ERR_ARG, "%s: B %d and T %d must be >= 1", W, B, T);
    if (!ids) return hyb_error_set(HYB_ERR_ARG, "%s: no ids", W);
    if (t->cfg.loss.w_ce > 0 && !targets)
        return hyb_error_set(HYB_ERR_ARG, "%s: the CE term needs targets", W);
    const int K = t->cfg.accum;
    const int64_t n = (int64_t)B * T;
    if (t->step < 0 || t->step >= HYB_CKPT_COUNTER_MAX || t->tokens < 0 ||
        t->tokens > HYB_CKPT_COUNTER_MAX - (int64_t)K * n * (t->comm ? hyb_comm_size(t->comm) : 1))
        return hyb_error_set(HYB_ERR_ARG, "%s: step %" PRId64 " or tokens %" PRId64
                             " out of range [0, 2^53]", W, t->step, t->tokens);
    /* each micro-batch's share of the total mask weight */
    double wsum[256], total = 0;
    double *wk = K <= 256 ? wsum : malloc(sizeof(double) * (size_t)K);
    if (!wk) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", W);
    for (int k = 0; k < K; k++) {
        double s = (double)n;
        if (mask) {
            s = 0;
            for (int64_t i = 0; i < n; i++)
                s += mask[k * n + i];
        }
        wk[k] = s;
        total += s;
    }
    int rc = HYB_OK;
    hyb_train_stats s;
    memset(&s, 0, sizeof s);
    overlap ov;
    memset(&ov, 0, sizeof ov);
    const int dp = t->comm && hyb_comm_size(t->comm) > 1;
    const int world = dp ? hyb_comm_size(t->comm) : 1;
    if (dp) { /* the shares are of the global batch's weight */
        double t0 = mono_s();
        if ((rc = hyb_comm_allreduce_f64(t->comm, &total, 1)) != HYB_OK) goto done;
        s.comm_s += mono_s() - t0;
    }
    if (!(total > 0)) {
        rc = hyb_error_set(HYB_ERR_ARG, "%s: the loss mask has no positive weight", W);
        goto done;
    }
    hyb_model_zero_grad(t->student);
    /* overlap: the buckets start from the last backward (host buckets through MPI; an NCCL comm
     * reduces after the backward) */
    int last = -1;
    for (int k = 0; k < K; k++)
        if (wk[k] != 0) last = k;
    const int ovl = dp && t->overlap && strcmp(hyb_comm_kind(t->comm), "nccl") != 0;
    for (int k = 0; k < K; k++) {
        if (wk[k] == 0) continue; /* nothing to learn from this micro-batch */
        float parts[3];
        hyb_tensor *loss =
            micro_loss(t, &t->cfg.loss, ids + k * n, targets ? targets + k * n : NULL,
                       mask ? mask + k * n : NULL, B, T, 1, parts);
        if (!loss) {
            rc = hyb_error_wrap(HYB_ERR, "%s: micro-batch %d", W, k);
            goto done;
        }
        const double share = wk[k] / total;
        float lv = 0.0f;
        if ((rc = hyb_tensor_download(loss, &lv)) != HYB_OK) goto done;
        s.loss += share * lv;
        for (int j = 0; j < 3; j++)
            s.parts[j] += share * parts[j];
        if (ovl && k == last && (rc = overlap_begin(t, &ov)) != HYB_OK) goto done;
        if ((rc = hyb_graph_backward(t->g, loss, (float)share)) != HYB_OK) {
            rc = hyb_error_wrap(rc, "%s: micro-batch %d", W, k);
            goto done;
        }
    }
    if (dp) {
        double t0 = mono_s();
        if (t->comm_profile) {
            if ((rc = hyb_comm_barrier(t->comm, 0)) != HYB_OK) goto done;
            s.wait_s = mono_s() - t0;
            t0 = mono_s();
        }
        if (ov.t) {
            s.comm_s += ov.hook_s; /* packing, posting and testing inside the backward */
            rc = overlap_end(&ov);
        } else {
            rc = reduce_grads(t);
        }
        if (rc != HYB_OK) goto done;
        double m[4] = {s.loss, s.parts[0], s.parts[1], s.parts[2]};
        if ((rc = hyb_comm_allreduce_f64(t->comm, m, 4)) != HYB_OK) goto done;
        s.loss = m[0];
        for (int j = 0; j < 3; j++)
            s.parts[j] = m[j + 1];
        s.comm_s += mono_s() - t0;
    }
    int np;
    hyb_tensor **p = hyb_model_params(t->student, &np);
    s.grad_norm = hyb_grad_clip(p, np, t->cfg.clip);
    s.lr = hyb_lr_at(&t->cfg.sched, t->step);
    if (isfinite(s.grad_norm)) {
        t->opt->lr = (float)s.lr;
        if ((rc = hyb_adamw_step(t->opt)) != HYB_OK) goto done;
    } else {
        s.skipped = 1;
        hyb_log(HYB_LOG_WARN, "%s: update %" PRId64 ": gradient norm %g, update skipped", W,
                t->step + 1, s.grad_norm);
    }
    t->step++;
    t->tokens += (int64_t)K * n * world;
    s.step = t->step;
done:
    if (ov.t) overlap_free(&ov); /* an error before overlap_end */
    hyb_graph_reset(t->g);
    hyb_graph_reset(t->tg);
    if (wk != wsum) free(wk);
    if (st) *st = s;
    return rc;
}

int hyb_trainer_eval(hyb_trainer *t, const int32_t *ids, const int32_t *targets, const float *mask,
                     int B, int T, double *loss, double parts[3]) {
    static const char W[] = "hyb_trainer_eval";
    HYB_TRY(check_fresh(t, W));
    if (B < 1 || T < 1 || !ids)
        return hyb_error_set(HYB_ERR_ARG, "%s: bad batch (B %d, T %d)", W, B, T);
    hyb_distill_loss all = t->cfg.loss;
    all.w_rkl = all.w_fkl = t->teacher ? 1.0f : 0.0f;
    all.w_ce = targets ? 1.0f : 0.0f;
    if (!t->teacher && !targets)
        return hyb_error_set(HYB_ERR_ARG, "%s: no teacher and no targets: nothing to measure", W);
    float pf[3];
    hyb_tensor *l = micro_loss(t, &all, ids, targets, mask, B, T, 0, pf);
    int rc = l ? HYB_OK : hyb_error_wrap(HYB_ERR, "%s", W);
    if (rc == HYB_OK) {
        const float w[3] = {t->cfg.loss.w_rkl, t->cfg.loss.w_fkl, t->cfg.loss.w_ce};
        double s = 0;
        for (int j = 0; j < 3; j++) {
            if (parts) parts[j] = pf[j];
            if (w[j] > 0) s += (double)w[j] * (double)pf[j];
        }
        if (loss) *loss = s;
    }
    hyb_graph_reset(t->g);
    hyb_graph_reset(t->tg);
    hyb_graph_set_grad(t->g, 1);
    return rc;
}

// ---- checkpoints --------------------------------------------------------------------------------

#define CKPT_KIND "train-1"

static const char *const reserved_meta[] = {"format",       "step",   "tokens", "opt_step",
                                            "lr",           "beta1",  "beta2",  "eps",
                                            "weight_decay", "frozen", NULL};

int hyb_trainer_save(hyb_trainer *t, const char *path, int n_meta, const char *const *keys,
                     const char *const *vals) {
    return hyb_trainer_save_ex(t, path, NULL, n_meta, keys, vals);
}

int hyb_trainer_save_ex(hyb_trainer *t, const char *path, const hyb_ckpt_opts *o, int n_meta,
                        const char *const *keys, const char *const *vals) {
    static const char W[] = "hyb_trainer_save";
    HYB_TRY(check_fresh(t, W));
    const char *base = o ? o->base : NULL;
    int with_opt = !(o && o->no_optimizer);
    if (base && (!o->base_hash || !*o->base_hash || !*base))
        return hyb_error_set(HYB_ERR_ARG, "%s: a lean checkpoint needs the base's path and hash", W);
    for (int i = 0; i < n_meta; i++) {
        if (!keys[i] || !vals[i] || !keys[i][0] || strncmp(keys[i], "hyb_", 4) == 0)
            return hyb_error_set(HYB_ERR_ARG,
                                 "%s: metadata key %d ('%s') is empty or starts with 'hyb_'", W, i,
                                 keys[i] ? keys[i] : "(null)");
        for (const char *const *r = reserved_meta; *r; r++)
            if (strcmp(*r, keys[i]) == 0)
                return hyb_error_set(HYB_ERR_ARG, "%s: metadata key '%s' is reserved", W, keys[i]);
    }
    hyb_model *m = t->student;
    hyb_st_writer *w = hyb_st_writer_new();
    char *toml = hyb_model_layermap_toml(m);
    size_t fcap = 1;
    for (int i = 0; i < m->n_params; i++)
        fcap += strlen(m->params[i]->name) + 1;
    char *frozen = calloc(1, fcap);
    int rc = HYB_OK;
    if (!w || !toml || !frozen) {
        rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", W);
        goto done;
    }
    char name[200], val[64];
    for (int i = 0; i < m->n_params && rc == HYB_OK; i++) {
        hyb_tensor *p = m->params[i];
        if (!p->requires_grad) {
            strcat(frozen, p->name);
            strcat(frozen, "\n");
            if (base) continue; /* lean: the base has it */
        }
        rc = hyb_st_writer_add_tensor(w, p->name, p);
        for (int k = 0; k < 2 && rc == HYB_OK && with_opt; k++) {
            hyb_tensor mt = hyb_adamw_moment(t->opt, i, k);
            snprintf(name, sizeof name, "optimizer.%s.%s", p->name, k ? "exp_avg_sq" : "exp_avg");
            rc = hyb_st_writer_add_tensor(w, name, &mt);
        }
    }
#define META(k, fmt, v)                                                                            \
    if (rc == HYB_OK) {                                                                            \
        snprintf(val, sizeof val, fmt, v);                                                         \
        rc = hyb_st_writer_meta(w, k, val);                                                        \
    }
    META("format", "%s", "pt")
    META("hyb_checkpoint", "%s", CKPT_KIND)
    META("hyb_version", "%s", HYB_VERSION)
    META("step", "%" PRId64, t->step)
    META("tokens", "%" PRId64, t->tokens)
    META("opt_step", "%" PRId64, t->opt->step)
    META("lr", "%.9g", (double)t->opt->lr)
    META("beta1", "%.9g", (double)t->opt->beta1)
    META("beta2", "%.9g", (double)t->opt->beta2)
    META("eps", "%.9g", (double)t->opt->eps)
    META("weight_decay", "%.9g", (double)t->opt->weight_decay)
#undef META
    if (rc == HYB_OK) rc = hyb_st_writer_meta(w, "hyb_layermap", toml);
    if (rc == HYB_OK) rc = hyb_st_writer_meta(w, "frozen", frozen);
    if (rc == HYB_OK && base) rc = hyb_st_writer_meta(w, "hyb_base", base);
    if (rc == HYB_OK && base) rc = hyb_st_writer_meta(w, "hyb_base_hash", o->base_hash);
    if (rc == HYB_OK && !with_opt) rc = hyb_st_writer_meta(w, "hyb_optimizer", "0");
    for (int i = 0; i < n_meta && rc == HYB_OK; i++)
        rc = hyb_st_writer_meta(w, keys[i], vals[i]);
    if (rc == HYB_OK) rc = hyb_st_writer_save(w, path);
    if (rc != HYB_OK) rc = hyb_error_wrap(rc, "%s %s", W, path);
done:
    hyb_st_writer_free(w);
    free(toml);
    free(frozen);
    return rc;
}

const char *hyb_ckpt_meta_get(const hyb_ckpt_meta *m, const char *key) {
    for (int i = 0; m && i < m->n; i++)
        if (strcmp(m->keys[i], key) == 0) return m->vals[i];
    return NULL;
}

void hyb_ckpt_meta_free(hyb_ckpt_meta *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++) {
        free(m->keys[i]);
        free(m->vals[i]);
    }
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static char *dup_s(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int meta_copy(const hyb_safetensors *st, hyb_ckpt_meta *out) {
    memset(out, 0, sizeof *out);
    int n = hyb_safetensors_meta_count(st);
    out->keys = calloc((size_t)n + 1, sizeof(char *));
    out->vals = calloc((size_t)n + 1, sizeof(char *));
    if (!out->keys || !out->vals) goto oom;
    for (int i = 0; i < n; i++) {
        const char *k = hyb_safetensors_meta_key(st, i);
        out->keys[i] = dup_s(k);
        out->vals[i] = dup_s(hyb_safetensors_meta(st, k));
        out->n = i + 1;
        if (!out->keys[i] || !out->vals[i]) goto oom;
    }
    return HYB_OK;
oom:
    hyb_ckpt_meta_free(out);
    return hyb_error_set(HYB_ERR_NOMEM, "checkpoint metadata: out of memory");
}

static int open_ckpt(const char *path, hyb_safetensors **st) {
    HYB_TRY(hyb_safetensors_open(path, st));
    const char *kind = hyb_safetensors_meta(*st, "hyb_checkpoint");
    if (!kind || strcmp(kind, CKPT_KIND) != 0) {
        /* the message first: kind points into *st, which the close frees */
        int rc = hyb_error_set(
            HYB_ERR_FORMAT, "%s: not a hyb training checkpoint (metadata hyb_checkpoint is %s%.64s%s)",
            path, kind ? "'" : "", kind ? kind : "missing", kind ? "'" : "");
        hyb_safetensors_close(*st);
        *st = NULL;
        return rc;
    }
    return HYB_OK;
}

static int meta_i64(const hyb_safetensors *st, const char *path, const char *key, int64_t *out) {
    const char *v = hyb_safetensors_meta(st, key);
    char *end = NULL;
    errno = 0;
    long long x = v ? strtoll(v, &end, 10) : -1;
    if (!v || !*v || *end || errno == ERANGE || x < 0 || x > HYB_CKPT_COUNTER_MAX)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: metadata '%s' is %s%.64s%s (want an integer in [0, 2^53])", path,
                             key, v ? "'" : "", v ? v : "missing", v ? "'" : "");
    *out = x;
    return HYB_OK;
}

/* Find `name` with p's shape in st (f32 for optimiser state); error names both shapes. */
static int find_like(const hyb_safetensors *st, const char *path, const char *name,
                     const hyb_tensor *p, int f32_only, const hyb_st_tensor **out) {
    char a[128], b[128];
    const hyb_st_tensor *t = hyb_safetensors_find(st, name);
    if (!t) return hyb_error_set(HYB_ERR_NOTFOUND, "%s: tensor '%s' is missing", path, name);
    int same = t->ndim == p->ndim;
    for (int d = 0; same && d < p->ndim; d++)
        same = t->shape[d] == p->shape[d];
    if (!same || (f32_only && t->dtype != HYB_ST_F32) ||
        !(t->dtype == HYB_ST_F32 || t->dtype == HYB_ST_BF16 || t->dtype == HYB_ST_F16))
        return hyb_error_set(
            HYB_ERR_FORMAT, "%s: tensor '%s': file has %s %s, the model expects %s f32", path, name,
            hyb_shape_str(t->ndim, t->shape, a, sizeof a), hyb_st_dtype_name(t->dtype),
            hyb_shape_str(p->ndim, p->shape, b, sizeof b));
    *out = t;
    return HYB_OK;
}

/* frozen flags from the newline-separated list */
static void apply_frozen(hyb_model *m, const char *list) {
    for (int i = 0; i < m->n_params; i++) {
        const char *name = m->params[i]->name;
        size_t len = strlen(name);
        int frozen = 0;
        for (const char *s = list; s && *s && !frozen;) {
            const char *e = strchr(s, '\n');
            size_t k = e ? (size_t)(e - s) : strlen(s);
            frozen = k == len && strncmp(s, name, len) == 0;
            s = e ? e + 1 : s + k;
        }
        m->params[i]->requires_grad = !frozen;
    }
}

/* Whether `name` is a line of the newline-separated list. */
static int in_list(const char *list, const char *name) {
    size_t len = strlen(name);
    for (const char *s = list; s && *s;) {
        const char *e = strchr(s, '\n');
        size_t k = e ? (size_t)(e - s) : strlen(s);
        if (k == len && strncmp(s, name, len) == 0) return 1;
        s = e ? e + 1 : s + k;
    }
    return 0;
}

/* A frozen parameter of a lean checkpoint: from `base` (same name, shape, dtype), or, without a
 * base, left as the model has it (a trainer's student, built from the base by the caller). */
static int from_base(const char *path, const hyb_model *base, hyb_tensor *p, int copy) {
    if (!base) return HYB_OK;
    const hyb_tensor *b = NULL;
    for (int i = 0; i < base->n_params && !b; i++)
        if (strcmp(base->params[i]->name, p->name) == 0) b = base->params[i];
    char x[128], y[128];
    if (!b)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: parameter '%s' is frozen, so it comes from the base, which lacks it",
                             path, p->name);
    int same = b->ndim == p->ndim && b->dtype == p->dtype;
    for (int d = 0; same && d < p->ndim; d++)
        same = b->shape[d] == p->shape[d];
    if (!same)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: parameter '%s': the base has %s %s, the model %s %s",
                             path, p->name, hyb_shape_str(b->ndim, b->shape, x, sizeof x),
                             hyb_dtype_name(b->dtype), hyb_shape_str(p->ndim, p->shape, y, sizeof y),
                             hyb_dtype_name(p->dtype));
    if (!copy) return HYB_OK;
    if (b->device == HYB_DEV_CPU) {
        memcpy(p->data, b->data, hyb_tensor_nbytes(p));
        return HYB_OK;
    }
    return hyb_tensor_download(b, p->data);
}

/* Validate (pass 0) then copy (pass 1) the parameters and, with opt, the moments. A lean
 * checkpoint (lean_frozen: its frozen list) lacks its frozen parameters: from_base. */
static int load_tensors(const hyb_safetensors *st, const char *path, hyb_model *m, hyb_adamw *opt,
                        const char *lean_frozen, const hyb_model *base) {
    char name[200];
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < m->n_params; i++) {
            hyb_tensor *p = m->params[i];
            const hyb_st_tensor *t;
            if (lean_frozen && in_list(lean_frozen, p->name)) {
                HYB_TRY(from_base(path, base, p, pass));
                continue;
            }
            HYB_TRY(find_like(st, path, p->name, p, 0, &t));
            if (pass) HYB_TRY(hyb_safetensors_read_tensor(st, t, p));
            if (!opt) continue;
            for (int k = 0; k < 2; k++) {
                snprintf(name, sizeof name, "optimizer.%s.%s", p->name,
                         k ? "exp_avg_sq" : "exp_avg");
                HYB_TRY(find_like(st, path, name, p, 1, &t));
                if (pass) {
                    hyb_tensor mt = hyb_adamw_moment(opt, i, k);
                    HYB_TRY(hyb_safetensors_read_tensor(st, t, &mt));
                }
            }
        }
    return HYB_OK;
}

int hyb_trainer_load(hyb_trainer *t, const char *path, hyb_ckpt_meta *meta) {
    static const char W[] = "hyb_trainer_load";
    if (meta) memset(meta, 0, sizeof *meta);
    HYB_TRY(check_fresh(t, W));
    {   /* a resume removes what a killed save left beside the checkpoint (hyb/atomic.h) */
        char dir[4096];
        const char *slash = strrchr(path, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
        if (hyb_atomic_clean_stale(dir[0] ? dir : "/") < 0) hyb_error_clear();
    }
    hyb_safetensors *st;
    HYB_TRY(open_ckpt(path, &st));
    int64_t step, tokens, opt_step;
    int rc = meta_i64(st, path, "step", &step);
    if (rc == HYB_OK) rc = meta_i64(st, path, "tokens", &tokens);
    if (rc == HYB_OK) rc = meta_i64(st, path, "opt_step", &opt_step);
    const char *opt_meta = hyb_safetensors_meta(st, "hyb_optimizer");
    if (rc == HYB_OK && opt_meta && strcmp(opt_meta, "0") == 0)
        rc = hyb_error_set(HYB_ERR_FORMAT,
                           "%s: a model snapshot without optimiser state (a stage's final "
                           "checkpoint): load it as a model, it cannot resume training",
                           path);
    /* lean: the frozen parameters are not in the file; the student has them from the base */
    const char *lean = hyb_safetensors_meta(st, "hyb_base") ? hyb_safetensors_meta(st, "frozen") : NULL;
    if (lean && !*lean) lean = NULL;
    int n_stored = t->student->n_params;
    for (int i = 0; lean && i < t->student->n_params; i++)
        n_stored -= in_list(lean, t->student->params[i]->name);
    /* the tensor count must match too: a checkpoint of a model with more parameters is not ours */
    if (rc == HYB_OK && hyb_safetensors_count(st) != 3 * n_stored)
        rc = hyb_error_set(
            HYB_ERR_FORMAT,
            "%s: %d tensors, but this student has %d %sparameters (x3 with the optimiser state): a "
            "checkpoint of a different layer map?",
            path, hyb_safetensors_count(st), n_stored, lean ? "trainable " : "");
    if (rc == HYB_OK) rc = load_tensors(st, path, t->student, t->opt, lean, NULL);
    if (rc == HYB_OK) {
        t->step = step;
        t->tokens = tokens;
        t->opt->step = opt_step;
        apply_frozen(t->student, hyb_safetensors_meta(st, "frozen"));
        if (meta) rc = meta_copy(st, meta);
    }
    hyb_safetensors_close(st);
    return rc == HYB_OK ? rc : hyb_error_wrap(rc, "%s", W);
}

int hyb_ckpt_read_meta(const char *path, hyb_ckpt_meta *meta) {
    memset(meta, 0, sizeof *meta);
    hyb_safetensors *st;
    HYB_TRY(open_ckpt(path, &st));
    int rc = meta_copy(st, meta);
    hyb_safetensors_close(st);
    return rc;
}

int hyb_model_from_checkpoint(const char *path, hyb_model **out) {
    return hyb_model_from_checkpoint_base(path, NULL, out);
}

int hyb_model_from_checkpoint_base(const char *path, const hyb_model *base, hyb_model **out) {
    *out = NULL;
    hyb_safetensors *st;
    HYB_TRY(open_ckpt(path, &st));
    int rc = HYB_OK;
    const char *base_path = hyb_safetensors_meta(st, "hyb_base");
    const char *lean = base_path ? hyb_safetensors_meta(st, "frozen") : NULL;
    if (lean && !*lean) lean = NULL;
    if (lean && !base)
        rc = hyb_error_set(HYB_ERR_ARG,
                           "%s: a lean checkpoint: its frozen parameters are in its base %s (load "
                           "the base and use hyb_model_from_checkpoint_base)",
                           path, base_path);
    hyb_model *m = NULL;
    const char *toml = hyb_safetensors_meta(st, "hyb_layermap");
    hyb_layermap *map = NULL;
    if (!toml) rc = hyb_error_set(HYB_ERR_FORMAT, "%s: metadata 'hyb_layermap' is missing", path);
    if (rc == HYB_OK) rc = hyb_layermap_parse(toml, path, &map);
    if (rc == HYB_OK)
        rc = hyb_model_build_ex(map, 0, HYB_BUILD_NO_INIT, &m); /* values come from the file */
    if (rc == HYB_OK) rc = load_tensors(st, path, m, NULL, lean, base);
    if (rc == HYB_OK) apply_frozen(m, hyb_safetensors_meta(st, "frozen"));
    hyb_safetensors_close(st);
    if (rc != HYB_OK) {
        hyb_model_free(m);
        return rc;
    }
    *out = m;
    return HYB_OK;
}

// ---- content hash -------------------------------------------------------------------------------

#define FNV_OFFSET 1469598103934665603ull
#define FNV_PRIME 1099511628211ull

static int hash_file(const char *path, uint64_t *h) {
    FILE *f = fopen(path, "rb");
    if (!f) return hyb_error_set(HYB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char buf[1 << 16];
    size_t n;
    uint64_t x = *h;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        for (size_t i = 0; i < n; i++) {
            x ^= buf[i];
            x *= FNV_PRIME;
        }
    int err = ferror(f);
    fclose(f);
    if (err) return hyb_error_set(HYB_ERR_IO, "%s: read error", path);
    *h = x;
    return HYB_OK;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int hyb_file_hash(const char *path, char out[17]) {
    uint64_t h = FNV_OFFSET;
    DIR *d = opendir(path);
    int rc = HYB_OK;
    if (!d) {
        if (errno != ENOTDIR) return hyb_error_set(HYB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        HYB_TRY(hash_file(path, &h));
    } else {
        char **names = NULL;
        int n = 0, cap = 0;
        struct dirent *e;
        while (rc == HYB_OK && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                char **nn = realloc(names, sizeof(char *) * (size_t)cap);
                if (!nn) { rc = hyb_error_set(HYB_ERR_NOMEM, "hyb_file_hash: out of memory"); break; }
                names = nn;
            }
            names[n] = dup_s(e->d_name);
            if (!names[n]) rc = hyb_error_set(HYB_ERR_NOMEM, "hyb_file_hash: out of memory");
            else n++;
        }
        closedir(d);
        if (rc == HYB_OK) qsort(names, (size_t)n, sizeof(char *), cmp_str);
        for (int i = 0; i < n && rc == HYB_OK; i++) {
            char p[4200];
            snprintf(p, sizeof p, "%s/%s", path, names[i]);
            DIR *sub = opendir(p);
            if (sub) { /* not recursive */
                closedir(sub);
                continue;
            }
            for (const char *c = names[i]; *c; c++) {
                h ^= (unsigned char)*c;
                h *= FNV_PRIME;
            }
            rc = hash_file(p, &h);
        }
        for (int i = 0; i < n; i++)
            free(names[i]);
        free(names);
    }
    if (rc == HYB_OK) snprintf(out, 17, "%016" PRIx64, h);
    return rc;
}
