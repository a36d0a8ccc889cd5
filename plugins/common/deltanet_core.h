/* plugins/common/deltanet_core.h: the delta-rule recurrence of one head, f32, shared (by
 * #include, header-only, all functions static) by the `deltanet` and `gated_deltanet` plugins.
 *
 * One head, state S [dk, dv] (dk = n, dv = nv: expand_v makes them differ), tokens t = 0..T-1
 * with q_t, k_t [n] and v_t [nv] (q, k already L2-normalised, q scaled), beta_t, decay
 * a_t = exp(g_t) (g = NULL: a_t = 1):
 *     S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,     o_t = S_t^T q_t
 * written as u_t = S_{t-1}^T k_t, w_t = beta_t (v_t - a_t u_t), S_t = a_t S_{t-1} + k_t w_t^T.
 *
 * Row t of q/k is at +t*ld, of v at +t*ldv, of o at +t*ldo; beta_t and g_t at +t*ldh. S is
 * row-major [n, nv] (S[m*nv + j]).
 */
#ifndef HYB_PLUGIN_DELTANET_CORE_H
#define HYB_PLUGIN_DELTANET_CORE_H

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "plugin_util.h" /* hyb_pl_dot, hyb_pl_axpy */

/* y[j] = sum_m x[m] S[m, j]  (x^T S), S [n, nv]; y [nv] written */
static inline void dn_vecmat(const float *x, const float *S, float *y, int n, int nv) {
    memset(y, 0, (size_t)nv * sizeof(float));
    for (int m = 0; m < n; m++)
        hyb_pl_axpy(y, x[m], S + (size_t)m * nv, nv);
}

/* Recurrent form (decode, and the reference the chunked form is tested against).
 * S: [n, nv] in/out. o: written. tmp: [2 nv] scratch. */
static void dn_recurrent(int n, int nv, int T, const float *q, const float *k, size_t ld,
                         const float *v, size_t ldv, const float *beta, const float *g, size_t ldh,
                         float *S, float *o, size_t ldo, float *tmp) {
    float *u = tmp, *w = tmp + nv;
    for (int t = 0; t < T; t++) {
        const float *qt = q + t * ld, *kt = k + t * ld, *vt = v + t * ldv;
        const float b = beta[t * ldh], a = g ? expf(g[t * ldh]) : 1.0f;
        dn_vecmat(kt, S, u, n, nv);
        for (int j = 0; j < nv; j++)
            w[j] = b * (vt[j] - a * u[j]);
        for (int m = 0; m < n; m++) {
            float *Sm = S + (size_t)m * nv;
            if (a != 1.0f)
                for (int j = 0; j < nv; j++)
                    Sm[j] *= a;
            hyb_pl_axpy(Sm, kt[m], w, nv);
        }
        dn_vecmat(qt, S, o + t * ldo, n, nv);
    }
}

/* Scratch floats for dn_chunked with chunk c. */
static inline size_t dn_chunked_scratch(int n, int nv, int c) {
    return (size_t)c * c + (size_t)c * nv + (size_t)c * n + (size_t)c;
}

/* Chunked (WY) form, chunks of c tokens (SPEC section 6). Per chunk, with Gam = cumsum(g) inside
 * the chunk (0 without gating) and L_ij = exp(Gam_i - Gam_j):
 *   A = StrictLower((k_beta k^T) . L),  U = (I + A)^-1 v_beta,  W = (I + A)^-1 (k_beta . exp Gam)
 *   (both by forward substitution, no explicit inverse)
 *   v_new = U - W S;  o = (q . exp Gam) S + ((q k^T) . L, incl. diagonal) v_new
 *   S <- exp(Gam_last) S + (k . exp(Gam_last - Gam))^T v_new
 * S: [n, nv] in/out (the state before token 0). chk: if non-NULL, the state at the start of each
 * chunk is copied to chk + ci*n*nv (ceil(T/c) of them), for backward. scr: dn_chunked_scratch. */
static void dn_chunked(int n, int nv, int T, int c, const float *q, const float *k, size_t ld,
                       const float *v, size_t ldv, const float *beta, const float *g, size_t ldh,
                       float *S, float *o, size_t ldo, float *chk, float *scr) {
    const size_t nnv = (size_t)n * nv;
    float *A = scr, *U = A + (size_t)c * c, *W = U + (size_t)c * nv, *Gam = W + (size_t)c * n;
    for (int t0 = 0, ci = 0; t0 < T; t0 += c, ci++) {
        const int cl = T - t0 < c ? T - t0 : c;
        if (chk) memcpy(chk + (size_t)ci * nnv, S, nnv * sizeof(float));
        float acc = 0;
        for (int i = 0; i < cl; i++) {
            if (g) acc += g[(t0 + i) * ldh];
            Gam[i] = acc;
        }
        /* forward substitution for U and W */
        for (int i = 0; i < cl; i++) {
            const float *ki = k + (t0 + i) * ld, *vi = v + (t0 + i) * ldv;
            const float bi = beta[(t0 + i) * ldh], egi = expf(Gam[i]);
            float *Ui = U + (size_t)i * nv, *Wi = W + (size_t)i * n;
            for (int j = 0; j < nv; j++)
                Ui[j] = bi * vi[j];
            for (int j = 0; j < n; j++)
                Wi[j] = bi * egi * ki[j];
            for (int j = 0; j < i; j++) {
                const float aij = bi * hyb_pl_dot(ki, k + (t0 + j) * ld, n) * expf(Gam[i] - Gam[j]);
                A[(size_t)i * c + j] = aij;
                hyb_pl_axpy(Ui, -aij, U + (size_t)j * nv, nv);
                hyb_pl_axpy(Wi, -aij, W + (size_t)j * n, n);
            }
        }
        /* v_new = U - W S (in place in U) */
        for (int i = 0; i < cl; i++) {
            float *Ui = U + (size_t)i * nv;
            const float *Wi = W + (size_t)i * n;
            for (int m = 0; m < n; m++)
                hyb_pl_axpy(Ui, -Wi[m], S + (size_t)m * nv, nv);
        }
        /* outputs from the state before the chunk plus the intra-chunk part */
        for (int i = 0; i < cl; i++) {
            const float *qi = q + (t0 + i) * ld;
            float *oi = o + (t0 + i) * ldo;
            dn_vecmat(qi, S, oi, n, nv);
            const float egi = expf(Gam[i]);
            for (int j = 0; j < nv; j++)
                oi[j] *= egi;
            for (int j = 0; j <= i; j++) {
                const float s = hyb_pl_dot(qi, k + (t0 + j) * ld, n) * expf(Gam[i] - Gam[j]);
                hyb_pl_axpy(oi, s, U + (size_t)j * nv, nv);
            }
        }
        /* state update */
        const float gl = Gam[cl - 1], el = expf(gl);
        if (el != 1.0f)
            for (size_t e = 0; e < nnv; e++)
                S[e] *= el;
        for (int j = 0; j < cl; j++) {
            const float *kj = k + (t0 + j) * ld, *Uj = U + (size_t)j * nv;
            const float dj = expf(gl - Gam[j]);
            for (int m = 0; m < n; m++)
                hyb_pl_axpy(S + (size_t)m * nv, dj * kj[m], Uj, nv);
        }
    }
}

/* Scratch floats for dn_core_backward with chunk c. */
static inline size_t dn_backward_scratch(int n, int nv, int c) {
    return ((size_t)c + 2) * n * nv + 4 * (size_t)nv;
}

/* Backward of the recurrence through its recurrent form, one chunk at a time from the last:
 * the states inside a chunk are recomputed from its saved start state chk[ci] (as dn_chunked
 * wrote them), then the step is reversed with the running gradient dS = dL/dS_t:
 *   dS += q_t do_t^T;  dq_t = S_t do_t
 *   dw = dS^T k_t;  dk_t = dS w_t + S_{t-1} du;  da = <dS, S_{t-1}> - beta (dw . u)
 *   dv_t = beta dw;  dbeta_t = dw . (v_t - a u);  du = -a beta dw
 *   dS <- a dS + k_t du^T;  dg_t = a da
 * The initial state is zero (training runs whole sequences), so dS at t = 0 is dropped.
 * dq, dk rows written (row stride ldd: with grouped values each value head has its own), dv rows
 * (ldv); dbeta, dg written (stride ldh; dg only if g). */
static void dn_core_backward(int n, int nv, int T, int c, const float *q, const float *k,
                             size_t ld, const float *v, size_t ldv, const float *beta,
                             const float *g, size_t ldh, const float *dout, size_t ldo,
                             const float *chk, float *dq, float *dk, size_t ldd, float *dv,
                             float *dbeta, float *dg, float *scr) {
    const size_t nn = (size_t)n * nv;
    float *Sb = scr, *dS = Sb + ((size_t)c + 1) * nn, *u = dS + nn, *w = u + nv, *dw = w + nv,
          *du = dw + nv;
    memset(dS, 0, nn * sizeof(float));
    const int nch = (T + c - 1) / c;
    for (int ci = nch - 1; ci >= 0; ci--) {
        const int t0 = ci * c, cl = T - t0 < c ? T - t0 : c;
        memcpy(Sb, chk + (size_t)ci * nn, nn * sizeof(float));
        for (int i = 0; i < cl; i++) { /* Sb[i+1] = state after token t0+i */
            const int t = t0 + i;
            const float *Sp = Sb + (size_t)i * nn;
            float *Sc = Sb + (size_t)(i + 1) * nn;
            const float b = beta[t * ldh], a = g ? expf(g[t * ldh]) : 1.0f;
            dn_vecmat(k + t * ld, Sp, u, n, nv);
            for (int j = 0; j < nv; j++)
                w[j] = b * (v[t * ldv + j] - a * u[j]);
            for (int m = 0; m < n; m++)
                for (int j = 0; j < nv; j++)
                    Sc[(size_t)m * nv + j] = a * Sp[(size_t)m * nv + j] + k[t * ld + m] * w[j];
        }
        for (int i = cl - 1; i >= 0; i--) {
            const int t = t0 + i;
            const float *Sp = Sb + (size_t)i * nn, *Sc = Sb + (size_t)(i + 1) * nn;
            const float *qt = q + t * ld, *kt = k + t * ld, *vt = v + t * ldv,
                        *dot_ = dout + t * ldo;
            const float b = beta[t * ldh], a = g ? expf(g[t * ldh]) : 1.0f;
            float *dqt = dq + t * ldd, *dkt = dk + t * ldd, *dvt = dv + t * ldv;
            for (int m = 0; m < n; m++) {
                hyb_pl_axpy(dS + (size_t)m * nv, qt[m], dot_, nv);
                dqt[m] = hyb_pl_dot(Sc + (size_t)m * nv, dot_, nv);
            }
            dn_vecmat(kt, Sp, u, n, nv);
            for (int j = 0; j < nv; j++)
                w[j] = b * (vt[j] - a * u[j]);
            dn_vecmat(kt, dS, dw, n, nv);
            float da = 0, dbt = 0, dwu = 0;
            for (int m = 0; m < n; m++) {
                dkt[m] = hyb_pl_dot(dS + (size_t)m * nv, w, nv);
                da += hyb_pl_dot(dS + (size_t)m * nv, Sp + (size_t)m * nv, nv);
            }
            for (int j = 0; j < nv; j++) {
                dvt[j] = b * dw[j];
                dbt += dw[j] * (vt[j] - a * u[j]);
                dwu += dw[j] * u[j];
                du[j] = -a * b * dw[j];
            }
            da -= b * dwu;
            for (int m = 0; m < n; m++) {
                dkt[m] += hyb_pl_dot(Sp + (size_t)m * nv, du, nv);
                float *dSm = dS + (size_t)m * nv;
                for (int j = 0; j < nv; j++)
                    dSm[j] = a * dSm[j] + kt[m] * du[j];
            }
            dbeta[t * ldh] = dbt;
            if (g) dg[t * ldh] = a * da;
        }
    }
}

#endif
