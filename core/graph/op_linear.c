/* core/graph/op_linear.c: embedding and matmul. */
#include <string.h>

#include "graph/graph_internal.h"
#include "graph/op_linear_quant.h" /* HYB_QUANT: weights kept in GGUF blocks */

// ---- embedding ------------------------------------------------------------------------------

static int embedding_bwd(hyb_graph *g, hyb_node *n) {
    float *dW;
    HYB_TRY(graph_grad(g, n->in[0], &dW));
    if (dW)
        HYB_TRY(n->be->embedding_bwd(n->be, dW, (const int32_t *)n->saved[0],
                                     (const float *)n->out->grad->data, n->iv[0], n->iv[1]));
    return HYB_OK;
}

/* The checks both embeddings make on ids (W is a 2-D [V, D] weight): B, T >= 0, ids non-NULL
 * where B * T > 0 and every id in [0, V). Nonzero (error set) when one fails. */
int embedding_check_ids(const char *OP, const hyb_tensor *W, const int32_t *ids, int B, int T) {
    char a[128];
    if (B < 0 || T < 0) return hyb_error_set(HYB_ERR_ARG, "%s: negative B=%d or T=%d", OP, B, T);
    const int64_t n = (int64_t)B * T, V = W->shape[0];
    if (n > 0 && !ids) return hyb_error_set(HYB_ERR_ARG, "%s: ids is NULL", OP);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return hyb_error_set(HYB_ERR_ARG, "%s: ids[%lld] = %d is outside [0, %lld) of W %s", OP,
                                 (long long)i, ids[i], (long long)V, op_shape(W, a, sizeof a));
    return HYB_OK;
}

hyb_tensor *hyb_embedding(hyb_graph *g, hyb_tensor *W, const int32_t *ids, int B, int T) {
    static const char OP[] = "hyb_embedding";
    char a[128];
    if (!g) return hyb_error_set(HYB_ERR_ARG, "%s: graph is NULL", OP), NULL;
    if (W && hyb_dtype_block_elems(W->dtype) > 1) /* HYB_QUANT hook: op_linear_quant.c */
        return hyb_embedding_quant(g, W, ids, B, T);
    if (op_check_f32(OP, "W", W)) return NULL;
    if (W->ndim != 2)
        return hyb_error_set(HYB_ERR_ARG, "%s: W %s must be 2-D [V, D]", OP,
                             op_shape(W, a, sizeof a)),
               NULL;
    if (embedding_check_ids(OP, W, ids, B, T)) return NULL;
    const int64_t n = (int64_t)B * T, D = W->shape[1];
    const hyb_backend *be = op_backend(OP, W->device);
    if (!be) return NULL;
    int64_t shape[3] = {B, T, D};
    hyb_tensor *y = graph_output(g, OP, W->device, 3, shape);
    if (!y) return NULL;
    int32_t *idc =
        graph_host_alloc(g, sizeof(int32_t) * (size_t)(n ? n : 1)); /* copied: caller's may go */
    if (!idc) return NULL;
    if (n) memcpy(idc, ids, sizeof(int32_t) * (size_t)n);
    OP_CALL(OP, be->embedding_fwd(be, (const float *)W->data, idc, (float *)y->data, n, D));
    hyb_tensor *ins[1] = {W};
    if (graph_recording(g, ins, 1)) {
        hyb_node *nd = graph_record(g, OP, y, ins, 1, embedding_bwd);
        if (!nd) return NULL;
        nd->saved[0] = idc;
        nd->iv[0] = n;
        nd->iv[1] = D;
    }
    return y;
}

// ---- matmul ---------------------------------------------------------------------------------

static int matmul_bwd(hyb_graph *g, hyb_node *n) {
    hyb_tensor *x = n->in[0], *W = n->in[1];
    const int M = (int)n->iv[0], N = (int)n->iv[1], K = (int)n->iv[2];
    const float *dy = (const float *)n->out->grad->data;
    float *dx, *dW;
    HYB_TRY(graph_grad(g, x, &dx));
    HYB_TRY(graph_grad(g, W, &dW));
    /* y = x W^T:  dx += dy W  ([M,N] x [N,K]);  dW += dy^T x  ([N,M] x [M,K]) */
    if (dx)
        HYB_TRY(n->be->sgemm(n->be, 0, 0, M, K, N, 1.0f, dy, N, (const float *)W->data, K, 1.0f, dx,
                             K));
    if (dW)
        HYB_TRY(n->be->sgemm(n->be, 1, 0, N, K, M, 1.0f, dy, N, (const float *)x->data, K, 1.0f, dW,
                             K));
    return HYB_OK;
}

/* The checks and the output both matmuls share: x's last dim is W's K; y is x's shape with the
 * last dim N. */
int matmul_check_inner(const char *OP, const hyb_tensor *x, const hyb_tensor *W) {
    char a[128], b[128];
    const int64_t K = x->shape[x->ndim - 1];
    if (K != W->shape[1])
        return hyb_error_set(HYB_ERR_ARG, "%s: x %s and W %s: inner dims differ (%lld vs %lld)", OP,
                             op_shape(x, a, sizeof a), op_shape(W, b, sizeof b), (long long)K,
                             (long long)W->shape[1]);
    return HYB_OK;
}

hyb_tensor *matmul_output(hyb_graph *g, const char *OP, const hyb_tensor *x, int N) {
    int64_t shape[HYB_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++)
        shape[i] = x->shape[i];
    shape[x->ndim - 1] = N;
    return graph_output(g, OP, x->device, x->ndim, shape);
}

hyb_tensor *hyb_matmul(hyb_graph *g, hyb_tensor *x, hyb_tensor *W) {
    static const char OP[] = "hyb_matmul";
    char a[128];
    if (!g) return hyb_error_set(HYB_ERR_ARG, "%s: graph is NULL", OP), NULL;
    if (W && hyb_dtype_block_elems(W->dtype) > 1) /* HYB_QUANT hook: op_linear_quant.c */
        return hyb_matmul_quant(g, x, W);
    if (op_check_f32(OP, "x", x) || op_check_f32(OP, "W", W)) return NULL;
    if (W->ndim != 2)
        return hyb_error_set(HYB_ERR_ARG, "%s: W %s must be 2-D [N, K] (a Linear weight)", OP,
                             op_shape(W, a, sizeof a)),
               NULL;
    const int64_t K = x->shape[x->ndim - 1];
    if (matmul_check_inner(OP, x, W)) return NULL;
    if (op_check_same_device(OP, "x", x, "W", W)) return NULL;
    int M;
    if (op_rows_int(OP, "x", x, K, &M)) return NULL;
    if (W->shape[0] > 0x7fffffff)
        return hyb_error_set(HYB_ERR_ARG, "%s: W %s too large", OP, op_shape(W, a, sizeof a)), NULL;
    const int N = (int)W->shape[0];
    const hyb_backend *be = op_backend(OP, x->device);
    if (!be) return NULL;
    hyb_tensor *y = matmul_output(g, OP, x, N);
    if (!y) return NULL;
    OP_CALL(OP, be->sgemm(be, 0, 1, M, N, (int)K, 1.0f, (const float *)x->data, (int)K,
                          (const float *)W->data, (int)K, 0.0f, (float *)y->data, N));
    hyb_tensor *ins[2] = {x, W};
    if (graph_recording(g, ins, 2)) {
        hyb_node *nd = graph_record(g, OP, y, ins, 2, matmul_bwd);
        if (!nd) return NULL;
        nd->iv[0] = M;
        nd->iv[1] = N;
        nd->iv[2] = K;
    }
    return y;
}
