/* plugins/mamba2/mamba2.h: internal header of the `mamba2` mixer plugin (Mamba-2, the SSD layer of
 * Dao & Gu 2024, "Transformers are SSMs", in mamba_ssm's Mamba2 "simple" form). Not part of the
 * ABI. The math is in docs/MAMBA2.md.
 *
 * Sizes: D = d_model, Di = d_inner (expand * D), Pd = headdim, nh = Di / Pd heads, G = ngroups
 *        (B and C shared by nh / G heads each; head h reads group h / (nh / G)), N = d_state,
 *        K = d_conv, Cd = Di + 2 G N (conv channels: x | B | C), Pin = 2 Di + 2 G N + nh (rows of
 *        in_proj), Q = chunk_size.
 *
 * params, in declaration order (the names of HF's Mamba2Mixer below the prefix "mixer"):
 *   0 in_proj.weight  [Pin, D]    rows [ z (Di) | x (Di) | B (G N) | C (G N) | dt (nh) ]
 *   1 conv1d.weight   [Cd, 1, K]  2 conv1d.bias [Cd]
 *   3 dt_bias [nh]                4 A_log [nh]        5 D [nh]
 *   6 norm.weight [Di]            7 out_proj.weight [D, Di]
 *
 * decode state of one sequence (f32, fixed size, independent of max_ctx):
 *   ssm_state [nh, Pd, N] (h[p, n] of every head) then conv_state [Cd, K] (the last K raw conv
 *   inputs, i.e. in_proj's x|B|C columns before the conv, oldest first; column K-1 is the newest
 *   token; columns of tokens before the start of the sequence are zero).
 *
 * saved (training forward -> backward): a 64-byte header, then, row-major over the B*T rows,
 *   zxbcdt [BT, Pin] (in_proj output), cpre [BT, Cd] (conv output before silu), ys [BT, Di] (SSD
 *   output y before the gate, D skip included), rstd [BT, G] (the gated norm's 1/rms per group),
 *   then hb [B, nch, nh, Pd, N]: the SSD state at the start of each chunk (nch = ceil(T / Q)).
 *   The backward recomputes the states inside a chunk from hb.
 */
#ifndef HYB_PLUGIN_MAMBA2_H
#define HYB_PLUGIN_MAMBA2_H

#include <stddef.h>
#include <stdint.h>

#include "hyb/common.h" /* hyb_status values only: plugins never link against libhyb */
#include "hyb/plugin.h"

#include "../common/plugin_util.h"
#include "../common/ssm_util.h"

extern const hyb_host *m2_host;

enum {
    M2_WIN = 0, /* in_proj.weight */
    M2_CONVW,   /* conv1d.weight */
    M2_CONVB,   /* conv1d.bias */
    M2_DTB,     /* dt_bias */
    M2_ALOG,    /* A_log */
    M2_DSKIP,   /* D */
    M2_NORMW,   /* norm.weight */
    M2_WOUT,    /* out_proj.weight */
    M2_NPARAMS
};

typedef struct m2 {
    int D, Di, Pd, nh, G, N, K, Q, layer;
    int Cd, Pin, hpg; /* conv channels, in_proj rows, heads per group */
    float eps;        /* the gated RMSNorm's epsilon */
    double eps_cfg;   /* as configured (for the HF export) */
    /* init options */
    double dt_min, dt_max, dt_floor, a_min, a_max;
    /* CUDA (mamba2_cuda.c): the kernels of mamba2.cu compiled for this d_state on cu_be */
    const hyb_backend *cu_be;
    void *cu_fn[24]; /* mamba2_cuda.c's kernel table */
} m2;

/* column offsets inside one in_proj output row */
static inline int m2_col_x(const m2 *m) { return m->Di; }
static inline int m2_col_B(const m2 *m) { return 2 * m->Di; }
static inline int m2_col_C(const m2 *m) { return 2 * m->Di + m->G * m->N; }
static inline int m2_col_dt(const m2 *m) { return 2 * m->Di + 2 * m->G * m->N; }

/* the first 64 bytes of `saved` (ssm_util.h) */
#define M2_SAVED_MAGIC 0x3241424du /* "MBA2" */
typedef hyb_ssm_saved_hdr m2_saved_hdr;
#define m2_n_chunks hyb_ssm_n_chunks

HYB_PL_DECLARE_KERNELS(m2);
/* argument checks shared by the CPU and CUDA kernels (mamba2_ssd.c) */
int m2_check_fwd(const m2 *m, const hyb_mixer_fwd *a);
int m2_check_dec(const m2 *m, const hyb_mixer_dec *a);
int m2_check_saved(const m2 *m, const m2_saved_hdr *h, int B, int T);
/* the CUDA kernels (mamba2_cuda.c; compute in mamba2.cu) */
int m2_forward_cuda(void *self, const hyb_mixer_fwd *a);
int m2_backward_cuda(void *self, const hyb_mixer_bwd *a);
int m2_decode_cuda(void *self, const hyb_mixer_dec *a);

#endif
