/* plugins/mamba2/mamba2.cu: the CUDA kernels of the `mamba2` mixer (Mamba-2 SSD). Embedded at build
 * time and compiled by NVRTC through be->kernel (mamba2_cuda.c drives them; the GEMMs are
 * be->sgemm). f32 storage and arithmetic, the same saved-block and decode-state layouts as the CPU
 * kernels (mamba2.h), so a state or a saved block is a byte copy between devices.
 *
 * Compile-time option: -DD_STATE=N (1..128): a thread keeps one row h[p, 0..N) of a head's state
 * (and, in the backward, of its adjoint) in registers, in loops unrolled over N.
 *
 * hyb-variant lines (tests/test_cuda_nvrtc.c compiles each for sm_80 and sm_90):
 * // hyb-variant: -DD_STATE=16
 * // hyb-variant: -DD_STATE=128
 *
 * Design (sizes as mamba2.h): correctness first, the simpler parallel form of the SSD.
 *  - forward: m2_conv_fwd (elementwise over [BT, Cd]: the causal depthwise conv of in_proj's x|B|C
 *    columns, with the state's window before a continued prefill, + bias, silu), m2_dt (softplus),
 *    m2_ssd_fwd: the SSD as its recurrence, one thread per (sequence, head, row p of the state),
 *    sequential over T: h = exp(dt A) h + dt x_p B, y_p = h . C + D x_p; the state at every chunk
 *    start goes to the saved block (hb, as the CPU's chunked forward saves it); m2_gate_norm (one
 *    thread per (row, group)); m2_conv_state (the final window) with states.
 *    The CPU runs the chunked (dual) form: the two agree to f32 rounding (test_mixers, 1e-5).
 *  - backward: m2_silu / m2_dt recompute xbc and dt, m2_yn the norm's output for out_proj's weight
 *    gradient, m2_norm_bwd (dys, dz), m2_norm_dw (one thread per channel, summing the rows in
 *    order), m2_ssd_bwd: one block per (head, sequence), one thread per state row p; chunks last to
 *    first: the chunk's states recomputed from its saved start into a scratch [B, nh, L, N, Pd]
 *    (coalesced over p), then the reverse-time adjoint (mamba2_ssd.c's equations) with dh in
 *    registers; sums over p (dB, dC, the dt terms, dD) through shared memory in a fixed order (no
 *    atomics); dB, dC per head summed over the group's heads in m2_reduce_bc, dt's softplus in
 *    m2_dt_bwd, the bias/A_log/D sums in m2_colsum / m2_reduce_ad, the conv in m2_dsilu,
 *    m2_conv_bwd_w, m2_conv_bwd_x.
 *  - decode: m2_decode_conv (window shift in the state, conv, silu; one thread per (sequence,
 *    channel)), m2_decode_ssd (one thread per (sequence, head, p) on the state in place),
 *    m2_gate_norm.
 * Kernels never take host pointers: a prefill's states come as a device array of per-sequence
 * pointers plus "continue" flags (pos > 0), a decode step's in a by-value parameter (m2_seqs).
 */
#ifndef D_STATE
#define D_STATE 16
#endif
#define NS D_STATE
typedef long long i64;

__device__ __forceinline__ float m2_sigmoid(float v) {
    return 1.0f / (1.0f + expf(-v));
}
__device__ __forceinline__ float m2_silu(float v) {
    return v / (1.0f + expf(-v));
}
/* silu'(v) = s (1 + v (1 - s)), s = sigmoid(v) */
__device__ __forceinline__ float m2_dsilu(float v) {
    const float s = m2_sigmoid(v);
    return s * (1.0f + v * (1.0f - s));
}
/* PyTorch's softplus (threshold 20) and its derivative */
__device__ __forceinline__ float m2_softplus(float v) {
    return v > 20.0f ? v : log1pf(expf(v));
}
__device__ __forceinline__ float m2_dsoftplus(float v) {
    return v > 20.0f ? 1.0f : m2_sigmoid(v);
}

/* cpre [BT, Cd] = conv1d.bias + sum_k w[c, k] xbc_raw[t - K + 1 + k, c] (from zx's columns cx..;
 * before the chunk from the state's window when cont[b], else 0); xbc = silu(cpre).
 * st: [B] device pointers to the decode states (or NULL), window at offset woff floats. */
extern "C" __global__ void m2_conv_fwd(const float *zx, const float *cw, const float *cb,
                                       float *const *st, const int *cont, float *cpre, float *xbc,
                                       int B, int T, int Cd, int Pin, int cx, int K, i64 woff) {
    const i64 total = (i64)B * T * Cd;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / Cd;
        const int c = (int)(e - r * Cd), b = (int)(r / T), t = (int)(r - (i64)b * T);
        const float *hist = (st && cont[b]) ? st[b] + woff + (i64)c * K : 0;
        float acc = cb[c];
        for (int k = 0; k < K; k++) {
            const int j = t - (K - 1) + k; /* source time */
            const float v = j >= 0 ? zx[((i64)b * T + j) * Pin + cx + c] : (hist ? hist[K + j] : 0.0f);
            acc += cw[(i64)c * K + k] * v;
        }
        cpre[e] = acc;
        xbc[e] = m2_silu(acc);
    }
}

/* dt [rows, nh] = softplus(zx[r, cdt + h] + dt_bias[h]) */
extern "C" __global__ void m2_dt(const float *zx, const float *dtb, float *dt, i64 rows, int nh,
                                 int Pin, int cdt) {
    const i64 total = rows * nh;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / nh;
        const int h = (int)(e - r * nh);
        dt[e] = m2_softplus(zx[r * Pin + cdt + h] + dtb[h]);
    }
}

/* The SSD recurrence: thread (p, head h = blockIdx.y, sequence b = blockIdx.z) owns h[p, 0..N).
 * hb (or NULL): the state at every chunk start, [B, nch, nh, Pd, N]. st/cont (or NULL): the initial
 * state when cont[b] (else 0), the final state written back. */
extern "C" __global__ void m2_ssd_fwd(const float *xbc, const float *dt, const float *alog,
                                      const float *Dskip, float *ys, float *hb, float *const *st,
                                      const int *cont, int B, int T, int Di, int Pd, int nh, int G,
                                      int Cd, int chunk, int nch) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x, h = blockIdx.y, b = blockIdx.z;
    if (p >= Pd || h >= nh || b >= B) return;
    const int g = h / (nh / G);
    const float A = -expf(alog[h]), Dk = Dskip[h];
    float *ssm = st ? st[b] + ((i64)h * Pd + p) * NS : 0;
    const int cn = st ? cont[b] : 0;
    float s[NS];
#pragma unroll
    for (int n = 0; n < NS; n++) s[n] = cn ? ssm[n] : 0.0f;
    for (int t = 0; t < T; t++) {
        const i64 r = (i64)b * T + t;
        if (hb && t % chunk == 0) {
            float *o = hb + ((((i64)b * nch + t / chunk) * nh + h) * Pd + p) * NS;
#pragma unroll
            for (int n = 0; n < NS; n++) o[n] = s[n];
        }
        const float *xr = xbc + r * Cd;
        const float *Bv = xr + Di + (i64)g * NS, *Cv = xr + Di + (i64)(G + g) * NS;
        const float dtv = dt[r * nh + h], e = expf(dtv * A), xv = xr[h * Pd + p], dx = dtv * xv;
        float y = 0.0f;
#pragma unroll
        for (int n = 0; n < NS; n++) {
            s[n] = e * s[n] + dx * Bv[n];
            y += s[n] * Cv[n];
        }
        ys[r * Di + h * Pd + p] = y + Dk * xv;
    }
    if (ssm) {
#pragma unroll
        for (int n = 0; n < NS; n++) ssm[n] = s[n];
    }
}

/* The gated RMSNorm: thread (row r, group g): gv = ys silu(z) over the group's gs channels,
 * rstd = (mean gv^2 + eps)^-1/2, yn = gv rstd w. rstd [rows, G] (or NULL). */
extern "C" __global__ void m2_gate_norm(const float *ys, const float *zx, const float *w, float *yn,
                                        float *rstd, i64 rows, int Di, int G, int Pin, float eps) {
    const i64 total = rows * G;
    const int gs = Di / G;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / G;
        const int g = (int)(e - r * G);
        const float *yr = ys + r * Di, *zr = zx + r * Pin;
        float *o = yn + r * Di;
        float ss = 0.0f;
        for (int c = g * gs; c < (g + 1) * gs; c++) {
            const float v = yr[c] * m2_silu(zr[c]);
            o[c] = v;
            ss += v * v;
        }
        const float rs = 1.0f / sqrtf(ss / (float)gs + eps);
        if (rstd) rstd[e] = rs;
        for (int c = g * gs; c < (g + 1) * gs; c++) o[c] *= rs * w[c];
    }
}

/* The conv window of each state after a prefill of T tokens: thread (channel c, sequence b):
 * cs[c, k] = raw input of time T - K + k (before the prefill: the old window when cont[b], else 0;
 * in place: index k reads index k + T > k, not yet written). */
extern "C" __global__ void m2_conv_state(const float *zx, float *const *st, const int *cont, int B,
                                         int T, int Cd, int Pin, int cx, int K, i64 woff) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
    if (c >= Cd || b >= B) return;
    float *cs = st[b] + woff + (i64)c * K;
    const int cn = cont[b];
    for (int k = 0; k < K; k++) {
        const int j = T - K + k;
        cs[k] = j >= 0 ? zx[((i64)b * T + j) * Pin + cx + c] : (cn ? cs[K + j] : 0.0f);
    }
}

/* out[e] = silu(in[e]) over n elements */
extern "C" __global__ void m2_silu(const float *in, float *out, i64 n) {
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n;
         e += (i64)gridDim.x * blockDim.x)
        out[e] = m2_silu(in[e]);
}

/* yn [rows, Di] = ys silu(z) rstd[group] w (the forward's out_proj input, from the saved rstd) */
extern "C" __global__ void m2_yn(const float *ys, const float *zx, const float *rstd, const float *w,
                                 float *yn, i64 rows, int Di, int G, int Pin) {
    const i64 total = rows * Di;
    const int gs = Di / G;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / Di;
        const int c = (int)(e - r * Di);
        yn[e] = ys[e] * m2_silu(zx[r * Pin + c]) * rstd[r * G + c / gs] * w[c];
    }
}

/* The gated norm's adjoint, thread (row, group): from dyn (= dy Wout): u = w dyn,
 * dg = rstd (u - gv rstd^2 mean(u gv)); dys = dg silu(z); dz (zx's z columns of dzx) = dg ys silu'(z) */
extern "C" __global__ void m2_norm_bwd(const float *ys, const float *zx, const float *rstd,
                                       const float *w, const float *dyn, float *dys, float *dzx,
                                       i64 rows, int Di, int G, int Pin) {
    const i64 total = rows * G;
    const int gs = Di / G;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / G;
        const int g = (int)(e - r * G);
        const float *yr = ys + r * Di, *zr = zx + r * Pin, *dr = dyn + r * Di;
        const float rs = rstd[e];
        float s = 0.0f;
        for (int c = g * gs; c < (g + 1) * gs; c++) s += w[c] * dr[c] * yr[c] * m2_silu(zr[c]);
        s /= (float)gs;
        for (int c = g * gs; c < (g + 1) * gs; c++) {
            const float sz = m2_silu(zr[c]), gv = yr[c] * sz;
            const float dg = rs * (w[c] * dr[c] - gv * rs * rs * s);
            dys[r * Di + c] = dg * sz;
            dzx[r * Pin + c] = dg * yr[c] * m2_dsilu(zr[c]);
        }
    }
}

/* gw[c] += sum_r dyn[r, c] ys[r, c] silu(z[r, c]) rstd[r, c / gs]: one thread per channel, rows in
 * order */
extern "C" __global__ void m2_norm_dw(const float *ys, const float *zx, const float *rstd,
                                      const float *dyn, float *gw, i64 rows, int Di, int G, int Pin) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= Di) return;
    const int g = c / (Di / G);
    float acc = 0.0f;
    for (i64 r = 0; r < rows; r++)
        acc += dyn[r * Di + c] * ys[r * Di + c] * m2_silu(zx[r * Pin + c]) * rstd[r * G + g];
    gw[c] += acc;
}

/* The SSD's adjoint: block (head h = blockIdx.x, sequence b = blockIdx.y), thread p < Pd
 * (blockDim.x = Pd). Chunks last to first: the chunk's states recomputed from hb into
 * S [B, nh, Lc, N, Pd], then, t from the chunk's end:
 *   gh = dh + dys_p C;  dC += dys_p h_t;  dB += gh x_p;  dx_p = dt gh.B + D dys_p;
 *   sxb += x_p gh.B;  shp += gh.h_{t-1};  dD += dys_p x_p;  dh = e gh
 * then sums over p: dBh/dCh [BT, nh, N] (times dt for dB), ddt [BT, nh] = sxb + A e shp,
 * dA += dt e shp; partials pA, pD [B, nh]. Shared memory: 2 N (Pd + 1) + 2 Pd floats. */
extern "C" __global__ void m2_ssd_bwd(const float *xbc, const float *dt, const float *dys,
                                      const float *alog, const float *Dskip, const float *hb,
                                      float *S, float *dxbc, float *dBh, float *dCh, float *ddt,
                                      float *pA, float *pD, int B, int T, int Di, int Pd, int nh,
                                      int G, int Cd, int chunk, int nch, int Lc) {
    extern __shared__ float m2_sh[];
    const int h = blockIdx.x, b = blockIdx.y, p = threadIdx.x, st = Pd + 1;
    float *shB = m2_sh, *shC = m2_sh + NS * st, *shX = m2_sh + 2 * NS * st, *shP = shX + Pd;
    const int g = h / (nh / G);
    const float A = -expf(alog[h]), Dk = Dskip[h];
    float dh[NS], hc[NS];
#pragma unroll
    for (int n = 0; n < NS; n++) dh[n] = 0.0f;
    float dD = 0.0f, dA = 0.0f;
    float *Sb = S + ((i64)b * nh + h) * Lc * NS * Pd + p;
    for (int c = nch - 1; c >= 0; c--) {
        const int t0 = c * chunk, L = T - t0 < chunk ? T - t0 : chunk;
        const float *h0 = hb + ((((i64)b * nch + c) * nh + h) * Pd + p) * NS;
#pragma unroll
        for (int n = 0; n < NS; n++) hc[n] = h0[n];
        for (int i = 0; i < L; i++) { /* recompute the chunk's states */
            const i64 r = (i64)b * T + t0 + i;
            const float *xr = xbc + r * Cd, *Bv = xr + Di + (i64)g * NS;
            const float dtv = dt[r * nh + h], e = expf(dtv * A), dx = dtv * xr[h * Pd + p];
            float *o = Sb + (i64)i * NS * Pd;
#pragma unroll
            for (int n = 0; n < NS; n++) {
                hc[n] = e * hc[n] + dx * Bv[n];
                o[(i64)n * Pd] = hc[n];
            }
        }
        for (int i = L - 1; i >= 0; i--) {
            const i64 r = (i64)b * T + t0 + i;
            const float *xr = xbc + r * Cd, *Bv = xr + Di + (i64)g * NS,
                        *Cv = xr + Di + (i64)(G + g) * NS;
            const float dtv = dt[r * nh + h], e = expf(dtv * A), xp = xr[h * Pd + p],
                        dyp = dys[r * Di + h * Pd + p];
            const float *cur = Sb + (i64)i * NS * Pd;
            const float *prv = i > 0 ? cur - (i64)NS * Pd : h0;
            const i64 ps = i > 0 ? Pd : 1; /* hb rows are [p][n], the scratch [n][p] */
            float gx = 0.0f, sb = 0.0f, sp = 0.0f;
#pragma unroll
            for (int n = 0; n < NS; n++) {
                const float gh = dh[n] + dyp * Cv[n];
                shC[n * st + p] = dyp * cur[(i64)n * Pd];
                shB[n * st + p] = gh * xp;
                gx += gh * Bv[n];
                sp += gh * prv[n * ps];
                dh[n] = gh * e;
            }
            sb = gx * xp;
            dxbc[r * Cd + h * Pd + p] = dtv * gx + Dk * dyp;
            dD += dyp * xp;
            shX[p] = sb;
            shP[p] = sp;
            __syncthreads();
            for (int n = p; n < NS; n += Pd) {
                float sB = 0.0f, sC = 0.0f;
                for (int q = 0; q < Pd; q++) {
                    sB += shB[n * st + q];
                    sC += shC[n * st + q];
                }
                dBh[(r * nh + h) * NS + n] = dtv * sB;
                dCh[(r * nh + h) * NS + n] = sC;
            }
            if (p == 0) {
                float sx = 0.0f, spp = 0.0f;
                for (int q = 0; q < Pd; q++) {
                    sx += shX[q];
                    spp += shP[q];
                }
                const float da = e * spp;
                ddt[r * nh + h] = sx + A * da;
                dA += dtv * da;
            }
            __syncthreads();
        }
    }
    shX[p] = dD;
    __syncthreads();
    if (p == 0) {
        float s = 0.0f;
        for (int q = 0; q < Pd; q++) s += shX[q];
        pA[(i64)b * nh + h] = dA;
        pD[(i64)b * nh + h] = s;
    }
}

/* dxbc's B and C columns: the per-head dBh, dCh summed over the heads of each group, in order */
extern "C" __global__ void m2_reduce_bc(const float *dBh, const float *dCh, float *dxbc, i64 rows,
                                        int Di, int nh, int G, int Cd) {
    const int GN = G * NS, hpg = nh / G;
    const i64 total = rows * 2 * GN;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / (2 * GN);
        const int k = (int)(e - r * 2 * GN), isC = k >= GN, gn = isC ? k - GN : k;
        const int g = gn / NS, n = gn % NS;
        const float *src = isC ? dCh : dBh;
        float acc = 0.0f;
        for (int j = 0; j < hpg; j++) acc += src[(r * nh + g * hpg + j) * NS + n];
        dxbc[r * Cd + Di + k] = acc;
    }
}

/* dzx's dt columns = ddt softplus'(zx dt column + dt_bias) */
extern "C" __global__ void m2_dt_bwd(const float *ddt, const float *zx, const float *dtb,
                                     float *dzx, i64 rows, int nh, int Pin, int cdt) {
    const i64 total = rows * nh;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / nh;
        const int h = (int)(e - r * nh);
        dzx[r * Pin + cdt + h] = ddt[e] * m2_dsoftplus(zx[r * Pin + cdt + h] + dtb[h]);
    }
}

/* out[c] += sum_r x[r * ld + c] (one thread per column, rows in order) */
extern "C" __global__ void m2_colsum(const float *x, float *out, i64 rows, int cols, int ld) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (i64 r = 0; r < rows; r++) acc += x[r * ld + c];
    out[c] += acc;
}

/* gA[h] += (sum_b pA[b, h]) A[h] (dA_log = dA A), gD[h] += sum_b pD[b, h] */
extern "C" __global__ void m2_reduce_ad(const float *pA, const float *pD, const float *alog,
                                        float *gA, float *gD, int B, int nh) {
    const int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= nh) return;
    float sa = 0.0f, sd = 0.0f;
    for (int b = 0; b < B; b++) {
        sa += pA[(i64)b * nh + h];
        sd += pD[(i64)b * nh + h];
    }
    gA[h] += sa * -expf(alog[h]);
    gD[h] += sd;
}

/* g[e] *= silu'(cpre[e]) over n elements */
extern "C" __global__ void m2_dsilu(float *g, const float *cpre, i64 n) {
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n;
         e += (i64)gridDim.x * blockDim.x)
        g[e] *= m2_dsilu(cpre[e]);
}

/* The conv's parameter gradients: thread (k, c), k < K: gcw[c, k] += sum over rows of
 * dcpre[b, t, c] raw[b, t - K + 1 + k, c] (zero history: training starts at pos 0); k == K:
 * gcb[c] += sum dcpre. Rows in order. */
extern "C" __global__ void m2_conv_bwd_w(const float *dcpre, const float *zx, float *gcw,
                                         float *gcb, int B, int T, int Cd, int Pin, int cx, int K) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= (i64)(K + 1) * Cd) return;
    const int k = (int)(i / Cd), c = (int)(i - (i64)k * Cd);
    const i64 rows = (i64)B * T;
    float acc = 0.0f;
    for (i64 r = 0; r < rows; r++) {
        const float gc = dcpre[r * Cd + c];
        if (k == K) {
            acc += gc;
            continue;
        }
        const int t = (int)(r % T), j = t - (K - 1) + k;
        if (j >= 0) acc += gc * zx[(r - t + j) * Pin + cx + c];
    }
    if (k == K)
        gcb[c] += acc;
    else
        gcw[(i64)c * K + k] += acc;
}

/* The conv's input gradient: dzx[b, t, cx + c] += sum_k dcpre[b, t + K - 1 - k, c] w[c, k] */
extern "C" __global__ void m2_conv_bwd_x(const float *dcpre, const float *cw, float *dzx, int B,
                                         int T, int Cd, int Pin, int cx, int K) {
    const i64 total = (i64)B * T * Cd;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / Cd;
        const int c = (int)(e - r * Cd), t = (int)(r % T);
        float acc = 0.0f;
        for (int k = 0; k < K; k++) {
            const int tp = t + (K - 1) - k; /* the output that read this input at tap k */
            if (tp < T) acc += dcpre[(r + (tp - t)) * Cd + c] * cw[(i64)c * K + k];
        }
        dzx[r * Pin + cx + c] += acc;
    }
}

/* The states of up to M2_SEQ_MAX sequences, passed by value to the decode kernels; the host's
 * hyb_ssm_seqs (plugins/common/ssm_util.h) has the same layout. */
#define M2_SEQ_MAX 64
struct m2_seqs {
    float *p[M2_SEQ_MAX]; /* device pointers to the decode states */
    int cont[M2_SEQ_MAX]; /* pos > 0: the state holds tokens; else it starts from zero */
};

/* Decode, the conv: thread (channel c, sequence i = i0 + blockIdx.y): shift the state's window
 * [Cd, K] (at offset woff), append zx's raw input, conv + bias, silu -> xbc [n, Cd]. */
extern "C" __global__ void m2_decode_conv(const float *zx, const float *cw, const float *cb,
                                          const __grid_constant__ m2_seqs sq, int i0, float *xbc,
                                          int n, int Cd, int Pin, int cx, int K, i64 woff) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x, i = i0 + blockIdx.y;
    if (c >= Cd || i >= n || blockIdx.y >= M2_SEQ_MAX) return;
    float *w = sq.p[blockIdx.y] + woff + (i64)c * K;
    const int cn = sq.cont[blockIdx.y];
    for (int k = 0; k + 1 < K; k++) w[k] = cn ? w[k + 1] : 0.0f;
    w[K - 1] = zx[(i64)i * Pin + cx + c];
    float acc = cb[c];
    for (int k = 0; k < K; k++) acc += cw[(i64)c * K + k] * w[k];
    xbc[(i64)i * Cd + c] = m2_silu(acc);
}

/* Decode, the SSD step: thread (p, head h = blockIdx.y, sequence i = i0 + blockIdx.z) on the state
 * row h[p, :] in place (0 when !cont); ys [n, Di]. */
extern "C" __global__ void m2_decode_ssd(const float *zx, const float *xbc, const float *dtb,
                                         const float *alog, const float *Dskip,
                                         const __grid_constant__ m2_seqs sq, int i0, float *ys,
                                         int n, int Di, int Pd, int nh, int G, int Cd, int Pin,
                                         int cdt) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x, h = blockIdx.y, i = i0 + blockIdx.z;
    if (p >= Pd || h >= nh || i >= n || blockIdx.z >= M2_SEQ_MAX) return;
    const int g = h / (nh / G), cn = sq.cont[blockIdx.z];
    float *s = sq.p[blockIdx.z] + ((i64)h * Pd + p) * NS;
    const float *xr = xbc + (i64)i * Cd, *Bv = xr + Di + (i64)g * NS,
                *Cv = xr + Di + (i64)(G + g) * NS;
    const float dtv = m2_softplus(zx[(i64)i * Pin + cdt + h] + dtb[h]);
    const float e = expf(dtv * -expf(alog[h])), xv = xr[h * Pd + p], dx = dtv * xv;
    float y = 0.0f;
#pragma unroll
    for (int k = 0; k < NS; k++) {
        const float v = e * (cn ? s[k] : 0.0f) + dx * Bv[k];
        s[k] = v;
        y += v * Cv[k];
    }
    ys[(i64)i * Di + h * Pd + p] = y + Dskip[h] * xv;
}
