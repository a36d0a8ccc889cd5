/* plugins/common/deltanet.cu: the CUDA kernels of the `deltanet` and `gated_deltanet` mixers
 * (embedded into both plugins at build time as hyb_cu_deltanet_cu, compiled by NVRTC through
 * be->kernel, run on the emulated device in the tests). Host side: plugins/common/deltanet_impl.h
 * (dn_cu_*). Same arithmetic, buffers, saved layout and state layout as the CPU kernels of
 * deltanet_impl.h / deltanet_core.h; f32 storage and accumulation; no -D options (head size,
 * chunk and slab width are run-time arguments, shared memory is sized by the launch).
 *
 * Notation: C = H n channels, rows r = b T + t of every [B*T, C] / [B*T, H] buffer, state
 * S [n (key m), n (value j)] per (sequence, head), row-major.
 *
 * Element-wise / per-head kernels (one block per (row, head[, stream]), threads over the n
 * channels of the head, block reductions by warp shuffles + shared memory):
 *   dn_conv_act     causal depthwise conv (window of the state when continuing), silu, L2 norm of
 *                   q/k times the q scale; optionally keeps the pre-activation (backward)
 *   dn_window       the new conv windows of the state (after dn_conv_act read the old ones)
 *   dn_norm_gate    z = RMSNorm_head(o) w silu(gp)
 *   dn_norm_gate_bwd, dn_beta_gate_bwd, dn_act_bwd, dn_conv_bwd_x, dn_conv_bwd_w, dn_colsum:
 *                   the chain rule of the same steps (parameter gradients through per-row
 *                   partials summed over rows by dn_colsum: deterministic, no atomics)
 *
 * The recurrence. Columns j of S evolve independently (u_t = S^T k_t, w_t, o_t = S_t^T q_t are
 * per column), so a block owns a slab of bv value columns of one (sequence, head): grid
 * (B H, ceil(n / bv)), the slab S[:, j0:j0+bv] in shared memory for the whole sequence.
 *
 * dn_chunk_fwd (training forward, prefill, decode): sub-chunks of cl <= cc tokens that never
 * cross a `chunk` boundary (the checkpoints of the saved block are at every chunk start, as on the
 * CPU); per sub-chunk, with Gam = cumsum(g) and L_ij = exp(Gam_i - Gam_j):
 *   A_ij  = beta_i (k_i . k_j) L_ij (j < i),  QK_ij = (q_i . k_j) L_ij (j <= i)     [cl x cl]
 *   KS = K S, QS = Q S (the slab's columns)                                       [cl x bv]
 *   v_new_i = beta_i (v_i - exp(Gam_i) KS_i) - sum_{j<i} A_ij v_new_j   (UT form: forward
 *             substitution, one thread per column, no inverse; this is U - W S of the CPU's WY
 *             form without materialising W, which would be the full [cl, n] on every slab)
 *   o_i = exp(Gam_i) QS_i + sum_{j<=i} QK_ij v_new_j
 *   S  <- exp(Gam_last) S + sum_j exp(Gam_last - Gam_j) k_j v_new_j^T
 * A decode step is the same kernel with cl = 1 (the recurrent step).
 *
 * dn_chunk_bwd: the CPU's backward (deltanet_core.h dn_core_backward) per slab: chunks in
 * reverse; the states inside a chunk are recomputed token by token from the saved checkpoint into
 * a global scratch [min(chunk, T) + 1, n, bv] per block (the host launches the (sequence, head)
 * pairs in waves so that scratch stays bounded), then the tokens are reversed with dS [n, bv] in
 * shared memory. Column-local results (dv) are written; the sums over columns (dq, dk, dbeta, dg)
 * are written per slab and summed by the consumers (dn_act_bwd, dn_beta_gate_bwd).
 *
 * Sizes (host, dn_cu_plan): bv = min(32, n / 2, 4096 / n) (at least 1: head_dim 8 -> 2 slabs,
 * 128 -> 4 of 32, 512 -> 64 of 8), threads = n bv / 4 rounded to 32..128, cc = the largest
 * sub-chunk whose shared memory fits 48 KiB (head_dim 64: 34, 128: 20; no opt-in attribute is
 * needed). Every kernel strides over its elements with blockDim.x (a multiple of 32) threads, so
 * any head size / slab / chunk works. States reach the kernels by value (struct dn_seqs): a
 * decode step uploads nothing and never synchronises.
 *
 * Not done yet: bf16/f16 storage (the models are f32), tensor cores for the [cl x n] products
 * (A, QK, KS, QS are scalar FMA loops), a WY-form chunked backward (the backward is the CPU's
 * token-recurrent one, parallel over (sequence, head, slab) only).
 */

#define DN_L2_EPS 1e-6f

__device__ __forceinline__ float dn_sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ float dn_softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

/* sum over the block (blockDim.x a multiple of 32); every thread gets the same value. red: >= 32
 * floats of shared memory, free on entry (a barrier protects its reuse). */
__device__ float dn_block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int wid = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < nw; i++) s += red[i];
    return s;
}

/* decay of token row r, head h: g = -exp(A_log) softplus(Al + dt_bias) (0 without gating) */
__device__ __forceinline__ float dn_gate(const float *Al, const float *A_log, const float *dt_bias,
                                         long long r, int H, int h) {
    return Al ? -expf(A_log[h]) * dn_softplus(Al[r * H + h] + dt_bias[h]) : 0.0f;
}

/* The sequences of one launch that has decode states, passed by value (kernel parameter space:
 * no upload, so a prefill or decode step never waits for a copy): sequence b = b0 + i of B,
 * i < nb <= DN_SEQS (the host launches larger batches in groups). deltanet_impl.h has the same
 * struct (dn_cu_seqs). */
#define DN_SEQS 64
struct dn_seqs {
    unsigned long long S[DN_SEQS]; /* S [H, n, n] of the state */
    unsigned long long W[DN_SEQS]; /* its conv windows [3][C][K-1] */
    int cont[DN_SEQS];             /* 1: continue the state (pos > 0), 0: start from zeros */
    int b0, nb;                    /* nb == 0: no states (all B sequences, zero windows) */
};

/* grid (rows, H, 3): rows b0 T .. (b0 + nb) T - 1 (nb == 0: all B T), block: threads over the
 * head's n channels. raw: [3][B*T, C] (Qr, Kr, Vr consecutive, as in the saved block); w: the
 * three conv weights [C, K]; post: [3][B*T, C]; pre: [3][B*T, C] or NULL. */
extern "C" __launch_bounds__(128) __global__ void dn_conv_act(
    const float *raw, const float *wq, const float *wk, const float *wv, float *post, float *pre,
    const dn_seqs sq, int B, int T, int H, int n, int K, float qscale) {
    __shared__ float red[32];
    const int s = blockIdx.z, h = blockIdx.y;
    const long long r = (long long)sq.b0 * T + blockIdx.x, BT = (long long)B * T,
                    C = (long long)H * n;
    const int b = (int)(r / T), t = (int)(r % T), W = K - 1, bl = b - sq.b0;
    const float *xr = raw + s * BT * C + (long long)b * T * C;
    const float *wc = s == 0 ? wq : s == 1 ? wk : wv;
    const float *win = nullptr;
    if (bl < sq.nb && sq.cont[bl] && sq.W[bl])
        win = (const float *)(size_t)sq.W[bl] + (long long)s * C * W;
    float *po = post + s * BT * C + r * C + (long long)h * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const long long c = (long long)h * n + i;
        float acc = 0.0f;
        for (int j = 0; j < K; j++) {
            const int tau = t - W + j;
            const float xv = tau >= 0 ? xr[(long long)tau * C + c]
                                      : (win ? win[c * W + W + tau] : 0.0f);
            acc += (wc ? wc[c * K + j] : 1.0f) * xv; /* wc NULL (no short conv): K = 1, xv */
        }
        if (pre) pre[s * BT * C + r * C + c] = acc;
        const float a = acc * dn_sigmoid(acc);
        po[i] = a;
        ss += a * a;
    }
    if (s == 2) return; /* v: silu only (uniform over the block: no barrier skipped by some) */
    ss = dn_block_sum(ss, red);
    const float rs = (s == 0 ? qscale : 1.0f) / sqrtf(ss + DN_L2_EPS);
    for (int i = threadIdx.x; i < n; i += blockDim.x) po[i] *= rs;
}

/* the new windows [3][C][K-1] of the launch's states after T raw inputs; one thread per (b, s,
 * channel), in place (entry i reads old entry i + T > i before it is written) */
extern "C" __global__ void dn_window(const float *raw, const dn_seqs sq, int B, int T, int C,
                                     int K) {
    const int W = K - 1;
    const long long BT = (long long)B * T;
    const long long tot = (long long)sq.nb * 3 * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < tot;
         e += (long long)gridDim.x * blockDim.x) {
        const int bl = (int)(e / (3LL * C)), b = sq.b0 + bl, s = (int)(e / C % 3);
        const long long c = e % C;
        float *win = (float *)(size_t)sq.W[bl] + (long long)s * C * W + c * W;
        const int cont = sq.cont[bl];
        const float *xr = raw + s * BT * C + (long long)b * T * C;
        for (int i = 0; i < W; i++) {
            const int tau = T - W + i;
            win[i] = tau >= 0 ? xr[(long long)tau * C + c] : (cont ? win[W + tau] : 0.0f);
        }
    }
}

/* grid (B*T, H): Z = RMSNorm_head(O) w silu(Gp) (Gp NULL: use_gate off, no silu(Gp) factor) */
extern "C" __launch_bounds__(128) __global__ void dn_norm_gate(const float *O, const float *Gp,
                                                               const float *w, float *Z, int H,
                                                               int n, float eps) {
    __shared__ float red[32];
    const long long off = ((long long)blockIdx.x * H + blockIdx.y) * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += O[off + i] * O[off + i];
    ss = dn_block_sum(ss, red);
    const float rs = 1.0f / sqrtf(ss / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (Gp) {
            const float gp = Gp[off + i];
            Z[off + i] = O[off + i] * rs * w[i] * gp * dn_sigmoid(gp);
        } else {
            Z[off + i] = O[off + i] * rs * w[i];
        }
    }
}

/* The chunked forward. grid (sequences x H, ceil(n/bv)): Sall non-NULL: all B sequences, S of
 * sequence b at Sall + b H n n starting from zeros (training, no states); else the nb sequences
 * of sq. Dynamic shared memory (n bv + 2 cc n + 3 cc bv + 2 cc cc + 4 cc) floats. Qn, Kn, Vn, O:
 * [B*T, C]; Bl, Al: [B*T, H] (Al NULL: no gating); CHK: [B, H, nch, n, n] or NULL. */
extern "C" __launch_bounds__(128) __global__ void dn_chunk_fwd(
    const float *Qn, const float *Kn, const float *Vn, const float *Bl, const float *Al,
    const float *A_log, const float *dt_bias, float *O, float *CHK, float *Sall, const dn_seqs sq,
    int B, int T, int H, int n, int bv, int cc, int chunk, int nch, float bscale) {
    extern __shared__ float dn_smem[];
    const int bl = blockIdx.x / H, h = blockIdx.x % H, b = (Sall ? 0 : sq.b0) + bl,
              bh = b * H + h, j0 = blockIdx.y * bv;
    const int wcols = n - j0 < bv ? n - j0 : bv, tid = threadIdx.x, NT = blockDim.x;
    const long long C = (long long)H * n, nn = (long long)n * n;
    float *S = dn_smem, *Kc = S + n * bv, *Qc = Kc + cc * n, *V = Qc + cc * n, *KS = V + cc * bv,
          *QS = KS + cc * bv, *A = QS + cc * bv, *QK = A + cc * cc, *Gam = QK + cc * cc,
          *Bt = Gam + cc, *eG = Bt + cc, *dL = eG + cc;
    float *Sg = Sall ? Sall + (long long)bh * nn : (float *)(size_t)sq.S[bl] + (long long)h * nn;
    const int cont = Sall ? 0 : sq.cont[bl];
    for (int e = tid; e < n * bv; e += NT) {
        const int m = e / bv, jj = e % bv;
        S[e] = cont && jj < wcols ? Sg[(long long)m * n + j0 + jj] : 0.0f;
    }
    for (int t0 = 0; t0 < T;) {
        int cl = T - t0 < cc ? T - t0 : cc;
        const int tc = chunk - t0 % chunk; /* tokens left in this chunk */
        if (cl > tc) cl = tc;
        __syncthreads(); /* S complete; the previous sub-chunk's buffers are free */
        if (CHK && t0 % chunk == 0) {
            float *ck = CHK + ((long long)bh * nch + t0 / chunk) * nn;
            for (int e = tid; e < n * bv; e += NT) {
                const int m = e / bv, jj = e % bv;
                if (jj < wcols) ck[(long long)m * n + j0 + jj] = S[e];
            }
        }
        for (int e = tid; e < cl * n; e += NT) {
            const long long row = ((long long)b * T + t0 + e / n) * C + (long long)h * n + e % n;
            Kc[e] = Kn[row];
            Qc[e] = Qn[row];
        }
        for (int e = tid; e < cl * bv; e += NT) {
            const int i = e / bv, jj = e % bv;
            const long long row = ((long long)b * T + t0 + i) * C + (long long)h * n;
            V[e] = jj < wcols ? Vn[row + j0 + jj] : 0.0f;
        }
        for (int i = tid; i < cl; i += NT) {
            const long long r = (long long)b * T + t0 + i;
            Bt[i] = bscale * dn_sigmoid(Bl[r * H + h]);
            Gam[i] = dn_gate(Al, A_log, dt_bias, r, H, h);
        }
        __syncthreads();
        if (tid == 0) {
            float acc = 0.0f;
            for (int i = 0; i < cl; i++) {
                acc += Gam[i];
                Gam[i] = acc;
            }
            for (int i = 0; i < cl; i++) {
                eG[i] = expf(Gam[i]);
                dL[i] = expf(acc - Gam[i]);
            }
        }
        __syncthreads();
        for (int e = tid; e < cl * cl; e += NT) {
            const int i = e / cl, j = e % cl;
            if (j > i) continue;
            float kk = 0.0f, qk = 0.0f;
            for (int m = 0; m < n; m++) {
                kk += Kc[i * n + m] * Kc[j * n + m];
                qk += Qc[i * n + m] * Kc[j * n + m];
            }
            const float L = expf(Gam[i] - Gam[j]);
            A[i * cc + j] = j < i ? Bt[i] * kk * L : 0.0f;
            QK[i * cc + j] = qk * L;
        }
        for (int e = tid; e < cl * bv; e += NT) {
            const int i = e / bv, jj = e % bv;
            float ks = 0.0f, qs = 0.0f;
            for (int m = 0; m < n; m++) {
                ks += Kc[i * n + m] * S[m * bv + jj];
                qs += Qc[i * n + m] * S[m * bv + jj];
            }
            KS[e] = ks;
            QS[e] = qs;
        }
        __syncthreads();
        /* forward substitution, one thread per column: V becomes v_new */
        for (int jj = tid; jj < bv; jj += NT)
            for (int i = 0; i < cl; i++) {
                float x = Bt[i] * (V[i * bv + jj] - eG[i] * KS[i * bv + jj]);
                for (int j = 0; j < i; j++) x -= A[i * cc + j] * V[j * bv + jj];
                V[i * bv + jj] = x;
            }
        __syncthreads();
        for (int e = tid; e < cl * bv; e += NT) {
            const int i = e / bv, jj = e % bv;
            if (jj >= wcols) continue;
            float o = eG[i] * QS[e];
            for (int j = 0; j <= i; j++) o += QK[i * cc + j] * V[j * bv + jj];
            O[((long long)b * T + t0 + i) * C + (long long)h * n + j0 + jj] = o;
        }
        const float el = eG[cl - 1];
        for (int e = tid; e < n * bv; e += NT) {
            const int m = e / bv, jj = e % bv;
            float x = el * S[e];
            for (int j = 0; j < cl; j++) x += dL[j] * Kc[j * n + m] * V[j * bv + jj];
            S[e] = x;
        }
        t0 += cl;
    }
    __syncthreads();
    for (int e = tid; e < n * bv; e += NT) {
        const int m = e / bv, jj = e % bv;
        if (jj < wcols) Sg[(long long)m * n + j0 + jj] = S[e];
    }
}

/* The backward of the recurrence. grid (pairs in this wave, ceil(n/bv)), pair bh = bh0 +
 * blockIdx.x; dynamic shared memory (n bv + 2 n + 6 bv) floats. Sscr: per block
 * (min(chunk, T) + 1) n bv floats. dQp, dKp: [nslab][B*T, C] per-slab parts of dq, dk; dV
 * [B*T, C] written; dBp, dGp: [nslab][B*T, H] per-slab parts of dbeta and of dg (the latter
 * already times the decay a). */
extern "C" __launch_bounds__(128) __global__ void dn_chunk_bwd(
    const float *Qn, const float *Kn, const float *Vn, const float *Bl, const float *Al,
    const float *A_log, const float *dt_bias, const float *dO, const float *CHK, float *Sscr,
    float *dQp, float *dKp, float *dV, float *dBp, float *dGp, int B, int T, int H, int n, int bv,
    int chunk, int nch, int bh0, float bscale) {
    extern __shared__ float dn_smem[];
    __shared__ float red[32];
    const int bh = bh0 + blockIdx.x, b = bh / H, h = bh % H, slab = blockIdx.y, j0 = slab * bv;
    const int wcols = n - j0 < bv ? n - j0 : bv, tid = threadIdx.x, NT = blockDim.x;
    const long long C = (long long)H * n, nn = (long long)n * n, BT = (long long)B * T,
                    nbv = (long long)n * bv;
    float *dS = dn_smem, *q = dS + nbv, *k = q + n, *dov = k + n, *vv = dov + bv, *u = vv + bv,
          *w = u + bv, *dw = w + bv, *du = dw + bv;
    const int cmax = chunk < T ? chunk : T;
    float *St = Sscr + ((long long)blockIdx.x * gridDim.y + slab) * (cmax + 1) * nbv;
    float *dQs = dQp + slab * BT * C, *dKs = dKp + slab * BT * C, *dBs = dBp + slab * BT * H,
          *dGs = dGp + slab * BT * H;
    for (int e = tid; e < nbv; e += NT) dS[e] = 0.0f;
    for (int ci = nch - 1; ci >= 0; ci--) {
        const int t0 = ci * chunk, cl = T - t0 < chunk ? T - t0 : chunk;
        const float *ck = CHK + ((long long)bh * nch + ci) * nn;
        for (int e = tid; e < nbv; e += NT) {
            const int m = e / bv, jj = e % bv;
            St[e] = jj < wcols ? ck[(long long)m * n + j0 + jj] : 0.0f;
        }
        /* St[i+1] = the state after token t0 + i (the recurrent step, as the CPU recomputes) */
        for (int i = 0; i < cl; i++) {
            const long long r = (long long)b * T + t0 + i, ro = r * C + (long long)h * n;
            __syncthreads();
            for (int m = tid; m < n; m += NT) k[m] = Kn[ro + m];
            for (int jj = tid; jj < bv; jj += NT) vv[jj] = jj < wcols ? Vn[ro + j0 + jj] : 0.0f;
            __syncthreads();
            const float be = bscale * dn_sigmoid(Bl[r * H + h]),
                        a = Al ? expf(dn_gate(Al, A_log, dt_bias, r, H, h)) : 1.0f;
            const float *Sp = St + i * nbv;
            float *Sc = St + (i + 1) * nbv;
            for (int jj = tid; jj < bv; jj += NT) {
                float x = 0.0f;
                for (int m = 0; m < n; m++) x += k[m] * Sp[m * bv + jj];
                w[jj] = be * (vv[jj] - a * x);
            }
            __syncthreads();
            for (int e = tid; e < nbv; e += NT) Sc[e] = a * Sp[e] + k[e / bv] * w[e % bv];
        }
        for (int i = cl - 1; i >= 0; i--) {
            const long long r = (long long)b * T + t0 + i, ro = r * C + (long long)h * n;
            const float *Sp = St + i * nbv, *Sc = St + (i + 1) * nbv;
            const float be = bscale * dn_sigmoid(Bl[r * H + h]),
                        a = Al ? expf(dn_gate(Al, A_log, dt_bias, r, H, h)) : 1.0f;
            __syncthreads();
            for (int m = tid; m < n; m += NT) {
                k[m] = Kn[ro + m];
                q[m] = Qn[ro + m];
            }
            for (int jj = tid; jj < bv; jj += NT) {
                vv[jj] = jj < wcols ? Vn[ro + j0 + jj] : 0.0f;
                dov[jj] = jj < wcols ? dO[ro + j0 + jj] : 0.0f;
            }
            __syncthreads();
            for (int e = tid; e < nbv; e += NT) dS[e] += q[e / bv] * dov[e % bv];
            __syncthreads();
            for (int m = tid; m < n; m += NT) {
                float x = 0.0f;
                for (int jj = 0; jj < bv; jj++) x += Sc[m * bv + jj] * dov[jj];
                dQs[ro + m] = x;
            }
            for (int jj = tid; jj < bv; jj += NT) {
                float x = 0.0f, y = 0.0f;
                for (int m = 0; m < n; m++) {
                    x += k[m] * Sp[m * bv + jj];
                    y += k[m] * dS[m * bv + jj];
                }
                u[jj] = x;
                dw[jj] = y;
            }
            __syncthreads();
            float dbt = 0.0f, dwu = 0.0f;
            for (int jj = tid; jj < bv; jj += NT) {
                w[jj] = be * (vv[jj] - a * u[jj]);
                du[jj] = -a * be * dw[jj];
                if (jj < wcols) dV[ro + j0 + jj] = be * dw[jj];
                dbt += dw[jj] * (vv[jj] - a * u[jj]);
                dwu += dw[jj] * u[jj];
            }
            dbt = dn_block_sum(dbt, red); /* its barriers also publish w and du */
            dwu = dn_block_sum(dwu, red);
            float da = 0.0f;
            for (int e = tid; e < nbv; e += NT) da += dS[e] * Sp[e];
            for (int m = tid; m < n; m += NT) {
                float x = 0.0f, y = 0.0f;
                for (int jj = 0; jj < bv; jj++) {
                    x += dS[m * bv + jj] * w[jj];
                    y += Sp[m * bv + jj] * du[jj];
                }
                dKs[ro + m] = x + y;
            }
            da = dn_block_sum(da, red);
            if (tid == 0) {
                dBs[r * H + h] = dbt;
                dGs[r * H + h] = a * (da - be * dwu);
            }
            for (int e = tid; e < nbv; e += NT) dS[e] = a * dS[e] + k[e / bv] * du[e % bv];
        }
    }
}

/* grid (B*T, H): the backward of z = o r w silu(gp), r = 1/sqrt(|o|^2/n + eps): dGp and dO
 * written, Pn [B*T*H, n] the rows' parts of dw (summed by dn_colsum) */
extern "C" __launch_bounds__(128) __global__ void dn_norm_gate_bwd(
    const float *O, const float *Gp, const float *w, const float *dZ, float *dGp, float *dO,
    float *Pn, int H, int n, float eps) {
    __shared__ float red[32];
    const long long off = ((long long)blockIdx.x * H + blockIdx.y) * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += O[off + i] * O[off + i];
    ss = dn_block_sum(ss, red);
    const float rs = 1.0f / sqrtf(ss / n + eps);
    float dot = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float o = O[off + i], dz = dZ[off + i];
        float si = 1.0f; /* Gp NULL (use_gate off): no gate factor, dGp not written */
        if (Gp) {
            const float gp = Gp[off + i];
            const float sg = dn_sigmoid(gp), nv = o * rs * w[i];
            si = gp * sg;
            dGp[off + i] = dz * nv * sg * (1.0f + gp * (1.0f - sg));
        }
        const float dn_ = dz * si;
        Pn[off + i] = dn_ * o * rs;
        dO[off + i] = dn_ * w[i];
        dot += dO[off + i] * o;
    }
    dot = dn_block_sum(dot, red);
    const float k3 = dot * rs * rs * rs / n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        dO[off + i] = rs * dO[off + i] - k3 * O[off + i];
}

/* Column sums in two deterministic passes (no atomics): grid (ceil(cols/blockDim), nparts), block
 * y sums rows [y rpb, (y+1) rpb) of column c; acc = 0: written to dst[y cols + c] (the partial
 * sums), acc = 1: added to dst[c] (then gridDim.y == 1). */
extern "C" __global__ void dn_colsum(const float *src, float *dst, long long rows, int cols,
                                     long long rpb, int acc) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const long long r0 = blockIdx.y * rpb, r1 = r0 + rpb < rows ? r0 + rpb : rows;
    float s = 0.0f;
    for (long long r = r0; r < r1; r++) s += src[r * cols + c];
    if (acc)
        dst[c] += s;
    else
        dst[(long long)blockIdx.y * cols + c] = s;
}

/* i over B*T*H: dbeta and dg summed over the slabs; beta = bscale s, s = sigmoid(Bl) (bscale 2:
 * allow_neg_eigval), dBl = dbeta bscale s (1 - s); gated:
 * dAl = dg * d(g)/d(Al), pA = dg g (-> dA_log), pD = dAl (-> ddt_bias) */
extern "C" __global__ void dn_beta_gate_bwd(const float *Bl, const float *Al, const float *A_log,
                                            const float *dt_bias, const float *dBp,
                                            const float *dGp, int nslab, long long BTH, int H,
                                            float *dBl, float *dAl, float *pA, float *pD,
                                            float bscale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < BTH;
         i += (long long)gridDim.x * blockDim.x) {
        float db = 0.0f;
        for (int s = 0; s < nslab; s++) db += dBp[s * BTH + i];
        const float be = dn_sigmoid(Bl[i]);
        dBl[i] = db * (bscale * (be * (1.0f - be)));
        if (Al) {
            const int h = (int)(i % H);
            float dg = 0.0f;
            for (int s = 0; s < nslab; s++) dg += dGp[s * BTH + i];
            const float eA = expf(A_log[h]), zz = Al[i] + dt_bias[h];
            pA[i] = dg * (-eA * dn_softplus(zz));
            const float da = -dg * eA * dn_sigmoid(zz);
            pD[i] = da;
            dAl[i] = da;
        }
    }
}

/* grid (B*T, H, 3): through the L2 norm (q, k: d summed over the slabs of dP) and the silu;
 * D: [3][B*T, C], D[0..1] written, D[2] (dv) in place; pre: [3][B*T, C] */
extern "C" __launch_bounds__(128) __global__ void dn_act_bwd(const float *dP, int nslab,
                                                             const float *pre, float *D, int B,
                                                             int T, int H, int n, float qscale) {
    __shared__ float red[32];
    const int s = blockIdx.z;
    const long long BT = (long long)B * T, C = (long long)H * n;
    const long long off = (long long)blockIdx.x * C + (long long)blockIdx.y * n;
    const float *p = pre + s * BT * C + off;
    float *d = D + s * BT * C + off;
    if (s < 2) {
        const float *dp = dP + (long long)s * nslab * BT * C + off;
        float aa = 0.0f, ad = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float x = 0.0f;
            for (int sl = 0; sl < nslab; sl++) x += dp[sl * BT * C + i];
            d[i] = x;
            const float av = p[i] * dn_sigmoid(p[i]);
            aa += av * av;
            ad += av * x;
        }
        aa = dn_block_sum(aa, red);
        ad = dn_block_sum(ad, red);
        const float rr = 1.0f / sqrtf(aa + DN_L2_EPS), sc = s == 0 ? qscale : 1.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const float av = p[i] * dn_sigmoid(p[i]);
            d[i] = sc * (rr * d[i] - av * rr * rr * rr * ad);
        }
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float sg = dn_sigmoid(p[i]);
        d[i] *= sg * (1.0f + p[i] * (1.0f - sg));
    }
}

/* e over 3*B*T*C: draw[s][b, t, c] = sum_j d[s][b, t + K-1-j, c] w_s[c, j] (the conv's input
 * gradient; zero window: training runs whole sequences) */
extern "C" __global__ void dn_conv_bwd_x(const float *D, const float *wq, const float *wk,
                                         const float *wv, float *draw, int B, int T, int C, int K) {
    const long long BT = (long long)B * T, tot = 3 * BT * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < tot;
         e += (long long)gridDim.x * blockDim.x) {
        const int s = (int)(e / (BT * C));
        const long long rc = e % (BT * C), r = rc / C, c = rc % C;
        const int t = (int)(r % T);
        const float *wc = s == 0 ? wq : s == 1 ? wk : wv, *d = D + s * BT * C;
        float acc = 0.0f;
        for (int j = 0; j < K; j++) {
            const int to = t + (K - 1) - j;
            if (to < T) acc += d[(r - t + to) * C + c] * (wc ? wc[c * K + j] : 1.0f);
        }
        draw[e] = acc;
    }
}

/* e over 3*C*K: dw_s[c, j] += sum_{b, t} d[s][b, t, c] raw[s][b, t-K+1+j, c] */
extern "C" __global__ void dn_conv_bwd_w(const float *D, const float *raw, float *gq, float *gk,
                                         float *gv, int B, int T, int C, int K) {
    const long long BT = (long long)B * T;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < 3LL * C * K;
         e += (long long)gridDim.x * blockDim.x) {
        const int s = (int)(e / ((long long)C * K)), j = (int)(e % K);
        const long long c = e / K % C;
        const float *d = D + s * BT * C, *xr = raw + s * BT * C;
        float acc = 0.0f;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const int ti = t - (K - 1) + j;
                if (ti >= 0)
                    acc += d[((long long)b * T + t) * C + c] * xr[((long long)b * T + ti) * C + c];
            }
        float *g = s == 0 ? gq : s == 1 ? gk : gv;
        g[c * K + j] += acc;
    }
}
