/* tests/cuda_emu/semantics.cu: kernels that pin down what the CUDA emulation models (checked by
 * test_emu.c against host references written from the CUDA programming guide / PTX ISA). */
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>

/* 8 results per thread: shuffles (xor, down with width 8, up, idx with width 16) and votes */
extern "C" __global__ void k_warp(const int *in, int *out) {
    const int t = threadIdx.x;
    const int v = in[t];
    int *o = out + t * 8;
    o[0] = __shfl_xor_sync(0xffffffffu, v, 1);
    o[1] = __shfl_xor_sync(0xffffffffu, v, 16);
    o[2] = __shfl_down_sync(0xffffffffu, v, 3, 8);
    o[3] = __shfl_up_sync(0xffffffffu, v, 5);
    o[4] = __shfl_sync(0xffffffffu, v, (t * 7) % 32, 16);
    o[5] = (int)__ballot_sync(0xffffffffu, v % 3 == 0);
    o[6] = __any_sync(0xffffffffu, v == 40) * 2 + __all_sync(0xffffffffu, v >= 0);
    o[7] = (int)__reduce_add_sync(0xffffffffu, (unsigned)v);
}
/* a half-warp mask: lanes 0-15 and 16-31 shuffle separately */
extern "C" __global__ void k_halfwarp(const float *in, float *out) {
    const unsigned m = threadIdx.x < 16 ? 0x0000ffffu : 0xffff0000u;
    float v = in[threadIdx.x];
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(m, v, o);
    out[threadIdx.x] = v;
}
/* barrier reductions over a block that is not a multiple of 32 */
extern "C" __global__ void k_bar(const int *in, int *out) {
    const int t = threadIdx.x;
    const int c = __syncthreads_count(in[t] % 3 == 0);
    const int a = __syncthreads_and(in[t] >= 0);
    const int o = __syncthreads_or(in[t] == 7);
    out[t] = c * 4 + a * 2 + o;
}
/* static and dynamic shared memory: each block reverses its slice */
extern "C" __global__ void k_reverse(const float *x, float *y) {
    __shared__ float s[256];
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    __syncthreads();
    y[base + t] = s[blockDim.x - 1 - t];
}
extern "C" __global__ void k_reverse_dyn(const float *x, float *y) {
    extern __shared__ float ds[];
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    ds[t] = x[base + t];
    __syncthreads();
    y[base + t] = ds[blockDim.x - 1 - t];
}
/* 3-D grid and block indices */
extern "C" __global__ void k_ids(int *out) {
    const int bl = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int nt = blockDim.x * blockDim.y * blockDim.z;
    const int tl = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[bl * nt + tl] = ((blockIdx.z * 4 + blockIdx.y) * 4 + blockIdx.x) * 1000 +
                        (threadIdx.z * 16 + threadIdx.y) * 16 + threadIdx.x;
}
/* atomics from many blocks */
extern "C" __global__ void k_atomics(const int *in, int n, int *hist, float *fsum, int *mx,
                                     double *dsum) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        atomicAdd(hist + (in[i] & 15), 1);
        atomicAdd(fsum, 0.5f);
        atomicMax(mx, in[i]);
        atomicAdd(dsum, (double)in[i]);
    }
}
/* f32 -> f16 / bf16 bits and back */
extern "C" __global__ void k_half(const float *x, unsigned short *h, unsigned short *b, float *back,
                                  int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __half hv = __float2half(x[i]);
    const __nv_bfloat16 bv = __float2bfloat16(x[i]);
    h[i] = __half_as_ushort(hv);
    b[i] = __bfloat16_as_ushort(bv);
    back[i] = __half2float(hv) + __bfloat162float(bv);
}
/* one 16x16x16 WMMA tile: C = A (row-major) B (col-major) */
extern "C" __global__ void k_wmma(const __half *a, const __half *b, float *c) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}
/* errors the launch must report instead of hanging or guessing */
extern "C" __global__ void k_deadlock(int *out) {
    if (threadIdx.x < 16) __syncthreads(); /* half the warp at the barrier ... */
    else __syncwarp();                     /* ... the other half waits for the whole warp */
    out[threadIdx.x] = 1;
}
extern "C" __global__ void k_exited_lane(int *out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}
extern "C" __global__ void k_assert(const int *in) {
    assert(in[threadIdx.x] != 5);
}

/* the declarations the emulated compiler rewrites, in their less common forms: namespace-scope
 * static and dynamic shared memory, __align__, a template type with a comma, a declaration over
 * two lines, __launch_bounds__ between the return type and the name */
template <class T, int N> struct pair_arr {
    T v[N];
};
__shared__ float g_tile[64];
extern __shared__ float g_dyn[];
extern "C" __global__ void __launch_bounds__(64, 2) k_forms(const float *x, float *y) {
    __shared__ __align__(16) float4 quad[16];
    __shared__ pair_arr<float, 2>
        pairs[64];
    const int t = threadIdx.x;
    g_tile[t] = x[t];
    g_dyn[t] = 2.0f * x[t];
    pairs[t].v[0] = 3.0f * x[t];
    if (t < 16) quad[t] = make_float4(x[4 * t], x[4 * t + 1], x[4 * t + 2], x[4 * t + 3]);
    __syncthreads();
    const int r = 63 - t;
    const float *q = &quad[r / 4].x;
    y[t] = g_tile[r] + g_dyn[r] + pairs[r].v[0] + q[r % 4] * 100.0f;
}
