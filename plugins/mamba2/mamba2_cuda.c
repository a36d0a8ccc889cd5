/* plugins/mamba2/mamba2_cuda.c: the `mamba2` mixer on CUDA (kernels[HYB_DEV_CUDA]). The host side
 * only: sizes, scratch from be->alloc, the GEMMs through be->sgemm, and the launches of the kernels
 * of mamba2.cu (embedded at build time as hyb_cu_mamba2_cu, compiled by be->kernel with
 * -DD_STATE=<d_state>; the kernel design is described at the top of mamba2.cu). Nothing here reads
 * or writes device memory from the host except through be->upload/download (the saved block's
 * 64-byte header, the per-sequence state pointers).
 *
 * Same math, saved-block layout and decode-state layout as mamba2_ssd.c (mamba2.h); the results
 * agree with the CPU kernels to f32 rounding (test_mixers compares them at 1e-5).
 *
 * Forward:  zx = x Win^T (sgemm); m2_conv_fwd, m2_dt; m2_ssd_fwd (ys, the chunk-start states, the
 *           final states); m2_gate_norm (yn, rstd); y = yn Wout^T (sgemm); m2_conv_state.
 * Backward: m2_silu, m2_dt, m2_yn; dWout += dy^T yn, dyn = dy Wout (sgemm); m2_norm_bwd,
 *           m2_norm_dw; m2_ssd_bwd; m2_reduce_bc, m2_dt_bwd, m2_colsum (dt_bias), m2_reduce_ad;
 *           m2_dsilu, m2_conv_bwd_w, m2_conv_bwd_x; the in_proj GEMMs.
 * Decode:   zx = x Win^T; m2_decode_conv, m2_decode_ssd, m2_gate_norm; out_proj.
 * Limits (HYB_ERR_UNSUPPORTED naming the op and the shape): d_state <= 128 (registers); headdim
 * <= 1024 (a backward block is one head's rows) with its shared memory (2 d_state (headdim + 1) +
 * 2 headdim floats) <= 48 KiB; batch <= 65535.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "../common/be_call.h"
#include "hyb_plugin_cu.h"
#include "mamba2.h"

#define H_ m2_host
#define CU_FILE "mamba2.cu"
#define CU_MAX_STATE 128
#define CU_TPB 128u
#define CU_SHMEM_MAX (48u * 1024)

enum {
    K_CONV,
    K_DT,
    K_SSD,
    K_NORM,
    K_CSTATE,
    K_SILU,
    K_YN,
    K_NORM_B,
    K_NORM_W,
    K_SSD_B,
    K_RED_BC,
    K_DT_B,
    K_COLSUM,
    K_RED_AD,
    K_DSILU,
    K_CONV_W,
    K_CONV_X,
    K_DEC_CONV,
    K_DEC_SSD,
    K_N
};
static const char *const KNAMES[K_N] = {
    "m2_conv_fwd",  "m2_dt",         "m2_ssd_fwd",    "m2_gate_norm",   "m2_conv_state",
    "m2_silu",      "m2_yn",         "m2_norm_bwd",   "m2_norm_dw",     "m2_ssd_bwd",
    "m2_reduce_bc", "m2_dt_bwd",     "m2_colsum",     "m2_reduce_ad",   "m2_dsilu",
    "m2_conv_bwd_w", "m2_conv_bwd_x", "m2_decode_conv", "m2_decode_ssd"};

static int unsupported(const m2 *m, const char *op, const char *fmt, ...) {
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return H_->error(HYB_ERR_UNSUPPORTED,
                     "mamba2 (layer %d): cuda %s: %s (d_inner = %d, headdim = %d, ngroups = %d, "
                     "d_state = %d, d_conv = %d)",
                     m->layer, op, why, m->Di, m->Pd, m->G, m->N, m->K);
}

static unsigned bwd_shmem(const m2 *m) {
    return (2u * (unsigned)m->N * ((unsigned)m->Pd + 1u) + 2u * (unsigned)m->Pd) *
           (unsigned)sizeof(float);
}

static int check_shape(const m2 *m, const char *op, int B) {
    if (m->N > CU_MAX_STATE)
        return unsupported(m, op,
                           "d_state = %d: a thread keeps one row of the state in registers "
                           "(d_state <= %d)",
                           m->N, CU_MAX_STATE);
    if (B > 65535) return unsupported(m, op, "%d sequences in one call (at most 65535)", B);
    if (m->nh > 65535) return unsupported(m, op, "%d heads (at most 65535)", m->nh);
    return HYB_OK;
}

/* compile (once per instance and backend; be->kernel caches across instances) */
static int load(m2 *m, const hyb_backend *be, const char *op) {
    _Static_assert(sizeof m->cu_fn / sizeof m->cu_fn[0] >= K_N, "m2.cu_fn holds every kernel");
    if (m->cu_be == be) return HYB_OK;
    if (!be->kernel || !be->launch)
        return unsupported(m, op, "backend %s cannot run device kernels", be->name);
    HYB_BE_TRY(hyb_ssm_cu_compile(be, CU_FILE, hyb_cu_mamba2_cu, KNAMES, K_N, m->N, m->cu_fn));
    m->cu_be = be;
    return HYB_OK;
}

static int launch3(const hyb_backend *be, const m2 *m, int k, unsigned gx, unsigned gy,
                   unsigned gz, unsigned bx, unsigned shmem, void **args) {
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, 1, 1};
    return be->launch(be, m->cu_fn[k], KNAMES[k], grid, block, shmem, args);
}

/* a grid-stride loop over n elements */
static int launch_n(const hyb_backend *be, const m2 *m, int k, int64_t n, void **args) {
    return launch3(be, m, k, hyb_ssm_grid_for(n, CU_TPB), 1, 1, CU_TPB, 0, args);
}

/* threads per block over headdim rows: headdim rounded up to a warp, at most CU_TPB */
static unsigned row_threads(int Pd) {
    return hyb_ssm_warp_threads(Pd, CU_TPB);
}



/* ---- forward / prefill ----------------------------------------------------------------------*/

int m2_forward_cuda(void *self, const hyb_mixer_fwd *a) {
    m2 *m = self;
    const hyb_backend *be = a->be;
    HYB_TRY(m2_check_fwd(m, a));
    HYB_TRY(check_shape(m, "forward", a->B));
    HYB_TRY(load(m, be, "forward"));
    int B = a->B, T = a->T, D = m->D, Di = m->Di, Pd = m->Pd, nh = m->nh, G = m->G, Cd = m->Cd,
        Pin = m->Pin, K = m->K, cx = m2_col_x(m), cdt = m2_col_dt(m), chunk = m->Q,
        nch = m2_n_chunks(T, m->Q);
    int64_t rows = (int64_t)B * T, woff = (int64_t)Di * m->N;
    const size_t BT = (size_t)rows;
    const float *const *P = a->params;
    const size_t nsv = BT * ((size_t)Pin + Cd + Di + G);
    void *tmp = NULL, *seqs = NULL;
    unsigned char *base = a->saved;
    if (!base) {
        tmp = be->alloc(be, sizeof(m2_saved_hdr) + nsv * sizeof(float));
        if (!tmp) return HYB_ERR_NOMEM;
        base = tmp;
    }
    float *zx = (float *)(base + sizeof(m2_saved_hdr)), *cpre = zx + BT * Pin, *ys = cpre + BT * Cd,
          *rstd = ys + BT * Di, *hb = a->saved ? rstd + BT * G : NULL;
    /* xbc [BT, Cd], dt [BT, nh], yn [BT, Di] */
    float *work = be->alloc(be, BT * ((size_t)Cd + nh + Di) * sizeof(float));
    float **dst = NULL;
    int *dcont = NULL;
    int rc = work ? HYB_OK : HYB_ERR_NOMEM;
    if (rc == HYB_OK && a->saved) {
        m2_saved_hdr h;
        hyb_ssm_saved_fill(&h, M2_SAVED_MAGIC, B, T, chunk, nch);
        rc = be->upload(be, a->saved, &h, sizeof h);
    }
    if (rc == HYB_OK && a->states)
        rc = hyb_ssm_upload_seqs(H_, be, a->states, a->pos, B, &seqs, &dst, &dcont);
    float *xbc = work, *dt = work ? work + BT * Cd : NULL, *yn = dt ? dt + BT * nh : NULL;
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, Pin, D, 1.0f, a->x, D, P[M2_WIN], D, 0.0f, zx, Pin);
    const float *cw = P[M2_CONVW], *cb = P[M2_CONVB], *dtb = P[M2_DTB], *alog = P[M2_ALOG],
                *Dk = P[M2_DSKIP], *nw = P[M2_NORMW];
    if (rc == HYB_OK) {
        void *args[] = {&zx, &cw, &cb, &dst, &dcont, &cpre, &xbc, &B, &T, &Cd, &Pin, &cx, &K, &woff};
        rc = launch_n(be, m, K_CONV, rows * Cd, args);
    }
    if (rc == HYB_OK) {
        void *args[] = {&zx, &dtb, &dt, &rows, &nh, &Pin, &cdt};
        rc = launch_n(be, m, K_DT, rows * nh, args);
    }
    if (rc == HYB_OK) {
        const unsigned rt = row_threads(Pd);
        void *args[] = {&xbc, &dt, &alog, &Dk, &ys, &hb, &dst, &dcont, &B,
                        &T,   &Di, &Pd,   &nh, &G,  &Cd, &chunk, &nch};
        rc = launch3(be, m, K_SSD, ((unsigned)Pd + rt - 1) / rt, (unsigned)nh, (unsigned)B, rt, 0,
                     args);
    }
    if (rc == HYB_OK) {
        float eps = m->eps;
        void *args[] = {&ys, &zx, &nw, &yn, &rstd, &rows, &Di, &G, &Pin, &eps};
        rc = launch_n(be, m, K_NORM, rows * G, args);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, D, Di, 1.0f, yn, Di, P[M2_WOUT], Di, 0.0f, a->y, D);
    if (rc == HYB_OK && a->states) {
        void *args[] = {&zx, &dst, &dcont, &B, &T, &Cd, &Pin, &cx, &K, &woff};
        rc = launch3(be, m, K_CSTATE, ((unsigned)Cd + CU_TPB - 1) / CU_TPB, (unsigned)B, 1, CU_TPB,
                     0, args);
    }
    be->free(be, seqs);
    be->free(be, work);
    be->free(be, tmp);
    return rc;
}

/* ---- backward -------------------------------------------------------------------------------*/

int m2_backward_cuda(void *self, const hyb_mixer_bwd *a) {
    m2 *m = self;
    const hyb_backend *be = a->be;
    int B = a->B, T = a->T, D = m->D, Di = m->Di, Pd = m->Pd, nh = m->nh, G = m->G, Cd = m->Cd,
        Pin = m->Pin, K = m->K, cx = m2_col_x(m), cdt = m2_col_dt(m);
    m2_saved_hdr hdr;
    memset(&hdr, 0, sizeof hdr);
    if (a->saved) HYB_TRY(be->download(be, &hdr, a->saved, sizeof hdr));
    HYB_TRY(m2_check_saved(m, a->saved ? &hdr : NULL, B, T));
    HYB_TRY(check_shape(m, "backward", B));
    const unsigned shm = bwd_shmem(m);
    if (Pd > 1024 || shm > CU_SHMEM_MAX)
        return unsupported(m, "backward",
                           "one head's block needs headdim = %d threads and %u bytes of shared "
                           "memory (at most 1024 and %u)",
                           Pd, shm, CU_SHMEM_MAX);
    HYB_TRY(load(m, be, "backward"));
    int chunk = hdr.chunk, nch = hdr.nch, Lc = chunk < T ? chunk : T;
    int64_t rows = (int64_t)B * T;
    const size_t BT = (size_t)rows;
    const float *zx = (const float *)((const unsigned char *)a->saved + sizeof(m2_saved_hdr)),
                *cpre = zx + BT * Pin, *ys = cpre + BT * Cd, *rstd = ys + BT * Di,
                *hb = rstd + BT * G;
    const float *const *P = a->params;
    float *const *Gr = a->grads;
    /* dzx [BT, Pin], xbc, dxbc [BT, Cd], dt, ddt [BT, nh], yn (then dyn), dys [BT, Di], dBh, dCh
     * [BT, nh, N], pA, pD [B, nh], the recomputed states S [B, nh, Lc, N, Pd] */
    const size_t nf = BT * ((size_t)Pin + 2 * (size_t)Cd + 2 * (size_t)nh + 2 * (size_t)Di +
                            2 * (size_t)nh * m->N) +
                      2 * (size_t)B * nh + (size_t)B * nh * Lc * m->N * Pd;
    float *buf = be->alloc(be, nf * sizeof(float));
    if (!buf) return HYB_ERR_NOMEM;
    float *dzx = buf, *xbc = dzx + BT * Pin, *dxbc = xbc + BT * Cd, *dt = dxbc + BT * Cd,
          *ddt = dt + BT * nh, *yn = ddt + BT * nh, *dys = yn + BT * Di, *dBh = dys + BT * Di,
          *dCh = dBh + BT * nh * m->N, *pA = dCh + BT * nh * m->N, *pD = pA + (size_t)B * nh,
          *S = pD + (size_t)B * nh;
    const float *dtb = P[M2_DTB], *nw = P[M2_NORMW], *alog = P[M2_ALOG], *Dk = P[M2_DSKIP],
                *cw = P[M2_CONVW];
    int rc = be->memset0(be, dzx, BT * Pin * sizeof(float));
    if (rc == HYB_OK) {
        int64_t n = rows * Cd;
        void *args[] = {&cpre, &xbc, &n};
        rc = launch_n(be, m, K_SILU, n, args);
    }
    if (rc == HYB_OK) {
        void *args[] = {&zx, &dtb, &dt, &rows, &nh, &Pin, &cdt};
        rc = launch_n(be, m, K_DT, rows * nh, args);
    }
    if (rc == HYB_OK) {
        void *args[] = {&ys, &zx, &rstd, &nw, &yn, &rows, &Di, &G, &Pin};
        rc = launch_n(be, m, K_YN, rows * Di, args);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, D, Di, (int)BT, 1.0f, a->dy, D, yn, Di, 1.0f, Gr[M2_WOUT], Di);
    float *dyn = yn;
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, Di, D, 1.0f, a->dy, D, P[M2_WOUT], Di, 0.0f, dyn, Di);
    if (rc == HYB_OK) {
        void *args[] = {&ys, &zx, &rstd, &nw, &dyn, &dys, &dzx, &rows, &Di, &G, &Pin};
        rc = launch_n(be, m, K_NORM_B, rows * G, args);
    }
    if (rc == HYB_OK) {
        float *gw = Gr[M2_NORMW];
        void *args[] = {&ys, &zx, &rstd, &dyn, &gw, &rows, &Di, &G, &Pin};
        rc = launch3(be, m, K_NORM_W, ((unsigned)Di + CU_TPB - 1) / CU_TPB, 1, 1, CU_TPB, 0, args);
    }
    if (rc == HYB_OK) {
        void *args[] = {&xbc, &dt, &dys, &alog, &Dk, &hb, &S,  &dxbc, &dBh,   &dCh,  &ddt, &pA,
                        &pD,  &B,  &T,   &Di,   &Pd, &nh, &G,  &Cd,   &chunk, &nch,  &Lc};
        rc = launch3(be, m, K_SSD_B, (unsigned)nh, (unsigned)B, 1, (unsigned)Pd, shm, args);
    }
    if (rc == HYB_OK) {
        void *args[] = {&dBh, &dCh, &dxbc, &rows, &Di, &nh, &G, &Cd};
        rc = launch_n(be, m, K_RED_BC, rows * 2 * G * m->N, args);
    }
    if (rc == HYB_OK) {
        void *args[] = {&ddt, &zx, &dtb, &dzx, &rows, &nh, &Pin, &cdt};
        rc = launch_n(be, m, K_DT_B, rows * nh, args);
    }
    if (rc == HYB_OK) {
        float *col = dzx + cdt, *gb = Gr[M2_DTB];
        void *args[] = {&col, &gb, &rows, &nh, &Pin};
        rc = launch3(be, m, K_COLSUM, ((unsigned)nh + CU_TPB - 1) / CU_TPB, 1, 1, CU_TPB, 0, args);
    }
    if (rc == HYB_OK) {
        float *gA = Gr[M2_ALOG], *gD = Gr[M2_DSKIP];
        void *args[] = {&pA, &pD, &alog, &gA, &gD, &B, &nh};
        rc = launch3(be, m, K_RED_AD, ((unsigned)nh + CU_TPB - 1) / CU_TPB, 1, 1, CU_TPB, 0, args);
    }
    if (rc == HYB_OK) {
        int64_t n = rows * Cd;
        void *args[] = {&dxbc, &cpre, &n};
        rc = launch_n(be, m, K_DSILU, n, args);
    }
    if (rc == HYB_OK) {
        float *gcw = Gr[M2_CONVW], *gcb = Gr[M2_CONVB];
        void *args[] = {&dxbc, &zx, &gcw, &gcb, &B, &T, &Cd, &Pin, &cx, &K};
        rc = launch3(be, m, K_CONV_W,
                     (unsigned)(((int64_t)(K + 1) * Cd + CU_TPB - 1) / CU_TPB), 1, 1, CU_TPB, 0,
                     args);
    }
    if (rc == HYB_OK) {
        void *args[] = {&dxbc, &cw, &dzx, &B, &T, &Cd, &Pin, &cx, &K};
        rc = launch_n(be, m, K_CONV_X, rows * Cd, args);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, Pin, D, (int)BT, 1.0f, dzx, Pin, a->x, D, 1.0f, Gr[M2_WIN], D);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, D, Pin, 1.0f, dzx, Pin, P[M2_WIN], D, 0.0f, a->dx, D);
    be->free(be, buf);
    return rc;
}

/* ---- decode ---------------------------------------------------------------------------------*/

int m2_decode_cuda(void *self, const hyb_mixer_dec *a) {
    m2 *m = self;
    const hyb_backend *be = a->be;
    HYB_TRY(m2_check_dec(m, a));
    HYB_TRY(check_shape(m, "decode", 1));
    HYB_TRY(load(m, be, "decode"));
    int n = a->n, D = m->D, Di = m->Di, Pd = m->Pd, nh = m->nh, G = m->G, Cd = m->Cd,
        Pin = m->Pin, K = m->K, cx = m2_col_x(m), cdt = m2_col_dt(m);
    int64_t rows = n, woff = (int64_t)Di * m->N;
    const float *const *P = a->params;
    /* zx [n, Pin], xbc [n, Cd], ys, yn [n, Di] */
    float *buf = be->alloc(be, sizeof(float) * (size_t)n * ((size_t)Pin + Cd + 2 * (size_t)Di));
    if (!buf) return HYB_ERR_NOMEM;
    float *zx = buf, *xbc = zx + (size_t)n * Pin, *ys = xbc + (size_t)n * Cd,
          *yn = ys + (size_t)n * Di, *no_rstd = NULL;
    int rc = be->sgemm(be, 0, 1, n, Pin, D, 1.0f, a->x, D, P[M2_WIN], D, 0.0f, zx, Pin);
    const float *cw = P[M2_CONVW], *cb = P[M2_CONVB], *dtb = P[M2_DTB], *alog = P[M2_ALOG],
                *Dk = P[M2_DSKIP], *nw = P[M2_NORMW];
    const unsigned rt = row_threads(Pd);
    for (int i0 = 0; rc == HYB_OK && i0 < n; i0 += HYB_SSM_SEQ_MAX) {
        const int cnt = n - i0 < HYB_SSM_SEQ_MAX ? n - i0 : HYB_SSM_SEQ_MAX;
        hyb_ssm_seqs sq;
        memset(&sq, 0, sizeof sq);
        for (int i = 0; i < cnt; i++) {
            sq.p[i] = a->states[i0 + i];
            sq.cont[i] = a->pos[i0 + i] > 0;
        }
        void *ca[] = {&zx, &cw, &cb, &sq, &i0, &xbc, &n, &Cd, &Pin, &cx, &K, &woff};
        rc = launch3(be, m, K_DEC_CONV, ((unsigned)Cd + CU_TPB - 1) / CU_TPB, (unsigned)cnt, 1,
                     CU_TPB, 0, ca);
        void *sa[] = {&zx, &xbc, &dtb, &alog, &Dk, &sq, &i0,  &ys,
                      &n,  &Di,  &Pd,  &nh,   &G,  &Cd, &Pin, &cdt};
        if (rc == HYB_OK)
            rc = launch3(be, m, K_DEC_SSD, ((unsigned)Pd + rt - 1) / rt, (unsigned)nh,
                         (unsigned)cnt, rt, 0, sa);
    }
    if (rc == HYB_OK) {
        float eps = m->eps;
        void *args[] = {&ys, &zx, &nw, &yn, &no_rstd, &rows, &Di, &G, &Pin, &eps};
        rc = launch_n(be, m, K_NORM, rows * G, args);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, n, D, Di, 1.0f, yn, Di, P[M2_WOUT], Di, 0.0f, a->y, D);
    be->free(be, buf);
    return rc;
}
