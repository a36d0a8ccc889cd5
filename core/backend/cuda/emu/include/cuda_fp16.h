/* emulation shim for <cuda_fp16.h> (core/backend/cuda/emu): __half, __half2 and the common
 * conversions and arithmetic intrinsics, through float with round-to-nearest-even. */
#ifndef HYB_EMU_CUDA_FP16_H
#define HYB_EMU_CUDA_FP16_H
#include "hyb_emu_half.h"
HYB_EMU_H16(__half, hyb_emu_h2f, hyb_emu_f2h_bits)
typedef __half half;
typedef __half2 half2;
static inline __half __float2half(float f) { __half h; h.__x = hyb_emu_f2h_bits(f); return h; }
static inline __half __float2half_rn(float f) { return __float2half(f); }
static inline float __half2float(__half h) { return hyb_emu_h2f(h.__x); }
static inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half(a), __float2half(b)}; }
static inline __half2 __float2half2_rn(float a) { return __floats2half2_rn(a, a); }
static inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
static inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
static inline __half __low2half(__half2 h) { return h.x; }
static inline __half __high2half(__half2 h) { return h.y; }
static inline __half __hadd(__half a, __half b) { return a + b; }
static inline __half __hsub(__half a, __half b) { return a - b; }
static inline __half __hmul(__half a, __half b) { return a * b; }
static inline __half __hdiv(__half a, __half b) { return a / b; }
static inline __half __hneg(__half a) { return -a; }
static inline __half __hfma(__half a, __half b, __half c) { return __float2half(fmaf((float)a, (float)b, (float)c)); }
static inline __half __hmax(__half a, __half b) { return (float)a > (float)b ? a : b; }
static inline __half __hmin(__half a, __half b) { return (float)a < (float)b ? a : b; }
static inline bool __hlt(__half a, __half b) { return a < b; }
static inline bool __hgt(__half a, __half b) { return a > b; }
static inline bool __heq(__half a, __half b) { return a == b; }
static inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
static inline __half2 __hadd2(__half2 a, __half2 b) { return a + b; }
static inline __half2 __hmul2(__half2 a, __half2 b) { return a * b; }
static inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }
static inline __half hexp(__half a) { return __float2half(expf((float)a)); }
static inline __half hsqrt(__half a) { return __float2half(sqrtf((float)a)); }
#endif
