/* plugins/common/deltanet_impl.h: the DeltaNet / Gated DeltaNet mixer layer (flash-linear-attention
 * semantics), header-only. Included exactly once by plugins/deltanet/deltanet.c (DN_GATED 0) and
 * plugins/gated_deltanet/gated_deltanet.c (DN_GATED 1), each of which becomes its own
 * self-contained libhyb-<name>.so; those files document the TOML keys, parameters and init.
 *
 * Layer, per token x [D] (C = H*n, n = head_dim = dk = dv; the options below change dv and the
 * value heads):
 *   q, k, v = silu(causal_conv_K(W_{q,k,v} x))                  depthwise over C channels, no bias
 *   q, k    = per head x / sqrt(|x|^2 + 1e-6); q *= n^-1/2
 *   beta    = sigmoid(W_b x)                                     [H]
 *   g       = -exp(A_log) softplus(W_a x + dt_bias)              [H] (gated; else no decay)
 *   o       = delta-rule recurrence per head (deltanet_core.h)    [C]
 *   z       = RMSNorm_head(o) * o_norm.weight * silu(W_g x)       [C]
 *   y       = W_o z                                               [D]
 * flash-linear-attention's options (struct dn): Hv = num_v_heads value heads of nv = expand_v * n
 * (Cv = Hv nv; value head hv reads q/k head hv / (Hv / H), backward sums dq, dk over the group),
 * beta = 2 sigmoid with allow_neg_eigval, no silu(W_g x) factor without use_gate, q/k/v =
 * silu(W x) without use_short_conv. beta, g, b_proj, a_proj, A_log, dt_bias are per value head.
 * Parameters an option turns off are not declared; slot[] maps the logical DN_* order to the
 * declared one (dn_logical, once per call).
 * Decode state of one sequence (f32): S [Hv, n, nv], then the raw (pre-conv) inputs of the last
 * K-1 tokens for each of the three convs: q [C][K-1], k [C][K-1], v [Cv][K-1], oldest first (none
 * without short convs). With the defaults (Hv = H, nv = n) these are the layouts of before.
 * saved (forward -> backward): a 64-byte header, then the projections Qr, Kr [B*T, C], Vr, Gp
 * [B*T, Cv] (Gp only with the gate), Bl [B*T, Hv], (gated) Al [B*T, Hv], the recurrence output
 * O [B*T, Cv], and the state at the start of every chunk [B, Hv, ceil(T/chunk), n, nv];
 * everything else is recomputed by backward.
 *
 * Devices: kernels[HYB_DEV_CPU] = dn_forward / dn_backward / dn_decode (plain C + OpenMP, the
 * recurrence in deltanet_core.h); kernels[HYB_DEV_CUDA] = dn_forward_cuda / dn_backward_cuda /
 * dn_decode_cuda (section "CUDA" below; the kernels and their design are in
 * plugins/common/deltanet.cu, embedded at build time and compiled by NVRTC through be->kernel).
 * Both keep the saved block and the decode state in the layouts above (a state is the same bytes
 * on either device, so snapshots stay byte copies) and agree to f32 rounding (tests/test_mixers
 * compares them on the emulated device, HYB_CUDA_EMULATE=1). The CUDA path differs only in
 * order of operations: the forward splits a chunk into sub-chunks when the shared memory asks
 * for it (checkpoints stay at chunk starts), the UT solve works on v_new directly (no W), and
 * the backward's sums over value columns are per-slab partials added afterwards.
 */
#ifndef HYB_PLUGIN_DELTANET_IMPL_H
#define HYB_PLUGIN_DELTANET_IMPL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deltanet_core.h"
#include "plugin_util.h"
#include "hyb/common.h" /* hyb_status values only: plugins never link against libhyb */
#include "hyb/plugin.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef DN_GATED
#error "define DN_GATED (0 or 1) and DN_NAME before including deltanet_impl.h"
#endif

static const hyb_host *dn_host;
#define H_ dn_host
#define DN_SAVED_MAGIC 0x31544e44u /* "DNT1" */
#define DN_L2_EPS 1e-6f

enum {
    DN_WQ = 0,
    DN_WK,
    DN_WV,
    DN_WB,
    DN_CQ,
    DN_CK,
    DN_CV,
    DN_WG,
    DN_NORM,
    DN_WO,
    DN_WA,    /* gated only */
    DN_ALOG,  /* gated only */
    DN_DTB,   /* gated only */
    DN_NPARAM /* gated count */
};

typedef struct dn {
    int D, H, n, C, K, chunk, layer;
    /* fla options: Hv value heads (num_v_heads, a multiple of H: value head hv reads q/k head
     * hv / (Hv / H)), nv = expand_v * n the value head size, Cv = Hv * nv; neg: beta = 2 sigmoid
     * (allow_neg_eigval); gate: the silu output gate g_proj (use_gate); conv: the short
     * convolutions (use_short_conv; off: q, k, v = silu(projection), no windows in the state) */
    int Hv, nv, Cv, neg, gate, conv;
    double expand_v;
    /* parameters present: np of them; slot[logical DN_*] = declared index or -1; lg = inverse */
    int np, slot[DN_NPARAM], lg[DN_NPARAM];
    float eps;      /* o_norm epsilon */
    double eps_cfg; /* norm_eps as configured (written to HF configs) */
    /* CUDA: the kernels of deltanet.cu, fetched once from cu_be (its cache compiles them once) */
    const hyb_backend *cu_be;
    void *cu_fn[16];
} dn;

/* ---- configuration ---------------------------------------------------------------------------
 */

static const char *const DN_KEYS[] = {
    "type",     "symbol",      "n_heads",          "head_dim", "conv_size",      "chunk",
    "norm_eps", "num_v_heads", "expand_v",         "use_gate", "use_short_conv",
    "allow_neg_eigval", NULL};

static int dn_create(const hyb_model_dims *dims, const hyb_cfg_table *cfg, void **self) {
    *self = NULL;
    const int D = dims->d_model;
    if (D <= 0)
        return H_->error(HYB_ERR_ARG, DN_NAME " (layer %d): d_model must be > 0, got %d",
                         dims->layer, D);
    int64_t nh = D % 64 == 0 ? D / 64 : 0, hd = -1, K = 4, chunk = 64;
    double eps = dims->norm_eps > 0 ? dims->norm_eps : 1e-5, ev = 1.0;
    int64_t nvh = -1;
    int gate = 1, conv = 1, neg = 0;
#define CFG_ERR(key, fmt, ...)                                                                     \
    H_->cfg_error(cfg, key, DN_NAME " (layer %d): " fmt, dims->layer, __VA_ARGS__)
    if (cfg) {
        HYB_TRY(H_->cfg_check_keys(cfg, DN_KEYS));
        HYB_TRY(H_->cfg_int(cfg, "n_heads", nh, &nh));
        if (nh <= 0 || nh > 4096)
            return CFG_ERR("n_heads",
                           "n_heads must be in [1, 4096], got %lld (the default d_model / 64 "
                           "needs d_model %% 64 == 0; d_model = %d)",
                           (long long)nh, D);
        HYB_TRY(H_->cfg_int(cfg, "head_dim", -1, &hd));
        if (hd == -1) {
            if (D % nh != 0)
                return CFG_ERR("n_heads",
                               "d_model = %d is not a multiple of n_heads = %lld; set head_dim", D,
                               (long long)nh);
            hd = D / nh;
        }
        if (hd <= 0 || hd > 512)
            return CFG_ERR("head_dim", "head_dim must be in [1, 512], got %lld", (long long)hd);
        HYB_TRY(H_->cfg_int(cfg, "conv_size", 4, &K));
        if (K < 1 || K > 16)
            return CFG_ERR("conv_size", "conv_size must be in [1, 16], got %lld", (long long)K);
        HYB_TRY(H_->cfg_int(cfg, "chunk", 64, &chunk));
        if (chunk < 1 || chunk > 1024)
            return CFG_ERR("chunk", "chunk must be in [1, 1024], got %lld", (long long)chunk);
        HYB_TRY(H_->cfg_float(cfg, "norm_eps", eps, &eps));
        if (!(eps > 0) || eps > 1)
            return CFG_ERR("norm_eps", "norm_eps must be in (0, 1], got %g", eps);
        HYB_TRY(H_->cfg_int(cfg, "num_v_heads", nh, &nvh));
        if (nvh < nh || nvh > 4096 || nvh % nh != 0)
            return CFG_ERR("num_v_heads",
                           "num_v_heads must be a multiple of n_heads = %lld (at most 4096), got "
                           "%lld",
                           (long long)nh, (long long)nvh);
        HYB_TRY(H_->cfg_float(cfg, "expand_v", 1.0, &ev));
        double nvd = ev * (double)hd; /* 0.6 * 5 may land a rounding step off 3 */
        if (fabs(nvd - floor(nvd + 0.5)) < 1e-9) nvd = floor(nvd + 0.5);
        if (!(ev > 0) || nvd != floor(nvd) || nvd < 1 || nvd > 512)
            return CFG_ERR("expand_v",
                           "expand_v * head_dim must be a whole number in [1, 512], got %g * "
                           "%lld",
                           ev, (long long)hd);
        HYB_TRY(H_->cfg_bool(cfg, "use_gate", 1, &gate));
        HYB_TRY(H_->cfg_bool(cfg, "use_short_conv", 1, &conv));
        HYB_TRY(H_->cfg_bool(cfg, "allow_neg_eigval", 0, &neg));
    } else {
        if (nh == 0)
            return H_->error(HYB_ERR_ARG,
                             DN_NAME " (layer %d): no config table and d_model = %d is not a "
                                     "multiple of 64; give n_heads",
                             dims->layer, D);
        hd = 64;
    }
    if (nvh < 0) nvh = nh;
#undef CFG_ERR
    const int64_t nv = (int64_t)floor(ev * (double)hd + 0.5);
    if (nh * hd > (1 << 20) || nvh * nv > (1 << 20))
        return H_->error(HYB_ERR_ARG,
                         DN_NAME " (layer %d): n_heads * head_dim = %lld or num_v_heads * "
                                 "head_dim * expand_v = %lld is too large",
                         dims->layer, (long long)(nh * hd), (long long)(nvh * nv));
    dn *m = H_->alloc(sizeof *m);
    if (!m) return HYB_ERR_NOMEM;
    m->D = D;
    m->H = (int)nh;
    m->n = (int)hd;
    m->C = (int)(nh * hd);
    m->K = (int)K;
    m->chunk = (int)chunk;
    m->layer = dims->layer;
    m->eps = (float)eps;
    m->eps_cfg = eps;
    m->Hv = (int)nvh;
    m->nv = (int)nv;
    m->Cv = (int)(nvh * nv);
    m->expand_v = ev;
    m->gate = gate;
    m->conv = conv;
    m->neg = neg;
    m->np = 0;
    for (int i = 0; i < DN_NPARAM; i++) {
        const int on = (DN_GATED || i < DN_WA) && (gate || i != DN_WG) &&
                       (conv || (i != DN_CQ && i != DN_CK && i != DN_CV));
        m->slot[i] = on ? m->np : -1;
        if (on) m->lg[m->np++] = i;
    }
    *self = m;
    return HYB_OK;
}

static void dn_destroy(void *self) {
    H_->free(self);
}

static int dn_describe(void *self, char *buf, size_t len) {
    dn *m = self;
    int k = snprintf(buf, len, DN_NAME " H=%d hd=%d conv=%d chunk=%d eps=%g", m->H, m->n,
                     m->conv ? m->K : 0, m->chunk, (double)m->eps);
    if (k >= 0 && (size_t)k < len && (m->Hv != m->H || m->nv != m->n || !m->gate || m->neg))
        snprintf(buf + k, len - (size_t)k, " Hv=%d dv=%d gate=%d neg=%d", m->Hv, m->nv, m->gate,
                 m->neg);
    return HYB_OK;
}

static int dn_n_params(void *self) {
    return ((dn *)self)->np;
}

/* a declared-order array (params / grads of a call) as logical DN_* slots (NULL: absent) */
static void dn_logical(const dn *m, float *const *in, float **out) {
    for (int i = 0; i < DN_NPARAM; i++)
        out[i] = m->slot[i] >= 0 ? in[m->slot[i]] : NULL;
}

static const char *const DN_PARAM_NAMES[DN_NPARAM] = {
    [DN_WQ] = "q_proj.weight",   [DN_WK] = "k_proj.weight",   [DN_WV] = "v_proj.weight",
    [DN_WB] = "b_proj.weight",   [DN_CQ] = "q_conv1d.weight", [DN_CK] = "k_conv1d.weight",
    [DN_CV] = "v_conv1d.weight", [DN_WG] = "g_proj.weight",   [DN_NORM] = "o_norm.weight",
    [DN_WO] = "o_proj.weight",   [DN_WA] = "a_proj.weight",   [DN_ALOG] = "A_log",
    [DN_DTB] = "dt_bias",
};

static int dn_param_decl(void *self, int i, hyb_param_decl *d) {
    dn *m = self;
    const int64_t C = m->C, Cv = m->Cv, D = m->D, Hv = m->Hv;
    const float cb = 1.0f / sqrtf((float)m->K); /* nn.Conv1d default bound, fan_in = K */
    if (i < 0 || i >= dn_n_params(self))
        return H_->error(HYB_ERR_ARG, DN_NAME ": param_decl index %d out of range", i);
    const int li = m->lg[i];
    const char *name = DN_PARAM_NAMES[li];
    switch (li) {
    case DN_WQ:
    case DN_WK:
        hyb_pl_decl(d, name, 2, C, D, 0, HYB_INIT_NORMAL, 0.02f, 0);
        break;
    case DN_WV:
    case DN_WG:
        hyb_pl_decl(d, name, 2, Cv, D, 0, HYB_INIT_NORMAL, 0.02f, 0);
        break;
    case DN_WB:
    case DN_WA:
        hyb_pl_decl(d, name, 2, Hv, D, 0, HYB_INIT_NORMAL, 0.02f, 0);
        break;
    case DN_CQ:
    case DN_CK:
        hyb_pl_decl(d, name, 3, C, 1, m->K, HYB_INIT_UNIFORM, cb, 0);
        break;
    case DN_CV:
        hyb_pl_decl(d, name, 3, Cv, 1, m->K, HYB_INIT_UNIFORM, cb, 0);
        break;
    case DN_NORM:
        hyb_pl_decl(d, name, 1, m->nv, 0, 0, HYB_INIT_ONES, 0, 1);
        break;
    case DN_WO:
        hyb_pl_decl(d, name, 2, D, Cv, 0, HYB_INIT_NORMAL, 0.02f, 0);
        break;
    case DN_ALOG:
    case DN_DTB:
        hyb_pl_decl(d, name, 1, Hv, 0, 0, HYB_INIT_CUSTOM, 0, 1);
        break;
    }
    return HYB_OK;
}

/* Gated only: A ~ U(0, 16) (floored at 1e-4 so the log is finite), A_log = log A; dt_bias =
 * softplus^-1(dt), dt = exp(U(log 1e-3, log 1e-1)) floored at 1e-4 (fla / Mamba). */
static void dn_init_decay(const dn *m, float *A_log, float *dt_bias, uint64_t seed) {
    uint64_t st = seed ^ 0x9e3779b97f4a7c15ull;
    H_->rng_uniform(&st, A_log, (size_t)m->Hv, 0.0f, 16.0f);
    H_->rng_uniform(&st, dt_bias, (size_t)m->Hv, logf(1e-3f), logf(1e-1f));
    for (int h = 0; h < m->Hv; h++) {
        A_log[h] = logf(A_log[h] > 1e-4f ? A_log[h] : 1e-4f);
        double dt = exp((double)dt_bias[h]);
        if (dt < 1e-4) dt = 1e-4;
        dt_bias[h] = (float)(dt + log(-expm1(-dt)));
    }
}

static int dn_init_params(void *self, float *const *params, uint64_t seed) {
    const dn *m = self;
    if (DN_GATED) dn_init_decay(m, params[m->slot[DN_ALOG]], params[m->slot[DN_DTB]], seed);
    return HYB_OK;
}

/* ---- state ------------------------------------------------------------------------------------
 */

/* conv window length per channel (0 without the short convs) */
static int dn_kw(const dn *m) {
    return m->conv ? m->K - 1 : 0;
}
static size_t dn_state_floats(const dn *m) {
    return (size_t)m->Hv * m->n * m->nv + (2 * (size_t)m->C + m->Cv) * dn_kw(m);
}
static size_t dn_state_bytes(void *self, int max_ctx) {
    (void)max_ctx;
    return dn_state_floats(self) * sizeof(float);
}
static int64_t dn_state_snapshot(void *self, const hyb_backend *be, const void *state, int pos,
                                 int max_ctx, void *dst) {
    dn *m = self;
    if (pos < 0 || pos > max_ctx)
        return H_->error(HYB_ERR_ARG,
                         DN_NAME " (layer %d): snapshot of %d tokens from a state of %d", m->layer,
                         pos, max_ctx);
    size_t nb = dn_state_bytes(m, max_ctx);
    if (dst) {
        int rc = be->copy(be, dst, state, nb);
        if (rc != HYB_OK) return rc;
    }
    return (int64_t)nb;
}
static int dn_state_restore(void *self, const hyb_backend *be, void *state, const void *src,
                            int pos, int max_ctx) {
    dn *m = self;
    if (pos < 0 || pos > max_ctx)
        return H_->error(HYB_ERR_ARG,
                         DN_NAME " (layer %d): restore of %d tokens into a state of %d", m->layer,
                         pos, max_ctx);
    return be->copy(be, state, src, dn_state_bytes(m, max_ctx));
}

/* ---- shared pieces of forward / backward / decode ---------------------------------------------
 */

static int dn_linear(const hyb_backend *be, const float *X, const float *W, float *Y, int rows,
                     int in, int out) {
    return be->sgemm(be, 0, 1, rows, out, in, 1.0f, X, in, W, in, 0.0f, Y, out);
}

/* Causal depthwise conv of one sequence. xr: [T, C] raw inputs; w: [C, K]; win: [C, K-1] the raw
 * inputs before token 0 (oldest first) or NULL (zeros). out [T, C] = conv (pre-activation). */
static void dn_conv(const float *xr, const float *w, const float *win, float *out, int T, int C,
                    int K) {
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            float s = 0;
            for (int j = 0; j < K; j++) {
                int tau = t - (K - 1) + j;
                float xv = tau >= 0 ? xr[(size_t)tau * C + c]
                                    : (win ? win[(size_t)c * (K - 1) + (K - 1) + tau] : 0.0f);
                s += w[(size_t)c * K + j] * xv;
            }
            out[(size_t)t * C + c] = s;
        }
}

/* New window after T raw inputs xr [T, C] following win (NULL = zeros); written to nw. */
static void dn_window_update(const float *xr, const float *win, float *nw, int T, int C, int K) {
    const int W = K - 1;
    for (int c = 0; c < C; c++)
        for (int i = 0; i < W; i++) {
            int tau = T - W + i;
            nw[(size_t)c * W + i] =
                tau >= 0 ? xr[(size_t)tau * C + c] : (win ? win[(size_t)c * W + W + tau] : 0.0f);
        }
}

/* x [rows, C]: silu in place, then (l2) per-head normalisation times `scale` when l2. */
static void dn_act_norm(float *x, size_t rows, int H, int n, int l2, float scale) {
    for (size_t r = 0; r < rows; r++)
        for (int h = 0; h < H; h++) {
            float *p = x + r * (size_t)H * n + (size_t)h * n;
            for (int i = 0; i < n; i++)
                p[i] = p[i] * hyb_pl_sigmoid(p[i]);
            if (l2) {
                float rs = scale / sqrtf(hyb_pl_dot(p, p, n) + DN_L2_EPS);
                for (int i = 0; i < n; i++)
                    p[i] *= rs;
            }
        }
}

/* beta [rows, Hv] = sigmoid(Bl) (allow_neg_eigval: 2 sigmoid(Bl)); gated:
 * g = -exp(A_log) softplus(Al + dt_bias) */
static void dn_beta_gate(const dn *m, const float *Bl, const float *Al, const float *const *P,
                         float *beta, float *g, size_t rows) {
    const int Hv = m->Hv;
    for (size_t i = 0; i < rows * Hv; i++)
        beta[i] = hyb_pl_sigmoid(Bl[i]);
    if (m->neg)
        for (size_t i = 0; i < rows * Hv; i++)
            beta[i] *= 2.0f;
    if (DN_GATED)
        for (size_t r = 0; r < rows; r++)
            for (int h = 0; h < Hv; h++) {
                size_t i = r * Hv + h;
                g[i] = -expf(P[DN_ALOG][h]) * hyb_pl_softplus(Al[i] + P[DN_DTB][h]);
            }
}

/* z [rows, Cv] = RMSNorm_head(O) * w * silu(Gp) (use_gate off: no silu(Gp) factor) */
static void dn_norm_gate(const dn *m, const float *O, const float *Gp, const float *w, float *Z,
                         size_t rows) {
    const int n = m->nv;
    for (size_t r = 0; r < rows; r++)
        for (int h = 0; h < m->Hv; h++) {
            size_t off = r * m->Cv + (size_t)h * n;
            const float *o = O + off;
            float rs = 1.0f / sqrtf(hyb_pl_dot(o, o, n) / n + m->eps);
            if (m->gate) {
                const float *gp = Gp + off;
                for (int i = 0; i < n; i++)
                    Z[off + i] = o[i] * rs * w[i] * gp[i] * hyb_pl_sigmoid(gp[i]);
            } else {
                for (int i = 0; i < n; i++)
                    Z[off + i] = o[i] * rs * w[i];
            }
        }
}

static size_t dn_n_chunks(const dn *m, int T) {
    return (size_t)((T + m->chunk - 1) / m->chunk);
}

/* the saved block's float layout: Qr Kr [BT, C], Vr [BT, Cv], Gp [BT, Cv] (use_gate), Bl [BT, Hv],
 * Al [BT, Hv] (gated), O [BT, Cv], CHK [B, Hv, nch, n, nv] */
typedef struct dn_saved_ptrs {
    float *Qr, *Kr, *Vr, *Gp, *Bl, *Al, *O, *CHK;
} dn_saved_ptrs;
static dn_saved_ptrs dn_saved_layout(const dn *m, float *base, size_t BT) {
    dn_saved_ptrs p;
    p.Qr = base;
    p.Kr = p.Qr + BT * m->C;
    p.Vr = p.Kr + BT * m->C;
    p.Gp = p.Vr + BT * m->Cv;
    p.Bl = p.Gp + (m->gate ? BT * m->Cv : 0);
    p.Al = p.Bl + BT * m->Hv;
    p.O = p.Al + (DN_GATED ? BT * m->Hv : 0);
    p.CHK = p.O + BT * m->Cv;
    return p;
}

static size_t dn_saved_bytes(void *self, int B, int T) {
    dn *m = self;
    size_t BT = (size_t)B * T;
    size_t fl = BT * (2 * (size_t)m->C + (m->gate ? 3 : 2) * (size_t)m->Cv +
                      (DN_GATED ? 2 : 1) * (size_t)m->Hv) +
                (size_t)B * m->Hv * dn_n_chunks(m, T) * m->n * m->nv;
    return sizeof(hyb_pl_saved_hdr) + fl * sizeof(float);
}

/* ---- forward / prefill --------------------------------------------------------------------------
 * Rows of all [*, C] / [*, Cv] / [*, Hv] buffers are b*T + t. With states, sequence b continues
 * after pos[b] tokens (pos 0: the state's old contents are ignored). T == 1 steps use the
 * recurrent form (that is what decode calls), longer runs the chunked form. P: logical slots. */

static int dn_run(const hyb_backend *be, dn *m, int B, int T, const float *x, float *y,
                  const float *const *P, void *saved, void *const *states, const int32_t *pos,
                  int recurrent) {
    int rc = HYB_OK;
    const int D = m->D, H = m->H, Hv = m->Hv, n = m->n, nv = m->nv, C = m->C, Cv = m->Cv,
              K = m->K, Kw = dn_kw(m), grp = m->Hv / m->H;
    const size_t BT = (size_t)B * T, nn = (size_t)n * nv, nch = dn_n_chunks(m, T);
    void *tmp;
    float *base =
        hyb_pl_saved_begin(saved, &tmp, be, dn_saved_bytes(m, B, T), DN_SAVED_MAGIC, B, T);
    if (!base) return HYB_ERR_NOMEM;
    const dn_saved_ptrs sp = dn_saved_layout(m, base, BT);
    float *Qr = sp.Qr, *Kr = sp.Kr, *Vr = sp.Vr, *Gp = sp.Gp, *Bl = sp.Bl, *Al = sp.Al, *O = sp.O,
          *CHK = sp.CHK;
    const int Cs[3] = {C, C, Cv};
    const size_t woff[3] = {0, (size_t)C * Kw, 2 * (size_t)C * Kw}; /* window offsets */

    const int nthr = hyb_pl_max_threads(), c = recurrent ? 1 : (m->chunk < T ? m->chunk : T);
    const size_t scr_t = dn_chunked_scratch(n, nv, c) + 2 * (size_t)nv;
    const size_t nwork = BT * (2 * (size_t)C + (Cv > C ? Cv : C)) + BT * Cv + 2 * BT * Hv +
                         (size_t)nthr * scr_t + (2 * (size_t)C + Cv) * Kw +
                         (states ? 0 : (size_t)B * Hv * nn);
    float *work = be->alloc(be, nwork * sizeof(float));
    if (!work) {
        be->free(be, tmp);
        return HYB_ERR_NOMEM;
    }
    /* Qn doubles as Z [BT, Cv] at the end: max(C, Cv) columns */
    float *Qn = work, *Kn = Qn + BT * (Cv > C ? Cv : C), *Vn = Kn + BT * C, *beta = Vn + BT * Cv,
          *g = beta + BT * Hv, *scr = g + BT * Hv, *nwin = scr + (size_t)nthr * scr_t,
          *Sall = nwin + (2 * (size_t)C + Cv) * Kw;

    if (rc == HYB_OK) rc = dn_linear(be, x, P[DN_WQ], Qr, (int)BT, D, C);
    if (rc == HYB_OK) rc = dn_linear(be, x, P[DN_WK], Kr, (int)BT, D, C);
    if (rc == HYB_OK) rc = dn_linear(be, x, P[DN_WV], Vr, (int)BT, D, Cv);
    if (m->gate && rc == HYB_OK) rc = dn_linear(be, x, P[DN_WG], Gp, (int)BT, D, Cv);
    if (rc == HYB_OK) rc = dn_linear(be, x, P[DN_WB], Bl, (int)BT, D, Hv);
    if (DN_GATED && rc == HYB_OK) rc = dn_linear(be, x, P[DN_WA], Al, (int)BT, D, Hv);

    const float *raw[3] = {Qr, Kr, Vr};
    float *cv[3] = {Qn, Kn, Vn};
    for (int b = 0; b < B; b++) {
        const int p0 = pos ? pos[b] : 0;
        float *win = states && p0 > 0 ? (float *)states[b] + Hv * nn : NULL;
        for (int s = 0; s < 3; s++) {
            const int Cc = Cs[s];
            if (!m->conv) { /* no short conv: the projection itself goes to silu */
                memcpy(cv[s] + (size_t)b * T * Cc, raw[s] + (size_t)b * T * Cc,
                       (size_t)T * Cc * sizeof(float));
                continue;
            }
            const float *ws = win ? win + woff[s] : NULL;
            dn_conv(raw[s] + (size_t)b * T * Cc, P[DN_CQ + s], ws, cv[s] + (size_t)b * T * Cc, T,
                    Cc, K);
            if (states) { /* after the conv read the old window */
                dn_window_update(raw[s] + (size_t)b * T * Cc, ws, nwin + woff[s], T, Cc, K);
                memcpy((float *)states[b] + Hv * nn + woff[s], nwin + woff[s],
                       (size_t)Cc * Kw * sizeof(float));
            }
        }
    }
    const float qs = 1.0f / sqrtf((float)n);
    dn_act_norm(Qn, BT, H, n, 1, qs);
    dn_act_norm(Kn, BT, H, n, 1, 1.0f);
    dn_act_norm(Vn, BT, Hv, nv, 0, 1.0f);
    dn_beta_gate(m, Bl, Al, P, beta, g, BT);

    const int par = (double)B * Hv * T * nn > 1e5;
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int bh = 0; bh < B * Hv; bh++) {
        const int b = bh / Hv, hv = bh % Hv, h = hv / grp;
        const int p0 = pos ? pos[b] : 0;
        float *sc = scr + (size_t)hyb_pl_thread_id() * scr_t,
              *tmp2 = sc + dn_chunked_scratch(n, nv, c);
        /* S lives in the state when there is one, else in Sall */
        float *Sp = states ? (float *)states[b] + (size_t)hv * nn : Sall + (size_t)bh * nn;
        if (!states || p0 == 0) memset(Sp, 0, nn * sizeof(float));
        const size_t r0 = (size_t)b * T, ho = (size_t)h * n, vo = (size_t)hv * nv;
        const float *gp = DN_GATED ? g + r0 * Hv + hv : NULL;
        float *chk = saved ? CHK + ((size_t)b * Hv + hv) * nch * nn : NULL;
        if (recurrent) {
            if (chk) memcpy(chk, Sp, nn * sizeof(float));
            dn_recurrent(n, nv, T, Qn + r0 * C + ho, Kn + r0 * C + ho, C, Vn + r0 * Cv + vo, Cv,
                         beta + r0 * Hv + hv, gp, Hv, Sp, O + r0 * Cv + vo, Cv, tmp2);
        } else {
            dn_chunked(n, nv, T, c, Qn + r0 * C + ho, Kn + r0 * C + ho, C, Vn + r0 * Cv + vo, Cv,
                       beta + r0 * Hv + hv, gp, Hv, Sp, O + r0 * Cv + vo, Cv, chk, sc);
        }
    }

    dn_norm_gate(m, O, Gp, P[DN_NORM], Qn, BT); /* Z into Qn (no longer needed) */
    if (rc == HYB_OK) rc = dn_linear(be, Qn, P[DN_WO], y, (int)BT, Cv, D);
    be->free(be, work);
    be->free(be, tmp);
    return rc;
}

/* the argument checks of forward (every device) */
static int dn_check_fwd(const dn *m, const hyb_mixer_fwd *a) {
    if (a->B <= 0 || a->T <= 0)
        return H_->error(HYB_ERR_ARG, DN_NAME " (layer %d): forward with B = %d, T = %d", m->layer,
                         a->B, a->T);
    for (int b = 0; b < a->B; b++) {
        int p0 = a->pos ? a->pos[b] : 0;
        if (p0 < 0 || (p0 > 0 && !a->states))
            return H_->error(HYB_ERR_ARG, DN_NAME " (layer %d): forward with pos[%d] = %d %s",
                             m->layer, b, p0,
                             p0 < 0 ? "(negative)" : "but no states to continue from");
        if (a->states && (int64_t)p0 + a->T > a->max_ctx)
            return H_->error(HYB_ERR_ARG,
                             DN_NAME " (layer %d): sequence %d: pos %d + T %d exceeds the "
                                     "context max_ctx = %d",
                             m->layer, b, p0, a->T, a->max_ctx);
        if (p0 > 0 && a->saved)
            return H_->error(HYB_ERR_UNSUPPORTED,
                             DN_NAME
                             " (layer %d): backward through a continued prefill "
                             "(pos[%d] = %d > 0) is not supported; train on whole sequences",
                             m->layer, b, p0);
    }
    return HYB_OK;
}

static int dn_forward(void *self, const hyb_mixer_fwd *a) {
    dn *m = self;
    HYB_TRY(dn_check_fwd(m, a));
    float *P[DN_NPARAM];
    dn_logical(m, (float *const *)a->params, P);
    return dn_run(a->be, m, a->B, a->T, a->x, a->y, (const float *const *)P, a->saved, a->states,
                  a->pos, 0);
}

/* the argument checks of decode (every device) */
static int dn_check_dec(const dn *m, const hyb_mixer_dec *a) {
    if (a->n <= 0)
        return H_->error(HYB_ERR_ARG, DN_NAME " (layer %d): decode with n = %d", m->layer, a->n);
    for (int i = 0; i < a->n; i++)
        if (a->pos[i] < 0 || a->pos[i] >= a->max_ctx)
            return H_->error(HYB_ERR_ARG,
                             DN_NAME " (layer %d): decode sequence %d at pos %d: the context "
                                     "holds max_ctx = %d tokens",
                             m->layer, i, a->pos[i], a->max_ctx);
    return HYB_OK;
}

static int dn_decode(void *self, const hyb_mixer_dec *a) {
    dn *m = self;
    HYB_TRY(dn_check_dec(m, a));
    float *P[DN_NPARAM];
    dn_logical(m, (float *const *)a->params, P);
    /* n sequences of one token each: B = n, T = 1, recurrent step */
    return dn_run(a->be, m, a->n, 1, a->x, a->y, (const float *const *)P, NULL, a->states, a->pos,
                  1);
}

/* ---- backward ---------------------------------------------------------------------------------
 */

static int dn_backward(void *self, const hyb_mixer_bwd *a) {
    dn *m = self;
    const hyb_backend *be = a->be;
    int rc = HYB_OK;
    const int B = a->B, T = a->T, D = m->D, H = m->H, Hv = m->Hv, n = m->n, nv = m->nv, C = m->C,
              Cv = m->Cv, K = m->K, grp = m->Hv / m->H;
    const float *base = hyb_pl_saved_data(a->saved, DN_SAVED_MAGIC, B, T);
    if (!base)
        return H_->error(HYB_ERR_ARG,
                         DN_NAME " (layer %d): backward [B=%d, T=%d] without a matching "
                                 "saved forward",
                         m->layer, B, T);
    const size_t BT = (size_t)B * T, nn = (size_t)n * nv, nch = dn_n_chunks(m, T);
    const dn_saved_ptrs sp = dn_saved_layout(m, (float *)base, BT);
    const float *Qr = sp.Qr, *Kr = sp.Kr, *Vr = sp.Vr, *Gp = sp.Gp, *Bl = sp.Bl, *Al = sp.Al,
                *O = sp.O, *CHK = sp.CHK;
    float *P_[DN_NPARAM], *G[DN_NPARAM];
    dn_logical(m, (float *const *)a->params, P_);
    dn_logical(m, a->grads, G);
    const float *const *P = (const float *const *)P_;
    const int c = m->chunk < T ? m->chunk : T, nthr = hyb_pl_max_threads();
    const size_t scr_t = dn_backward_scratch(n, nv, c);
    const int Cs[3] = {C, C, Cv};
    /* per row: Qc Kc Qn Kn (C), Vc Vn dO dV (Cv), Z/dZ/draw and dGp (max(C, Cv)), dQ dK per value
     * head (Hv n; with GVA the q/k head sums go to dQs dKs (C)); beta g dbeta dg (Hv) */
    const size_t Cm = Cv > C ? Cv : C, Cq = (size_t)Hv * n;
    const size_t nwork = BT * (4 * (size_t)C + 4 * (size_t)Cv + 2 * Cm + 2 * Cq +
                               (grp > 1 ? 2 * (size_t)C : 0) + 4 * (size_t)Hv) +
                         (size_t)nthr * scr_t;
    float *work = be->alloc(be, nwork * sizeof(float));
    if (!work) return HYB_ERR_NOMEM;
    /* the gradient buffers accumulate (+=): be->alloc memory is not zeroed */
    rc = be->memset0(be, work, nwork * sizeof(float));
    float *Qc = work, *Kc = Qc + BT * C, *Qn = Kc + BT * C, *Kn = Qn + BT * C, *Vc = Kn + BT * C,
          *Vn = Vc + BT * Cv, *dO = Vn + BT * Cv, *dV = dO + BT * Cv, *Z = dV + BT * Cv,
          *dGp = Z + BT * Cm, *dQ = dGp + BT * Cm, *dK = dQ + BT * Cq, *dQs = dK + BT * Cq,
          *dKs = dQs + (grp > 1 ? BT * C : 0), *beta = dKs + (grp > 1 ? BT * C : 0),
          *g = beta + BT * Hv, *dbeta = g + BT * Hv, *dg = dbeta + BT * Hv, *scr = dg + BT * Hv;

    /* recompute the activations */
    const float *raw[3] = {Qr, Kr, Vr};
    float *pre[3] = {Qc, Kc, Vc}, *post[3] = {Qn, Kn, Vn};
    for (int s = 0; s < 3; s++) {
        const int Cc = Cs[s];
        if (m->conv)
            for (int b = 0; b < B; b++)
                dn_conv(raw[s] + (size_t)b * T * Cc, P[DN_CQ + s], NULL,
                        pre[s] + (size_t)b * T * Cc, T, Cc, K);
        else
            memcpy(pre[s], raw[s], BT * Cc * sizeof(float));
        memcpy(post[s], pre[s], BT * Cc * sizeof(float));
    }
    const float qs = 1.0f / sqrtf((float)n);
    dn_act_norm(Qn, BT, H, n, 1, qs);
    dn_act_norm(Kn, BT, H, n, 1, 1.0f);
    dn_act_norm(Vn, BT, Hv, nv, 0, 1.0f);
    dn_beta_gate(m, Bl, Al, P, beta, g, BT);

    /* y = Z Wo^T */
    dn_norm_gate(m, O, Gp, P[DN_NORM], Z, BT);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, D, Cv, (int)BT, 1.0f, a->dy, D, Z, Cv, 1.0f, G[DN_WO], Cv);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, Cv, D, 1.0f, a->dy, D, P[DN_WO], Cv, 0.0f, Z,
                       Cv); /* Z := dZ */

    /* z = o r w silu(gp) (or o r w): dGp, dw, dO */
    const float *w = P[DN_NORM];
    for (size_t r = 0; r < BT; r++)
        for (int h = 0; h < Hv; h++) {
            const size_t off = r * Cv + (size_t)h * nv;
            const float *o = O + off, *dz = Z + off;
            const float rs = 1.0f / sqrtf(hyb_pl_dot(o, o, nv) / nv + m->eps);
            float dot_ = 0;
            for (int i = 0; i < nv; i++) {
                float si = 1.0f;
                if (m->gate) {
                    const float gpi = Gp[off + i], sg = hyb_pl_sigmoid(gpi);
                    si = gpi * sg;
                    const float nvv = o[i] * rs * w[i];
                    dGp[off + i] = dz[i] * nvv * sg * (1.0f + gpi * (1.0f - sg));
                }
                const float dn_ = dz[i] * si; /* dL/d(normed o * w) */
                G[DN_NORM][i] += dn_ * o[i] * rs;
                dO[off + i] = dn_ * w[i];
                dot_ += dO[off + i] * o[i];
            }
            const float k3 = dot_ * rs * rs * rs / nv;
            for (int i = 0; i < nv; i++)
                dO[off + i] = rs * dO[off + i] - k3 * o[i];
        }
    if (m->gate && rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, Cv, D, (int)BT, 1.0f, dGp, Cv, a->x, D, 1.0f, G[DN_WG], D);
    if (rc == HYB_OK) {
        if (m->gate)
            rc = be->sgemm(be, 0, 0, (int)BT, D, Cv, 1.0f, dGp, Cv, P[DN_WG], D, 0.0f, a->dx, D);
        else
            rc = be->memset0(be, a->dx, BT * D * sizeof(float));
    }

    /* the recurrence: dq, dk per value head (row stride Hv n) */
    const int par = (double)B * Hv * T * nn > 1e5;
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int bh = 0; bh < B * Hv; bh++) {
        const int b = bh / Hv, hv = bh % Hv, h = hv / grp;
        const size_t r0 = (size_t)b * T, ho = (size_t)h * n, vo = (size_t)hv * nv;
        dn_core_backward(n, nv, T, c, Qn + r0 * C + ho, Kn + r0 * C + ho, C, Vn + r0 * Cv + vo, Cv,
                         beta + r0 * Hv + hv, DN_GATED ? g + r0 * Hv + hv : NULL, Hv,
                         dO + r0 * Cv + vo, Cv, CHK + ((size_t)b * Hv + hv) * nch * nn,
                         dQ + r0 * Cq + (size_t)hv * n, dK + r0 * Cq + (size_t)hv * n, Cq,
                         dV + r0 * Cv + vo, dbeta + r0 * Hv + hv, dg + r0 * Hv + hv,
                         scr + (size_t)hyb_pl_thread_id() * scr_t);
    }
    if (grp > 1) { /* GVA: the value heads of a group share their q/k head */
        for (size_t r = 0; r < BT; r++)
            for (int h = 0; h < H; h++)
                for (int j = 0; j < grp; j++)
                    for (int i = 0; i < n; i++) {
                        const size_t src = r * Cq + ((size_t)h * grp + j) * n + i;
                        dQs[r * C + (size_t)h * n + i] += dQ[src];
                        dKs[r * C + (size_t)h * n + i] += dK[src];
                    }
        dQ = dQs;
        dK = dKs;
    }

    /* beta = sigmoid(Bl) (x 2 with allow_neg_eigval); g = -exp(A_log) softplus(Al + dt_bias) */
    if (m->neg)
        for (size_t i = 0; i < BT * Hv; i++) { /* beta = 2 s: dBl = dbeta 2 s (1 - s) */
            const float s = 0.5f * beta[i];
            dbeta[i] *= beta[i] * (1.0f - s);
        }
    else
        for (size_t i = 0; i < BT * Hv; i++)
            dbeta[i] *= beta[i] * (1.0f - beta[i]);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, Hv, D, (int)BT, 1.0f, dbeta, Hv, a->x, D, 1.0f, G[DN_WB], D);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, D, Hv, 1.0f, dbeta, Hv, P[DN_WB], D, 1.0f, a->dx, D);
    if (DN_GATED) {
        for (size_t r = 0; r < BT; r++)
            for (int h = 0; h < Hv; h++) {
                const size_t i = r * Hv + h;
                const float eA = expf(P[DN_ALOG][h]), zz = Al[i] + P[DN_DTB][h];
                G[DN_ALOG][h] += dg[i] * g[i];
                const float da = -dg[i] * eA * hyb_pl_sigmoid(zz);
                G[DN_DTB][h] += da;
                dg[i] = da;
            }
        if (rc == HYB_OK)
            rc = be->sgemm(be, 1, 0, Hv, D, (int)BT, 1.0f, dg, Hv, a->x, D, 1.0f, G[DN_WA], D);
        if (rc == HYB_OK)
            rc = be->sgemm(be, 0, 0, (int)BT, D, Hv, 1.0f, dg, Hv, P[DN_WA], D, 1.0f, a->dx, D);
    }

    /* l2 norm (q, k), silu, conv, projection backward; dQ/dK/dV become d(raw) in place */
    float *dpost[3] = {dQ, dK, dV};
    const int Hs[3] = {H, H, Hv}, ns[3] = {n, n, nv};
    for (int s = 0; s < 3; s++) {
        float *d = dpost[s];
        const float *pc = pre[s];
        const int Cc = Cs[s], hn = ns[s];
        for (size_t r = 0; r < BT; r++)
            for (int h = 0; h < Hs[s]; h++) {
                const size_t off = r * Cc + (size_t)h * hn;
                float *dd = d + off;
                const float *p = pc + off;
                if (s < 2) { /* y = scale * a / sqrt(|a|^2 + eps), a = silu(p) */
                    const float sc = s == 0 ? qs : 1.0f;
                    float aa = 0, ad = 0, av[512];
                    for (int i = 0; i < hn; i++) {
                        av[i] = p[i] * hyb_pl_sigmoid(p[i]);
                        aa += av[i] * av[i];
                        ad += av[i] * dd[i];
                    }
                    const float rr = 1.0f / sqrtf(aa + DN_L2_EPS);
                    for (int i = 0; i < hn; i++)
                        dd[i] = sc * (rr * dd[i] - av[i] * rr * rr * rr * ad);
                }
                for (int i = 0; i < hn; i++) {
                    const float sg = hyb_pl_sigmoid(p[i]);
                    dd[i] *= sg * (1.0f + p[i] * (1.0f - sg));
                }
            }
        /* conv: pre[t, c] = sum_j w[c, j] raw[t-K+1+j, c]; without it d(raw) = d(pre) */
        float *draw = d;
        if (m->conv) {
            float *dw = G[DN_CQ + s];
            const float *wc = P[DN_CQ + s], *xr = raw[s];
            draw = Z; /* dZ no longer needed */
            for (int b = 0; b < B; b++) {
                const size_t r0 = (size_t)b * T;
                for (int t = 0; t < T; t++)
                    for (int ch = 0; ch < Cc; ch++) {
                        float acc = 0;
                        for (int j = 0; j < K; j++) {
                            int to = t + (K - 1) - j; /* output that reads raw[t] through tap j */
                            if (to < T) acc += d[(r0 + to) * Cc + ch] * wc[(size_t)ch * K + j];
                            int ti = t - (K - 1) + j;
                            if (ti >= 0)
                                dw[(size_t)ch * K + j] +=
                                    d[(r0 + t) * Cc + ch] * xr[(r0 + ti) * Cc + ch];
                        }
                        draw[(r0 + t) * Cc + ch] = acc;
                    }
            }
        }
        if (rc == HYB_OK)
            rc = be->sgemm(be, 1, 0, Cc, D, (int)BT, 1.0f, draw, Cc, a->x, D, 1.0f, G[DN_WQ + s],
                           D);
        if (rc == HYB_OK)
            rc = be->sgemm(be, 0, 0, (int)BT, D, Cc, 1.0f, draw, Cc, P[DN_WQ + s], D, 1.0f, a->dx,
                           D);
    }
    be->free(be, work);
    return rc;
}

/* ---- CUDA -------------------------------------------------------------------------------------
 * kernels[HYB_DEV_CUDA]: the same layer on the device. Every pointer of the argument blocks (x, y,
 * params, grads, saved, each states[b]) is device memory: the host code below only does pointer
 * arithmetic on them; GEMMs go through be->sgemm exactly as on the CPU, everything else is a
 * kernel of plugins/common/deltanet.cu (its header comment has the design), launched through
 * be->kernel / be->launch on the backend's stream. Host memory crosses only by be->upload /
 * be->download of the saved block's header (training); the states' pointers and whether each
 * continues (states and pos are host arrays) go to the kernels by value (dn_cu_seqs, up to 64
 * sequences a launch), so a prefill or decode step never waits for a copy. The saved block and
 * the state have the CPU's layouts. Shapes that no launch can cover (shared memory or grid
 * limits) are HYB_ERR_UNSUPPORTED naming the mixer, the op and the shape. */

#include "hyb_plugin_cu.h" /* hyb_cu_deltanet_cu: plugins/common/deltanet.cu, embedded */

enum {
    DN_K_CONV_ACT = 0,
    DN_K_WINDOW,
    DN_K_NORM_GATE,
    DN_K_CHUNK_FWD,
    DN_K_CHUNK_BWD,
    DN_K_NORM_GATE_BWD,
    DN_K_COLSUM,
    DN_K_BETA_GATE_BWD,
    DN_K_ACT_BWD,
    DN_K_CONV_BWD_X,
    DN_K_CONV_BWD_W,
    DN_K_COUNT
};
static const char *const DN_KNAMES[DN_K_COUNT] = {
    "dn_conv_act",      "dn_window", "dn_norm_gate",     "dn_chunk_fwd",
    "dn_chunk_bwd",     "dn_norm_gate_bwd", "dn_colsum", "dn_beta_gate_bwd",
    "dn_act_bwd",       "dn_conv_bwd_x",    "dn_conv_bwd_w",
};
#define DN_CU_SMEM 49152                   /* shared memory per block without an opt-in */
#define DN_CU_SEQS 64 /* sequences per launch with states: DN_SEQS of deltanet.cu */
/* struct dn_seqs of deltanet.cu (a kernel argument by value): the same layout */
typedef struct dn_cu_seqs {
    uint64_t S[DN_CU_SEQS], W[DN_CU_SEQS];
    int32_t cont[DN_CU_SEQS];
    int32_t b0, nb;
} dn_cu_seqs;
/* recomputed states of one backward wave, bytes: at head_dim 128, chunk 64 (4.3 MB per (sequence,
 * head)) 60 pairs = 240 blocks, enough to fill an H100 */
#define DN_CU_SCRATCH ((size_t)256 << 20)

static int dn_cu_launch(dn *m, const hyb_backend *be, int k, unsigned gx, unsigned gy, unsigned gz,
                        unsigned bx, unsigned smem, void **args) {
    if (m->cu_be != be) {
        memset(m->cu_fn, 0, sizeof m->cu_fn);
        m->cu_be = be;
    }
    if (!m->cu_fn[k])
        HYB_TRY(be->kernel(be, "deltanet.cu", hyb_cu_deltanet_cu, DN_KNAMES[k], NULL, 0,
                           &m->cu_fn[k]));
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, 1, 1};
    return be->launch(be, m->cu_fn[k], DN_KNAMES[k], grid, block, smem, args);
}

/* dst[c] += sum_r src[r cols + c] (src [rows, cols]): partial sums over row blocks into tmp
 * (>= 64 cols floats), then their sum; deterministic */
static int dn_cu_colsum(dn *m, const hyb_backend *be, const float *src, float *dst,
                        long long rows, int cols, float *tmp) {
    long long rpb = (rows + 63) / 64;
    if (rpb < 64) rpb = 64;
    const unsigned parts = (unsigned)((rows + rpb - 1) / rpb), gx = (unsigned)((cols + 127) / 128);
    int acc = 0;
    if (parts <= 1) {
        acc = 1;
        void *args[] = {(void *)&src, &dst, &rows, &cols, &rows, &acc};
        return dn_cu_launch(m, be, DN_K_COLSUM, gx, 1, 1, 128, 0, args);
    }
    void *a1[] = {(void *)&src, &tmp, &rows, &cols, &rpb, &acc};
    HYB_TRY(dn_cu_launch(m, be, DN_K_COLSUM, gx, parts, 1, 128, 0, a1));
    long long np = parts;
    acc = 1;
    void *a2[] = {&tmp, &dst, &np, &cols, &np, &acc};
    return dn_cu_launch(m, be, DN_K_COLSUM, gx, 1, 1, 128, 0, a2);
}

/* threads for a per-head kernel (a multiple of 32 covering n, at most 128) */
static unsigned dn_cu_head_threads(int n) {
    unsigned t = (unsigned)((n + 31) / 32 * 32);
    return t > 128 ? 128 : t;
}
/* blocks of 128 for a grid-stride loop over `count` elements */
static unsigned dn_cu_blocks(int64_t count) {
    int64_t g = (count + 127) / 128;
    return (unsigned)(g < 1 ? 1 : g > 1024 ? 1024 : g);
}

/* The launch shape of the recurrence kernels: slab width bv (value columns per block), threads,
 * forward sub-chunk cc; HYB_ERR_UNSUPPORTED when none fits. */
typedef struct dn_cu_shape {
    int bv, nslab, nt, cc, cmax;
    unsigned smem_f, smem_b;
} dn_cu_shape;

static size_t dn_cu_smem_fwd(int n, int bv, int cc) {
    return ((size_t)n * bv + 2 * (size_t)cc * n + 3 * (size_t)cc * bv + 2 * (size_t)cc * cc +
            4 * (size_t)cc) * sizeof(float);
}

/* the fla options the CUDA kernels do not have yet: HYB_ERR_UNSUPPORTED naming the first one set
 * (the CPU kernels have them all; allow_neg_eigval (bscale = 2 in the kernels), use_gate = false
 * (Gp NULL) and use_short_conv = false (conv kernels with K = 1, NULL weights) run on both) */
static int dn_cu_options(const dn *m, const char *op) {
    const char *opt = m->Hv != m->H    ? "num_v_heads != n_heads"
                      : m->nv != m->n  ? "expand_v != 1"
                                       : NULL;
    if (!opt) return HYB_OK;
    return H_->error(HYB_ERR_UNSUPPORTED,
                     DN_NAME " (layer %d): cuda %s: the option %s has no CUDA kernel yet (the "
                             "cpu device has it)",
                     m->layer, op, opt);
}

static int dn_cu_plan(const dn *m, const char *op, int B, int T, dn_cu_shape *s) {
    HYB_TRY(dn_cu_options(m, op));
    const int n = m->n;
    int bv = n / 2;
    if (bv > 32) bv = 32;
    if (bv > 4096 / n) bv = 4096 / n;
    if (bv < 1) bv = 1;
    s->bv = bv;
    s->nslab = (n + bv - 1) / bv;
    int nt = (n * bv / 4 + 31) / 32 * 32;
    s->nt = nt < 32 ? 32 : nt > 128 ? 128 : nt;
    s->cmax = m->chunk < T ? m->chunk : T;
    s->cc = 0;
    for (int cc = s->cmax; cc >= 1; cc--)
        if (dn_cu_smem_fwd(n, bv, cc) <= DN_CU_SMEM) {
            s->cc = cc;
            break;
        }
    s->smem_f = s->cc ? (unsigned)dn_cu_smem_fwd(n, bv, s->cc) : 0;
    const size_t sb = ((size_t)n * bv + 2 * (size_t)n + 6 * (size_t)bv) * sizeof(float) + 128;
    s->smem_b = (unsigned)sb;
    const char *why = NULL;
    if (!s->cc || sb > DN_CU_SMEM)
        why = "the state slab needs more than 48 KiB of shared memory";
    else if ((int64_t)B * T > 0x7fffffff || (int64_t)B * m->H > 0x7fffffff)
        why = "more rows than a grid holds";
    else if (m->H > 65535 || s->nslab > 65535)
        why = "more heads than a grid holds";
    if (why)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         DN_NAME " (layer %d): cuda %s: no kernel for B = %d, T = %d, n_heads %d, "
                                 "head_dim %d, chunk %d: %s",
                         m->layer, op, B, T, m->H, m->n, m->chunk, why);
    return HYB_OK;
}

/* forward / prefill / decode on the device: dn_run's steps (T == 1 is the recurrent step: the
 * chunked kernel with one-token chunks) */
static int dn_cu_run(const hyb_backend *be, dn *m, int B, int T, const float *x, float *y,
                     const float *const *P, void *saved, void *const *states, const int32_t *pos,
                     const char *op) {
    dn_cu_shape sh;
    HYB_TRY(dn_cu_plan(m, op, B, T, &sh));
    int rc = HYB_OK;
    float bscale = m->neg ? 2.0f : 1.0f; /* beta = bscale sigmoid(Bl) */
    /* no short conv: the conv kernels with K = 1 and NULL weights are the identity */
    const int D = m->D, H = m->H, n = m->n, C = m->C, K = m->conv ? m->K : 1, chunk = m->chunk;
    const int nch = (int)dn_n_chunks(m, T);
    const size_t BT = (size_t)B * T, nn = (size_t)n * n;
    void *tmp = NULL;
    char *blk = saved;
    if (!saved) {
        blk = tmp = be->alloc(be, dn_saved_bytes(m, B, T));
        if (!tmp) return HYB_ERR_NOMEM;
    } else {
        hyb_pl_saved_hdr hd;
        memset(&hd, 0, sizeof hd);
        hd.magic = DN_SAVED_MAGIC;
        hd.B = B;
        hd.T = T;
        HYB_TRY(be->upload(be, saved, &hd, sizeof hd));
    }
    /* the options this path has leave Cv = C, Hv = H: the saved layout's Gp is absent without
     * the gate */
    const dn_saved_ptrs spp = dn_saved_layout(m, (float *)(blk + sizeof(hyb_pl_saved_hdr)), BT);
    float *Qr = spp.Qr, *Kr = spp.Kr, *Vr = spp.Vr, *Gp = m->gate ? spp.Gp : NULL, *Bl = spp.Bl,
          *Al = spp.Al, *O = spp.O, *CHK = spp.CHK;
    const size_t nwork = 3 * BT * C + (states ? 0 : (size_t)B * H * nn);
    float *work = be->alloc(be, nwork * sizeof(float));
    if (!work) {
        rc = HYB_ERR_NOMEM;
        goto out;
    }
    float *Qn = work, *Kn = Qn + BT * C, *Vn = Kn + BT * C, *Sall = states ? NULL : Vn + BT * C;
    if (rc == HYB_OK) rc = dn_linear(be, x, P[DN_WQ], Qr, (int)BT, D, C);
    if (rc == HYB_OK) rc = dn_linear(be, x, P[DN_WK], Kr, (int)BT, D, C);
    if (rc == HYB_OK) rc = dn_linear(be, x, P[DN_WV], Vr, (int)BT, D, C);
    if (Gp && rc == HYB_OK) rc = dn_linear(be, x, P[DN_WG], Gp, (int)BT, D, C);
    if (rc == HYB_OK) rc = dn_linear(be, x, P[DN_WB], Bl, (int)BT, D, H);
    if (DN_GATED && rc == HYB_OK) rc = dn_linear(be, x, P[DN_WA], Al, (int)BT, D, H);
    float qs = 1.0f / sqrtf((float)n), *nul = NULL;
    const float *Alp = DN_GATED ? Al : NULL, *alog = DN_GATED ? P[DN_ALOG] : NULL,
                *dtb = DN_GATED ? P[DN_DTB] : NULL;
    float *chk = saved ? CHK : NULL;
    /* without states one launch of each over all B; with states groups of DN_CU_SEQS sequences */
    for (int b0 = 0; rc == HYB_OK && b0 < B; b0 += DN_CU_SEQS) {
        dn_cu_seqs sq;
        memset(&sq, 0, sizeof sq);
        sq.b0 = b0;
        sq.nb = !states ? 0 : B - b0 < DN_CU_SEQS ? B - b0 : DN_CU_SEQS;
        for (int i = 0; i < sq.nb; i++) { /* device pointers: arithmetic only */
            float *st = states[b0 + i];
            sq.S[i] = (uint64_t)(uintptr_t)st;
            sq.W[i] = (uint64_t)(uintptr_t)(st + (size_t)H * nn);
            sq.cont[i] = pos && pos[b0 + i] > 0;
        }
        const int nb = states ? sq.nb : B;
        {
            void *args[] = {&Qr, (void *)&P[DN_CQ], (void *)&P[DN_CK], (void *)&P[DN_CV], &Qn,
                            &nul, &sq, &B, &T, (void *)&H, (void *)&n, (void *)&K, &qs};
            rc = dn_cu_launch(m, be, DN_K_CONV_ACT, (unsigned)((size_t)nb * T), (unsigned)H, 3,
                              dn_cu_head_threads(n), 0, args);
        }
        if (rc == HYB_OK && states && K > 1) { /* after the conv read the old windows */
            void *args[] = {&Qr, &sq, &B, &T, (void *)&C, (void *)&K};
            rc = dn_cu_launch(m, be, DN_K_WINDOW, dn_cu_blocks((int64_t)nb * 3 * C), 1, 1, 128, 0,
                              args);
        }
        if (rc == HYB_OK) {
            void *args[] = {&Qn, &Kn, &Vn, &Bl, (void *)&Alp, (void *)&alog, (void *)&dtb, &O,
                            &chk, &Sall, &sq, &B, &T, (void *)&H, (void *)&n, &sh.bv, &sh.cc,
                            (void *)&chunk, (void *)&nch, &bscale};
            rc = dn_cu_launch(m, be, DN_K_CHUNK_FWD, (unsigned)(nb * H), (unsigned)sh.nslab, 1,
                              (unsigned)sh.nt, sh.smem_f, args);
        }
        if (!states) break;
    }
    if (rc == HYB_OK) { /* Z into Qn (no longer needed) */
        void *args[] = {&O, &Gp, (void *)&P[DN_NORM], &Qn, (void *)&H, (void *)&n, &m->eps};
        rc = dn_cu_launch(m, be, DN_K_NORM_GATE, (unsigned)BT, (unsigned)H, 1,
                          dn_cu_head_threads(n), 0, args);
    }
    if (rc == HYB_OK) rc = dn_linear(be, Qn, P[DN_WO], y, (int)BT, C, D);
out:
    if (work) be->free(be, work);
    if (tmp) be->free(be, tmp);
    return rc;
}

static int dn_forward_cuda(void *self, const hyb_mixer_fwd *a) {
    dn *m = self;
    HYB_TRY(dn_check_fwd(m, a));
    float *P[DN_NPARAM]; /* device pointers in logical slots */
    dn_logical(m, (float *const *)a->params, P);
    return dn_cu_run(a->be, m, a->B, a->T, a->x, a->y, (const float *const *)P, a->saved,
                     a->states, a->pos, a->states ? "prefill" : "forward");
}

static int dn_decode_cuda(void *self, const hyb_mixer_dec *a) {
    dn *m = self;
    HYB_TRY(dn_check_dec(m, a));
    float *P[DN_NPARAM];
    dn_logical(m, (float *const *)a->params, P);
    return dn_cu_run(a->be, m, a->n, 1, a->x, a->y, (const float *const *)P, NULL, a->states,
                     a->pos, "decode");
}

static int dn_backward_cuda(void *self, const hyb_mixer_bwd *a) {
    dn *m = self;
    HYB_TRY(dn_cu_options(m, "backward"));
    const hyb_backend *be = a->be;
    int B = a->B, T = a->T;
    /* no short conv: the conv kernels with K = 1 and NULL weights are the identity */
    const int D = m->D, H = m->H, n = m->n, C = m->C, K = m->conv ? m->K : 1, chunk = m->chunk;
    hyb_pl_saved_hdr hd;
    if (!a->saved || be->download(be, &hd, a->saved, sizeof hd) != HYB_OK ||
        hd.magic != DN_SAVED_MAGIC || hd.B != B || hd.T != T)
        return H_->error(HYB_ERR_ARG,
                         DN_NAME " (layer %d): backward [B=%d, T=%d] without a matching "
                                 "saved forward",
                         m->layer, B, T);
    dn_cu_shape sh;
    HYB_TRY(dn_cu_plan(m, "backward", B, T, &sh));
    float bscale = m->neg ? 2.0f : 1.0f; /* beta = bscale sigmoid(Bl) */
    const int nch = (int)dn_n_chunks(m, T), nslab = sh.nslab;
    const size_t BT = (size_t)B * T, BTC = BT * C, BTH = BT * H;
    const char *blk = a->saved;
    const dn_saved_ptrs spp =
        dn_saved_layout(m, (float *)(blk + sizeof(hyb_pl_saved_hdr)), BT); /* Cv = C, Hv = H */
    const float *Qr = spp.Qr, *Gp = m->gate ? spp.Gp : NULL, *Bl = spp.Bl, *Al = spp.Al,
                *O = spp.O, *CHK = spp.CHK; /* Kr, Vr follow Qr: the kernels take all three */
    float *P_[DN_NPARAM], *G_[DN_NPARAM]; /* device pointers in logical slots */
    dn_logical(m, (float *const *)a->params, P_);
    dn_logical(m, a->grads, G_);
    const float *const *P = (const float *const *)P_;
    float *const *G = G_;
    /* scratch of the recomputed states: (cmax+1) n bv floats per block, pairs in waves */
    const size_t per_pair = (size_t)nslab * (sh.cmax + 1) * n * sh.bv * sizeof(float);
    int wave = (int)(DN_CU_SCRATCH / per_pair);
    if (wave < 1) wave = 1;
    if (wave > B * H) wave = B * H;
    /* Pre Post [3 BTC], Z, dO, dGq [BTC], Dout [3 BTC], DP [2 nslab BTC], Pn [BTC],
     * dBp dGs [nslab BTH], dBl dAl pA pD [BTH]: 3 + 3 + 3 + 3 + 1 = 13 BTC besides DP (12 was one
     * short: the tail of dGs/pD ran past the block; AddressSanitizer on exact-size emulated
     * blocks found it) */
    const size_t nwork = 13 * BTC + 2 * (size_t)nslab * BTC + (2 * (size_t)nslab + 4) * BTH;
    float *work = be->alloc(be, nwork * sizeof(float));
    /* Sscr also holds dn_cu_colsum's partial sums (64 max(n, H) floats) outside the recurrence */
    size_t nscr = (size_t)wave * per_pair, ncol = 64 * (size_t)(n > H ? n : H) * sizeof(float);
    float *Sscr = be->alloc(be, nscr > ncol ? nscr : ncol);
    int rc = work && Sscr ? HYB_OK : HYB_ERR_NOMEM;
    if (rc != HYB_OK) goto out;
    float *Pre = work, *Post = Pre + 3 * BTC, *Z = Post + 3 * BTC, *dO = Z + BTC, *dGq = dO + BTC,
          *Dout = dGq + BTC, *DP = Dout + 3 * BTC, *Pn = DP + 2 * (size_t)nslab * BTC,
          *dBp = Pn + BTC, *dGs = dBp + (size_t)nslab * BTH, *dBl = dGs + (size_t)nslab * BTH,
          *dAl = dBl + BTH, *pA = dAl + BTH, *pD = pA + BTH;
    float qs = 1.0f / sqrtf((float)n);
    const float *Alp = DN_GATED ? Al : NULL, *alog = DN_GATED ? P[DN_ALOG] : NULL,
                *dtb = DN_GATED ? P[DN_DTB] : NULL;
    dn_cu_seqs nosq; /* no states: zero windows */
    memset(&nosq, 0, sizeof nosq);
    /* recompute the activations (whole sequences: no windows) */
    {
        void *args[] = {(void *)&Qr, (void *)&P[DN_CQ], (void *)&P[DN_CK], (void *)&P[DN_CV],
                        &Post, &Pre, &nosq, &B, &T, (void *)&H, (void *)&n, (void *)&K,
                        &qs};
        rc = dn_cu_launch(m, be, DN_K_CONV_ACT, (unsigned)BT, (unsigned)H, 3,
                          dn_cu_head_threads(n), 0, args);
    }
    if (rc == HYB_OK) {
        void *args[] = {(void *)&O, (void *)&Gp, (void *)&P[DN_NORM], &Z, (void *)&H, (void *)&n,
                        &m->eps};
        rc = dn_cu_launch(m, be, DN_K_NORM_GATE, (unsigned)BT, (unsigned)H, 1,
                          dn_cu_head_threads(n), 0, args);
    }
    /* y = Z Wo^T */
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, D, C, (int)BT, 1.0f, a->dy, D, Z, C, 1.0f, G[DN_WO], C);
    if (rc == HYB_OK) /* Z := dZ */
        rc = be->sgemm(be, 0, 0, (int)BT, C, D, 1.0f, a->dy, D, P[DN_WO], C, 0.0f, Z, C);
    if (rc == HYB_OK) {
        void *args[] = {(void *)&O, (void *)&Gp, (void *)&P[DN_NORM], &Z, &dGq, &dO, &Pn,
                        (void *)&H, (void *)&n, &m->eps};
        rc = dn_cu_launch(m, be, DN_K_NORM_GATE_BWD, (unsigned)BT, (unsigned)H, 1,
                          dn_cu_head_threads(n), 0, args);
    }
    if (rc == HYB_OK) /* o_norm's dw: the rows' parts summed (Sscr is free until the recurrence) */
        rc = dn_cu_colsum(m, be, Pn, G[DN_NORM], (long long)BTH, n, Sscr);
    if (Gp && rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, C, D, (int)BT, 1.0f, dGq, C, a->x, D, 1.0f, G[DN_WG], D);
    if (rc == HYB_OK) /* the first write of dx (use_gate off: zeros, the rest add to it) */
        rc = Gp ? be->sgemm(be, 0, 0, (int)BT, D, C, 1.0f, dGq, C, P[DN_WG], D, 0.0f, a->dx, D)
                : be->memset0(be, a->dx, BT * D * sizeof(float));
    /* the recurrence, in waves of `wave` (sequence, head) pairs */
    float *dQp = DP, *dKp = DP + (size_t)nslab * BTC, *dV = Dout + 2 * BTC;
    float *Qn = Post, *Kn = Post + BTC, *Vn = Post + 2 * BTC;
    for (int bh0 = 0; rc == HYB_OK && bh0 < B * H; bh0 += wave) {
        const int cnt = B * H - bh0 < wave ? B * H - bh0 : wave;
        void *args[] = {&Qn, &Kn, &Vn, (void *)&Bl, (void *)&Alp, (void *)&alog, (void *)&dtb,
                        &dO, (void *)&CHK, &Sscr, &dQp, &dKp, &dV, &dBp, &dGs, &B, &T,
                        (void *)&H, (void *)&n, &sh.bv, (void *)&chunk, (void *)&nch, &bh0,
                        &bscale};
        rc = dn_cu_launch(m, be, DN_K_CHUNK_BWD, (unsigned)cnt, (unsigned)nslab, 1,
                          (unsigned)sh.nt, sh.smem_b - 128, args);
    }
    /* beta = sigmoid(Bl); g = -exp(A_log) softplus(Al + dt_bias) */
    if (rc == HYB_OK) {
        long long bth = (long long)BTH;
        void *args[] = {(void *)&Bl, (void *)&Alp, (void *)&alog, (void *)&dtb, &dBp, &dGs,
                        (void *)&nslab, &bth, (void *)&H, &dBl, &dAl, &pA, &pD, &bscale};
        rc = dn_cu_launch(m, be, DN_K_BETA_GATE_BWD, dn_cu_blocks((int64_t)BTH), 1, 1, 128, 0,
                          args);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, H, D, (int)BT, 1.0f, dBl, H, a->x, D, 1.0f, G[DN_WB], D);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, D, H, 1.0f, dBl, H, P[DN_WB], D, 1.0f, a->dx, D);
    if (DN_GATED) {
        if (rc == HYB_OK) rc = dn_cu_colsum(m, be, pA, G[DN_ALOG], (long long)BT, H, Sscr);
        if (rc == HYB_OK) rc = dn_cu_colsum(m, be, pD, G[DN_DTB], (long long)BT, H, Sscr);
        if (rc == HYB_OK)
            rc = be->sgemm(be, 1, 0, H, D, (int)BT, 1.0f, dAl, H, a->x, D, 1.0f, G[DN_WA], D);
        if (rc == HYB_OK)
            rc = be->sgemm(be, 0, 0, (int)BT, D, H, 1.0f, dAl, H, P[DN_WA], D, 1.0f, a->dx, D);
    }
    /* l2 norm (q, k), silu, conv, projection backward */
    if (rc == HYB_OK) {
        void *args[] = {&DP, (void *)&nslab, &Pre, &Dout, &B, &T, (void *)&H, (void *)&n, &qs};
        rc = dn_cu_launch(m, be, DN_K_ACT_BWD, (unsigned)BT, (unsigned)H, 3,
                          dn_cu_head_threads(n), 0, args);
    }
    float *draw = Post; /* the activations are no longer needed */
    if (rc == HYB_OK) {
        void *args[] = {&Dout, (void *)&P[DN_CQ], (void *)&P[DN_CK], (void *)&P[DN_CV], &draw,
                        &B, &T, (void *)&C, (void *)&K};
        rc = dn_cu_launch(m, be, DN_K_CONV_BWD_X, dn_cu_blocks((int64_t)(3 * BTC)), 1, 1, 128, 0,
                          args);
    }
    if (rc == HYB_OK && m->conv) {
        void *args[] = {&Dout, (void *)&Qr, (void *)&G[DN_CQ], (void *)&G[DN_CK],
                        (void *)&G[DN_CV], &B, &T, (void *)&C, (void *)&K};
        rc = dn_cu_launch(m, be, DN_K_CONV_BWD_W, dn_cu_blocks(3 * (int64_t)C * K), 1, 1, 128, 0,
                          args);
    }
    for (int s = 0; s < 3 && rc == HYB_OK; s++) {
        const float *d = draw + (size_t)s * BTC;
        rc = be->sgemm(be, 1, 0, C, D, (int)BT, 1.0f, d, C, a->x, D, 1.0f, G[DN_WQ + s], D);
        if (rc == HYB_OK)
            rc = be->sgemm(be, 0, 0, (int)BT, D, C, 1.0f, d, C, P[DN_WQ + s], D, 1.0f, a->dx, D);
    }
out:
    if (Sscr) be->free(be, Sscr);
    if (work) be->free(be, work);
    return rc;
}

/* ---- attention-derived init ("DIL") -----------------------------------------------------------
 * From an `mha` mixer of the same layer: q heads <- the teacher's q heads, k/v head h <- the
 * teacher's kv head h / (H / KV) (GQA repeated), o_proj <- o_proj; output gate g_proj = 0,
 * b_proj = 0 (beta = 0.5), convs = identity (last tap 1, others 0), o_norm = 1; gated: a_proj keeps
 * its init, A_log / dt_bias redrawn with the Mamba-style init. Needs n_heads and head_dim equal
 * to the teacher's; teacher biases (if any) are dropped. */
static int dn_find(const hyb_mixer_src *src, const char *name, int64_t rows, int64_t cols) {
    for (int i = 0; i < src->n_params; i++)
        if (!strcmp(src->decls[i].name, name)) {
            const hyb_param_decl *d = &src->decls[i];
            if (d->ndim != 2 || d->shape[0] != rows || d->shape[1] != cols) return -2;
            return i;
        }
    return -1;
}

static int dn_init_from(void *self, float *const *params_decl, const hyb_mixer_src *src,
                        uint64_t seed) {
    dn *m = self;
    if (m->Hv != m->H || m->nv != m->n)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         DN_NAME " (layer %d): init from mha needs num_v_heads = n_heads and "
                                 "expand_v = 1 (have %d value heads of %d for %d heads of %d)",
                         m->layer, m->Hv, m->nv, m->H, m->n);
    float *params[DN_NPARAM];
    dn_logical(m, params_decl, params);
    if (!src || !src->type || strcmp(src->type, "mha") != 0)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         DN_NAME " (layer %d): cannot initialise from mixer type '%s' (known: mha)",
                         m->layer, src && src->type ? src->type : "(null)");
    const int D = m->D, H = m->H, n = m->n, C = m->C;
    /* the teacher's head count and size, resolved as mha resolves them */
    int64_t th = D % 64 == 0 ? D / 64 : 0, thd = -1, qd = -1, kd = -1;
    if (src->cfg) {
        HYB_TRY(H_->cfg_int(src->cfg, "n_heads", th, &th));
        HYB_TRY(H_->cfg_int(src->cfg, "head_dim", -1, &thd));
    }
    if (thd == -1) thd = th > 0 && D % th == 0 ? D / th : -1;
    for (int i = 0; i < src->n_params; i++) {
        if (!strcmp(src->decls[i].name, "q_proj.weight")) qd = src->decls[i].shape[0];
        if (!strcmp(src->decls[i].name, "k_proj.weight")) kd = src->decls[i].shape[0];
    }
    if (th != H || thd != n || qd != C || kd <= 0 || kd % n != 0 || H % (kd / n) != 0)
        return H_->error(
            HYB_ERR_ARG,
            DN_NAME " (layer %d): init from mha needs the teacher's n_heads and "
                    "head_dim equal to this mixer's (%d x %d, q_proj.weight [%d, %d]); the "
                    "teacher has n_heads %lld, head_dim %lld, q_proj rows %lld, k_proj rows "
                    "%lld",
            m->layer, H, n, C, D, (long long)th, (long long)thd, (long long)qd, (long long)kd);
    const int KV = (int)(kd / n), grp = H / KV;
    int iq = dn_find(src, "q_proj.weight", C, D), ik = dn_find(src, "k_proj.weight", kd, D),
        iv = dn_find(src, "v_proj.weight", kd, D), io = dn_find(src, "o_proj.weight", D, C);
    if (iq < 0 || ik < 0 || iv < 0 || io < 0)
        return H_->error(HYB_ERR_ARG,
                         DN_NAME " (layer %d): init from mha: q/k/v/o_proj.weight missing or "
                                 "not [%d, %d] / [%lld, %d] / [%d, %d]",
                         m->layer, C, D, (long long)kd, D, D, C);
    const size_t rowb = (size_t)D * sizeof(float), headb = (size_t)n * rowb;
    memcpy(params[DN_WQ], src->params[iq], (size_t)C * rowb);
    for (int h = 0; h < H; h++) {
        memcpy(params[DN_WK] + (size_t)h * n * D, src->params[ik] + (size_t)(h / grp) * n * D,
               headb);
        memcpy(params[DN_WV] + (size_t)h * n * D, src->params[iv] + (size_t)(h / grp) * n * D,
               headb);
    }
    memcpy(params[DN_WO], src->params[io], (size_t)D * C * sizeof(float));
    if (m->gate) memset(params[DN_WG], 0, (size_t)C * rowb);
    memset(params[DN_WB], 0, (size_t)H * rowb);
    for (int s = 0; s < 3 && m->conv; s++) {
        float *w = params[DN_CQ + s];
        memset(w, 0, (size_t)C * m->K * sizeof(float));
        for (int ch = 0; ch < C; ch++)
            w[(size_t)ch * m->K + m->K - 1] = 1.0f;
    }
    for (int i = 0; i < n; i++)
        params[DN_NORM][i] = 1.0f;
    if (DN_GATED) dn_init_decay(m, params[DN_ALOG], params[DN_DTB], seed);
    return HYB_OK;
}

/* ---- HF config.json ---------------------------------------------------------------------------
 * No HF modeling code has this layer in a hybrid config, so only hyb's own hyb_hybrid format
 * (docs/HF_CONFIG.md) carries it: the layout names the mixer type, and its options live in
 * mixer_cfg.<type>: n_heads, head_dim, conv_size, chunk, norm_eps, and, only when set away from
 * their defaults, num_v_heads, expand_v, use_gate, use_short_conv, allow_neg_eigval (every layer
 * of the type shares them). The parameters keep their hyb/fla names under model.layers.<i>.mixer. */

static int dn_hf_export(void *self, const char *format, hyb_json *c) {
    dn *m = self;
    if (strcmp(format, HYB_HF_HYB_HYBRID) != 0)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         DN_NAME " (layer %d): no place in an HF %s config (only hyb_hybrid)",
                         m->layer, format);
    hyb_json *all, *o;
    HYB_TRY(H_->json_set_object(c, "mixer_cfg", &all));
    HYB_TRY(H_->json_set_object(all, DN_NAME, &o));
    HYB_TRY(H_->json_set_int(o, "n_heads", m->H));
    HYB_TRY(H_->json_set_int(o, "head_dim", m->n));
    HYB_TRY(H_->json_set_int(o, "conv_size", m->K));
    HYB_TRY(H_->json_set_int(o, "chunk", m->chunk));
    /* the default comes from the model's float epsilon: write its shortest float form (1e-05,
     * not 9.999999747378752e-06); it reads back as the same float */
    double eps = m->eps_cfg;
    if (eps == (double)(float)eps) {
        char t[32];
        for (int prec = 1; prec <= 9; prec++) {
            snprintf(t, sizeof t, "%.*g", prec, eps);
            if (strtof(t, NULL) == (float)eps) break;
        }
        eps = strtod(t, NULL);
    }
    HYB_TRY(H_->json_set_float(o, "norm_eps", eps));
    /* the fla options, only when set (a default config reads as before) */
    if (m->Hv != m->H) HYB_TRY(H_->json_set_int(o, "num_v_heads", m->Hv));
    if (m->nv != m->n) HYB_TRY(H_->json_set_float(o, "expand_v", m->expand_v));
    if (!m->gate) HYB_TRY(H_->json_set_bool(o, "use_gate", 0));
    if (!m->conv) HYB_TRY(H_->json_set_bool(o, "use_short_conv", 0));
    if (m->neg) HYB_TRY(H_->json_set_bool(o, "allow_neg_eigval", 1));
    return HYB_OK;
}

static int dn_hf_import(const hyb_model_dims *dims, const char *format, const hyb_json *c,
                        hyb_toml *t) {
    (void)dims;
    if (strcmp(format, HYB_HF_HYB_HYBRID) != 0)
        return H_->error(HYB_ERR_UNSUPPORTED, DN_NAME ": no place in an HF %s config", format);
    const hyb_json *all, *o;
    HYB_TRY(H_->json_object(c, "mixer_cfg", 1, &all));
    HYB_TRY(H_->json_object(all, DN_NAME, 1, &o));
    int64_t nh, hd, K, chunk;
    double eps;
    HYB_TRY(H_->json_int(o, "n_heads", 1, 0, &nh));
    HYB_TRY(H_->json_int(o, "head_dim", 1, 0, &hd));
    HYB_TRY(H_->json_int(o, "conv_size", 0, 4, &K));
    HYB_TRY(H_->json_int(o, "chunk", 0, 64, &chunk));
    HYB_TRY(H_->toml_int(t, "n_heads", nh));
    HYB_TRY(H_->toml_int(t, "head_dim", hd));
    HYB_TRY(H_->toml_int(t, "conv_size", K));
    HYB_TRY(H_->toml_int(t, "chunk", chunk));
    if (H_->json_type(o, "norm_eps") != HYB_JSON_ABSENT) { /* absent: the model's norm_eps */
        HYB_TRY(H_->json_float(o, "norm_eps", 1, 0, &eps));
        HYB_TRY(H_->toml_float(t, "norm_eps", eps));
    }
    if (H_->json_type(o, "num_v_heads") != HYB_JSON_ABSENT) {
        int64_t nvh;
        HYB_TRY(H_->json_int(o, "num_v_heads", 1, 0, &nvh));
        HYB_TRY(H_->toml_int(t, "num_v_heads", nvh));
    }
    if (H_->json_type(o, "expand_v") != HYB_JSON_ABSENT) {
        double ev;
        HYB_TRY(H_->json_float(o, "expand_v", 1, 1.0, &ev));
        HYB_TRY(H_->toml_float(t, "expand_v", ev));
    }
    static const char *const BOOLS[3] = {"use_gate", "use_short_conv", "allow_neg_eigval"};
    for (int i = 0; i < 3; i++)
        if (H_->json_type(o, BOOLS[i]) != HYB_JSON_ABSENT) {
            int v;
            HYB_TRY(H_->json_bool(o, BOOLS[i], 1, 0, &v));
            HYB_TRY(H_->toml_bool(t, BOOLS[i], v));
        }
    return HYB_OK;
}

/* ---- descriptor -------------------------------------------------------------------------------
 */

static const hyb_mixer_desc DN_DESC = {
    HYB_PL_DESC_REQUIRED(dn),
    .name = DN_NAME,
    .version = "0.1.0",
    .description = DN_DESCRIPTION,
    .hf_prefix = "mixer",
    .init_params = dn_init_params,
    .state_snapshot = dn_state_snapshot,
    .state_restore = dn_state_restore,
    .init_from = dn_init_from,
    .hf_layer_type = NULL, /* no apriel_h block type */
    .hf_export = dn_hf_export,
    .hf_import = dn_hf_import,
    .kernels[HYB_DEV_CUDA] = {dn_forward_cuda, dn_backward_cuda, dn_decode_cuda},
};

HYB_PL_ENTRY(dn_host, DN_DESC)

#endif
