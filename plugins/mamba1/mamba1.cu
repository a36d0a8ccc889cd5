/* plugins/mamba1/mamba1.cu: the CUDA kernels of the `mamba1` mixer (Mamba-1 / Apriel-H1 "m2").
 * Embedded at build time and compiled by NVRTC through be->kernel (mamba1_cuda.c drives them; the
 * GEMMs are be->sgemm). f32 storage, f32 arithmetic, the same saved-buffer and decode-state
 * layouts as the CPU kernels (mamba1.h), so a state or a saved block is a byte copy.
 *
 * Compile-time option: -DD_STATE=N (the scan's state size, 1..64): each thread keeps its
 * channel's N states, N values of A and (backward) N adjoints in registers, in loops unrolled
 * over N. Every kernel of the file is compiled with it (one module per d_state).
 *
 * hyb-variant lines (tests/test_cuda_nvrtc.c compiles each for sm_80 and sm_90):
 * // hyb-variant: -DD_STATE=16
 * // hyb-variant: -DD_STATE=4
 * // hyb-variant: -DD_STATE=64
 *
 * Design (sizes as mamba1.h: Di channels in nC heads of N, x/B groups of rep heads):
 *  - one thread per (sequence, channel[, time chunk]) with the channel's N states in registers, not
 *    one thread per (channel, state): y_t[d] = sum_n h[d,n] C[n] is then a sequential sum inside
 *    the thread (the CPU's order, no shuffles), B[n] and C[n] are the same addresses for the N
 *    channels of a head (broadcast loads), and dt, u, ys are read and written coalesced over
 *    channels. The price is parallelism (B * Di threads, times the chunks of T in the forward and
 *    the backward), and N registers per array (hence d_state <= 64).
 *  - forward: m1_prep_fwd (elementwise over [BT, Di]: dt_proj bias (twice for m2), softplus, the
 *    causal depthwise conv from zxbc's x columns (x_rep) and, for a continued prefill, the conv
 *    window of the state, silu) then the scan: ys, the gated ys * silu(z) for out_proj, the state
 *    at every chunk start (`hb`, the backward's recomputation points) and, with states, the final
 *    scan state and conv window. One chunk (T <= chunk): m1_scan_fwd, sequential over T. Several:
 *    parallel over chunks too, in three passes: m1_scan_local (each chunk from the zero state:
 *    its end state and sum of dt), m1_scan_carry (sequential over chunks only: start_{c+1} =
 *    exp(A sum dt) start_c + local_c, the exact linear recurrence, into hb), then m1_scan_fwd
 *    per chunk from hb. Twice the exp work, but B * Di * nch threads instead of B * Di: a
 *    prefill of one sequence (B * Di = 4096 for Apriel-H1) would otherwise fill a few SMs.
 *  - backward: m1_gate_fwd/m1_gate_bwd (out_proj's input and the gate's adjoint), then the reverse
 *    scan, parallel over chunks: the adjoint of the state, dh, obeys its own linear recurrence
 *    dh_{t-1} = (dh_t + dys_t C_t) a_t, which needs no states, so m1_bwd_local (each chunk from dh
 *    = 0) and m1_bwd_carry (over chunk ends, last first: exp(A sum dt) dh + local) give every chunk
 *    its dh at its end; then m1_scan_bwd, per chunk (in waves of chunks, to bound the scratch),
 *    recomputes the chunk's states from the saved chunk start into a scratch [B, wave, L, N, Di]
 *    (coalesced over channels) with the forward's step, and runs the reverse recurrence with dh, dA
 *    in registers. Sums over channels (dC over a head's N channels, dB over a group's rep*N
 *    channels) go through shared memory: each thread writes its 2N contributions, one barrier, then
 *    one thread per output sums them in channel order, a second barrier; a block is whole x/B
 *    groups, so no atomics and the result does not depend on the thread order (the column sums
 *    m1_colsum, m1_conv_bwd_w use atomics only past 4096 rows, to split them over blocks). dA, dD
 *    sum over t in registers and over the batch and the chunks in m1_reduce_dA (per-(sequence,
 *    chunk) partials: deterministic). softplus' and silu' are applied on the way out (ddt = dv, du
 *    = dcpre), m1_colsum makes the dt bias gradient, m1_conv_bwd_w/x the conv.
 *  - decode: one kernel per step, one thread per (sequence, channel): conv window shift in the
 *    state, conv, softplus, scan step on the state in place ([Di, N] channel-major: each thread
 *    owns N contiguous floats), D skip, gate.
 * The prefill's states come as a device array of per-sequence pointers plus a "continue" flag per
 * sequence (pos > 0), uploaded by the host; a decode step's in a by-value kernel parameter
 * (struct m1_seqs, up to 64 sequences a launch): kernels never take host pointers.
 */
#ifndef D_STATE
#define D_STATE 16
#endif
#define NS D_STATE
typedef long long i64;

__device__ __forceinline__ float m1_silu(float v) {
    return v / (1.0f + expf(-v));
}
__device__ __forceinline__ float m1_sigmoid(float v) {
    return 1.0f / (1.0f + expf(-v));
}
/* silu'(v) = s (1 + v (1 - s)), s = sigmoid(v) */
__device__ __forceinline__ float m1_dsilu(float v) {
    const float s = m1_sigmoid(v);
    return s * (1.0f + v * (1.0f - s));
}
/* PyTorch's softplus (threshold 20) and its derivative */
__device__ __forceinline__ float m1_softplus(float v) {
    return v > 20.0f ? v : log1pf(expf(v));
}
__device__ __forceinline__ float m1_dsoftplus(float v) {
    return v > 20.0f ? 1.0f : m1_sigmoid(v);
}
/* x column (0 <= . < Dx) of channel d: x_rep[d] = x[g*N + s], g = d / N / rep, s = d % N */
__device__ __forceinline__ int m1_xcol(int d, int rep) {
    return (d / NS / rep) * NS + d % NS;
}

/* Elementwise over the B*T rows and Di channels:
 *   v += b_dt (+ b_dt: dbl), dt = softplus(v); cpre = conv1d.bias + sum_k w[d,k] x_rep[t-K+1+k]
 *   (from zxbc's x columns; before the chunk from the state's conv window when cont[b], else 0);
 *   u = silu(cpre). st: [B] device pointers to the decode states (or NULL), cont: [B]. */
extern "C" __global__ void m1_prep_fwd(const float *zxbc, float *v, const float *cw,
                                       const float *cb, const float *bdt, float *const *st,
                                       const int *cont, float *cpre, float *u, float *dt, int B,
                                       int T, int Di, int Dx, int P, int K, int rep, int dbl) {
    const i64 total = (i64)B * T * Di;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / Di;
        const int d = (int)(e - r * Di), b = (int)(r / T), t = (int)(r - (i64)b * T);
        const float bd = bdt[d];
        const float vv = dbl ? v[e] + (bd + bd) : v[e] + bd;
        v[e] = vv;
        dt[e] = m1_softplus(vv);
        const int xc = Di + m1_xcol(d, rep);
        const float *hist = (st && cont[b]) ? st[b] + (i64)Di * NS + (i64)d * K : 0;
        float acc = cb[d];
        for (int k = 0; k < K; k++) {
            const int j = t - (K - 1) + k; /* source time */
            const float xv = j >= 0 ? zxbc[((i64)b * T + j) * P + xc] : (hist ? hist[K + j] : 0.0f);
            acc += cw[(i64)d * K + k] * xv;
        }
        cpre[e] = acc;
        u[e] = m1_silu(acc);
    }
}

/* The selective scan, one thread per (sequence b = blockIdx.y, channel d) and, with split, per
 * time chunk (blockIdx.z); h[n] in registers:
 *   h = exp(dt A[n]) h + dt u B[n];  y = sum_n h C[n] + D u;  ys = y, yg = y * silu(z)
 * hb: the state at every chunk start, [B, nch, nC, N(n), N(c)] as mamba1.h. split = 0: the thread
 * runs all T steps from the initial state and writes hb (when not NULL) on the way; split = 1:
 * it runs its chunk from hb (written by m1_scan_carry).
 * st/cont (or NULL): the initial state is read when cont[b]; the thread that ends the sequence
 * writes the final state and the conv window (the last K x_rep inputs; before this call: the old
 * window when cont[b], else 0).
 * yg may alias dt (each element is read before it is written, by the same thread). */
extern "C" __global__ void m1_scan_fwd(const float *zxbc, const float *dt, const float *u,
                                       const float *alog, const float *Dskip, float *ys,
                                       float *yg, float *hb, float *const *st, const int *cont,
                                       int B, int T, int Di, int Dx, int P, int K, int rep,
                                       int chunk, int nch, int split) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y, ch = blockIdx.z;
    if (d >= Di || b >= B || ch >= nch) return;
    const int h = d / NS, c = d % NS, g = h / rep;
    const int t0 = split ? ch * chunk : 0, t1 = split && t0 + chunk < T ? t0 + chunk : T;
    float A[NS], s[NS];
    float *ssm = st ? st[b] + (i64)d * NS : 0;
    const int cn = st ? cont[b] : 0;
    const float *hs = split ? hb + (((i64)b * nch + ch) * Di + (i64)h * NS) * NS + c : 0;
#pragma unroll
    for (int n = 0; n < NS; n++) {
        A[n] = -expf(alog[(i64)d * NS + n]);
        s[n] = split ? hs[n * NS] : (cn ? ssm[n] : 0.0f);
    }
    const float Dk = Dskip[d];
    for (int t = t0; t < t1; t++) {
        const i64 r = (i64)b * T + t, e = r * Di + d;
        if (!split && hb && t % chunk == 0) {
            float *o = hb + (((i64)b * nch + t / chunk) * Di + (i64)h * NS) * NS + c;
#pragma unroll
            for (int n = 0; n < NS; n++) o[n * NS] = s[n];
        }
        const float *zr = zxbc + r * P;
        const float *Bv = zr + Di + Dx + g * NS, *Cv = zr + Di + 2 * Dx + h * NS;
        const float dtv = dt[e], uv = u[e], dtu = dtv * uv;
        float y = 0.0f;
#pragma unroll
        for (int n = 0; n < NS; n++) {
            const float hn = expf(dtv * A[n]) * s[n] + dtu * Bv[n];
            s[n] = hn;
            y += hn * Cv[n];
        }
        y += Dk * uv;
        ys[e] = y;
        yg[e] = y * m1_silu(zr[d]);
    }
    if (st && t1 == T) {
#pragma unroll
        for (int n = 0; n < NS; n++) ssm[n] = s[n];
        float *cs = st[b] + (i64)Di * NS + (i64)d * K;
        const int xc = Di + m1_xcol(d, rep);
        for (int k = 0; k < K; k++) { /* in place: reads index k + T > k, not yet written */
            const int j = T - K + k;
            cs[k] = j >= 0 ? zxbc[((i64)b * T + j) * P + xc] : (cn ? cs[K + j] : 0.0f);
        }
    }
}

/* Split scan, pass 1: thread (channel d, chunk ch = blockIdx.y < nch - 1, sequence b =
 * blockIdx.z) runs its chunk from the zero state: hl [B, nch, N, Di] its end state, sdt [B, nch,
 * Di] the chunk's sum of dt (its decay is exp(A sdt)). */
extern "C" __global__ void m1_scan_local(const float *zxbc, const float *dt, const float *u,
                                         const float *alog, float *hl, float *sdt, int B, int T,
                                         int Di, int Dx, int P, int rep, int chunk, int nch) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x, ch = blockIdx.y, b = blockIdx.z;
    if (d >= Di || b >= B || ch >= nch - 1) return;
    const int g = d / NS / rep, t0 = ch * chunk, t1 = t0 + chunk < T ? t0 + chunk : T;
    float A[NS], s[NS];
#pragma unroll
    for (int n = 0; n < NS; n++) {
        A[n] = -expf(alog[(i64)d * NS + n]);
        s[n] = 0.0f;
    }
    float sum = 0.0f;
    for (int t = t0; t < t1; t++) {
        const i64 r = (i64)b * T + t, e = r * Di + d;
        const float *Bv = zxbc + r * P + Di + Dx + g * NS;
        const float dtv = dt[e], dtu = dtv * u[e];
        sum += dtv;
#pragma unroll
        for (int n = 0; n < NS; n++) s[n] = expf(dtv * A[n]) * s[n] + dtu * Bv[n];
    }
    float *o = hl + ((i64)b * nch + ch) * NS * Di + d;
#pragma unroll
    for (int n = 0; n < NS; n++) o[(i64)n * Di] = s[n];
    sdt[((i64)b * nch + ch) * Di + d] = sum;
}

/* Split scan, pass 2: thread (sequence b = blockIdx.y, channel d) carries the state over the
 * chunks: hb[ch] = h; h = exp(A sdt[ch]) h + hl[ch]. The initial state as m1_scan_fwd. */
extern "C" __global__ void m1_scan_carry(const float *hl, const float *sdt, const float *alog,
                                         float *hb, float *const *st, const int *cont, int B,
                                         int Di, int nch) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
    if (d >= Di || b >= B) return;
    const int h = d / NS, c = d % NS;
    const int cn = st ? cont[b] : 0;
    float A[NS], s[NS];
#pragma unroll
    for (int n = 0; n < NS; n++) {
        A[n] = -expf(alog[(i64)d * NS + n]);
        s[n] = cn ? st[b][(i64)d * NS + n] : 0.0f;
    }
    for (int ch = 0; ch < nch; ch++) {
        float *o = hb + (((i64)b * nch + ch) * Di + (i64)h * NS) * NS + c;
#pragma unroll
        for (int n = 0; n < NS; n++) o[n * NS] = s[n];
        if (ch == nch - 1) break;
        const float sum = sdt[((i64)b * nch + ch) * Di + d];
        const float *l = hl + ((i64)b * nch + ch) * NS * Di + d;
#pragma unroll
        for (int n = 0; n < NS; n++) s[n] = expf(A[n] * sum) * s[n] + l[(i64)n * Di];
    }
}

/* yg = ys * silu(z): [rows, Di] (z: the first Di columns of zxbc [rows, P]) */
extern "C" __global__ void m1_gate_fwd(const float *ys, const float *zxbc, float *yg, i64 rows,
                                       int Di, int P) {
    const i64 total = rows * Di;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / Di;
        const int d = (int)(e - r * Di);
        yg[e] = ys[e] * m1_silu(zxbc[r * P + d]);
    }
}

/* The gate's adjoint: dys holds dyg = dy Wout on entry, dyg * silu(z) on exit;
 * dz (the z columns of dzxbc [rows, P]) = dyg * ys * silu'(z) */
extern "C" __global__ void m1_gate_bwd(const float *ys, const float *zxbc, float *dys, float *dz,
                                       i64 rows, int Di, int P) {
    const i64 total = rows * Di;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / Di;
        const int d = (int)(e - r * Di);
        const float z = zxbc[r * P + d], dyg = dys[e];
        dz[r * P + d] = dyg * ys[e] * m1_dsilu(z);
        dys[e] = dyg * m1_silu(z);
    }
}

/* Backward, pass 1 (several chunks): thread (channel d, chunk ch = blockIdx.y + 1, sequence b =
 * blockIdx.z) runs the adjoint recurrence of the state through its chunk from dh = 0 at its end:
 *   dh = (dh + dys C[n]) exp(dt A[n]),  t from the chunk's last step to its first
 * It needs no states: L [B, nch, N, Di] (dh at the chunk start), sdt [B, nch, Di] (sum of dt). */
extern "C" __global__ void m1_bwd_local(const float *zxbc, const float *v, const float *dys,
                                        const float *alog, float *L, float *sdt, int B, int T,
                                        int Di, int Dx, int P, int chunk, int nch) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x, ch = blockIdx.y + 1, b = blockIdx.z;
    if (d >= Di || b >= B || ch >= nch) return;
    const int h = d / NS, t0 = ch * chunk, t1 = t0 + chunk < T ? t0 + chunk : T;
    float A[NS], dh[NS];
#pragma unroll
    for (int n = 0; n < NS; n++) {
        A[n] = -expf(alog[(i64)d * NS + n]);
        dh[n] = 0.0f;
    }
    float sum = 0.0f;
    for (int t = t1 - 1; t >= t0; t--) {
        const i64 r = (i64)b * T + t, e = r * Di + d;
        const float dtv = m1_softplus(v[e]), dy = dys[e];
        const float *Cv = zxbc + r * P + Di + 2 * Dx + h * NS;
        sum += dtv;
#pragma unroll
        for (int n = 0; n < NS; n++) dh[n] = (dh[n] + dy * Cv[n]) * expf(dtv * A[n]);
    }
    float *o = L + ((i64)b * nch + ch) * NS * Di + d;
#pragma unroll
    for (int n = 0; n < NS; n++) o[(i64)n * Di] = dh[n];
    sdt[((i64)b * nch + ch) * Di + d] = sum;
}

/* Backward, pass 2: thread (channel d, sequence b = blockIdx.y) carries dh over the chunks, last
 * first: E[ch] = dh at the end of chunk ch (0 for the last); dh = exp(A sdt[ch]) dh + L[ch]. */
extern "C" __global__ void m1_bwd_carry(const float *L, const float *sdt, const float *alog,
                                        float *E, int B, int Di, int nch) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
    if (d >= Di || b >= B) return;
    float A[NS], dh[NS];
#pragma unroll
    for (int n = 0; n < NS; n++) {
        A[n] = -expf(alog[(i64)d * NS + n]);
        dh[n] = 0.0f;
    }
    for (int ch = nch - 1; ch >= 0; ch--) {
        float *o = E + ((i64)b * nch + ch) * NS * Di + d;
#pragma unroll
        for (int n = 0; n < NS; n++) o[(i64)n * Di] = dh[n];
        if (ch == 0) break;
        const float sum = sdt[((i64)b * nch + ch) * Di + d];
        const float *l = L + ((i64)b * nch + ch) * NS * Di + d;
#pragma unroll
        for (int n = 0; n < NS; n++) dh[n] = expf(A[n] * sum) * dh[n] + l[(i64)n * Di];
    }
}

/* Backward, pass 3: the chunks of a wave in parallel. Block (blockIdx.x, sequence b = blockIdx.y,
 * chunk ch = cbase + blockIdx.z) = blockDim.x channels = whole x/B groups (gpb = blockDim.x /
 * (rep N) of them); threads past Di only take part in the barriers. The chunk's states are
 * recomputed from hb into S [B, gridDim.z, Lc, N, Di] (coalesced over channels), then the reverse
 * recurrence (mamba1_scan.c's equations) from dh = E[ch] (NULL: one chunk, dh = 0):
 *   gh = dh[n] + dys C[n]; dC[n] += dys h_t; ddt += gh (h_{t-1} a A + B[n] u);
 *   dA += gh h_{t-1} a dt; dB[n] += gh dt u; du += gh dt B[n] (+ D dys); dh[n] = gh a
 * writes ddt * softplus'(v) (= dv) and du * silu'(cpre) (= dcpre) per element, dB and dC into
 * dz's B and C columns (=, each element once), dA and dD per (b, chunk, channel) into
 * partA [B, nch, Di, N], partD [B, nch, Di]. Dynamic shared memory: 2 N (blockDim.x + 1) floats. */
extern "C" __global__ void m1_scan_bwd(const float *zxbc, const float *v, const float *cpre,
                                       const float *dys, const float *alog, const float *Dskip,
                                       const float *hb, const float *E, float *S, float *dz,
                                       float *ddt, float *dcpre, float *partA, float *partD,
                                       int B, int T, int Di, int Dx, int P, int rep, int chunk,
                                       int nch, int Lc, int cbase) {
    extern __shared__ float m1_sh[];
    const int CPB = blockDim.x, tid = threadIdx.x, b = blockIdx.y, stride = CPB + 1;
    const int ch = cbase + blockIdx.z, d = blockIdx.x * CPB + tid;
    if (ch >= nch) return; /* the whole block */
    const bool act = d < Di;
    const int dd = act ? d : 0;
    const int h = dd / NS, c = dd % NS, g = h / rep;
    const int nC = Di / NS, nX = Dx / NS, gpb = CPB / (rep * NS);
    float *shC = m1_sh, *shB = m1_sh + NS * stride;
    float A[NS], dh[NS], dA[NS], hc[NS];
#pragma unroll
    for (int n = 0; n < NS; n++) {
        A[n] = act ? -expf(alog[(i64)dd * NS + n]) : 0.0f;
        dh[n] = act && E ? E[((i64)b * nch + ch) * NS * Di + (i64)n * Di + dd] : 0.0f;
        dA[n] = 0.0f;
    }
    const float Dk = act ? Dskip[dd] : 0.0f;
    float dD = 0.0f;
    const int t0 = ch * chunk, t1 = t0 + chunk < T ? t0 + chunk : T;
    const float *h0 = hb + (((i64)b * nch + ch) * Di + (i64)h * NS) * NS + c; /* [n * NS] */
    float *Sb = S + ((i64)b * gridDim.z + blockIdx.z) * Lc * NS * Di + dd;
    if (act) { /* recompute the chunk's states */
#pragma unroll
        for (int n = 0; n < NS; n++) hc[n] = h0[n * NS];
        for (int t = t0; t < t1; t++) {
            const i64 r = (i64)b * T + t, e = r * Di + d;
            const float dtv = m1_softplus(v[e]), uv = m1_silu(cpre[e]), dtu = dtv * uv;
            const float *Bv = zxbc + r * P + Di + Dx + g * NS;
            float *o = Sb + (i64)(t - t0) * NS * Di;
#pragma unroll
            for (int n = 0; n < NS; n++) {
                hc[n] = expf(dtv * A[n]) * hc[n] + dtu * Bv[n];
                o[(i64)n * Di] = hc[n];
            }
        }
    }
    for (int t = t1 - 1; t >= t0; t--) {
        const i64 r = (i64)b * T + t;
        if (act) {
            const i64 e = r * Di + d;
            /* h_t and h_{t-1} (the chunk start at t0), loaded as used: fewer live registers */
            const float *cur = Sb + (i64)(t - t0) * NS * Di;
            const float *prv = t > t0 ? cur - (i64)NS * Di : h0;
            const i64 ps = t > t0 ? Di : NS;
            const float vv = v[e], cp = cpre[e];
            const float dtv = m1_softplus(vv), uv = m1_silu(cp), dy = dys[e];
            const float *Bv = zxbc + r * P + Di + Dx + g * NS,
                        *Cv = zxbc + r * P + Di + 2 * Dx + h * NS;
            float gdt = 0.0f, guc = Dk * dy;
            const float dtu = dtv * uv;
            dD += dy * uv;
#pragma unroll
            for (int n = 0; n < NS; n++) {
                const float a = expf(dtv * A[n]), bn = Bv[n];
                const float hcn = cur[(i64)n * Di], hpn = prv[n * ps];
                const float gh = dh[n] + dy * Cv[n];
                shC[n * stride + tid] = dy * hcn;
                gdt += gh * (hpn * a * A[n] + bn * uv);
                dA[n] += gh * hpn * a * dtv;
                shB[n * stride + tid] = gh * dtu;
                guc += gh * dtv * bn;
                dh[n] = gh * a;
            }
            ddt[e] = gdt * m1_dsoftplus(vv);
            dcpre[e] = guc * m1_dsilu(cp);
        }
        __syncthreads();
        { /* dC: one thread per (head of the block, n), summed over the head's channels */
            const int lh = tid / NS, n = tid % NS, hh = blockIdx.x * (CPB / NS) + lh;
            if (hh < nC) {
                float sc = 0.0f;
                for (int k = 0; k < NS; k++) sc += shC[n * stride + lh * NS + k];
                dz[r * P + Di + 2 * Dx + (i64)hh * NS + n] = sc;
            }
        }
        if (tid < gpb * NS) { /* dB: one thread per (group of the block, n), head by head */
            const int lg = tid / NS, n = tid % NS, gg = blockIdx.x * gpb + lg;
            if (gg < nX) {
                float tot = 0.0f;
                for (int j = 0; j < rep; j++) {
                    float sb = 0.0f;
                    for (int k = 0; k < NS; k++) sb += shB[n * stride + (lg * rep + j) * NS + k];
                    tot += sb;
                }
                dz[r * P + Di + Dx + (i64)gg * NS + n] = tot;
            }
        }
        __syncthreads();
    }
    if (act) {
        const i64 pc = (i64)b * nch + ch;
#pragma unroll
        for (int n = 0; n < NS; n++) partA[(pc * Di + d) * NS + n] = dA[n];
        partD[pc * Di + d] = dD;
    }
}

/* gAlog[d, n] += (sum_p partA[p, d, n]) * A[d, n], A = -exp(A_log); gD[d] += sum_p partD[p, d];
 * p over the B * nch (sequence, chunk) partials */
extern "C" __global__ void m1_reduce_dA(const float *partA, const float *partD, const float *alog,
                                        float *gAlog, float *gD, int B, int Di) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= (i64)Di * NS) return;
    float acc = 0.0f;
    for (int b = 0; b < B; b++) acc += partA[(i64)b * Di * NS + i];
    gAlog[i] += acc * -expf(alog[i]);
    if (i % NS == 0) {
        const i64 d = i / NS;
        float ad = 0.0f;
        for (int b = 0; b < B; b++) ad += partD[(i64)b * Di + d];
        gD[d] += ad;
    }
}

/* out[c] += scale * sum_r x[r, c], x: [rows, cols]. One thread per column (coalesced over a row);
 * blockIdx.y takes rows_per_chunk rows, chunks combined by atomics when there are several. */
extern "C" __global__ void m1_colsum(const float *x, float *out, i64 rows, int cols, float scale,
                                     i64 rows_per_chunk) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= cols) return;
    const i64 r0 = blockIdx.y * rows_per_chunk;
    const i64 r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    float acc = 0.0f;
    for (i64 r = r0; r < r1; r++) acc += scale * x[r * cols + col];
    if (gridDim.y == 1)
        out[col] += acc;
    else
        atomicAdd(out + col, acc);
}

/* The conv's parameter gradients: thread (k, d), k < K: gcw[d, k] += sum over rows of
 * dcpre[b, t, d] x_rep[b, t - K + 1 + k, d] (zero history: training starts at pos 0); k == K:
 * gcb[d] += sum dcpre. blockIdx.y: chunks of rows_per_chunk rows (atomics when several). */
extern "C" __global__ void m1_conv_bwd_w(const float *dcpre, const float *zxbc, float *gcw,
                                         float *gcb, int B, int T, int Di, int P, int K, int rep,
                                         i64 rows_per_chunk) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= (i64)(K + 1) * Di) return;
    const int k = (int)(i / Di), d = (int)(i - (i64)k * Di);
    const i64 rows = (i64)B * T, r0 = blockIdx.y * rows_per_chunk;
    const i64 r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    const int xc = Di + m1_xcol(d, rep);
    float acc = 0.0f;
    for (i64 r = r0; r < r1; r++) {
        const float gc = dcpre[r * Di + d];
        if (k == K) {
            acc += gc;
            continue;
        }
        const int t = (int)(r % T), j = t - (K - 1) + k;
        if (j >= 0) acc += gc * zxbc[(r - t + j) * P + xc];
    }
    float *o = k == K ? gcb + d : gcw + (i64)d * K + k;
    if (gridDim.y == 1)
        *o += acc;
    else
        atomicAdd(o, acc);
}

/* The conv's input gradient: dz[b, t, Di + s] += sum over the rep channels d of x column s and
 * the taps k of dcpre[b, t + K - 1 - k, d] w[d, k] (gather: one thread per (row, x column)). */
extern "C" __global__ void m1_conv_bwd_x(const float *dcpre, const float *cw, float *dz, int B,
                                         int T, int Di, int Dx, int P, int K, int rep) {
    const i64 total = (i64)B * T * Dx;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / Dx;
        const int s = (int)(e - r * Dx), t = (int)(r % T);
        const int g = s / NS, sl = s % NS;
        float acc = 0.0f;
        for (int j = 0; j < rep; j++) {
            const int d = (g * rep + j) * NS + sl;
            for (int k = 0; k < K; k++) {
                const int tp = t + (K - 1) - k; /* the output that read this input at tap k */
                if (tp < T) acc += dcpre[(r + (tp - t)) * Di + d] * cw[(i64)d * K + k];
            }
        }
        dz[r * P + Di + s] += acc;
    }
}

/* The states of up to M1_SEQ_MAX sequences, passed by value to m1_decode (a kernel parameter:
 * no upload and no synchronisation per decode step). The host's hyb_ssm_seqs
 * (plugins/common/ssm_util.h) has the same layout. */
#define M1_SEQ_MAX 64
struct m1_seqs {
    float *p[M1_SEQ_MAX]; /* device pointers to the decode states */
    int cont[M1_SEQ_MAX]; /* pos > 0: the state holds tokens; else it starts from zero */
};

/* One decode step, one thread per (sequence i = i0 + blockIdx.y, channel d), on the state in
 * place: state = ssm [Di, N] then conv window [Di, K] (mamba1.h), sq.p[blockIdx.y]; both start at
 * 0 when !sq.cont[blockIdx.y] (pos 0).
 * v: [n, Di] dt_proj output without bias; ys: [n, Di] written, the gated y (out_proj's input). */
extern "C" __global__ void m1_decode(const float *zxbc, const float *v, const float *cw,
                                     const float *cb, const float *bdt, const float *alog,
                                     const float *Dskip, const __grid_constant__ m1_seqs sq,
                                     int i0, float *ys, int n, int Di, int Dx, int P, int K,
                                     int rep, int dbl) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x, i = i0 + blockIdx.y;
    if (d >= Di || i >= n || blockIdx.y >= M1_SEQ_MAX) return;
    float *const st = sq.p[blockIdx.y];
    const int h = d / NS, g = h / rep, cn = sq.cont[blockIdx.y];
    float *ssm = st + (i64)d * NS, *w = st + (i64)Di * NS + (i64)d * K;
    const float *zr = zxbc + (i64)i * P;
    const float bd = bdt[d], v0 = v[(i64)i * Di + d];
    const float dtv = m1_softplus(dbl ? v0 + (bd + bd) : v0 + bd);
    for (int k = 0; k + 1 < K; k++) w[k] = cn ? w[k + 1] : 0.0f;
    w[K - 1] = zr[Di + m1_xcol(d, rep)];
    float acc = cb[d];
    for (int k = 0; k < K; k++) acc += cw[(i64)d * K + k] * w[k];
    const float uv = m1_silu(acc), dtu = dtv * uv;
    const float *Bv = zr + Di + Dx + g * NS, *Cv = zr + Di + 2 * Dx + h * NS;
    float y = 0.0f;
#pragma unroll
    for (int k = 0; k < NS; k++) {
        const float A = -expf(alog[(i64)d * NS + k]);
        const float hn = expf(dtv * A) * (cn ? ssm[k] : 0.0f) + dtu * Bv[k];
        ssm[k] = hn;
        y += hn * Cv[k];
    }
    y += Dskip[d] * uv;
    ys[(i64)i * Di + d] = y * m1_silu(zr[d]);
}
