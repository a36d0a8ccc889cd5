/* core/backend/cpu/cpu_math.h: a vectorisable expf for the row kernels (internal).
 *
 * glibc's expf is accurate but scalar; the loss and softmax kernels evaluate ~V = 49152
 * exponentials per token, so they use this one inside `#pragma omp simd` loops. Method
 * (Cody-Waite range reduction + the minimax polynomial published with Cephes' expf):
 *   n = round(x / ln2), r = x - n ln2 (in two parts), e^r ~ 1 + r + r^2 P(r), result e^r 2^n.
 * Relative error below 2.5e-7 (about 2 ulp) over [-86.6, 88.7] (tests/test_ops.c checks it
 * against exp() in double); below -86.6 (e^x < 2.4e-38) the result is 0 (no denormals), above 88.7
 * it is inf, NaN stays NaN. */
#ifndef HYB_CPU_MATH_H
#define HYB_CPU_MATH_H
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float hyb_fast_expf(float x) {
    const float lo = -86.6f, hi = 88.72283f;
    float xc = x < lo ? lo : (x > hi ? hi : x);
    xc = x != x ? 0.0f : xc; /* NaN: keep the integer conversion below defined */
    /* round to nearest: adding 1.5 * 2^23 leaves the integer part in the mantissa */
    const float magic = 12582912.0f;
    float n = (xc * 1.44269504088896341f + magic) - magic; /* n in [-125, 128] */
    float r = xc - n * 0.693359375f;                       /* ln2 high part (exact in few bits) */
    r = r - n * -2.12194440e-4f;                           /* ln2 low part */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e = p * r * r + r + 1.0f;
    /* 2^n as 2^(n-1) * 2 so that n = 128 (x near 88.7) stays a normal float */
    uint32_t bits = (uint32_t)((int32_t)n + 126) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = (e * scale) * 2.0f;
    y = x < lo ? 0.0f : y;
    y = x > hi ? INFINITY : y;
    return x != x ? x : y;
}
#endif
