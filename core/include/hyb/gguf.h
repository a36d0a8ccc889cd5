/* hyb/gguf.h: read GGUF files (versions 2 and 3) and dequantise their tensors.
 *
 *   hyb_gguf *g;
 *   if (hyb_gguf_open("SmolLM2-135M-Instruct.Q4_1.gguf", &g) != HYB_OK)
 *       fprintf(stderr, "hyb: %s\n", hyb_error());
 *   uint32_t n_layer;   hyb_gguf_get_u32(g, "llama.block_count", &n_layer);
 *   const char *arch;   hyb_gguf_get_str(g, "general.architecture", &arch, NULL);
 *   int64_t t = hyb_gguf_find_tensor(g, "token_embd.weight");
 *   const hyb_gguf_tensor *ti = hyb_gguf_tensor_at(g, t);    // ti->shape = {49152, 576}
 *   float *w = malloc(ti->numel * sizeof(float));
 *   hyb_gguf_tensor_to_f32(g, t, w);                          // w[i * 576 + j] is row i, col j
 *   hyb_gguf_close(g);
 *
 * The file is mapped read-only (mmap) and stays mapped until hyb_gguf_close(); tensor data
 * pointers (hyb_gguf_tensor.data) point into that mapping. Keys, string values and tensor names
 * are copied at open time into memory owned by the hyb_gguf (NUL-terminated); every pointer the
 * getters return is valid until hyb_gguf_close().
 *
 * Validation: hyb_gguf_open checks everything before anything is used: the magic, the version
 * (2 or 3), counts against the bytes left in the file (a kv count of 2^60 is an error, not an
 * allocation), every string length, value type, array length, tensor rank (1..4), dimension,
 * element count, tensor type, the alignment (general.alignment, default 32, a power of two),
 * each tensor's offset (aligned, inside the file, not overlapping another tensor) and size.
 * Errors come back as HYB_ERR_IO (cannot open/map), HYB_ERR_FORMAT (malformed; the message is
 * "<file>: offset <byte>: <what was wrong>") or HYB_ERR_NOMEM. Tensors of a GGML type hyb
 * knows the size of but cannot decode (e.g. IQ2_XXS) open fine and fail in hyb_gguf_tensor_to_f32
 * with HYB_ERR_UNSUPPORTED; an unknown type id fails at open.
 *
 * Shapes: GGUF stores dimensions innermost-first (ne[0] is the contiguous one); hyb_gguf_tensor
 * reports them outermost-first like PyTorch and hyb_tensor: a GGUF matrix with ne = {576, 49152}
 * has shape {49152, 576}. Element (i, j) of that matrix is at i * 576 + j of the dequantised data.
 *
 * Thread safety: a hyb_gguf is read-only after open; concurrent getters and dequantisation of
 * the same handle from several threads are fine.
 */
#ifndef HYB_GGUF_H
#define HYB_GGUF_H

#include "hyb/common.h"
#include "hyb/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HYB_GGUF_MAX_DIMS 4
#define HYB_GGUF_DEFAULT_ALIGNMENT 32

/* Metadata value types (the numbers are the file's). */
typedef enum hyb_gguf_vtype {
    HYB_GGUF_U8 = 0,
    HYB_GGUF_I8 = 1,
    HYB_GGUF_U16 = 2,
    HYB_GGUF_I16 = 3,
    HYB_GGUF_U32 = 4,
    HYB_GGUF_I32 = 5,
    HYB_GGUF_F32 = 6,
    HYB_GGUF_BOOL = 7,
    HYB_GGUF_STRING = 8,
    HYB_GGUF_ARRAY = 9,
    HYB_GGUF_U64 = 10,
    HYB_GGUF_I64 = 11,
    HYB_GGUF_F64 = 12,
    HYB_GGUF_VTYPE_COUNT
} hyb_gguf_vtype;

/* Tensor storage types (GGML type ids as written in the file). Only the ones hyb decodes and
 * a few common others are named; hyb_ggml_type_name() knows every id with a known size. */
typedef enum hyb_ggml_type {
    HYB_GGML_F32 = 0,
    HYB_GGML_F16 = 1,
    HYB_GGML_Q4_0 = 2,
    HYB_GGML_Q4_1 = 3,
    HYB_GGML_Q5_0 = 6,
    HYB_GGML_Q5_1 = 7,
    HYB_GGML_Q8_0 = 8,
    HYB_GGML_Q8_1 = 9,
    HYB_GGML_Q2_K = 10,
    HYB_GGML_Q3_K = 11,
    HYB_GGML_Q4_K = 12,
    HYB_GGML_Q5_K = 13,
    HYB_GGML_Q6_K = 14,
    HYB_GGML_Q8_K = 15,
    HYB_GGML_I8 = 24,
    HYB_GGML_I16 = 25,
    HYB_GGML_I32 = 26,
    HYB_GGML_I64 = 27,
    HYB_GGML_F64 = 28,
    HYB_GGML_BF16 = 30,
} hyb_ggml_type;

/* GGML type facts. Unknown ids: name NULL, sizes 0. */
const char *hyb_ggml_type_name(int type); /* "Q4_1", ... */
int64_t hyb_ggml_block_elems(int type);   /* elements per block (1 for plain types) */
int64_t hyb_ggml_block_bytes(int type);   /* bytes per block */
int hyb_ggml_can_dequantize(int type);    /* 1 when hyb_ggml_dequantize decodes it */
/* The GGML type that stores hyb dtype t (F32, F16, BF16, I32, Q8_0, ...); -1 when none. */
int hyb_ggml_type_from_dtype(hyb_dtype t);
/* The hyb dtype for a GGML type; HYB_ERR_UNSUPPORTED when hyb has no such dtype. */
int hyb_ggml_type_to_dtype(int type, hyb_dtype *out);

/* Decode n elements stored as GGML type `type` at src into dst (f32).
 * src: n / block_elems blocks of block_bytes each (no alignment needed); dst: [n].
 * n must be a multiple of the block size (HYB_ERR_ARG otherwise); HYB_ERR_UNSUPPORTED for
 * types hyb does not decode. Supported: F32 F16 BF16 F64 I8 I16 I32 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0
 * Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K. Results are bit-identical to the reference formulas in the
 * python gguf package (no fused multiply-add). Parallel (OpenMP) for large n. */
int hyb_ggml_dequantize(int type, const void *src, float *dst, int64_t n);

/* hyb_dequantize(hyb_dtype, src, dst, n), declared in hyb/tensor.h, is implemented in
 * core/io/dequant.c on top of hyb_ggml_dequantize; it accepts every hyb dtype with a GGML
 * counterpart (F32, F16, BF16, I32, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K). */

typedef struct hyb_gguf hyb_gguf;

typedef struct hyb_gguf_tensor {
    const char *name;
    int ndim;                         /* 1..4 */
    int64_t shape[HYB_GGUF_MAX_DIMS]; /* outermost first (PyTorch order); unused entries 1 */
    int type;                         /* hyb_ggml_type id */
    int64_t numel;
    uint64_t offset;      /* from the start of the data section */
    uint64_t file_offset; /* from the start of the file */
    uint64_t nbytes;
    const void *data; /* into the mapping */
} hyb_gguf_tensor;

/* Open and validate a GGUF file (mapped read-only). *out is NULL on failure. */
int hyb_gguf_open(const char *path, hyb_gguf **out);
/* Parse a GGUF image already in memory; `name` labels error messages. The buffer is NOT
 * copied: it must outlive the handle. (For tests and fuzzing.) */
int hyb_gguf_open_memory(const void *buf, size_t size, const char *name, hyb_gguf **out);
void hyb_gguf_close(hyb_gguf *g); /* NULL is fine */

const char *hyb_gguf_path(const hyb_gguf *g);
uint32_t hyb_gguf_version(const hyb_gguf *g);
uint32_t hyb_gguf_alignment(const hyb_gguf *g);
uint64_t hyb_gguf_data_offset(const hyb_gguf *g); /* where the data section starts */
uint64_t hyb_gguf_file_size(const hyb_gguf *g);

/* ---- metadata ------------------------------------------------------------------------------- */
int64_t hyb_gguf_kv_count(const hyb_gguf *g);
int64_t hyb_gguf_find_key(const hyb_gguf *g, const char *key); /* kv index, -1 when absent */
/* Per-entry accessors, kv in [0, kv_count). */
const char *hyb_gguf_kv_key(const hyb_gguf *g, int64_t kv);
hyb_gguf_vtype hyb_gguf_kv_type(const hyb_gguf *g, int64_t kv);
hyb_gguf_vtype hyb_gguf_kv_arr_type(const hyb_gguf *g, int64_t kv); /* element type of an array */
uint64_t hyb_gguf_kv_arr_len(const hyb_gguf *g, int64_t kv);        /* 0 for non-arrays */
/* Element i of a string array (NUL-terminated; *len without the NUL, may be NULL). NULL when kv
 * is not an array of strings or i is out of range. */
const char *hyb_gguf_kv_arr_str(const hyb_gguf *g, int64_t kv, uint64_t i, uint64_t *len);
/* Element i of a numeric or bool array, converted. Integers to int64 (u64 above INT64_MAX is an
 * error), any number to double. HYB_ERR_ARG for a wrong type or index. */
int hyb_gguf_kv_arr_int(const hyb_gguf *g, int64_t kv, uint64_t i, int64_t *out);
int hyb_gguf_kv_arr_float(const hyb_gguf *g, int64_t kv, uint64_t i, double *out);
/* Raw little-endian elements of a numeric or bool array (may be unaligned); NULL otherwise. */
const void *hyb_gguf_kv_arr_data(const hyb_gguf *g, int64_t kv);

/* Typed getters by key. The value must have exactly the asked type: HYB_ERR_NOTFOUND when the
 * key is absent, HYB_ERR_FORMAT when it has another type (the message names both). */
int hyb_gguf_get_u8(const hyb_gguf *g, const char *key, uint8_t *out);
int hyb_gguf_get_i8(const hyb_gguf *g, const char *key, int8_t *out);
int hyb_gguf_get_u16(const hyb_gguf *g, const char *key, uint16_t *out);
int hyb_gguf_get_i16(const hyb_gguf *g, const char *key, int16_t *out);
int hyb_gguf_get_u32(const hyb_gguf *g, const char *key, uint32_t *out);
int hyb_gguf_get_i32(const hyb_gguf *g, const char *key, int32_t *out);
int hyb_gguf_get_u64(const hyb_gguf *g, const char *key, uint64_t *out);
int hyb_gguf_get_i64(const hyb_gguf *g, const char *key, int64_t *out);
int hyb_gguf_get_f32(const hyb_gguf *g, const char *key, float *out);
int hyb_gguf_get_f64(const hyb_gguf *g, const char *key, double *out);
int hyb_gguf_get_bool(const hyb_gguf *g, const char *key, int *out);
int hyb_gguf_get_str(const hyb_gguf *g, const char *key, const char **out, uint64_t *len);
/* Lenient getters: any integer type (and bool) into int64; any number into double. Converters
 * disagree on widths (u32 vs i32 vs u64), so model loaders should use these. */
int hyb_gguf_get_int(const hyb_gguf *g, const char *key, int64_t *out);
int hyb_gguf_get_float(const hyb_gguf *g, const char *key, double *out);
/* An array: its element type and length (either may be NULL). */
int hyb_gguf_get_arr(const hyb_gguf *g, const char *key, hyb_gguf_vtype *elem_type, uint64_t *len);

/* ---- tensors -------------------------------------------------------------------------------- */
int64_t hyb_gguf_tensor_count(const hyb_gguf *g);
int64_t hyb_gguf_find_tensor(const hyb_gguf *g, const char *name);       /* index, -1 when absent */
const hyb_gguf_tensor *hyb_gguf_tensor_at(const hyb_gguf *g, int64_t i); /* NULL out of range */
/* Dequantise tensor i into out (f32, [numel], outermost-first layout). */
int hyb_gguf_tensor_to_f32(const hyb_gguf *g, int64_t i, float *out);
/* Same into bf16 (round to nearest even from the f32 values; BF16 tensors are copied). */
int hyb_gguf_tensor_to_bf16(const hyb_gguf *g, int64_t i, uint16_t *out);
/* A new heap hyb_tensor (F32 or BF16) holding tensor i, named after it. *out NULL on failure. */
int hyb_gguf_tensor_load(const hyb_gguf *g, int64_t i, hyb_dtype as, hyb_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
