/* plugins/mamba1/mamba1.c: the `mamba1` mixer plugin: descriptor, TOML config, parameters,
 * initialisation (random and MIL from `mha`), decode state. The math (forward, backward, decode)
 * is in mamba1_scan.c (CPU) and mamba1_cuda.c + mamba1.cu (CUDA); shapes and layouts are in
 * mamba1.h, shared by both devices (a saved block or a state is the same bytes on either).
 *
 * Devices: kernels[HYB_DEV_CPU] (OpenMP, mamba1_scan.c) and kernels[HYB_DEV_CUDA]: the GEMMs
 * through be->sgemm, everything else in NVRTC kernels (mamba1.cu, compiled per d_state with
 * -DD_STATE): conv1d forward / backward (weights, input) / decode step, the selective scan with one
 * thread per (sequence, channel, time chunk) holding the channel's d_state states in registers:
 * chunk-local scans, a carry over the chunk starts (the state saved at each chunk start, as on the
 * CPU), then each chunk from its start; backward by a reverse scan per chunk that recomputes the
 * chunk's states from its saved start, the adjoint dh entering each chunk carried the same way (its
 * recurrence needs no states); one fused decode kernel (conv window shift, scan step, D skip, gate)
 * on the state in place. Channel sums (dB, dC) through shared memory in fixed order, batch and
 * chunk sums (dA_log, D, biases) in separate reductions: no atomics at test sizes, results
 * independent of the thread order. The CUDA kernels refuse, with HYB_ERR_UNSUPPORTED naming the op
 * and the shape: d_state > 64, and in backward an x/B group (d_state * repeat channels) whose block
 * would need over 1024 threads or 48 KiB of shared memory (2 d_state (threads + 1) floats). Tested
 * against the CPU on emulated CUDA (test_mixers, test_mamba1 with HYB_CUDA_EMULATE=1).
 *
 * The mixer is Apriel-H1's "m2" (SPEC.md section 3): Mamba-1 selective-scan math with GQA-shaped
 * projections, for one token u [D]:
 *   z, x, B, C = split(in_proj(u), [Di, Dx, Dx, Di])
 *   delta = dt_proj(dt_in_proj(u))                      (Linear with bias b_dt)
 *   x, B repeated per x/B group to Di channels / nC heads; C per head
 *   x = silu(causal_depthwise_conv1d(x_rep) + conv1d.bias)
 *   dt = softplus(delta + b_dt)    (double_dt_bias = true; softplus(delta) when false)
 *   h[d,n] = exp(dt[d] A[d,n]) h[d,n] + dt[d] B[n] x[d],   A = -exp(A_log)
 *   y[d] = sum_n h[d,n] C[n] + D[d] x[d];   out = out_proj(y * silu(z))
 *
 * TOML keys of [mixers.<name>] (type = "mamba1"); every value must be >= 1:
 *   d_inner         Di (default d_model)
 *   d_xb            Dx (default d_inner: no grouping, repeat 1)
 *   d_state         N (default 16); Di % N == 0, Dx % N == 0, (Di/N) % (Dx/N) == 0
 *   dt_rank         R (default ceil(d_model / 16), Mamba's "auto")
 *   d_conv          K, in [1, 64] (default 4)
 *   double_dt_bias  add dt_proj.bias a second time inside the softplus (default true, as the
 *                   released Apriel-H1 weights expect)
 *   chunk           time chunk of the scan for training (default 64): the forward saves the scan
 *                   state at every chunk start, the backward recomputes the states inside one chunk
 *   type, symbol    read by the layer map, accepted here
 * With no table at all every key takes its default.
 *
 * HF config.json (hf_layer_type "m2"): the Apriel-H1 `ssm_cfg` object, shared by every mamba1
 * layer (they must agree): d_state, d_xb (null on import: d_model), d_inner (null on import:
 * expand * d_model, expand defaulting to 2 as in the HF Mamba2 module), n_qk_heads (written as
 * d_inner / d_state, the "m2" C heads: the HF hybrid cache reads it for every SSM layer and
 * asserts that it divides d_inner; ignored on import), dt_rank ("auto" on import:
 * ceil(d_model / 16)), d_conv, and the constants of the HF Mamba module (expand 1,
 * conv_bias true, bias false, dt_proj_bias true, repeat_kv_before_conv true, activation silu,
 * the dt init keys). apriel_h "m2" adds dt_proj.bias twice, so double_dt_bias = false is
 * refused there; the hyb_hybrid format writes it as ssm_cfg.double_dt_bias. Not in llama configs.
 *
 * Initialisation (SPEC.md section 4's table; "Linear default" is PyTorch's
 * kaiming_uniform(a = sqrt 5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))):
 *   in_proj.weight U(+-D^-1/2), dt_in_proj.weight U(+-D^-1/2), dt_proj.weight U(+-R^-1/2),
 *   dt_proj.bias = softplus^-1(dt), dt = max(exp(U(log 1e-3, log 1e-1)), 1e-4),
 *   conv1d.weight U(+-K^-1/2) (fan_in = K for a depthwise conv), conv1d.bias 0,
 *   A_log[d, n] = log(n + 1), D = 1, out_proj.weight U(+-Di^-1/2).
 * No weight decay on dt_proj.bias, conv1d.bias, A_log, D.
 *
 * init_from (MIL, SPEC.md section 4) from an `mha` mixer of the same layer: every parameter is
 * first drawn again as above from the given seed, then in_proj rows x <- v_proj.weight,
 * rows B <- k_proj.weight, rows C <- q_proj.weight, out_proj <- o_proj.weight. The teacher's
 * q/k are used as they are: no RoPE rotation and no 1/sqrt(head_dim) scale in the scan.
 * Shapes must line up exactly (d_inner = n_heads * head_dim, d_xb = n_kv_heads * head_dim);
 * q/k/v biases of a biased mha have no counterpart here and are dropped (a warning says so).
 */
#include "mamba1.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const hyb_host *m1_host;
#define H_ m1_host

static const char *const M1_KEYS[] = {"type",    "symbol", "d_inner",        "d_xb",  "d_state",
                                      "dt_rank", "d_conv", "double_dt_bias", "chunk", NULL};

#define MAX_DIM (1 << 20)

static int m1_create(const hyb_model_dims *dims, const hyb_cfg_table *cfg, void **self) {
    *self = NULL;
    const int D = dims->d_model, L = dims->layer;
    if (D <= 0)
        return H_->error(HYB_ERR_ARG, "mamba1 (layer %d): d_model must be > 0, got %d", L, D);
    int64_t Di = D, Dx, N = 16, R = (D + 15) / 16, K = 4, chunk = 64;
    int dbl = 1;
#define CFG_ERR(key, fmt, ...) H_->cfg_error(cfg, key, "mamba1 (layer %d): " fmt, L, __VA_ARGS__)
#define GET_POS(key, var) HYB_TRY(hyb_ssm_cfg_pos(H_, cfg, "mamba1", L, key, &var, MAX_DIM))
    if (cfg) HYB_TRY(H_->cfg_check_keys(cfg, M1_KEYS));
    GET_POS("d_inner", Di);
    Dx = Di;
    GET_POS("d_xb", Dx);
    GET_POS("d_state", N);
    GET_POS("dt_rank", R);
    GET_POS("d_conv", K);
    GET_POS("chunk", chunk);
    HYB_TRY(H_->cfg_bool(cfg, "double_dt_bias", 1, &dbl));
#undef GET_POS
    HYB_TRY(hyb_ssm_cfg_conv_state(H_, cfg, "mamba1", L, K, N));
    if (Di % N != 0)
        return CFG_ERR("d_inner", "d_inner = %lld must be a multiple of d_state = %lld",
                       (long long)Di, (long long)N);
    if (Dx % N != 0)
        return CFG_ERR("d_xb", "d_xb = %lld must be a multiple of d_state = %lld", (long long)Dx,
                       (long long)N);
    if ((Di / N) % (Dx / N) != 0)
        return CFG_ERR("d_xb",
                       "the %lld C heads (d_inner / d_state) must be a multiple of the %lld x/B "
                       "heads (d_xb / d_state): d_inner = %lld, d_xb = %lld, d_state = %lld",
                       (long long)(Di / N), (long long)(Dx / N), (long long)Di, (long long)Dx,
                       (long long)N);
#undef CFG_ERR
    m1 *m = H_->alloc(sizeof *m);
    if (!m) return HYB_ERR_NOMEM;
    m->D = D;
    m->Di = (int)Di;
    m->Dx = (int)Dx;
    m->N = (int)N;
    m->R = (int)R;
    m->K = (int)K;
    m->layer = L;
    m->nC = (int)(Di / N);
    m->nX = (int)(Dx / N);
    m->rep = m->nC / m->nX;
    m->P = (int)(2 * Di + 2 * Dx);
    m->dbl = dbl;
    m->chunk = (int)chunk;
    *self = m;
    return HYB_OK;
}

static void m1_destroy(void *self) {
    H_->free(self);
}

static int m1_describe(void *self, char *buf, size_t n) {
    m1 *m = self;
    snprintf(buf, n, "mamba1 d_inner=%d d_xb=%d d_state=%d dt_rank=%d d_conv=%d repeat=%d%s", m->Di,
             m->Dx, m->N, m->R, m->K, m->rep, m->dbl ? " double_dt_bias" : "");
    return HYB_OK;
}

static int m1_n_params(void *self) {
    (void)self;
    return M1_NPARAMS;
}

static int m1_param_decl(void *self, int i, hyb_param_decl *d) {
    m1 *m = self;
    const float bD = 1.0f / sqrtf((float)m->D), bR = 1.0f / sqrtf((float)m->R),
                bK = 1.0f / sqrtf((float)m->K), bDi = 1.0f / sqrtf((float)m->Di);
    switch (i) {
    case M1_WIN:
        hyb_pl_decl(d, "in_proj.weight", 2, m->P, m->D, 0, HYB_INIT_UNIFORM, bD, 0);
        break;
    case M1_WDTIN:
        hyb_pl_decl(d, "dt_in_proj.weight", 2, m->R, m->D, 0, HYB_INIT_UNIFORM, bD, 0);
        break;
    case M1_WDT:
        hyb_pl_decl(d, "dt_proj.weight", 2, m->Di, m->R, 0, HYB_INIT_UNIFORM, bR, 0);
        break;
    case M1_BDT:
        hyb_pl_decl(d, "dt_proj.bias", 1, m->Di, 0, 0, HYB_INIT_CUSTOM, 0, 1);
        break;
    case M1_CONVW:
        hyb_pl_decl(d, "conv1d.weight", 3, m->Di, 1, m->K, HYB_INIT_UNIFORM, bK, 0);
        break;
    case M1_CONVB:
        hyb_pl_decl(d, "conv1d.bias", 1, m->Di, 0, 0, HYB_INIT_ZEROS, 0, 1);
        break;
    case M1_ALOG:
        hyb_pl_decl(d, "A_log", 2, m->Di, m->N, 0, HYB_INIT_CUSTOM, 0, 1);
        break;
    case M1_DSKIP:
        hyb_pl_decl(d, "D", 1, m->Di, 0, 0, HYB_INIT_ONES, 0, 1);
        break;
    case M1_WOUT:
        hyb_pl_decl(d, "out_proj.weight", 2, m->D, m->Di, 0, HYB_INIT_UNIFORM, bDi, 0);
        break;
    default:
        return H_->error(HYB_ERR_ARG, "mamba1: param_decl index %d out of range", i);
    }
    return HYB_OK;
}

/* The two custom parameters: A_log[d, n] = log(n + 1); dt_proj.bias = softplus^-1(dt) with
 * dt = exp(U(log 1e-3, log 1e-1)) clamped to >= 1e-4 (Mamba's dt init). */
static void init_custom(const m1 *m, float *const *params, uint64_t *rng) {
    float *alog = params[M1_ALOG], *bdt = params[M1_BDT];
    for (int d = 0; d < m->Di; d++)
        for (int n = 0; n < m->N; n++)
            alog[(size_t)d * m->N + n] = (float)log((double)n + 1.0);
    H_->rng_uniform(rng, bdt, (size_t)m->Di, 0.0f, 1.0f);
    const double lo = log(1e-3), hi = log(1e-1);
    for (int d = 0; d < m->Di; d++) {
        double dt = exp((double)bdt[d] * (hi - lo) + lo);
        if (dt < 1e-4) dt = 1e-4;
        bdt[d] = (float)(dt + log(-expm1(-dt))); /* softplus(b) = dt */
    }
}

static int m1_init_params(void *self, float *const *params, uint64_t seed) {
    uint64_t rng = seed;
    init_custom(self, params, &rng);
    return HYB_OK;
}

/* Every parameter drawn again from `seed` with the distributions of the table at the top. */
static void init_all(const m1 *m, float *const *params, uint64_t seed) {
    uint64_t rng = seed;
    const float bD = 1.0f / sqrtf((float)m->D), bR = 1.0f / sqrtf((float)m->R),
                bK = 1.0f / sqrtf((float)m->K), bDi = 1.0f / sqrtf((float)m->Di);
    H_->rng_uniform(&rng, params[M1_WIN], (size_t)m->P * m->D, -bD, bD);
    H_->rng_uniform(&rng, params[M1_WDTIN], (size_t)m->R * m->D, -bD, bD);
    H_->rng_uniform(&rng, params[M1_WDT], (size_t)m->Di * m->R, -bR, bR);
    H_->rng_uniform(&rng, params[M1_CONVW], (size_t)m->Di * m->K, -bK, bK);
    memset(params[M1_CONVB], 0, (size_t)m->Di * sizeof(float));
    for (int d = 0; d < m->Di; d++)
        params[M1_DSKIP][d] = 1.0f;
    H_->rng_uniform(&rng, params[M1_WOUT], (size_t)m->D * m->Di, -bDi, bDi);
    init_custom(m, params, &rng);
}

/* MIL (SPEC.md section 4). */
static int m1_init_from(void *self, float *const *params, const hyb_mixer_src *src, uint64_t seed) {
    m1 *m = self;
    if (!src || !src->type || strcmp(src->type, "mha") != 0)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mamba1 (layer %d): cannot initialise from a '%s' mixer: only 'mha' "
                         "(MIL: attention -> mamba1) is known",
                         m->layer, src && src->type ? src->type : "(null)");
    static const char *const names[4] = {"q_proj.weight", "k_proj.weight", "v_proj.weight",
                                         "o_proj.weight"};
    const int64_t want[4][2] = {{m->Di, m->D}, {m->Dx, m->D}, {m->Dx, m->D}, {m->D, m->Di}};
    const char *what[4] = {"d_inner (C rows)", "d_xb (B rows)", "d_xb (x rows)",
                           "d_inner (out_proj columns)"};
    const float *w[4] = {NULL, NULL, NULL, NULL};
    int biased = 0;
    for (int i = 0; i < src->n_params; i++) {
        const hyb_param_decl *d = &src->decls[i];
        for (int k = 0; k < 4; k++)
            if (strcmp(d->name, names[k]) == 0) {
                if (d->ndim != 2 || d->shape[0] != want[k][0] || d->shape[1] != want[k][1])
                    return H_->error(
                        HYB_ERR_ARG,
                        "mamba1 (layer %d): MIL init from mha: %s is [%lld, %lld], this mixer "
                        "needs [%lld, %lld] for %s (set d_inner = n_heads * head_dim and "
                        "d_xb = n_kv_heads * head_dim; here d_model = %d, d_inner = %d, "
                        "d_xb = %d)",
                        m->layer, d->name, (long long)d->shape[0],
                        (long long)(d->ndim > 1 ? d->shape[1] : 0), (long long)want[k][0],
                        (long long)want[k][1], what[k], m->D, m->Di, m->Dx);
                w[k] = src->params[i];
            }
        if (strstr(d->name, ".bias")) biased = 1;
    }
    for (int k = 0; k < 4; k++)
        if (!w[k])
            return H_->error(HYB_ERR_ARG,
                             "mamba1 (layer %d): MIL init from mha: the source has no %s", m->layer,
                             names[k]);
    if (biased)
        H_->log(HYB_LOG_WARN,
                "mamba1 (layer %d): MIL init from an mha with q/k/v biases: the biases are "
                "dropped",
                m->layer);
    init_all(m, params, seed);
    const size_t row = (size_t)m->D * sizeof(float);
    float *win = params[M1_WIN];
    memcpy(win + (size_t)m->Di * m->D, w[2], (size_t)m->Dx * row);               /* x <- v */
    memcpy(win + (size_t)(m->Di + m->Dx) * m->D, w[1], (size_t)m->Dx * row);     /* B <- k */
    memcpy(win + (size_t)(m->Di + 2 * m->Dx) * m->D, w[0], (size_t)m->Di * row); /* C <- q */
    memcpy(params[M1_WOUT], w[3], (size_t)m->D * m->Di * sizeof(float));         /* o */
    return HYB_OK;
}

static size_t m1_state_bytes(void *self, int max_ctx) {
    m1 *m = self;
    (void)max_ctx; /* fixed size */
    return (size_t)m->Di * (size_t)(m->N + m->K) * sizeof(float);
}

/* ---- HF config.json ---------------------------------------------------------------------------*/

static int m1_hf_export(void *self, const char *format, hyb_json *c) {
    m1 *m = self;
    const int apriel = !strcmp(format, HYB_HF_APRIEL_H);
    if (!apriel && strcmp(format, HYB_HF_HYB_HYBRID) != 0)
        return H_->error(HYB_ERR_UNSUPPORTED, "mamba1 (layer %d): no place in an HF %s config",
                         m->layer, format);
    if (apriel && !m->dbl)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mamba1 (layer %d): double_dt_bias = false (apriel_h \"m2\" adds the "
                         "bias twice)",
                         m->layer);
    hyb_json *s;
    HYB_TRY(H_->json_set_object(c, "ssm_cfg", &s));
    HYB_TRY(H_->json_set_int(s, "d_state", m->N));
    HYB_TRY(H_->json_set_int(s, "d_xb", m->Dx));
    HYB_TRY(H_->json_set_int(s, "d_inner", m->Di));
    HYB_TRY(H_->json_set_int(s, "n_qk_heads", m->nC));
    HYB_TRY(H_->json_set_int(s, "dt_rank", m->R));
    HYB_TRY(H_->json_set_int(s, "d_conv", m->K));
    HYB_TRY(H_->json_set_int(s, "expand", 1));
    HYB_TRY(H_->json_set_bool(s, "conv_bias", 1));
    HYB_TRY(H_->json_set_bool(s, "bias", 0));
    HYB_TRY(H_->json_set_bool(s, "dt_proj_bias", 1));
    HYB_TRY(H_->json_set_bool(s, "repeat_kv_before_conv", 1));
    HYB_TRY(H_->json_set_string(s, "activation", "silu"));
    HYB_TRY(H_->json_set_float(s, "dt_min", 0.001));
    HYB_TRY(H_->json_set_float(s, "dt_max", 0.1));
    HYB_TRY(H_->json_set_string(s, "dt_init", "random"));
    HYB_TRY(H_->json_set_float(s, "dt_scale", 1.0));
    HYB_TRY(H_->json_set_float(s, "dt_init_floor", 0.0001));
    if (!apriel) HYB_TRY(H_->json_set_bool(s, "double_dt_bias", m->dbl));
    return HYB_OK;
}

static int m1_hf_import(const hyb_model_dims *dims, const char *format, const hyb_json *c,
                        hyb_toml *t) {
    const int D = dims->d_model;
    const hyb_json *s;
    HYB_TRY(H_->json_object(c, "ssm_cfg", 1, &s));
    int64_t Di, Dx, N, R, K;
    if (H_->json_type(s, "d_inner") == HYB_JSON_NULL) { /* the HF code: expand * d_model */
        int64_t expand;
        HYB_TRY(H_->json_int(s, "expand", 0, 2, &expand));
        if (expand <= 0 || expand > 64)
            return H_->json_error(s, "expand", "must be in [1, 64], got %lld", (long long)expand);
        Di = expand * D;
    } else {
        HYB_TRY(H_->json_int(s, "d_inner", 1, 0, &Di));
    }
    HYB_TRY(H_->json_int(s, "d_state", 1, 0, &N));
    HYB_TRY(H_->json_int(s, "d_conv", 1, 0, &K));
    /* d_xb: null means d_model; dt_rank: "auto" means ceil(d_model / 16) (the HF code) */
    if (H_->json_type(s, "d_xb") == HYB_JSON_ABSENT)
        return H_->json_error(s, "d_xb", "is missing (null for d_model)");
    HYB_TRY(H_->json_int(s, "d_xb", 0, D, &Dx));
    const char *rs = NULL;
    if (H_->json_type(s, "dt_rank") == HYB_JSON_STRING) {
        HYB_TRY(H_->json_string(s, "dt_rank", 1, NULL, &rs));
        if (strcmp(rs, "auto") != 0)
            return H_->json_error(s, "dt_rank", "must be an integer or \"auto\", got \"%s\"", rs);
        R = (D + 15) / 16;
    } else {
        HYB_TRY(H_->json_int(s, "dt_rank", 1, 0, &R));
    }
    static const struct {
        const char *key;
        int want;
    } flags[] = {{"conv_bias", 1}, {"bias", 0}, {"dt_proj_bias", 1}, {"repeat_kv_before_conv", 1}};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        int v;
        HYB_TRY(H_->json_bool(s, flags[i].key, 0, flags[i].want, &v));
        if (v != flags[i].want)
            return H_->json_error(s, flags[i].key, "%s is not supported (hyb's mamba1 needs %s)",
                                  v ? "true" : "false", flags[i].want ? "true" : "false");
    }
    const int64_t dv[] = {Di, N, K, Dx, R};
    static const char *const dn[] = {"d_inner", "d_state", "d_conv", "d_xb", "dt_rank"};
    for (int i = 0; i < 5; i++)
        if (dv[i] <= 0 || dv[i] > MAX_DIM)
            return H_->json_error(s, dn[i], "must be in [1, %d], got %lld", MAX_DIM,
                                  (long long)dv[i]);
    int dbl = 1;
    if (!strcmp(format, HYB_HF_HYB_HYBRID)) HYB_TRY(H_->json_bool(s, "double_dt_bias", 0, 1, &dbl));
    HYB_TRY(H_->toml_int(t, "d_inner", Di));
    HYB_TRY(H_->toml_int(t, "d_xb", Dx));
    HYB_TRY(H_->toml_int(t, "d_state", N));
    HYB_TRY(H_->toml_int(t, "dt_rank", R));
    HYB_TRY(H_->toml_int(t, "d_conv", K));
    HYB_TRY(H_->toml_bool(t, "double_dt_bias", dbl));
    return HYB_OK;
}

static const hyb_mixer_desc M1_DESC = {
    HYB_PL_DESC_REQUIRED(m1),
    .kernels[HYB_DEV_CUDA] = {m1_forward_cuda, m1_backward_cuda, m1_decode_cuda},
    .name = "mamba1",
    .version = "1.0.0",
    .description = "Mamba-1 selective scan with GQA-shaped x/B (Apriel-H1 \"m2\", MIL init "
                   "from mha)",
    .hf_prefix = "mixer",
    .init_params = m1_init_params,
    .state_snapshot = NULL, /* fixed-size state: the host's memcpy is exact */
    .state_restore = NULL,
    .init_from = m1_init_from,
    .hf_layer_type = "m2",
    .hf_export = m1_hf_export,
    .hf_import = m1_hf_import,
};

HYB_PL_ENTRY(m1_host, M1_DESC)
