/* plugins/mamba1/mamba1.h: internal header of the `mamba1` mixer plugin (the Apriel-H1 "m2" MIL
 * Mamba mixer, SPEC.md section 3: Mamba-1 selective scan with GQA-shaped x/B projections).
 * Not part of the ABI.
 *
 * Sizes: D = d_model, Di = d_inner, Dx = d_xb, N = d_state, R = dt_rank, K = d_conv,
 *        nC = Di / N "C heads" (N channels each), nX = Dx / N "x/B heads", rep = nC / nX,
 *        P = 2 Di + 2 Dx (rows of in_proj).
 * Channel d (0 <= d < Di) belongs to C head h = d / N, slot s = d % N, x/B group g = h / rep:
 *        x_rep[d] = x[g*N + s],  B for d = B_raw[g*N : g*N + N],  C for d = C_raw[h*N : h*N + N].
 *
 * params, in declaration order (HF apriel_h names below the prefix "mixer"):
 *   0 in_proj.weight  [P, D]   rows [ z (Di) | x (Dx) | B (Dx) | C (Di) ]
 *   1 dt_in_proj.weight [R, D]       2 dt_proj.weight [Di, R]     3 dt_proj.bias [Di]
 *   4 conv1d.weight [Di, 1, K]       5 conv1d.bias [Di]
 *   6 A_log [Di, N]                  7 D [Di]                     8 out_proj.weight [D, Di]
 *
 * decode state of one sequence (f32, fixed size, independent of max_ctx):
 *   ssm_state [Di, N] (the scan state h[d, n]) then conv_state [Di, K] (the last K raw inputs of
 *   the conv, i.e. x_rep before the conv, oldest first; column K-1 is the newest token, columns
 *   of tokens before the start of the sequence are zero).
 *
 * saved (training forward -> backward): a 64-byte header, then, row-major over the B*T rows,
 *   zxbc [BT, P] (in_proj output), dtl [BT, R] (dt_in_proj output), v [BT, Di] (the softplus
 *   argument), cpre [BT, Di] (conv output before silu), ys [BT, Di] (scan output y before the
 *   silu(z) gate), then hb [B, nch, nC, N, N]: the scan state at the start of each time chunk
 *   (nch = ceil(T / chunk)), per head state-major ([n][c], the scan's internal layout).
 *   Backward recomputes the states inside a chunk from hb.
 */
#ifndef HYB_PLUGIN_MAMBA1_H
#define HYB_PLUGIN_MAMBA1_H

#include <stddef.h>
#include <stdint.h>

#include "hyb/common.h" /* hyb_status values only: plugins never link against libhyb */
#include "hyb/plugin.h"

#include "../common/plugin_util.h"
#include "../common/ssm_util.h"

extern const hyb_host *m1_host;

enum {
    M1_WIN = 0, /* in_proj.weight */
    M1_WDTIN,   /* dt_in_proj.weight */
    M1_WDT,     /* dt_proj.weight */
    M1_BDT,     /* dt_proj.bias */
    M1_CONVW,   /* conv1d.weight */
    M1_CONVB,   /* conv1d.bias */
    M1_ALOG,    /* A_log */
    M1_DSKIP,   /* D */
    M1_WOUT,    /* out_proj.weight */
    M1_NPARAMS
};

typedef struct m1 {
    int D, Di, Dx, N, R, K, layer;
    int nC, nX, rep, P;
    int dbl;   /* 1: dt_proj.bias is added a second time inside the softplus (SPEC "m2") */
    int chunk; /* time chunk of the scan: boundary states are saved every `chunk` steps */
    /* CUDA (mamba1_cuda.c): the kernels of mamba1.cu compiled for this d_state on cu_be */
    const hyb_backend *cu_be;
    void *cu_fn[16];
} m1;

/* the first 64 bytes of `saved` (ssm_util.h) */
#define M1_SAVED_MAGIC 0x3141424du /* "MBA1" */
typedef hyb_ssm_saved_hdr m1_saved_hdr;
#define m1_n_chunks hyb_ssm_n_chunks

HYB_PL_DECLARE_KERNELS(m1);
/* argument checks shared by the CPU and CUDA kernels (mamba1_scan.c) */
int m1_check_fwd(const m1 *m, const hyb_mixer_fwd *a);
int m1_check_dec(const m1 *m, const hyb_mixer_dec *a);
/* the CUDA kernels (mamba1_cuda.c; compute in mamba1.cu) */
int m1_forward_cuda(void *self, const hyb_mixer_fwd *a);
int m1_backward_cuda(void *self, const hyb_mixer_bwd *a);
int m1_decode_cuda(void *self, const hyb_mixer_dec *a);

#endif
