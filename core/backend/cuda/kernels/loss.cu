/* core/backend/cuda/kernels/loss.cu: fused cross-entropy and forward/reverse KL over a large
 * vocabulary. One block per row; the forward makes one pass for the online log-sum-exp
 * (running max + rescaled sum, merged across threads) and, for KL, a second pass for the KL sum;
 * nothing of size [rows, V] is allocated: the backward recomputes the probabilities from the
 * logits and the per-row statistics. Mirrors core/backend/cpu/cpu_loss.c (same clamp and
 * gradient conventions). Per-row losses go to a [rows] buffer; the host sums them in double in
 * row order, so the loss does not depend on the launch configuration. */
#define KL_CLAMP 100.0f
__device__ __forceinline__ float clampk(float x) { return fminf(fmaxf(x, -KL_CLAMP), KL_CLAMP); }

/* logits: [rows, V], targets: [rows], w: [rows] -> lse: [rows], row_loss: [rows] (w-unweighted) */
extern "C" __global__ void hyb_ce_fwd(const float *logits, const int *targets, const float *w,
                                      float *lse, float *row_loss, i64 rows, i64 V) {
    __shared__ float sh[2 * HYB_WARPS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    if (w[r] == 0.0f) {
        if (threadIdx.x == 0) lse[r] = row_loss[r] = 0.0f;
        return;
    }
    const float *x = logits + r * V;
    lse_state st;
    st.m = -HYB_INF;
    st.s = 0.0f;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) st = lse_push(st, x[v]);
    st = block_lse(st, sh);
    if (threadIdx.x == 0) {
        const float l = lse_value(st);
        lse[r] = l;
        row_loss[r] = l - x[targets[r]];
    }
}
/* dlogits[r, v] += scale * w[r] * (softmax(logits)[r, v] - [v == t_r]) */
extern "C" __global__ void hyb_ce_bwd(const float *logits, const int *targets, const float *w,
                                      const float *lse, float *dlogits, i64 rows, i64 V, float scale) {
    const i64 r = blockIdx.x;
    if (r >= rows || w[r] == 0.0f) return;
    const float g = scale * w[r], l = lse[r];
    const int t = targets[r];
    const float *x = logits + r * V;
    float *d = dlogits + r * V;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) d[v] += g * (expf(x[v] - l) - (v == t ? 1.0f : 0.0f));
}
/* s, t: [rows, V]; q = softmax(clamp(s)), p = softmax(clamp(t / T)).
 * stats: [rows, 3] = (student lse, teacher lse, KL_r); KL_r = KL(q||p) if reverse else KL(p||q). */
extern "C" __global__ void hyb_kl_fwd(const float *s, const float *t, const float *w, float *stats,
                                      i64 rows, i64 V, float T, int reverse) {
    __shared__ float sh[2 * HYB_WARPS];
    __shared__ double shd[HYB_WARPS];
    const i64 r = blockIdx.x;
    if (r >= rows) return;
    float *st3 = stats + 3 * r;
    if (w[r] == 0.0f) {
        if (threadIdx.x == 0) st3[0] = st3[1] = st3[2] = 0.0f;
        return;
    }
    const float *sr = s + r * V, *tr = t + r * V;
    lse_state a, b;
    a.m = b.m = -HYB_INF;
    a.s = b.s = 0.0f;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) {
        a = lse_push(a, clampk(sr[v]));
        b = lse_push(b, clampk(tr[v] / T));
    }
    a = block_lse(a, sh);
    b = block_lse(b, sh);
    const float ls = lse_value(a), lt = lse_value(b);
    double acc = 0.0;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) {
        const float q = clampk(sr[v]) - ls, p = clampk(tr[v] / T) - lt;
        acc += reverse ? (double)(expf(q) * (q - p)) : (double)(expf(p) * (p - q));
    }
    acc = block_sum_d(acc, shd);
    if (threadIdx.x == 0) {
        st3[0] = ls;
        st3[1] = lt;
        st3[2] = (float)acc;
    }
}
/* ds[r, v] += scale * w[r] * dKL_r/ds[r, v]; zero where s is outside [-100, 100]
 *   reverse: e^q ((q - p) - KL);  forward: e^q - e^p */
extern "C" __global__ void hyb_kl_bwd(const float *s, const float *t, const float *w,
                                      const float *stats, float *ds, i64 rows, i64 V, float T,
                                      int reverse, float scale) {
    const i64 r = blockIdx.x;
    if (r >= rows || w[r] == 0.0f) return;
    const float g = scale * w[r];
    const float ls = stats[3 * r], lt = stats[3 * r + 1], kl = stats[3 * r + 2];
    const float *sr = s + r * V, *tr = t + r * V;
    float *d = ds + r * V;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) {
        const float x = sr[v], q = x - ls, p = clampk(tr[v] / T) - lt;
        const float gv = reverse ? expf(q) * ((q - p) - kl) : expf(q) - expf(p);
        if (x >= -KL_CLAMP && x <= KL_CLAMP) d[v] += g * gv;
    }
}
