/* hyb/backend.h: the backend vtable, one entry per kernel (in the spirit of ggml's backends).
 * It is the ONLY way compute reaches the hardware: graph ops, mixer plugins (through the `be` of
 * their call, plugin.h), the optimiser and the losses all call these entries.
 *
 *   const hyb_backend *be;
 *   HYB_TRY(hyb_backend_open("cuda:0", &be));      // by name: "cpu", "cuda", "cuda:N"
 *   HYB_TRY(be->rmsnorm_fwd(be, x, w, y, rstd, rows, D, eps));
 *
 * The graph ops (graph.h) check shapes, allocate outputs and record tape nodes; the arithmetic is
 * done by the backend of the inputs' device (hyb_backend_get(t->device)). The CPU backend
 * (core/backend/cpu, OpenBLAS + OpenMP) is always registered; the CUDA backend (core/backend/cuda)
 * is opened on demand by hyb_backend_open and fills the same table with hyb_cuda_<op> kernels.
 * Every entry returns HYB_OK or a negative hyb_status with hyb_error() naming the backend, the op
 * and its sizes ("cuda sgemm M=4 N=8 K=16: CUBLAS_STATUS_..."), so a failed launch or allocation
 * reaches the Lua caller as an error, never an abort.
 *
 * Conventions for every kernel:
 *  - tensors are f32, contiguous, row-major, on the backend's device; `rows` counts all leading
 *    dims ([B, T, D] -> rows = B*T);
 *  - index and weight arrays (ids, targets, pos, mask) are HOST pointers: a device backend uploads
 *    them itself;
 *  - a gradient output named d* is ACCUMULATED (+=) unless documented as written (=), and may be
 *    NULL when that gradient is not wanted;
 *  - scalar results (loss sums) are written to host memory.
 */
#ifndef HYB_BACKEND_H
#define HYB_BACKEND_H

#include "hyb/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hyb_backend hyb_backend;

/* One row of an on-device sampling call (be->sample): the settings of hyb_sampler_params
 * (hyb/sample.h, same ranges) and the uniform draw u in [0, 1) the row's sampler RNG gave
 * (hyb_rng_uniform; ignored when greedy: temperature <= 0 or top_k == 1, draw none then). */
typedef struct hyb_sample_row {
    float temperature;
    int top_k;
    float top_p;
    float repetition_penalty;
    float u;
    const int32_t *history; /* HOST [n_history]: tokens seen (prompt + generated), may be NULL */
    int n_history;
} hyb_sample_row;

/* One parameter tensor of a multi-tensor AdamW step (be->adamw_multi): p, g, m, v: [n] on the
 * backend's device, and the two per-tensor scalars of be->adamw (they differ by lr_scale and by
 * weight decay on or off). The layout is shared with the CUDA kernel (kernels/elementwise.cu):
 * change both together. */
typedef struct hyb_adamw_tensor {
    float *p;
    const float *g;
    float *m;
    float *v;
    int64_t n;
    int64_t first_block; /* filled in by the CUDA backend; callers leave it 0 */
    float shrink;
    float step_size;
} hyb_adamw_tensor;

struct hyb_backend {
    const char *name;  /* "cpu", "cuda:0" */
    hyb_device device; /* the kind of device its memory lives on */
    int ordinal;       /* which device of that kind (0 for the CPU) */
    void *ctx;         /* backend state (CUDA: context, stream, cuBLAS handle); NULL for CPU */
    void *stream;      /* the stream handed to plugins in hyb_mixer_fwd/bwd (NULL for CPU) */

    /* ---- memory (device memory, at least 64-byte aligned) ---- */
    void *(*alloc)(const hyb_backend *be, size_t nbytes); /* NULL + error on failure */
    void (*free)(const hyb_backend *be, void *p);
    int (*memset0)(const hyb_backend *be, void *p, size_t nbytes);
    int (*copy)(const hyb_backend *be, void *dst, const void *src, size_t nbytes); /* dev->dev */
    int (*upload)(const hyb_backend *be, void *dst, const void *host_src, size_t nbytes);
    int (*download)(const hyb_backend *be, void *host_dst, const void *src, size_t nbytes);

    /* ---- kernels ---- */
    /* C[M,N] = alpha op(A) op(B) + beta C (row-major; op = transpose when trans*) */
    int (*sgemm)(const hyb_backend *be, int transA, int transB, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
    /* x: [B, T, H, hd] in place, pos: [T] (host); HF half-split layout; inverse = transpose */
    int (*rope)(const hyb_backend *be, float *x, int B, int T, int H, int hd, const int32_t *pos,
                 float theta, int inverse);
    /* W: [V, D], ids: [n] (host, already range-checked) -> y: [n, D] written */
    int (*embedding_fwd)(const hyb_backend *be, const float *W, const int32_t *ids, float *y,
                          int64_t n, int64_t D);
    /* dW: [V, D] += scatter of dy: [n, D] by ids */
    int (*embedding_bwd)(const hyb_backend *be, float *dW, const int32_t *ids, const float *dy,
                          int64_t n, int64_t D);
    /* x: [rows, D], w: [D] -> y: [rows, D] written, rstd: [rows] written (1/sqrt(mean x^2 + eps))
     */
    int (*rmsnorm_fwd)(const hyb_backend *be, const float *x, const float *w, float *y,
                        float *rstd, int64_t rows, int64_t D, float eps);
    /* Fused residual add + RMSNorm (the transformer block's "h = h + f(h); u = norm(h)"):
     * a, b: [rows, D], w: [D] -> h = a + b: [rows, D] written, y = w * (h * rstd): [rows, D]
     * written, rstd: [rows] written, exactly as add followed by rmsnorm_fwd on h (the CPU result
     * is bit-identical to the two calls; CUDA reads a and b once, one block per row). h may alias
     * a or b (the residual stream updated in place); y must not alias a, b or h. The backward is
     * rmsnorm_bwd on h plus the identity into both addends (the graph records two nodes). */
    int (*add_rmsnorm_fwd)(const hyb_backend *be, const float *a, const float *b, const float *w,
                           float *h, float *y, float *rstd, int64_t rows, int64_t D, float eps);
    /* dx: [rows, D] +=, dw: [D] += (either may be NULL) */
    int (*rmsnorm_bwd)(const hyb_backend *be, const float *x, const float *w, const float *rstd,
                        const float *dy, float *dx, float *dw, int64_t rows, int64_t D);
    /* gate, up: [n] -> y = silu(gate) * up */
    int (*swiglu_fwd)(const hyb_backend *be, const float *gate, const float *up, float *y,
                       int64_t n);
    /* dgate, dup: [n] += (either may be NULL) */
    int (*swiglu_bwd)(const hyb_backend *be, const float *gate, const float *up, const float *dy,
                       float *dgate, float *dup, int64_t n);
    /* y = a + b, [n] */
    int (*add)(const hyb_backend *be, const float *a, const float *b, float *y, int64_t n);
    /* dst += alpha * src, [n] */
    int (*axpy)(const hyb_backend *be, float *dst, const float *src, float alpha, int64_t n);
    /* x: [rows, V] -> y: [rows, V] softmax over V */
    int (*softmax_fwd)(const hyb_backend *be, const float *x, float *y, int64_t rows, int64_t V);
    /* dx += y * (dy - sum(dy * y)) per row */
    int (*softmax_bwd)(const hyb_backend *be, const float *y, const float *dy, float *dx,
                        int64_t rows, int64_t V);
    /* Cross-entropy. logits: [rows, V]; targets: [rows] (host; < 0 = ignored, others in [0, V));
     * w: [rows] (host) per-row weight (mask * valid). lse: [rows] written (log-sum-exp of the
     * row). Returns sum_r w[r] * (lse[r] - logits[r, t_r]) into *loss_sum (host, double). */
    int (*ce_fwd)(const hyb_backend *be, const float *logits, const int32_t *targets,
                   const float *w, float *lse, int64_t rows, int64_t V, double *loss_sum);
    /* dlogits[r, v] += scale * w[r] * (softmax(logits)[r, v] - [v == t_r]) */
    int (*ce_bwd)(const hyb_backend *be, const float *logits, const int32_t *targets,
                   const float *w, const float *lse, float *dlogits, int64_t rows, int64_t V,
                   float scale);
    /* KL between softmax(clamp(s, -100, 100)) = q and softmax(clamp(t / T, -100, 100)) = p.
     * reverse = 1: KL(q || p) (student || teacher); 0: KL(p || q). s, t: [rows, V].
     * stats: [rows, 3] written (student lse, teacher lse, per-row KL) for the backward.
     * Returns sum_r w[r] * KL_r into *loss_sum. Rows with w[r] == 0 may be skipped (stats 0). */
    int (*kl_fwd)(const hyb_backend *be, const float *s, const float *t, const float *w,
                   float *stats, int64_t rows, int64_t V, float temperature, int reverse,
                   double *loss_sum);
    /* ds[r, v] += scale * w[r] * dKL_r/ds[r, v] (zero where s is outside [-100, 100]) */
    int (*kl_bwd)(const hyb_backend *be, const float *s, const float *t, const float *w,
                   const float *stats, float *ds, int64_t rows, int64_t V, float temperature,
                   int reverse, float scale);
    /* One AdamW step on p, g, m, v: [n] (torch.optim.AdamW; core/optim.c computes the scalars:
     * shrink = 1 - lr*wd (or 1), step_size = lr / (1 - b1^t), inv_sqrt_bc2 = 1/sqrt(1 - b2^t)):
     * p *= shrink; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps) */
    int (*adamw)(const hyb_backend *be, float *p, const float *g, float *m, float *v, int64_t n,
                 float b1, float b2, float eps, float shrink, float step_size, float inv_sqrt_bc2);
    /* The adamw update above on `count` tensors t[0..count) (a HOST array; the shared scalars
     * b1, b2, eps, inv_sqrt_bc2 once, shrink and step_size per tensor): the same arithmetic as one
     * be->adamw per tensor, in one call. CPU: that loop (bitwise the same). CUDA: one launch over
     * all tensors (a device table of the pointers and sizes, uploaded only when it changed since
     * the last call: an optimiser's table is the same every step). */
    int (*adamw_multi)(const hyb_backend *be, const hyb_adamw_tensor *t, int count, float b1,
                       float b2, float eps, float inv_sqrt_bc2);
    /* Sampling: one token per row of logits: [n, V] (on the device) into out: [n] (HOST), each
     * row with its own settings rows[i] (a HOST array). The token is the one core/sample.c's
     * hyb_sample_with(settings, logits row, history, u) picks: repetition penalty, greedy
     * (arg max, lowest index on ties), temperature, top-k (ties kept), top-p (in descending
     * order, ties by index), inverse CDF at u. Contract for a device backend: its sums run in
     * another order than the CPU's, so a draw u within ~1e-6 (relative) of the boundary between
     * two tokens' cumulative probabilities may pick the neighbour; greedy rows, the kept sets
     * of top-k and the penalties are exact. Only the n ids (and the rows' settings and
     * histories, uploaded) cross the bus. Errors (a history id outside [0, V), settings out of
     * range, a row whose logits are all NaN or -inf) name the row. */
    int (*sample)(const hyb_backend *be, const float *logits, int64_t n, int64_t V,
                  const hyb_sample_row *rows, int32_t *out);
    /* Sum of squares of x: [n] into *out (host, double): gradient clipping's global norm. */
    int (*sumsq)(const hyb_backend *be, const float *x, int64_t n, double *out);
    /* x *= alpha, [n] */
    int (*scale)(const hyb_backend *be, float *x, float alpha, int64_t n);

    /* y[M,N] = x[M,K] W[N,K]^T with W kept in GGUF blocks of dtype wt (hyb_dtype: Q8_0, Q4_0,
     * Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; a quantized GGUF loaded for inference, core/io/
     * quant_load.c; mixer plugins call it for parameters given as blocks, plugin ABI 3). NULL
     * where the backend has no quantized kernels (a model loaded that way is then refused
     * there). */
    int (*qmatmul)(const hyb_backend *be, int wt, const void *W, const float *x, float *y, int M,
                   int N, int K);

    /* ---- device code: a plugin's own kernels (NULL on the CPU, whose kernels are plain C) ---- */
    /* *fn = the kernel `kernel` (extern "C" __global__) of the CUDA C++ `source` (called `file`
     * in messages), compiled for this device with `opts` ("-DHEAD_DIM=64", ...) and cached on
     * disk and in memory by (source, options, architecture). A compile error names the file and
     * carries NVRTC's log. *fn stays valid while the backend is open. */
    int (*kernel)(const hyb_backend *be, const char *file, const char *source, const char *kernel,
                  const char *const *opts, int nopts, void **fn);
    /* Launch fn on the backend's stream: grid and block sizes (x, y, z), dynamic shared memory
     * bytes, and args as cuLaunchKernel takes them (an array of pointers to each argument). */
    int (*launch)(const hyb_backend *be, void *fn, const char *kernel, const unsigned grid[3],
                  const unsigned block[3], unsigned shared_bytes, void **args);

    /* ---- graphs: record a fixed sequence of this backend's work once, replay it (NULL on the
     * CPU). Between graph_begin and graph_end the entries called on this backend are recorded,
     * not run (CUDA stream capture); graph_launch replays them with the same pointers and the
     * same argument values, reading the device buffers as they are at replay time: per-step
     * inputs go into fixed device buffers (be->upload) before each replay. Not capturable: any
     * entry that waits for the device (download, the loss and sumsq entries, which return a
     * host value) and entries that upload host arrays (rope's pos, embedding ids, ce targets:
     * the upload would replay the capture-time host pointer); one of them makes graph_end fail
     * with an error naming the cause, and the backend is usable again. Buffers freed during a
     * capture must not be reused by other work while the graph lives. */
    int (*graph_begin)(const hyb_backend *be);
    /* *graph = the instantiated graph (NULL on failure) */
    int (*graph_end)(const hyb_backend *be, void **graph);
    int (*graph_launch)(const hyb_backend *be, void *graph);
    void (*graph_free)(const hyb_backend *be, void *graph);
};

/* ---- the registry ---- */
/* The backend that owns memory of device kind `dev` (the CPU's, or the CUDA device opened in this
 * process): NULL and an error naming the device when none is open. */
const hyb_backend *hyb_backend_get(hyb_device dev);
/* The backend called `name`: "cpu", "cuda" (= "cuda:0") or "cuda:N"; opens the device on first use
 * (a provider's open). Unknown names, devices that are not there and builds without the backend
 * are errors with a one-line reason ("device 'cuda:0': no CUDA driver found (libcuda.so.1)"). */
int hyb_backend_open(const char *name, const hyb_backend **out);
/* Register an opened backend under be->name. The table must outlive its use. One backend per
 * device kind is open at a time (its tensors carry only the kind). */
int hyb_backend_register(const hyb_backend *be);
/* A provider opens the backends of one device kind on demand ("cuda" -> "cuda:N"). probe() says,
 * without opening anything lasting, how many devices there are (>= 0) or why none (< 0, error
 * set). */
typedef struct hyb_backend_provider {
    const char *kind; /* "cuda" */
    hyb_device device;
    int (*open)(int ordinal, const hyb_backend **out);
    int (*probe)(void);
} hyb_backend_provider;
int hyb_backend_add_provider(const hyb_backend_provider *p);
/* For `hyb devices`: entry i (0 = cpu, then each provider) as "name" and a one-line status
 * ("available: 1 device" / the reason it is not). Returns HYB_ERR_NOTFOUND past the end. */
int hyb_backend_describe(int i, char *name, size_t name_n, char *status, size_t status_n);
/* Name of a device kind: "cpu", "cuda". */
const char *hyb_device_name(hyb_device dev);
/* The built-in CPU backend. */
const hyb_backend *hyb_backend_cpu(void);

/* CPU compute threads, the calling thread included: the persistent pool of the CPU kernels
 * (core/backend/cpu/cpu_pool.h) and OpenMP's count on the calling thread. n = 0 restores the
 * default: OMP_NUM_THREADS, else the cores this process may run on. Error for n < 0 or > 1024. */
int hyb_set_threads(int n);
/* The count in force (>= 1). */
int hyb_threads(void);

#ifdef __cplusplus
}
#endif
#endif
