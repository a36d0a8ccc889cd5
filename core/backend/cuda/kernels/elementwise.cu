/* core/backend/cuda/kernels/elementwise.cu: element-wise kernels, one thread per element
 * (grid-stride loops, so any grid size is correct). Mirrors core/backend/cpu/cpu_ops.c. */

/* a, b, y: [n]; y = a + b */
extern "C" __global__ void hyb_add(const float *a, const float *b, float *y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = a[i] + b[i];
}
/* dst, src: [n]; dst += alpha * src */
extern "C" __global__ void hyb_axpy(float *dst, const float *src, float alpha, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        dst[i] += alpha * src[i];
}
/* gate, up, y: [n]; y = silu(gate) * up */
extern "C" __global__ void hyb_swiglu_fwd(const float *gate, const float *up, float *y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float g = gate[i], s = 1.0f / (1.0f + expf(-g));
        y[i] = g * s * up[i];
    }
}
/* dgate, dup: [n] += (either may be NULL); d silu(g)/dg = s (1 + g (1 - s)) */
extern "C" __global__ void hyb_swiglu_bwd(const float *gate, const float *up, const float *dy,
                                          float *dgate, float *dup, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float g = gate[i], s = 1.0f / (1.0f + expf(-g));
        if (dgate) dgate[i] += dy[i] * up[i] * s * (1.0f + g * (1.0f - s));
        if (dup) dup[i] += dy[i] * g * s;
    }
}
/* W: [V, D], ids: [n] (device) -> y: [n, D] */
extern "C" __global__ void hyb_embedding_fwd(const float *W, const int *ids, float *y, i64 n, i64 D) {
    const i64 total = n * D;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 r = i / D, c = i - r * D;
        y[i] = W[(i64)ids[r] * D + c];
    }
}
/* dW: [V, D] += scatter of dy: [n, D] by ids (atomics: repeated ids add up) */
extern "C" __global__ void hyb_embedding_bwd(float *dW, const int *ids, const float *dy, i64 n, i64 D) {
    const i64 total = n * D;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 r = i / D, c = i - r * D;
        atomicAdd(dW + (i64)ids[r] * D + c, dy[i]);
    }
}
/* x: [B*T, H, hd] in place, pos: [T] (device); HF half-split layout, one thread per (row, head, i < hd/2).
 * inv_freq is computed in f32 as 1 / theta^(2i/hd), as the CPU kernel and HF do. */
extern "C" __global__ void hyb_rope(float *x, i64 BT, int T, int H, int hd, const int *pos,
                                    float theta, int inverse) {
    const int half = hd / 2;
    const i64 total = BT * H * half;
    for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < total; k += (i64)gridDim.x * blockDim.x) {
        const int i = (int)(k % half);
        const i64 rh = k / half; /* (row, head) */
        const i64 row = rh / H;
        const int t = (int)(row % T);
        const float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
        const float ang = (float)pos[t] * inv;
        float s, c;
        sincosf(ang, &s, &c);
        if (inverse) s = -s;
        float *xh = x + rh * hd;
        const float x1 = xh[i], x2 = xh[i + half];
        xh[i] = x1 * c - x2 * s;
        xh[i + half] = x2 * c + x1 * s;
    }
}
/* x: [n] f32 -> y: [n] bf16 bits, round to nearest even (NaN stays NaN) */
extern "C" __global__ void hyb_f32_to_bf16(const float *x, hyb_bf16 *y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        unsigned int u = __float_as_uint(x[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            y[i] = (hyb_bf16)((u >> 16) | 0x40u);
        } else {
            u += 0x7fffu + ((u >> 16) & 1u);
            y[i] = (hyb_bf16)(u >> 16);
        }
    }
}
/* x: [n] bf16 bits -> y: [n] f32 (exact) */
extern "C" __global__ void hyb_bf16_to_f32(const hyb_bf16 *x, float *y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = __uint_as_float(((unsigned int)x[i]) << 16);
}
/* AdamW on f32 master weights (as core/optim.c): p, g, m, v: [n];
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p = p * shrink - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
 * with shrink = 1 - lr * wd (1 for params without decay), step_size = lr / (1 - b1^t),
 * inv_sqrt_bc2 = 1 / sqrt(1 - b2^t) computed on the host in double. */
extern "C" __global__ void hyb_adamw(float *p, const float *g, float *m, float *v, i64 n, float b1,
                                     float b2, float eps, float shrink, float step_size,
                                     float inv_sqrt_bc2) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float gi = g[i];
        const float mk = b1 * m[i] + (1.0f - b1) * gi;
        const float vk = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mk;
        v[i] = vk;
        p[i] = p[i] * shrink - step_size * mk / (sqrtf(vk) * inv_sqrt_bc2 + eps);
    }
}
/* Multi-tensor AdamW: the update above over `count` tensors in one launch. t: the device table
 * (layout = hyb_adamw_tensor of hyb/backend.h); tensor k owns the blocks [first_block,
 * first_block + ceil(n / HYB_ADAMW_CHUNK)) of the n_blocks virtual blocks, each a chunk of
 * HYB_ADAMW_CHUNK elements; the grid strides over the virtual blocks and finds each one's tensor
 * by binary search over first_block. */
#define HYB_ADAMW_CHUNK 4096
struct hyb_adamw_tensor {
    float *p;
    const float *g;
    float *m;
    float *v;
    i64 n;
    i64 first_block;
    float shrink;
    float step_size;
};
extern "C" __global__ void hyb_adamw_multi(const hyb_adamw_tensor *t, int count, i64 n_blocks,
                                           float b1, float b2, float eps, float inv_sqrt_bc2) {
    for (i64 c = blockIdx.x; c < n_blocks; c += gridDim.x) {
        int lo = 0, hi = count - 1; /* the last tensor with first_block <= c */
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (t[mid].first_block <= c) lo = mid;
            else hi = mid - 1;
        }
        const hyb_adamw_tensor tk = t[lo];
        const i64 start = (c - tk.first_block) * HYB_ADAMW_CHUNK;
        const i64 end = start + HYB_ADAMW_CHUNK < tk.n ? start + HYB_ADAMW_CHUNK : tk.n;
        for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
            const float gi = tk.g[i];
            const float mk = b1 * tk.m[i] + (1.0f - b1) * gi;
            const float vk = b2 * tk.v[i] + (1.0f - b2) * gi * gi;
            tk.m[i] = mk;
            tk.v[i] = vk;
            tk.p[i] = tk.p[i] * tk.shrink - tk.step_size * mk / (sqrtf(vk) * inv_sqrt_bc2 + eps);
        }
    }
}
/* x: [n]; x *= alpha (gradient clipping) */
extern "C" __global__ void hyb_scale(float *x, float alpha, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] *= alpha;
}
/* x: [n] -> part: [gridDim.x] partial sums of x^2 in double (the host adds them in block order,
 * so the total does not depend on the thread schedule) */
extern "C" __global__ void hyb_sumsq(const float *x, double *part, i64 n) {
    __shared__ double sh[HYB_WARPS];
    double s = 0.0;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        s += (double)x[i] * (double)x[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}
