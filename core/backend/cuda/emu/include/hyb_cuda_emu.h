/* core/backend/cuda/emu/include/hyb_cuda_emu.h: compiles CUDA C++ kernel sources, unchanged, with
 * the host C++ compiler (g++ -include hyb_cuda_emu.h). The emulated compiler
 * (core/backend/cuda/emu/nvrtc_emu.c) rewrites `__shared__` declarations into calls of
 * hyb_emu_shared<T, id>() / hyb_emu_dyn_shared() and appends HYB_EMU_KERNEL(name) for every
 * __global__ function; everything else is in this header:
 *
 *   - threadIdx, blockIdx, blockDim, gridDim, warpSize: the calling fiber's (runtime.c)
 *   - __syncthreads(_count/_and/_or), __syncwarp, __shfl*_sync, __ballot/__any/__all_sync,
 *     __activemask, __reduce_*_sync, __match_any_sync: scheduler calls through hyb_emu_rt
 *   - atomics (GCC __atomic builtins: ThreadSanitizer sees them as atomic), fences, clock64
 *   - math: <cmath> plus the CUDA intrinsics (__expf, __fdividef, rsqrtf, __popc, ...)
 *   - vector types (float2/float4/...), __half/__nv_bfloat16 (cuda_fp16.h / cuda_bf16.h of the
 *     shim directory), WMMA fragments (mma.h)
 *
 * __CUDA_ARCH__ is defined (from --gpu-architecture), as HYB_CUDA_EMU; inline PTX cannot run
 * here, so kernels keep a C++ path under #ifdef HYB_CUDA_EMU. */
#ifndef HYB_CUDA_EMU_H
#define HYB_CUDA_EMU_H
#include <cassert>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <type_traits>
#include <utility>

#include "hyb_emu_abi.h"

extern "C" {
/* set by the runtime right after dlopen */
__attribute__((visibility("default"))) const hyb_emu_api *hyb_emu_rt = nullptr;
__attribute__((visibility("default"))) int hyb_emu_module_abi = HYB_EMU_ABI;
}

/* ---- qualifiers ---------------------------------------------------------------------------- */
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
/* __shared__ is rewritten by the emulated compiler; one that is left (e.g. made by a macro) is an
 * error here rather than a silent per-thread variable */
#define __shared__ static_assert(false, "__shared__ must appear literally in the kernel source");

static inline hyb_emu_thread *hyb_emu_self() { return hyb_emu_rt->self(); }
#define threadIdx (hyb_emu_self()->threadIdx)
#define blockIdx (hyb_emu_self()->blockIdx)
#define blockDim (hyb_emu_self()->blockDim)
#define gridDim (hyb_emu_self()->gridDim)
#define warpSize 32

typedef hyb_emu_u3 uint3;
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    dim3(hyb_emu_u3 v) : x(v.x), y(v.y), z(v.z) {}
};

/* ---- shared memory ------------------------------------------------------------------------- */
template <class T, int ID> static inline T &hyb_emu_shared() {
    return *static_cast<T *>(hyb_emu_rt->shared(ID, sizeof(T), alignof(T)));
}
static inline void *hyb_emu_dyn_shared() { return hyb_emu_rt->dyn_shared(); }

/* ---- barriers and warp operations ---------------------------------------------------------- */
static inline void __syncthreads() { hyb_emu_rt->syncthreads(HYB_EMU_BAR, 0); }
static inline int __syncthreads_count(int p) { return hyb_emu_rt->syncthreads(HYB_EMU_BAR_COUNT, p != 0); }
static inline int __syncthreads_and(int p) { return hyb_emu_rt->syncthreads(HYB_EMU_BAR_AND, p != 0); }
static inline int __syncthreads_or(int p) { return hyb_emu_rt->syncthreads(HYB_EMU_BAR_OR, p != 0); }
static inline void __syncwarp(unsigned int mask = 0xffffffffu) {
    hyb_emu_rt->warp(HYB_EMU_SYNCWARP, mask, 0, 0, 32);
}
static inline unsigned int __activemask() { return hyb_emu_rt->activemask(); }

template <class T> static inline T hyb_emu_shfl(int op, unsigned int mask, T v, int arg, int width) {
    static_assert(sizeof(T) <= 8, "shuffles of more than 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = hyb_emu_rt->warp(op, mask, bits, arg, width);
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}
template <class T> static inline T __shfl_sync(unsigned int m, T v, int src, int w = 32) {
    return hyb_emu_shfl(HYB_EMU_SHFL_IDX, m, v, src, w);
}
template <class T> static inline T __shfl_up_sync(unsigned int m, T v, unsigned int d, int w = 32) {
    return hyb_emu_shfl(HYB_EMU_SHFL_UP, m, v, (int)d, w);
}
template <class T> static inline T __shfl_down_sync(unsigned int m, T v, unsigned int d, int w = 32) {
    return hyb_emu_shfl(HYB_EMU_SHFL_DOWN, m, v, (int)d, w);
}
template <class T> static inline T __shfl_xor_sync(unsigned int m, T v, int lm, int w = 32) {
    return hyb_emu_shfl(HYB_EMU_SHFL_XOR, m, v, lm, w);
}
static inline unsigned int __ballot_sync(unsigned int m, int p) {
    return (unsigned int)hyb_emu_rt->warp(HYB_EMU_BALLOT, m, p != 0, 0, 32);
}
static inline int __any_sync(unsigned int m, int p) {
    return (int)hyb_emu_rt->warp(HYB_EMU_ANY, m, p != 0, 0, 32);
}
static inline int __all_sync(unsigned int m, int p) {
    return (int)hyb_emu_rt->warp(HYB_EMU_ALL, m, p != 0, 0, 32);
}
static inline unsigned int __reduce_add_sync(unsigned int m, unsigned int v) {
    return (unsigned int)hyb_emu_rt->warp(HYB_EMU_REDUCE_ADD, m, v, 0, 32);
}
static inline unsigned int __reduce_min_sync(unsigned int m, unsigned int v) {
    return (unsigned int)hyb_emu_rt->warp(HYB_EMU_REDUCE_MIN, m, v, 0, 32);
}
static inline unsigned int __reduce_max_sync(unsigned int m, unsigned int v) {
    return (unsigned int)hyb_emu_rt->warp(HYB_EMU_REDUCE_MAX, m, v, 0, 32);
}
template <class T> static inline unsigned int __match_any_sync(unsigned int m, T v) {
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return (unsigned int)hyb_emu_rt->warp(HYB_EMU_MATCH_ANY, m, bits, 0, 32);
}
/* a failed device assertion fails the launch with its text (the process goes on, as on a GPU
 * where the error surfaces at the next synchronisation) */
#undef assert
#define assert(e) ((e) ? (void)0 : hyb_emu_rt->trap("assertion `" #e "' failed", __FILE__, __LINE__))
static inline void __trap() { hyb_emu_rt->trap("__trap()", __FILE__, __LINE__); }
static inline void __brkpt() {}
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline long long clock64() {
#if defined(__x86_64__)
    return (long long)__builtin_ia32_rdtsc();
#else
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000ll + t.tv_nsec;
#endif
}
static inline void __nanosleep(unsigned int) {}

static inline float __uint_as_float(unsigned int i);
static inline unsigned int __float_as_uint(float f);
/* ---- atomics ------------------------------------------------------------------------------- */
#define HYB_EMU_ATOMIC_INT(T)                                                                      \
    static inline T atomicAdd(T *p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }  \
    static inline T atomicSub(T *p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }  \
    static inline T atomicExch(T *p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }\
    static inline T atomicAnd(T *p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }  \
    static inline T atomicOr(T *p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }    \
    static inline T atomicXor(T *p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }  \
    static inline T atomicCAS(T *p, T cmp, T v) {                                                \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);      \
        return cmp;                                                                              \
    }                                                                                            \
    static inline T atomicMin(T *p, T v) {                                                       \
        T o = __atomic_load_n(p, __ATOMIC_RELAXED);                                              \
        while (v < o && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED,           \
                                                     __ATOMIC_RELAXED)) {}                       \
        return o;                                                                                \
    }                                                                                            \
    static inline T atomicMax(T *p, T v) {                                                       \
        T o = __atomic_load_n(p, __ATOMIC_RELAXED);                                              \
        while (v > o && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED,           \
                                                     __ATOMIC_RELAXED)) {}                       \
        return o;                                                                                \
    }
HYB_EMU_ATOMIC_INT(int)
HYB_EMU_ATOMIC_INT(unsigned int)
HYB_EMU_ATOMIC_INT(long long)
HYB_EMU_ATOMIC_INT(unsigned long long)
#undef HYB_EMU_ATOMIC_INT
template <class F, class U> static inline F hyb_emu_atomic_fop(F *p, F v, int op) {
    static_assert(sizeof(F) == sizeof(U), "size");
    U *q = reinterpret_cast<U *>(p);
    U o = __atomic_load_n(q, __ATOMIC_RELAXED), n;
    for (;;) {
        F f, r;
        std::memcpy(&f, &o, sizeof f);
        r = op == 0 ? f + v : op == 1 ? (v < f ? v : f) : (v > f ? v : f);
        std::memcpy(&n, &r, sizeof n);
        if (__atomic_compare_exchange_n(q, &o, n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return f;
    }
}
static inline float atomicAdd(float *p, float v) { return hyb_emu_atomic_fop<float, unsigned int>(p, v, 0); }
static inline double atomicAdd(double *p, double v) { return hyb_emu_atomic_fop<double, unsigned long long>(p, v, 0); }
static inline float atomicExch(float *p, float v) {
    return __uint_as_float(atomicExch(reinterpret_cast<unsigned int *>(p), __float_as_uint(v)));
}
static inline unsigned int atomicInc(unsigned int *p, unsigned int lim) {
    unsigned int o = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &o, o >= lim ? 0u : o + 1u, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {}
    return o;
}
static inline unsigned int atomicDec(unsigned int *p, unsigned int lim) {
    unsigned int o = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &o, (o == 0u || o > lim) ? lim : o - 1u, true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return o;
}
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd

/* ---- math ---------------------------------------------------------------------------------- */
using std::isfinite;
using std::isinf;
using std::isnan;
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int i; std::memcpy(&i, &f, 4); return i; }
static inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
static inline long long __double_as_longlong(double f) { long long i; std::memcpy(&i, &f, 8); return i; }
/* __expf, __logf, __log2f, __log10f, __exp10f, __sinf, __cosf, __tanf,
 * __sincosf, __powf: glibc's own (<cmath>) */
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __frsqrt_rn(float a) { return 1.0f / sqrtf(a); }
static inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
static inline double rsqrt(double a) { return 1.0 / sqrt(a); }
static inline float rcbrtf(float a) { return 1.0f / cbrtf(a); }
static inline float __saturatef(float a) { return a < 0.0f ? 0.0f : a > 1.0f ? 1.0f : (a != a ? 0.0f : a); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline void sincospif(float x, float *s, float *c) {
    *s = sinf((float)M_PI * x);
    *c = cosf((float)M_PI * x);
}
static inline float sinpif(float x) { return sinf((float)M_PI * x); }
static inline float cospif(float x) { return cosf((float)M_PI * x); }
static inline float normcdff(float x) { return 0.5f * erfcf(-x * (float)M_SQRT1_2); }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline unsigned int __float2uint_rn(float x) { return (unsigned int)nearbyintf(x); }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned int x) { return (float)x; }
static inline float __ll2float_rn(long long x) { return (float)x; }
static inline float __double2float_rn(double x) { return (float)x; }
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned int)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
static inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned int)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
static inline int __mul24(int a, int b) { return a * b; }
static inline unsigned int __umul24(unsigned int a, unsigned int b) { return a * b; }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
template <class T> static inline T __ldg(const T *p) { return *p; }
template <class T> static inline T __ldcs(const T *p) { return *p; }
template <class T> static inline T __ldcg(const T *p) { return *p; }
template <class T> static inline void __stcs(T *p, T v) { *p = v; }
template <class T> static inline void __stcg(T *p, T v) { *p = v; }

/* CUDA's integer/float min and max overloads (the device headers have one per type pair) */
#define HYB_EMU_MINMAX(T)                                                                          \
    static inline T min(T a, T b) { return a < b ? a : b; }                                      \
    static inline T max(T a, T b) { return a > b ? a : b; }
HYB_EMU_MINMAX(int)
HYB_EMU_MINMAX(unsigned int)
HYB_EMU_MINMAX(long)
HYB_EMU_MINMAX(unsigned long)
HYB_EMU_MINMAX(long long)
HYB_EMU_MINMAX(unsigned long long)
#undef HYB_EMU_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline long long min(long long a, int b) { return a < b ? a : b; }
static inline long long min(int a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, int b) { return a > b ? a : b; }
static inline long long max(int a, long long b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, int b) { return a < (unsigned int)b ? a : (unsigned int)b; }
static inline unsigned int min(int a, unsigned int b) { return (unsigned int)a < b ? (unsigned int)a : b; }
static inline unsigned int max(unsigned int a, int b) { return a > (unsigned int)b ? a : (unsigned int)b; }
static inline unsigned int max(int a, unsigned int b) { return (unsigned int)a > b ? (unsigned int)a : b; }
static inline float min(float a, double b) { return fminf(a, (float)b); }
static inline float max(float a, double b) { return fmaxf(a, (float)b); }

/* ---- vector types -------------------------------------------------------------------------- */
#define HYB_EMU_VEC2(T, N, A)                                                                      \
    struct __attribute__((aligned(A))) N##2 { T x, y; };                                        \
    static inline N##2 make_##N##2(T x, T y) { N##2 r; r.x = x; r.y = y; return r; }
#define HYB_EMU_VEC3(T, N)                                                                         \
    struct N##3 { T x, y, z; };                                                                  \
    static inline N##3 make_##N##3(T x, T y, T z) { N##3 r; r.x = x; r.y = y; r.z = z; return r; }
#define HYB_EMU_VEC4(T, N, A)                                                                      \
    struct __attribute__((aligned(A))) N##4 { T x, y, z, w; };                                  \
    static inline N##4 make_##N##4(T x, T y, T z, T w) {                                         \
        N##4 r; r.x = x; r.y = y; r.z = z; r.w = w; return r;                                    \
    }
HYB_EMU_VEC2(float, float, 8) HYB_EMU_VEC3(float, float) HYB_EMU_VEC4(float, float, 16)
HYB_EMU_VEC2(double, double, 16) HYB_EMU_VEC3(double, double) HYB_EMU_VEC4(double, double, 32)
HYB_EMU_VEC2(int, int, 8) HYB_EMU_VEC3(int, int) HYB_EMU_VEC4(int, int, 16)
HYB_EMU_VEC2(unsigned int, uint, 8) HYB_EMU_VEC4(unsigned int, uint, 16)
HYB_EMU_VEC2(short, short, 4) HYB_EMU_VEC4(short, short, 8)
HYB_EMU_VEC2(unsigned short, ushort, 4) HYB_EMU_VEC4(unsigned short, ushort, 8)
HYB_EMU_VEC2(signed char, char, 2) HYB_EMU_VEC4(signed char, char, 4)
HYB_EMU_VEC2(unsigned char, uchar, 2) HYB_EMU_VEC4(unsigned char, uchar, 4)
HYB_EMU_VEC2(long long, longlong, 16) HYB_EMU_VEC2(unsigned long long, ulonglong, 16)
#undef HYB_EMU_VEC2
#undef HYB_EMU_VEC3
#undef HYB_EMU_VEC4

/* ---- kernel entries -------------------------------------------------------------------------- */
namespace hyb_emu_detail {
template <class... P, std::size_t... I>
static inline void invoke(void (*f)(P...), void **a, std::index_sequence<I...>) {
    f(*static_cast<typename std::decay<P>::type *>(a[I])...);
}
template <class... P> static inline void invoke(void (*f)(P...), void **a) {
    invoke(f, a, std::index_sequence_for<P...>{});
}
/* the kernel's parameter count and sizes: what a CUDA graph capture copies by value (driver.c) */
template <class... P> static inline unsigned argsizes(void (*)(P...), unsigned *sz, unsigned cap) {
    const unsigned s[] = {0u, (unsigned)sizeof(typename std::decay<P>::type)...};
    for (unsigned i = 0; i < sizeof...(P) && i < cap; i++)
        sz[i] = s[i + 1];
    return (unsigned)sizeof...(P);
}
} // namespace hyb_emu_detail
#define HYB_EMU_KERNEL(k)                                                                          \
    extern "C" __attribute__((visibility("default"))) void hyb_emu_entry_##k(void **a) {          \
        ::hyb_emu_detail::invoke(k, a);                                                          \
    }                                                                                              \
    extern "C" __attribute__((visibility("default"))) unsigned hyb_emu_argsizes_##k(unsigned *sz,  \
                                                                                    unsigned cap) { \
        return ::hyb_emu_detail::argsizes(k, sz, cap);                                           \
    }

#endif
