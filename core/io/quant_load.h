/* core/io/quant_load.h: GGUF weights kept in their blocks (issue 22): no f32 copy of a frozen
 * linear weight of a model loaded for inference. Internal to libhyb; called by the GGUF loader
 * (core/io/hf_load.c, gguf_fill), which decides which parameters may stay quantized (the token
 * embedding, lm_head, MLP gate/up/down, and mixer parameters declared quant_ok). */
#ifndef HYB_IO_QUANT_LOAD_H
#define HYB_IO_QUANT_LOAD_H
#include <stdint.h>

#include "hyb/tensor.h"

/* HYB_OK, or HYB_ERR_FORMAT naming the tensor, its type and the block when a block of a GGUF
 * block type holds a NaN/Inf scale (the f16 d / dmin fields); other types pass. */
int hyb_quant_check_scales(const char *gguf_name, int ggml_type, const void *data,
                           uint64_t nbytes);

/* t: a 2-D parameter [N, K] (f32, data NULL or allocated) whose GGUF tensor has ggml_type.
 * When the type has a quantized kernel (hyb_quant_supported), t takes the file's blocks:
 * t->dtype becomes the block type, requires_grad 0, and
 *   - n_heads == 0: t->data points at `data` itself (owner HYB_OWN_EXTERNAL: the caller keeps
 *     the mapped file alive as long as t);
 *   - n_heads > 0 (q/k projections): a heap copy with GGUF's per-head row order put back in HF
 *     order (GGUF row h*hd + 2i + j is HF row h*hd + j*hd/2 + i), owner HYB_OWN_PARAM.
 * Returns 1 (kept), 0 when the type has no kernel (t untouched; a warning names the tensor, the
 * type and the supported types: the caller dequantises it to f32), or a negative hyb_status:
 * wrong byte count or rows for the shape, OOM (messages name the tensor). */
int hyb_quant_keep_gguf(hyb_tensor *t, const char *gguf_name, int ggml_type, const void *data,
                        uint64_t nbytes, int n_heads, int head_dim);

/* The supported block types as text ("Q8_0 Q4_0 ..."), for messages. */
const char *hyb_quant_supported_list(void);
#endif
