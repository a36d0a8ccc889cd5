/* core/backend/cuda/kernels/rows.cu: row-wise kernels (rmsnorm, softmax): one block of HYB_BLOCK
 * threads per row, strided (coalesced) loads, warp-shuffle + shared-memory reductions. The sums of
 * squares / dot products accumulate in double like the CPU kernels (cpu_ops.c). */

/* x: [rows, D], w: [D] -> y: [rows, D], rstd: [rows]; rstd = 1/sqrt(mean x^2 + eps) (f32 variance
 * accumulated in double) */
extern "C" __global__ void hyb_rmsnorm_fwd(const float *x, const float *w, float *y, float *rstd,
                                           i64 rows, i64 D, float eps) {
    __shared__ double sh[HYB_WARPS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float *xr = x + r * D;
    float *yr = y + r * D;
    double ss = 0.0;
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) ss += (double)xr[i] * xr[i];
    ss = block_sum_d(ss, sh);
    const float rs = (float)(1.0 / sqrt(ss / (double)D + (double)eps));
    if (threadIdx.x == 0) rstd[r] = rs;
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) yr[i] = w[i] * (xr[i] * rs);
}
/* Fused residual add + rmsnorm: a, b: [rows, D] -> h = a + b, y = w * (h * rstd), rstd: [rows].
 * One block per row: a and b are read once, h written once; the second loop reads back the h
 * elements this thread wrote itself (no barrier needed beyond the reduction's). h may alias a or
 * b (each element is read before it is written, by the same thread). */
extern "C" __global__ void hyb_add_rmsnorm_fwd(const float *a, const float *b, const float *w,
                                               float *h, float *y, float *rstd, i64 rows, i64 D,
                                               float eps) {
    __shared__ double sh[HYB_WARPS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float *ar = a + r * D, *br = b + r * D;
    float *hr = h + r * D, *yr = y + r * D;
    double ss = 0.0;
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) {
        const float v = ar[i] + br[i];
        hr[i] = v;
        ss += (double)v * v;
    }
    ss = block_sum_d(ss, sh);
    const float rs = (float)(1.0 / sqrt(ss / (double)D + (double)eps));
    if (threadIdx.x == 0) rstd[r] = rs;
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) yr[i] = w[i] * (hr[i] * rs);
}
/* dx: [rows, D] += r w dy - r^3 x (sum_j w_j dy_j x_j) / D */
extern "C" __global__ void hyb_rmsnorm_bwd_dx(const float *x, const float *w, const float *rstd,
                                              const float *dy, float *dx, i64 rows, i64 D) {
    __shared__ double sh[HYB_WARPS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float *xr = x + r * D, *gr = dy + r * D;
    float *dr = dx + r * D;
    double c = 0.0;
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) c += (double)w[i] * gr[i] * xr[i];
    c = block_sum_d(c, sh);
    const float rs = rstd[r];
    const float k = (float)((double)rs * rs * rs * c / (double)D);
    for (i64 i = threadIdx.x; i < D; i += HYB_BLOCK) dr[i] += rs * w[i] * gr[i] - k * xr[i];
}
/* dw: [D] += sum_rows dy x rstd. One thread per column (consecutive threads read consecutive
 * columns of a row: coalesced), blockIdx.y splits the rows into chunks combined by atomics. */
extern "C" __global__ void hyb_rmsnorm_bwd_dw(const float *x, const float *rstd, const float *dy,
                                              float *dw, i64 rows, i64 D, i64 rows_per_chunk) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= D) return;
    const i64 r0 = blockIdx.y * rows_per_chunk;
    const i64 r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    double acc = 0.0;
    for (i64 r = r0; r < r1; r++) acc += (double)dy[r * D + i] * x[r * D + i] * (double)rstd[r];
    if (gridDim.y == 1)
        dw[i] += (float)acc;
    else
        atomicAdd(dw + i, (float)acc);
}
/* x: [rows, V] -> y: [rows, V] = softmax over V (online max/sum in one pass, then the write) */
extern "C" __global__ void hyb_softmax_fwd(const float *x, float *y, i64 rows, i64 V) {
    __shared__ float sh[2 * HYB_WARPS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float *xr = x + r * V;
    float *yr = y + r * V;
    lse_state st;
    st.m = -HYB_INF;
    st.s = 0.0f;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) st = lse_push(st, xr[v]);
    st = block_lse(st, sh);
    const float m = st.m == -HYB_INF ? 0.0f : st.m;
    const float inv = 1.0f / st.s;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) yr[v] = expf(xr[v] - m) * inv;
}
/* dx: [rows, V] += y * (dy - sum(dy * y)) */
extern "C" __global__ void hyb_softmax_bwd(const float *y, const float *dy, float *dx, i64 rows, i64 V) {
    __shared__ double sh[HYB_WARPS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    const float *yr = y + r * V, *gr = dy + r * V;
    float *dr = dx + r * V;
    double dot = 0.0;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) dot += (double)gr[v] * yr[v];
    const float d = (float)block_sum_d(dot, sh);
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) dr[v] += yr[v] * (gr[v] - d);
}
