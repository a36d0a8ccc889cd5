/* core/backend/cpu/cpu_rope.c: rotary position embedding, HF half-split (NeoX) layout.
 *
 * Mirrors transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb in f32:
 *   inv_freq[i] = 1 / theta^(2i / hd)   (i < hd/2, computed in f32 as HF does)
 *   angle = pos * inv_freq[i];  x[i]' = x[i] cos - x[i + hd/2] sin;  x[i + hd/2]' = x[i + hd/2] cos
 * + x[i] sin inverse applies the transpose (rotation by -angle), which is the backward of the
 * forward. */
#include <math.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"
#include "hyb/common.h"

void hyb_cpu_rope(float *x, int T, int H, int hd, const int32_t *pos, float theta, int inverse) {
    HYB_ASSERT(hd % 2 == 0);
    const int half = hd / 2;
    if (T <= 0 || H <= 0 || half == 0) return;
    float inv_stack[256];
    float *inv = half <= 256 ? inv_stack : malloc(sizeof(float) * (size_t)half);
    HYB_ASSERT(inv != NULL);
    for (int i = 0; i < half; i++)
        inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
    const float sgn = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if ((int64_t)T * H * hd > 16384)
    for (int t = 0; t < T; t++) {
        const float p = (float)(pos ? pos[t] : t);
        float *xt = x + (int64_t)t * H * hd;
        for (int i = 0; i < half; i++) {
            const float ang = p * inv[i];
            const float c = cosf(ang), s = sgn * sinf(ang);
            for (int h = 0; h < H; h++) {
                float *xh = xt + (int64_t)h * hd;
                const float x1 = xh[i], x2 = xh[i + half];
                xh[i] = x1 * c - x2 * s;
                xh[i + half] = x2 * c + x1 * s;
            }
        }
    }
    if (inv != inv_stack) free(inv);
}
