/* plugins/deltanet/deltanet.c: the `deltanet` mixer plugin (flash-linear-attention's DeltaNet layer
 * with short convolutions, L2-normalised q/k and the gated RMSNorm output). The layer code is
 * shared with `gated_deltanet` through plugins/common/deltanet_impl.h (header-only, compiled into
 * this .so); the recurrence is in plugins/common/deltanet_core.h.
 *
 * Per head (state S [dk, dv], dk = dv = head_dim):
 *   S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t
 * Prefill/training use the chunked WY form (chunk `chunk`), decode the recurrent form.
 * Devices: cpu and cuda (kernels in plugins/common/deltanet.cu, see deltanet_impl.h).
 *
 * TOML keys of [mixers.<name>] (type = "deltanet"):
 *   n_heads    H (default d_model / 64)
 *   head_dim   dk = dv (default d_model / n_heads), at most 512
 *   conv_size  K of the causal depthwise q/k/v convolutions (default 4, 1..16)
 *   chunk      chunk length of the chunked form (default 64, 1..1024)
 *   norm_eps   epsilon of o_norm (default: the model's norm_eps)
 *   type, symbol  read by the layer map, accepted here
 *
 * Parameters (hf_prefix "mixer", C = H * head_dim), in declaration order:
 *   q_proj.weight [C, D]  k_proj.weight [C, D]  v_proj.weight [C, D]  b_proj.weight [H, D]
 *   q_conv1d.weight [C, 1, K]  k_conv1d.weight [C, 1, K]  v_conv1d.weight [C, 1, K]
 *   g_proj.weight [C, D]  o_norm.weight [head_dim]  o_proj.weight [D, C]
 * Init: linear weights N(0, 0.02) (fla's initializer_range), convs U(-1/sqrt(K), 1/sqrt(K))
 * (nn.Conv1d's default), o_norm 1. init_from "mha": see deltanet_impl.h ("DIL").
 * Decode state per sequence (f32): S [H, head_dim, head_dim], then conv windows [3][C][K-1].
 */
#define DN_GATED 0
#define DN_NAME "deltanet"
#define DN_DESCRIPTION                                                                             \
    "DeltaNet: delta-rule linear attention with short convs (fla), chunked + recurrent"
#include "../common/deltanet_impl.h"
