/* plugins/mha/mha.h: internal header of the `mha` mixer plugin (causal GQA attention, RoPE,
 * per-sequence KV cache; HF LlamaAttention semantics). Not part of the ABI.
 *
 * Shapes (D = d_model, H = n_heads, KV = n_kv_heads, hd = head_dim, qd = H*hd, kd = KV*hd):
 *   params, in declaration order:
 *     0 q_proj.weight [qd, D]   1 k_proj.weight [kd, D]   2 v_proj.weight [kd, D]
 *     3 o_proj.weight [D, qd]   (bias = true adds 4 q_proj.bias [qd], 5 k_proj.bias [kd],
 *                                6 v_proj.bias [kd], Qwen2-style; o_proj has no bias)
 *   decode state of one sequence, head-major: K cache [KV, max_ctx, row] then V cache
 *     [KV, max_ctx, row]; row t of head g holds token t (K after RoPE), a row being hd values in
 *     the kvstate's KV type (hyb_kv_dtype: f32, f16 or q8_0, mha_kv.h; rowb bytes =
 *     mha_kv_row_bytes(hd, kv)). Head-major so that a decode task (one KV head of one sequence)
 *     streams contiguous memory. Snapshot of `pos` tokens: rows [0, pos) of K head 0 .. KV-1,
 *     then of V head 0 .. KV-1, as stored: 2*KV*pos*rowb bytes.
 *   saved (training forward -> backward): a 64-byte header, then Q [B*T, qd] and K [B*T, kd]
 *     (both after RoPE), V [B*T, kd], O [B*T, qd] (attention output before o_proj),
 *     LSE [B, H, T] (log-sum-exp of each softmax row, so backward recomputes P exactly).
 *   Both layouts are the same, byte for byte, for the CPU kernels (mha_attn.c) and the CUDA ones
 *   (mha_cuda.c, mha_attn.cu): a state or saved block is per instance, not per device.
 */
#ifndef HYB_PLUGIN_MHA_H
#define HYB_PLUGIN_MHA_H

#include <stddef.h>
#include <stdint.h>

#include "hyb/common.h" /* hyb_status values only: plugins never link against libhyb */
#include "hyb/plugin.h"

#include "../common/plugin_util.h"

extern const hyb_host *mha_host;

/* first word of the saved block's header (hyb_pl_saved_hdr), CPU and CUDA alike */
#define MHA_SAVED_MAGIC 0x31414d48u /* "HMA1" */

enum { MHA_WQ = 0, MHA_WK, MHA_WV, MHA_WO, MHA_BQ, MHA_BK, MHA_BV };

typedef struct mha {
    int D, H, KV, hd, layer;
    int bias;         /* 1: q/k/v projections have biases */
    int bf16;         /* attn_precision = "bf16": the CUDA forward on tensor cores (mha_attn.cu) */
    float theta;      /* RoPE base */
    double theta_cfg; /* rope_theta as configured (written to HF configs) */
    /* decode scratch, grown on demand and kept (no allocation per step once warm); one decode
     * of a given mixer at a time (the host's per-model decode is not reentrant either) */
    void *dec_buf;
    size_t dec_cap;
    const hyb_backend *dec_be; /* the backend dec_buf came from */
    /* CUDA (mha_cuda.c): the kernels of mha_attn.cu compiled for this head_dim on cu_be, and a
     * host staging buffer for the device arrays of state pointers and positions */
    void *cu_fn[16];
    const hyb_backend *cu_be;
    void *cu_fn16[16]; /* the kernels that touch the cache, compiled with -DMHA_KV_F16=1 */
    const hyb_backend *cu_be16;
    void *cu_host;
    size_t cu_host_cap;
} mha;

HYB_PL_DECLARE_KERNELS(mha);
/* the CUDA kernels (mha_cuda.c) */
/* the forward's argument checks, shared by the CPU and CUDA kernels (mha_attn.c) */
int mha_check_fwd(const mha *m, const hyb_mixer_fwd *a, int *p_max);
/* the projections' backward (dW += d^T x for q/k/v, dx written), both devices (mha_attn.c) */
int mha_proj_bwd(const mha *m, const hyb_mixer_bwd *a, const float *dQ, const float *dK,
                 const float *dV);
/* the instance's decode scratch on be's device, grown as needed (mha_attn.c) */
void *mha_dec_scratch(mha *m, const hyb_backend *be, size_t bytes);
int mha_forward_cuda(void *self, const hyb_mixer_fwd *a);
int mha_backward_cuda(void *self, const hyb_mixer_bwd *a);
int mha_decode_cuda(void *self, const hyb_mixer_dec *a);

#endif
