/* core/graph/op_linear_quant.h: the matmul / embedding ops on a weight kept in GGUF blocks
 * (internal; called by op_linear.c when W->dtype is a block type). */
#ifndef HYB_OP_LINEAR_QUANT_H
#define HYB_OP_LINEAR_QUANT_H
#include "hyb/graph.h"

hyb_tensor *hyb_matmul_quant(hyb_graph *g, hyb_tensor *x, hyb_tensor *W);
hyb_tensor *hyb_embedding_quant(hyb_graph *g, hyb_tensor *W, const int32_t *ids, int B, int T);
/* op_linear.c: the ids checks hyb_embedding and hyb_embedding_quant share. */
int embedding_check_ids(const char *OP, const hyb_tensor *W, const int32_t *ids, int B, int T);
/* op_linear.c: hyb_matmul's inner-dims check and output, shared with hyb_matmul_quant. */
int matmul_check_inner(const char *OP, const hyb_tensor *x, const hyb_tensor *W);
hyb_tensor *matmul_output(hyb_graph *g, const char *OP, const hyb_tensor *x, int N);
#endif
