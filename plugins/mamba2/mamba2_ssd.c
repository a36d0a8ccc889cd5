/* plugins/mamba2/mamba2_ssd.c: forward, backward and decode of the `mamba2` mixer on the CPU (f32).
 * Equations and layouts: mamba2.c, mamba2.h and docs/MAMBA2.md.
 *
 * Forward over x [B, T, D]:
 *   1. zxbcdt = x Win^T [BT, Pin]                                   (be->sgemm over all rows)
 *   2. cpre = causal depthwise conv of the x|B|C columns (+ bias) [BT, Cd], xbc = silu(cpre);
 *      dt = softplus(dt_raw + dt_bias) [BT, nh]                     (OpenMP over rows)
 *   3. the chunked SSD, one (sequence, head) per work unit (OpenMP over units), chunks of Q steps
 *      in order; per chunk with state S [Pd, N] at its start and a_t = dt_t A:
 *        seg(t, j) = sum_{j < i <= t} a_i (summed directly from j + 1 to t, not as a difference of
 *                    cumulative sums, which would lose the digits of large decays in f32)
 *        y_t = sum_{j <= t} exp(seg(t, j)) (C_t . B_j) dt_j x_j      (intra-chunk, quadratic)
 *            + exp(seg(t, t0 - 1)) S C_t + D x_t                     (inter-chunk, from the state)
 *        S <- exp(seg(t1, t0 - 1)) S + sum_j exp(seg(t1, j)) dt_j x_j B_j^T    (t1: the last step)
 *      ys [BT, Di]; the state at every chunk start is saved for the backward (hb)
 *   4. gated RMSNorm per group: g = ys silu(z), yn = g rstd w, rstd = (mean_group g^2 + eps)^-1/2
 *   5. y = yn Wout^T
 *
 * Backward, from dy (per row; dyn = dy Wout, dWout += dy^T yn):
 *   norm: u = w dyn, dg = rstd (u - g rstd^2 mean(u g)), dw += dyn g rstd;
 *         dys = dg silu(z), dz = dg ys silu'(z)
 *   SSD: the chunked form's adjoint (ssd_chunked_bwd), one (sequence, head) per unit, chunks last
 *   to first from the saved chunk-start states, the state's adjoint carried backwards; nine GEMMs
 *   per chunk and the decay gradients through the segment sums (equations at ssd_chunked_bwd);
 *   dB, dC per head, then summed over the heads of a group in head order (no atomics, the result
 *   does not depend on the thread count); dA_log = dA A; d dt_raw = ddt sigmoid(dt_raw + dt_bias)
 *   conv: dcpre = dxbc silu'(cpre): weight/bias grads, the input's adjoint into dzxbcdt's x|B|C
 *   columns; dWin += dzxbcdt^T x; dx = dzxbcdt Win.
 * (The CUDA backward is the recurrence's adjoint instead, mamba2.cu: the same function; the harness
 * compares the two at 1e-5, its finite differences and the PyTorch reference check both.)
 */
#include <math.h>
#include <string.h>

#include "../common/be_call.h"
#include "../common/plugin_util.h"
#include "mamba2.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define H_ m2_host
#define PAR_WORK 262144.0 /* open an OpenMP region only above this many inner steps (~1 ms) */
#define PAR_ELEM 65536.0  /* ... or this many elements of an element-wise loop with an exp */

size_t m2_saved_bytes(void *self, int B, int T) {
    m2 *m = self;
    const size_t BT = (size_t)B * T;
    const size_t nf = BT * ((size_t)m->Pin + m->Cd + m->Di + m->G) +
                      (size_t)B * m2_n_chunks(T, m->Q) * m->Di * m->N;
    return sizeof(m2_saved_hdr) + nf * sizeof(float);
}

int m2_check_fwd(const m2 *m, const hyb_mixer_fwd *a) {
    return hyb_ssm_check_fwd(H_, "mamba2", m->layer, a);
}

int m2_check_dec(const m2 *m, const hyb_mixer_dec *a) {
    return hyb_ssm_check_dec(H_, "mamba2", m->layer, a);
}

int m2_check_saved(const m2 *m, const m2_saved_hdr *h, int B, int T) {
    return hyb_ssm_check_saved(H_, "mamba2", m->layer, h, M2_SAVED_MAGIC, B, T);
}

/* The chunked SSD of one (sequence, head) over T steps: x [T] rows of stride ldx (the head's Pd
 * columns), Bm/Cm rows of stride ldx (the group's N columns), dt [T] stride ldt, A scalar, Dk the
 * skip; S [Pd, N] the state on entry (updated to the end state); y rows of stride ldy. hb (or
 * NULL): the state at every chunk start, [nch] blocks of stride hbs floats. W: scratch
 * Q * (Q + 1 + N + Pd) floats. The four products of a chunk are GEMMs (single-threaded inside the
 * caller's OpenMP region):
 *   CB = C B^T [L, L];  W = CB * exp(seg) * dt (lower triangle, 0 above);  y = W X
 *   y += diag(exp(seg(t, t0 - 1))) C S^T;  S = exp(seg(t1, t0 - 1)) S + (c * X)^T B,
 *   c_j = exp(seg(t1, j)) dt_j */
static int ssd_chunked(const hyb_backend *be, int T, int Q, int Pd, int N, const float *x,
                       const float *Bm, const float *Cm, int ldx, const float *dt, size_t ldt,
                       float A, float Dk, float *restrict S, float *y, int ldy, float *hb,
                       size_t hbs, float *restrict W) {
    float *dec = W + (size_t)Q * Q, *Cs = dec + Q, *Xw = Cs + (size_t)Q * N;
    for (int t0 = 0, c = 0; t0 < T; t0 += Q, c++) {
        const int L = T - t0 < Q ? T - t0 : Q;
        const float *xc = x + (size_t)t0 * ldx, *Bc = Bm + (size_t)t0 * ldx,
                    *Cc = Cm + (size_t)t0 * ldx;
        float *yc = y + (size_t)t0 * ldy;
        if (hb) memcpy(hb + (size_t)c * hbs, S, (size_t)Pd * N * sizeof(float));
        HYB_BE_TRY(be->sgemm(be, 0, 1, L, L, N, 1.0f, Cc, ldx, Bc, ldx, 0.0f, W, Q));
        /* W[i][j] *= exp(seg(t0+i, t0+j)) dt_j below the diagonal, 0 above; dec[i] =
         * exp(seg(t0+i, t0-1)); seg summed from j + 1 to i directly (see the top) */
        for (int i = 0; i < L; i++) {
            float *Wi = W + (size_t)i * Q, s = 0.0f;
            for (int j = i; j >= 0; j--) {
                const float dtj = dt[(size_t)(t0 + j) * ldt];
                Wi[j] *= expf(s) * dtj;
                s += dtj * A;
            }
            for (int j = i + 1; j < L; j++)
                Wi[j] = 0.0f;
            dec[i] = expf(s);
            for (int n = 0; n < N; n++)
                Cs[(size_t)i * N + n] = dec[i] * Cc[(size_t)i * ldx + n];
        }
        HYB_BE_TRY(be->sgemm(be, 0, 0, L, Pd, L, 1.0f, W, Q, xc, ldx, 0.0f, yc, ldy));
        HYB_BE_TRY(be->sgemm(be, 0, 1, L, Pd, N, 1.0f, Cs, N, S, N, 1.0f, yc, ldy));
        for (int i = 0; i < L; i++)
            hyb_pl_axpy(yc + (size_t)i * ldy, Dk, xc + (size_t)i * ldx, Pd);
        /* the state at the chunk's end */
        float s = 0.0f;
        for (int j = L - 1; j >= 0; j--) {
            const float dtj = dt[(size_t)(t0 + j) * ldt], cj = expf(s) * dtj;
            for (int p = 0; p < Pd; p++)
                Xw[(size_t)j * Pd + p] = cj * xc[(size_t)j * ldx + p];
            s += dtj * A;
        }
        HYB_BE_TRY(be->sgemm(be, 1, 0, Pd, N, L, 1.0f, Xw, Pd, Bc, ldx, dec[L - 1], S, N));
    }
    return HYB_OK;
}

/* The adjoint of ssd_chunked for one (sequence, head), chunks last to first, with the adjoint dS of
 * the state at the chunk's end carried backwards (0 after the last). Per chunk with start state S0
 * (saved), E[i][j] = exp(seg(i, j)), M = (C B^T) * E * dt (lower triangle), dec_i =
 * exp(seg(i, t0 - 1)), c_j = exp(seg(t1, j)) dt_j, and the SSD output's adjoint dY:
 *   dM = dY X^T;  dX = M^T dY + D dY + diag(c) B dS^T
 *   dCB = dM * E * dt;  dC = dCB B + diag(dec) dY S0;  dB = dCB^T C + diag(c) X dS
 *   dS <- dec_end dS + dY^T diag(dec) C;   dD += sum dY * X
 * and the decays through seg: G[i][j] = d L / d seg(i, j) (dM * M inside the chunk; the dec, c and
 * dec_end terms against seg(i, t0 - 1) and seg(t1, j)), da_k = sum over j < k <= i of G[i][j];
 * ddt_t = A da_t + (the direct dt terms of M and c), dA += da_t dt_t. The products are GEMMs
 * (single-threaded inside the caller's region). x, B, C rows of stride ldx; dY rows of stride
 * ldy; dX written rows of stride ldx, dB / dC rows of stride ldbc, ddt of stride ldt. W: scratch
 * of ssd_bwd_floats(). */
static size_t ssd_bwd_floats(int Q, int Pd, int N) {
    return 4 * (size_t)Q * Q + (size_t)Q * Pd + 3 * (size_t)Q * N + (size_t)Pd * N + 8 * (size_t)Q;
}

static int ssd_chunked_bwd(const hyb_backend *be, int T, int Q, int Pd, int N, const float *x,
                           const float *Bm, const float *Cm, int ldx, const float *dt, size_t ldt,
                           float A, float Dk, const float *dY, int ldy, const float *hb, size_t hbs,
                           float *dX, float *dBo, float *dCo, int ldbc, float *ddt, double *dA,
                           double *dD, float *restrict W) {
    float *E = W, *M = E + (size_t)Q * Q, *dM = M + (size_t)Q * Q, *CB = dM + (size_t)Q * Q,
          *T1 = CB + (size_t)Q * Q, *T2 = T1 + (size_t)Q * Pd, *T3 = T2 + (size_t)Q * N,
          *Cs = T3 + (size_t)Q * N, *dS = Cs + (size_t)Q * N, *dec = dS + (size_t)Pd * N,
          *cex = dec + Q, *ddir = cex + Q, *gdec = ddir + Q, *gc = gdec + Q, *da = gc + Q;
    memset(dS, 0, (size_t)Pd * N * sizeof(float));
    const int nch = (T + Q - 1) / Q;
    for (int c = nch - 1; c >= 0; c--) {
        const int t0 = c * Q, L = T - t0 < Q ? T - t0 : Q;
        const float *xc = x + (size_t)t0 * ldx, *Bc = Bm + (size_t)t0 * ldx,
                    *Cc = Cm + (size_t)t0 * ldx, *dYc = dY + (size_t)t0 * ldy,
                    *S0 = hb + (size_t)c * hbs;
        float *dXc = dX + (size_t)t0 * ldx;
        /* decays: E (lower), dec, cex[j] = exp(seg(L-1, j)) */
        for (int i = 0; i < L; i++) {
            float s = 0.0f;
            for (int j = i; j >= 0; j--) {
                E[(size_t)i * Q + j] = expf(s);
                s += dt[(size_t)(t0 + j) * ldt] * A;
            }
            dec[i] = expf(s);
        }
        for (int j = 0; j < L; j++)
            cex[j] = E[(size_t)(L - 1) * Q + j];
        const float dl = dec[L - 1];
        HYB_BE_TRY(be->sgemm(be, 0, 1, L, L, N, 1.0f, Cc, ldx, Bc, ldx, 0.0f, CB, Q));
        HYB_BE_TRY(be->sgemm(be, 0, 1, L, L, Pd, 1.0f, dYc, ldy, xc, ldx, 0.0f, dM, Q));
        for (int i = 0; i < L; i++)
            for (int j = 0; j < L; j++) {
                const size_t k = (size_t)i * Q + j;
                M[k] = j <= i ? CB[k] * E[k] * dt[(size_t)(t0 + j) * ldt] : 0.0f;
            }
        /* dX = M^T dY + D dY + diag(c) (B dS^T); gc_j = x_j . (dS B_j) */
        HYB_BE_TRY(be->sgemm(be, 1, 0, L, Pd, L, 1.0f, M, Q, dYc, ldy, 0.0f, dXc, ldx));
        HYB_BE_TRY(be->sgemm(be, 0, 1, L, Pd, N, 1.0f, Bc, ldx, dS, N, 0.0f, T1, Pd));
        for (int j = 0; j < L; j++) {
            const float cj = cex[j] * dt[(size_t)(t0 + j) * ldt];
            float *dxj = dXc + (size_t)j * ldx;
            const float *xj = xc + (size_t)j * ldx, *dyj = dYc + (size_t)j * ldy,
                        *t1 = T1 + (size_t)j * Pd;
            double sd = 0.0;
            for (int p = 0; p < Pd; p++) {
                dxj[p] += Dk * dyj[p] + cj * t1[p];
                sd += (double)dyj[p] * xj[p];
            }
            *dD += sd;
            gc[j] = hyb_pl_dot(xj, t1, Pd);
        }
        /* dCB = dM * E * dt (in CB), the direct dt terms, G = dM * M (in dM) */
        for (int j = 0; j < L; j++)
            ddir[j] = 0.0f;
        for (int i = 0; i < L; i++)
            for (int j = 0; j <= i; j++) {
                const size_t k = (size_t)i * Q + j;
                const float dtj = dt[(size_t)(t0 + j) * ldt], de = dM[k] * E[k];
                ddir[j] += de * CB[k];
                CB[k] = de * dtj;
                dM[k] *= M[k];
            }
        for (int i = 0; i < L; i++)
            for (int j = i + 1; j < L; j++)
                CB[(size_t)i * Q + j] = 0.0f;
        /* dC = dCB B + diag(dec) dY S0; gdec_i = C_i . (dY S0)_i */
        HYB_BE_TRY(be->sgemm(be, 0, 0, L, N, L, 1.0f, CB, Q, Bc, ldx, 0.0f, dCo + (size_t)t0 * ldbc,
                             ldbc));
        HYB_BE_TRY(be->sgemm(be, 0, 0, L, N, Pd, 1.0f, dYc, ldy, S0, N, 0.0f, T2, N));
        for (int i = 0; i < L; i++) {
            gdec[i] = hyb_pl_dot(Cc + (size_t)i * ldx, T2 + (size_t)i * N, N);
            hyb_pl_axpy(dCo + (size_t)(t0 + i) * ldbc, dec[i], T2 + (size_t)i * N, N);
            for (int n = 0; n < N; n++)
                Cs[(size_t)i * N + n] = dec[i] * Cc[(size_t)i * ldx + n];
        }
        /* dB = dCB^T C + diag(c) X dS */
        HYB_BE_TRY(be->sgemm(be, 1, 0, L, N, L, 1.0f, CB, Q, Cc, ldx, 0.0f, dBo + (size_t)t0 * ldbc,
                             ldbc));
        HYB_BE_TRY(be->sgemm(be, 0, 0, L, N, Pd, 1.0f, xc, ldx, dS, N, 0.0f, T3, N));
        for (int j = 0; j < L; j++)
            hyb_pl_axpy(dBo + (size_t)(t0 + j) * ldbc, cex[j] * dt[(size_t)(t0 + j) * ldt],
                        T3 + (size_t)j * N, N);
        /* the end decay's adjoint, then the state's adjoint at the chunk start */
        double gdl = 0.0;
        for (size_t e = 0; e < (size_t)Pd * N; e++)
            gdl += (double)dS[e] * S0[e];
        HYB_BE_TRY(be->sgemm(be, 1, 0, Pd, N, L, 1.0f, dYc, ldy, Cs, N, dl, dS, N));
        /* da_k = sum_{i >= k} sum_{-1 <= j < k} G[i][j], G[i][-1] = gdec_i dec_i (+ gdl dl for
         * the last row), G[L-1][j] += gc_j c_j */
        for (int j = 0; j < L; j++) {
            const float cj = cex[j] * dt[(size_t)(t0 + j) * ldt];
            dM[(size_t)(L - 1) * Q + j] += gc[j] * cj;
            ddir[j] += gc[j] * cex[j];
            da[j] = 0.0f;
        }
        for (int i = 0; i < L; i++) {
            double run = (double)gdec[i] * dec[i] + (i == L - 1 ? gdl * dl : 0.0);
            const float *Gi = dM + (size_t)i * Q;
            for (int k = 0; k <= i; k++) {
                da[k] += (float)run;
                run += Gi[k];
            }
        }
        for (int j = 0; j < L; j++) {
            const float dtj = dt[(size_t)(t0 + j) * ldt];
            ddt[(size_t)(t0 + j) * ldt] = A * da[j] + ddir[j];
            *dA += (double)da[j] * dtj;
        }
    }
    return HYB_OK;
}

/* gated RMSNorm of one row: g = ys silu(z) per group of gs channels, yn = g rstd w */
static void gate_norm_row(const m2 *m, const float *ys, const float *z, const float *w, float *yn,
                          float *rstd) {
    const int gs = m->Di / m->G;
    for (int g = 0; g < m->G; g++) {
        float ss = 0.0f;
        for (int c = g * gs; c < (g + 1) * gs; c++) {
            const float v = ys[c] * hyb_ssm_silu(z[c]);
            yn[c] = v;
            ss += v * v;
        }
        const float r = 1.0f / sqrtf(ss / (float)gs + m->eps);
        if (rstd) rstd[g] = r;
        for (int c = g * gs; c < (g + 1) * gs; c++)
            yn[c] *= r * w[c];
    }
}

/* ---- forward / prefill ----------------------------------------------------------------------*/

int m2_forward(void *self, const hyb_mixer_fwd *a) {
    m2 *m = self;
    const hyb_backend *be = a->be;
    HYB_TRY(m2_check_fwd(m, a));
    const int B = a->B, T = a->T, D = m->D, Di = m->Di, N = m->N, K = m->K, Pin = m->Pin,
              Cd = m->Cd, nh = m->nh, Pd = m->Pd, G = m->G, Q = m->Q;
    const float *const *P = a->params;
    const size_t BT = (size_t)B * T;
    const int nch = m2_n_chunks(T, Q);
    const size_t nsv = BT * ((size_t)Pin + Cd + Di + G);

    /* zxbcdt, cpre, ys, rstd (+ hb): in `saved` when training, else a temporary block */
    float *zx, *hb = NULL;
    void *tmp = NULL;
    if (a->saved) {
        m2_saved_hdr *h = a->saved;
        hyb_ssm_saved_fill(h, M2_SAVED_MAGIC, B, T, Q, nch);
        zx = (float *)(h + 1);
    } else {
        tmp = be->alloc(be, nsv * sizeof(float));
        if (!tmp) return HYB_ERR_NOMEM;
        zx = tmp;
    }
    float *cpre = zx + BT * Pin, *ys = cpre + BT * Cd, *rstd = ys + BT * Di;
    if (a->saved) hb = rstd + BT * G;

    /* xbc [BT, Cd], dt [BT, nh], yn [BT, Di], conv history [B, Cd, K], per-thread state and
     * chunk scratch */
    const int nthr = hyb_pl_max_threads();
    const size_t per_thr = (size_t)Pd * N + (size_t)Q * (Q + 1 + N + Pd);
    float *work = be->alloc(be, sizeof(float) * (BT * ((size_t)Cd + nh + Di) +
                                                 (size_t)B * Cd * K + (size_t)nthr * per_thr));
    if (!work) {
        be->free(be, tmp);
        return HYB_ERR_NOMEM;
    }
    float *xbc = work, *dt = xbc + BT * Cd, *yn = dt + BT * nh, *hist = yn + BT * Di,
          *thr = hist + (size_t)B * Cd * K;
    int rc = be->sgemm(be, 0, 1, (int)BT, Pin, D, 1.0f, a->x, D, P[M2_WIN], D, 0.0f, zx, Pin);

    /* the previous K raw conv inputs (zeros at the start) */
    hyb_ssm_conv_hist(hist, B, Cd, K, a->pos, a->states, (size_t)Di * N);

    /* conv + silu, softplus */
    const float *cw = P[M2_CONVW], *cb = P[M2_CONVB], *dtb = P[M2_DTB];
    const int cx = m2_col_x(m), cdt = m2_col_dt(m);
#pragma omp parallel for schedule(static) if (rc == HYB_OK && (double)BT * Cd * K > PAR_WORK)
    for (long r = 0; r < (long)BT; r++) {
        const int b = (int)(r / T), t = (int)(r % T);
        const float *hs = hist + (size_t)b * Cd * K;
        for (int c = 0; c < Cd; c++) {
            const float acc = hyb_ssm_conv_at(cw + (size_t)c * K, cb[c], K, t,
                                              zx + (size_t)b * T * Pin + cx + c, (size_t)Pin,
                                              hs + (size_t)c * K);
            cpre[(size_t)r * Cd + c] = acc;
            xbc[(size_t)r * Cd + c] = hyb_ssm_silu(acc);
        }
        for (int h = 0; h < nh; h++)
            dt[(size_t)r * nh + h] = hyb_pl_softplus(zx[(size_t)r * Pin + cdt + h] + dtb[h]);
    }

    /* the chunked SSD, one (sequence, head) per unit */
    const float *alog = P[M2_ALOG], *Dk = P[M2_DSKIP];
#pragma omp parallel for schedule(dynamic, 1) if (rc == HYB_OK && (double)BT * Di * (N + Q) > PAR_WORK)
    for (int unit = 0; unit < B * nh; unit++) {
        const int b = unit / nh, h = unit % nh, g = h / m->hpg;
        float *S = thr + (size_t)hyb_pl_thread_id() * per_thr, *W = S + (size_t)Pd * N;
        const int p0 = a->pos ? a->pos[b] : 0;
        float *st = a->states ? (float *)a->states[b] + (size_t)h * Pd * N : NULL;
        if (st && p0 > 0)
            memcpy(S, st, (size_t)Pd * N * sizeof(float));
        else
            memset(S, 0, (size_t)Pd * N * sizeof(float));
        const float *xr = xbc + (size_t)b * T * Cd;
        HYB_BE_TRY_PAR(rc, ssd_chunked(be, T, Q, Pd, N, xr + (size_t)h * Pd, xr + Di + (size_t)g * N,
                                       xr + Di + (size_t)(G + g) * N, Cd,
                                       dt + (size_t)b * T * nh + h, nh, -expf(alog[h]), Dk[h], S,
                                       ys + (size_t)b * T * Di + (size_t)h * Pd, Di,
                                       hb ? hb + (((size_t)b * nch) * nh + h) * Pd * N : NULL,
                                       (size_t)nh * Pd * N, W));
        if (st) memcpy(st, S, (size_t)Pd * N * sizeof(float));
    }

    /* gated norm, out_proj */
#pragma omp parallel for schedule(static) if ((double)BT * Di > PAR_ELEM)
    for (long r = 0; r < (long)BT; r++)
        gate_norm_row(m, ys + r * Di, zx + r * Pin, P[M2_NORMW], yn + r * Di, rstd + r * G);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, D, Di, 1.0f, yn, Di, P[M2_WOUT], Di, 0.0f, a->y, D);

    /* the conv window of each state: the last K raw inputs (before the prompt: the old window) */
    if (a->states)
        for (int b = 0; b < B; b++) {
            float *cs = (float *)a->states[b] + (size_t)Di * N;
            const float *hs = hist + (size_t)b * Cd * K;
            for (int c = 0; c < Cd; c++)
                hyb_ssm_conv_window(cs + (size_t)c * K, K, T, zx + (size_t)b * T * Pin + cx + c,
                                    (size_t)Pin, hs + (size_t)c * K);
        }
    be->free(be, work);
    be->free(be, tmp);
    return rc;
}

/* ---- backward -------------------------------------------------------------------------------*/

int m2_backward(void *self, const hyb_mixer_bwd *a) {
    m2 *m = self;
    const hyb_backend *be = a->be;
    const int B = a->B, T = a->T, D = m->D, Di = m->Di, N = m->N, K = m->K, Pin = m->Pin,
              Cd = m->Cd, nh = m->nh, Pd = m->Pd, G = m->G;
    HYB_TRY(m2_check_saved(m, a->saved, B, T));
    const m2_saved_hdr *hdr = a->saved;
    const int Q = hdr->chunk, nch = hdr->nch;
    const size_t BT = (size_t)B * T;
    const float *zx = (const float *)(hdr + 1), *cpre = zx + BT * Pin, *ys = cpre + BT * Cd,
                *rstd = ys + BT * Di, *hb = rstd + BT * G;
    const float *const *P = a->params;
    float *const *Gr = a->grads;

    /* dzx [BT, Pin], xbc [BT, Cd], dxbc [BT, Cd], dt [BT, nh], ddt [BT, nh], yn / dyn / dys
     * [BT, Di] (reused), dBh, dCh [BT, nh, N], partials dA, dD [B, nh], per-thread states
     * (Q + 1) Pd N and dh Pd N */
    const int nthr = hyb_pl_max_threads();
    const size_t per_thr = ssd_bwd_floats(Q, Pd, N);
    const size_t nf = BT * ((size_t)Pin + 2 * (size_t)Cd + 2 * (size_t)nh + 2 * (size_t)Di +
                            2 * (size_t)nh * N) +
                      2 * (size_t)B * nh + (size_t)nthr * per_thr;
    float *buf = be->alloc(be, nf * sizeof(float));
    if (!buf) return HYB_ERR_NOMEM;
    float *dzx = buf, *xbc = dzx + BT * Pin, *dxbc = xbc + BT * Cd, *dt = dxbc + BT * Cd,
          *ddt = dt + BT * nh, *yn = ddt + BT * nh, *dys = yn + BT * Di, *dBh = dys + BT * Di,
          *dCh = dBh + BT * nh * N, *pA = dCh + BT * nh * N, *pD = pA + (size_t)B * nh,
          *thr = pD + (size_t)B * nh;
    memset(dzx, 0, BT * Pin * sizeof(float));
    const float *dtb = P[M2_DTB], *nw = P[M2_NORMW];
    const int cx = m2_col_x(m), cdt = m2_col_dt(m), gs = Di / G;
#pragma omp parallel for schedule(static) if ((double)BT * (Cd + Di) > PAR_ELEM)
    for (long rl = 0; rl < (long)BT; rl++) {
        const size_t r = (size_t)rl;
        for (int c = 0; c < Cd; c++)
            xbc[r * Cd + c] = hyb_ssm_silu(cpre[r * Cd + c]);
        for (int h = 0; h < nh; h++)
            dt[r * nh + h] = hyb_pl_softplus(zx[r * Pin + cdt + h] + dtb[h]);
        /* yn from the saved rstd */
        for (int c = 0; c < Di; c++)
            yn[r * Di + c] =
                ys[r * Di + c] * hyb_ssm_silu(zx[r * Pin + c]) * rstd[r * G + c / gs] * nw[c];
    }
    /* out_proj */
    int rc = be->sgemm(be, 1, 0, D, Di, (int)BT, 1.0f, a->dy, D, yn, Di, 1.0f, Gr[M2_WOUT], Di);
    float *dyn = yn; /* yn is not needed any more */
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, Di, D, 1.0f, a->dy, D, P[M2_WOUT], Di, 0.0f, dyn, Di);
    /* the gated norm: dys, dz (dzx's z columns), d norm.weight */
    float *gnw = Gr[M2_NORMW], *gvr = dxbc; /* g rstd: scratch until the SSD's adjoint */
#pragma omp parallel for schedule(static) if ((double)BT * Di > PAR_ELEM)
    for (long rl = 0; rl < (long)BT; rl++) {
        const size_t r = (size_t)rl;
        const float *zr = zx + r * Pin, *yr = ys + r * Di, *dr = dyn + r * Di;
        for (int g = 0; g < G; g++) {
            const float rr = rstd[r * G + g];
            float s = 0.0f;
            for (int c = g * gs; c < (g + 1) * gs; c++) {
                const float sz = hyb_ssm_silu(zr[c]);
                s += nw[c] * dr[c] * yr[c] * sz;
                dys[r * Di + c] = sz;
            }
            s /= (float)gs;
            for (int c = g * gs; c < (g + 1) * gs; c++) {
                const float sz = dys[r * Di + c], gv = yr[c] * sz;
                gvr[r * Cd + c] = gv * rr;
                const float dg = rr * (nw[c] * dr[c] - gv * rr * rr * s);
                dys[r * Di + c] = dg * sz;
                dzx[r * Pin + c] = dg * yr[c] * hyb_ssm_dsilu(zr[c]);
            }
        }
    }
#pragma omp parallel for schedule(static) if ((double)BT * Di > PAR_ELEM)
    for (int c = 0; c < Di; c++) { /* rows in order */
        float acc = 0.0f;
        for (size_t r = 0; r < BT; r++)
            acc += dyn[r * Di + c] * gvr[r * Cd + c];
        gnw[c] += acc;
    }

    /* the SSD's adjoint, one (sequence, head) per unit, chunks last to first */
    const float *alog = P[M2_ALOG], *Dk = P[M2_DSKIP];
    const size_t PN = (size_t)Pd * N;
#pragma omp parallel for schedule(dynamic, 1) if (rc == HYB_OK && (double)BT * Di * N > PAR_WORK)
    for (int unit = 0; unit < B * nh; unit++) {
        const int b = unit / nh, h = unit % nh, g = h / m->hpg;
        float *W = thr + (size_t)hyb_pl_thread_id() * per_thr;
        double dA = 0.0, dD = 0.0; /* sums over T of terms that cancel: in double */
        const size_t r0 = (size_t)b * T;
        const float *xr = xbc + r0 * Cd;
        HYB_BE_TRY_PAR(rc, ssd_chunked_bwd(be, T, Q, Pd, N, xr + (size_t)h * Pd,
                                           xr + Di + (size_t)g * N, xr + Di + (size_t)(G + g) * N,
                                           Cd, dt + r0 * nh + h, nh, -expf(alog[h]), Dk[h],
                                           dys + r0 * Di + (size_t)h * Pd, Di,
                                           hb + ((size_t)b * nch * nh + h) * PN, (size_t)nh * PN,
                                           dxbc + r0 * Cd + (size_t)h * Pd, dBh + (r0 * nh + h) * N,
                                           dCh + (r0 * nh + h) * N, nh * N, ddt + r0 * nh + h,
                                           &dA, &dD, W));
        pA[(size_t)b * nh + h] = (float)dA;
        pD[(size_t)b * nh + h] = (float)dD;
    }
    /* dB, dC: the heads of each group in order; dt; A_log, D over the batch */
#pragma omp parallel for schedule(static) if ((double)BT * (2 * G * N + nh) > PAR_ELEM)
    for (long rl = 0; rl < (long)BT; rl++) {
        const size_t r = (size_t)rl;
        for (int g = 0; g < G; g++) {
            float *oB = dxbc + r * Cd + Di + (size_t)g * N, *oC = oB + (size_t)G * N;
            for (int n = 0; n < N; n++)
                oB[n] = oC[n] = 0.0f;
            for (int j = 0; j < m->hpg; j++) {
                const int h = g * m->hpg + j;
                hyb_pl_axpy(oB, 1.0f, dBh + (r * nh + h) * N, N);
                hyb_pl_axpy(oC, 1.0f, dCh + (r * nh + h) * N, N);
            }
        }
        for (int h = 0; h < nh; h++)
            dzx[r * Pin + cdt + h] =
                ddt[r * nh + h] * hyb_ssm_dsoftplus(zx[r * Pin + cdt + h] + dtb[h]);
    }
    for (int h = 0; h < nh; h++) { /* rows in order */
        float acc = 0.0f;
        for (size_t r = 0; r < BT; r++)
            acc += dzx[r * Pin + cdt + h];
        Gr[M2_DTB][h] += acc;
    }
    for (int h = 0; h < nh; h++) {
        float sa = 0.0f, sd = 0.0f;
        for (int b = 0; b < B; b++) {
            sa += pA[(size_t)b * nh + h];
            sd += pD[(size_t)b * nh + h];
        }
        Gr[M2_ALOG][h] += sa * -expf(alog[h]);
        Gr[M2_DSKIP][h] += sd;
    }

    /* the conv: dcpre = dxbc silu'(cpre); weights, bias; the input's adjoint into dzx (x|B|C
     * columns), one channel per unit (each owns its column) */
    const float *cw = P[M2_CONVW];
    float *gcw = Gr[M2_CONVW], *gcb = Gr[M2_CONVB];
#pragma omp parallel for schedule(static) if ((double)BT * Cd > PAR_ELEM)
    for (long i = 0; i < (long)(BT * Cd); i++)
        dxbc[i] *= hyb_ssm_dsilu(cpre[i]);
#pragma omp parallel for schedule(static) if (rc == HYB_OK && (double)BT * Cd * K > PAR_WORK)
    for (int c = 0; c < Cd; c++)
        hyb_ssm_conv_bwd(B, T, K, dxbc + c, (size_t)Cd, zx + cx + c, dzx + cx + c, (size_t)Pin,
                         cw + (size_t)c * K, gcw + (size_t)c * K, gcb + c);
    /* in_proj */
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, Pin, D, (int)BT, 1.0f, dzx, Pin, a->x, D, 1.0f, Gr[M2_WIN], D);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, D, Pin, 1.0f, dzx, Pin, P[M2_WIN], D, 0.0f, a->dx, D);
    be->free(be, buf);
    return rc;
}

/* ---- decode ---------------------------------------------------------------------------------*/

int m2_decode(void *self, const hyb_mixer_dec *a) {
    m2 *m = self;
    const hyb_backend *be = a->be;
    HYB_TRY(m2_check_dec(m, a));
    const int n = a->n, D = m->D, Di = m->Di, N = m->N, K = m->K, Pin = m->Pin, Cd = m->Cd,
              nh = m->nh, Pd = m->Pd, G = m->G;
    const float *const *P = a->params;
    /* zx [n, Pin], xbc [n, Cd], ys [n, Di], yn [n, Di] */
    float *buf = be->alloc(be, sizeof(float) * (size_t)n * ((size_t)Pin + Cd + 2 * (size_t)Di));
    if (!buf) return HYB_ERR_NOMEM;
    float *zx = buf, *xbc = zx + (size_t)n * Pin, *ys = xbc + (size_t)n * Cd,
          *yn = ys + (size_t)n * Di;
    int rc = be->sgemm(be, 0, 1, n, Pin, D, 1.0f, a->x, D, P[M2_WIN], D, 0.0f, zx, Pin);
    const float *cw = P[M2_CONVW], *cb = P[M2_CONVB], *dtb = P[M2_DTB], *alog = P[M2_ALOG],
                *Dk = P[M2_DSKIP];
    const int cx = m2_col_x(m), cdt = m2_col_dt(m);
#pragma omp parallel for schedule(static) if (rc == HYB_OK && (double)n * Di * N > PAR_WORK)
    for (int i = 0; i < n; i++) {
        float *ssm = a->states[i], *cs = ssm + (size_t)Di * N;
        if (a->pos[i] == 0) /* a sequence without tokens starts from the zero state */
            memset(ssm, 0, ((size_t)Di * N + (size_t)Cd * K) * sizeof(float));
        const float *zr = zx + (size_t)i * Pin;
        float *xr = xbc + (size_t)i * Cd;
        for (int c = 0; c < Cd; c++) {
            const float acc =
                hyb_ssm_conv_step(cs + (size_t)c * K, K, zr[cx + c], cw + (size_t)c * K, cb[c]);
            xr[c] = hyb_ssm_silu(acc);
        }
        for (int h = 0; h < nh; h++) {
            const int g = h / m->hpg;
            const float dtv = hyb_pl_softplus(zr[cdt + h] + dtb[h]);
            const float e = expf(dtv * -expf(alog[h]));
            const float *xh = xr + (size_t)h * Pd, *Bv = xr + Di + (size_t)g * N,
                        *Cv = xr + Di + (size_t)(G + g) * N;
            float *S = ssm + (size_t)h * Pd * N, *y = ys + (size_t)i * Di + (size_t)h * Pd;
            for (int p = 0; p < Pd; p++) {
                float *Sp = S + (size_t)p * N;
                const float dx_ = dtv * xh[p];
                for (int k = 0; k < N; k++)
                    Sp[k] = e * Sp[k] + dx_ * Bv[k];
                y[p] = hyb_pl_dot(Sp, Cv, N) + Dk[h] * xh[p];
            }
        }
        gate_norm_row(m, ys + (size_t)i * Di, zr, P[M2_NORMW], yn + (size_t)i * Di, NULL);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, n, D, Di, 1.0f, yn, Di, P[M2_WOUT], Di, 0.0f, a->y, D);
    be->free(be, buf);
    return rc;
}
