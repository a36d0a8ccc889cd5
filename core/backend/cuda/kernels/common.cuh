/* core/backend/cuda/kernels/common.cuh: prepended to every kernel source before NVRTC compiles it.
 * No #include: NVRTC compiles these without the CUDA include path. Compile-time constants come in
 * as -D options (HYB_BLOCK: threads per block of the row kernels, a multiple of 32, <= 1024). */
#ifndef HYB_BLOCK
#define HYB_BLOCK 256
#endif
#define HYB_WARPS (HYB_BLOCK / 32)
#define HYB_FULL_MASK 0xffffffffu
#define HYB_INF __int_as_float(0x7f800000) /* no <math.h> here */
typedef long long i64;
typedef unsigned short hyb_bf16; /* raw bf16 bits */

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(HYB_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(HYB_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(HYB_FULL_MASK, v, o));
    return v;
}
/* Sum over the block (all threads get the result). sh: HYB_WARPS doubles of shared memory. */
__device__ double block_sum_d(double v, double *sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    v = warp_sum_d(v);
    __syncthreads(); /* sh may still be read by a previous call */
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = lane < HYB_WARPS ? sh[lane] : 0.0;
    return warp_sum_d(v);
}
/* Online log-sum-exp state: m = running max, s = sum exp(x - m). */
struct lse_state {
    float m;
    float s;
};
__device__ __forceinline__ lse_state lse_merge(lse_state a, lse_state b) {
    if (a.m == -HYB_INF) return b;
    if (b.m == -HYB_INF) return a;
    lse_state r;
    r.m = fmaxf(a.m, b.m);
    r.s = a.s * expf(a.m - r.m) + b.s * expf(b.m - r.m);
    return r;
}
__device__ __forceinline__ lse_state lse_push(lse_state a, float x) {
    if (x == -HYB_INF) return a; /* exp(-inf) = 0; also avoids -inf - -inf */
    if (x <= a.m) {
        a.s += expf(x - a.m);
    } else {
        a.s = (a.m == -HYB_INF ? 0.0f : a.s * expf(a.m - x)) + 1.0f;
        a.m = x;
    }
    return a;
}
/* Merge over the block; every thread gets the block's state. sh: 2 * HYB_WARPS floats. */
__device__ lse_state block_lse(lse_state st, float *sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        lse_state other;
        other.m = __shfl_xor_sync(HYB_FULL_MASK, st.m, o);
        other.s = __shfl_xor_sync(HYB_FULL_MASK, st.s, o);
        st = lse_merge(st, other);
    }
    __syncthreads();
    if (lane == 0) {
        sh[wid] = st.m;
        sh[HYB_WARPS + wid] = st.s;
    }
    __syncthreads();
    st.m = -HYB_INF;
    st.s = 0.0f;
    if (lane < HYB_WARPS) {
        st.m = sh[lane];
        st.s = sh[HYB_WARPS + lane];
    }
    for (int o = 16; o > 0; o >>= 1) {
        lse_state other;
        other.m = __shfl_xor_sync(HYB_FULL_MASK, st.m, o);
        other.s = __shfl_xor_sync(HYB_FULL_MASK, st.s, o);
        st = lse_merge(st, other);
    }
    return st;
}
__device__ __forceinline__ float lse_value(lse_state st) {
    return st.m == -HYB_INF || st.m == HYB_INF ? st.m : st.m + logf(st.s);
}
