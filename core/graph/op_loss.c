/* core/graph/op_loss.c: cross-entropy, forward KL and reverse KL (SPEC.md section 5).
 *
 * Each loss is the weighted mean over tokens: sum_r w_r loss_r / sum_r w_r, where w_r is the mask
 * (1 when no mask) times, for cross-entropy, [target_r >= 0]. With no weighted token at all the
 * loss is 0 and so are its gradients. The backward recomputes softmaxes from the logits and the
 * per-row statistics saved by the forward (no [N, V] buffer besides the gradient itself). */
#include <math.h>
#include <string.h>

#include "graph/graph_internal.h"

/* The common start of a loss: *be = the backend of the logits' device, *rows_out and *V_out of
 * logits [..., V], and the per-row weights w (host arena) it returns; sets *count = sum w. NULL +
 * error. */
static float *loss_weights(hyb_graph *g, const char *op, const hyb_tensor *logits,
                           const int32_t *targets, const float *mask, const hyb_backend **be,
                           int64_t *rows_out, int64_t *V_out, double *count) {
    char a[128];
    *be = op_backend(op, logits->device);
    if (!*be) return NULL;
    const int64_t V = logits->shape[logits->ndim - 1];
    if (logits->ndim < 2 || V < 1)
        OP_ERR("%s: logits %s must be [B, T, V] or [N, V] with V >= 1", op,
               op_shape(logits, a, sizeof a));
    const int64_t rows = hyb_tensor_numel(logits) / V;
    float *w = graph_host_alloc(g, sizeof(float) * (size_t)(rows ? rows : 1));
    if (!w) return NULL;
    double c = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        float m = 1.0f;
        if (mask) {
            m = mask[r];
            if (!(m >= 0.0f) || isinf(m))
                OP_ERR("%s: mask[%lld] = %g for logits %s: weights must be finite and >= 0", op,
                       (long long)r, (double)m, op_shape(logits, a, sizeof a));
        }
        if (targets) {
            if (targets[r] >= V)
                OP_ERR("%s: targets[%lld] = %d is outside [0, %lld) of logits %s", op, (long long)r,
                       targets[r], (long long)V, op_shape(logits, a, sizeof a));
            if (targets[r] < 0) m = 0.0f;
        }
        w[r] = m;
        c += m;
    }
    *rows_out = rows;
    *V_out = V;
    *count = c;
    return w;
}

static hyb_tensor *loss_output(hyb_graph *g, const char *op, const hyb_backend *be, hyb_device dev,
                               double value) {
    int64_t one = 1;
    hyb_tensor *L = graph_output(g, op, dev, 1, &one);
    if (!L) return NULL;
    float v = (float)value;
    OP_CALL(op, be->upload(be, L->data, &v, sizeof v));
    return L;
}

/* dL/dloss, read back from the loss's (device) gradient */
static int loss_upstream(hyb_node *n, float *d) {
    return n->be->download(n->be, d, n->out->grad->data, sizeof *d);
}

// ---- cross-entropy --------------------------------------------------------------------------

static int ce_bwd(hyb_graph *g, hyb_node *n) {
    hyb_tensor *x = n->in[0];
    float *dx;
    HYB_TRY(graph_grad(g, x, &dx));
    if (!dx || n->fv[0] == 0.0f) return HYB_OK;
    float up;
    HYB_TRY(loss_upstream(n, &up));
    const float scale = up * n->fv[0]; /* dL/dloss / count */
    HYB_TRY(n->be->ce_bwd(n->be, (const float *)x->data, (const int32_t *)n->saved[0],
                          (const float *)n->saved[1], (const float *)n->saved[2], dx, n->iv[0],
                          n->iv[1], scale));
    return HYB_OK;
}

hyb_tensor *hyb_cross_entropy(hyb_graph *g, hyb_tensor *logits, const int32_t *targets,
                              const float *mask) {
    static const char OP[] = "hyb_cross_entropy";
    if (!g) OP_ERR("%s: graph is NULL", OP);
    if (op_check_f32(OP, "logits", logits)) return NULL;
    if (!targets) OP_ERR("%s: targets is NULL", OP);
    const hyb_backend *be;
    int64_t rows, V;
    double count;
    float *w = loss_weights(g, OP, logits, targets, mask, &be, &rows, &V, &count);
    if (!w) return NULL;
    int32_t *tc = graph_host_alloc(g, sizeof(int32_t) * (size_t)(rows ? rows : 1));
    float *lse = graph_dev_alloc(g, logits->device, sizeof(float) * (size_t)(rows ? rows : 1));
    if (!tc || !lse) return NULL;
    memcpy(tc, targets, sizeof(int32_t) * (size_t)rows);
    for (int64_t r = 0; r < rows; r++)
        if (tc[r] < 0) tc[r] = 0; /* ignored rows (w = 0) still get a valid index */
    double sum = 0.0;
    OP_CALL(OP, be->ce_fwd(be, (const float *)logits->data, tc, w, lse, rows, V, &sum));
    hyb_tensor *L = loss_output(g, OP, be, logits->device, count > 0 ? sum / count : 0.0);
    if (!L) return NULL;
    hyb_tensor *ins[1] = {logits};
    hyb_node *nd;
    if (op_record(g, OP, L, ins, 1, ce_bwd, &nd)) return NULL;
    if (nd) {
        nd->saved[0] = tc;
        nd->saved[1] = w;
        nd->saved[2] = lse;
        nd->iv[0] = rows;
        nd->iv[1] = V;
        nd->fv[0] = count > 0 ? (float)(1.0 / count) : 0.0f;
    }
    return L;
}

// ---- KL -------------------------------------------------------------------------------------

static int kl_bwd(hyb_graph *g, hyb_node *n) {
    hyb_tensor *s = n->in[0], *t = n->in[1];
    float *ds;
    HYB_TRY(graph_grad(g, s, &ds)); /* the teacher is a constant: no gradient for it */
    if (!ds || n->fv[0] == 0.0f) return HYB_OK;
    float up;
    HYB_TRY(loss_upstream(n, &up));
    const float scale = up * n->fv[0];
    HYB_TRY(n->be->kl_bwd(n->be, (const float *)s->data, (const float *)t->data,
                          (const float *)n->saved[0], (const float *)n->saved[1], ds, n->iv[0],
                          n->iv[1], n->fv[1], (int)n->iv[2], scale));
    return HYB_OK;
}

static hyb_tensor *kl_op(hyb_graph *g, const char *op, hyb_tensor *student, hyb_tensor *teacher,
                         const float *mask, float temperature, int reverse) {
    char a[128], b[128];
    if (!g) OP_ERR("%s: graph is NULL", op);
    if (op_check_f32(op, "student", student) || op_check_f32(op, "teacher", teacher)) return NULL;
    if (!hyb_tensor_same_shape(student, teacher)) {
        /* [B, T, V] against [B*T, V] is fine: only rows and V must agree */
        if (student->shape[student->ndim - 1] != teacher->shape[teacher->ndim - 1] ||
            hyb_tensor_numel(student) != hyb_tensor_numel(teacher))
            OP_ERR("%s: student %s and teacher %s: shapes differ", op,
                   op_shape(student, a, sizeof a), op_shape(teacher, b, sizeof b));
    }
    if (op_check_same_device(op, "student", student, "teacher", teacher)) return NULL;
    if (!(temperature > 0.0f) || isinf(temperature))
        OP_ERR("%s: temperature %g must be finite and > 0", op, (double)temperature);
    const hyb_backend *be;
    int64_t rows, V;
    double count;
    float *w = loss_weights(g, op, student, NULL, mask, &be, &rows, &V, &count);
    if (!w) return NULL;
    float *stats =
        graph_dev_alloc(g, student->device, sizeof(float) * 3 * (size_t)(rows ? rows : 1));
    if (!stats) return NULL;
    double sum = 0.0;
    OP_CALL(op, be->kl_fwd(be, (const float *)student->data, (const float *)teacher->data, w, stats,
                           rows, V, temperature, reverse, &sum));
    hyb_tensor *L = loss_output(g, op, be, student->device, count > 0 ? sum / count : 0.0);
    if (!L) return NULL;
    hyb_tensor *rec[1] = {student};
    if (graph_recording(g, rec, 1)) {
        hyb_tensor *ins[2] = {student, teacher};
        hyb_node *nd = graph_record(g, op, L, ins, 2, kl_bwd);
        if (!nd) return NULL;
        nd->saved[0] = w;
        nd->saved[1] = stats;
        nd->iv[0] = rows;
        nd->iv[1] = V;
        nd->iv[2] = reverse;
        nd->fv[0] = count > 0 ? (float)(1.0 / count) : 0.0f;
        nd->fv[1] = temperature;
    }
    return L;
}

hyb_tensor *hyb_kl_forward(hyb_graph *g, hyb_tensor *student, hyb_tensor *teacher,
                           const float *mask, float temperature) {
    return kl_op(g, "hyb_kl_forward", student, teacher, mask, temperature, 0);
}

hyb_tensor *hyb_kl_reverse(hyb_graph *g, hyb_tensor *student, hyb_tensor *teacher,
                           const float *mask, float temperature) {
    return kl_op(g, "hyb_kl_reverse", student, teacher, mask, temperature, 1);
}

// ---- weighted sum of losses ---------------------------------------------------------------------

static int wsum_bwd(hyb_graph *g, hyb_node *n) {
    const float *go = (const float *)n->out->grad->data;
    for (int i = 0; i < n->n_in; i++) {
        float *d;
        HYB_TRY(graph_grad(g, n->in[i], &d));
        if (d) HYB_TRY(n->be->axpy(n->be, d, go, n->fv[i], 1));
    }
    return HYB_OK;
}

hyb_tensor *hyb_weighted_sum(hyb_graph *g, hyb_tensor *const *ins, const float *w, int n) {
    static const char OP[] = "hyb_weighted_sum";
    char a[128];
    if (!g) OP_ERR("%s: graph is NULL", OP);
    if (n < 1 || n > HYB_NODE_MAX_IN || !ins || !w)
        OP_ERR("%s: %d inputs (1 to %d)", OP, n, HYB_NODE_MAX_IN);
    for (int i = 0; i < n; i++) {
        if (op_check_f32(OP, "input", ins[i])) return NULL;
        if (hyb_tensor_numel(ins[i]) != 1)
            OP_ERR("%s: input %d %s must hold one value", OP, i, op_shape(ins[i], a, sizeof a));
        if (op_check_same_device(OP, "input 0", ins[0], "input", ins[i])) return NULL;
    }
    const hyb_backend *be = op_backend(OP, ins[0]->device);
    if (!be) return NULL;
    int64_t one = 1;
    hyb_tensor *out = graph_output(g, OP, ins[0]->device, 1, &one);
    if (!out) return NULL;
    OP_CALL(OP, be->memset0(be, out->data, sizeof(float)));
    for (int i = 0; i < n; i++)
        OP_CALL(OP, be->axpy(be, (float *)out->data, (const float *)ins[i]->data, w[i], 1));
    hyb_node *nd;
    if (op_record(g, OP, out, ins, n, wsum_bwd, &nd)) return NULL;
    if (nd) {
        for (int i = 0; i < n; i++)
            nd->fv[i] = w[i];
    }
    return out;
}
