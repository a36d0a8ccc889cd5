/* core/graph/op_linear_quant.c: hyb_matmul and hyb_embedding on a frozen weight kept in GGUF
 * blocks (dtype Q8_0 / Q4_0 / Q4_1; the HYB_QUANT load path, core/io/hf_load.c). Inference only:
 * such a weight has no gradient, so the op refuses to record a backward through it (x's gradient
 * would need W's rows in f32: dequantise the model to train it).
 *
 * op_linear.c calls these two when W->dtype is a block type (see the marked hooks there); the
 * product is the backend's qmatmul entry (core/backend/cpu/cpu_quant.c on the CPU). */
#include <string.h>

#include "backend/cpu/cpu_quant.h"
#include "graph/graph_internal.h"
#include "graph/op_linear_quant.h"

static int check_quant_w(const char *op, const hyb_tensor *W) {
    char a[128];
    if (!hyb_quant_supported(W->dtype))
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "%s: W '%s' %s: quantized weight type %s has no kernel (supported: "
                             "q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k)",
                             op, W->name, op_shape(W, a, sizeof a), hyb_dtype_name(W->dtype));
    if (W->device != HYB_DEV_CPU)
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: quantized W '%s' must be on the CPU", op,
                             W->name);
    if (W->ndim != 2 || !W->data)
        return hyb_error_set(HYB_ERR_ARG, "%s: quantized W '%s' %s must be 2-D [N, K]", op, W->name,
                             op_shape(W, a, sizeof a));
    return HYB_OK;
}

static int check_frozen(const char *op, hyb_graph *g, hyb_tensor *x, hyb_tensor *W) {
    hyb_tensor *ins[2] = {x, W};
    if (graph_recording(g, ins, x ? 2 : 1))
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "%s: W '%s' is quantized (%s), which is for inference only; a "
                             "gradient was asked for (turn grad off, or load without HYB_QUANT)",
                             op, W->name, hyb_dtype_name(W->dtype));
    return HYB_OK;
}

hyb_tensor *hyb_matmul_quant(hyb_graph *g, hyb_tensor *x, hyb_tensor *W) {
    static const char OP[] = "hyb_matmul";
    char a[128];
    if (op_check_f32(OP, "x", x) || check_quant_w(OP, W)) return NULL;
    const int64_t K = x->shape[x->ndim - 1];
    if (matmul_check_inner(OP, x, W)) return NULL;
    if (op_check_same_device(OP, "x", x, "W", W) || check_frozen(OP, g, x, W)) return NULL;
    int M;
    if (op_rows_int(OP, "x", x, K, &M)) return NULL;
    if (W->shape[0] > 0x7fffffff || K > 0x7fffffff)
        return hyb_error_set(HYB_ERR_ARG, "%s: W %s too large", OP, op_shape(W, a, sizeof a)), NULL;
    const int N = (int)W->shape[0];
    hyb_tensor *y = matmul_output(g, OP, x, N);
    if (!y) return NULL;
    const hyb_backend *be = op_backend(OP, x->device);
    if (!be) return NULL;
    if (!be->qmatmul)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "%s: W '%s' is quantized (%s) and backend %s has no quantized matmul",
                             OP, W->name, hyb_dtype_name(W->dtype), be->name),
               NULL;
    int rc = be->qmatmul(be, (int)W->dtype, W->data, (const float *)x->data, (float *)y->data, M, N,
                         (int)K);
    if (rc != HYB_OK) {
        hyb_error_wrap(rc, "%s: W '%s'", OP, W->name);
        return NULL;
    }
    return y;
}

hyb_tensor *hyb_embedding_quant(hyb_graph *g, hyb_tensor *W, const int32_t *ids, int B, int T) {
    static const char OP[] = "hyb_embedding";
    if (check_quant_w(OP, W) || check_frozen(OP, g, NULL, W)) return NULL;
    if (embedding_check_ids(OP, W, ids, B, T)) return NULL;
    const int64_t n = (int64_t)B * T, D = W->shape[1];
    int64_t shape[3] = {B, T, D};
    hyb_tensor *y = graph_output(g, OP, W->device, 3, shape);
    if (!y) return NULL;
    const int64_t rb = hyb_quant_row_bytes(W->dtype, D);
    for (int64_t i = 0; i < n; i++)
        if (hyb_dequantize(W->dtype, (const uint8_t *)W->data + ids[i] * rb,
                           (float *)y->data + i * D, D) != HYB_OK)
            return hyb_error_wrap(HYB_ERR, "%s: W '%s'", OP, W->name), NULL;
    return y;
}
