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
 *   flash-linear-attention's options (defaults: the layer above):
 *   num_v_heads     Hv value heads (default n_heads; a multiple of it): grouped values, value
 *                   head h reads q/k head h / (Hv / H)
 *   expand_v        value head size dv = expand_v * head_dim (default 1.0; dv whole, 1..512)
 *   use_gate        the silu(g_proj x) output gate (default true; false: o_norm alone, no g_proj)
 *   use_short_conv  the q/k/v convolutions (default true; false: silu(projection), no conv
 *                   weights, no conv windows in the state)
 *   allow_neg_eigval  beta = 2 sigmoid(b_proj x) in (0, 2) (default false: sigmoid, (0, 1))
 *   The cuda kernels have allow_neg_eigval, use_gate and use_short_conv; num_v_heads !=
 *   n_heads and expand_v != 1 are HYB_ERR_UNSUPPORTED there (cpu only).
 *   type, symbol  read by the layer map, accepted here
 *
 * Parameters (hf_prefix "mixer", C = H * head_dim, Cv = Hv * dv), in declaration order (the
 * ones an option turns off are left out):
 *   q_proj.weight [C, D]  k_proj.weight [C, D]  v_proj.weight [Cv, D]  b_proj.weight [Hv, D]
 *   q_conv1d.weight [C, 1, K]  k_conv1d.weight [C, 1, K]  v_conv1d.weight [Cv, 1, K]
 *   g_proj.weight [Cv, D]  o_norm.weight [dv]  o_proj.weight [D, Cv]
 * Init: linear weights N(0, 0.02) (fla's initializer_range), convs U(-1/sqrt(K), 1/sqrt(K))
 * (nn.Conv1d's default), o_norm 1. init_from "mha": see deltanet_impl.h ("DIL").
 * Decode state per sequence (f32): S [Hv, head_dim, dv], then the conv windows q [C][K-1],
 * k [C][K-1], v [Cv][K-1] (none without short convs).
 */
#define DN_GATED 0
#define DN_NAME "deltanet"
#define DN_DESCRIPTION                                                                             \
    "DeltaNet: delta-rule linear attention with short convs (fla), chunked + recurrent"
#include "../common/deltanet_impl.h"
