/* plugins/mamba1/mamba1_scan.c: forward, backward and decode of the `mamba1` mixer on the CPU
 * (f32; the scan state is f32). Equations and layouts: mamba1.c and mamba1.h.
 *
 * Forward over x [B, T, D]:
 *   1. zxbc = x Win^T [BT, P], dtl = x Wdtin^T [BT, R], v = dtl Wdt^T + b_dt (+ b_dt) [BT, Di]
 *      (the backend's sgemm over all B*T rows)
 *   2. cpre = causal depthwise conv of x_rep (+ conv bias) [BT, Di]; u = silu(cpre);
 *      dt = softplus(v)                                       (OpenMP over rows)
 *   3. the selective scan, one C head (N channels x N states) per work unit, units = (b, head),
 *      sequential in time, OpenMP over units; ys [BT, Di]
 *   4. y = (ys * silu(z)) Wout^T
 *
 * Memory trade-off of training: backward needs every scan state h_t [Di, N]; storing them all
 * would cost Di*N floats per token (65,536 for H1, about 3x everything else saved). The forward
 * saves only the state at the start of each time chunk (Di*N/chunk floats per token, 1,024 for H1
 * with chunk 64) and the backward recomputes the states of one chunk at a time into a per-thread
 * buffer [(chunk + 1), N, N], then runs the reverse-time recurrence for dh over it. The
 * recomputation uses the same step function as the forward, so it reproduces the forward's
 * states bitwise; the price is one extra scan (exp-bound) per backward. Besides the boundary
 * states the forward saves zxbc, dtl, v, cpre and ys (P + R + 3 Di floats per token); dt and u
 * are recomputed elementwise.
 *
 * Backward, with g = silu(z), yg = ys * g (all per row):
 *   dWout += dy^T yg;  dyg = dy Wout;  dys = dyg * g;  dz = dyg * ys * silu'(z)
 *   scan, reverse time, per channel d and state n (dh carries dL/dh_t):
 *     dh += dys[d] C[n];  dC[n] += dys[d] h_t;  a = exp(dt A);
 *     ddt += dh (h_{t-1} a A + B[n] u);  dA += dh h_{t-1} a dt;
 *     dB[n] += dh dt u;  du += dh dt B[n];  dh *= a
 *   du += D dys;  dD += dys u;  dA_log = dA * A  (A = -exp(A_log))
 *   dv = ddt * softplus'(v);  db_dt += (1 or 2) sum dv;  dWdt += dv^T dtl; ddtl = dv Wdt;
 *   dWdtin += ddtl^T x;  dx = ddtl Wdtin
 *   dcpre = du * silu'(cpre): conv weight/bias grads, dx_rep -> summed back into the x columns
 *   of its x/B group; dB summed over the rep heads of a group (the repeat's adjoint);
 *   dWin += dzxbc^T x;  dx += dzxbc Win
 * The backward scan runs one x/B group per work unit (OpenMP over groups, batch inside), so the
 * sums over channels for dB (rep*N channels), dC (N channels) and over the batch for dA_log, D,
 * conv1d need no atomics.
 */
/* The scan's exp (m1_expf) clamps its argument; GCC if-converts (and so vectorises) a float
 * comparison only when it may assume that comparisons do not trap (nothing here enables FP
 * traps). Before the includes: GCC does not inline a function compiled with other options, so
 * the header helpers (ssm_util.h's conv, plugin_util.h's) must be compiled under it too. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <math.h>
#include <string.h>

#include "../common/be_call.h"
#include "../common/plugin_util.h"
#include "mamba1.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define H_ m1_host
#define PAR_WORK 262144.0       /* open an OpenMP region only above this many inner steps (~1 ms) */

/* x column of channel d (x_rep[d] = x[g*N + s]) */
static inline int xcol(const m1 *m, int d) {
    return (d / m->N / m->rep) * m->N + d % m->N;
}

/* exp(x) for x <= 0 (dt * A with dt >= 0, A < 0; clamped to [-87, 88] anyway), written so that
 * `#pragma omp simd` loops vectorise it (libm's expf has no SIMD variant without -ffast-math):
 * Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, and Cephes' degree-6 polynomial for e^r
 * (measured max relative error 8.3e-8 over [-87, 0], under 1 ulp; below x = -87 the result stays at
 * e^-87 ~ 1.6e-38 instead of going subnormal, an absolute error under 2e-38). */
static inline float m1_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float kf = x * 1.44269504088896341f + shift;
    int32_t ki;
    memcpy(&ki, &kf, sizeof ki);
    kf -= shift;
    ki -= 0x4B400000; /* the bits of `shift`: ki = round(x / ln2) */
    float r = x - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = (ki + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* One time step of one C head (N channels c, N states n). Inside the plugin a head's scan state is
 * kept state-major, s[n * N + c], so the loops run over channels and vectorise without reordering
 * any sum: y[c] accumulates over n in order, then adds D u (the decode state stays [Di, N] as
 * SPEC.md says; it is transposed on load/store). dt, u, Dk, y: the head's N channels; Bv, Cv: [N];
 * At: the head's A, state-major [N, N]. */
static inline void step_head(float *restrict s, int N, const float *restrict dt,
                             const float *restrict u, const float *restrict Bv,
                             const float *restrict Cv, const float *restrict At,
                             const float *restrict Dk, float *restrict y) {
    float dtu[256];
    for (int c = 0; c < N; c++) {
        dtu[c] = dt[c] * u[c];
        y[c] = 0.0f;
    }
    for (int n = 0; n < N; n++) {
        const float b = Bv[n], cn = Cv[n];
        float *restrict sn = s + (size_t)n * N;
        const float *restrict An = At + (size_t)n * N;
#pragma omp simd
        for (int c = 0; c < N; c++) {
            const float h = m1_expf(dt[c] * An[c]) * sn[c] + dtu[c] * b;
            sn[c] = h;
            y[c] += h * cn;
        }
    }
    for (int c = 0; c < N; c++)
        y[c] += Dk[c] * u[c];
}

/* [N, N] block transpose: dst[j * N + i] = src[i * N + j] (decode state [c][n] <-> scan [n][c]) */
static inline void transpose_nn(float *restrict dst, const float *restrict src, int N) {
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            dst[(size_t)j * N + i] = src[(size_t)i * N + j];
}

/* A = -exp(A_log) in the scan's layout: per head h, state-major At[h][n][c] = A[h*N + c, n]. */
static float *make_A(const hyb_backend *be, const m1 *m, const float *alog) {
    const int N = m->N;
    float *A = be->alloc(be, (size_t)m->Di * N * sizeof(float));
    if (A)
        for (int h = 0; h < m->nC; h++)
            for (int c = 0; c < N; c++)
                for (int n = 0; n < N; n++)
                    A[((size_t)h * N + n) * N + c] = -expf(alog[((size_t)h * N + c) * N + n]);
    return A;
}

size_t m1_saved_bytes(void *self, int B, int T) {
    m1 *m = self;
    size_t BT = (size_t)B * T;
    size_t nf = BT * ((size_t)m->P + m->R + 3 * (size_t)m->Di) +
                (size_t)B * m1_n_chunks(T, m->chunk) * m->Di * m->N;
    return sizeof(m1_saved_hdr) + nf * sizeof(float);
}

/* v = dtl Wdt^T + b_dt (+ b_dt again when double_dt_bias): [rows, Di] */
static int dt_pre(const hyb_backend *be, const m1 *m, const float *const *P, const float *dtl,
                  float *v, int rows) {
    const int Di = m->Di;
    HYB_BE_TRY(be->sgemm(be, 0, 1, rows, Di, m->R, 1.0f, dtl, m->R, P[M1_WDT], m->R, 0.0f, v, Di));
    const float *b = P[M1_BDT];
    for (int r = 0; r < rows; r++) {
        float *vr = v + (size_t)r * Di;
        if (m->dbl)
            for (int d = 0; d < Di; d++)
                vr[d] += b[d] + b[d]; /* delta (with b_dt) + b_dt, as the reference adds it */
        else
            for (int d = 0; d < Di; d++)
                vr[d] += b[d];
    }
    return HYB_OK;
}

/* The argument checks of a forward (every device): sizes, positions against the states. */
int m1_check_fwd(const m1 *m, const hyb_mixer_fwd *a) {
    return hyb_ssm_check_fwd(H_, "mamba1", m->layer, a);
}

/* The argument checks of a decode step (every device). */
int m1_check_dec(const m1 *m, const hyb_mixer_dec *a) {
    return hyb_ssm_check_dec(H_, "mamba1", m->layer, a);
}

/* ---- forward / prefill ----------------------------------------------------------------------*/

int m1_forward(void *self, const hyb_mixer_fwd *a) {
    m1 *m = self;
    const hyb_backend *be = a->be;
    int rc = HYB_OK;
    const int B = a->B, T = a->T, D = m->D, Di = m->Di, N = m->N, K = m->K, R = m->R, Pw = m->P;
    HYB_TRY(m1_check_fwd(m, a));
    const float *const *P = a->params;
    const size_t BT = (size_t)B * T;
    const int chunk = m->chunk, nch = m1_n_chunks(T, chunk);

    /* zxbc, dtl, v, cpre, ys (+ hb): in `saved` when training, else a temporary block */
    float *zxbc, *hb = NULL;
    void *tmp = NULL;
    if (a->saved) {
        m1_saved_hdr *h = a->saved;
        hyb_ssm_saved_fill(h, M1_SAVED_MAGIC, B, T, chunk, nch);
        zxbc = (float *)(h + 1);
    } else {
        tmp = be->alloc(be, BT * ((size_t)Pw + R + 3 * (size_t)Di) * sizeof(float));
        if (!tmp) return HYB_ERR_NOMEM;
        zxbc = tmp;
    }
    float *dtl = zxbc + BT * Pw, *v = dtl + BT * R, *cpre = v + BT * Di, *ys = cpre + BT * Di;
    if (a->saved) hb = ys + BT * Di;

    /* dt, u [BT, Di], A [Di, N], per-thread scan state [N, N], conv history [B, Di, K] */
    const int nthr = hyb_pl_max_threads();
    float *work =
        be->alloc(be, sizeof(float) * (2 * BT * Di + (size_t)nthr * N * N + (size_t)B * Di * K));
    float *A = make_A(be, m, P[M1_ALOG]);
    if (!work || !A) {
        be->free(be, tmp);
        be->free(be, work);
        be->free(be, A);
        return HYB_ERR_NOMEM;
    }
    float *dt = work, *u = dt + BT * Di, *sbuf = u + BT * Di, *hist = sbuf + (size_t)nthr * N * N;

    /* 1. projections */
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, Pw, D, 1.0f, a->x, D, P[M1_WIN], D, 0.0f, zxbc, Pw);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, R, D, 1.0f, a->x, D, P[M1_WDTIN], D, 0.0f, dtl, R);
    if (rc == HYB_OK) rc = dt_pre(be, m, P, dtl, v, (int)BT);

    /* conv history: the previous K raw inputs of each sequence (zeros at the start). Copied
     * because the states are rewritten below. */
    hyb_ssm_conv_hist(hist, B, Di, K, a->pos, a->states, (size_t)Di * N);

    /* 2. conv + silu, softplus */
    const float *cw = P[M1_CONVW], *cb = P[M1_CONVB];
#pragma omp parallel for schedule(static) if ((double)BT * Di * K > PAR_WORK)
    for (long r = 0; r < (long)BT; r++) {
        const int b = (int)(r / T), t = (int)(r % T);
        const float *hb_ = hist + (size_t)b * Di * K;
        float *cr = cpre + (size_t)r * Di;
        for (int d = 0; d < Di; d++) {
            const int xc = Di + xcol(m, d);
            const float acc = hyb_ssm_conv_at(cw + (size_t)d * K, cb[d], K, t,
                                              zxbc + (size_t)b * T * Pw + xc, (size_t)Pw,
                                              hb_ + (size_t)d * K);
            cr[d] = acc;
            u[(size_t)r * Di + d] = hyb_ssm_silu(acc);
            dt[(size_t)r * Di + d] = hyb_pl_softplus(v[(size_t)r * Di + d]);
        }
    }

    /* 3. scan, one (sequence, C head) per unit */
    const int nC = m->nC, Dx = m->Dx;
    const float *Dk = P[M1_DSKIP];
#pragma omp parallel for schedule(dynamic, 1) if ((double)BT * Di * N > PAR_WORK)
    for (int unit = 0; unit < B * nC; unit++) {
        const int b = unit / nC, h = unit % nC, g = h / m->rep;
        float *s = sbuf + (size_t)hyb_pl_thread_id() * N * N;
        const size_t d0 = (size_t)h * N;
        const int p0 = a->pos ? a->pos[b] : 0;
        if (a->states && p0 > 0)
            transpose_nn(s, (const float *)a->states[b] + d0 * N, N);
        else
            memset(s, 0, (size_t)N * N * sizeof(float));
        for (int t = 0; t < T; t++) {
            const size_t r = (size_t)b * T + t;
            if (hb && t % chunk == 0)
                memcpy(hb + (((size_t)b * nch + t / chunk) * Di + d0) * N, s,
                       (size_t)N * N * sizeof(float));
            const float *zr = zxbc + r * Pw;
            step_head(s, N, dt + r * Di + d0, u + r * Di + d0, zr + Di + Dx + (size_t)g * N,
                      zr + Di + 2 * Dx + d0, A + d0 * N, Dk + d0, ys + r * Di + d0);
        }
        if (a->states) transpose_nn((float *)a->states[b] + d0 * N, s, N);
    }

    /* 4. gate and out_proj (yg reuses dt) */
    float *yg = dt;
    for (size_t r = 0; r < BT; r++)
        for (int d = 0; d < Di; d++)
            yg[r * Di + d] = ys[r * Di + d] * hyb_ssm_silu(zxbc[r * Pw + d]);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, D, Di, 1.0f, yg, Di, P[M1_WOUT], Di, 0.0f, a->y, D);

    /* conv states: the last K raw inputs of history ++ this chunk's x_rep */
    if (a->states)
        for (int b = 0; b < B; b++) {
            float *cs = (float *)a->states[b] + (size_t)Di * N;
            const float *hb_ = hist + (size_t)b * Di * K;
            for (int d = 0; d < Di; d++) {
                const int xc = Di + xcol(m, d);
                hyb_ssm_conv_window(cs + (size_t)d * K, K, T, zxbc + (size_t)b * T * Pw + xc,
                                    (size_t)Pw, hb_ + (size_t)d * K);
            }
        }
    be->free(be, A);
    be->free(be, work);
    be->free(be, tmp);
    return rc;
}

/* ---- backward -------------------------------------------------------------------------------*/

int m1_backward(void *self, const hyb_mixer_bwd *a) {
    m1 *m = self;
    const hyb_backend *be = a->be;
    int rc = HYB_OK;
    const int B = a->B, T = a->T, D = m->D, Di = m->Di, Dx = m->Dx, N = m->N, K = m->K, R = m->R,
              Pw = m->P;
    const m1_saved_hdr *hdr = a->saved;
    HYB_TRY(hyb_ssm_check_saved(H_, "mamba1", m->layer, hdr, M1_SAVED_MAGIC, B, T));
    const int chunk = hdr->chunk, nch = hdr->nch;
    const size_t BT = (size_t)B * T;
    const float *zxbc = (const float *)(hdr + 1), *dtl = zxbc + BT * Pw, *v = dtl + BT * R,
                *cpre = v + BT * Di, *ys = cpre + BT * Di, *hb = ys + BT * Di;
    const float *const *P = a->params;
    float *const *G = a->grads;

    /* dzxbc [BT, P] (zeroed), dys, ddt, du, dt, u [BT, Di], ddtl [BT, R], per-thread scan
     * buffers: states [(chunk + 1), N, N], dh [N, N], dA [N, N], dD [N] */
    const int nthr = hyb_pl_max_threads();
    const int Lc = chunk < T ? chunk : T;
    const size_t per_thr = (size_t)(Lc + 3) * N * N + N;
    float *buf =
        be->alloc(be, sizeof(float) * (BT * Pw + 5 * BT * Di + BT * R + (size_t)nthr * per_thr));
    float *A = make_A(be, m, P[M1_ALOG]);
    if (!buf || !A) {
        be->free(be, buf);
        be->free(be, A);
        return HYB_ERR_NOMEM;
    }
    /* the gradient buffers accumulate (+=): be->alloc memory is not zeroed */
    rc = be->memset0(be, buf,
                     sizeof(float) * (BT * Pw + 5 * BT * Di + BT * R + (size_t)nthr * per_thr));
    float *dz = buf, *dys = dz + BT * Pw, *ddt = dys + BT * Di, *du = ddt + BT * Di,
          *dt = du + BT * Di, *u = dt + BT * Di, *ddtl = u + BT * Di, *thr = ddtl + BT * R;

    /* out_proj and the gate: dys, dz. yg goes through `dt` (overwritten below). */
    float *yg = dt;
    for (size_t r = 0; r < BT; r++)
        for (int d = 0; d < Di; d++)
            yg[r * Di + d] = ys[r * Di + d] * hyb_ssm_silu(zxbc[r * Pw + d]);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, D, Di, (int)BT, 1.0f, a->dy, D, yg, Di, 1.0f, G[M1_WOUT], Di);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, Di, D, 1.0f, a->dy, D, P[M1_WOUT], Di, 0.0f, dys, Di);
    for (size_t r = 0; r < BT; r++)
        for (int d = 0; d < Di; d++) {
            const float z = zxbc[r * Pw + d], dyg = dys[r * Di + d];
            dz[r * Pw + d] = dyg * ys[r * Di + d] * hyb_ssm_dsilu(z);
            dys[r * Di + d] = dyg * hyb_ssm_silu(z);
            u[r * Di + d] = hyb_ssm_silu(cpre[r * Di + d]);
            dt[r * Di + d] = hyb_pl_softplus(v[r * Di + d]);
        }

    /* the scan, reverse time: one x/B group per unit (its rep heads, all sequences) */
    const float *Dk = P[M1_DSKIP];
    float *gAlog = G[M1_ALOG], *gD = G[M1_DSKIP];
    const int NN = N * N;
#pragma omp parallel for schedule(dynamic, 1) if ((double)BT * Di * N > PAR_WORK)
    for (int g = 0; g < m->nX; g++) {
        float *Hs = thr + (size_t)hyb_pl_thread_id() * per_thr, *dh = Hs + (size_t)(Lc + 1) * NN,
              *dA = dh + NN, *dD = dA + NN;
        for (int h = g * m->rep; h < (g + 1) * m->rep; h++) {
            const size_t d0 = (size_t)h * N;
            const float *Ah = A + d0 * N;
            memset(dA, 0, (size_t)(NN + N) * sizeof(float));
            for (int b = 0; b < B; b++) {
                memset(dh, 0, (size_t)NN * sizeof(float));
                for (int c = nch - 1; c >= 0; c--) {
                    const int t0 = c * chunk, t1 = t0 + chunk < T ? t0 + chunk : T;
                    memcpy(Hs, hb + (((size_t)b * nch + c) * Di + d0) * N,
                           (size_t)NN * sizeof(float));
                    float yscratch[256];
                    for (int t = t0; t < t1; t++) {
                        const size_t r = (size_t)b * T + t;
                        const float *zr = zxbc + r * Pw;
                        float *s = Hs + (size_t)(t - t0 + 1) * NN;
                        memcpy(s, s - NN, (size_t)NN * sizeof(float));
                        step_head(s, N, dt + r * Di + d0, u + r * Di + d0,
                                  zr + Di + Dx + (size_t)g * N, zr + Di + 2 * Dx + d0, Ah, Dk + d0,
                                  yscratch);
                    }
                    for (int t = t1 - 1; t >= t0; t--) {
                        const size_t r = (size_t)b * T + t;
                        const float *zr = zxbc + r * Pw;
                        const float *Bv = zr + Di + Dx + (size_t)g * N, *Cv = zr + Di + 2 * Dx + d0;
                        float *dB = dz + r * Pw + Di + Dx + (size_t)g * N,
                              *dC = dz + r * Pw + Di + 2 * Dx + d0;
                        const float *hcur = Hs + (size_t)(t - t0 + 1) * NN, *hprev = hcur - NN;
                        const float *restrict dtr = dt + r * Di + d0,
                                              *restrict ur = u + r * Di + d0,
                                              *restrict dyr = dys + r * Di + d0;
                        float gdt[256], guc[256], dtu[256];
                        for (int c = 0; c < N; c++) {
                            gdt[c] = 0.0f;
                            guc[c] = Dk[d0 + c] * dyr[c];
                            dtu[c] = dtr[c] * ur[c];
                            dD[c] += dyr[c] * ur[c];
                        }
                        for (int n = 0; n < N; n++) {
                            const float bn = Bv[n], cn = Cv[n];
                            const float *restrict An = Ah + (size_t)n * N,
                                                  *restrict hc = hcur + (size_t)n * N,
                                                  *restrict hp = hprev + (size_t)n * N;
                            float *restrict dhn = dh + (size_t)n * N;
                            float *restrict dAn = dA + (size_t)n * N;
                            float sc = 0.0f, sb = 0.0f;
#pragma omp simd reduction(+ : sc, sb)
                            for (int c = 0; c < N; c++) {
                                const float e = m1_expf(dtr[c] * An[c]);
                                const float g_h = dhn[c] + dyr[c] * cn; /* dL/dh_t */
                                sc += dyr[c] * hc[c];
                                gdt[c] += g_h * (hp[c] * e * An[c] + bn * ur[c]);
                                dAn[c] += g_h * hp[c] * e * dtr[c];
                                sb += g_h * dtu[c];
                                guc[c] += g_h * dtr[c] * bn;
                                dhn[c] = g_h * e; /* dL/dh_{t-1} through h_t */
                            }
                            dC[n] += sc;
                            dB[n] += sb;
                        }
                        for (int c = 0; c < N; c++) {
                            ddt[r * Di + d0 + c] = gdt[c];
                            du[r * Di + d0 + c] = guc[c];
                        }
                    }
                }
            }
            for (int c = 0; c < N; c++) /* dA_log = dA * dA/dA_log = dA * A (dA state-major) */
                for (int n = 0; n < N; n++)
                    gAlog[(d0 + c) * N + n] += dA[(size_t)n * N + c] * Ah[(size_t)n * N + c];
            for (int cc = 0; cc < N; cc++)
                gD[d0 + cc] += dD[cc];
        }
    }

    /* softplus (with the double bias), dt_proj, dt_in_proj */
    float *gb = G[M1_BDT];
    const float bmul = m->dbl ? 2.0f : 1.0f;
    for (size_t r = 0; r < BT; r++)
        for (int d = 0; d < Di; d++) {
            float g_v = ddt[r * Di + d] * hyb_ssm_dsoftplus(v[r * Di + d]);
            ddt[r * Di + d] = g_v;
            gb[d] += bmul * g_v;
        }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, Di, R, (int)BT, 1.0f, ddt, Di, dtl, R, 1.0f, G[M1_WDT], R);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, R, Di, 1.0f, ddt, Di, P[M1_WDT], R, 0.0f, ddtl, R);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, R, D, (int)BT, 1.0f, ddtl, R, a->x, D, 1.0f, G[M1_WDTIN], D);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, D, R, 1.0f, ddtl, R, P[M1_WDTIN], D, 0.0f, a->dx, D);

    /* conv + silu: dcpre = du * silu'(cpre); weight/bias grads; dx_rep summed into the group's
     * x columns. One x/B group per unit, as above. */
    const float *cw = P[M1_CONVW];
    float *gcw = G[M1_CONVW], *gcb = G[M1_CONVB];
    for (size_t i = 0; i < BT * Di; i++)
        du[i] *= hyb_ssm_dsilu(cpre[i]);
#pragma omp parallel for schedule(dynamic, 1) if ((double)BT * Di * K > PAR_WORK)
    for (int g = 0; g < m->nX; g++) {
        for (int d = g * m->rep * N; d < (g + 1) * m->rep * N; d++) {
            const int xc = Di + xcol(m, d);
            hyb_ssm_conv_bwd(B, T, K, du + d, (size_t)Di, zxbc + xc, dz + xc, (size_t)Pw,
                             cw + (size_t)d * K, gcw + (size_t)d * K, gcb + d);
        }
    }

    /* in_proj */
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, Pw, D, (int)BT, 1.0f, dz, Pw, a->x, D, 1.0f, G[M1_WIN], D);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, D, Pw, 1.0f, dz, Pw, P[M1_WIN], D, 1.0f, a->dx, D);
    be->free(be, A);
    be->free(be, buf);
    return rc;
}

/* ---- decode ---------------------------------------------------------------------------------*/

typedef struct dec_job {
    const m1 *m;
    const hyb_mixer_dec *a;
    const float *zxbc;
    float *v, *ys, *uu, *sbuf;
    const float *A;
} dec_job;
static int dec_units(void *ctx, int64_t lo, int64_t hi, int tid);

int m1_decode(void *self, const hyb_mixer_dec *a) {
    m1 *m = self;
    const hyb_backend *be = a->be;
    int rc = HYB_OK;
    const int n = a->n, D = m->D, Di = m->Di, N = m->N, K = m->K, R = m->R, Pw = m->P;
    HYB_TRY(m1_check_dec(m, a));
    const float *const *P = a->params;
    const int nthr = hyb_pl_threads(m1_host);
    float *buf = be->alloc(be, sizeof(float) *
                                   ((size_t)n * (Pw + R + 3 * (size_t)Di) + (size_t)nthr * N * N));
    float *A = make_A(be, m, P[M1_ALOG]);
    if (!buf || !A) {
        be->free(be, buf);
        be->free(be, A);
        return HYB_ERR_NOMEM;
    }
    float *zxbc = buf, *dtl = zxbc + (size_t)n * Pw, *v = dtl + (size_t)n * R,
          *ys = v + (size_t)n * Di, *uu = ys + (size_t)n * Di, *sbuf = uu + (size_t)n * Di;
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, n, Pw, D, 1.0f, a->x, D, P[M1_WIN], D, 0.0f, zxbc, Pw);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, n, R, D, 1.0f, a->x, D, P[M1_WDTIN], D, 0.0f, dtl, R);
    if (rc == HYB_OK) rc = dt_pre(be, m, P, dtl, v, n);
    for (int i = 0; i < n; i++) /* a sequence without tokens starts from the zero state */
        if (a->pos[i] == 0) memset(a->states[i], 0, (size_t)Di * (N + K) * sizeof(float));

    dec_job job = {m, a, zxbc, v, ys, uu, sbuf, A};
    if (rc == HYB_OK)
        rc = hyb_pl_parallel_for(m1_host, (double)n * Di * N > PAR_WORK, (int64_t)n * m->nC, 1,
                                 dec_units, &job);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, n, D, Di, 1.0f, ys, Di, P[M1_WOUT], Di, 0.0f, a->y, D);
    be->free(be, A);
    be->free(be, buf);
    return rc;
}

/* The (sequence, C head) units [lo, hi) of a decode step (a pool chunk): conv window shift, scan
 * step and gate, each unit on its own rows of the state and of ys. */
static int dec_units(void *ctx, int64_t lo, int64_t hi, int tid) {
    const dec_job *j = ctx;
    const m1 *m = j->m;
    const hyb_mixer_dec *a = j->a;
    const int Di = m->Di, Dx = m->Dx, N = m->N, K = m->K, Pw = m->P, nC = m->nC;
    const float *const *P = a->params;
    const float *cw = P[M1_CONVW], *cb = P[M1_CONVB], *Dk = P[M1_DSKIP], *A = j->A;
    const float *zxbc = j->zxbc;
    float *v = j->v, *ys = j->ys, *uu = j->uu;
    for (int unit = (int)lo; unit < (int)hi; unit++) {
        const int i = unit / nC, h = unit % nC, g = h / m->rep;
        const size_t d0 = (size_t)h * N;
        float *ssm = a->states[i], *cs = ssm + (size_t)Di * N;
        const float *zr = zxbc + (size_t)i * Pw;
        float *u = uu + (size_t)i * Di, *dtv = v + (size_t)i * Di; /* dt overwrites v */
        for (size_t d = d0; d < d0 + N; d++) {
            const float acc =
                hyb_ssm_conv_step(cs + d * K, K, zr[Di + xcol(m, (int)d)], cw + d * K, cb[d]);
            u[d] = hyb_ssm_silu(acc);
            dtv[d] = hyb_pl_softplus(dtv[d]);
        }
        float *sh = j->sbuf + (size_t)tid * N * N;
        transpose_nn(sh, ssm + d0 * N, N);
        step_head(sh, N, dtv + d0, u + d0, zr + Di + Dx + (size_t)g * N, zr + Di + 2 * Dx + d0,
                  A + d0 * N, Dk + d0, ys + (size_t)i * Di + d0);
        transpose_nn(ssm + d0 * N, sh, N);
        for (size_t d = d0; d < d0 + N; d++)
            ys[(size_t)i * Di + d] *= hyb_ssm_silu(zr[d]);
    }
    return HYB_OK;
}
