/* tests/cuda_emu/planted.cu: small kernels with a planted bug under -DPLANT and the correct
 * version without it. test_emu.c shows the order-dependent comparison catching the missing
 * barrier, the wrong index and the race; emu_sanitize.c shows AddressSanitizer catching the
 * off-by-one reads and ThreadSanitizer the races. */

/* y = x reversed within each block of 128, through shared memory */
extern "C" __global__ void bug_missing_barrier(const float *x, float *y) {
    __shared__ float s[128];
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
#ifndef PLANT
    __syncthreads();
#endif
    y[base + t] = s[blockDim.x - 1 - t];
}

/* y[r, c] = 2 x[r, c] over a [rows, cols] matrix, 16x16 blocks */
extern "C" __global__ void bug_wrong_index(const float *x, float *y, int rows, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
#ifdef PLANT
    const int r = blockIdx.y * blockDim.y + threadIdx.x; /* should be threadIdx.y */
#else
    const int r = blockIdx.y * blockDim.y + threadIdx.y;
#endif
    if (r < rows && c < cols) y[r * cols + c] = 2.0f * x[r * cols + c];
}

/* y[i] = x[i] + x[i + 1] (0 past the end): the planted version loads x[i + 1] before the bounds
 * check, so it reads x[n]; the value is never used, the comparison cannot see it */
extern "C" __global__ void bug_off_by_one(const float *x, float *y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
#ifdef PLANT
    const float next = x[i + 1];
    y[i] = x[i] + (i + 1 < n ? next : 0.0f);
#else
    y[i] = x[i] + (i + 1 < n ? x[i + 1] : 0.0f);
#endif
}

/* the same off-by-one in shared memory: s[64] of a 64-element array */
extern "C" __global__ void bug_shared_oob(const float *x, float *y) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    s[t] = x[blockIdx.x * 64 + t];
    __syncthreads();
#ifdef PLANT
    const float next = s[t + 1];
    y[blockIdx.x * 64 + t] = s[t] + (t + 1 < 64 ? next : 0.0f);
#else
    y[blockIdx.x * 64 + t] = s[t] + (t + 1 < 64 ? s[t + 1] : 0.0f);
#endif
}

/* thread 0 loads a per-block scale into shared memory; every thread uses it */
extern "C" __global__ void bug_race(const float *x, float *y) {
    __shared__ float scale;
    if (threadIdx.x == 0) scale = x[blockIdx.x];
#ifndef PLANT
    __syncthreads();
#endif
    y[blockIdx.x * blockDim.x + threadIdx.x] = scale * (float)threadIdx.x;
}

/* a correct block reduction (warp shuffles + shared memory + barriers), for "no false reports" */
extern "C" __global__ void ok_block_sum(const float *x, float *y) {
    __shared__ float part[32];
    const int t = threadIdx.x, lane = t & 31, w = t >> 5;
    float v = x[blockIdx.x * blockDim.x + t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) part[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) atomicAdd(y, v);
    }
}

/* two block sums in a row through the same shared array (y[b] = sum x, y[b + G] = sum x^2): the
 * planted version drops the barrier that keeps the second sum's writes from overwriting what a
 * slower warp still reads of the first (the bug common.cuh's block_sum_d guards against) */
__device__ float block_sum_shared(float v, float *sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
#ifndef PLANT
    __syncthreads();
#endif
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
extern "C" __global__ void bug_reuse_barrier(const float *x, float *y) {
    __shared__ float sh[32];
    const float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    const float s1 = block_sum_shared(v, sh);
    const float s2 = block_sum_shared(v * v, sh);
    if (threadIdx.x == 0) y[blockIdx.x] = s1, y[blockIdx.x + gridDim.x] = s2;
}

/* y[t] = sum over blocks of x[b, t]: the planted version adds without an atomic, a race between
 * blocks that the emulation's one-block-at-a-time execution turns into the right sum (the
 * comparison cannot see it); ThreadSanitizer does, since blocks are unordered for it */
extern "C" __global__ void bug_block_race(const float *x, float *y) {
    const float v = x[blockIdx.x * blockDim.x + threadIdx.x];
#ifdef PLANT
    y[threadIdx.x] += v;
#else
    atomicAdd(y + threadIdx.x, v);
#endif
}
