/* core/io/quant_load.c: keep GGUF linear weights in their blocks (see quant_load.h). */
#include "io/quant_load.h"

#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_quant.h"
#include "hyb/gguf.h"

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* parameters that reach the kernels through hyb_matmul / hyb_embedding (core/model.c trunk) */
static int graph_consumed(const char *name) {
    return !strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "lm_head.weight") ||
           ends_with(name, ".mlp.gate_proj.weight") || ends_with(name, ".mlp.up_proj.weight") ||
           ends_with(name, ".mlp.down_proj.weight");
}

/* offsets of the f16 scales in a block of each type */
static int scale_fields(hyb_dtype t, int off[2]) {
    switch (t) {
    case HYB_Q8_0:
    case HYB_Q4_0:
    case HYB_Q5_0:
        off[0] = 0;
        return 1;
    case HYB_Q4_1:
    case HYB_Q5_1:
    case HYB_Q4_K: /* d, dmin */
        off[0] = 0, off[1] = 2;
        return 2;
    case HYB_Q6_K:
        off[0] = 208;
        return 1;
    default:
        return 0;
    }
}

/* the checks both entry points share: applicable type and shape, byte count, finite scales */
static int check_blocks(const hyb_tensor *t, const char *gguf_name, int ggml_type, const void *data,
                        uint64_t nbytes, hyb_dtype *out) {
    hyb_dtype dt;
    if (hyb_ggml_type_to_dtype(ggml_type, &dt) != HYB_OK || !hyb_quant_supported(dt) ||
        t->ndim != 2 || t->dtype != HYB_F32) {
        hyb_error_clear();
        if (hyb_ggml_block_elems(ggml_type) > 1) /* a block type without a kernel: say so */
            hyb_log(HYB_LOG_WARN,
                    "HYB_QUANT: tensor '%s' is %s, which has no quantized kernel (supported: "
                    "Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q6_K); it is dequantized to f32",
                    gguf_name, hyb_ggml_type_name(ggml_type) ? hyb_ggml_type_name(ggml_type) : "?");
        return 0;
    }
    const int64_t K = t->shape[1], bb = hyb_dtype_block_bytes(dt), be = hyb_dtype_block_elems(dt);
    if (K % be || (uint64_t)(hyb_quant_row_bytes(dt, K) * t->shape[0]) != nbytes)
        return hyb_error_set(HYB_ERR_FORMAT, "tensor '%s' (%s): %llu bytes for shape [%lld, %lld]",
                             gguf_name, hyb_dtype_name(dt), (unsigned long long)nbytes,
                             (long long)t->shape[0], (long long)K);
    int off[2];
    const int nf = scale_fields(dt, off);
    const uint8_t *p = data;
    for (uint64_t b = 0; b < nbytes / (uint64_t)bb; b++)
        for (int f = 0; f < nf; f++) {
            const uint8_t *h = p + b * (uint64_t)bb + off[f];
            if (((h[0] | (h[1] << 8)) & 0x7c00) == 0x7c00)
                return hyb_error_set(HYB_ERR_FORMAT,
                                     "tensor '%s' (%s): block %llu has a NaN/Inf scale", gguf_name,
                                     hyb_dtype_name(dt), (unsigned long long)b);
        }
    *out = dt;
    return 1;
}

static int attn_proj(const char *name) {
    return ends_with(name, ".self_attn.q_proj.weight") ||
           ends_with(name, ".self_attn.k_proj.weight") ||
           ends_with(name, ".self_attn.v_proj.weight") ||
           ends_with(name, ".self_attn.o_proj.weight");
}

int hyb_quant_shadow_gguf(hyb_tensor *t, const char *gguf_name, int ggml_type, const void *data,
                          uint64_t nbytes, int n_heads, int head_dim) {
    if (hyb_quant_get().mode == HYB_QUANT_OFF || !attn_proj(t->name)) return HYB_OK;
    hyb_dtype dt;
    int ok = check_blocks(t, gguf_name, ggml_type, data, nbytes, &dt);
    if (ok <= 0) return ok;
    const int64_t N = t->shape[0], K = t->shape[1], rb = hyb_quant_row_bytes(dt, K);
    if (n_heads > 0 && (int64_t)n_heads * head_dim != N)
        return hyb_error_set(HYB_ERR_FORMAT, "tensor '%s': %lld rows, expected %d heads x %d",
                             gguf_name, (long long)N, n_heads, head_dim);
    uint8_t *q = malloc(nbytes);
    if (!q) return hyb_error_set(HYB_ERR_NOMEM, "tensor '%s': out of memory", gguf_name);
    const uint8_t *src = data;
    if (n_heads > 0) {
        const int half = head_dim / 2;
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                    memcpy(q + ((int64_t)h * head_dim + j * half + i) * rb,
                           src + ((int64_t)h * head_dim + 2 * i + j) * rb, (size_t)rb);
    } else {
        memcpy(q, src, nbytes);
    }
    int rc = hyb_quant_shadow_add(hyb_tensor_cf32(t), N, K, dt, q);
    if (rc != HYB_OK) free(q);
    return rc;
}

int hyb_quant_adopt_gguf(hyb_tensor *t, const char *gguf_name, int ggml_type, const void *data,
                         uint64_t nbytes) {
    if (hyb_quant_get().mode == HYB_QUANT_OFF || !graph_consumed(t->name)) return 0;
    hyb_dtype dt;
    int ok = check_blocks(t, gguf_name, ggml_type, data, nbytes, &dt);
    if (ok <= 0) return ok;
    void *q = hyb_malloc(nbytes);
    if (!q) return hyb_error_set(HYB_ERR_NOMEM, "tensor '%s': out of memory", gguf_name);
    memcpy(q, data, nbytes);
    hyb_free(t->data);
    t->data = q;
    t->dtype = dt;
    t->requires_grad = 0;
    return 1;
}
