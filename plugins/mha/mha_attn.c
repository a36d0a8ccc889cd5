/* plugins/mha/mha_attn.c: forward, backward and decode of the `mha` mixer on the CPU (f32).
 *
 *   q = RoPE(x Wq^T + bq), k = RoPE(x Wk^T + bk), v = x Wv^T + bv        per head, GQA group
 *   o_h[t] = sum_{j <= pos+t} softmax_j(q_h[t] . k_g[j] / sqrt(hd)) v_g[j], g = h / (H / KV)
 *   y = o Wo^T
 *
 * Softmax in f32 with the running maximum subtracted; forward saves the log-sum-exp of each row
 * so backward recomputes the probabilities exactly instead of storing [T, T] per head.
 * Projections go through host->sgemm over all B*T rows; attention runs OpenMP over (b, head).
 */
#include <math.h>
#include <string.h>

#include "mha.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define H_ mha_host
#define SAVED_MAGIC 0x31414d48u /* "HMA1" */

typedef struct saved_hdr {
    uint32_t magic;
    int32_t B, T;
    uint8_t pad[52];
} saved_hdr;

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline float dot(const float *a, const float *b, int n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static inline void axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* One query row against n keys. q: [hd]; key j at k + j*ld, value j at v + j*ld; out: [hd]
 * written; s: [n] scratch. Returns the log-sum-exp of the scaled scores. */
static float attend_row(const float *q, const float *k, const float *v, size_t ld, int n, int hd,
                        float scale, float *s, float *out) {
    float m = -INFINITY;
    for (int j = 0; j < n; j++) {
        s[j] = dot(q, k + (size_t)j * ld, hd) * scale;
        if (s[j] > m) m = s[j];
    }
    float l = 0;
    for (int j = 0; j < n; j++) {
        s[j] = expf(s[j] - m);
        l += s[j];
    }
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int j = 0; j < n; j++) axpy(out, s[j], v + (size_t)j * ld, hd);
    float inv = 1.0f / l;
    for (int i = 0; i < hd; i++) out[i] *= inv;
    return m + logf(l);
}

/* Y[rows, out] = X[rows, in] W^T (+ b) */
static void linear(const float *X, const float *W, const float *b, float *Y, int rows, int in,
                   int out) {
    H_->sgemm(0, 1, rows, out, in, 1.0f, X, in, W, in, 0.0f, Y, out);
    if (b)
        for (int r = 0; r < rows; r++) axpy(Y + (size_t)r * out, 1.0f, b, out);
}

size_t mha_saved_bytes(void *self, int B, int T) {
    mha *m = self;
    size_t BT = (size_t)B * T, qd = (size_t)m->H * m->hd, kd = (size_t)m->KV * m->hd;
    return sizeof(saved_hdr) + sizeof(float) * (BT * (2 * qd + 2 * kd) + (size_t)B * m->H * T);
}

static int check_cpu(const mha *m, int device, const char *what) {
    if (device != 0)
        return H_->error(HYB_ERR_UNSUPPORTED, "mha (layer %d): %s on device %d: this build of mha "
                         "has CPU code only", m->layer, what, device);
    return HYB_OK;
}

/* ---- forward / prefill ------------------------------------------------------------------------ */

int mha_forward(void *self, const hyb_mixer_fwd *a) {
    mha *m = self;
    HYB_TRY(check_cpu(m, a->device, "forward"));
    const int B = a->B, T = a->T, D = m->D, H = m->H, KV = m->KV, hd = m->hd;
    if (B <= 0 || T <= 0)
        return H_->error(HYB_ERR_ARG, "mha (layer %d): forward with B = %d, T = %d", m->layer, B, T);
    const size_t BT = (size_t)B * T, qd = (size_t)H * hd, kd = (size_t)KV * hd;
    int p_max = 0;
    for (int b = 0; b < B; b++) {
        int p0 = a->pos ? a->pos[b] : 0;
        if (p0 < 0 || (p0 > 0 && !a->states))
            return H_->error(HYB_ERR_ARG, "mha (layer %d): forward with pos[%d] = %d %s", m->layer,
                             b, p0, p0 < 0 ? "(negative)" : "but no states to continue from");
        if (a->states && (int64_t)p0 + T > a->max_ctx)
            return H_->error(HYB_ERR_ARG, "mha (layer %d): sequence %d: pos %d + T %d exceeds the "
                             "state capacity max_ctx = %d", m->layer, b, p0, T, a->max_ctx);
        if (p0 > 0 && a->saved)
            return H_->error(HYB_ERR_UNSUPPORTED, "mha (layer %d): backward through a continued "
                             "prefill (pos[%d] = %d > 0) is not supported; train on whole sequences",
                             m->layer, b, p0);
        if (p0 > p_max) p_max = p0;
    }
    const float *const *P = a->params;
    const int bias = m->bias;

    /* Q, K, V, O, LSE: in `saved` when training, else a temporary block. */
    float *Q, *K, *V, *O, *LSE;
    void *tmp = NULL;
    if (a->saved) {
        saved_hdr *h = a->saved;
        memset(h, 0, sizeof *h);
        h->magic = SAVED_MAGIC;
        h->B = B;
        h->T = T;
        Q = (float *)(h + 1);
    } else {
        tmp = H_->alloc(mha_saved_bytes(m, B, T));
        if (!tmp) return HYB_ERR_NOMEM;
        Q = (float *)((saved_hdr *)tmp + 1);
    }
    K = Q + BT * qd;
    V = K + BT * kd;
    O = V + BT * kd;
    LSE = O + BT * qd;

    int nthr = max_threads();
    int n_keys_max = p_max + T;
    float *scratch = H_->alloc(sizeof(float) * ((size_t)nthr * n_keys_max + BT));
    if (!scratch) {
        H_->free(tmp);
        return HYB_ERR_NOMEM;
    }
    int32_t *posbuf = (int32_t *)(scratch + (size_t)nthr * n_keys_max);

    linear(a->x, P[MHA_WQ], bias ? P[MHA_BQ] : NULL, Q, (int)BT, D, (int)qd);
    linear(a->x, P[MHA_WK], bias ? P[MHA_BK] : NULL, K, (int)BT, D, (int)kd);
    linear(a->x, P[MHA_WV], bias ? P[MHA_BV] : NULL, V, (int)BT, D, (int)kd);
    for (int b = 0; b < B; b++) {
        int p0 = a->pos ? a->pos[b] : 0;
        for (int t = 0; t < T; t++) posbuf[(size_t)b * T + t] = p0 + t;
    }
    H_->rope(Q, (int)BT, H, hd, posbuf, m->theta, 0);
    H_->rope(K, (int)BT, KV, hd, posbuf, m->theta, 0);

    if (a->states) {
        for (int b = 0; b < B; b++) {
            int p0 = a->pos ? a->pos[b] : 0;
            float *kc = a->states[b], *vc = kc + (size_t)a->max_ctx * kd;
            memcpy(kc + (size_t)p0 * kd, K + (size_t)b * T * kd, (size_t)T * kd * sizeof(float));
            memcpy(vc + (size_t)p0 * kd, V + (size_t)b * T * kd, (size_t)T * kd * sizeof(float));
        }
    }

    const float scale = 1.0f / sqrtf((float)hd);
    const int group = H / KV;
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H, g = h / group;
        int p0 = a->pos ? a->pos[b] : 0;
        const float *kb, *vb;
        if (a->states) {
            kb = (const float *)a->states[b] + (size_t)g * hd;
            vb = kb + (size_t)a->max_ctx * kd;
        } else {
            kb = K + (size_t)b * T * kd + (size_t)g * hd;
            vb = V + (size_t)b * T * kd + (size_t)g * hd;
        }
        float *s = scratch + (size_t)thread_id() * n_keys_max;
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)b * T + t;
            LSE[((size_t)b * H + h) * T + t] = attend_row(Q + row * qd + (size_t)h * hd, kb, vb, kd,
                                                          p0 + t + 1, hd, scale, s,
                                                          O + row * qd + (size_t)h * hd);
        }
    }

    linear(O, P[MHA_WO], NULL, a->y, (int)BT, (int)qd, D);
    H_->free(scratch);
    H_->free(tmp);
    return HYB_OK;
}

/* ---- backward --------------------------------------------------------------------------------- */

int mha_backward(void *self, const hyb_mixer_bwd *a) {
    mha *m = self;
    HYB_TRY(check_cpu(m, a->device, "backward"));
    const int B = a->B, T = a->T, D = m->D, H = m->H, KV = m->KV, hd = m->hd;
    const saved_hdr *hdr = a->saved;
    if (!hdr || hdr->magic != SAVED_MAGIC || hdr->B != B || hdr->T != T)
        return H_->error(HYB_ERR_ARG, "mha (layer %d): backward [B=%d, T=%d] without a matching "
                         "saved forward", m->layer, B, T);
    const size_t BT = (size_t)B * T, qd = (size_t)H * hd, kd = (size_t)KV * hd;
    const float *Q = (const float *)(hdr + 1), *K = Q + BT * qd, *V = K + BT * kd,
                *O = V + BT * kd, *LSE = O + BT * qd;
    const float *const *P = a->params;
    float *const *G = a->grads;

    /* dO [BT, qd], Dr [B, H, T] (rowsum dO*O), dQ [BT, qd], dK, dV [BT, kd], positions */
    size_t nfl = BT * qd * 2 + (size_t)B * H * T + BT * kd * 2 + BT;
    float *buf = H_->alloc(nfl * sizeof(float));
    if (!buf) return HYB_ERR_NOMEM;
    float *dO = buf, *Dr = dO + BT * qd, *dQ = Dr + (size_t)B * H * T, *dK = dQ + BT * qd,
          *dV = dK + BT * kd;
    int32_t *posbuf = (int32_t *)(dV + BT * kd);

    /* y = O Wo^T: dO = dy Wo, dWo += dy^T O */
    H_->sgemm(0, 0, (int)BT, (int)qd, D, 1.0f, a->dy, D, P[MHA_WO], (int)qd, 0.0f, dO, (int)qd);
    H_->sgemm(1, 0, D, (int)qd, (int)BT, 1.0f, a->dy, D, O, (int)qd, 1.0f, G[MHA_WO], (int)qd);

    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                size_t off = ((size_t)b * T + t) * qd + (size_t)h * hd;
                Dr[((size_t)b * H + h) * T + t] = dot(dO + off, O + off, hd);
            }

    /* softmax + scores: per (b, kv group), so dK/dV of a group are written by one thread.
     * P_ij = exp(s_ij - lse_i), dS_ij = P_ij (dO_i . v_j - D_i), s = scale q.k
     * dq_i += scale dS_ij k_j, dk_j += scale dS_ij q_i, dv_j += P_ij dO_i */
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = H / KV;
#pragma omp parallel for schedule(dynamic, 1)
    for (int bg = 0; bg < B * KV; bg++) {
        int b = bg / KV, g = bg % KV;
        const float *kb = K + (size_t)b * T * kd + (size_t)g * hd;
        const float *vb = V + (size_t)b * T * kd + (size_t)g * hd;
        float *dkb = dK + (size_t)b * T * kd + (size_t)g * hd;
        float *dvb = dV + (size_t)b * T * kd + (size_t)g * hd;
        for (int h = g * group; h < (g + 1) * group; h++) {
            for (int i = 0; i < T; i++) {
                size_t qoff = ((size_t)b * T + i) * qd + (size_t)h * hd;
                const float *qi = Q + qoff, *doi = dO + qoff;
                float *dqi = dQ + qoff;
                float lse = LSE[((size_t)b * H + h) * T + i];
                float di = Dr[((size_t)b * H + h) * T + i];
                for (int j = 0; j <= i; j++) {
                    const float *kj = kb + (size_t)j * kd, *vj = vb + (size_t)j * kd;
                    float p = expf(dot(qi, kj, hd) * scale - lse);
                    float ds = p * (dot(doi, vj, hd) - di);
                    axpy(dqi, scale * ds, kj, hd);
                    axpy(dkb + (size_t)j * kd, scale * ds, qi, hd);
                    axpy(dvb + (size_t)j * kd, p, doi, hd);
                }
            }
        }
    }

    /* RoPE is a rotation: its backward is the inverse rotation. */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) posbuf[(size_t)b * T + t] = t;
    H_->rope(dQ, (int)BT, H, hd, posbuf, m->theta, 1);
    H_->rope(dK, (int)BT, KV, hd, posbuf, m->theta, 1);

    if (m->bias) {
        for (size_t r = 0; r < BT; r++) {
            axpy(G[MHA_BQ], 1.0f, dQ + r * qd, (int)qd);
            axpy(G[MHA_BK], 1.0f, dK + r * kd, (int)kd);
            axpy(G[MHA_BV], 1.0f, dV + r * kd, (int)kd);
        }
    }
    /* projections: dW += d^T x, dx = sum d W */
    H_->sgemm(1, 0, (int)qd, D, (int)BT, 1.0f, dQ, (int)qd, a->x, D, 1.0f, G[MHA_WQ], D);
    H_->sgemm(1, 0, (int)kd, D, (int)BT, 1.0f, dK, (int)kd, a->x, D, 1.0f, G[MHA_WK], D);
    H_->sgemm(1, 0, (int)kd, D, (int)BT, 1.0f, dV, (int)kd, a->x, D, 1.0f, G[MHA_WV], D);
    H_->sgemm(0, 0, (int)BT, D, (int)qd, 1.0f, dQ, (int)qd, P[MHA_WQ], D, 0.0f, a->dx, D);
    H_->sgemm(0, 0, (int)BT, D, (int)kd, 1.0f, dK, (int)kd, P[MHA_WK], D, 1.0f, a->dx, D);
    H_->sgemm(0, 0, (int)BT, D, (int)kd, 1.0f, dV, (int)kd, P[MHA_WV], D, 1.0f, a->dx, D);
    H_->free(buf);
    return HYB_OK;
}

/* ---- decode ----------------------------------------------------------------------------------- */

int mha_decode(void *self, const hyb_mixer_dec *a) {
    mha *m = self;
    HYB_TRY(check_cpu(m, a->device, "decode"));
    const int n = a->n, D = m->D, H = m->H, KV = m->KV, hd = m->hd;
    if (n <= 0) return H_->error(HYB_ERR_ARG, "mha (layer %d): decode with n = %d", m->layer, n);
    const size_t qd = (size_t)H * hd, kd = (size_t)KV * hd;
    int p_max = 0;
    for (int i = 0; i < n; i++) {
        if (a->pos[i] < 0 || a->pos[i] >= a->max_ctx)
            return H_->error(HYB_ERR_ARG, "mha (layer %d): decode sequence %d at pos %d: the KV cache "
                             "holds max_ctx = %d tokens", m->layer, i, a->pos[i], a->max_ctx);
        if (a->pos[i] > p_max) p_max = a->pos[i];
    }
    const float *const *P = a->params;
    int nthr = max_threads();
    size_t nfl = (size_t)n * (2 * qd + 2 * kd) + (size_t)nthr * (p_max + 1);
    float *buf = H_->alloc(nfl * sizeof(float));
    if (!buf) return HYB_ERR_NOMEM;
    float *Q = buf, *K = Q + (size_t)n * qd, *V = K + (size_t)n * kd, *O = V + (size_t)n * kd,
          *scratch = O + (size_t)n * qd;

    linear(a->x, P[MHA_WQ], m->bias ? P[MHA_BQ] : NULL, Q, n, D, (int)qd);
    linear(a->x, P[MHA_WK], m->bias ? P[MHA_BK] : NULL, K, n, D, (int)kd);
    linear(a->x, P[MHA_WV], m->bias ? P[MHA_BV] : NULL, V, n, D, (int)kd);
    H_->rope(Q, n, H, hd, a->pos, m->theta, 0);
    H_->rope(K, n, KV, hd, a->pos, m->theta, 0);
    for (int i = 0; i < n; i++) {
        float *kc = a->states[i], *vc = kc + (size_t)a->max_ctx * kd;
        memcpy(kc + (size_t)a->pos[i] * kd, K + (size_t)i * kd, kd * sizeof(float));
        memcpy(vc + (size_t)a->pos[i] * kd, V + (size_t)i * kd, kd * sizeof(float));
    }
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = H / KV;
#pragma omp parallel for schedule(dynamic, 1)
    for (int ih = 0; ih < n * H; ih++) {
        int i = ih / H, h = ih % H, g = h / group;
        const float *kb = (const float *)a->states[i] + (size_t)g * hd;
        const float *vb = kb + (size_t)a->max_ctx * kd;
        float *s = scratch + (size_t)thread_id() * (p_max + 1);
        attend_row(Q + (size_t)i * qd + (size_t)h * hd, kb, vb, kd, a->pos[i] + 1, hd, scale, s,
                   O + (size_t)i * qd + (size_t)h * hd);
    }
    linear(O, P[MHA_WO], NULL, a->y, n, (int)qd, D);
    H_->free(buf);
    return HYB_OK;
}
