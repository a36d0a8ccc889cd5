/* core/io/quant_load.c: keep GGUF linear weights in their blocks (see quant_load.h). */
#include "io/quant_load.h"

#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_quant.h"
#include "hyb/gguf.h"
#include "hyb/hf.h"

const char *hyb_quant_supported_list(void) {
    return "Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K";
}

/* offsets of the f16 scales in a block of each GGML type (0 fields: not a scaled block type) */
static int scale_fields(int ggml_type, int off[2]) {
    switch (ggml_type) {
    case HYB_GGML_Q8_0:
    case HYB_GGML_Q4_0:
    case HYB_GGML_Q5_0:
        off[0] = 0;
        return 1;
    case HYB_GGML_Q4_1:
    case HYB_GGML_Q5_1:
    case HYB_GGML_Q4_K: /* d, dmin */
    case HYB_GGML_Q5_K:
        off[0] = 0, off[1] = 2;
        return 2;
    case HYB_GGML_Q2_K: /* scales[16], qs[64], d, dmin */
        off[0] = 80, off[1] = 82;
        return 2;
    case HYB_GGML_Q3_K: /* hmask[32], qs[64], scales[12], d */
        off[0] = 108;
        return 1;
    case HYB_GGML_Q6_K: /* ql[128], qh[64], scales[16], d */
        off[0] = 208;
        return 1;
    default:
        return 0;
    }
}

int hyb_quant_check_scales(const char *gguf_name, int ggml_type, const void *data,
                           uint64_t nbytes) {
    int off[2];
    const int nf = scale_fields(ggml_type, off);
    const int64_t bb = hyb_ggml_block_bytes(ggml_type);
    if (nf == 0 || bb <= 0) return HYB_OK;
    const uint8_t *p = data;
    const char *tn = hyb_ggml_type_name(ggml_type);
    for (uint64_t b = 0; b < nbytes / (uint64_t)bb; b++)
        for (int f = 0; f < nf; f++) {
            const uint8_t *h = p + b * (uint64_t)bb + off[f];
            if (((h[0] | (h[1] << 8)) & 0x7c00) == 0x7c00) /* f16 exponent all ones */
                return hyb_error_set(HYB_ERR_FORMAT,
                                     "tensor '%s' (%s): block %llu has a NaN/Inf %s", gguf_name,
                                     tn ? tn : "?", (unsigned long long)b,
                                     f ? "minimum scale (dmin)" : "scale");
        }
    return HYB_OK;
}

int hyb_quant_keep_gguf(hyb_tensor *t, const char *gguf_name, int ggml_type, const void *data,
                        uint64_t nbytes, int n_heads, int head_dim) {
    hyb_dtype dt;
    if (t->ndim != 2 || t->dtype != HYB_F32 || hyb_ggml_block_elems(ggml_type) <= 1) return 0;
    if (hyb_ggml_type_to_dtype(ggml_type, &dt) != HYB_OK || !hyb_quant_supported(dt)) {
        hyb_error_clear();
        const char *tn = hyb_ggml_type_name(ggml_type);
        hyb_log(HYB_LOG_WARN,
                "tensor '%s' is %s, which has no quantized kernel (supported: %s); it is "
                "dequantized to f32",
                gguf_name, tn ? tn : "an unknown type", hyb_quant_supported_list());
        return 0;
    }
    const int64_t N = t->shape[0], K = t->shape[1], be = hyb_dtype_block_elems(dt);
    if (K % be || (uint64_t)(hyb_quant_row_bytes(dt, K) * N) != nbytes)
        return hyb_error_set(HYB_ERR_FORMAT, "tensor '%s' (%s): %llu bytes for shape [%lld, %lld]",
                             gguf_name, hyb_dtype_name(dt), (unsigned long long)nbytes,
                             (long long)N, (long long)K);
    if (n_heads > 0 && (int64_t)n_heads * head_dim != N)
        return hyb_error_set(HYB_ERR_FORMAT, "tensor '%s': %lld rows, expected %d heads x %d",
                             gguf_name, (long long)N, n_heads, head_dim);
    void *old = t->data;
    if (n_heads > 0) {
        const int64_t rb = hyb_quant_row_bytes(dt, K);
        uint8_t *q = hyb_malloc(nbytes);
        if (!q) return hyb_error_wrap(HYB_ERR_NOMEM, "tensor '%s'", gguf_name);
        const uint8_t *src = data;
        const int half = head_dim / 2;
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                    memcpy(q + ((int64_t)h * head_dim + j * half + i) * rb,
                           src + ((int64_t)h * head_dim + 2 * i + j) * rb, (size_t)rb);
        t->data = q;
        t->owner = HYB_OWN_PARAM;
    } else {
        t->data = (void *)data; /* the mapped file's bytes: read-only, never written */
        t->owner = HYB_OWN_EXTERNAL;
    }
    hyb_free(old);
    t->dtype = dt;
    t->requires_grad = 0;
    return 1;
}

/* ---- the public setting (hyb/hf.h) -------------------------------------------------------------*/

int hyb_quant_mode_set(const char *mode) {
    hyb_quant_config c = hyb_quant_get(), p;
    if (!mode || !*mode)
        return hyb_error_set(HYB_ERR_ARG, "quant: empty mode: expected off, precise or fast");
    if (hyb_quant_parse(mode, NULL, &p) != HYB_OK)
        return hyb_error_set(HYB_ERR_ARG, "quant '%s': expected off, precise or fast", mode);
    c.mode = p.mode; /* the activation scheme (HYB_QUANT_ACT) and ISA stay */
    hyb_quant_set(&c);
    return HYB_OK;
}

const char *hyb_quant_mode_current(void) {
    return hyb_quant_mode_name(hyb_quant_get().mode);
}

int hyb_quant_mode_chosen(void) {
    return hyb_quant_is_chosen();
}
