/* core/graph/op_norm.c: rmsnorm and rope. */
#include <string.h>

#include "graph/graph_internal.h"

// ---- rmsnorm --------------------------------------------------------------------------------

static int rmsnorm_bwd(hyb_graph *g, hyb_node *n) {
    hyb_tensor *x = n->in[0], *w = n->in[1];
    float *dx, *dw;
    HYB_TRY(graph_grad(g, x, &dx));
    HYB_TRY(graph_grad(g, w, &dw));
    HYB_TRY(n->be->rmsnorm_bwd(n->be, (const float *)x->data, (const float *)w->data,
                               (const float *)n->saved[0], (const float *)n->out->grad->data, dx,
                               dw, n->iv[0], n->iv[1]));
    return HYB_OK;
}

hyb_tensor *hyb_rmsnorm(hyb_graph *g, hyb_tensor *x, hyb_tensor *w, float eps) {
    static const char OP[] = "hyb_rmsnorm";
    char a[128], b[128];
    if (!g) OP_ERR("%s: graph is NULL", OP);
    if (op_check_f32(OP, "x", x) || op_check_f32(OP, "w", w)) return NULL;
    const int64_t D = x->shape[x->ndim - 1];
    if (w->ndim != 1 || w->shape[0] != D)
        OP_ERR("%s: x %s and w %s: w must be [%lld]", OP, op_shape(x, a, sizeof a),
               op_shape(w, b, sizeof b), (long long)D);
    if (!(eps >= 0.0f)) OP_ERR("%s: eps %g must be >= 0", OP, (double)eps);
    if (op_check_same_device(OP, "x", x, "w", w)) return NULL;
    const hyb_backend *be;
    hyb_tensor *y = op_output_like(g, OP, x, &be);
    if (!y) return NULL;
    const int64_t rows = D ? hyb_tensor_numel(x) / D : 0;
    float *rstd = graph_dev_alloc(g, x->device, sizeof(float) * (size_t)(rows ? rows : 1));
    if (!rstd) return NULL;
    OP_CALL(OP, be->rmsnorm_fwd(be, (const float *)x->data, (const float *)w->data,
                                (float *)y->data, rstd, rows, D, eps));
    hyb_tensor *ins[2] = {x, w};
    hyb_node *nd;
    if (op_record(g, OP, y, ins, 2, rmsnorm_bwd, &nd)) return NULL;
    if (nd) {
        nd->saved[0] = rstd;
        nd->iv[0] = rows;
        nd->iv[1] = D;
    }
    return y;
}

/* Two tape nodes (add: h = a + b; rmsnorm: y = norm(h)) with the forward of both done by one
 * kernel: the backward is that of the separate ops, node for node. */
hyb_tensor *hyb_add_rmsnorm(hyb_graph *g, hyb_tensor *a, hyb_tensor *b, hyb_tensor *w, float eps,
                            hyb_tensor **h_out) {
    static const char OP[] = "hyb_add_rmsnorm";
    char sa[128], sb[128];
    if (h_out) *h_out = NULL;
    if (!g || !h_out) OP_ERR("%s: graph and h are required", OP);
    if (op_check_f32(OP, "a", a) || op_check_f32(OP, "b", b) || op_check_f32(OP, "w", w))
        return NULL;
    if (!hyb_tensor_same_shape(a, b))
        OP_ERR("%s: a %s and b %s: shapes differ", OP, op_shape(a, sa, sizeof sa),
               op_shape(b, sb, sizeof sb));
    const int64_t D = a->shape[a->ndim - 1];
    if (w->ndim != 1 || w->shape[0] != D)
        OP_ERR("%s: a %s and w %s: w must be [%lld]", OP, op_shape(a, sa, sizeof sa),
               op_shape(w, sb, sizeof sb), (long long)D);
    if (!(eps >= 0.0f)) OP_ERR("%s: eps %g must be >= 0", OP, (double)eps);
    if (op_check_same_device(OP, "a", a, "b", b) || op_check_same_device(OP, "a", a, "w", w))
        return NULL;
    const hyb_backend *be;
    hyb_tensor *h = op_output_like(g, OP, a, &be);
    hyb_tensor *y = h ? op_output_like(g, OP, a, &be) : NULL;
    if (!y) return NULL;
    const int64_t rows = D ? hyb_tensor_numel(a) / D : 0;
    float *rstd = graph_dev_alloc(g, a->device, sizeof(float) * (size_t)(rows ? rows : 1));
    if (!rstd) return NULL;
    OP_CALL(OP, be->add_rmsnorm_fwd(be, (const float *)a->data, (const float *)b->data,
                                    (const float *)w->data, (float *)h->data, (float *)y->data,
                                    rstd, rows, D, eps));
    hyb_tensor *ins_add[2] = {a, b};
    if (op_record(g, "hyb_add", h, ins_add, 2, op_add_bwd, NULL)) return NULL;
    hyb_tensor *ins[2] = {h, w};
    hyb_node *nd;
    if (op_record(g, "hyb_rmsnorm", y, ins, 2, rmsnorm_bwd, &nd)) return NULL;
    if (nd) {
        nd->saved[0] = rstd;
        nd->iv[0] = rows;
        nd->iv[1] = D;
    }
    *h_out = h;
    return y;
}

// ---- rope -----------------------------------------------------------------------------------

static int rope_bwd(hyb_graph *g, hyb_node *n) {
    float *dx;
    HYB_TRY(graph_grad(g, n->in[0], &dx));
    if (!dx) return HYB_OK;
    const int B = (int)n->iv[0], T = (int)n->iv[1], H = (int)n->iv[2], hd = (int)n->iv[3];
    const size_t bytes = sizeof(float) * (size_t)B * T * H * hd;
    /* the forward is a rotation, its backward the inverse rotation of dy */
    float *tmp = graph_dev_alloc(g, n->out->device, bytes ? bytes : 1);
    if (!tmp) return HYB_ERR_NOMEM;
    HYB_TRY(n->be->copy(n->be, tmp, n->out->grad->data, bytes));
    HYB_TRY(n->be->rope(n->be, tmp, B, T, H, hd, (const int32_t *)n->saved[0], n->fv[0], 1));
    HYB_TRY(n->be->axpy(n->be, dx, tmp, 1.0f, (int64_t)B * T * H * hd));
    return HYB_OK;
}

hyb_tensor *hyb_rope(hyb_graph *g, hyb_tensor *x, const int32_t *pos, float theta) {
    static const char OP[] = "hyb_rope";
    char a[128];
    if (!g) OP_ERR("%s: graph is NULL", OP);
    if (op_check_f32(OP, "x", x)) return NULL;
    if (x->ndim != 4) OP_ERR("%s: x %s must be 4-D [B, T, H, hd]", OP, op_shape(x, a, sizeof a));
    for (int i = 0; i < 4; i++)
        if (x->shape[i] > 0x7fffffff) OP_ERR("%s: x %s is too large", OP, op_shape(x, a, sizeof a));
    const int B = (int)x->shape[0], T = (int)x->shape[1], H = (int)x->shape[2],
              hd = (int)x->shape[3];
    if (hd % 2) OP_ERR("%s: x %s: head dim %d must be even", OP, op_shape(x, a, sizeof a), hd);
    if (!(theta > 0.0f)) OP_ERR("%s: theta %g must be > 0", OP, (double)theta);
    const hyb_backend *be = op_backend(OP, x->device);
    if (!be) return NULL;
    int32_t *pc = NULL;
    if (pos) {
        for (int t = 0; t < T; t++)
            if (pos[t] < 0) OP_ERR("%s: pos[%d] = %d is negative", OP, t, pos[t]);
        pc = graph_host_alloc(g, sizeof(int32_t) * (size_t)(T ? T : 1));
        if (!pc) return NULL;
        if (T) memcpy(pc, pos, sizeof(int32_t) * (size_t)T);
    }
    hyb_tensor *y = graph_output(g, OP, x->device, 4, x->shape);
    if (!y) return NULL;
    OP_CALL(OP, be->copy(be, y->data, x->data, hyb_tensor_nbytes(x)));
    OP_CALL(OP, be->rope(be, (float *)y->data, B, T, H, hd, pc, theta, 0));
    hyb_tensor *ins[1] = {x};
    hyb_node *nd;
    if (op_record(g, OP, y, ins, 1, rope_bwd, &nd)) return NULL;
    if (nd) {
        nd->saved[0] = pc;
        nd->iv[0] = B;
        nd->iv[1] = T;
        nd->iv[2] = H;
        nd->iv[3] = hd;
        nd->fv[0] = theta;
    }
    return y;
}
