/* core/backend/cuda/kernels/sample.cu: on-device sampling, one block per row of logits [n, V]
 * (be->sample; the reference is core/sample.c's hyb_sample_with, step by step):
 *   1. w = the row, the repetition penalty applied at the row's distinct history tokens (the host
 *      de-duplicates them);
 *   2. greedy rows: arg max of w (NaN never wins, lowest index on ties), done;
 *   3. w *= 1/temperature; max, count of kept (not NaN, not -inf) and of +inf values;
 *      +inf present: uniform over the +inf tokens (one thread walks the row: a degenerate case);
 *   4. top-k: the k-th largest kept value by an MSB-first radix select on order-preserving keys
 *      (4 passes of 8 bits, counts in shared memory: exact), keep w >= it;
 *   5. p = expf(w - max) / sum (sum in double), -1 marks tokens not kept;
 *   6. top-p: the nucleus = the tokens, in (value desc, index asc) order, whose mass before them
 *      is < top_p: a weighted radix descent over 64-bit keys (value, ~index) finds the last one
 *      (8 passes of 8 bits, bucket masses in double), then renormalise;
 *   7. the draw: the first token, in the CPU's order (index order, or the nucleus order with
 *      top-p), whose cumulative mass exceeds u * total: the same descent with the inclusive mass.
 * No sort and no copy to the host: each pass reads the row once. Scratch w, p: [n, V]. */

struct hyb_sample_param { /* = the host's table in cuda_ops.c */
    float temperature;
    int top_k;
    float top_p;
    float penalty;
    float u;
    int greedy;
};

/* float -> unsigned key with the same order (-0 and +0 one key); and back */
__device__ __forceinline__ unsigned int smp_key(float f) {
    unsigned int b = __float_as_uint(f == 0.0f ? 0.0f : f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float smp_unkey(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
__device__ __forceinline__ int smp_kept(float a) { return a == a && a != -HYB_INF; }

__device__ float smp_block_max(float v, float *sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = lane < HYB_WARPS ? sh[lane] : -HYB_INF;
    return warp_max(v);
}

/* the CPU's order of tokens: descending (value, then lower index) when by_value, else ascending
 * index; a larger key comes first */
__device__ __forceinline__ unsigned long long smp_order(float w, i64 v, int by_value) {
    const unsigned long long lo = 0xffffffffull - (unsigned long long)v;
    return by_value ? ((unsigned long long)smp_key(w) << 32) | lo : lo;
}

/* Weighted radix descent over the keys smp_order(w[v], v) of the tokens with p[v] >= 0, masses
 * p[v]. mode 0 (nucleus cut): the smallest key whose mass strictly before it (larger keys) is
 * < limit; mode 1 (draw): the largest key whose mass up to and including it is > limit (none:
 * the smallest key, as the CPU falls back to its last token). Thread 0 picks each digit. */
__device__ unsigned long long smp_descend(const float *w, const float *p, i64 V, int by_value,
                                          int mode, double limit, double *hm, int *hc,
                                          unsigned long long *s_prefix, double *s_above) {
    unsigned long long prefix = 0;
    double above = 0.0;
    const int top = by_value ? 56 : 24;
    for (int shift = top; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += HYB_BLOCK) {
            hm[d] = 0.0;
            hc[d] = 0;
        }
        __syncthreads();
        for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) {
            const float pv = p[v];
            if (pv < 0.0f) continue;
            const unsigned long long k = smp_order(w[v], v, by_value);
            if (shift < top && ((k ^ prefix) >> (shift + 8)) != 0) continue;
            const int d = (int)((k >> shift) & 255);
            atomicAdd(&hm[d], (double)pv);
            atomicAdd(&hc[d], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double before = above, chosen_before = 0.0, first_before = 0.0, last_before = 0.0;
            int chosen = -1, first = -1, last = -1;
            for (int d = 255; d >= 0; d--) {
                if (hc[d] == 0) continue;
                if (first < 0) first = d, first_before = before;
                if (mode == 0 ? before < limit : (chosen < 0 && before + hm[d] > limit))
                    chosen = d, chosen_before = before;
                last = d, last_before = before;
                before += hm[d];
            }
            if (chosen < 0) { /* only through rounding: the CPU's fallbacks */
                chosen = mode == 0 ? first : last;
                chosen_before = mode == 0 ? first_before : last_before;
            }
            *s_prefix = prefix | ((unsigned long long)chosen << shift);
            *s_above = chosen_before;
        }
        __syncthreads();
        prefix = *s_prefix;
        above = *s_above;
    }
    return prefix;
}

/* logits: [n, V]; wbuf, pbuf: [n, V] scratch; prm: [n]; the distinct penalised tokens of row r
 * are pen_tok[pen_off[r] .. pen_off[r + 1]); out: [n] token, -1 when all logits are NaN/-inf */
extern "C" __global__ void hyb_sample(const float *logits, float *wbuf, float *pbuf,
                                      const hyb_sample_param *prm, const int *pen_off,
                                      const int *pen_tok, int *out, i64 V) {
    __shared__ double hm[256];
    __shared__ int hc[256];
    __shared__ double shd[HYB_WARPS];
    __shared__ float shf[HYB_WARPS];
    __shared__ int shi[HYB_WARPS];
    __shared__ unsigned long long s_prefix;
    __shared__ double s_above;
    const i64 r = blockIdx.x;
    const hyb_sample_param P = prm[r];
    const float *x = logits + r * V;
    float *w = wbuf + r * V, *p = pbuf + r * V;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;

    /* 1. penalised copy */
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) w[v] = x[v];
    __syncthreads();
    for (int j = pen_off[r] + threadIdx.x; j < pen_off[r + 1]; j += HYB_BLOCK) {
        const int t = pen_tok[j];
        const float l = w[t];
        w[t] = l < 0.0f ? l * P.penalty : l / P.penalty;
    }
    __syncthreads();

    /* 2. greedy: (value, index) arg max, NaN skipped, lower index on ties */
    if (P.greedy) {
        float bv = 0.0f;
        int bi = -1;
        for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) {
            const float a = w[v];
            if (a == a && (bi < 0 || a > bv)) bv = a, bi = (int)v;
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(HYB_FULL_MASK, bv, o);
            const int oi = __shfl_xor_sync(HYB_FULL_MASK, bi, o);
            if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi;
        }
        if (lane == 0) shf[wid] = bv, shi[wid] = bi;
        __syncthreads();
        if (threadIdx.x == 0) {
            bv = shf[0], bi = shi[0];
            for (int k = 1; k < HYB_WARPS; k++)
                if (shi[k] >= 0 && (bi < 0 || shf[k] > bv || (shf[k] == bv && shi[k] < bi)))
                    bv = shf[k], bi = shi[k];
            out[r] = (bi < 0 || bv == -HYB_INF) ? -1 : bi;
        }
        return;
    }

    /* 3. temperature; max and counts over the kept values */
    const float inv_t = 1.0f / P.temperature;
    float mx = -HYB_INF;
    double cnt = 0.0, ninf = 0.0;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) {
        const float a = w[v] * inv_t;
        w[v] = a;
        if (!smp_kept(a)) continue;
        cnt += 1.0;
        if (a == HYB_INF) ninf += 1.0;
        mx = fmaxf(mx, a);
    }
    mx = smp_block_max(mx, shf);
    cnt = block_sum_d(cnt, shd);
    ninf = block_sum_d(ninf, shd);
    if (cnt == 0.0) {
        if (threadIdx.x == 0) out[r] = -1;
        return;
    }
    if (mx == HYB_INF) { /* uniform over the +inf tokens, walked in index order as the CPU does */
        if (threadIdx.x == 0) {
            const int m = (int)ninf;
            const float q = 1.0f / (float)m;
            double total = 0.0, acc = 0.0;
            for (int c = 0; c < m; c++) total += q;
            const double target = (double)P.u * total;
            int last = -1, tok = -1;
            for (i64 v = 0; v < V && tok < 0; v++) {
                if (w[v] != HYB_INF) continue;
                acc += q;
                last = (int)v;
                if (target < acc) tok = (int)v;
            }
            out[r] = tok >= 0 ? tok : last;
        }
        return;
    }

    /* 4. top-k threshold: the k-th largest kept value (counted with repeats) */
    float thr = -HYB_INF;
    const int use_k = P.top_k > 0 && (double)P.top_k < cnt;
    if (use_k) {
        unsigned int prefix = 0;
        int krem = P.top_k;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int d = threadIdx.x; d < 256; d += HYB_BLOCK) hc[d] = 0;
            __syncthreads();
            for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) {
                const float a = w[v];
                if (!smp_kept(a)) continue;
                const unsigned int k = smp_key(a);
                if (shift < 24 && ((k ^ prefix) >> (shift + 8)) != 0) continue;
                atomicAdd(&hc[(k >> shift) & 255], 1);
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                int cum = 0, d = 255;
                for (; d > 0; d--) {
                    if (cum + hc[d] >= krem) break;
                    cum += hc[d];
                }
                s_prefix = prefix | ((unsigned int)d << shift);
                hc[0] = krem - cum; /* read back below, after the barrier */
            }
            __syncthreads();
            prefix = (unsigned int)s_prefix;
            krem = hc[0];
            __syncthreads();
        }
        thr = smp_unkey(prefix);
    }

    /* 5. softmax over the kept set */
    double s = 0.0;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK) {
        const float a = w[v];
        if (smp_kept(a) && (!use_k || a >= thr)) {
            const float e = expf(a - mx);
            p[v] = e;
            s += e;
        } else {
            p[v] = -1.0f;
        }
    }
    s = block_sum_d(s, shd);
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK)
        if (p[v] >= 0.0f) p[v] = (float)((double)p[v] / s);
    __syncthreads();

    /* 6. top-p: cut after the last token whose mass before it is < top_p, renormalise */
    const int use_p = P.top_p > 0.0f && P.top_p < 1.0f;
    if (use_p) {
        const unsigned long long cut =
            smp_descend(w, p, V, 1, 0, (double)P.top_p, hm, hc, &s_prefix, &s_above);
        double kept = 0.0;
        for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK)
            if (p[v] >= 0.0f && smp_order(w[v], v, 1) >= cut) kept += p[v];
        kept = block_sum_d(kept, shd);
        for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK)
            if (p[v] >= 0.0f)
                p[v] = smp_order(w[v], v, 1) >= cut ? (float)((double)p[v] / kept) : -1.0f;
        __syncthreads();
    }

    /* 7. inverse CDF at u in the CPU's order */
    double total = 0.0;
    for (i64 v = threadIdx.x; v < V; v += HYB_BLOCK)
        if (p[v] >= 0.0f) total += p[v];
    total = block_sum_d(total, shd);
    const unsigned long long k =
        smp_descend(w, p, V, use_p, 1, (double)P.u * total, hm, hc, &s_prefix, &s_above);
    if (threadIdx.x == 0) out[r] = (int)(0xffffffffull - (k & 0xffffffffull));
}
