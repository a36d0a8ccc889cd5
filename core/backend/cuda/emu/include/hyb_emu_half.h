/* core/backend/cuda/emu/include/hyb_emu_half.h: __half and __nv_bfloat16 for the emulation
 * (included by the shim cuda_fp16.h / cuda_bf16.h). Storage is the raw 16 bits; arithmetic goes
 * through float and rounds back to nearest even, as the device's f16/bf16 instructions do for a
 * single operation. Trivial types (no constructors run), so arrays of them can live anywhere.
 * The bit conversions (hyb_emu_f2h_bits ... hyb_emu_bf2f) are plain C too: the emulated cuBLAS
 * (cublas_emu.c) uses them for its f16/bf16 matrices. */
#ifndef HYB_EMU_HALF_H
#define HYB_EMU_HALF_H
#ifdef __cplusplus
#include <cmath>
#include <cstring>
#else
#include <math.h>
#include <string.h>
#endif

static inline unsigned short hyb_emu_f2h_bits(float f) {
    unsigned int x;
    memcpy(&x, &f, 4);
    const unsigned int sign = (x >> 16) & 0x8000u;
    unsigned int ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (unsigned short)(sign | 0x7e00u); /* NaN */
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u); /* overflow -> inf */
    if (ax < 0x38800000u) { /* subnormal or zero in half: scale and round */
        float a;
        memcpy(&a, &ax, 4);
        const float r = nearbyintf(a * 16777216.0f); /* units of 2^-24, ties to even */
        return (unsigned short)(sign | (unsigned int)r);
    }
    const unsigned int mant_lsb = (ax >> 13) & 1u;
    ax += 0xfffu + mant_lsb; /* round to nearest even on the 13 dropped bits */
    return (unsigned short)(sign | (((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu));
}
static inline float hyb_emu_h2f(unsigned short h) {
    const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    unsigned int e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        float f = (float)m * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    if (e == 31) x = sign | 0x7f800000u | (m << 13);
    else x = sign | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}
static inline unsigned short hyb_emu_f2bf_bits(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
static inline float hyb_emu_bf2f(unsigned short b) {
    unsigned int u = (unsigned int)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#ifdef __cplusplus
#define HYB_EMU_H16(T, TO_F, FROM_F)                                                               \
    struct T {                                                                                   \
        unsigned short __x;                                                                      \
        T() = default;                                                                           \
        T(float f) : __x(FROM_F(f)) {}                                                           \
        T(double f) : __x(FROM_F((float)f)) {}                                                   \
        T(int i) : __x(FROM_F((float)i)) {}                                                      \
        operator float() const { return TO_F(__x); }                                             \
        T &operator+=(T o) { return *this = T((float)*this + (float)o); }                        \
        T &operator-=(T o) { return *this = T((float)*this - (float)o); }                        \
        T &operator*=(T o) { return *this = T((float)*this * (float)o); }                        \
        T &operator/=(T o) { return *this = T((float)*this / (float)o); }                        \
    };                                                                                           \
    static inline T operator+(T a, T b) { return T((float)a + (float)b); }                       \
    static inline T operator-(T a, T b) { return T((float)a - (float)b); }                       \
    static inline T operator*(T a, T b) { return T((float)a * (float)b); }                       \
    static inline T operator/(T a, T b) { return T((float)a / (float)b); }                       \
    static inline T operator-(T a) { T r = a; r.__x ^= 0x8000u; return r; }                      \
    static inline bool operator<(T a, T b) { return (float)a < (float)b; }                       \
    static inline bool operator>(T a, T b) { return (float)a > (float)b; }                       \
    static inline bool operator<=(T a, T b) { return (float)a <= (float)b; }                     \
    static inline bool operator>=(T a, T b) { return (float)a >= (float)b; }                     \
    static inline bool operator==(T a, T b) { return (float)a == (float)b; }                     \
    static inline bool operator!=(T a, T b) { return (float)a != (float)b; }                     \
    struct T##2 {                                                                                \
        T x, y;                                                                                  \
    };                                                                                           \
    static inline T##2 operator+(T##2 a, T##2 b) { return T##2{a.x + b.x, a.y + b.y}; }          \
    static inline T##2 operator-(T##2 a, T##2 b) { return T##2{a.x - b.x, a.y - b.y}; }          \
    static inline T##2 operator*(T##2 a, T##2 b) { return T##2{a.x * b.x, a.y * b.y}; }
#endif /* __cplusplus */
#endif
