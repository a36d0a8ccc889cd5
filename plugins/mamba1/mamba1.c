/* plugins/mamba1/mamba1.c: the `mamba1` mixer plugin: descriptor, TOML config, parameters,
 * initialisation (random and MIL from `mha`), decode state. The math (forward, backward, decode)
 * is in mamba1_scan.c; shapes and layouts are in mamba1.h.
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
#define GET_POS(key, var)                                                                          \
    do {                                                                                           \
        HYB_TRY(H_->cfg_int(cfg, key, var, &var));                                                 \
        if (var < 1 || var > MAX_DIM)                                                              \
            return CFG_ERR(key, "%s must be in [1, %d], got %lld", key, MAX_DIM, (long long)var);  \
    } while (0)
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
    if (K > 64) return CFG_ERR("d_conv", "d_conv must be in [1, 64], got %lld", (long long)K);
    if (N > 256) return CFG_ERR("d_state", "d_state must be in [1, 256], got %lld", (long long)N);
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

static void decl(hyb_param_decl *d, const char *name, int ndim, int64_t s0, int64_t s1, int64_t s2,
                 int init, float a, int no_decay) {
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->ndim = ndim;
    d->shape[0] = s0;
    d->shape[1] = s1;
    d->shape[2] = s2;
    d->init = init;
    d->init_a = a;
    d->no_decay = no_decay;
}

static int m1_param_decl(void *self, int i, hyb_param_decl *d) {
    m1 *m = self;
    const float bD = 1.0f / sqrtf((float)m->D), bR = 1.0f / sqrtf((float)m->R),
                bK = 1.0f / sqrtf((float)m->K), bDi = 1.0f / sqrtf((float)m->Di);
    switch (i) {
    case M1_WIN:
        decl(d, "in_proj.weight", 2, m->P, m->D, 0, HYB_INIT_UNIFORM, bD, 0);
        break;
    case M1_WDTIN:
        decl(d, "dt_in_proj.weight", 2, m->R, m->D, 0, HYB_INIT_UNIFORM, bD, 0);
        break;
    case M1_WDT:
        decl(d, "dt_proj.weight", 2, m->Di, m->R, 0, HYB_INIT_UNIFORM, bR, 0);
        break;
    case M1_BDT:
        decl(d, "dt_proj.bias", 1, m->Di, 0, 0, HYB_INIT_CUSTOM, 0, 1);
        break;
    case M1_CONVW:
        decl(d, "conv1d.weight", 3, m->Di, 1, m->K, HYB_INIT_UNIFORM, bK, 0);
        break;
    case M1_CONVB:
        decl(d, "conv1d.bias", 1, m->Di, 0, 0, HYB_INIT_ZEROS, 0, 1);
        break;
    case M1_ALOG:
        decl(d, "A_log", 2, m->Di, m->N, 0, HYB_INIT_CUSTOM, 0, 1);
        break;
    case M1_DSKIP:
        decl(d, "D", 1, m->Di, 0, 0, HYB_INIT_ONES, 0, 1);
        break;
    case M1_WOUT:
        decl(d, "out_proj.weight", 2, m->D, m->Di, 0, HYB_INIT_UNIFORM, bDi, 0);
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

static const hyb_mixer_desc M1_DESC = {
    .abi_version = HYB_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(hyb_mixer_desc),
    .name = "mamba1",
    .version = "1.0.0",
    .description = "Mamba-1 selective scan with GQA-shaped x/B (Apriel-H1 \"m2\", MIL init "
                   "from mha)",
    .hf_prefix = "mixer",
    .create = m1_create,
    .destroy = m1_destroy,
    .describe = m1_describe,
    .n_params = m1_n_params,
    .param_decl = m1_param_decl,
    .init_params = m1_init_params,
    .saved_bytes = m1_saved_bytes,

    .state_bytes = m1_state_bytes,
    .kernels[HYB_DEV_CPU] = {m1_forward, m1_backward, m1_decode},
    .state_snapshot = NULL, /* fixed-size state: the host's memcpy is exact */
    .state_restore = NULL,
    .init_from = m1_init_from,
};

HYB_PLUGIN_EXPORT const hyb_mixer_desc *hyb_plugin_entry(const hyb_host *host) {
    m1_host = host; /* used only after the host accepted M1_DESC's version */
    return &M1_DESC;
}
