/* hyb/tensor.h: dense tensors.
 *
 *   int64_t shape[2] = {4, 8};
 *   hyb_tensor *t = hyb_tensor_new(HYB_F32, 2, shape);   // heap-owned, zeroed
 *   float *p = hyb_tensor_f32(t);                          // p[i * 8 + j] is t[i][j]
 *   hyb_tensor_free(t);
 *
 * Shapes are outermost-first, as PyTorch writes them (x: [B, T, D] has D contiguous). Strides
 * are in elements. Quantised dtypes (Q8_0 ...) hold GGUF blocks: loaders keep file data in them, and
 * with HYB_QUANT the CPU hyb_matmul / hyb_embedding take a frozen weight in Q8_0, Q4_0, Q4_1, Q5_0,
 * Q5_1, Q4_K or Q6_K blocks (core/backend/cpu/cpu_quant.h); every other op works on f32 (CPU) or
 * f32/bf16 (CUDA).
 *
 * Ownership: a tensor made by hyb_tensor_new owns its data and frees it in hyb_tensor_free; a
 * view (hyb_tensor_view) or a wrapper (hyb_tensor_wrap) never frees data; arena tensors belong to
 * their arena and are released with it (hyb_tensor_free on them is a no-op for the data).
 * ->grad is owned by whoever set it (the parameter store for parameters, the graph's arena for
 * activations): hyb_tensor_free never frees ->grad. A parameter (owner HYB_OWN_PARAM) may have
 * no ->grad yet: inference never allocates one; the graph's backward and optimisers allocate it
 * (zeroed) when they first need it, and a missing grad reads as zero. A view shares data but not autodiff: the tape
 * does not connect a view to its base.
 */
#ifndef HYB_TENSOR_H
#define HYB_TENSOR_H

#include "hyb/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HYB_MAX_DIMS 4

typedef enum hyb_dtype {
    HYB_F32 = 0,
    HYB_F16,
    HYB_BF16,
    HYB_I32,
    HYB_Q8_0,
    HYB_Q4_0,
    HYB_Q4_1,
    HYB_Q4_K,
    HYB_Q6_K,
    HYB_Q5_0,
    HYB_Q5_1,
    HYB_Q5_K,
    HYB_DTYPE_COUNT
} hyb_dtype;

/* Device kinds. A backend (hyb/backend.h) owns the memory of one kind; new kinds go before
 * HYB_DEV_COUNT (the plugin ABI reserves HYB_PLUGIN_MAX_DEVICES slots). */
typedef enum hyb_device { HYB_DEV_CPU = 0, HYB_DEV_CUDA = 1, HYB_DEV_COUNT } hyb_device;

typedef enum hyb_owner {
    HYB_OWN_HEAP = 0, /* data freed with the tensor */
    HYB_OWN_ARENA,    /* data belongs to an arena */
    HYB_OWN_VIEW,     /* data belongs to another tensor */
    HYB_OWN_EXTERNAL, /* data belongs to the caller (mmap, plugin buffer) */
    HYB_OWN_PARAM,    /* a parameter: data freed with the tensor (as HEAP); its ->grad belongs to
                         the parameter store (model, mixer), which frees it, and is allocated,
                         zeroed, on first need (hyb_tensor_grad_ensure) */
} hyb_owner;

typedef struct hyb_tensor {
    hyb_dtype dtype;
    hyb_device device;
    hyb_owner owner;
    int ndim;
    int64_t shape[HYB_MAX_DIMS];  /* outermost first */
    int64_t stride[HYB_MAX_DIMS]; /* in elements; contiguous: stride[ndim-1] == 1 */
    void *data;
    /* autodiff: set by the graph (see graph.h). grad has the same shape, f32. */
    struct hyb_tensor *grad;
    int requires_grad;
    char name[96]; /* parameter name (HF naming) or "" */
} hyb_tensor;

/* dtype facts. Block types: block_elems() elements occupy block_bytes() bytes. */
const char *hyb_dtype_name(hyb_dtype t);
int hyb_dtype_from_name(const char *name, hyb_dtype *out); /* "f32", "bf16", ... */
int64_t hyb_dtype_block_elems(hyb_dtype t);
int64_t hyb_dtype_block_bytes(hyb_dtype t);

/* Heap tensor, zeroed. Returns NULL + hyb_error on bad shape or OOM. */
hyb_tensor *hyb_tensor_new(hyb_dtype dtype, int ndim, const int64_t *shape);
/* Wrap caller-owned memory (contiguous). */
/* Give a parameter (owner HYB_OWN_PARAM, CPU) its zeroed f32 ->grad if it has none yet; a no-op
 * when it has one. Any other tensor without ->grad is an error. */
int hyb_tensor_grad_ensure(hyb_tensor *t);
hyb_tensor *hyb_tensor_wrap(hyb_dtype dtype, int ndim, const int64_t *shape, void *data);
/* Contiguous view of t with a new shape (same numel). NULL + error if numel differs. */
hyb_tensor *hyb_tensor_view(hyb_tensor *t, int ndim, const int64_t *shape);
/* A heap tensor whose data is not allocated yet (data NULL; a loader gives it: allocates it, or
 * points it at quantized blocks). hyb_tensor_free frees what it holds then. */
hyb_tensor *hyb_param_no_data(hyb_dtype dtype, int ndim, const int64_t *shape);
/* Deep copy (contiguous heap tensor). */
hyb_tensor *hyb_tensor_clone(const hyb_tensor *t);
void hyb_tensor_free(hyb_tensor *t);

/* Tensors on a device (hyb/backend.h; a NULL or CPU backend gives hyb_tensor_new). Zeroed. */
struct hyb_backend;
hyb_tensor *hyb_tensor_new_on(const struct hyb_backend *be, hyb_dtype dtype, int ndim,
                              const int64_t *shape);
/* Copy a contiguous tensor's data to / from host memory (hyb_tensor_nbytes bytes), any device. */
int hyb_tensor_download(const hyb_tensor *t, void *host_dst);
int hyb_tensor_upload(hyb_tensor *t, const void *host_src);
/* Move an owning contiguous tensor (and its ->grad) to be's device, in place. */
int hyb_tensor_move(hyb_tensor *t, const struct hyb_backend *be);

int64_t hyb_tensor_numel(const hyb_tensor *t);
size_t hyb_tensor_nbytes(const hyb_tensor *t);
int hyb_tensor_is_contiguous(const hyb_tensor *t);
/* "[2, 3, 4]" into buf (n > 0); returns buf. */
const char *hyb_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);
/* "[2, 3, 4] f32" into buf; returns buf. */
const char *hyb_tensor_shape_str(const hyb_tensor *t, char *buf, size_t n);
/* Same dtype and shape? */
int hyb_tensor_same_shape(const hyb_tensor *a, const hyb_tensor *b);

static inline float *hyb_tensor_f32(hyb_tensor *t) { return (float *)t->data; }
static inline const float *hyb_tensor_cf32(const hyb_tensor *t) { return (const float *)t->data; }

/* Convert n elements of src (any dtype, quantised included) to f32. */
int hyb_convert_to_f32(hyb_dtype src_type, const void *src, float *dst, int64_t n);
/* Dequantise n elements (a whole number of blocks) of a quantised GGUF type (Q8_0, Q4_0, Q4_1,
 * Q4_K, Q6_K, Q5_0, Q5_1) into f32. Implemented by the GGUF reader (core/io/dequant.c); hyb_convert_to_f32
 * calls it for quantised types. Returns HYB_OK or a negative hyb_status with the error set. */
int hyb_dequantize(hyb_dtype type, const void *src, float *dst, int64_t n);
/* f32 -> f16 / bf16 (round to nearest even). */
int hyb_convert_from_f32(hyb_dtype dst_type, const float *src, void *dst, int64_t n);

/* Scalar conversions. */
float hyb_bf16_to_f32(uint16_t h);
uint16_t hyb_f32_to_bf16(float f);
float hyb_f16_to_f32(uint16_t h);
uint16_t hyb_f32_to_f16(float f);

/* Deterministic RNG (splitmix64 seeded xoshiro256**). Same seed, same numbers, any machine. */
typedef struct hyb_rng {
    uint64_t s[4];
} hyb_rng;
void hyb_rng_seed(hyb_rng *r, uint64_t seed);
uint64_t hyb_rng_next(hyb_rng *r);
float hyb_rng_uniform(hyb_rng *r);           /* [0, 1) */
float hyb_rng_normal(hyb_rng *r);            /* N(0, 1), Box-Muller */
void hyb_rng_fill_normal(hyb_rng *r, float *x, int64_t n, float mean, float std);
void hyb_rng_fill_uniform(hyb_rng *r, float *x, int64_t n, float lo, float hi);

#ifdef __cplusplus
}
#endif
#endif
