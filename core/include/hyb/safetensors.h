/* hyb/safetensors.h: reading (mmap) and writing (atomic) safetensors files.
 *
 *   hyb_safetensors *st;
 *   if (hyb_safetensors_open("model.safetensors", &st) != HYB_OK) { puts(hyb_error()); ... }
 *   const hyb_st_tensor *t = hyb_safetensors_find(st, "model.norm.weight");
 *   float *buf = malloc(t->numel * sizeof(float));
 *   hyb_safetensors_read_f32(st, t, buf, t->numel);         // F32/F16/BF16/I32/... -> f32
 *   hyb_safetensors_close(st);
 *
 *   hyb_st_writer *w = hyb_st_writer_new();
 *   hyb_st_writer_add(w, "model.norm.weight", HYB_F32, 1, shape, data);  // data borrowed
 *   hyb_st_writer_meta(w, "format", "pt");
 *   hyb_st_writer_save(w, "out/model.safetensors");          // tmp + fsync + rename
 *   hyb_st_writer_free(w);
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {"k": "v", ...}, "name": {"dtype": "F32", "shape": [..],
 *    "data_offsets": [begin, end]}, ...}
 * then the data section; offsets are relative to its start. The reader validates everything
 * against the file size before any tensor is touched (header length, JSON, dtypes, shapes,
 * offsets within the data section, byte counts equal numel * element size, no overlaps); every
 * error names the file and, where one is involved, the tensor. The writer pads the header with
 * spaces so the data section starts 8-byte aligned and lays tensors out densely in the order
 * they were added (what HF's safetensors reader expects).
 */
#ifndef HYB_SAFETENSORS_H
#define HYB_SAFETENSORS_H

#include "hyb/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of the format. Reading to f32 works for all but the F8 types. */
typedef enum hyb_st_dtype {
    HYB_ST_BOOL = 0,
    HYB_ST_U8,
    HYB_ST_I8,
    HYB_ST_I16,
    HYB_ST_U16,
    HYB_ST_F16,
    HYB_ST_BF16,
    HYB_ST_I32,
    HYB_ST_U32,
    HYB_ST_F32,
    HYB_ST_F64,
    HYB_ST_I64,
    HYB_ST_U64,
    HYB_ST_F8_E4M3,
    HYB_ST_F8_E5M2,
    HYB_ST_DTYPE_COUNT
} hyb_st_dtype;

#define HYB_ST_MAX_DIMS 8

typedef struct hyb_st_tensor {
    const char *name;
    hyb_st_dtype dtype;
    int ndim;
    int64_t shape[HYB_ST_MAX_DIMS];
    int64_t numel;
    uint64_t offset; /* bytes from the start of the data section */
    uint64_t nbytes;
    const void *data; /* inside the mapping, valid until close */
} hyb_st_tensor;

typedef struct hyb_safetensors hyb_safetensors;

/* Map and validate a file. HYB_ERR_IO (cannot open/map) or HYB_ERR_FORMAT (corrupt/truncated)
 * with "path: tensor 'name': ..." messages. */
int hyb_safetensors_open(const char *path, hyb_safetensors **out);
/* The same over a caller-owned buffer holding a whole file (not copied: it must outlive st);
 * `name` stands for the path in messages. */
int hyb_safetensors_open_memory(const void *data, size_t size, const char *name,
                                hyb_safetensors **out);
void hyb_safetensors_close(hyb_safetensors *st);

const char *hyb_safetensors_path(const hyb_safetensors *st);
int hyb_safetensors_count(const hyb_safetensors *st);
/* Tensors in header order. */
const hyb_st_tensor *hyb_safetensors_tensor(const hyb_safetensors *st, int i);
/* NULL when absent (no error set). */
const hyb_st_tensor *hyb_safetensors_find(const hyb_safetensors *st, const char *name);
/* __metadata__ entries (string values only, as the format requires). */
int hyb_safetensors_meta_count(const hyb_safetensors *st);
const char *hyb_safetensors_meta_key(const hyb_safetensors *st, int i);
const char *hyb_safetensors_meta(const hyb_safetensors *st, const char *key); /* NULL if absent */

/* Convert a tensor to f32 into dst[n]; n must equal t->numel (error names the tensor). */
int hyb_safetensors_read_f32(const hyb_safetensors *st, const hyb_st_tensor *t, float *dst,
                             int64_t n);
/* The same into a contiguous f32 tensor on any device (read on the host, then uploaded). */
int hyb_safetensors_read_tensor(const hyb_safetensors *st, const hyb_st_tensor *t,
                                hyb_tensor *dst);
/* A new heap f32 tensor with t's shape (at most HYB_MAX_DIMS dims) and name. NULL + error. */
hyb_tensor *hyb_safetensors_load_f32(const hyb_safetensors *st, const hyb_st_tensor *t);

const char *hyb_st_dtype_name(hyb_st_dtype t); /* "F32" */
int hyb_st_dtype_size(hyb_st_dtype t);         /* bytes per element */
int hyb_st_dtype_from_name(const char *name, hyb_st_dtype *out);

/* ---- writer
 * ------------------------------------------------------------------------------------*/
typedef struct hyb_st_writer hyb_st_writer;

hyb_st_writer *hyb_st_writer_new(void); /* NULL + error on OOM */
void hyb_st_writer_free(hyb_st_writer *w);
/* Add a tensor; dtype is the type of `data` and of the stored tensor (F32, F16, BF16, I32).
 * data is borrowed until hyb_st_writer_save returns. Duplicate names are an error. */
int hyb_st_writer_add(hyb_st_writer *w, const char *name, hyb_dtype dtype, int ndim,
                      const int64_t *shape, const void *data);
/* A contiguous CPU tensor (any of the dtypes above). */
int hyb_st_writer_add_tensor(hyb_st_writer *w, const char *name, const hyb_tensor *t);
/* The same, stored as `store`: an f32 tensor (on any device) is rounded to BF16 or F16 (to
 * nearest even) into a copy the writer owns; any other pair is HYB_ERR_UNSUPPORTED. */
int hyb_st_writer_add_tensor_as(hyb_st_writer *w, const char *name, const hyb_tensor *t,
                                hyb_dtype store);
/* A __metadata__ entry (later values replace earlier ones for the same key). */
int hyb_st_writer_meta(hyb_st_writer *w, const char *key, const char *value);
/* Write atomically (hyb/atomic.h). */
int hyb_st_writer_save(hyb_st_writer *w, const char *path);

#ifdef __cplusplus
}
#endif
#endif
