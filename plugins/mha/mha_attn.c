/* plugins/mha/mha_attn.c: forward, backward and decode of the `mha` mixer on the CPU (f32 math;
 * the KV cache in the kvstate's type, f32, f16 or q8_0: rows converted on store, and widened to
 * f32 a tile at a time on load, mha_kv.h).
 *
 *   q = RoPE(x Wq^T + bq), k = RoPE(x Wk^T + bk), v = x Wv^T + bv        per head, GQA group
 *   o_h[t] = sum_{j <= pos+t} softmax_j(q_h[t] . k_g[j] / sqrt(hd)) v_g[j], g = h / (H / KV)
 *   y = o Wo^T
 *
 * Softmax in f32 with the row maximum subtracted; forward saves the log-sum-exp of each row so
 * backward recomputes the probabilities exactly instead of storing [T, T] per head.
 * All GEMMs and RoPE go through the backend of the call (a->be): projections over all B*T rows
 * (threaded by the backend). Prefill/training
 * attention works on blocks of QBLK queries per (sequence, head): one OpenMP region per call runs
 * the blocks as tasks (forward: sequence x head x block; backward: sequence x KV head, which owns
 * its dK/dV rows), and the CPU backend's sgemm runs single-threaded inside a region, so the result
 * does not depend on the thread count (one region per layer, not one per block: regions cost a
 * barrier each, which is ruinous on a loaded machine). Decode splits the keys into tasks
 * (sequence x KV head x chunk of keys, all query heads of a KV head together; see its section).
 * Every softmax exp is exp_nonpos (vectorisable; forward, backward recomputation and decode).
 */
#include <math.h>
#include <string.h>

#include "../common/be_call.h"
#include "../common/plugin_util.h"
#include "mha.h"
#include "mha_kv.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define H_ mha_host
#define SAVED_MAGIC MHA_SAVED_MAGIC
#define QBLK 64 /* query rows per attention block */
#define PKT 256 /* prefill from a compressed cache: keys widened to f32 per tile */

/* e^x for x <= 0 (scores minus their maximum), vectorisable (no libm call): Cephes expf's range
 * reduction and polynomial, relative error ~2e-7; 0 below -87 (where expf is denormal). Also
 * right for the small positive arguments rounding can give (backward's s - lse). */
static inline float exp_nonpos(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float t = xc * 1.44269504088896341f;
    const float n = (t + 12582912.0f) - 12582912.0f; /* round to nearest (|t| < 2^22) */
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    const float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    union {
        int32_t i;
        float f;
    } sc;
    sc.i = ((int32_t)n + 127) * (1 << 23);
    const float y = p * sc.f;
    return x < -87.0f ? 0.0f : y;
}

/* s[0..n) <- exp(s - max), returning the sum; *max_out = the max. The shared core of the
 * prefill/training row softmax and the decode's per-head softmax (inlined into each of their
 * target clones, so it is vectorised for the clone's ISA). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline float
exp_shifted_sum(float *s, int n, float *max_out) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int j = 0; j < n; j++)
        m = s[j] > m ? s[j] : m;
    float l = 0.0f;
#pragma omp simd reduction(+ : l)
    for (int j = 0; j < n; j++) {
        const float e = exp_nonpos(s[j] - m);
        s[j] = e;
        l += e;
    }
    *max_out = m;
    return l;
}

/* Causal row softmax of a block of scores, in place: row r of s (stride nk) holds the scaled
 * scores of query p_first + r against keys 0 .. nk - 1; keys 0 .. p_first + r are kept,
 * normalised, and the rest set to 0; lse[r] = log-sum-exp of the kept scores. exp_nonpos, the
 * decode's exp, also in backward's recomputation (bwd_rows), so both use the same function.
 * Built for AVX-512, AVX2+FMA and baseline x86-64 like attend_chunk below. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void
softmax_rows(float *s, int qb, int nk, int p_first, float *lse) {
    for (int r = 0; r < qb; r++) {
        float *sr = s + (size_t)r * nk;
        const int n = p_first + r + 1;
        float m;
        const float l = exp_shifted_sum(sr, n, &m);
        const float inv = 1.0f / l;
#pragma omp simd
        for (int j = 0; j < n; j++)
            sr[j] *= inv;
        for (int j = n; j < nk; j++)
            sr[j] = 0.0f;
        lse[r] = m + logf(l);
    }
}

/* Queries [qb] (row r at q + r*ldq, absolute position p_first + r) against keys/values
 * 0 .. p_first + qb - 1 (row j at k + j*ldk, v + j*ldk), causal. s: [qb * (p_first + qb)]
 * scratch. out row r at o + r*ldo; lse[r] = log-sum-exp of row r's scaled scores.
 * Called from inside the forward's parallel region: the host's sgemm then runs on the calling
 * thread (core/backend/cpu/cpu_gemm.c), so the result does not depend on the thread count. */
static int attend_block(const hyb_backend *be, const float *q, size_t ldq, const float *k,
                        const float *v, size_t ldk, int p_first, int qb, int hd, float scale,
                        float *s, float *o, size_t ldo, float *lse) {
    const int nk = p_first + qb;
    HYB_BE_TRY(be->sgemm(be, 0, 1, qb, nk, hd, scale, q, (int)ldq, k, (int)ldk, 0.0f, s, nk));
    softmax_rows(s, qb, nk, p_first, lse);
    return be->sgemm(be, 0, 0, qb, hd, nk, 1.0f, s, nk, v, (int)ldk, 0.0f, o, (int)ldo);
}

/* attend_block against a cache stored as kv (not f32): keys and values of the cache's head
 * (rows rowb bytes apart from kc, vc) widened PKT rows at a time into tile [PKT, hd] (per-thread
 * scratch), the products by sgemm per tile; the same softmax. */
static int attend_block_kv(const hyb_backend *be, const float *q, size_t ldq, const char *kc,
                           const char *vc, size_t rowb, int kv, int p_first, int qb, int hd,
                           float scale, float *s, float *tile, float *o, size_t ldo, float *lse) {
    const int nk = p_first + qb;
    for (int j0 = 0; j0 < nk; j0 += PKT) {
        const int n = nk - j0 < PKT ? nk - j0 : PKT;
        mha_kv_load(tile, kc + (size_t)j0 * rowb, rowb, n, hd, kv);
        HYB_BE_TRY(be->sgemm(be, 0, 1, qb, n, hd, scale, q, (int)ldq, tile, hd, 0.0f, s + j0, nk));
    }
    softmax_rows(s, qb, nk, p_first, lse);
    for (int j0 = 0; j0 < nk; j0 += PKT) {
        const int n = nk - j0 < PKT ? nk - j0 : PKT;
        mha_kv_load(tile, vc + (size_t)j0 * rowb, rowb, n, hd, kv);
        HYB_BE_TRY(be->sgemm(be, 0, 0, qb, hd, n, 1.0f, s + j0, nk, tile, hd, j0 ? 1.0f : 0.0f, o,
                             (int)ldo));
    }
    return HYB_OK;
}

/* Backward's recomputation for one block (queries i0 .. i0 + qb - 1, keys 0 .. nk - 1): on
 * entry p holds the scaled scores and dp = dO V^T; on exit p = exp(s - lse) (causal, 0 above the
 * diagonal) and dp = p (dp - dr). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void
bwd_rows(float *p, float *dp, int qb, int nk, int i0, const float *lse, const float *dr) {
    for (int r = 0; r < qb; r++) {
        float *pr = p + (size_t)r * nk, *dpr = dp + (size_t)r * nk;
        const int n = i0 + r + 1; /* causal: keys 0 .. i0 + r */
        const float lr = lse[r], d = dr[r];
#pragma omp simd
        for (int j = 0; j < n; j++) {
            const float e = exp_nonpos(pr[j] - lr);
            pr[j] = e;
            dpr[j] = e * (dpr[j] - d);
        }
        for (int j = n; j < nk; j++)
            pr[j] = dpr[j] = 0.0f;
    }
}

/* dtype of parameter i of a forward or decode call (ABI 3: NULL param_dtypes = all f32) */
#define PDT(a, i) ((a)->param_dtypes ? (a)->param_dtypes[i] : (int)HYB_F32)

/* Y[rows, out] = X[rows, in] W^T (+ b); W f32, or GGUF blocks of dtype wt (a frozen projection
 * of a model loaded from a quantized GGUF: hyb_param_decl.quant_ok, ABI 3) through be->qmatmul */
static int linear(const hyb_backend *be, const float *X, const float *W, int wt, const float *b,
                  float *Y, int rows, int in, int out) {
    if (wt != HYB_F32) {
        if (!be->qmatmul)
            return H_->error(HYB_ERR_UNSUPPORTED,
                             "mha: a projection is quantized (dtype %d) and backend %s has no "
                             "quantized matmul",
                             wt, be->name);
        HYB_BE_TRY(be->qmatmul(be, wt, W, X, Y, rows, out, in));
    } else {
        HYB_BE_TRY(be->sgemm(be, 0, 1, rows, out, in, 1.0f, X, in, W, in, 0.0f, Y, out));
    }
    if (b)
        for (int r = 0; r < rows; r++)
            hyb_pl_axpy(Y + (size_t)r * out, 1.0f, b, out);
    return HYB_OK;
}

/* Append T tokens at position p0 to one sequence's KV cache (head-major, rows of type kv, see
 * mha.h), converted on store: Kn, Vn: [T, KV*hd] f32 rows (K after RoPE). */
static void cache_put(void *state, int max_ctx, int KV, int hd, int p0, int T, const float *Kn,
                      const float *Vn, int kv) {
    const size_t rowb = mha_kv_row_bytes(hd, kv), kd = (size_t)KV * hd;
    char *kc = state, *vc = kc + (size_t)KV * max_ctx * rowb;
    for (int g = 0; g < KV; g++) {
        char *kg = kc + ((size_t)g * max_ctx + p0) * rowb,
             *vg = vc + ((size_t)g * max_ctx + p0) * rowb;
        for (int t = 0; t < T; t++) {
            mha_kv_store(kg + (size_t)t * rowb, Kn + t * kd + (size_t)g * hd, hd, kv);
            mha_kv_store(vg + (size_t)t * rowb, Vn + t * kd + (size_t)g * hd, hd, kv);
        }
    }
}

/* the KV type of a call: one this CPU code stores */
static int check_kv(const mha *m, int kv) {
    if (kv == HYB_KV_F32 || kv == HYB_KV_F16 || kv == HYB_KV_Q8_0) return HYB_OK;
    return H_->error(HYB_ERR_UNSUPPORTED,
                     "mha (layer %d): kv_cache type %d is not one of f32, f16, q8_0", m->layer,
                     kv);
}

size_t mha_saved_bytes(void *self, int B, int T) {
    mha *m = self;
    size_t BT = (size_t)B * T, qd = (size_t)m->H * m->hd, kd = (size_t)m->KV * m->hd;
    return sizeof(hyb_pl_saved_hdr) +
           sizeof(float) * (BT * (2 * qd + 2 * kd) + (size_t)B * m->H * T);
}

/* ---- forward / prefill ------------------------------------------------------------------------
 */

/* The checks of a forward call both devices make (same messages): B, T, each sequence's start
 * against the states' capacity, no backward through a continued prefill. *p_max: the largest
 * start. */
int mha_check_fwd(const mha *m, const hyb_mixer_fwd *a, int *p_max) {
    const int B = a->B, T = a->T;
    if (B <= 0 || T <= 0)
        return H_->error(HYB_ERR_ARG, "mha (layer %d): forward with B = %d, T = %d", m->layer, B,
                         T);
    *p_max = 0;
    for (int b = 0; b < B; b++) {
        int p0 = a->pos ? a->pos[b] : 0;
        if (p0 < 0 || (p0 > 0 && !a->states))
            return H_->error(HYB_ERR_ARG, "mha (layer %d): forward with pos[%d] = %d %s", m->layer,
                             b, p0, p0 < 0 ? "(negative)" : "but no states to continue from");
        if (a->states && (int64_t)p0 + T > a->max_ctx)
            return H_->error(HYB_ERR_ARG,
                             "mha (layer %d): sequence %d: pos %d + T %d exceeds the "
                             "state capacity max_ctx = %d",
                             m->layer, b, p0, T, a->max_ctx);
        if (p0 > 0 && a->saved)
            return H_->error(
                HYB_ERR_UNSUPPORTED,
                "mha (layer %d): backward through a continued "
                "prefill (pos[%d] = %d > 0) is not supported; train on whole sequences",
                m->layer, b, p0);
        if (p0 > *p_max) *p_max = p0;
    }
    return HYB_OK;
}

/* The projections' backward, the same on every device: dW_{q,k,v} += d{Q,K,V}^T x and
 * dx = dQ Wq + dK Wk + dV Wv (written). dQ: [B*T, H*hd], dK, dV: [B*T, KV*hd]. */
int mha_proj_bwd(const mha *m, const hyb_mixer_bwd *a, const float *dQ, const float *dK,
                 const float *dV) {
    const hyb_backend *be = a->be;
    const int D = m->D, BT = a->B * a->T, qd = m->H * m->hd, kd = m->KV * m->hd;
    const float *const *P = a->params;
    float *const *G = a->grads;
    const float *d[3] = {dQ, dK, dV};
    static const int W[3] = {MHA_WQ, MHA_WK, MHA_WV};
    int rc = HYB_OK;
    for (int i = 0; i < 3 && rc == HYB_OK; i++) {
        const int n = i ? kd : qd;
        rc = be->sgemm(be, 1, 0, n, D, BT, 1.0f, d[i], n, a->x, D, 1.0f, G[W[i]], D);
        if (rc == HYB_OK)
            rc = be->sgemm(be, 0, 0, BT, D, n, 1.0f, d[i], n, P[W[i]], D, i ? 1.0f : 0.0f, a->dx,
                           D);
    }
    return rc;
}

int mha_forward(void *self, const hyb_mixer_fwd *a) {
    mha *m = self;
    const hyb_backend *be = a->be;
    const int B = a->B, T = a->T, D = m->D, H = m->H, KV = m->KV, hd = m->hd;
    int p_max = 0;
    HYB_TRY(mha_check_fwd(m, a, &p_max));
    const int kv = a->states ? a->kv : HYB_KV_F32;
    HYB_TRY(check_kv(m, kv));
    const size_t BT = (size_t)B * T, qd = (size_t)H * hd, kd = (size_t)KV * hd;
    const size_t rowb = mha_kv_row_bytes(hd, kv);
    const float *const *P = a->params;
    const int bias = m->bias;

    /* Q, K, V, O, LSE: in `saved` when training, else a temporary block. */
    void *tmp;
    float *Q = hyb_pl_saved_begin(a->saved, &tmp, be, mha_saved_bytes(m, B, T), SAVED_MAGIC, B, T);
    if (!Q) return HYB_ERR_NOMEM;
    float *K, *V, *O, *LSE;
    K = Q + BT * qd;
    V = K + BT * kd;
    O = V + BT * kd;
    LSE = O + BT * qd;

    /* scores scratch: one [QBLK, keys] block per thread (the attention runs in one parallel
     * region, below), and a [PKT, hd] tile after it when the cache is compressed */
    const int nthr = hyb_pl_max_threads();
    size_t n_keys_max = (size_t)p_max + T,
           nscr = (size_t)QBLK * n_keys_max + (kv != HYB_KV_F32 ? (size_t)PKT * hd : 0);
    float *scratch = be->alloc(be, sizeof(float) * ((size_t)nthr * nscr + BT));
    if (!scratch) {
        be->free(be, tmp);
        return HYB_ERR_NOMEM;
    }
    int32_t *posbuf = (int32_t *)(scratch + (size_t)nthr * nscr);

    for (int b = 0; b < B; b++) {
        int p0 = a->pos ? a->pos[b] : 0;
        for (int t = 0; t < T; t++)
            posbuf[(size_t)b * T + t] = p0 + t;
    }
    /* rows carry their own positions: RoPE over one batch of BT rows */
    int rc = linear(be, a->x, P[MHA_WQ], PDT(a, MHA_WQ), bias ? P[MHA_BQ] : NULL, Q, (int)BT,
                    D, (int)qd);
    if (rc == HYB_OK)
        rc = linear(be, a->x, P[MHA_WK], PDT(a, MHA_WK), bias ? P[MHA_BK] : NULL, K, (int)BT,
                    D, (int)kd);
    if (rc == HYB_OK)
        rc = linear(be, a->x, P[MHA_WV], PDT(a, MHA_WV), bias ? P[MHA_BV] : NULL, V, (int)BT,
                    D, (int)kd);
    if (rc == HYB_OK) rc = be->rope(be, Q, 1, (int)BT, H, hd, posbuf, m->theta, 0);
    if (rc == HYB_OK) rc = be->rope(be, K, 1, (int)BT, KV, hd, posbuf, m->theta, 0);
    if (rc != HYB_OK) goto done;

    if (a->states)
        for (int b = 0; b < B; b++)
            cache_put(a->states[b], a->max_ctx, KV, hd, a->pos ? a->pos[b] : 0, T,
                      K + (size_t)b * T * kd, V + (size_t)b * T * kd, kv);

    /* One parallel region over the tasks (sequence b, head h, block of QBLK queries); each task
     * writes only its own rows of O and LSE, and its sgemm calls run on the calling thread, so
     * the result does not depend on the schedule or the thread count. Tasks go from the last
     * block (most keys) to the first, so the dynamic schedule ends on small tasks. */
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = H / KV;
    const int nblk = (T + QBLK - 1) / QBLK;
    const long nbh = (long)B * H, ntask = nbh * nblk;
    /* multiply-adds of the score products; a region from 2e5 on (as the decode), which also
     * puts test_mha's T = 150 HF reference case (3.6e5) through the parallel path */
    double work = 0;
    for (int b = 0; b < B; b++)
        work += (double)H * hd * T * ((a->pos ? a->pos[b] : 0) + 0.5 * T);
    const int par = nthr > 1 && ntask > 1 && work > 2e5;
    int perr = HYB_OK;
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (long t = 0; t < ntask; t++) {
        const int blk = nblk - 1 - (int)(t / nbh), b = (int)(t % nbh) / H, h = (int)(t % nbh) % H;
        const int p0 = a->pos ? a->pos[b] : 0, g = h / group, i0 = blk * QBLK;
        const int qb = T - i0 < QBLK ? T - i0 : QBLK;
        const size_t row0 = (size_t)b * T + i0;
        float *scr = scratch + (size_t)hyb_pl_thread_id() * nscr;
        if (kv != HYB_KV_F32) { /* a compressed cache: widened a tile at a time */
            const char *kc = (const char *)a->states[b] + (size_t)g * a->max_ctx * rowb;
            const char *vc = kc + (size_t)KV * a->max_ctx * rowb;
            HYB_BE_TRY_PAR(perr, attend_block_kv(be, Q + row0 * qd + (size_t)h * hd, qd, kc, vc,
                                                 rowb, kv, p0 + i0, qb, hd, scale, scr,
                                                 scr + (size_t)QBLK * n_keys_max,
                                                 O + row0 * qd + (size_t)h * hd, qd,
                                                 LSE + ((size_t)b * H + h) * T + i0));
            continue;
        }
        /* keys/values of KV head g: head-major in the cache (row stride hd), else rows of the
         * fresh K/V (stride kd) */
        const float *kb, *vb;
        size_t ldk, hstride;
        if (a->states) {
            kb = (const float *)a->states[b];
            vb = kb + (size_t)KV * a->max_ctx * hd;
            ldk = (size_t)hd;
            hstride = (size_t)a->max_ctx * hd;
        } else {
            kb = K + (size_t)b * T * kd;
            vb = V + (size_t)b * T * kd;
            ldk = kd;
            hstride = (size_t)hd;
        }
        HYB_BE_TRY_PAR(perr, attend_block(be, Q + row0 * qd + (size_t)h * hd, qd,
                                          kb + (size_t)g * hstride, vb + (size_t)g * hstride, ldk,
                                          p0 + i0, qb, hd, scale, scr,
                                          O + row0 * qd + (size_t)h * hd, qd,
                                          LSE + ((size_t)b * H + h) * T + i0));
    }
    rc = perr;
    if (rc == HYB_OK)
        rc = linear(be, O, P[MHA_WO], PDT(a, MHA_WO), NULL, a->y, (int)BT, (int)qd, D);
done:
    be->free(be, scratch);
    be->free(be, tmp);
    return rc;
}

/* ---- backward ---------------------------------------------------------------------------------
 */

int mha_backward(void *self, const hyb_mixer_bwd *a) {
    mha *m = self;
    const hyb_backend *be = a->be;
    int rc = HYB_OK;
    const int B = a->B, T = a->T, D = m->D, H = m->H, KV = m->KV, hd = m->hd;
    const float *Q = hyb_pl_saved_data(a->saved, SAVED_MAGIC, B, T);
    if (!Q)
        return H_->error(HYB_ERR_ARG,
                         "mha (layer %d): backward [B=%d, T=%d] without a matching "
                         "saved forward",
                         m->layer, B, T);
    const size_t BT = (size_t)B * T, qd = (size_t)H * hd, kd = (size_t)KV * hd;
    const float *K = Q + BT * qd, *V = K + BT * kd, *O = V + BT * kd, *LSE = O + BT * qd;
    const float *const *P = a->params;
    float *const *G = a->grads;

    /* dO [BT, qd], Dr [B, H, T] (rowsum dO*O), dQ [BT, qd], dK, dV [BT, kd], positions */
    size_t nfl = BT * qd * 2 + (size_t)B * H * T + BT * kd * 2 + BT;
    float *buf = be->alloc(be, nfl * sizeof(float));
    if (!buf) return HYB_ERR_NOMEM;
    /* dQ, dK, dV accumulate over heads and blocks: be->alloc memory is not zeroed */
    rc = be->memset0(be, buf, nfl * sizeof(float));
    float *dO = buf, *Dr = dO + BT * qd, *dQ = Dr + (size_t)B * H * T, *dK = dQ + BT * qd,
          *dV = dK + BT * kd;
    int32_t *posbuf = (int32_t *)(dV + BT * kd);

    /* y = O Wo^T: dO = dy Wo, dWo += dy^T O */
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, (int)qd, D, 1.0f, a->dy, D, P[MHA_WO], (int)qd, 0.0f, dO,
                       (int)qd);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, D, (int)qd, (int)BT, 1.0f, a->dy, D, O, (int)qd, 1.0f, G[MHA_WO],
                       (int)qd);

    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                size_t off = ((size_t)b * T + t) * qd + (size_t)h * hd;
                Dr[((size_t)b * H + h) * T + t] = hyb_pl_dot(dO + off, O + off, hd);
            }

    /* Per (b, head, block of QBLK queries), keys 0 .. last query of the block:
     *   S = scale Q K^T, P = exp(S - lse) (causal), dP = dO V^T, dS = P (dP - D)
     *   dQ += scale dS K, dK += scale dS^T Q, dV += P^T dO           (all through sgemm) */
    /* Tasks (sequence b, KV head g) in parallel: a task owns the dK, dV rows of its KV head and
     * the dQ rows of its query heads, and runs its heads and blocks in the serial order, so every
     * sum is accumulated in the same order whatever the schedule (deterministic). The sgemm calls
     * inside run on the calling thread. Scratch: P and dP of one block per thread. */
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = H / KV;
    const int nthr = hyb_pl_max_threads();
    const size_t pstride = 2 * (size_t)QBLK * T;
    float *Pm_all = be->alloc(be, sizeof(float) * pstride * (size_t)nthr);
    if (!Pm_all) {
        be->free(be, buf);
        return HYB_ERR_NOMEM;
    }
    const long ntask = (long)B * KV;
    const double work = (double)B * H * hd * T * (0.5 * T); /* multiply-adds per product */
    const int par = nthr > 1 && ntask > 1 && work > 2e5;
    int perr = HYB_OK;
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (long task = 0; task < ntask; task++) {
        const int b = (int)(task / KV), g = (int)(task % KV);
        float *Pm = Pm_all + (size_t)hyb_pl_thread_id() * pstride, *dP = Pm + (size_t)QBLK * T;
        const float *kb = K + (size_t)b * T * kd, *vb = V + (size_t)b * T * kd;
        float *dkb = dK + (size_t)b * T * kd, *dvb = dV + (size_t)b * T * kd;
        const size_t go = (size_t)g * hd;
        for (int h = g * group; h < (g + 1) * group; h++) {
            const size_t ho = (size_t)h * hd;
            for (int i0 = 0; i0 < T; i0 += QBLK) {
                const int qb = T - i0 < QBLK ? T - i0 : QBLK, nk = i0 + qb;
                const size_t row0 = (size_t)b * T + i0;
                const float *lse = LSE + ((size_t)b * H + h) * T + i0;
                const float *dr = Dr + ((size_t)b * H + h) * T + i0;
                HYB_BE_TRY_PAR(perr, be->sgemm(be, 0, 1, qb, nk, hd, scale, Q + row0 * qd + ho,
                                               (int)qd, kb + go, (int)kd, 0.0f, Pm, nk));
                HYB_BE_TRY_PAR(perr, be->sgemm(be, 0, 1, qb, nk, hd, 1.0f, dO + row0 * qd + ho,
                                               (int)qd, vb + go, (int)kd, 0.0f, dP, nk));
                bwd_rows(Pm, dP, qb, nk, i0, lse, dr);
                HYB_BE_TRY_PAR(perr, be->sgemm(be, 0, 0, qb, hd, nk, scale, dP, nk, kb + go,
                                               (int)kd, 1.0f, dQ + row0 * qd + ho, (int)qd));
                HYB_BE_TRY_PAR(perr,
                               be->sgemm(be, 1, 0, nk, hd, qb, scale, dP, nk, Q + row0 * qd + ho,
                                         (int)qd, 1.0f, dkb + go, (int)kd));
                HYB_BE_TRY_PAR(perr,
                               be->sgemm(be, 1, 0, nk, hd, qb, 1.0f, Pm, nk, dO + row0 * qd + ho,
                                         (int)qd, 1.0f, dvb + go, (int)kd));
            }
        }
    }
    be->free(be, Pm_all);
    if (rc == HYB_OK) rc = perr;

    /* RoPE is a rotation: its backward is the inverse rotation. */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            posbuf[(size_t)b * T + t] = t;
    if (rc == HYB_OK) rc = be->rope(be, dQ, 1, (int)BT, H, hd, posbuf, m->theta, 1);
    if (rc == HYB_OK) rc = be->rope(be, dK, 1, (int)BT, KV, hd, posbuf, m->theta, 1);

    if (m->bias) {
        for (size_t r = 0; r < BT; r++) {
            hyb_pl_axpy(G[MHA_BQ], 1.0f, dQ + r * qd, (int)qd);
            hyb_pl_axpy(G[MHA_BK], 1.0f, dK + r * kd, (int)kd);
            hyb_pl_axpy(G[MHA_BV], 1.0f, dV + r * kd, (int)kd);
        }
    }
    /* projections: dW += d^T x, dx = sum d W */
    if (rc == HYB_OK) rc = mha_proj_bwd(m, a, dQ, dK, dV);
    be->free(be, buf);
    return rc;
}

/* ---- decode -----------------------------------------------------------------------------------
 *
 * One new query per sequence against its whole KV cache: memory-bound (each step streams every
 * cached K and V row once). Work is split into tasks (sequence i, KV head g, chunk c of DEC_CHUNK
 * keys), run in parallel; a task serves all G = H / KV query heads of its KV head in one pass over
 * the chunk's K rows and one over its V rows (GQA: the cache is read once, not G times), and
 * leaves an unnormalised partial result (o, running max m, sum l) per head. The partials of a
 * (sequence, head) are then merged in chunk order: M = max m_c, l = sum l_c e^(m_c - M),
 * o = sum o_c e^(m_c - M) / l. The chunking depends only on the sequence's own length, so a
 * sequence's output does not depend on the batch it is decoded in or on the thread count. */

#define DEC_CHUNK 512 /* keys per decode task */

/* Scores of G query heads (q row h at q + h*hd) against nk keys (key j at k + j*ld) into
 * s[h*sld + j], scaled. Inlined into attend_chunk's target clones. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
chunk_scores(const float *q, int G, const float *k, size_t ld, int nk, int hd, float scale,
             float *s, size_t sld) {
    if (hd % 16 == 0) {
        /* 16 lane sums and a fixed tree: element-wise vector code (an `omp simd reduction`
         * here ends in a sequential 16-add chain per score, which dominated the profile) */
        for (int j = 0; j < nk; j++) {
            const float *kj = k + (size_t)j * ld;
            for (int h = 0; h < G; h++) {
                const float *qh = q + (size_t)h * hd;
                float acc[16];
#pragma omp simd
                for (int l = 0; l < 16; l++)
                    acc[l] = qh[l] * kj[l];
                for (int d = 16; d < hd; d += 16) {
#pragma omp simd
                    for (int l = 0; l < 16; l++)
                        acc[l] += qh[d + l] * kj[d + l];
                }
#pragma omp simd
                for (int l = 0; l < 8; l++)
                    acc[l] += acc[l + 8];
#pragma omp simd
                for (int l = 0; l < 4; l++)
                    acc[l] += acc[l + 4];
                s[(size_t)h * sld + j] = ((acc[0] + acc[2]) + (acc[1] + acc[3])) * scale;
            }
        }
    } else {
        for (int j = 0; j < nk; j++) {
            const float *kj = k + (size_t)j * ld;
            for (int h = 0; h < G; h++) {
                const float *qh = q + (size_t)h * hd;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int d = 0; d < hd; d++)
                    acc += qh[d] * kj[d];
                s[(size_t)h * sld + j] = acc * scale;
            }
        }
    }
}

/* part (per head hd + 2 floats, o first) o_h += sum_j p[h*sld + j] v_j over nk values (value j
 * at v + j*ld). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
chunk_accum(const float *p, size_t sld, int G, const float *v, size_t ld, int nk, int hd,
            float *part) {
    for (int j = 0; j < nk; j++) {
        const float *vj = v + (size_t)j * ld;
        for (int h = 0; h < G; h++) {
            float *oh = part + (size_t)h * (hd + 2);
            const float pj = p[(size_t)h * sld + j];
#pragma omp simd
            for (int d = 0; d < hd; d++)
                oh[d] += pj * vj[d];
        }
    }
}

#define DEC_TILE 32 /* keys widened to f32 at a time from a compressed cache (decode) */

/* One task: G query heads (q row h at q + h*hd) against nk keys of one KV head's cache (key j's
 * row at k + j*rowb bytes, value j's at v + j*rowb) stored as kv. s: [G * nk] scratch, tile:
 * [DEC_TILE * hd] scratch (a compressed cache is widened DEC_TILE rows at a time, in L1; f32 rows
 * are read in place). part: per head hd + 2 floats: o (unnormalised), m, l.
 * Built for AVX-512, AVX2+FMA and baseline x86-64 (picked at load time, like the host's GEMM). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void
attend_chunk(const float *q, int G, const char *k, const char *v, size_t rowb, int kv, int nk,
             int hd, float scale, float *s, float *tile, float *part) {
    if (kv == HYB_KV_F32)
        chunk_scores(q, G, (const float *)k, (size_t)hd, nk, hd, scale, s, (size_t)nk);
    else
        for (int j0 = 0; j0 < nk; j0 += DEC_TILE) {
            const int n = nk - j0 < DEC_TILE ? nk - j0 : DEC_TILE;
            mha_kv_load(tile, k + (size_t)j0 * rowb, rowb, n, hd, kv);
            chunk_scores(q, G, tile, (size_t)hd, n, hd, scale, s + j0, (size_t)nk);
        }
    for (int h = 0; h < G; h++) {
        float *sh = s + (size_t)h * nk, *ph = part + (size_t)h * (hd + 2);
        float m;
        const float l = exp_shifted_sum(sh, nk, &m);
        for (int d = 0; d < hd; d++)
            ph[d] = 0.0f;
        ph[hd] = m;
        ph[hd + 1] = l;
    }
    if (kv == HYB_KV_F32)
        chunk_accum(s, (size_t)nk, G, (const float *)v, (size_t)hd, nk, hd, part);
    else
        for (int j0 = 0; j0 < nk; j0 += DEC_TILE) {
            const int n = nk - j0 < DEC_TILE ? nk - j0 : DEC_TILE;
            mha_kv_load(tile, v + (size_t)j0 * rowb, rowb, n, hd, kv);
            chunk_accum(s + j0, (size_t)nk, G, tile, (size_t)hd, n, hd, part);
        }
}

/* scratch of at least `bytes` on be's device (grown, kept across calls; remade when the backend
 * changes): the decode buffer of an instance, on either device */
void *mha_dec_scratch(mha *m, const hyb_backend *be, size_t bytes) {
    if (bytes > m->dec_cap || m->dec_be != be) {
        void *p = be->alloc(be, bytes);
        if (!p) return NULL;
        if (m->dec_buf) m->dec_be->free(m->dec_be, m->dec_buf);
        m->dec_buf = p;
        m->dec_cap = bytes;
        m->dec_be = be;
    }
    return m->dec_buf;
}

/* The attention tasks [lo, hi) of a decode step (a pool chunk): task t = (sequence i, KV head g,
 * chunk c of its keys) writes its partials part[t] (merged afterwards in chunk order, so the result
 * does not depend on which thread ran what). */
typedef struct dec_job {
    const mha *m;
    const hyb_mixer_dec *a;
    const float *Q;
    float *scratch, *part;
    const size_t *t0;
    float scale;
    size_t qd, partw;
    size_t rowb, tscr; /* bytes of a cache row; floats of a thread's scratch (s, then a tile) */
    int kv;            /* the cache's hyb_kv_dtype */
} dec_job;

static int dec_tasks(void *ctx, int64_t lo, int64_t hi, int tid) {
    const dec_job *j = ctx;
    const hyb_mixer_dec *a = j->a;
    const int KV = j->m->KV, hd = j->m->hd, G = j->m->H / KV;
    const size_t *t0 = j->t0;
    for (size_t t = (size_t)lo; t < (size_t)hi; t++) {
        int i = 0;
        while (t >= t0[i + 1])
            i++;
        const size_t nch = (t0[i + 1] - t0[i]) / (size_t)KV, local = t - t0[i];
        const int g = (int)(local / nch), c = (int)(local % nch);
        const int j0 = c * DEC_CHUNK, len = a->pos[i] + 1;
        const int nk = len - j0 < DEC_CHUNK ? len - j0 : DEC_CHUNK;
        const char *kb = (const char *)a->states[i] + ((size_t)g * a->max_ctx + j0) * j->rowb;
        const char *vb = kb + (size_t)KV * a->max_ctx * j->rowb;
        float *s = j->scratch + (size_t)tid * j->tscr;
        attend_chunk(j->Q + (size_t)i * j->qd + (size_t)g * G * hd, G, kb, vb, j->rowb, j->kv, nk,
                     hd, j->scale, s, s + (size_t)G * DEC_CHUNK, j->part + t * j->partw);
    }
    return HYB_OK;
}

int mha_decode(void *self, const hyb_mixer_dec *a) {
    mha *m = self;
    const hyb_backend *be = a->be;
    int rc = HYB_OK;
    const int n = a->n, D = m->D, H = m->H, KV = m->KV, hd = m->hd, G = H / KV;
    if (n <= 0) return H_->error(HYB_ERR_ARG, "mha (layer %d): decode with n = %d", m->layer, n);
    HYB_TRY(check_kv(m, a->kv));
    const int kv = a->kv;
    const size_t qd = (size_t)H * hd, kd = (size_t)KV * hd, rowb = mha_kv_row_bytes(hd, kv);
    double work = 0;
    for (int i = 0; i < n; i++) {
        if (a->pos[i] < 0 || a->pos[i] >= a->max_ctx)
            return H_->error(HYB_ERR_ARG,
                             "mha (layer %d): decode sequence %d at pos %d: the KV cache "
                             "holds max_ctx = %d tokens",
                             m->layer, i, a->pos[i], a->max_ctx);
        work += (double)(a->pos[i] + 1);
    }
    /* tasks: sequence i owns tasks [t0[i], t0[i + 1]) = KV heads x chunks of its keys */
    size_t ntask = 0;
    for (int i = 0; i < n; i++)
        ntask += (size_t)KV * (size_t)((a->pos[i] + DEC_CHUNK) / DEC_CHUNK);
    const int nthr = hyb_pl_threads(H_);
    const size_t partw = (size_t)G * (hd + 2); /* floats of one task's partials */
    const size_t tscr = (size_t)G * DEC_CHUNK + (size_t)DEC_TILE * hd; /* per thread: s, tile */
    size_t nfl = (size_t)n * (2 * qd + 2 * kd) + ntask * partw + (size_t)nthr * tscr;
    size_t nbytes = nfl * sizeof(float) + (size_t)(n + 1) * sizeof(size_t);
    float *buf = mha_dec_scratch(m, be, nbytes);
    if (!buf) return HYB_ERR_NOMEM;
    float *Q = buf, *K = Q + (size_t)n * qd, *V = K + (size_t)n * kd, *O = V + (size_t)n * kd,
          *part = O + (size_t)n * qd, *scratch = part + ntask * partw;
    size_t *t0 = (size_t *)(scratch + (size_t)nthr * tscr);
    t0[0] = 0;
    for (int i = 0; i < n; i++)
        t0[i + 1] = t0[i] + (size_t)KV * (size_t)((a->pos[i] + DEC_CHUNK) / DEC_CHUNK);

    const float *const *P = a->params;
    if (rc == HYB_OK)
        rc = linear(be, a->x, P[MHA_WQ], PDT(a, MHA_WQ), m->bias ? P[MHA_BQ] : NULL, Q, n, D,
                    (int)qd);
    if (rc == HYB_OK)
        rc = linear(be, a->x, P[MHA_WK], PDT(a, MHA_WK), m->bias ? P[MHA_BK] : NULL, K, n, D,
                    (int)kd);
    if (rc == HYB_OK)
        rc = linear(be, a->x, P[MHA_WV], PDT(a, MHA_WV), m->bias ? P[MHA_BV] : NULL, V, n, D,
                    (int)kd);
    if (rc == HYB_OK) rc = be->rope(be, Q, 1, n, H, hd, a->pos, m->theta, 0);
    if (rc == HYB_OK) rc = be->rope(be, K, 1, n, KV, hd, a->pos, m->theta, 0);
    for (int i = 0; i < n; i++)
        cache_put(a->states[i], a->max_ctx, KV, hd, a->pos[i], 1, K + (size_t)i * kd,
                  V + (size_t)i * kd, kv);
    /* threads (hyb's pool) only when there is enough work to pay for a dispatch */
    const int par = nthr > 1 && ntask > 1 && work * H * hd > 2e5;
    dec_job job = {m, a, Q, scratch, part, t0, 1.0f / sqrtf((float)hd), qd, partw, rowb, tscr, kv};
    if (rc == HYB_OK) rc = hyb_pl_parallel_for(H_, par, (int64_t)ntask, 1, dec_tasks, &job);
    /* merge the chunks of each (sequence, head), in chunk order */
    for (int i = 0; i < n; i++) {
        const size_t nch = (t0[i + 1] - t0[i]) / (size_t)KV;
        for (int h = 0; h < H; h++) {
            const int g = h / G, hh = h % G;
            const float *p0 = part + (t0[i] + (size_t)g * nch) * partw + (size_t)hh * (hd + 2);
            float *o = O + (size_t)i * qd + (size_t)h * hd;
            float M = -INFINITY;
            for (size_t c = 0; c < nch; c++)
                M = p0[c * partw + hd] > M ? p0[c * partw + hd] : M;
            float l = 0.0f;
            for (int d = 0; d < hd; d++)
                o[d] = 0.0f;
            for (size_t c = 0; c < nch; c++) {
                const float *pc = p0 + c * partw;
                const float w = nch == 1 ? 1.0f : expf(pc[hd] - M);
                l += w * pc[hd + 1];
                for (int d = 0; d < hd; d++)
                    o[d] += w * pc[d];
            }
            const float inv = 1.0f / l;
            for (int d = 0; d < hd; d++)
                o[d] *= inv;
        }
    }
    if (rc == HYB_OK)
        rc = linear(be, O, P[MHA_WO], PDT(a, MHA_WO), NULL, a->y, n, (int)qd, D);
    return rc;
}
