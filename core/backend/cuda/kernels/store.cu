/* core/backend/cuda/kernels/store.cu: rmsnorm, add + rmsnorm, swiglu and add with the STORAGE type
 * chosen at compile time: f32 by default, bf16 with -DHYB_STORE_BF16 (cuda_ops.c loads the two
 * builds as two modules: the kernel names are the same in both). Loads widen to f32, all
 * arithmetic and the reductions run in f32 / double as in rows.cu and elementwise.cu, and each
 * result is rounded once when stored (round to nearest even). With bf16 storage the residual h of
 * add + rmsnorm is rounded first and the norm is taken of the rounded h, the value the next
 * layer reads. Only activations are bf16: rstd stays f32. */
#ifdef HYB_STORE_BF16
typedef hyb_bf16 st_t;
__device__ __forceinline__ float ld(const st_t *p, i64 i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ float rnd(float f) { /* f rounded to bf16, as an f32 */
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(u | 0x00400000u); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
}
__device__ __forceinline__ void st(st_t *p, i64 i, float f) {
    p[i] = (st_t)(__float_as_uint(rnd(f)) >> 16);
}
#else
typedef float st_t;
__device__ __forceinline__ float ld(const st_t *p, i64 i) { return p[i]; }
__device__ __forceinline__ float rnd(float f) { return f; }
__device__ __forceinline__ void st(st_t *p, i64 i, float f) { p[i] = f; }
#endif

/* x: [rows, D], w: [D] -> y: [rows, D], rstd: [rows] (f32) */
extern "C" __global__ void hyb_st_rmsnorm_fwd(const st_t *x, const st_t *w, st_t *y, float *rstd,
                                              i64 rows, i64 D, float eps) {
    __shared__ double sh[HYB_WARPS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const st_t *xr = x + r * D;
    st_t *yr = y + r * D;
    double ss = 0.0;
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) {
        const float v = ld(xr, i);
        ss += (double)v * v;
    }
    ss = block_sum_d(ss, sh);
    const float rs = (float)(1.0 / sqrt(ss / (double)D + (double)eps));
    if (threadIdx.x == 0) rstd[r] = rs;
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) st(yr, i, ld(w, i) * (ld(xr, i) * rs));
}
/* h = a + b (stored), y = rmsnorm(stored h) * w, rstd (f32); h may alias a or b */
extern "C" __global__ void hyb_st_add_rmsnorm_fwd(const st_t *a, const st_t *b, const st_t *w,
                                                  st_t *h, st_t *y, float *rstd, i64 rows, i64 D,
                                                  float eps) {
    __shared__ double sh[HYB_WARPS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const st_t *ar = a + r * D, *br = b + r * D;
    st_t *hr = h + r * D, *yr = y + r * D;
    double ss = 0.0;
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) {
        const float v = rnd(ld(ar, i) + ld(br, i));
        st(hr, i, v);
        ss += (double)v * v;
    }
    ss = block_sum_d(ss, sh);
    const float rs = (float)(1.0 / sqrt(ss / (double)D + (double)eps));
    if (threadIdx.x == 0) rstd[r] = rs;
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) st(yr, i, ld(w, i) * (ld(hr, i) * rs));
}
/* y = silu(gate) * up, [n] */
extern "C" __global__ void hyb_st_swiglu_fwd(const st_t *gate, const st_t *up, st_t *y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float g = ld(gate, i), s = 1.0f / (1.0f + expf(-g));
        st(y, i, g * s * ld(up, i));
    }
}
/* y = a + b, [n] */
extern "C" __global__ void hyb_st_add(const st_t *a, const st_t *b, st_t *y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        st(y, i, ld(a, i) + ld(b, i));
}
