/* plugins/mamba1/mamba1_cuda.c: the `mamba1` mixer on CUDA (kernels[HYB_DEV_CUDA]). The host side
 * only: sizes, scratch from be->alloc, the GEMMs through be->sgemm, and the launches of the
 * kernels of mamba1.cu (embedded at build time as hyb_cu_mamba1_cu, compiled by be->kernel with
 * -DD_STATE=<d_state>; the kernel design is described at the top of mamba1.cu). Nothing here
 * reads or writes device memory from the host except through be->upload/download (the saved
 * block's 64-byte header, the per-sequence state pointers).
 *
 * Same math, saved-block layout (mamba1.h) and decode-state layout as mamba1_scan.c; the results
 * agree with the CPU kernels to f32 rounding (test_mixers compares them at 1e-5).
 *
 * Forward:  zxbc, dtl = x [Win; Wdtin]^T, v = dtl Wdt^T      (sgemm)
 *           m1_prep_fwd: v += b_dt (x2), dt = softplus(v), cpre = conv(x_rep), u = silu(cpre)
 *           [T over several chunks: m1_scan_local, m1_scan_carry: the chunk-start states]
 *           m1_scan_fwd: ys, yg = ys silu(z), the chunk-start states, the final state and window
 *           y = yg Wout^T                                    (sgemm)
 * Backward: m1_gate_fwd (yg), dWout += dy^T yg, dyg = dy Wout, m1_gate_bwd (dz's z columns, dys),
 *           [several chunks: m1_bwd_local, m1_bwd_carry: dh at every chunk end]
 *           m1_scan_bwd per wave of chunks (dv, dcpre, dB, dC, per-(sequence, chunk) dA/dD),
 *           m1_reduce_dA, m1_colsum (b_dt),
 *           the dt_proj / dt_in_proj GEMMs, m1_conv_bwd_w, m1_conv_bwd_x (dz's x columns),
 *           the in_proj GEMMs.
 * Decode:   the three input GEMMs, m1_decode (conv window, scan step, gate on the state in place),
 *           out_proj.
 * Limits (HYB_ERR_UNSUPPORTED naming the op and the shape): d_state <= 64 (registers); backward:
 * one x/B group (d_state * repeat channels) per block, <= 1024 threads and its shared memory
 * (2 d_state (threads + 1) floats) <= 48 KiB; batch <= 65535.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "../common/be_call.h"
#include "hyb_plugin_cu.h"
#include "mamba1.h"

#define H_ m1_host
#define CU_FILE "mamba1.cu"
#define CU_MAX_STATE 64
#define CU_TPB 128u               /* threads per block of the per-channel kernels */
#define CU_SHMEM_MAX (48u * 1024) /* static + dynamic shared memory without an opt-in */
/* backward: chunks per wave of m1_scan_bwd, for about this many threads in flight, unless their
 * recomputed states (B * wave * L * N * Di floats) would pass CU_WAVE_BYTES */
#define CU_WAVE_THREADS ((int64_t)1 << 17)
#define CU_WAVE_BYTES ((int64_t)512 << 20)

enum {
    K_PREP,
    K_SCAN,
    K_GATE_F,
    K_GATE_B,
    K_SCAN_B,
    K_RED,
    K_COLSUM,
    K_CONV_W,
    K_CONV_X,
    K_DEC,
    K_LOCAL,
    K_CARRY,
    K_BLOCAL,
    K_BCARRY,
    K_N
};
static const char *const KNAMES[K_N] = {
    "m1_prep_fwd",   "m1_scan_fwd",   "m1_gate_fwd",   "m1_gate_bwd",   "m1_scan_bwd",
    "m1_reduce_dA",  "m1_colsum",     "m1_conv_bwd_w", "m1_conv_bwd_x", "m1_decode",
    "m1_scan_local", "m1_scan_carry", "m1_bwd_local",  "m1_bwd_carry"};

/* HYB_ERR_UNSUPPORTED naming the mixer, the layer, the op and the shape */
static int unsupported(const m1 *m, const char *op, const char *fmt, ...) {
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return H_->error(HYB_ERR_UNSUPPORTED,
                     "mamba1 (layer %d): cuda %s: %s (d_inner = %d, d_xb = %d, d_state = %d, "
                     "d_conv = %d)",
                     m->layer, op, why, m->Di, m->Dx, m->N, m->K);
}

/* The shapes the kernels take; backward also needs its block of whole x/B groups. */
static int check_shape(const m1 *m, const char *op, int B, int T) {
    if (m->N > CU_MAX_STATE)
        return unsupported(m, op,
                           "d_state = %d: the kernels keep a channel's states in registers "
                           "(d_state <= %d)",
                           m->N, CU_MAX_STATE);
    if (B > 65535) return unsupported(m, op, "%d sequences in one call (at most 65535)", B);
    if (m1_n_chunks(T, m->chunk) > 65535)
        return unsupported(m, op, "T = %d in %d chunks of %d (at most 65535 chunks)", T,
                           m1_n_chunks(T, m->chunk), m->chunk);
    return HYB_OK;
}

/* backward's block: gpb whole x/B groups (rep * N channels each), about CU_TPB threads */
static int bwd_block(const m1 *m, unsigned *threads, unsigned *shmem, unsigned *blocks) {
    const int gsz = m->rep * m->N;
    int gpb = (int)CU_TPB / gsz;
    if (gpb < 1) gpb = 1;
    if (gpb > m->nX) gpb = m->nX;
    const unsigned th = (unsigned)(gpb * gsz),
                   sh = 2u * (unsigned)m->N * (th + 1u) * (unsigned)sizeof(float);
    if (th > 1024 || sh > CU_SHMEM_MAX)
        return unsupported(m, "backward",
                           "an x/B group of %d channels (d_state * repeat = %d * %d) needs one "
                           "block of %u threads and %u bytes of shared memory (at most 1024 and "
                           "%u)",
                           gsz, m->N, m->rep, th, sh, CU_SHMEM_MAX);
    *threads = th;
    *shmem = sh;
    *blocks = (unsigned)((m->nX + gpb - 1) / gpb);
    return HYB_OK;
}

/* compile (once per instance and backend; be->kernel caches across instances) */
static int load(m1 *m, const hyb_backend *be, const char *op) {
    if (m->cu_be == be) return HYB_OK;
    if (!be->kernel || !be->launch)
        return unsupported(m, op, "backend %s cannot run device kernels", be->name);
    HYB_BE_TRY(hyb_ssm_cu_compile(be, CU_FILE, hyb_cu_mamba1_cu, KNAMES, K_N, m->N, m->cu_fn));
    m->cu_be = be;
    return HYB_OK;
}

static int launch(const hyb_backend *be, const m1 *m, int k, unsigned gx, unsigned gy, unsigned bx,
                  unsigned shmem, void **args) {
    const unsigned grid[3] = {gx, gy, 1}, block[3] = {bx, 1, 1};
    return be->launch(be, m->cu_fn[k], KNAMES[k], grid, block, shmem, args);
}

/* threads per block of a kernel with one thread per channel: CU_TPB, or d_inner rounded up to a
 * warp when it is smaller (fewer idle threads; each is a fiber in the emulation) */
static unsigned chan_threads(int Di) {
    return hyb_ssm_warp_threads(Di, CU_TPB);
}

/* blocks of CU_TPB for a grid-stride loop over n elements */
static unsigned grid_for(int64_t n) {
    return hyb_ssm_grid_for(n, CU_TPB);
}

/* rows per blockIdx.y chunk of the column reductions: one chunk (deterministic) up to 4096
 * rows, else enough chunks to fill the device (combined by atomics) */
static int64_t rows_chunk(int64_t rows, unsigned *ny) {
    int64_t per = rows <= 4096 ? rows : 1024;
    if (per < 1) per = 1;
    *ny = (unsigned)((rows + per - 1) / per);
    return per;
}



/* ---- forward / prefill ----------------------------------------------------------------------*/

int m1_forward_cuda(void *self, const hyb_mixer_fwd *a) {
    m1 *m = self;
    const hyb_backend *be = a->be;
    HYB_TRY(m1_check_fwd(m, a));
    HYB_TRY(check_shape(m, "forward", a->B, a->T));
    HYB_TRY(load(m, be, "forward"));
    int B = a->B, T = a->T, D = m->D, Di = m->Di, Dx = m->Dx, K = m->K, R = m->R, Pw = m->P,
        rep = m->rep, dbl = m->dbl;
    const size_t BT = (size_t)B * T;
    int chunk = m->chunk, nch = m1_n_chunks(T, chunk);
    const float *const *P = a->params;

    /* zxbc, dtl, v, cpre, ys (+ hb) after the header of `saved`, or of a temporary block */
    const size_t fl = BT * ((size_t)Pw + R + 3 * (size_t)Di);
    void *tmp = NULL, *seqs = NULL;
    unsigned char *base = a->saved;
    if (!base) {
        tmp = be->alloc(be, sizeof(m1_saved_hdr) + fl * sizeof(float));
        if (!tmp) return HYB_ERR_NOMEM;
        base = tmp;
    }
    float *zxbc = (float *)(base + sizeof(m1_saved_hdr)), *dtl = zxbc + BT * Pw, *v = dtl + BT * R,
          *cpre = v + BT * Di, *ys = cpre + BT * Di;
    float *hb = a->saved ? ys + BT * Di : NULL;
    /* dt [BT, Di] (then the gated ys, out_proj's input), u [BT, Di]; with several chunks (the
     * split scan) hl [B, nch, N, Di], sdt [B, nch, Di] and, without `saved`, hb [B, nch, Di, N] */
    int split = nch > 1;
    const size_t nchunk = split ? (size_t)B * nch * Di : 0;
    float *work =
        be->alloc(be, (2 * BT * Di + nchunk * (m->N + 1 + (a->saved ? 0 : m->N))) * sizeof(float));
    float **dst = NULL;
    int *dcont = NULL;
    int rc = work ? HYB_OK : HYB_ERR_NOMEM;
    if (rc == HYB_OK && a->saved) {
        m1_saved_hdr h;
        hyb_ssm_saved_fill(&h, M1_SAVED_MAGIC, B, T, chunk, nch);
        rc = be->upload(be, a->saved, &h, sizeof h);
    }
    if (rc == HYB_OK && a->states)
        rc = hyb_ssm_upload_seqs(H_, be, a->states, a->pos, B, &seqs, &dst, &dcont);
    float *dt = work, *u = work ? work + BT * Di : NULL;
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, Pw, D, 1.0f, a->x, D, P[M1_WIN], D, 0.0f, zxbc, Pw);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, R, D, 1.0f, a->x, D, P[M1_WDTIN], D, 0.0f, dtl, R);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, Di, R, 1.0f, dtl, R, P[M1_WDT], R, 0.0f, v, Di);
    if (rc == HYB_OK) {
        const float *cw = P[M1_CONVW], *cb = P[M1_CONVB], *bdt = P[M1_BDT];
        void *args[] = {&zxbc, &v, &cw, &cb, &bdt, &dst, &dcont, &cpre, &u,
                        &dt,   &B, &T,  &Di, &Dx,  &Pw,  &K,     &rep,  &dbl};
        rc = launch(be, m, K_PREP, grid_for((int64_t)BT * Di), 1, CU_TPB, 0, args);
    }
    const unsigned ct = chan_threads(Di), gx = ((unsigned)Di + ct - 1) / ct;
    const float *alog = P[M1_ALOG], *Dk = P[M1_DSKIP];
    if (rc == HYB_OK && split) { /* the chunk-start states first, in two passes */
        float *hl = u + BT * Di, *sdt = hl + nchunk * m->N;
        if (!hb) hb = sdt + nchunk;
        void *la[] = {&zxbc, &dt, &u, &alog, &hl, &sdt, &B, &T, &Di, &Dx, &Pw, &rep, &chunk, &nch};
        const unsigned grid[3] = {gx, (unsigned)(nch - 1), (unsigned)B}, block[3] = {ct, 1, 1};
        rc = be->launch(be, m->cu_fn[K_LOCAL], KNAMES[K_LOCAL], grid, block, 0, la);
        void *ca[] = {&hl, &sdt, &alog, &hb, &dst, &dcont, &B, &Di, &nch};
        if (rc == HYB_OK) rc = launch(be, m, K_CARRY, gx, (unsigned)B, ct, 0, ca);
    }
    if (rc == HYB_OK) {
        float *yg = dt; /* read (dt) then written (yg) by the same thread */
        void *args[] = {&zxbc, &dt, &u,  &alog, &Dk, &ys, &yg,  &hb,    &dst, &dcont,
                        &B,    &T,  &Di, &Dx,   &Pw, &K,  &rep, &chunk, &nch, &split};
        const unsigned grid[3] = {gx, (unsigned)B, split ? (unsigned)nch : 1u},
                       block[3] = {ct, 1, 1};
        rc = be->launch(be, m->cu_fn[K_SCAN], KNAMES[K_SCAN], grid, block, 0, args);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, (int)BT, D, Di, 1.0f, dt, Di, P[M1_WOUT], Di, 0.0f, a->y, D);
    be->free(be, seqs);
    be->free(be, work);
    be->free(be, tmp);
    return rc;
}

/* ---- backward -------------------------------------------------------------------------------*/

int m1_backward_cuda(void *self, const hyb_mixer_bwd *a) {
    m1 *m = self;
    const hyb_backend *be = a->be;
    int B = a->B, T = a->T, D = m->D, Di = m->Di, Dx = m->Dx, K = m->K, R = m->R, Pw = m->P,
        rep = m->rep;
    m1_saved_hdr hdr;
    memset(&hdr, 0, sizeof hdr);
    if (a->saved) HYB_TRY(be->download(be, &hdr, a->saved, sizeof hdr));
    HYB_TRY(hyb_ssm_check_saved(H_, "mamba1", m->layer, a->saved ? &hdr : NULL, M1_SAVED_MAGIC, B,
                                T));
    HYB_TRY(check_shape(m, "backward", B, T));
    unsigned bth = 0, bsh = 0, bgx = 0;
    HYB_TRY(bwd_block(m, &bth, &bsh, &bgx));
    HYB_TRY(load(m, be, "backward"));
    int chunk = hdr.chunk, nch = hdr.nch, Lc = chunk < T ? chunk : T;
    const size_t BT = (size_t)B * T;
    int64_t rows = (int64_t)BT;
    const float *zxbc = (const float *)((const unsigned char *)a->saved + sizeof(m1_saved_hdr)),
                *dtl = zxbc + BT * Pw, *v = dtl + BT * R, *cpre = v + BT * Di, *ys = cpre + BT * Di,
                *hb = ys + BT * Di;
    const float *const *P = a->params;
    float *const *G = a->grads;

    /* chunks per wave of the reverse scan */
    const int64_t per_chunk = (int64_t)B * Lc * m->N * Di;
    int64_t w = (CU_WAVE_THREADS + (int64_t)B * Di - 1) / ((int64_t)B * Di);
    if (w * per_chunk * (int64_t)sizeof(float) > CU_WAVE_BYTES)
        w = CU_WAVE_BYTES / ((int64_t)sizeof(float) * per_chunk);
    if (w > nch) w = nch;
    if (w < 1) w = 1;
    const int wave = (int)w;

    /* dz [BT, P] (zeroed: the conv adds into its x columns), dys, ddt (first the gated ys),
     * dcpre [BT, Di], ddtl [BT, R], the recomputed states S [B, wave, Lc, N, Di], partA
     * [B, nch, Di, N], partD [B, nch, Di]; with several chunks L, E [B, nch, N, Di], sdt [B, nch,
     * Di] (m1_bwd_local / m1_bwd_carry) */
    const size_t nz = BT * Pw, npc = (size_t)B * nch * Di,
                 nf = nz + 3 * BT * Di + BT * R + (size_t)wave * per_chunk + npc * (m->N + 1) +
                      (nch > 1 ? npc * (2 * (size_t)m->N + 1) : 0);
    float *buf = be->alloc(be, nf * sizeof(float));
    if (!buf) return HYB_ERR_NOMEM;
    float *dz = buf, *dys = dz + nz, *ddt = dys + BT * Di, *dcpre = ddt + BT * Di,
          *ddtl = dcpre + BT * Di, *S = ddtl + BT * R, *partA = S + (size_t)wave * per_chunk,
          *partD = partA + npc * m->N, *Lb = partD + npc, *E = NULL, *sdt = NULL;
    if (nch > 1) {
        E = Lb + npc * m->N;
        sdt = E + npc * m->N;
    }
    int rc = be->memset0(be, dz, nz * sizeof(float));

    /* out_proj and the gate */
    float *yg = ddt;
    if (rc == HYB_OK) {
        void *args[] = {&ys, &zxbc, &yg, &rows, &Di, &Pw};
        rc = launch(be, m, K_GATE_F, grid_for(rows * Di), 1, CU_TPB, 0, args);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, D, Di, (int)BT, 1.0f, a->dy, D, yg, Di, 1.0f, G[M1_WOUT], Di);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, Di, D, 1.0f, a->dy, D, P[M1_WOUT], Di, 0.0f, dys, Di);
    if (rc == HYB_OK) {
        void *args[] = {&ys, &zxbc, &dys, &dz, &rows, &Di, &Pw};
        rc = launch(be, m, K_GATE_B, grid_for(rows * Di), 1, CU_TPB, 0, args);
    }
    /* the scan in reverse: dh at every chunk end, then the chunks in waves; dA_log and D over
     * the batch and the chunks */
    const unsigned ct = chan_threads(Di), gx = ((unsigned)Di + ct - 1) / ct;
    const float *alog = P[M1_ALOG], *Dk = P[M1_DSKIP];
    if (rc == HYB_OK && nch > 1) {
        void *la[] = {&zxbc, &v, &dys, &alog, &Lb, &sdt, &B, &T, &Di, &Dx, &Pw, &chunk, &nch};
        const unsigned grid[3] = {gx, (unsigned)(nch - 1), (unsigned)B}, block[3] = {ct, 1, 1};
        rc = be->launch(be, m->cu_fn[K_BLOCAL], KNAMES[K_BLOCAL], grid, block, 0, la);
        void *ca[] = {&Lb, &sdt, &alog, &E, &B, &Di, &nch};
        if (rc == HYB_OK) rc = launch(be, m, K_BCARRY, gx, (unsigned)B, ct, 0, ca);
    }
    for (int cbase = 0; rc == HYB_OK && cbase < nch; cbase += wave) {
        void *args[] = {&zxbc, &v,  &cpre, &dys,   &alog,  &Dk,    &hb, &E,
                        &S,    &dz, &ddt,  &dcpre, &partA, &partD, &B,  &T,
                        &Di,   &Dx, &Pw,   &rep,   &chunk, &nch,   &Lc, &cbase};
        const unsigned nz3 = (unsigned)(nch - cbase < wave ? nch - cbase : wave);
        const unsigned grid[3] = {bgx, (unsigned)B, nz3}, block[3] = {bth, 1, 1};
        rc = be->launch(be, m->cu_fn[K_SCAN_B], KNAMES[K_SCAN_B], grid, block, bsh, args);
    }
    if (rc == HYB_OK) {
        float *gA = G[M1_ALOG], *gD = G[M1_DSKIP];
        int np = B * nch;
        void *args[] = {&partA, &partD, &alog, &gA, &gD, &np, &Di};
        rc = launch(be, m, K_RED, (unsigned)(((int64_t)Di * m->N + CU_TPB - 1) / CU_TPB), 1, CU_TPB,
                    0, args);
    }
    /* dt_proj bias (added twice for m2: twice the gradient), dt_proj, dt_in_proj */
    if (rc == HYB_OK) {
        float *gb = G[M1_BDT], scale = m->dbl ? 2.0f : 1.0f;
        unsigned ny;
        int64_t per = rows_chunk(rows, &ny);
        void *args[] = {&ddt, &gb, &rows, &Di, &scale, &per};
        rc = launch(be, m, K_COLSUM, (unsigned)((Di + CU_TPB - 1) / CU_TPB), ny, CU_TPB, 0, args);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, Di, R, (int)BT, 1.0f, ddt, Di, dtl, R, 1.0f, G[M1_WDT], R);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, R, Di, 1.0f, ddt, Di, P[M1_WDT], R, 0.0f, ddtl, R);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, R, D, (int)BT, 1.0f, ddtl, R, a->x, D, 1.0f, G[M1_WDTIN], D);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, D, R, 1.0f, ddtl, R, P[M1_WDTIN], D, 0.0f, a->dx, D);
    /* the conv: its weights and bias, then its input (dz's x columns) */
    if (rc == HYB_OK) {
        float *gcw = G[M1_CONVW], *gcb = G[M1_CONVB];
        unsigned ny;
        int64_t per = rows_chunk(rows, &ny);
        void *args[] = {&dcpre, &zxbc, &gcw, &gcb, &B, &T, &Di, &Pw, &K, &rep, &per};
        rc = launch(be, m, K_CONV_W, (unsigned)(((int64_t)(K + 1) * Di + CU_TPB - 1) / CU_TPB), ny,
                    CU_TPB, 0, args);
    }
    if (rc == HYB_OK) {
        const float *cw = P[M1_CONVW];
        void *args[] = {&dcpre, &cw, &dz, &B, &T, &Di, &Dx, &Pw, &K, &rep};
        rc = launch(be, m, K_CONV_X, grid_for(rows * Dx), 1, CU_TPB, 0, args);
    }
    /* in_proj */
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, Pw, D, (int)BT, 1.0f, dz, Pw, a->x, D, 1.0f, G[M1_WIN], D);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 0, (int)BT, D, Pw, 1.0f, dz, Pw, P[M1_WIN], D, 1.0f, a->dx, D);
    be->free(be, buf);
    return rc;
}

/* ---- decode ---------------------------------------------------------------------------------*/

int m1_decode_cuda(void *self, const hyb_mixer_dec *a) {
    m1 *m = self;
    const hyb_backend *be = a->be;
    HYB_TRY(m1_check_dec(m, a));
    HYB_TRY(check_shape(m, "decode", a->n, 1));
    HYB_TRY(load(m, be, "decode"));
    int n = a->n, D = m->D, Di = m->Di, Dx = m->Dx, K = m->K, R = m->R, Pw = m->P, rep = m->rep,
        dbl = m->dbl;
    const float *const *P = a->params;
    /* zxbc [n, P], dtl [n, R], v [n, Di], ys [n, Di] */
    float *buf = be->alloc(be, sizeof(float) * (size_t)n * ((size_t)Pw + R + 2 * (size_t)Di));
    if (!buf) return HYB_ERR_NOMEM;
    float *zxbc = buf, *dtl = zxbc + (size_t)n * Pw, *v = dtl + (size_t)n * R,
          *ys = v + (size_t)n * Di;
    int rc = be->sgemm(be, 0, 1, n, Pw, D, 1.0f, a->x, D, P[M1_WIN], D, 0.0f, zxbc, Pw);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, n, R, D, 1.0f, a->x, D, P[M1_WDTIN], D, 0.0f, dtl, R);
    if (rc == HYB_OK) rc = be->sgemm(be, 0, 1, n, Di, R, 1.0f, dtl, R, P[M1_WDT], R, 0.0f, v, Di);
    const float *cw = P[M1_CONVW], *cb = P[M1_CONVB], *bdt = P[M1_BDT], *alog = P[M1_ALOG],
                *Dk = P[M1_DSKIP];
    const unsigned ct = chan_threads(Di);
    for (int i0 = 0; rc == HYB_OK && i0 < n; i0 += HYB_SSM_SEQ_MAX) {
        const int cnt = n - i0 < HYB_SSM_SEQ_MAX ? n - i0 : HYB_SSM_SEQ_MAX;
        hyb_ssm_seqs sq;
        memset(&sq, 0, sizeof sq);
        for (int i = 0; i < cnt; i++) {
            sq.p[i] = a->states[i0 + i];
            sq.cont[i] = a->pos[i0 + i] > 0;
        }
        void *args[] = {&zxbc, &v, &cw, &cb, &bdt, &alog, &Dk,  &sq, &i0,
                        &ys,   &n, &Di, &Dx, &Pw,  &K,    &rep, &dbl};
        rc = launch(be, m, K_DEC, ((unsigned)Di + ct - 1) / ct, (unsigned)cnt, ct, 0, args);
    }
    if (rc == HYB_OK)
        rc = be->sgemm(be, 0, 1, n, D, Di, 1.0f, ys, Di, P[M1_WOUT], Di, 0.0f, a->y, D);
    be->free(be, buf);
    return rc;
}
