/* plugins/common/ssm_util.h: host-side helpers that the state-space mixers (mamba1, mamba2) share:
 * the saved-block header, two config checks, the argument checks of a forward / decode against
 * the per-sequence states, the causal depthwise conv1d on the CPU (forward, window, decode step,
 * backward) and the CUDA host glue (kernel compile, sequence-block upload, grid sizes).
 *
 * Header-only, all functions static (see plugin_util.h for why): the code is the same expressions
 * in the same order as the per-plugin copies it replaces. `name` is the mixer's name as it
 * appears in error messages ("mamba1", "mamba2"). Not a public header. */
#ifndef HYB_SSM_UTIL_H
#define HYB_SSM_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "hyb/common.h" /* hyb_status values only */
#include "hyb/plugin.h"

#include "be_call.h"
#include "plugin_util.h"

/* ---- scalars of the CPU paths ---------------------------------------------------------------*/

static inline float hyb_ssm_silu(float v) {
    return v / (1.0f + expf(-v));
}
/* silu'(v) = s (1 + v (1 - s)), s = sigmoid(v) */
static inline float hyb_ssm_dsilu(float v) {
    float s = hyb_pl_sigmoid(v);
    return s * (1.0f + v * (1.0f - s));
}
/* softplus' = sigmoid (hyb_pl_softplus: PyTorch's threshold 20, as selective_scan_ref) */
static inline float hyb_ssm_dsoftplus(float v) {
    return v > 20.0f ? 1.0f : hyb_pl_sigmoid(v);
}

/* ---- the header of `saved` ------------------------------------------------------------------*/

/* The first 64 bytes of `saved` (written by the forward of either device, checked by backward);
 * magic names the mixer, chunk is the time chunk of the boundary states, nch their count. */
typedef struct hyb_ssm_saved_hdr {
    uint32_t magic;
    int32_t B, T, chunk, nch;
    uint8_t pad[44];
} hyb_ssm_saved_hdr;
_Static_assert(sizeof(hyb_ssm_saved_hdr) == 64, "hyb_ssm_saved_hdr is 64 bytes");

static inline int hyb_ssm_n_chunks(int T, int chunk) {
    return (T + chunk - 1) / chunk;
}

static inline void hyb_ssm_saved_fill(hyb_ssm_saved_hdr *h, uint32_t magic, int B, int T, int chunk,
                                      int nch) {
    memset(h, 0, sizeof *h);
    h->magic = magic;
    h->B = B;
    h->T = T;
    h->chunk = chunk;
    h->nch = nch;
}

/* h (host memory, NULL: no saved) is the header of a forward of these B, T for this mixer. */
static inline int hyb_ssm_check_saved(const hyb_host *H, const char *name, int layer,
                                      const hyb_ssm_saved_hdr *h, uint32_t magic, int B, int T) {
    if (!h || h->magic != magic || h->B != B || h->T != T || h->chunk < 1 ||
        h->nch != hyb_ssm_n_chunks(T, h->chunk))
        return H->error(HYB_ERR_ARG,
                        "%s (layer %d): backward [B=%d, T=%d] without a matching saved forward",
                        name, layer, B, T);
    return HYB_OK;
}

/* ---- config --------------------------------------------------------------------------------*/

/* A whole-number key that must lie in [1, max]: *var holds the default on entry, the value on
 * return; a value out of range is a cfg_error naming the key. */
static inline int hyb_ssm_cfg_pos(const hyb_host *h, const hyb_cfg_table *cfg, const char *name,
                                  int layer, const char *key, int64_t *var, int max) {
    HYB_TRY(h->cfg_int(cfg, key, *var, var));
    if (*var < 1 || *var > max)
        return h->cfg_error(cfg, key, "%s (layer %d): %s must be in [1, %d], got %lld", name, layer,
                            key, max, (long long)*var);
    return HYB_OK;
}

/* The limits every SSM mixer puts on d_conv (the CPU backward keeps K taps on the stack) and
 * d_state, checked after all keys are read. */
static inline int hyb_ssm_cfg_conv_state(const hyb_host *h, const hyb_cfg_table *cfg,
                                         const char *name, int layer, int64_t K, int64_t N) {
    if (K > 64)
        return h->cfg_error(cfg, "d_conv", "%s (layer %d): d_conv must be in [1, 64], got %lld",
                            name, layer, (long long)K);
    if (N > 256)
        return h->cfg_error(cfg, "d_state", "%s (layer %d): d_state must be in [1, 256], got %lld",
                            name, layer, (long long)N);
    return HYB_OK;
}

/* ---- argument checks -------------------------------------------------------------------------*/

/* The argument checks of a forward (every device): sizes, positions against the states. */
static inline int hyb_ssm_check_fwd(const hyb_host *h, const char *name, int layer,
                                    const hyb_mixer_fwd *a) {
    const int B = a->B, T = a->T;
    if (B <= 0 || T <= 0)
        return h->error(HYB_ERR_ARG, "%s (layer %d): forward with B = %d, T = %d", name, layer, B,
                        T);
    for (int b = 0; b < B; b++) {
        int p0 = a->pos ? a->pos[b] : 0;
        if (p0 < 0 || (p0 > 0 && !a->states))
            return h->error(HYB_ERR_ARG, "%s (layer %d): forward with pos[%d] = %d %s", name, layer,
                            b, p0, p0 < 0 ? "(negative)" : "but no states to continue from");
        if (a->states && (int64_t)p0 + T > a->max_ctx)
            return h->error(HYB_ERR_ARG,
                            "%s (layer %d): sequence %d: pos %d + T %d exceeds the state "
                            "capacity max_ctx = %d",
                            name, layer, b, p0, T, a->max_ctx);
        if (p0 > 0 && a->saved)
            return h->error(HYB_ERR_UNSUPPORTED,
                            "%s (layer %d): backward through a continued prefill (pos[%d] = "
                            "%d > 0) is not supported; train on whole sequences",
                            name, layer, b, p0);
    }
    return HYB_OK;
}

/* The argument checks of a decode step (every device). */
static inline int hyb_ssm_check_dec(const hyb_host *h, const char *name, int layer,
                                    const hyb_mixer_dec *a) {
    const int n = a->n;
    if (n <= 0) return h->error(HYB_ERR_ARG, "%s (layer %d): decode with n = %d", name, layer, n);
    for (int i = 0; i < n; i++)
        if (a->pos[i] < 0 || a->pos[i] >= a->max_ctx)
            return h->error(HYB_ERR_ARG,
                            "%s (layer %d): decode sequence %d at pos %d: the state is "
                            "sized for max_ctx = %d tokens",
                            name, layer, i, a->pos[i], a->max_ctx);
    return HYB_OK;
}

/* ---- the causal depthwise conv1d on the CPU (f32) --------------------------------------------
 * A channel's input is a column of a row-major matrix: x[t * ldx], t in [0, T), one sequence.
 * Its history hc [K] holds the K raw inputs before t = 0 (hc[K + j] is time j < 0); w [K] are
 * the channel's taps, the last one on the current step. */

/* The conv history of each of B sequences, [B, C, K]: the K raw inputs before this call, copied
 * from states[b] + off when pos[b] > 0 (the states are rewritten later), else zeros (scratch from
 * be->alloc is not zeroed: both cases are written). */
static inline void hyb_ssm_conv_hist(float *hist, int B, int C, int K, const int32_t *pos,
                                     void *const *states, size_t off) {
    for (int b = 0; b < B; b++) {
        const int p0 = pos ? pos[b] : 0;
        if (p0 > 0)
            memcpy(hist + (size_t)b * C * K, (const float *)states[b] + off,
                   (size_t)C * K * sizeof(float));
        else
            memset(hist + (size_t)b * C * K, 0, (size_t)C * K * sizeof(float));
    }
}

/* One channel's conv at step t: bias + sum_k w[k] x(t - (K - 1) + k), in k order. */
static inline float hyb_ssm_conv_at(const float *w, float bias, int K, int t, const float *x,
                                    size_t ldx, const float *hc) {
    float acc = bias;
    for (int k = 0; k < K; k++) {
        const int j = t - (K - 1) + k; /* source time */
        const float v = j >= 0 ? x[(size_t)j * ldx] : hc[K + j];
        acc += w[k] * v;
    }
    return acc;
}

/* One channel's conv window after T steps: cs[k] = x(T - K + k) (from hc before t = 0). */
static inline void hyb_ssm_conv_window(float *cs, int K, int T, const float *x, size_t ldx,
                                       const float *hc) {
    for (int k = 0; k < K; k++) {
        const int j = T - K + k;
        cs[k] = j >= 0 ? x[(size_t)j * ldx] : hc[K + j];
    }
}

/* One decode step of one channel: shift the window w [K] left, append xin, return the conv. */
static inline float hyb_ssm_conv_step(float *win, int K, float xin, const float *w, float bias) {
    memmove(win, win + 1, (size_t)(K - 1) * sizeof(float));
    win[K - 1] = xin;
    float acc = bias;
    for (int k = 0; k < K; k++)
        acc += w[k] * win[k];
    return acc;
}

/* One channel's conv backward over B sequences of T steps (zero history, as in training): g the
 * conv output's adjoint (g[r * ldg], r = b T + t); x / dx the input and its adjoint (column
 * stride ldx, dx accumulated); w [K] the taps; gw [K] and *gb the weight / bias gradients
 * (accumulated). K <= 64. */
static inline void hyb_ssm_conv_bwd(int B, int T, int K, const float *g, size_t ldg, const float *x,
                                    float *dx, size_t ldx, const float *w, float *gw, float *gb) {
    float gbias = 0.0f, gk[64];
    memset(gk, 0, sizeof gk);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const size_t r = (size_t)b * T + t;
            const float gc = g[r * ldg];
            gbias += gc;
            for (int k = 0; k < K; k++) {
                const int j = t - (K - 1) + k;
                if (j < 0) continue; /* zero history in training */
                const size_t rj = (size_t)b * T + j;
                gk[k] += gc * x[rj * ldx];
                dx[rj * ldx] += gc * w[k];
            }
        }
    *gb += gbias;
    for (int k = 0; k < K; k++)
        gw[k] += gk[k];
}

/* ---- CUDA glue (host side) -------------------------------------------------------------------*/

/* threads per block of a kernel with one thread per item of n (channels, head rows): tpb, or n
 * rounded up to a warp when it is smaller (fewer idle threads; each is a fiber in the emulation) */
static inline unsigned hyb_ssm_warp_threads(int n, unsigned tpb) {
    const unsigned w = ((unsigned)n + 31u) / 32u * 32u;
    return w < tpb ? w : tpb;
}

/* blocks of tpb threads for a grid-stride loop over n elements (at most 8192, at least 1) */
static inline unsigned hyb_ssm_grid_for(int64_t n, unsigned tpb) {
    int64_t g = (n + tpb - 1) / tpb;
    if (g > 8192) g = 8192;
    return (unsigned)(g < 1 ? 1 : g);
}

/* Compiles the kernels names[0 .. nk) of the CUDA source `src` (file name `file`) for this
 * d_state (-DD_STATE=...) into fn[0 .. nk); be->kernel caches them across instances. */
static inline int hyb_ssm_cu_compile(const hyb_backend *be, const char *file, const char *src,
                                     const char *const *names, int nk, int d_state, void **fn) {
    char opt[32];
    snprintf(opt, sizeof opt, "-DD_STATE=%d", d_state);
    const char *opts[1] = {opt};
    for (int k = 0; k < nk; k++)
        HYB_BE_TRY(be->kernel(be, file, src, names[k], opts, 1, &fn[k]));
    return HYB_OK;
}

/* The decode kernels' by-value parameter: the states of up to HYB_SSM_SEQ_MAX sequences and their
 * "continue" flags (a kernel parameter: no upload and no synchronisation per decode step).
 * mamba1.cu's m1_seqs and mamba2.cu's m2_seqs have the same layout. */
#define HYB_SSM_SEQ_MAX 64
typedef struct hyb_ssm_seqs {
    void *p[HYB_SSM_SEQ_MAX];
    int32_t cont[HYB_SSM_SEQ_MAX];
} hyb_ssm_seqs;
_Static_assert(sizeof(hyb_ssm_seqs) == HYB_SSM_SEQ_MAX * (sizeof(void *) + sizeof(int32_t)),
               "hyb_ssm_seqs has no padding (the .cu files read the same layout)");

/* The per-sequence state pointers (device addresses, from the host array `states`) and "continue"
 * flags (pos > 0) uploaded as one device block: [n] pointers, then [n] int32. *blk is the block
 * (the caller frees it with be->free), *dst and *dcont point into it. */
static inline int hyb_ssm_upload_seqs(const hyb_host *H, const hyb_backend *be, void *const *states,
                                      const int32_t *pos, int n, void **blk, float ***dst,
                                      int **dcont) {
    const size_t bytes = (size_t)n * (sizeof(void *) + sizeof(int32_t));
    unsigned char *h = H->alloc(bytes);
    *blk = be->alloc(be, bytes);
    if (!h || !*blk) {
        H->free(h);
        be->free(be, *blk);
        *blk = NULL;
        return HYB_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        const int32_t c = pos && pos[i] > 0;
        memcpy(h + (size_t)i * sizeof(void *), &states[i], sizeof(void *));
        memcpy(h + (size_t)n * sizeof(void *) + (size_t)i * sizeof(int32_t), &c, sizeof c);
    }
    int rc = be->upload(be, *blk, h, bytes);
    H->free(h);
    if (rc != HYB_OK) {
        be->free(be, *blk);
        *blk = NULL;
        return rc;
    }
    *dst = (float **)*blk;
    *dcont = (int *)((unsigned char *)*blk + (size_t)n * sizeof(void *));
    return HYB_OK;
}

#endif
