/* examples/plugin/retention.c: `retention`, an example third-party mixer plugin for hyb, written
 * from PLUGINS.md alone and built out of tree (examples/plugin/CMakeLists.txt): it needs only the
 * public headers in core/include/hyb and never links libhyb.
 *
 * RetNet's multi-scale retention (Sun et al. 2023, "Retentive Network"; torchscale's
 * MultiScaleRetention without the xPos/RoPE rotation): multi-head linear attention with a fixed
 * exponential decay per head, an RMS group norm per head and a swish output gate.
 *
 *   q, k, v, g = x Wq^T, x Wk^T, x Wv^T, x Wg^T     per head h: q_t, k_t [dk], v_t [dv]
 *   o_t = s sum_{j<=t} gamma_h^(t-j) (q_t . k_j) v_j   s = dk^-1/2, gamma_h = 1 - 2^(-5-h)
 *   n_t = RMSNorm(o_t) * w_h                        per head over dv, eps = the model's norm_eps
 *   y_t = Wo (swish(g_t) * n_t)                     swish(g) = g sigmoid(g)
 *
 * Forward and backward use the parallel form (per head the [T, T] decay-masked score matrix);
 * decode uses the recurrent form with an O(1) state per head: S_t = gamma S_{t-1} + k_t^T v_t
 * ([dk, dv]), o_t = s q_t S_t. A prefill continuing after p tokens adds gamma^(t+1) s q_t S_p.
 *
 * TOML keys of [mixers.<x>] (type = "retention"):
 *   n_heads    H (default d_model / 64)
 *   head_dim   dk, query/key width per head (default d_model / n_heads)
 *   value_dim  dv, value width per head (default head_dim)
 *   type, symbol  read by the layer map, accepted here
 *
 * Parameters (HF-style names below hf_prefix "retention", weights [out, in]):
 *   0 q_proj.weight [H*dk, D]   1 k_proj.weight [H*dk, D]   2 v_proj.weight [H*dv, D]
 *   3 g_proj.weight [H*dv, D]   4 group_norm.weight [H*dv]  5 out_proj.weight [D, H*dv]
 * Init (by the host, from the declarations): weights N(0, 0.02) (HF initializer_range),
 * group_norm.weight ones (no weight decay).
 *
 * Decode state of one sequence: S [H, dk, dv] f32, whatever the context (max_ctx is ignored);
 * snapshot/restore copy it whole. saved (forward -> backward): a 64-byte header (magic, B, T:
 * backward refuses a saved forward of another shape), then Q, K [B*T, H*dk], V, G, O
 * [B*T, H*dv] (O before the group norm), R [B*T, H] (the norm's 1/rms).
 *
 * Every GEMM goes through a->be->sgemm with its status checked; scratch comes from a->be->alloc.
 * The element-wise loops (decay mask, norm, gate) run on the CPU: these are CPU kernels. Kept
 * simple on purpose: one head at a time (the GEMMs thread inside), and the parallel form's [T, T]
 * scores per head, so memory grows as T^2 (RetNet's chunkwise form would bound it for long
 * prompts: parallel inside chunks, the recurrent state across them).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "hyb/common.h" /* hyb_status values and HYB_TRY; never its functions (libhyb is not linked) */
#include "hyb/plugin.h"

/* plugins/common/be_call.h's HYB_BE_TRY: pass a failed backend call's status up */
#define BE_TRY(call)                                                                               \
    do {                                                                                           \
        int be_rc_ = (call);                                                                       \
        if (be_rc_ != 0) return be_rc_;                                                            \
    } while (0)

/* return body(m, a, scratch), with a scratch block of n floats from the call's backend that is
 * freed after it (the *_body functions return early through BE_TRY: one place frees) */
#define RETURN_WITH_SCRATCH(body, m, a, n)                                                         \
    do {                                                                                           \
        float *scr_ = (a)->be->alloc((a)->be, (n) * sizeof(float));                                \
        if (!scr_) return HYB_ERR_NOMEM;                                                           \
        int rc_ = body(m, a, scr_);                                                                \
        (a)->be->free((a)->be, scr_);                                                              \
        return rc_;                                                                                \
    } while (0)

static const hyb_host *H_;

enum { WQ = 0, WK, WV, WG, GN, WO, N_PARAMS };

typedef struct retention {
    int D, H, dk, dv, layer;
    float eps;
    double log_gamma[256]; /* [H] log(1 - 2^(-5-h)) */
} retention;

/* ---- config, parameters, state ----------------------------------------------------------------*/

static const char *const KEYS[] = {"type", "symbol", "n_heads", "head_dim", "value_dim", NULL};

/* the integer `key` of the [mixers] table; `def` when it is absent or there is no table */
static int cfg_int_or(const hyb_cfg_table *cfg, const char *key, int64_t def, int64_t *out) {
    *out = def;
    return cfg ? H_->cfg_int(cfg, key, def, out) : HYB_OK;
}

static int ret_create(const hyb_model_dims *dims, const hyb_cfg_table *cfg, void **self) {
    *self = NULL;
    int D = dims->d_model;
    int64_t nh = D % 64 == 0 ? D / 64 : 0, dk = 0, dv = 0;
    if (!cfg && nh == 0) /* no table to point at: H->error, not H->cfg_error */
        return H_->error(HYB_ERR_ARG,
                         "retention (layer %d): no [mixers] table and d_model = %d is not a "
                         "multiple of 64; give n_heads",
                         dims->layer, D);
    if (cfg) {
        HYB_TRY(H_->cfg_check_keys(cfg, KEYS));
        HYB_TRY(H_->cfg_int(cfg, "n_heads", nh, &nh));
    }
    if (nh < 1 || nh > 256)
        return H_->cfg_error(cfg, "n_heads",
                             "retention (layer %d): n_heads must be in [1, 256], got %lld (the "
                             "default d_model / 64 needs d_model %% 64 == 0; d_model = %d)",
                             dims->layer, (long long)nh, D);
    int64_t def_dk = D % nh == 0 ? D / nh : 0;
    HYB_TRY(cfg_int_or(cfg, "head_dim", def_dk, &dk));
    if (dk < 1 || dk > 1024)
        return H_->cfg_error(cfg, "head_dim",
                             "retention (layer %d): head_dim must be in [1, 1024], got %lld "
                             "(the default d_model / n_heads needs n_heads to divide d_model)",
                             dims->layer, (long long)dk);
    HYB_TRY(cfg_int_or(cfg, "value_dim", dk, &dv));
    if (dv < 1 || dv > 1024)
        return H_->cfg_error(cfg, "value_dim",
                             "retention (layer %d): value_dim must be in [1, 1024], got %lld",
                             dims->layer, (long long)dv);
    retention *m = H_->alloc(sizeof *m);
    if (!m) return HYB_ERR_NOMEM;
    *m = (retention){.D = D,
                     .H = (int)nh,
                     .dk = (int)dk,
                     .dv = (int)dv,
                     .layer = dims->layer,
                     .eps = dims->norm_eps};
    for (int h = 0; h < m->H; h++)
        m->log_gamma[h] = log1p(-ldexp(1.0, -5 - h));
    *self = m;
    return HYB_OK;
}

static void ret_destroy(void *self) {
    H_->free(self);
}

static int ret_describe(void *self, char *buf, size_t n) {
    retention *m = self;
    snprintf(buf, n, "retention H=%d dk=%d dv=%d gamma=1-2^(-5-h)", m->H, m->dk, m->dv);
    return HYB_OK;
}

static int ret_n_params(void *self) {
    return N_PARAMS;
}

static int ret_param_decl(void *self, int i, hyb_param_decl *d) {
    retention *m = self;
    static const char *const names[N_PARAMS] = {"q_proj.weight",     "k_proj.weight",
                                                "v_proj.weight",     "g_proj.weight",
                                                "group_norm.weight", "out_proj.weight"};
    int64_t qk = (int64_t)m->H * m->dk, vd = (int64_t)m->H * m->dv;
    int64_t out[N_PARAMS] = {qk, qk, vd, vd, vd, m->D},
            in[N_PARAMS] = {m->D, m->D, m->D, m->D, 0, vd};
    if (i < 0 || i >= N_PARAMS)
        return H_->error(HYB_ERR_ARG, "retention: param_decl index %d out of range", i);
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", names[i]);
    d->ndim = i == GN ? 1 : 2;
    d->shape[0] = out[i];
    d->shape[1] = in[i];
    d->init = i == GN ? HYB_INIT_ONES : HYB_INIT_NORMAL;
    d->init_a = i == GN ? 0.0f : 0.02f;
    d->no_decay = i == GN;
    return HYB_OK;
}

/* The header of `saved`: which forward filled it (64 bytes, so the floats stay aligned). */
#define RET_SAVED_MAGIC 0x52455431u /* "RET1" */
typedef struct ret_saved_hdr {
    uint32_t magic;
    int32_t B, T;
    uint8_t pad[52];
} ret_saved_hdr;

/* header, then Q, K [BT, QK], V, G, O [BT, VD], R [BT, H] */
static size_t ret_saved_bytes(void *self, int B, int T) {
    retention *m = self;
    size_t bt = (size_t)B * T;
    return sizeof(ret_saved_hdr) +
           bt * (2 * (size_t)m->H * m->dk + 3 * (size_t)m->H * m->dv + m->H) * sizeof(float);
}

static size_t ret_state_bytes(void *self, int max_ctx) {
    retention *m = self;
    return (size_t)m->H * m->dk * m->dv * sizeof(float); /* S [H, dk, dv] */
}

static int64_t ret_state_snapshot(void *self, const hyb_backend *be, const void *state, int pos,
                                  int max_ctx, void *dst) {
    retention *m = self;
    if (pos < 0 || pos > max_ctx)
        return H_->error(HYB_ERR_ARG, "retention (layer %d): snapshot of %d tokens from a state of %d",
                         m->layer, pos, max_ctx);
    size_t n = ret_state_bytes(self, max_ctx);
    if (dst) BE_TRY(be->copy(be, dst, state, n));
    return (int64_t)n;
}

static int ret_state_restore(void *self, const hyb_backend *be, void *state, const void *src,
                             int pos, int max_ctx) {
    retention *m = self;
    if (pos < 0 || pos > max_ctx)
        return H_->error(HYB_ERR_ARG, "retention (layer %d): restore of %d tokens into a state of %d",
                         m->layer, pos, max_ctx);
    return be->copy(be, state, src, ret_state_bytes(self, max_ctx));
}

/* ---- shared pieces of forward, backward and decode ------------------------------------------- */

/* P [T, T] (row t = query, column j = key) <- scale * gamma^(t-j) * P for j <= t, 0 above */
static void decay_mask(float *P, int T, double log_gamma, float scale) {
    for (int t = 0; t < T; t++)
        for (int j = 0; j < T; j++)
            P[(size_t)t * T + j] =
                j <= t ? P[(size_t)t * T + j] * scale * (float)exp((t - j) * log_gamma) : 0.0f;
}

/* q, k, v, g = x W^T for `rows` rows: x [rows, D] -> Q, K [rows, QK], V, G [rows, VD] */
static int project_in(const retention *m, const hyb_backend *be, const float *const *p,
                      const float *x, int rows, float *Q, float *K, float *V, float *G) {
    int D = m->D, QK = m->H * m->dk, VD = m->H * m->dv;
    BE_TRY(be->sgemm(be, 0, 1, rows, QK, D, 1.0f, x, D, p[WQ], D, 0.0f, Q, QK));
    BE_TRY(be->sgemm(be, 0, 1, rows, QK, D, 1.0f, x, D, p[WK], D, 0.0f, K, QK));
    BE_TRY(be->sgemm(be, 0, 1, rows, VD, D, 1.0f, x, D, p[WV], D, 0.0f, V, VD));
    BE_TRY(be->sgemm(be, 0, 1, rows, VD, D, 1.0f, x, D, p[WG], D, 0.0f, G, VD));
    return HYB_OK;
}

/* Per row and head: Z = swish(G) * RMSNorm(O) * w, R = 1/rms. O, G, Z [rows, VD], R [rows, H] */
static void norm_gate(const retention *m, const float *O, const float *G, const float *w, int rows,
                      float *Z, float *R) {
    int dv = m->dv, VD = m->H * dv;
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < m->H; h++) {
            const float *o = O + (size_t)r * VD + h * dv, *g = G + (size_t)r * VD + h * dv;
            double ss = 0;
            for (int i = 0; i < dv; i++)
                ss += (double)o[i] * o[i];
            float rstd = (float)(1.0 / sqrt(ss / dv + m->eps));
            R[(size_t)r * m->H + h] = rstd;
            for (int i = 0; i < dv; i++) {
                float sw = g[i] / (1.0f + expf(-g[i]));
                Z[(size_t)r * VD + h * dv + i] = sw * o[i] * rstd * w[h * dv + i];
            }
        }
}

/* ---- forward (parallel form) ------------------------------------------------------------------*/

static int forward_body(const retention *m, const hyb_mixer_fwd *a, float *scr) {
    const hyb_backend *be = a->be;
    const float *const *p = a->params;
    const int B = a->B, T = a->T, H = m->H, dk = m->dk, dv = m->dv;
    const int QK = H * dk, VD = H * dv, BT = B * T;
    const float s = 1.0f / sqrtf((float)dk);
    /* what backward needs goes to `saved` when there is one, else to the front of scr */
    if (a->saved) { /* a CPU kernel: `saved` is host memory, the header is written in place */
        ret_saved_hdr *h = a->saved;
        memset(h, 0, sizeof *h);
        h->magic = RET_SAVED_MAGIC;
        h->B = B;
        h->T = T;
    }
    float *Q = a->saved ? (float *)((ret_saved_hdr *)a->saved + 1) : scr; /* [BT, QK] */
    float *K = Q + (size_t)BT * QK;                      /* [BT, QK] */
    float *V = K + (size_t)BT * QK;                      /* [BT, VD] */
    float *G = V + (size_t)BT * VD;                      /* [BT, VD] gate pre-activation */
    float *O = G + (size_t)BT * VD;                      /* [BT, VD] retention output, pre-norm */
    float *R = O + (size_t)BT * VD;                      /* [BT, H] 1/rms of each head's O row */
    float *P = scr + (size_t)BT * (2 * QK + 3 * VD + H); /* [T, T] one head's scores */
    float *tmp = P + (size_t)T * T;                      /* [T, dv] q S_prev (continued prefill) */
    float *Kw = tmp + (size_t)T * dv;                    /* [T, dk] decayed keys for the state */
    float *Z = Kw + (size_t)T * dk;                      /* [BT, VD] gated, normed output */

    BE_TRY(project_in(m, be, p, a->x, BT, Q, K, V, G));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const double lg = m->log_gamma[h];
            const float *q = Q + (size_t)b * T * QK + h * dk, *k = K + (size_t)b * T * QK + h * dk;
            const float *v = V + (size_t)b * T * VD + h * dv;
            float *o = O + (size_t)b * T * VD + h * dv;
            /* P = s * decay ⊙ (q k^T), o = P v: rows of one head are strided by QK / VD */
            BE_TRY(be->sgemm(be, 0, 1, T, T, dk, 1.0f, q, QK, k, QK, 0.0f, P, T));
            decay_mask(P, T, lg, s);
            BE_TRY(be->sgemm(be, 0, 0, T, dv, T, 1.0f, P, T, v, VD, 0.0f, o, VD));
            if (!a->states) continue;
            /* prefill: continue the state of the p0 tokens before, then leave it after T more */
            const int p0 = a->pos ? a->pos[b] : 0;
            float *S = (float *)a->states[b] + (size_t)h * dk * dv; /* [dk, dv] */
            if (p0 > 0) {                                           /* o_t += gamma^(t+1) s q_t S */
                BE_TRY(be->sgemm(be, 0, 0, T, dv, dk, s, q, QK, S, dv, 0.0f, tmp, dv));
                for (int t = 0; t < T; t++)
                    for (int i = 0; i < dv; i++)
                        o[(size_t)t * VD + i] += (float)exp((t + 1) * lg) * tmp[(size_t)t * dv + i];
            }
            /* S = gamma^T S + sum_j gamma^(T-1-j) k_j^T v_j   (a fresh state when p0 == 0) */
            for (int j = 0; j < T; j++)
                for (int i = 0; i < dk; i++)
                    Kw[(size_t)j * dk + i] = (float)exp((T - 1 - j) * lg) * k[(size_t)j * QK + i];
            float beta = p0 > 0 ? (float)exp(T * lg) : 0.0f;
            BE_TRY(be->sgemm(be, 1, 0, dk, dv, T, 1.0f, Kw, dk, v, VD, beta, S, dv));
        }
    norm_gate(m, O, G, p[GN], BT, Z, R);
    BE_TRY(be->sgemm(be, 0, 1, BT, m->D, VD, 1.0f, Z, VD, p[WO], VD, 0.0f, a->y, m->D));
    return HYB_OK;
}

static int ret_forward(void *self, const hyb_mixer_fwd *a) {
    retention *m = self;
    if (a->pos && !a->states)
        return H_->error(HYB_ERR_ARG, "retention (layer %d): pos given without states", m->layer);
    for (int b = 0; a->states && b < a->B; b++) {
        int p0 = a->pos ? a->pos[b] : 0;
        if (p0 < 0 || p0 + a->T > a->max_ctx)
            return H_->error(
                HYB_ERR_ARG,
                "retention (layer %d): sequence %d: %d + %d tokens exceed max_ctx = %d", m->layer,
                b, p0, a->T, a->max_ctx);
        if (p0 > 0 && a->saved)
            return H_->error(HYB_ERR_UNSUPPORTED,
                             "retention (layer %d): no backward for a continued prefill (pos %d)",
                             m->layer, p0);
    }
    const size_t BT = (size_t)a->B * a->T, QK = (size_t)m->H * m->dk, VD = (size_t)m->H * m->dv;
    /* scratch: Q K V G O R (unused when they go to `saved`), P [T,T], tmp [T,dv], Kw [T,dk],
     * Z [BT,VD]; forward_body carves it */
    size_t n = BT * (2 * QK + 3 * VD + m->H) + (size_t)a->T * (a->T + m->dv + m->dk) + BT * VD;
    RETURN_WITH_SCRATCH(forward_body, m, a, n);
}

/* ---- backward -------------------------------------------------------------------------------- */

static int backward_body(const retention *m, const hyb_mixer_bwd *a, float *scr) {
    const hyb_backend *be = a->be;
    const float *const *p = a->params;
    float *const *gr = a->grads;
    const int B = a->B, T = a->T, H = m->H, dk = m->dk, dv = m->dv, D = m->D;
    const int QK = H * dk, VD = H * dv, BT = B * T;
    const float s = 1.0f / sqrtf((float)dk);
    const float *Q = (const float *)((const ret_saved_hdr *)a->saved + 1);
    const float *K = Q + (size_t)BT * QK, *V = K + (size_t)BT * QK;
    const float *G = V + (size_t)BT * VD, *O = G + (size_t)BT * VD, *R = O + (size_t)BT * VD;
    float *Z = scr;                   /* [BT, VD] gated output (recomputed) */
    float *dZ = Z + (size_t)BT * VD;  /* [BT, VD] */
    float *dO = dZ + (size_t)BT * VD; /* [BT, VD] */
    float *dG = dO + (size_t)BT * VD; /* [BT, VD] */
    float *dV = dG + (size_t)BT * VD; /* [BT, VD] */
    float *dQ = dV + (size_t)BT * VD; /* [BT, QK] */
    float *dK = dQ + (size_t)BT * QK; /* [BT, QK] */
    float *Rr = dK + (size_t)BT * QK; /* [BT, H] */
    float *P = Rr + (size_t)BT * H;   /* [T, T] */
    float *dP = P + (size_t)T * T;    /* [T, T] */

    /* out_proj: dWo += dy^T Z, dZ = dy Wo */
    norm_gate(m, O, G, p[GN], BT, Z, Rr);
    BE_TRY(be->sgemm(be, 1, 0, D, VD, BT, 1.0f, a->dy, D, Z, VD, 1.0f, gr[WO], VD));
    BE_TRY(be->sgemm(be, 0, 0, BT, VD, D, 1.0f, a->dy, D, p[WO], VD, 0.0f, dZ, VD));
    /* gate and group norm, per row and head: z = swish(g) * o * r * w */
    for (int r = 0; r < BT; r++)
        for (int h = 0; h < H; h++) {
            const size_t off = (size_t)r * VD + h * dv;
            const float rstd = R[(size_t)r * H + h], *w = p[GN] + h * dv;
            double dot = 0; /* sum_i (dn_i w_i) o_i */
            for (int i = 0; i < dv; i++) {
                float g = G[off + i], sg = 1.0f / (1.0f + expf(-g)), o = O[off + i];
                float dn = dZ[off + i] * g * sg; /* d(normed) */
                dG[off + i] = dZ[off + i] * o * rstd * w[i] * sg * (1.0f + g * (1.0f - sg));
                gr[GN][h * dv + i] += dn * o * rstd;
                dot += (double)dn * w[i] * o;
            }
            for (int i = 0; i < dv; i++) {
                float g = G[off + i], sg = 1.0f / (1.0f + expf(-g)), o = O[off + i];
                float u = dZ[off + i] * g * sg * w[i];
                dO[off + i] = rstd * u - o * rstd * rstd * rstd * (float)(dot / dv);
            }
        }
    /* retention, per sequence and head: o = P v with P = s * decay ⊙ (q k^T) */
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const size_t oq = (size_t)b * T * QK + h * dk, ov = (size_t)b * T * VD + h * dv;
            BE_TRY(be->sgemm(be, 0, 1, T, T, dk, 1.0f, Q + oq, QK, K + oq, QK, 0.0f, P, T));
            decay_mask(P, T, m->log_gamma[h], s);
            BE_TRY(be->sgemm(be, 1, 0, T, dv, T, 1.0f, P, T, dO + ov, VD, 0.0f, dV + ov, VD));
            BE_TRY(be->sgemm(be, 0, 1, T, T, dv, 1.0f, dO + ov, VD, V + ov, VD, 0.0f, dP, T));
            decay_mask(dP, T, m->log_gamma[h], s); /* d(q k^T) */
            BE_TRY(be->sgemm(be, 0, 0, T, dk, T, 1.0f, dP, T, K + oq, QK, 0.0f, dQ + oq, QK));
            BE_TRY(be->sgemm(be, 1, 0, T, dk, T, 1.0f, dP, T, Q + oq, QK, 0.0f, dK + oq, QK));
        }
    /* input projections: dx = dQ Wq + dK Wk + dV Wv + dG Wg, dW += d^T x */
    const float *dproj[4] = {dQ, dK, dV, dG};
    const int width[4] = {QK, QK, VD, VD}, which[4] = {WQ, WK, WV, WG};
    for (int i = 0; i < 4; i++) {
        BE_TRY(be->sgemm(be, 0, 0, BT, D, width[i], 1.0f, dproj[i], width[i], p[which[i]], D,
                         i == 0 ? 0.0f : 1.0f, a->dx, D));
        BE_TRY(be->sgemm(be, 1, 0, width[i], D, BT, 1.0f, dproj[i], width[i], a->x, D, 1.0f,
                         gr[which[i]], D));
    }
    return HYB_OK;
}

static int ret_backward(void *self, const hyb_mixer_bwd *a) {
    retention *m = self;
    const ret_saved_hdr *h = a->saved;
    if (!h || h->magic != RET_SAVED_MAGIC || h->B != a->B || h->T != a->T)
        return H_->error(HYB_ERR_ARG,
                         "retention (layer %d): backward [B=%d, T=%d] without a matching saved "
                         "forward",
                         m->layer, a->B, a->T);
    const size_t BT = (size_t)a->B * a->T, QK = (size_t)m->H * m->dk, VD = (size_t)m->H * m->dv;
    size_t n = BT * (5 * VD + 2 * QK + m->H) + 2 * (size_t)a->T * a->T; /* see backward_body */
    RETURN_WITH_SCRATCH(backward_body, m, a, n);
}

/* ---- decode (recurrent form) ----------------------------------------------------------------- */

static int decode_body(const retention *m, const hyb_mixer_dec *a, float *scr) {
    const hyb_backend *be = a->be;
    const float *const *p = a->params;
    const int n = a->n, H = m->H, dk = m->dk, dv = m->dv, QK = H * dk, VD = H * dv;
    const float s = 1.0f / sqrtf((float)dk);
    float *Q = scr, *K = Q + (size_t)n * QK;                /* [n, QK] */
    float *V = K + (size_t)n * QK, *G = V + (size_t)n * VD; /* [n, VD] */
    float *O = G + (size_t)n * VD, *Z = O + (size_t)n * VD; /* [n, VD] */
    float *R = Z + (size_t)n * VD;                          /* [n, H] */

    BE_TRY(project_in(m, be, p, a->x, n, Q, K, V, G));
    for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            float *S = (float *)a->states[i] + (size_t)h * dk * dv; /* [dk, dv] */
            const float *q = Q + (size_t)i * QK + h * dk, *k = K + (size_t)i * QK + h * dk;
            /* S = gamma S + k^T v (a rank-1 GEMM; a fresh state at pos 0), o = s q S */
            float beta = a->pos[i] > 0 ? (float)exp(m->log_gamma[h]) : 0.0f;
            BE_TRY(be->sgemm(be, 1, 0, dk, dv, 1, 1.0f, k, dk, V + (size_t)i * VD + h * dv, dv,
                             beta, S, dv));
            BE_TRY(be->sgemm(be, 0, 0, 1, dv, dk, s, q, dk, S, dv, 0.0f,
                             O + (size_t)i * VD + h * dv, dv));
        }
    norm_gate(m, O, G, p[GN], n, Z, R);
    BE_TRY(be->sgemm(be, 0, 1, n, m->D, VD, 1.0f, Z, VD, p[WO], VD, 0.0f, a->y, m->D));
    return HYB_OK;
}

static int ret_decode(void *self, const hyb_mixer_dec *a) {
    retention *m = self;
    for (int i = 0; i < a->n; i++)
        if (a->pos[i] < 0 || a->pos[i] >= a->max_ctx)
            return H_->error(HYB_ERR_ARG, "retention (layer %d): decode at pos %d, max_ctx = %d",
                             m->layer, a->pos[i], a->max_ctx);
    size_t n = (size_t)a->n * (2 * (size_t)m->H * m->dk + 4 * (size_t)m->H * m->dv + m->H);
    RETURN_WITH_SCRATCH(decode_body, m, a, n);
}

/* ---- descriptor ------------------------------------------------------------------------------*/

static const hyb_mixer_desc DESC = {
    .abi_version = HYB_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(hyb_mixer_desc),
    .name = "retention",
    .version = "0.1.0",
    .description = "RetNet multi-scale retention (fixed decay per head, group norm, swish gate); "
                   "example third-party plugin",
    .hf_prefix = "retention",
    .create = ret_create,
    .destroy = ret_destroy,
    .describe = ret_describe,
    .n_params = ret_n_params,
    .param_decl = ret_param_decl,
    .saved_bytes = ret_saved_bytes,
    .state_bytes = ret_state_bytes,
    .kernels[HYB_DEV_CPU] = {ret_forward, ret_backward, ret_decode},
    .state_snapshot = ret_state_snapshot,
    .state_restore = ret_state_restore,
};

HYB_PLUGIN_EXPORT const hyb_mixer_desc *hyb_plugin_entry(const hyb_host *host) {
    H_ = host; /* used only after the host accepted DESC's version */
    return &DESC;
}
