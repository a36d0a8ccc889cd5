/* plugins/mha/mha_attn.cu: the `mha` mixer's CUDA kernels (f32 storage, f32 accumulation; the
 * KV cache f32 or, with -DMHA_KV_F16=1, f16), compiled by the backend (be->kernel: NVRTC, or g++
 * under HYB_CUDA_EMULATE=1) with -DHEAD_DIM=hd; the host side is plugins/mha/mha_cuda.c. No #include: NVRTC compiles this
 * without the CUDA include path.
 *
 * Layouts are the CPU's (mha.h): Q, O [B*T, H*hd] and K, V [B*T, KV*hd] rows (Q, K after RoPE),
 * LSE [B, H, T], the KV cache of a sequence head-major [KV, max_ctx, hd] (K, then V). Query head
 * h reads KV head h / (H / KV) (GQA) by index: K and V are never expanded.
 *
 * Every block has NT = 128 threads (4 warps).
 *
 * mha_fwd      flash-attention forward. Block = TQ queries of one (sequence, head): grid
 *              (ceil(T / TQ), H, B). TQ = 32 (16 for hd > 64, to keep the static shared memory
 *              under 48 KiB). The Q tile stays in shared memory; the keys 0 .. last query of the
 *              block go by in tiles of TK = 32 (K and V tiles in shared memory, K rows padded to
 *              hd + 1 floats against bank conflicts). Per tile: scores (warp w takes rows
 *              w, w + 4, ..., lane j key j), causal mask, online softmax per row with warp
 *              shuffles (running max m, sum l, the factor exp(m_old - m_new) that rescales the
 *              output), then O += P V with the output tile in registers (TQ * hd / 128 floats a
 *              thread). Writes O / l and LSE = m + log l (saved for the backward: no [T, T]).
 * mha_bwd_dr   Dr[b, h, t] = dO . O of each row (flash-attention-2's D).
 * mha_bwd_dq   dQ. Block = TB queries of one (sequence, head) (TB = 32, 16 for hd > 64), key
 *              tiles of TB: P = exp(scale q.k - lse) recomputed, dS = P (dO.v - Dr), dQ += dS K
 *              in registers; written (=) once, scaled.
 * mha_bwd_dkv  dK, dV. Block = TB keys of one (sequence, KV head); loops over the group's query
 *              heads and the query tiles at or after its keys, recomputing P and dS the same
 *              way: dV += P^T dO, dK += dS^T Q in registers, written once. dQ and dK/dV are two
 *              passes (S and dS computed twice) rather than one with atomics: no atomics, and
 *              every sum runs in a fixed order, so the backward is deterministic.
 * mha_cache_put  rows of fresh K, V (after RoPE) into each sequence's cache at its position
 *              (prefill: states and positions as device arrays, uploaded once per call).
 * mha_dec_rope_put  a decode step's RoPE of Q and K (the backend's formula) and the K, V rows into
 *              the caches. The decode kernels get the sequences' caches and positions by value
 *              (struct mha_seqs, 64 sequences a launch): a step uploads nothing and never waits
 *              for the device.
 * mha_dec_split  flash-decoding: grid (maxs splits, KV * head groups, n). Block = one split of
 *              one sequence's cache against up to GB = 8 query heads of one KV head (the cache is
 *              read once for the whole group). A split is a run of 64-key chunks (ceil(chunks /
 *              maxs) of them: at most maxs splits, so the partials stay bounded at any length;
 *              the host picks maxs from n and KV to fill the GPU, at most 64); per chunk: K rows
 *              into shared memory (coalesced: a chunk of the head-major cache is contiguous),
 *              scores (a thread per head and key), online softmax per head (a warp per head),
 *              output in registers (V read coalesced from the cache). Partial per (sequence,
 *              head, split): o[hd] unnormalised, m, l.
 * mha_dec_combine  merges a (sequence, head)'s splits: M = max m_c, l = sum l_c e^(m_c - M),
 *              o = sum o_c e^(m_c - M) / l.
 * mha_add_bias, mha_bias_grad  the q/k/v biases (forward add; backward column sums, row order
 *              as the CPU's).
 *
 * With -DMHA_BF16=1 (head_dim a multiple of 16; the instance's attn_precision = "bf16"):
 * mha_fwd_bf16  the forward on tensor cores: Q, K, V tiles stored in bf16 in shared memory,
 *              products by mma.sync m16n8k16 (bf16 in, f32 accumulate), softmax and the output in
 *              f32. Block = 64 queries (4 warps x 16 rows) of one (sequence, head); key tiles of
 *              32. Each warp keeps its Q fragments and its 16 x hd output in registers; the score
 *              fragments (16 x 32 f32) are rescaled by the online softmax and reused, packed to
 *              bf16, as the A operand of P V (the accumulator layout of S is the A layout of P).
 *              Same arguments and outputs (O, LSE) as mha_fwd. The tensor cores are reached
 *              through inline PTX, not <mma.h>: the backend's NVRTC has no CUDA include path.
 *              Under the emulation (no PTX) mma16816 gathers the operands with warp shuffles
 *              following the PTX fragment layouts, so the fragment indexing of the kernel is what
 *              the emulated tests check.
 */
// hyb-variant: -DHEAD_DIM=4
// hyb-variant: -DHEAD_DIM=8
// hyb-variant: -DHEAD_DIM=16
// hyb-variant: -DHEAD_DIM=32
// hyb-variant: -DHEAD_DIM=64
// hyb-variant: -DHEAD_DIM=128
// hyb-variant: -DHEAD_DIM=16 -DMHA_BF16=1
// hyb-variant: -DHEAD_DIM=32 -DMHA_BF16=1
// hyb-variant: -DHEAD_DIM=64 -DMHA_BF16=1
// hyb-variant: -DHEAD_DIM=128 -DMHA_BF16=1
// hyb-variant: -DHEAD_DIM=4 -DMHA_KV_F16=1
// hyb-variant: -DHEAD_DIM=8 -DMHA_KV_F16=1
// hyb-variant: -DHEAD_DIM=16 -DMHA_KV_F16=1
// hyb-variant: -DHEAD_DIM=32 -DMHA_KV_F16=1
// hyb-variant: -DHEAD_DIM=64 -DMHA_KV_F16=1
// hyb-variant: -DHEAD_DIM=128 -DMHA_KV_F16=1

#ifndef HEAD_DIM
#error "compile mha_attn.cu with -DHEAD_DIM=<head dim>"
#endif
#define HD HEAD_DIM
#define HDP (HD + 1)
#define NT 128
#define NW (NT / 32)
#define TQ (HD > 64 ? 16 : 32) /* forward: query rows per block */
#define TK 32                  /* forward: keys per tile (one per lane) */
#define TB (HD > 64 ? 16 : 32) /* backward: query rows and keys per tile */
#define DCH 64                 /* decode: keys per chunk (a split is whole chunks) */
#define GB 8                   /* decode: query heads per block */
#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)
typedef long long i64;

/* The KV cache's element (mha.h): f32, or with -DMHA_KV_F16=1 IEEE half (the kvstate's
 * kv_cache = "f16"), stored rounded to nearest even and widened to f32 on load (registers and
 * shared memory only). The kernels that touch the cache (mha_cache_put, mha_dec_rope_put,
 * mha_dec_split, mha_cache_get) take kv_t pointers; every other kernel is the same in both. */
#ifndef MHA_KV_F16
#define MHA_KV_F16 0
#endif
#if MHA_KV_F16
typedef unsigned short kv_t;
#ifdef HYB_CUDA_EMU
/* the emulation has no PTX: the conversions in integer arithmetic (the CPU's mha_kv.h rules) */
__device__ __forceinline__ float mha_kv_h2f(unsigned short h) {
    const unsigned s = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return __uint_as_float(s | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0));
    if (e) return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
    return __uint_as_float(s | __float_as_uint((float)m * 5.9604644775390625e-8f));
}
__device__ __forceinline__ unsigned short mha_kv_f2h(float f) {
    const unsigned u = __float_as_uint(f), a = u & 0x7fffffffu;
    const unsigned short s = (unsigned short)((u >> 16) & 0x8000u);
    if (a >= 0x7f800000u)
        return (unsigned short)(s | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0));
    if (a >= 0x477ff000u) return (unsigned short)(s | 0x7c00u);
    if (a < 0x38800000u) {
        if (a < 0x33000000u) return s;
        const unsigned e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        const int sh = (int)(126 - e);
        unsigned q = m >> sh, rem = m & ((1u << sh) - 1), half = 1u << (sh - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (unsigned short)(s | q);
    }
    unsigned r = a - 0x38000000u;
    r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    return (unsigned short)(s | r);
}
#else
__device__ __forceinline__ float mha_kv_h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short mha_kv_f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif
__device__ __forceinline__ float kv_ld(const kv_t *p, i64 i) { return mha_kv_h2f(p[i]); }
__device__ __forceinline__ void kv_st(kv_t *p, i64 i, float v) { p[i] = mha_kv_f2h(v); }
#else
typedef float kv_t;
__device__ __forceinline__ float kv_ld(const kv_t *p, i64 i) { return p[i]; }
__device__ __forceinline__ void kv_st(kv_t *p, i64 i, float v) { p[i] = v; }
#endif

__device__ __forceinline__ float mha_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float mha_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

/* Q, O rows (b*T + i) of stride ldq, head h at column h*HD; key j of sequence b, KV head g at
 * K + b*k_bs + g*k_hs + j*ldk (V the same); queries sit at positions p0 + i (a continued
 * prefill: the keys 0 .. p0 - 1 are already in the cache K, V point into). */
extern "C" __launch_bounds__(NT) __global__ void mha_fwd(const float *Q, int ldq, const float *K,
                                                          const float *V, i64 k_bs, i64 k_hs,
                                                          int ldk, float *O, float *LSE, int T,
                                                          int H, int group, int p0, float scale) {
    __shared__ float Qs[TQ][HD];
    __shared__ float Ks[TK][HDP];
    __shared__ float Vs[TK][HD];
    __shared__ float Ps[TQ][TK + 1];
    __shared__ float m_s[TQ];
    __shared__ float l_s[TQ];
    __shared__ float a_s[TQ];
    enum { OPT = (TQ * HD + NT - 1) / NT };
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = blockIdx.z, h = blockIdx.y, i0 = blockIdx.x * TQ, g = h / group;
    const int nq = T - i0 < TQ ? T - i0 : TQ;
    const float *q = Q + ((i64)b * T + i0) * ldq + (i64)h * HD;
    const float *kb = K + b * k_bs + g * k_hs, *vb = V + b * k_bs + g * k_hs;
    for (int e = tid; e < TQ * HD; e += NT) {
        const int r = e / HD, d = e % HD;
        Qs[r][d] = r < nq ? q[(i64)r * ldq + d] : 0.0f;
    }
    if (tid < TQ) {
        m_s[tid] = NEG_INF;
        l_s[tid] = 0.0f;
    }
    float acc[OPT];
    #pragma unroll
    for (int u = 0; u < OPT; u++) acc[u] = 0.0f;
    const int kend = p0 + i0 + nq; /* keys 0 .. kend - 1: up to the block's last query */
    __syncthreads();
    for (int j0 = 0; j0 < kend; j0 += TK) {
        for (int e = tid; e < TK * HD; e += NT) {
            const int j = e / HD, d = e % HD;
            const int ok = j0 + j < kend;
            Ks[j][d] = ok ? kb[(i64)(j0 + j) * ldk + d] : 0.0f;
            Vs[j][d] = ok ? vb[(i64)(j0 + j) * ldk + d] : 0.0f;
        }
        __syncthreads();
        for (int r = warp; r < TQ; r += NW) {
            const float m_old = m_s[r], l_old = l_s[r];
            float s = 0.0f;
            for (int d = 0; d < HD; d++) s += Qs[r][d] * Ks[lane][d];
            const int kpos = j0 + lane, qpos = p0 + i0 + r;
            /* key 0 is in every row's first tile, so m is finite from the first tile on */
            s = kpos <= qpos && kpos < kend ? s * scale : NEG_INF;
            const float m_new = fmaxf(m_old, mha_warp_max(s));
            const float p = s == NEG_INF ? 0.0f : expf(s - m_new);
            const float ls = mha_warp_sum(p);
            Ps[r][lane] = p;
            __syncwarp(); /* every lane has read m_s[r], l_s[r] before lane 0 writes them */
            if (lane == 0) {
                const float al = expf(m_old - m_new); /* 0 on the first tile (m_old = -inf) */
                a_s[r] = al;
                m_s[r] = m_new;
                l_s[r] = l_old * al + ls;
            }
        }
        __syncthreads();
        #pragma unroll
        for (int u = 0; u < OPT; u++) {
            const int e = tid + u * NT;
            if (e < TQ * HD) {
                const int r = e / HD, d = e % HD;
                float o = acc[u] * a_s[r];
                for (int j = 0; j < TK; j++) o += Ps[r][j] * Vs[j][d];
                acc[u] = o;
            }
        }
        __syncthreads();
    }
    #pragma unroll
    for (int u = 0; u < OPT; u++) {
        const int e = tid + u * NT;
        if (e < TQ * HD) {
            const int r = e / HD, d = e % HD;
            if (r < nq) O[((i64)b * T + i0 + r) * ldq + (i64)h * HD + d] = acc[u] / l_s[r];
        }
    }
    if (tid < nq) LSE[((i64)b * H + h) * T + i0 + tid] = m_s[tid] + logf(l_s[tid]);
}

/* Dr[b, h, t] = sum_d dO[b*T + t, h*HD + d] O[...], one thread per (row, head) */
extern "C" __launch_bounds__(NT) __global__ void mha_bwd_dr(const float *dO, const float *O,
                                                             float *Dr, int B, int T, int H) {
    const i64 idx = (i64)blockIdx.x * NT + threadIdx.x;
    if (idx >= (i64)B * T * H) return;
    const i64 row = idx / H;
    const int h = (int)(idx % H), b = (int)(row / T), t = (int)(row % T);
    const float *a = dO + row * H * HD + (i64)h * HD, *o = O + row * H * HD + (i64)h * HD;
    float s = 0.0f;
    for (int d = 0; d < HD; d++) s += a[d] * o[d];
    Dr[((i64)b * H + h) * T + t] = s;
}

/* S = scale q.k, P = exp(S - lse) (causal), dS = P (dO.v - Dr) for a [TB queries] x [TB keys]
 * tile in shared memory; rows past T and keys past the query are 0 */
__device__ __forceinline__ void mha_bwd_tile(const float (*Qs)[HD], const float (*dOs)[HD],
                                             const float (*Ks)[HDP], const float (*Vs)[HDP],
                                             const float *lse_s, const float *dr_s,
                                             float (*Ps)[TB + 1], float (*dSs)[TB + 1], int i0,
                                             int j0, int T, float scale) {
    for (int e = threadIdx.x; e < TB * TB; e += NT) {
        const int r = e / TB, j = e % TB;
        const int valid = j0 + j <= i0 + r && i0 + r < T;
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < HD; d++) {
            s += Qs[r][d] * Ks[j][d];
            dp += dOs[r][d] * Vs[j][d];
        }
        const float p = valid ? expf(s * scale - lse_s[r]) : 0.0f;
        if (Ps) Ps[r][j] = p;
        dSs[r][j] = p * (dp - dr_s[r]);
    }
}

/* query rows i0 .. i0 + TB - 1 of head h of sequence b into shared memory (zeros past T) */
__device__ __forceinline__ void mha_bwd_load_q(float (*Qs)[HD], float (*dOs)[HD], float *lse_s,
                                               float *dr_s, const float *Q, const float *dO,
                                               const float *LSE, const float *Dr, int b, int h,
                                               int i0, int T, int H) {
    const i64 qd = (i64)H * HD;
    for (int e = threadIdx.x; e < TB * HD; e += NT) {
        const int r = e / HD, d = e % HD;
        const int ok = i0 + r < T;
        const i64 off = ((i64)b * T + i0 + r) * qd + (i64)h * HD + d;
        Qs[r][d] = ok ? Q[off] : 0.0f;
        dOs[r][d] = ok ? dO[off] : 0.0f;
    }
    for (int r = threadIdx.x; r < TB; r += NT) {
        const int ok = i0 + r < T;
        lse_s[r] = ok ? LSE[((i64)b * H + h) * T + i0 + r] : 0.0f;
        dr_s[r] = ok ? Dr[((i64)b * H + h) * T + i0 + r] : 0.0f;
    }
}

/* keys j0 .. j0 + TB - 1 of KV head g of sequence b into shared memory (zeros past kend) */
__device__ __forceinline__ void mha_bwd_load_k(float (*Ks)[HDP], float (*Vs)[HDP], const float *K,
                                               const float *V, int b, int g, int j0, int kend,
                                               int T, int KV) {
    const i64 kd = (i64)KV * HD;
    for (int e = threadIdx.x; e < TB * HD; e += NT) {
        const int j = e / HD, d = e % HD;
        const int ok = j0 + j < kend;
        const i64 off = ((i64)b * T + j0 + j) * kd + (i64)g * HD + d;
        Ks[j][d] = ok ? K[off] : 0.0f;
        Vs[j][d] = ok ? V[off] : 0.0f;
    }
}

/* dQ [B*T, H*HD] written: grid (ceil(T / TB), H, B) */
extern "C" __launch_bounds__(NT) __global__ void mha_bwd_dq(const float *Q, const float *K,
                                                             const float *V, const float *dO,
                                                             const float *LSE, const float *Dr,
                                                             float *dQ, int T, int H, int KV,
                                                             float scale) {
    __shared__ float Qs[TB][HD];
    __shared__ float dOs[TB][HD];
    __shared__ float Ks[TB][HDP];
    __shared__ float Vs[TB][HDP];
    __shared__ float dSs[TB][TB + 1];
    __shared__ float lse_s[TB];
    __shared__ float dr_s[TB];
    enum { OPT = (TB * HD + NT - 1) / NT };
    const int b = blockIdx.z, h = blockIdx.y, i0 = blockIdx.x * TB, g = h / (H / KV);
    const int nq = T - i0 < TB ? T - i0 : TB, kend = i0 + nq;
    mha_bwd_load_q(Qs, dOs, lse_s, dr_s, Q, dO, LSE, Dr, b, h, i0, T, H);
    float acc[OPT];
    #pragma unroll
    for (int u = 0; u < OPT; u++) acc[u] = 0.0f;
    for (int j0 = 0; j0 < kend; j0 += TB) {
        mha_bwd_load_k(Ks, Vs, K, V, b, g, j0, kend, T, KV);
        __syncthreads();
        mha_bwd_tile(Qs, dOs, Ks, Vs, lse_s, dr_s, NULL, dSs, i0, j0, T, scale);
        __syncthreads();
        #pragma unroll
        for (int u = 0; u < OPT; u++) {
            const int e = threadIdx.x + u * NT;
            if (e < TB * HD) {
                const int r = e / HD, d = e % HD;
                float a = acc[u];
                for (int j = 0; j < TB; j++) a += dSs[r][j] * Ks[j][d];
                acc[u] = a;
            }
        }
        __syncthreads();
    }
    #pragma unroll
    for (int u = 0; u < OPT; u++) {
        const int e = threadIdx.x + u * NT;
        if (e < TB * HD) {
            const int r = e / HD, d = e % HD;
            if (r < nq) dQ[((i64)b * T + i0 + r) * H * HD + (i64)h * HD + d] = acc[u] * scale;
        }
    }
}

/* dK, dV [B*T, KV*HD] written: grid (ceil(T / TB), KV, B) */
extern "C" __launch_bounds__(NT) __global__ void mha_bwd_dkv(const float *Q, const float *K,
                                                              const float *V, const float *dO,
                                                              const float *LSE, const float *Dr,
                                                              float *dK, float *dV, int T, int H,
                                                              int KV, float scale) {
    __shared__ float Qs[TB][HD];
    __shared__ float dOs[TB][HD];
    __shared__ float Ks[TB][HDP];
    __shared__ float Vs[TB][HDP];
    __shared__ float Ps[TB][TB + 1];
    __shared__ float dSs[TB][TB + 1];
    __shared__ float lse_s[TB];
    __shared__ float dr_s[TB];
    enum { OPT = (TB * HD + NT - 1) / NT };
    const int b = blockIdx.z, g = blockIdx.y, j0 = blockIdx.x * TB, group = H / KV;
    const int nk = T - j0 < TB ? T - j0 : TB;
    mha_bwd_load_k(Ks, Vs, K, V, b, g, j0, j0 + nk, T, KV);
    float accK[OPT], accV[OPT];
    #pragma unroll
    for (int u = 0; u < OPT; u++) accK[u] = accV[u] = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++)
        for (int i0 = j0; i0 < T; i0 += TB) { /* queries before j0 do not see these keys */
            __syncthreads(); /* the previous tile's Qs, dOs, Ps, dSs are read */
            mha_bwd_load_q(Qs, dOs, lse_s, dr_s, Q, dO, LSE, Dr, b, h, i0, T, H);
            __syncthreads();
            mha_bwd_tile(Qs, dOs, Ks, Vs, lse_s, dr_s, Ps, dSs, i0, j0, T, scale);
            __syncthreads();
            #pragma unroll
            for (int u = 0; u < OPT; u++) {
                const int e = threadIdx.x + u * NT;
                if (e < TB * HD) {
                    const int j = e / HD, d = e % HD;
                    float ak = accK[u], av = accV[u];
                    for (int r = 0; r < TB; r++) {
                        av += Ps[r][j] * dOs[r][d];
                        ak += dSs[r][j] * Qs[r][d];
                    }
                    accK[u] = ak;
                    accV[u] = av;
                }
            }
        }
    const i64 kd = (i64)KV * HD;
    #pragma unroll
    for (int u = 0; u < OPT; u++) {
        const int e = threadIdx.x + u * NT;
        if (e < TB * HD) {
            const int j = e / HD, d = e % HD;
            if (j < nk) {
                const i64 off = ((i64)b * T + j0 + j) * kd + (i64)g * HD + d;
                dK[off] = accK[u] * scale;
                dV[off] = accV[u];
            }
        }
    }
}

/* Kn, Vn rows (b*T + t) of [KV*HD] into the cache of sequence b (states[b], device pointers) at
 * position pos[b] + t: grid (T, B) */
extern "C" __launch_bounds__(NT) __global__ void mha_cache_put(kv_t *const *states,
                                                                const int *pos, const float *Kn,
                                                                const float *Vn, int T, int KV,
                                                                int max_ctx) {
    const int t = blockIdx.x, b = blockIdx.y;
    kv_t *kc = states[b], *vc = kc + (i64)KV * max_ctx * HD;
    const i64 p = pos[b] + t, kd = (i64)KV * HD, row = (i64)b * T + t;
    for (int e = threadIdx.x; e < KV * HD; e += NT) {
        const int g = e / HD, d = e % HD;
        kv_st(kc, ((i64)g * max_ctx + p) * HD + d, Kn[row * kd + e]);
        kv_st(vc, ((i64)g * max_ctx + p) * HD + d, Vn[row * kd + e]);
    }
}

/* Rows [0, n) of every KV head of one sequence's cache (st) widened to f32: Kf, Vf [KV, n, HD]
 * (a prefill continuing from an f16 cache runs mha_fwd on them). grid (n, KV) */
extern "C" __launch_bounds__(NT) __global__ void mha_cache_get(const kv_t *st, float *Kf,
                                                                float *Vf, int n, int KV,
                                                                int max_ctx) {
    const int t = blockIdx.x, g = blockIdx.y;
    const kv_t *kc = st + ((i64)g * max_ctx + t) * HD, *vc = kc + (i64)KV * max_ctx * HD;
    float *ko = Kf + ((i64)g * n + t) * HD, *vo = Vf + ((i64)g * n + t) * HD;
    for (int d = threadIdx.x; d < HD; d += NT) {
        ko[d] = kv_ld(kc, d);
        vo[d] = kv_ld(vc, d);
    }
}

/* The sequences of one decode launch, passed by value (no upload, no stream synchronisation per
 * step): their caches (device pointers) and positions (tokens already in each cache). */
#define DEC_SEQS 64
struct mha_seqs {
    kv_t *st[DEC_SEQS];
    int pos[DEC_SEQS];
};

/* RoPE of one head row in place at position p, the backend's formula (core/backend/cuda/kernels
 * elementwise.cu hyb_rope), pair i by thread */
__device__ __forceinline__ void mha_rope_pair(float *xh, int i, int p, float theta) {
    const int half = HD / 2;
    const float inv = 1.0f / powf(theta, (float)(2 * i) / (float)HD);
    const float ang = (float)p * inv;
    float sn, cs;
    sincosf(ang, &sn, &cs);
    const float x1 = xh[i], x2 = xh[i + half];
    xh[i] = x1 * cs - x2 * sn;
    xh[i + half] = x2 * cs + x1 * sn;
}

/* Decode step of sequence blockIdx.x of sq: RoPE of its Q row (H heads) in place and of its K
 * row, and the K and V rows into its cache at its position. Q [n, H*HD], K, V [n, KV*HD]. */
extern "C" __launch_bounds__(NT) __global__ void mha_dec_rope_put(float *Q, const float *K,
                                                                   const float *V, mha_seqs sq,
                                                                   int H, int KV, int max_ctx,
                                                                   float theta) {
    const int i = blockIdx.x, p = sq.pos[i], half = HD / 2;
    float *q = Q + (i64)i * H * HD;
    for (int e = threadIdx.x; e < H * half; e += NT)
        mha_rope_pair(q + (e / half) * HD, e % half, p, theta);
    kv_t *kc = sq.st[i], *vc = kc + (i64)KV * max_ctx * HD;
    const float *k = K + (i64)i * KV * HD, *v = V + (i64)i * KV * HD;
    for (int e = threadIdx.x; e < KV * half; e += NT) {
        const int g = e / half, j = e % half;
        const float inv = 1.0f / powf(theta, (float)(2 * j) / (float)HD);
        const float ang = (float)p * inv;
        float sn, cs;
        sincosf(ang, &sn, &cs);
        const float x1 = k[g * HD + j], x2 = k[g * HD + j + half];
        kv_t *kr = kc + ((i64)g * max_ctx + p) * HD;
        kv_st(kr, j, x1 * cs - x2 * sn);
        kv_st(kr, j + half, x2 * cs + x1 * sn);
    }
    for (int e = threadIdx.x; e < KV * HD; e += NT) {
        const int g = e / HD, d = e % HD;
        kv_st(vc, ((i64)g * max_ctx + p) * HD + d, v[e]);
    }
}

/* The split of a sequence of len keys when a launch has at most maxs splits: chunks of DCH keys,
 * ceil(chunks / maxs) of them per split (so a split's length is a multiple of DCH) */
__device__ __forceinline__ int mha_split_len(int len, int maxs) {
    const int chunks = (len + DCH - 1) / DCH;
    return DCH * ((chunks + maxs - 1) / maxs);
}

/* Partial results of split c of sequence i (pos[i] + 1 keys in its cache, split as
 * mha_split_len) against the query heads hb .. hb + GB - 1 of KV head g; the split's keys go by
 * in chunks of DCH with an online softmax. grid (maxs, KV * ngb, n), ngb = ceil(group / GB).
 * part[((i*H + h) * maxs + c) * (HD + 2)]: o[HD] (unnormalised), m, l. */
extern "C" __launch_bounds__(NT) __global__ void mha_dec_split(const float *Q, mha_seqs sq,
                                                                float *part, int H, int KV,
                                                                int max_ctx, int maxs,
                                                                float scale) {
    __shared__ float qs[GB][HD];
    __shared__ float Ks[DCH][HDP];
    __shared__ float ss[GB][DCH];
    __shared__ float m_s[GB];
    __shared__ float l_s[GB];
    __shared__ float a_s[GB];
    enum { OPD = (GB * HD + NT - 1) / NT };
    const int group = H / KV, ngb = (group + GB - 1) / GB;
    const int i = blockIdx.z, c = blockIdx.x, g = blockIdx.y / ngb, hb = (blockIdx.y % ngb) * GB;
    const int len = sq.pos[i] + 1, per = mha_split_len(len, maxs), j0 = c * per;
    if (j0 >= len) return; /* this sequence has fewer splits (the whole block leaves) */
    const int jend = len - j0 < per ? len : j0 + per;
    const int nh = group - hb < GB ? group - hb : GB;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const kv_t *kh = sq.st[i] + (i64)g * max_ctx * HD;
    const kv_t *vh = kh + (i64)KV * max_ctx * HD;
    const int h0 = g * group + hb;
    for (int e = tid; e < nh * HD; e += NT)
        qs[e / HD][e % HD] = Q[((i64)i * H + h0) * HD + e];
    if (tid < GB) {
        m_s[tid] = NEG_INF;
        l_s[tid] = 0.0f;
    }
    float acc[OPD];
#pragma unroll
    for (int u = 0; u < OPD; u++) acc[u] = 0.0f;
    __syncthreads();
    for (int c0 = j0; c0 < jend; c0 += DCH) {
        const int nk = jend - c0 < DCH ? jend - c0 : DCH;
        const kv_t *kb = kh + (i64)c0 * HD, *vb = vh + (i64)c0 * HD;
        /* the chunk's K rows (contiguous in the head-major cache) into shared memory (widened
         * to f32 there from an f16 cache), then one thread per (head, key) score */
        for (int e = tid; e < nk * HD; e += NT) Ks[e / HD][e % HD] = kv_ld(kb, e);
        __syncthreads();
        for (int e = tid; e < nh * DCH; e += NT) {
            const int hh = e / DCH, j = e % DCH;
            if (j < nk) {
                float sc = 0.0f;
                for (int d = 0; d < HD; d++) sc += qs[hh][d] * Ks[j][d];
                ss[hh][j] = sc * scale;
            }
        }
        __syncthreads();
        for (int hh = warp; hh < nh; hh += NW) { /* a warp per head: the chunk's softmax */
            const float m_old = m_s[hh], l_old = l_s[hh];
            float mx = NEG_INF;
            for (int j = lane; j < nk; j += 32) mx = fmaxf(mx, ss[hh][j]);
            const float m_new = fmaxf(m_old, mha_warp_max(mx));
            float l = 0.0f;
            for (int j = lane; j < nk; j += 32) {
                const float p = expf(ss[hh][j] - m_new);
                ss[hh][j] = p;
                l += p;
            }
            l = mha_warp_sum(l);
            __syncwarp();
            if (lane == 0) {
                const float al = expf(m_old - m_new); /* 0 on the first chunk */
                a_s[hh] = al;
                m_s[hh] = m_new;
                l_s[hh] = l_old * al + l;
            }
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < OPD; u++) {
            const int e = tid + u * NT;
            if (e < nh * HD) {
                const int hh = e / HD, d = e % HD;
                float o = acc[u] * a_s[hh];
                for (int j = 0; j < nk; j++) o += ss[hh][j] * kv_ld(vb, (i64)j * HD + d);
                acc[u] = o;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int u = 0; u < OPD; u++) {
        const int e = tid + u * NT;
        if (e < nh * HD)
            part[(((i64)i * H + h0 + e / HD) * maxs + c) * (HD + 2) + e % HD] = acc[u];
    }
    if (tid < nh) {
        float *pp = part + (((i64)i * H + h0 + tid) * maxs + c) * (HD + 2);
        pp[HD] = m_s[tid];
        pp[HD + 1] = l_s[tid];
    }
}

/* O [n, H*HD] from the splits of each (sequence, head): grid (H, n) */
extern "C" __launch_bounds__(NT) __global__ void mha_dec_combine(const float *part,
                                                                  mha_seqs sq, float *O, int H,
                                                                  int maxs) {
    const int h = blockIdx.x, i = blockIdx.y;
    const int len = sq.pos[i] + 1, per = mha_split_len(len, maxs), ns = (len + per - 1) / per;
    const float *p0 = part + ((i64)i * H + h) * maxs * (HD + 2);
    float M = NEG_INF;
    for (int c = 0; c < ns; c++) M = fmaxf(M, p0[(i64)c * (HD + 2) + HD]);
    float l = 0.0f;
    for (int c = 0; c < ns; c++)
        l += expf(p0[(i64)c * (HD + 2) + HD] - M) * p0[(i64)c * (HD + 2) + HD + 1];
    const float inv = 1.0f / l;
    for (int d = threadIdx.x; d < HD; d += NT) {
        float o = 0.0f;
        for (int c = 0; c < ns; c++)
            o += expf(p0[(i64)c * (HD + 2) + HD] - M) * p0[(i64)c * (HD + 2) + d];
        O[((i64)i * H + h) * HD + d] = o * inv;
    }
}

/* Y[r, c] += bias[c], [rows, cols] */
extern "C" __launch_bounds__(NT) __global__ void mha_add_bias(float *Y, const float *bias,
                                                               i64 rows, int cols) {
    const i64 n = rows * cols;
    for (i64 e = (i64)blockIdx.x * NT + threadIdx.x; e < n; e += (i64)gridDim.x * NT)
        Y[e] += bias[e % cols];
}

/* G[c] += sum_r dY[r, c], rows in order (as the CPU), one thread per column */
extern "C" __launch_bounds__(NT) __global__ void mha_bias_grad(const float *dY, float *G, i64 rows,
                                                                int cols) {
    const int c = blockIdx.x * NT + threadIdx.x;
    if (c >= cols) return;
    float g = G[c];
    for (i64 r = 0; r < rows; r++) g += dY[r * cols + c];
    G[c] = g;
}

#if MHA_BF16
#if HD % 16 != 0
#error "MHA_BF16 needs HEAD_DIM % 16 == 0"
#endif
#define BQ16 64     /* queries per block: 4 warps x 16 rows */
#define BK16 32     /* keys per tile: 4 n-tiles of 8 */
#define HDS (HD + 8) /* bf16 row stride in shared memory (16 bytes of padding: banks) */

__device__ __forceinline__ unsigned short mha_f2bf(float f) { /* round to nearest even */
    const unsigned u = __float_as_uint(f);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float mha_bf2f(unsigned v, int hi) {
    return __uint_as_float(hi ? v & 0xffff0000u : v << 16);
}
__device__ __forceinline__ unsigned mha_pack(unsigned short lo, unsigned short hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}
/* two consecutive bf16 of shared memory (even index) as one register, the low one first */
__device__ __forceinline__ unsigned mha_ld2(const unsigned short *p) {
#ifdef HYB_CUDA_EMU
    return mha_pack(p[0], p[1]);
#else
    return *reinterpret_cast<const unsigned *>(p);
#endif
}

/* d (16x8 f32) += A (16x16 bf16, row-major) B (16x8 bf16, column-major); fragments of lane
 * 4 g + t (PTX ISA, mma.m16n8k16 .bf16): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
 * a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]; b[0] = B[2t, 2t+1][g],
 * b[1] = B[2t+8, 2t+9][g]; d[0..1] = D[g][2t, 2t+1], d[2..3] = D[g+8][2t, 2t+1]. */
__device__ __forceinline__ void mha_mma16816(float d[4], const unsigned a[4], const unsigned b[2]) {
#ifdef HYB_CUDA_EMU
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float acc0 = d[0], acc1 = d[1], acc2 = d[2], acc3 = d[3];
    for (int kp = 0; kp < 8; kp++) { /* k = 2 kp, 2 kp + 1: the two halves of one register */
        const int kr = kp & 3, kh = kp >> 2;
        /* A[row][k] sits in lane (row % 8) * 4 + kr, register (row >= 8) + 2 kh */
        const unsigned ra0 = __shfl_sync(FULL_MASK, a[2 * kh], g * 4 + kr);
        const unsigned ra1 = __shfl_sync(FULL_MASK, a[2 * kh + 1], g * 4 + kr);
        /* B[k][col] sits in lane col * 4 + kr, register kh */
        const unsigned rb0 = __shfl_sync(FULL_MASK, b[kh], (2 * t) * 4 + kr);
        const unsigned rb1 = __shfl_sync(FULL_MASK, b[kh], (2 * t + 1) * 4 + kr);
        for (int hi = 0; hi < 2; hi++) {
            const float A0 = mha_bf2f(ra0, hi), A1 = mha_bf2f(ra1, hi);
            const float B0 = mha_bf2f(rb0, hi), B1 = mha_bf2f(rb1, hi);
            acc0 += A0 * B0;
            acc1 += A0 * B1;
            acc2 += A1 * B0;
            acc3 += A1 * B1;
        }
    }
    d[0] = acc0;
    d[1] = acc1;
    d[2] = acc2;
    d[3] = acc3;
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

#endif /* MHA_BF16 (helpers) */

/* mha_fwd on tensor cores (arguments as mha_fwd): grid (ceil(T / 64), H, B). Declared in every
 * variant, its body only with MHA_BF16 (the emulated build registers every __global__ of the
 * file, also inside a disabled #if). */
extern "C" __launch_bounds__(NT) __global__ void mha_fwd_bf16(const float *Q, int ldq,
                                                               const float *K, const float *V,
                                                               i64 k_bs, i64 k_hs, int ldk,
                                                               float *O, float *LSE, int T,
                                                               int H, int group, int p0,
                                                               float scale) {
#if MHA_BF16
    __shared__ __align__(16) unsigned short Qh[BQ16][HDS]; /* 32-bit fragment loads */
    __shared__ __align__(16) unsigned short Kh[BK16][HDS]; /* 32-bit fragment loads */
    __shared__ __align__(16) unsigned short Vh[BK16][HDS]; /* 32-bit fragment loads */
    enum { KS = HD / 16, DT = HD / 8, NTL = BK16 / 8, KK = BK16 / 16 };
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, i0 = blockIdx.x * BQ16, kvh = h / group;
    const int nq = T - i0 < BQ16 ? T - i0 : BQ16;
    const float *q = Q + ((i64)b * T + i0) * ldq + (i64)h * HD;
    const float *kb = K + b * k_bs + kvh * k_hs, *vb = V + b * k_bs + kvh * k_hs;
    for (int e = tid; e < BQ16 * HD; e += NT) {
        const int r = e / HD, d = e % HD;
        Qh[r][d] = mha_f2bf(r < nq ? q[(i64)r * ldq + d] : 0.0f);
    }
    __syncthreads();
    const int r0 = warp * 16 + g, r1 = r0 + 8; /* this lane's two rows of the block */
    const int qp0 = p0 + i0 + r0, qp1 = p0 + i0 + r1;
    unsigned qa[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
        qa[ks][0] = mha_ld2(&Qh[r0][ks * 16 + 2 * t]);
        qa[ks][1] = mha_ld2(&Qh[r1][ks * 16 + 2 * t]);
        qa[ks][2] = mha_ld2(&Qh[r0][ks * 16 + 8 + 2 * t]);
        qa[ks][3] = mha_ld2(&Qh[r1][ks * 16 + 8 + 2 * t]);
    }
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    const int kend = p0 + i0 + nq;
    for (int j0 = 0; j0 < kend; j0 += BK16) {
        __syncthreads(); /* the previous tile's Kh, Vh are read */
        for (int e = tid; e < BK16 * HD; e += NT) {
            const int j = e / HD, d = e % HD;
            const int ok = j0 + j < kend;
            Kh[j][d] = mha_f2bf(ok ? kb[(i64)(j0 + j) * ldk + d] : 0.0f);
            Vh[j][d] = mha_f2bf(ok ? vb[(i64)(j0 + j) * ldk + d] : 0.0f);
        }
        __syncthreads();
        float s[NTL][4];
#pragma unroll
        for (int nt = 0; nt < NTL; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                unsigned bb[2];
                bb[0] = mha_ld2(&Kh[nt * 8 + g][ks * 16 + 2 * t]);
                bb[1] = mha_ld2(&Kh[nt * 8 + g][ks * 16 + 8 + 2 * t]);
                mha_mma16816(s[nt], qa[ks], bb);
            }
        }
        /* scale, causal mask; the tile's row maxima (the 4 lanes of a row hold 8 keys each) */
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NTL; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int key = j0 + nt * 8 + 2 * t + (i & 1), qp = i < 2 ? qp0 : qp1;
                const float v = key <= qp && key < kend ? s[nt][i] * scale : NEG_INF;
                s[nt][i] = v;
                if (i < 2)
                    mx0 = fmaxf(mx0, v);
                else
                    mx1 = fmaxf(mx1, v);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_MASK, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_MASK, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_MASK, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_MASK, mx1, 2));
        /* key 0 is in every row's first tile: the maxima are finite from then on */
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float al0 = expf(m0 - mn0), al1 = expf(m1 - mn1);
        float ls0 = 0.0f, ls1 = 0.0f;
        unsigned pa[KK][4];
#pragma unroll
        for (int nt = 0; nt < NTL; nt++) {
            const float e0 = s[nt][0] == NEG_INF ? 0.0f : expf(s[nt][0] - mn0);
            const float e1 = s[nt][1] == NEG_INF ? 0.0f : expf(s[nt][1] - mn0);
            const float e2 = s[nt][2] == NEG_INF ? 0.0f : expf(s[nt][2] - mn1);
            const float e3 = s[nt][3] == NEG_INF ? 0.0f : expf(s[nt][3] - mn1);
            ls0 += e0 + e1;
            ls1 += e2 + e3;
            /* S's accumulator layout is P's A layout: n-tiles 2kk, 2kk+1 -> k-step kk */
            pa[nt >> 1][(nt & 1) * 2] = mha_pack(mha_f2bf(e0), mha_f2bf(e1));
            pa[nt >> 1][(nt & 1) * 2 + 1] = mha_pack(mha_f2bf(e2), mha_f2bf(e3));
        }
        ls0 += __shfl_xor_sync(FULL_MASK, ls0, 1);
        ls0 += __shfl_xor_sync(FULL_MASK, ls0, 2);
        ls1 += __shfl_xor_sync(FULL_MASK, ls1, 1);
        ls1 += __shfl_xor_sync(FULL_MASK, ls1, 2);
        l0 = l0 * al0 + ls0;
        l1 = l1 * al1 + ls1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            o[dt][0] *= al0;
            o[dt][1] *= al0;
            o[dt][2] *= al1;
            o[dt][3] *= al1;
#pragma unroll
            for (int kk = 0; kk < KK; kk++) {
                /* B[k][n] = V[kk*16 + k][dt*8 + n] */
                const int c = dt * 8 + g, k0 = kk * 16 + 2 * t;
                unsigned bb[2];
                bb[0] = mha_pack(Vh[k0][c], Vh[k0 + 1][c]);
                bb[1] = mha_pack(Vh[k0 + 8][c], Vh[k0 + 9][c]);
                mha_mma16816(o[dt], pa[kk], bb);
            }
        }
    }
    const float il0 = 1.0f / l0, il1 = 1.0f / l1;
#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
        const int c = dt * 8 + 2 * t;
        if (r0 < nq) {
            float *or0 = O + ((i64)b * T + i0 + r0) * ldq + (i64)h * HD + c;
            or0[0] = o[dt][0] * il0;
            or0[1] = o[dt][1] * il0;
        }
        if (r1 < nq) {
            float *or1 = O + ((i64)b * T + i0 + r1) * ldq + (i64)h * HD + c;
            or1[0] = o[dt][2] * il1;
            or1[1] = o[dt][3] * il1;
        }
    }
    if (t == 0) {
        if (r0 < nq) LSE[((i64)b * H + h) * T + i0 + r0] = m0 + logf(l0);
        if (r1 < nq) LSE[((i64)b * H + h) * T + i0 + r1] = m1 + logf(l1);
    }
#endif /* MHA_BF16 */
}
