/* plugins/common/plugin_util.h: small helpers that every in-tree mixer plugin repeated: OpenMP
 * thread queries, the f32 dot/axpy kernels, the logistic/softplus scalars, a hyb_param_decl
 * filler and the descriptor / entry-point boilerplate.
 *
 * Header-only, all functions static: each plugin is its own .so and never links libhyb, so the
 * code is compiled into every plugin that includes it (the results are the same bits as the
 * copies it replaces: the same expressions in the same order). Like be_call.h it is not a public
 * header: a plugin built out of tree (examples/plugin/) writes its own. */
#ifndef HYB_PLUGIN_UTIL_H
#define HYB_PLUGIN_UTIL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "hyb/plugin.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- OpenMP -----------------------------------------------------------------------------------*/

static inline int hyb_pl_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int hyb_pl_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---- hyb's CPU thread pool (hyb_host.parallel_for) -------------------------------------------*/

/* Whether host has the pool entries (hosts older than them have a smaller struct_size). */
static inline int hyb_pl_has_pool(const hyb_host *h) {
    return h && h->struct_size >= offsetof(hyb_host, threads) + sizeof h->threads &&
           h->parallel_for && h->threads;
}

/* Threads of a hyb_pl_parallel_for call (the caller included): size per-thread scratch by it. */
static inline int hyb_pl_threads(const hyb_host *h) {
    return hyb_pl_has_pool(h) ? h->threads() : 1;
}

/* fn over [0, n) on the host's pool in chunks of a multiple of grain items (par != 0 and a host
 * that has the pool), else serially on this thread with tid 0. Returns the first error of fn. */
static inline int hyb_pl_parallel_for(const hyb_host *h, int par, int64_t n, int64_t grain,
                                      int (*fn)(void *ctx, int64_t lo, int64_t hi, int tid),
                                      void *ctx) {
    if (n <= 0) return 0;
    if (par && hyb_pl_has_pool(h)) return h->parallel_for(n, grain, fn, ctx);
    return fn(ctx, 0, n, 0);
}

/* ---- f32 vector kernels -----------------------------------------------------------------------*/

/* sum_i a[i] b[i] in four interleaved partial sums, added as (s0 + s1) + (s2 + s3) */
static inline float hyb_pl_dot(const float *a, const float *b, int n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* y += a x */
static inline void hyb_pl_axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

/* ---- scalars (libm expf: not for `omp simd` loops) --------------------------------------------*/

static inline float hyb_pl_sigmoid(float v) {
    return 1.0f / (1.0f + expf(-v));
}

/* softplus with PyTorch's threshold 20 (F.softplus default, used by selective_scan_ref and FLA) */
static inline float hyb_pl_softplus(float v) {
    return v > 20.0f ? v : log1pf(expf(v));
}

/* ---- the `saved` block (training forward -> backward) ----------------------------------------*/

/* Its first 64 bytes: which mixer wrote it and for which batch, checked by backward; the mixer's
 * f32 tensors follow. */
typedef struct hyb_pl_saved_hdr {
    uint32_t magic;
    int32_t B, T;
    uint8_t pad[52];
} hyb_pl_saved_hdr;

/* Where a forward keeps the tensors backward needs: after the header of `saved` when training
 * (the header written: magic, B, T), else after the header of a temporary block of `bytes` from
 * `be`, returned in *tmp for the caller to free. NULL when that allocation fails. */
static inline float *hyb_pl_saved_begin(void *saved, void **tmp, const hyb_backend *be,
                                        size_t bytes, uint32_t magic, int B, int T) {
    *tmp = NULL;
    if (!saved) {
        *tmp = be->alloc(be, bytes);
        return *tmp ? (float *)((hyb_pl_saved_hdr *)*tmp + 1) : NULL;
    }
    hyb_pl_saved_hdr *h = saved;
    memset(h, 0, sizeof *h);
    h->magic = magic;
    h->B = B;
    h->T = T;
    return (float *)(h + 1);
}

/* The tensors of a saved block written by hyb_pl_saved_begin for (magic, B, T); NULL when there is
 * none or it came from another mixer or batch shape. */
static inline const float *hyb_pl_saved_data(const void *saved, uint32_t magic, int B, int T) {
    const hyb_pl_saved_hdr *h = saved;
    if (!h || h->magic != magic || h->B != B || h->T != T) return NULL;
    return (const float *)(h + 1);
}

/* ---- parameters -------------------------------------------------------------------------------*/

/* one parameter declaration: name, shape (ndim of s0, s1, s2), init kind, init argument, and
 * whether weight decay skips it */
static inline void hyb_pl_decl(hyb_param_decl *d, const char *name, int ndim, int64_t s0,
                               int64_t s1, int64_t s2, int init, float a, int no_decay) {
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->ndim = ndim;
    d->shape[0] = s0;
    d->shape[1] = s1;
    d->shape[2] = s2;
    d->init = init;
    d->init_a = a;
    d->no_decay = no_decay;
}

/* ---- descriptor and entry point ---------------------------------------------------------------*/

/* The kernels a plugin with prefix `p` defines in the other source files (p##_saved_bytes and the
 * CPU forward/backward/decode). */
#define HYB_PL_DECLARE_KERNELS(p)                                                                  \
    size_t p##_saved_bytes(void *self, int B, int T);                                              \
    int p##_forward(void *self, const hyb_mixer_fwd *a);                                           \
    int p##_backward(void *self, const hyb_mixer_bwd *a);                                          \
    int p##_decode(void *self, const hyb_mixer_dec *a)

/* The descriptor fields every mixer has, for a plugin whose functions are named p##_create,
 * p##_destroy, ... p##_decode; the descriptor adds the optional hooks after it. */
#define HYB_PL_DESC_REQUIRED(p)                                                                    \
    .abi_version = HYB_PLUGIN_ABI_VERSION, .struct_size = sizeof(hyb_mixer_desc),                  \
    .create = p##_create, .destroy = p##_destroy, .describe = p##_describe,                        \
    .n_params = p##_n_params, .param_decl = p##_param_decl, .saved_bytes = p##_saved_bytes,        \
    .state_bytes = p##_state_bytes,                                                                \
    .kernels[HYB_DEV_CPU] = {p##_forward, p##_backward, p##_decode}

/* hyb_plugin_entry: keep the host table in `host_var` (used only after the host accepted the
 * descriptor's version) and hand the descriptor `desc` over. */
#define HYB_PL_ENTRY(host_var, desc)                                                               \
    HYB_PLUGIN_EXPORT const hyb_mixer_desc *hyb_plugin_entry(const hyb_host *host) {               \
        host_var = host;                                                                           \
        return &desc;                                                                              \
    }

#endif
