/* core/io/quant_load.h: the HYB_QUANT load path (issue 22): GGUF linear weights stay in blocks.
 * Internal to libhyb; called by the GGUF loader (core/io/hf_load.c, gguf_fill). */
#ifndef HYB_IO_QUANT_LOAD_H
#define HYB_IO_QUANT_LOAD_H
#include <stdint.h>

#include "hyb/tensor.h"

/* When the quantized mode is on (HYB_QUANT=precise|fast|emul, or hyb_quant_set), t is a weight
 * that the graph's matmul / embedding ops consume (token embedding, lm_head, MLP gate/up/down:
 * the mixers' own weights go to their plugins as f32 and stay f32), and the GGUF type has a
 * kernel: replace t's f32 data by a copy of the file's blocks, t->dtype the block type,
 * requires_grad 0, and return 1. Return 0 (t untouched) otherwise, or a negative hyb_status when a
 * block's scale is NaN/Inf or the byte count is wrong (the message names the tensor). */
int hyb_quant_adopt_gguf(hyb_tensor *t, const char *gguf_name, int ggml_type, const void *data,
                         uint64_t nbytes);
/* When the quantized mode is on, t is an attention projection (self_attn.{q,k,v,o}_proj.weight,
 * already filled in f32, rows put back in HF order) and the GGUF type has a kernel: register a
 * copy of the file's blocks as the shadow of t's f32 data (cpu_quant.h), with the same row
 * permutation when n_heads > 0 (GGUF row h*hd + 2i + j is HF row h*hd + j*hd/2 + i). Returns
 * HYB_OK also when nothing applies; an error for NaN/Inf scales (naming the tensor) or OOM. */
int hyb_quant_shadow_gguf(hyb_tensor *t, const char *gguf_name, int ggml_type, const void *data,
                          uint64_t nbytes, int n_heads, int head_dim);
#endif
