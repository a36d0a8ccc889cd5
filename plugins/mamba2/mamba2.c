/* plugins/mamba2/mamba2.c: the `mamba2` mixer plugin: descriptor, TOML config, parameters,
 * initialisation (random and MIL from `mha`), decode state, HF config hooks. The math (forward,
 * backward, decode) is in mamba2_ssd.c (CPU) and mamba2_cuda.c + mamba2.cu (CUDA); shapes and
 * layouts are in mamba2.h, shared by both devices; the derivation is docs/MAMBA2.md.
 *
 * Mamba-2 (Dao & Gu 2024, SSD; mamba_ssm's Mamba2 without the fused kernels), for one token u [D]:
 *   z, xBC, dt_raw = split(in_proj(u), [Di, Di + 2 G N, nh])
 *   x, B, C = split(silu(causal_depthwise_conv1d(xBC) + conv1d.bias), [Di, G N, G N])
 *   dt[h] = softplus(dt_raw[h] + dt_bias[h]),  A[h] = -exp(A_log[h])    (a scalar per head)
 *   h_t[h] = exp(dt A) h_{t-1}[h] + dt x_t[h] B_t[g]^T     ([Pd, N] per head, g = h / (nh / G))
 *   y[h] = h_t[h] C_t[g] + D[h] x_t[h]
 *   out = out_proj(rmsnorm_g(y * silu(z)) * norm.weight)   (RMSNorm over each group of Di / G
 *                                                           channels, norm_before_gate = False)
 * Training and prefill use the chunked SSD form (intra-chunk quadratic with the segment-sum decay
 * mask, inter-chunk state passing); decode the recurrence.
 *
 * TOML keys of [mixers.<name>] (type = "mamba2"):
 *   d_state     N (default 64)
 *   d_conv      K, in [1, 64] (default 4)
 *   expand      d_inner = expand * d_model (default 2)
 *   d_inner     Di directly (overrides expand; MIL from mha wants n_kv_heads * head_dim)
 *   headdim     Pd (default 64, or d_inner when that is smaller); d_inner % headdim == 0
 *   ngroups     G (default 1); the heads (d_inner / headdim) must be a multiple of ngroups
 *   chunk_size  Q, the SSD chunk (default 64): the forward saves the state at each chunk start
 *   norm_eps    the gated RMSNorm's epsilon (default 1e-5, as mamba_ssm)
 *   dt_min, dt_max, dt_init_floor   dt init range (default 0.001, 0.1, 1e-4; mamba_ssm's)
 *   A_init_min, A_init_max          A init range (default 1, 16; mamba_ssm's A_init_range)
 *   type, symbol                    read by the layer map, accepted here
 * With no table at all every key takes its default.
 *
 * Initialisation (mamba_ssm's Mamba2; "Linear default" is U(-1/sqrt(fan_in), 1/sqrt(fan_in))):
 *   in_proj.weight U(+-D^-1/2), conv1d.weight and conv1d.bias U(+-K^-1/2) (depthwise: fan_in K),
 *   dt_bias = softplus^-1(dt), dt = max(exp(U(log dt_min, log dt_max)), dt_init_floor),
 *   A_log = log(U(A_init_min, A_init_max)), D = 1, norm.weight = 1, out_proj.weight U(+-Di^-1/2).
 * No weight decay on conv1d.bias, dt_bias, A_log, D, norm.weight.
 *
 * init_from (MIL, as mamba1 does; SPEC.md section 4) from an `mha` mixer of the same layer: every
 * parameter is first drawn again as above from the given seed, then
 *   in_proj x rows <- v_proj.weight  (needs d_inner = n_kv_heads * head_dim)
 *   in_proj B rows <- k_proj.weight  (needs ngroups * d_state = n_kv_heads * head_dim; with
 *                                     ngroups = n_kv_heads and d_state = head_dim, group g's B is
 *                                     key head g)
 *   in_proj C rows <- q_proj.weight  when it has the same rows; with GQA (q_proj has rep times the
 *                                     rows of k_proj) C's group g is the mean of the rep query
 *                                     heads that share key head g
 *   out_proj       <- o_proj.weight  when the columns match; with GQA the sum of o_proj's column
 *                                     blocks of the rep query heads of each key head (the attention
 *                                     output of those heads is a mix of the same values)
 * The teacher's q/k are used as they are (no RoPE, no 1/sqrt(head_dim) scale). q/k/v biases of a
 * biased mha have no counterpart and are dropped (a warning says so). Shapes that do not line up
 * are refused with a message that names the keys to set.
 *
 * HF config.json: only hyb's own hybrid format (hyb_hybrid) has a place for it:
 *   mixer_cfg.mamba2 {d_inner, d_state, d_conv, headdim, ngroups, chunk_size, norm_eps}, shared by
 *   every mamba2 layer (they must agree). No apriel_h block type.
 */
#include "mamba2.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const hyb_host *m2_host;
#define H_ m2_host

static const char *const M2_KEYS[] = {
    "type",    "symbol",     "d_state",  "d_conv", "expand",        "d_inner",    "headdim",
    "ngroups", "chunk_size", "norm_eps", "dt_min", "dt_max",        "dt_init_floor",
    "A_init_min", "A_init_max", NULL};

#define MAX_DIM (1 << 20)

static int m2_create(const hyb_model_dims *dims, const hyb_cfg_table *cfg, void **self) {
    *self = NULL;
    const int D = dims->d_model, L = dims->layer;
    if (D <= 0)
        return H_->error(HYB_ERR_ARG, "mamba2 (layer %d): d_model must be > 0, got %d", L, D);
    int64_t N = 64, K = 4, expand = 2, Di, Pd, G = 1, Q = 64;
    double eps = 1e-5, dt_min = 1e-3, dt_max = 0.1, dt_floor = 1e-4, a_min = 1.0, a_max = 16.0;
#define CFG_ERR(key, fmt, ...) H_->cfg_error(cfg, key, "mamba2 (layer %d): " fmt, L, __VA_ARGS__)
#define GET_POS(key, var) HYB_TRY(hyb_ssm_cfg_pos(H_, cfg, "mamba2", L, key, &var, MAX_DIM))
    if (cfg) HYB_TRY(H_->cfg_check_keys(cfg, M2_KEYS));
    GET_POS("d_state", N);
    GET_POS("d_conv", K);
    GET_POS("expand", expand);
    Di = expand * D;
    GET_POS("d_inner", Di);
    Pd = Di < 64 ? Di : 64;
    GET_POS("headdim", Pd);
    GET_POS("ngroups", G);
    GET_POS("chunk_size", Q);
    HYB_TRY(H_->cfg_float(cfg, "norm_eps", eps, &eps));
    HYB_TRY(H_->cfg_float(cfg, "dt_min", dt_min, &dt_min));
    HYB_TRY(H_->cfg_float(cfg, "dt_max", dt_max, &dt_max));
    HYB_TRY(H_->cfg_float(cfg, "dt_init_floor", dt_floor, &dt_floor));
    HYB_TRY(H_->cfg_float(cfg, "A_init_min", a_min, &a_min));
    HYB_TRY(H_->cfg_float(cfg, "A_init_max", a_max, &a_max));
#undef GET_POS
    HYB_TRY(hyb_ssm_cfg_conv_state(H_, cfg, "mamba2", L, K, N));
    if (Q > 1024) /* the intra-chunk matrix is Q x Q floats per thread */
        return CFG_ERR("chunk_size", "chunk_size must be in [1, 1024], got %lld", (long long)Q);
    if (Di % Pd != 0)
        return CFG_ERR("headdim", "d_inner = %lld must be a multiple of headdim = %lld",
                       (long long)Di, (long long)Pd);
    if ((Di / Pd) % G != 0)
        return CFG_ERR("ngroups",
                       "the %lld heads (d_inner / headdim = %lld / %lld) must be a multiple of "
                       "ngroups = %lld",
                       (long long)(Di / Pd), (long long)Di, (long long)Pd, (long long)G);
    if (!(eps > 0.0 && eps < 1.0))
        return CFG_ERR("norm_eps", "norm_eps must be in (0, 1), got %g", eps);
    if (!(dt_min > 0.0 && dt_min <= dt_max && dt_max < 100.0))
        return CFG_ERR(dt_min > 0.0 ? "dt_max" : "dt_min",
                       "need 0 < dt_min <= dt_max < 100, got dt_min = %g, dt_max = %g", dt_min,
                       dt_max);
    if (!(dt_floor > 0.0 && dt_floor < 100.0))
        return CFG_ERR("dt_init_floor", "dt_init_floor must be in (0, 100), got %g", dt_floor);
    if (!(a_min > 0.0 && a_min <= a_max && a_max < 1e6))
        return CFG_ERR(a_min > 0.0 ? "A_init_max" : "A_init_min",
                       "need 0 < A_init_min <= A_init_max < 1e6, got %g, %g", a_min, a_max);
#undef CFG_ERR
    m2 *m = H_->alloc(sizeof *m);
    if (!m) return HYB_ERR_NOMEM;
    m->D = D;
    m->Di = (int)Di;
    m->Pd = (int)Pd;
    m->nh = (int)(Di / Pd);
    m->G = (int)G;
    m->N = (int)N;
    m->K = (int)K;
    m->Q = (int)Q;
    m->layer = L;
    m->Cd = (int)(Di + 2 * G * N);
    m->Pin = (int)(2 * Di + 2 * G * N + Di / Pd);
    m->hpg = m->nh / m->G;
    m->eps = (float)eps;
    m->eps_cfg = eps;
    m->dt_min = dt_min;
    m->dt_max = dt_max;
    m->dt_floor = dt_floor;
    m->a_min = a_min;
    m->a_max = a_max;
    *self = m;
    return HYB_OK;
}

static void m2_destroy(void *self) {
    H_->free(self);
}

static int m2_describe(void *self, char *buf, size_t n) {
    m2 *m = self;
    snprintf(buf, n,
             "mamba2 d_inner=%d headdim=%d heads=%d ngroups=%d d_state=%d d_conv=%d chunk=%d "
             "eps=%g",
             m->Di, m->Pd, m->nh, m->G, m->N, m->K, m->Q, m->eps_cfg);
    return HYB_OK;
}

static int m2_n_params(void *self) {
    (void)self;
    return M2_NPARAMS;
}

static int m2_param_decl(void *self, int i, hyb_param_decl *d) {
    m2 *m = self;
    const float bD = 1.0f / sqrtf((float)m->D), bK = 1.0f / sqrtf((float)m->K),
                bDi = 1.0f / sqrtf((float)m->Di);
    switch (i) {
    case M2_WIN:
        hyb_pl_decl(d, "in_proj.weight", 2, m->Pin, m->D, 0, HYB_INIT_UNIFORM, bD, 0);
        break;
    case M2_CONVW:
        hyb_pl_decl(d, "conv1d.weight", 3, m->Cd, 1, m->K, HYB_INIT_UNIFORM, bK, 0);
        break;
    case M2_CONVB:
        hyb_pl_decl(d, "conv1d.bias", 1, m->Cd, 0, 0, HYB_INIT_UNIFORM, bK, 1);
        break;
    case M2_DTB:
        hyb_pl_decl(d, "dt_bias", 1, m->nh, 0, 0, HYB_INIT_CUSTOM, 0, 1);
        break;
    case M2_ALOG:
        hyb_pl_decl(d, "A_log", 1, m->nh, 0, 0, HYB_INIT_CUSTOM, 0, 1);
        break;
    case M2_DSKIP:
        hyb_pl_decl(d, "D", 1, m->nh, 0, 0, HYB_INIT_ONES, 0, 1);
        break;
    case M2_NORMW:
        hyb_pl_decl(d, "norm.weight", 1, m->Di, 0, 0, HYB_INIT_ONES, 0, 1);
        break;
    case M2_WOUT:
        hyb_pl_decl(d, "out_proj.weight", 2, m->D, m->Di, 0, HYB_INIT_UNIFORM, bDi, 0);
        break;
    default:
        return H_->error(HYB_ERR_ARG, "mamba2: param_decl index %d out of range", i);
    }
    return HYB_OK;
}

/* dt_bias = softplus^-1(dt), dt = max(exp(U(log dt_min, log dt_max)), floor);
 * A_log = log(U(A_init_min, A_init_max)) (mamba_ssm's Mamba2) */
static void init_custom(const m2 *m, float *const *params, uint64_t *rng) {
    float *bdt = params[M2_DTB], *alog = params[M2_ALOG];
    H_->rng_uniform(rng, bdt, (size_t)m->nh, 0.0f, 1.0f);
    const double lo = log(m->dt_min), hi = log(m->dt_max);
    for (int h = 0; h < m->nh; h++) {
        double dt = exp((double)bdt[h] * (hi - lo) + lo);
        if (dt < m->dt_floor) dt = m->dt_floor;
        bdt[h] = (float)(dt + log(-expm1(-dt))); /* softplus(b) = dt */
    }
    H_->rng_uniform(rng, alog, (size_t)m->nh, (float)m->a_min, (float)m->a_max);
    for (int h = 0; h < m->nh; h++)
        alog[h] = logf(alog[h]);
}

static int m2_init_params(void *self, float *const *params, uint64_t seed) {
    uint64_t rng = seed;
    init_custom(self, params, &rng);
    return HYB_OK;
}

/* Every parameter drawn again from `seed` with the distributions at the top. */
static void init_all(const m2 *m, float *const *params, uint64_t seed) {
    uint64_t rng = seed;
    const float bD = 1.0f / sqrtf((float)m->D), bK = 1.0f / sqrtf((float)m->K),
                bDi = 1.0f / sqrtf((float)m->Di);
    H_->rng_uniform(&rng, params[M2_WIN], (size_t)m->Pin * m->D, -bD, bD);
    H_->rng_uniform(&rng, params[M2_CONVW], (size_t)m->Cd * m->K, -bK, bK);
    H_->rng_uniform(&rng, params[M2_CONVB], (size_t)m->Cd, -bK, bK);
    for (int h = 0; h < m->nh; h++)
        params[M2_DSKIP][h] = 1.0f;
    for (int d = 0; d < m->Di; d++)
        params[M2_NORMW][d] = 1.0f;
    H_->rng_uniform(&rng, params[M2_WOUT], (size_t)m->D * m->Di, -bDi, bDi);
    init_custom(m, params, &rng);
}

/* MIL from mha (the mapping at the top of this file). */
static int m2_init_from(void *self, float *const *params, const hyb_mixer_src *src, uint64_t seed) {
    m2 *m = self;
    if (!src || !src->type || strcmp(src->type, "mha") != 0)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mamba2 (layer %d): cannot initialise from a '%s' mixer: only 'mha' "
                         "(MIL: attention -> mamba2) is known",
                         m->layer, src && src->type ? src->type : "(null)");
    static const char *const names[4] = {"q_proj.weight", "k_proj.weight", "v_proj.weight",
                                         "o_proj.weight"};
    const hyb_param_decl *dq[4] = {NULL, NULL, NULL, NULL};
    const float *w[4] = {NULL, NULL, NULL, NULL};
    int biased = 0;
    for (int i = 0; i < src->n_params; i++) {
        const hyb_param_decl *d = &src->decls[i];
        for (int k = 0; k < 4; k++)
            if (strcmp(d->name, names[k]) == 0) {
                if (d->ndim != 2)
                    return H_->error(HYB_ERR_ARG, "mamba2 (layer %d): MIL init from mha: %s has "
                                                  "%d dimensions, want 2",
                                     m->layer, d->name, d->ndim);
                dq[k] = d;
                w[k] = src->params[i];
            }
        if (strstr(d->name, ".bias")) biased = 1;
    }
    for (int k = 0; k < 4; k++)
        if (!w[k])
            return H_->error(HYB_ERR_ARG,
                             "mamba2 (layer %d): MIL init from mha: the source has no %s", m->layer,
                             names[k]);
    const int64_t qr = dq[0]->shape[0], kr = dq[1]->shape[0], vr = dq[2]->shape[0],
                  oc = dq[3]->shape[1];
    const int64_t GN = (int64_t)m->G * m->N;
    const char *why = NULL;
    if (dq[0]->shape[1] != m->D || dq[1]->shape[1] != m->D || dq[2]->shape[1] != m->D ||
        dq[3]->shape[0] != m->D)
        why = "the projections' d_model differs from this layer's";
    else if (vr != m->Di)
        why = "v_proj's rows (n_kv_heads * head_dim) must equal d_inner";
    else if (kr != GN)
        why = "k_proj's rows (n_kv_heads * head_dim) must equal ngroups * d_state";
    else if (qr % kr != 0 || (qr / kr) * m->Di != oc)
        why = "q_proj's rows must be a multiple rep of k_proj's and o_proj's columns rep * d_inner";
    else if (src->cfg) { /* the key head size must be d_state: group g's B is key head g */
        int64_t hd = -1, nq = -1;
        HYB_TRY(H_->cfg_int(src->cfg, "head_dim", -1, &hd));
        if (hd < 0) {
            HYB_TRY(H_->cfg_int(src->cfg, "n_heads", -1, &nq));
            if (nq > 0) hd = qr / nq;
        }
        if (hd > 0 && hd != m->N) why = "the attention head_dim must equal d_state";
    }
    if (why)
        return H_->error(HYB_ERR_ARG,
                         "mamba2 (layer %d): MIL init from mha: %s: q_proj [%lld, %lld], k_proj "
                         "[%lld, %lld], v_proj [%lld, %lld], o_proj [%lld, %lld]; here d_model = "
                         "%d, d_inner = %d, ngroups * d_state = %d * %d (set d_inner = "
                         "n_kv_heads * head_dim, ngroups = n_kv_heads, d_state = head_dim)",
                         m->layer, why, (long long)qr, (long long)dq[0]->shape[1], (long long)kr,
                         (long long)dq[1]->shape[1], (long long)vr, (long long)dq[2]->shape[1],
                         (long long)dq[3]->shape[0], (long long)oc, m->D, m->Di, m->G, m->N);
    if (biased)
        H_->log(HYB_LOG_WARN,
                "mamba2 (layer %d): MIL init from an mha with q/k/v biases: the biases are "
                "dropped",
                m->layer);
    init_all(m, params, seed);
    const int rep = (int)(qr / kr), D = m->D, N = m->N;
    float *win = params[M2_WIN];
    const size_t row = (size_t)D * sizeof(float);
    memcpy(win + (size_t)m2_col_x(m) * D, w[2], (size_t)m->Di * row); /* x <- v */
    memcpy(win + (size_t)m2_col_B(m) * D, w[1], (size_t)GN * row);    /* B <- k */
    /* C <- q: group g (N rows) = mean of the rep query heads of key head g (head size N) */
    float *wc = win + (size_t)m2_col_C(m) * D;
    for (int64_t r = 0; r < GN; r++) {
        const int64_t g = r / N, n = r % N;
        for (int c = 0; c < D; c++) {
            double s = 0.0;
            for (int j = 0; j < rep; j++)
                s += w[0][((g * rep + j) * N + n) * D + c];
            wc[r * D + c] = (float)(s / rep);
        }
    }
    /* out_proj <- o_proj: column block of key head g = sum of the rep query heads' blocks; the
     * value head size is d_inner / (number of key heads) */
    const int64_t nkv = kr / N, vh = m->Di / (nkv > 0 ? nkv : 1);
    float *wo = params[M2_WOUT];
    for (int o = 0; o < D; o++)
        for (int64_t col = 0; col < m->Di; col++) {
            const int64_t g = col / vh, e = col % vh;
            double s = 0.0;
            for (int j = 0; j < rep; j++)
                s += w[3][(int64_t)o * oc + (g * rep + j) * vh + e];
            wo[(int64_t)o * m->Di + col] = (float)s;
        }
    return HYB_OK;
}

static size_t m2_state_bytes(void *self, int max_ctx) {
    m2 *m = self;
    (void)max_ctx; /* fixed size */
    return ((size_t)m->Di * m->N + (size_t)m->Cd * m->K) * sizeof(float);
}

/* ---- HF config.json ---------------------------------------------------------------------------*/

static int m2_hf_export(void *self, const char *format, hyb_json *c) {
    m2 *m = self;
    if (strcmp(format, HYB_HF_HYB_HYBRID) != 0)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mamba2 (layer %d): no place in an HF %s config (only hyb_hybrid)",
                         m->layer, format);
    hyb_json *all, *o;
    HYB_TRY(H_->json_set_object(c, "mixer_cfg", &all));
    HYB_TRY(H_->json_set_object(all, "mamba2", &o));
    HYB_TRY(H_->json_set_int(o, "d_inner", m->Di));
    HYB_TRY(H_->json_set_int(o, "d_state", m->N));
    HYB_TRY(H_->json_set_int(o, "d_conv", m->K));
    HYB_TRY(H_->json_set_int(o, "headdim", m->Pd));
    HYB_TRY(H_->json_set_int(o, "ngroups", m->G));
    HYB_TRY(H_->json_set_int(o, "chunk_size", m->Q));
    HYB_TRY(H_->json_set_float(o, "norm_eps", m->eps_cfg));
    return HYB_OK;
}

static int m2_hf_import(const hyb_model_dims *dims, const char *format, const hyb_json *c,
                        hyb_toml *t) {
    (void)dims;
    if (strcmp(format, HYB_HF_HYB_HYBRID) != 0)
        return H_->error(HYB_ERR_UNSUPPORTED, "mamba2: no place in an HF %s config", format);
    const hyb_json *all, *o;
    HYB_TRY(H_->json_object(c, "mixer_cfg", 1, &all));
    HYB_TRY(H_->json_object(all, "mamba2", 1, &o));
    static const char *const keys[] = {"d_inner", "d_state",    "d_conv",
                                       "headdim", "ngroups", "chunk_size"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        int64_t v;
        HYB_TRY(H_->json_int(o, keys[i], 1, 0, &v));
        if (v <= 0 || v > MAX_DIM)
            return H_->json_error(o, keys[i], "must be in [1, %d], got %lld", MAX_DIM,
                                  (long long)v);
        HYB_TRY(H_->toml_int(t, keys[i], v));
    }
    double eps;
    HYB_TRY(H_->json_float(o, "norm_eps", 0, 1e-5, &eps));
    return H_->toml_float(t, "norm_eps", eps);
}

static const hyb_mixer_desc M2_DESC = {
    HYB_PL_DESC_REQUIRED(m2),
    .kernels[HYB_DEV_CUDA] = {m2_forward_cuda, m2_backward_cuda, m2_decode_cuda},
    .name = "mamba2",
    .version = "0.1.0",
    .description = "Mamba-2 SSD (chunked scalar-decay state space dual, gated RMSNorm; MIL init "
                   "from mha)",
    .hf_prefix = "mixer",
    .init_params = m2_init_params,
    .state_snapshot = NULL, /* fixed-size state: the host's memcpy is exact */
    .state_restore = NULL,
    .init_from = m2_init_from,
    .hf_layer_type = NULL,
    .hf_export = m2_hf_export,
    .hf_import = m2_hf_import,
};

HYB_PL_ENTRY(m2_host, M2_DESC)
