/* core/backend/cuda/cuda.h: the CUDA backend, internal to libhyb (no CUDA types here, so tests
 * and the CPU side can include it without the CUDA headers).
 *
 *   if (hyb_cuda_init(0) == HYB_OK) be = hyb_backend_get(HYB_DEV_CUDA);   // registered
 *   else fprintf(stderr, "%s\n", hyb_error());   // "no CUDA driver found (libcuda.so.1): ..."
 *
 * Nothing is linked at build time: libcuda.so.1, libnvrtc and libcublas are dlopen'ed at run time
 * (cuda_loader.c). Kernels are the embedded sources of core/backend/cuda/kernels (.cu files), compiled
 * by NVRTC for the device's exact architecture on first use and cached on disk (nvrtc.c).
 *
 * The hyb_cuda_<op> kernels take the same arguments, in the same order, as hyb_cpu_<op>
 * (core/backend/cpu/cpu.h); their float pointers are DEVICE pointers, their index/weight arrays
 * (ids, targets, w, pos) HOST pointers (uploaded here), scalar results host memory. They return
 * HYB_OK or a negative status with the error set (a failed launch names the kernel). All work is
 * queued on the backend's one stream; results read back with download() are synchronised. */
#ifndef HYB_BACKEND_CUDA_H
#define HYB_BACKEND_CUDA_H
#include <stddef.h>
#include <stdint.h>

#include "hyb/backend.h"

/* ---- libraries (cuda_loader.c) ---- */
/* Load NVRTC only (works without a GPU or driver). Idempotent. HYB_ERR_UNSUPPORTED + message. */
int hyb_cuda_nvrtc_load(void);
/* Load the driver (libcuda.so.1), NVRTC and cuBLAS. Idempotent. Without a driver: returns
 * HYB_ERR_UNSUPPORTED and the error "no CUDA driver found (libcuda.so.1 is not on the loader
 * path: ...)"; nothing falls back to the CPU: the caller reports it. */
int hyb_cuda_load(void);
/* NVRTC version as major * 1000 + minor * 10 (0 when not loaded). */
int hyb_cuda_nvrtc_version(void);

/* ---- device (cuda_device.c) ---- */
/* Initialise device `ordinal`: primary context, one stream, cuBLAS handle, memory pool; then
 * register the "cuda" backend (hyb_backend_get(HYB_DEV_CUDA)). Idempotent. */
int hyb_cuda_init(int ordinal);
/* The provider behind hyb_backend_open("cuda[:N]") (core/graph/backend.c registers it): open(N)
 * initialises device N (one CUDA device per process); probe() counts devices or says why none. */
extern const hyb_backend_provider hyb_cuda_provider;
/* 1 when hyb_cuda_init succeeded. */
int hyb_cuda_ready(void);
/* Compute capability of the initialised device as major*10+minor (90 for H100), 0 if none. */
int hyb_cuda_arch(void);
/* The CUDA backend table (valid after hyb_cuda_init). */
const hyb_backend *hyb_backend_cuda(void);
/* Free cached pool blocks, the stream, the handle; unregisters nothing (call at exit). */
void hyb_cuda_shutdown(void);
/* Wait for the stream. */
int hyb_cuda_sync(void);

/* Caching device allocator: sizes are rounded up to a size class (powers of two from 256 B,
 * then multiples of 2 MiB above 32 MiB) and freed blocks go to the class's free list for reuse.
 * On out-of-memory the cache is released and the allocation retried once; a final failure
 * returns NULL with HYB_ERR_NOMEM: "CUDA out of memory: requested N bytes (X MiB); device has
 * F MiB free of T MiB (pool: U MiB in use, C MiB cached)". */
void *hyb_cuda_malloc(size_t nbytes);
void hyb_cuda_free(void *p);
/* Bytes handed out / cached in free lists. */
void hyb_cuda_pool_stats(size_t *in_use, size_t *cached);
/* Return every cached block to the driver. */
void hyb_cuda_pool_trim(void);
int hyb_cuda_upload(void *dst, const void *host_src, size_t nbytes);
int hyb_cuda_download(void *host_dst, const void *src, size_t nbytes); /* synchronises */
int hyb_cuda_memset0(void *p, size_t nbytes);
int hyb_cuda_copy(void *dst, const void *src, size_t nbytes);

/* ---- NVRTC (nvrtc.c) ---- */
typedef struct hyb_cuda_image {
    char *data;      /* cubin (is_cubin) or NUL-terminated PTX */
    size_t size;     /* bytes (PTX: including the NUL) */
    int is_cubin;    /* 1: sm_XX cubin; 0: compute_XX PTX (arch newer than this NVRTC knows) */
    int from_cache;  /* 1: read from the on-disk cache */
    char key[17];    /* the cache key (FNV-1a 64 in hex) */
} hyb_cuda_image;
/* Compile `src` (name for messages, e.g. "loss.cu") for compute capability `arch` (80, 90, ...)
 * with the given "-DNAME=VALUE" options. Uses the cache in ${HYB_CACHE:-~/.cache/hyb}/kernels/
 * keyed by FNV-1a 64 of source, options, arch and NVRTC version unless use_cache == 0 or the
 * environment has HYB_KERNEL_CACHE=0. On a compile error: HYB_ERR with the NVRTC log (also logged
 * in full) and the source name. */
int hyb_cuda_nvrtc_compile(const char *name, const char *src, const char *const *opts, int nopts,
                           int arch, int use_cache, hyb_cuda_image *out);
void hyb_cuda_image_free(hyb_cuda_image *img);
/* FNV-1a 64 over n bytes, continuing from h (start with HYB_FNV64_INIT). */
#define HYB_FNV64_INIT 0xcbf29ce484222325ull
uint64_t hyb_fnv1a64(uint64_t h, const void *data, size_t n);

/* ---- embedded kernel sources (generated at build time from kernels/ (the .cu and .cuh files)) ---- */
typedef struct hyb_cuda_source {
    const char *name; /* file name, e.g. "loss.cu" */
    const char *text;
} hyb_cuda_source;
extern const hyb_cuda_source hyb_cuda_sources[];
extern const int hyb_cuda_n_sources;
/* The text of an embedded file, NULL when there is none. */
const char *hyb_cuda_source_text(const char *name);
/* A kernel file ready for NVRTC: common.cuh followed by the file. Caller frees. NULL + error. */
char *hyb_cuda_source_full(const char *name);
/* Compile an embedded kernel file (hyb_cuda_source_full) with the backend's standard options
 * (-DHYB_BLOCK=256) for `arch`. */
int hyb_cuda_compile_builtin(const char *name, int arch, int use_cache, hyb_cuda_image *out);
/* The same with extra options after the standard ones (a variant: "-DHYB_STORE_BF16"). */
int hyb_cuda_compile_builtin_opts(const char *name, const char *const *extra, int n_extra, int arch,
                                  int use_cache, hyb_cuda_image *out);

/* ---- GEMM (cuda_gemm.c), row-major like hyb_cpu_sgemm ---- */
/* C[M,N] = alpha op(A) op(B) + beta C, f32 (no TF32: CUBLAS_DEFAULT_MATH, COMPUTE_32F) */
int hyb_cuda_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* The same with bf16 A and B (raw 16-bit), f32 accumulation (CUBLAS_COMPUTE_32F); C is f32
 * when c_f32, else bf16. Forward y = x W^T: (0, 1); dx = dy W: (0, 0); dW = dy^T x: (1, 0). */
int hyb_cuda_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const void *A,
                       int lda, const void *B, int ldb, float beta, void *C, int ldc, int c_f32);

/* ---- kernels (cuda_ops.c): same arguments as hyb_cpu_<op>; shapes in hyb/backend.h ---- */
/* x: [B*T... , H, hd] viewed as B batches of [T, H, hd]; pos: [T] host */
int hyb_cuda_rope(float *x, int B, int T, int H, int hd, const int32_t *pos, float theta,
                  int inverse);
int hyb_cuda_embedding_fwd(const float *W, const int32_t *ids, float *y, int64_t n, int64_t D);
int hyb_cuda_embedding_bwd(float *dW, const int32_t *ids, const float *dy, int64_t n, int64_t D);
int hyb_cuda_rmsnorm_fwd(const float *x, const float *w, float *y, float *rstd, int64_t rows,
                         int64_t D, float eps);
int hyb_cuda_add_rmsnorm_fwd(const float *a, const float *b, const float *w, float *h, float *y,
                             float *rstd, int64_t rows, int64_t D, float eps);
int hyb_cuda_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dy,
                         float *dx, float *dw, int64_t rows, int64_t D);
int hyb_cuda_swiglu_fwd(const float *gate, const float *up, float *y, int64_t n);
int hyb_cuda_swiglu_bwd(const float *gate, const float *up, const float *dy, float *dgate,
                        float *dup, int64_t n);
int hyb_cuda_add(const float *a, const float *b, float *y, int64_t n);
int hyb_cuda_axpy(float *dst, const float *src, float alpha, int64_t n);
int hyb_cuda_softmax_fwd(const float *x, float *y, int64_t rows, int64_t V);
int hyb_cuda_softmax_bwd(const float *y, const float *dy, float *dx, int64_t rows, int64_t V);
int hyb_cuda_ce_fwd(const float *logits, const int32_t *targets, const float *w, float *lse,
                    int64_t rows, int64_t V, double *loss_sum);
int hyb_cuda_ce_bwd(const float *logits, const int32_t *targets, const float *w, const float *lse,
                    float *dlogits, int64_t rows, int64_t V, float scale);
int hyb_cuda_kl_fwd(const float *s, const float *t, const float *w, float *stats, int64_t rows,
                    int64_t V, float temperature, int reverse, double *loss_sum);
int hyb_cuda_kl_bwd(const float *s, const float *t, const float *w, const float *stats, float *ds,
                    int64_t rows, int64_t V, float temperature, int reverse, float scale);
/* AdamW step on f32 master weights p, grad g, moments m, v: [n] (all device); the scalars as
 * core/optim.c computes them (shrink = 1 - lr*wd or 1, step_size = lr / (1 - b1^t),
 * inv_sqrt_bc2 = 1 / sqrt(1 - b2^t)). */
int hyb_cuda_adamw(float *p, const float *g, float *m, float *v, int64_t n, float b1, float b2,
                   float eps, float shrink, float step_size, float inv_sqrt_bc2);
int hyb_cuda_adamw_multi(const hyb_adamw_tensor *t, int count, float b1, float b2, float eps,
                         float inv_sqrt_bc2);
int hyb_cuda_sample(const float *logits, int64_t n, int64_t V, const hyb_sample_row *rows,
                    int32_t *out);
/* bf16 storage (raw bf16 bits, round to nearest even on store), f32 arithmetic and accumulation:
 * kernels/store.cu built with -DHYB_STORE_BF16. Shapes and meaning as the f32 entries
 * (hyb/backend.h); rstd stays f32. add_rmsnorm normalises the bf16-rounded h it stores. */
int hyb_cuda_rmsnorm_fwd_bf16(const void *x, const void *w, void *y, float *rstd, int64_t rows,
                              int64_t D, float eps);
int hyb_cuda_add_rmsnorm_fwd_bf16(const void *a, const void *b, const void *w, void *h, void *y,
                                  float *rstd, int64_t rows, int64_t D, float eps);
int hyb_cuda_swiglu_fwd_bf16(const void *gate, const void *up, void *y, int64_t n);
int hyb_cuda_add_bf16(const void *a, const void *b, void *y, int64_t n);
/* x *= alpha; *out = sum x^2 (partials per block in double, added on the host in block order) */
int hyb_cuda_scale(float *x, float alpha, int64_t n);
int hyb_cuda_sumsq(const float *x, int64_t n, double *out);
/* x: [n] f32 -> y: [n] bf16 (round to nearest even); and back (exact). */
int hyb_cuda_f32_to_bf16(const float *x, void *y, int64_t n);
int hyb_cuda_bf16_to_f32(const void *x, float *y, int64_t n);
/* ---- CUDA graphs (cuda_graph.c): the backend's graph_* entries (hyb/backend.h) ---- */
int hyb_cuda_graph_begin(const hyb_backend *be);
int hyb_cuda_graph_end(const hyb_backend *be, void **graph);
int hyb_cuda_graph_launch(const hyb_backend *be, void *graph);
void hyb_cuda_graph_free(const hyb_backend *be, void *graph);
/* The tensor-op kernels (cuda_tensor.c, kernels/tensor.cu; hyb/backend.h documents them). */
int hyb_cuda_ewise(int op, float *y, const int64_t *sy, const float *a, const int64_t *sa,
                   const float *b, const int64_t *sb, const float *c, const int64_t *sc,
                   const int64_t *shape, float alpha, float beta);
int hyb_cuda_ewise_bwd(int op, int which, const float *a, const int64_t *sa, const float *b,
                       const int64_t *sb, const float *c, const int64_t *sc, const float *dy,
                       float *d, const int64_t *shape, const int64_t *dshape, float alpha,
                       float beta);
int hyb_cuda_axis(int op, const float *x, float *y, int64_t outer, int64_t n, int64_t inner,
                  float alpha);
int hyb_cuda_axis_bwd(int op, const float *x, const float *y, const float *dy, float *dx,
                      int64_t outer, int64_t n, int64_t inner, float alpha);
int hyb_cuda_tri(const float *x, float *y, int64_t batch, int64_t R, int64_t C, int64_t k,
                 int upper, int accumulate);
int hyb_cuda_conv1d_causal(const float *x, const float *w, float *y, int64_t B, int64_t T,
                           int64_t C, int64_t K);
int hyb_cuda_conv1d_causal_bwd(const float *x, const float *w, const float *dy, float *dx,
                               float *dw, int64_t B, int64_t T, int64_t C, int64_t K);
int hyb_cuda_gather(const float *x, const int32_t *idx, float *y, int64_t outer, int64_t n,
                    int64_t inner, int64_t m);
int hyb_cuda_gather_bwd(const int32_t *idx, const float *dy, float *dx, int64_t outer, int64_t n,
                        int64_t inner, int64_t m);
int hyb_cuda_sgemm_batched(int tA, int tB, int M, int N, int K, float alpha, const float *A,
                           int lda, int64_t sA, const float *B, int ldb, int64_t sB, float beta,
                           float *C, int ldc, int64_t sC, int batch);

#endif
