/* plugins/gated_deltanet/gated_deltanet.c: the `gated_deltanet` mixer plugin
 * (flash-linear-attention's GatedDeltaNet layer: DeltaNet plus a per-head, per-token decay).
 * The layer code is shared with `deltanet` through plugins/common/deltanet_impl.h (header-only,
 * compiled into this .so); the recurrence is in plugins/common/deltanet_core.h.
 *
 * Per head (state S [dk, dv], dk = dv = head_dim), g_t = -exp(A_log) softplus(a_t + dt_bias):
 *   S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t
 * Prefill/training use the chunked WY form with cumulative decay, decode the recurrent form.
 * Devices: cpu and cuda (kernels in plugins/common/deltanet.cu, see deltanet_impl.h).
 *
 * TOML keys: as `deltanet` (n_heads, head_dim, conv_size, chunk, norm_eps, num_v_heads,
 * expand_v, use_gate, use_short_conv, allow_neg_eigval, type, symbol; the decay is per value
 * head).
 * Parameters (hf_prefix "mixer"): those of `deltanet` (see plugins/deltanet/deltanet.c), then
 *   a_proj.weight [Hv, D]  A_log [Hv]  dt_bias [Hv]
 * Init: as deltanet; A_log = log(A), A ~ U(0, 16); dt_bias = softplus^-1(dt),
 * dt = exp(U(log 1e-3, log 1e-1)) floored at 1e-4 (fla, Mamba). init_from "mha" as deltanet, with
 * A_log / dt_bias redrawn as above.
 * Decode state per sequence (f32): as `deltanet` (S [Hv, head_dim, dv], then the windows).
 */
#define DN_GATED 1
#define DN_NAME "gated_deltanet"
#define DN_DESCRIPTION                                                                             \
    "Gated DeltaNet: delta rule with decay, short convs (fla), chunked + recurrent"
#include "../common/deltanet_impl.h"
