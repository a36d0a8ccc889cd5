#!/usr/bin/env python3
"""Golden data for the `mamba2` mixer (tests/test_mixers.c): an independent PyTorch re-implementation
(float64, CPU) of Mamba-2 in mamba_ssm's Mamba2 "simple" form, with the SSD computed by the chunked
algorithm of the Mamba-2 paper (Dao & Gu 2024, "Transformers are SSMs", section 6 and its minimal
listing `ssd_minimal_discrete`: segment sums, intra-chunk quadratic form, chunk states, inter-chunk
recurrence, state-to-output), written here from the paper's equations, and its autograd gradients.
The script also runs the naive recurrence h_t = exp(dt A) h_{t-1} + dt x_t B_t^T, y_t = h_t C_t and
requires both forms (outputs, final states and all gradients) to agree to 1e-12 before it writes
anything.

Run once, under a venv with torch (tests/reference/requirements.txt; not needed by the build or
by ctest):
    .venv/bin/python3 tests/reference/mamba2_ref.py
writes tests/data/mamba2/*.bin.

Mixer (one token u [D]; sizes as plugins/mamba2/mamba2.h):
    z, xBC, dt_raw = split(in_proj(u), [Di, Di + 2 G N, nh])
    x, B, C = split(silu(depthwise causal conv1d(xBC) + conv1d.bias), [Di, G N, G N])
    dt = softplus(dt_raw + dt_bias), A = -exp(A_log)       (per head; head h uses group h // (nh/G))
    y = SSD(x, dt, A, B, C) + D x;  out = out_proj(rmsnorm_per_group(y * silu(z)) * norm.weight)

File layout (little-endian):
    int32[12]  magic 0x3241424D ("MBA2"), B, T, D, Di, headdim, ngroups, d_state, d_conv,
               chunk_size, 0, 0;  float64 norm_eps
    float32 arrays, row-major, in this order:
        x [B,T,D]
        in_proj.weight [Pin, D]  conv1d.weight [Cd, 1, K]  conv1d.bias [Cd]  dt_bias [nh]
        A_log [nh]  D [nh]  norm.weight [Di]  out_proj.weight [D, Di]
        y [B,T,D]  dy [B,T,D]  dx [B,T,D]
        the gradients of sum(y * dy) for the 8 parameters, same order and shapes
        ssm_state [B, nh, headdim, d_state]  (after the last token)
        conv_state [B, Cd, K]  (the last K raw conv inputs, oldest first, left zero-padded)
Inputs are drawn in float32 (the C side sees exactly the same numbers); the mixer runs in float64.
"""
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

# (file, B, T, D, Di, headdim, ngroups, d_state, d_conv, chunk, seed)
CASES = [
    # 4 heads in 2 groups, T = 13 over chunks of 4 (the last partial)
    ("groups2.bin", 2, 13, 16, 32, 8, 2, 8, 4, 4, 2026),
    # one group, T = 20 over chunks of 8 (8, 8, 4), odd head size 12
    ("group1.bin", 1, 20, 24, 48, 12, 1, 6, 3, 8, 7),
    # a group per head (4), d_conv 2, one chunk longer than T
    ("groups4.bin", 2, 7, 12, 16, 4, 4, 4, 2, 16, 99),
]
EPS = 1e-5
MAGIC = 0x3241424D


def segsum(a):
    """a [..., L] -> S [..., L, L] with S[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the
    diagonal (so exp(S) is the causal decay mask). Summed per (i, j) as in the paper's stable
    variant: a masked cumulative sum, not a difference of prefix sums."""
    L = a.shape[-1]
    x = a[..., None].expand(*a.shape, L)  # x[..., i, j] = a[i]
    below = torch.tril(torch.ones(L, L, dtype=torch.bool), diagonal=-1)
    x = x.masked_fill(~below, 0.0)  # keep a[i] for i > j
    s = torch.cumsum(x, dim=-2)  # s[i, j] = sum_{j < k <= i} a[k]
    keep = torch.tril(torch.ones(L, L, dtype=torch.bool), diagonal=0)
    return s.masked_fill(~keep, -torch.inf)


def ssd_chunked(X, a, B, C, Q):
    """Chunked SSD. X [b, T, h, p] (x dt), a [b, T, h] (dt A), B, C [b, T, h, n]; chunk Q.
    Returns Y [b, T, h, p] and the final state [b, h, p, n]. T is padded to a multiple of Q with
    zeros (a = 0 and X = 0 leave the state and the earlier outputs unchanged)."""
    b, T, h, p = X.shape
    n = B.shape[-1]
    nc = (T + Q - 1) // Q
    pad = nc * Q - T
    if pad:
        X, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (X, B, C))
        a = F.pad(a, (0, 0, 0, pad))
    X = X.reshape(b, nc, Q, h, p)
    B = B.reshape(b, nc, Q, h, n)
    C = C.reshape(b, nc, Q, h, n)
    a = a.reshape(b, nc, Q, h).permute(0, 3, 1, 2)  # [b, h, c, l]
    acum = torch.cumsum(a, dim=-1)
    # 1. within each chunk: the quadratic (attention-like) form with the decay mask
    Lmask = torch.exp(segsum(a))  # [b, h, c, l, s]
    Y_in = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, Lmask, X)
    # 2. each chunk's own contribution to the state at its end
    to_end = torch.exp(acum[..., -1:] - acum)
    S_loc = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, to_end, X)
    # 3. the states at the chunk boundaries: the recurrence over chunks (again a segment sum)
    S_all = torch.cat([torch.zeros_like(S_loc[:, :1]), S_loc], dim=1)
    chunk_decay = torch.exp(segsum(F.pad(acum[..., -1], (1, 0))))  # [b, h, c+1, c+1]
    S_b = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, S_all)
    S_start, S_final = S_b[:, :-1], S_b[:, -1]
    # 4. the states' contribution to each output
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, S_start, torch.exp(acum))
    Y = (Y_in + Y_off).reshape(b, nc * Q, h, p)[:, :T]
    return Y, S_final


def ssd_recurrent(X, a, B, C):
    b, T, h, p = X.shape
    S = torch.zeros(b, h, p, B.shape[-1], dtype=X.dtype)
    ys = []
    for t in range(T):
        S = torch.exp(a[:, t])[:, :, None, None] * S + X[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, C[:, t]))
    return torch.stack(ys, dim=1), S


def mixer(u, P, cfg, chunked=True):
    Bsz, T, D = u.shape
    Di, Pd, G, N, K, Q = cfg["Di"], cfg["Pd"], cfg["G"], cfg["N"], cfg["K"], cfg["Q"]
    nh, Cd = Di // Pd, Di + 2 * G * N
    Win, cw, cb, dtb, alog, Dk, nw, Wout = P
    zxbcdt = u @ Win.T
    z, xbc_raw, dt_raw = torch.split(zxbcdt, [Di, Cd, nh], dim=-1)
    conv = F.conv1d(xbc_raw.transpose(1, 2), cw, cb, padding=K - 1, groups=Cd)[..., :T]
    xbc = F.silu(conv.transpose(1, 2))
    x, Bm, Cm = torch.split(xbc, [Di, G * N, G * N], dim=-1)
    dt = F.softplus(dt_raw + dtb)  # [b, T, nh]
    A = -torch.exp(alog)
    x = x.reshape(Bsz, T, nh, Pd)
    Bh = Bm.reshape(Bsz, T, G, N).repeat_interleave(nh // G, dim=2)
    Ch = Cm.reshape(Bsz, T, G, N).repeat_interleave(nh // G, dim=2)
    if chunked:
        Y, S = ssd_chunked(x * dt[..., None], dt * A, Bh, Ch, Q)
    else:
        Y, S = ssd_recurrent(x * dt[..., None], dt * A, Bh, Ch)
    y = (Y + Dk[:, None] * x).reshape(Bsz, T, Di)
    g = (y * F.silu(z)).reshape(Bsz, T, G, Di // G)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + EPS)
    out = (g.reshape(Bsz, T, Di) * nw) @ Wout.T
    # conv state: the last K raw inputs, left zero-padded
    pad = F.pad(xbc_raw, (0, 0, K, 0))[:, -K:]  # [b, K, Cd]
    return out, S, pad.transpose(1, 2).contiguous()


def draw(rng, cfg, D):
    Di, Pd, G, N, K = cfg["Di"], cfg["Pd"], cfg["G"], cfg["N"], cfg["K"]
    nh, Cd = Di // Pd, Di + 2 * G * N
    Pin = 2 * Di + 2 * G * N + nh
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return [
        f(Pin, D) / np.float32(np.sqrt(D)),
        f(Cd, 1, K) * np.float32(0.5),
        f(Cd) * np.float32(0.3),
        rng.uniform(-2.0, 0.5, nh).astype(np.float32),  # dt in ~[0.13, 0.97]
        np.log(rng.uniform(1.0, 4.0, nh)).astype(np.float32),
        (1.0 + 0.5 * f(nh)).astype(np.float32),
        (1.0 + 0.2 * f(Di)).astype(np.float32),
        f(D, Di) / np.float32(np.sqrt(Di)),
    ]


def run(case, outdir):
    name, Bsz, T, D, Di, Pd, G, N, K, Q, seed = case
    cfg = dict(Di=Di, Pd=Pd, G=G, N=N, K=K, Q=Q)
    rng = np.random.default_rng(seed)
    x32 = rng.standard_normal((Bsz, T, D)).astype(np.float32)
    P32 = draw(rng, cfg, D)
    dy32 = rng.standard_normal((Bsz, T, D)).astype(np.float32)

    res = {}
    for chunked in (True, False):
        x = torch.tensor(x32, dtype=torch.float64, requires_grad=True)
        P = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in P32]
        y, S, cs = mixer(x, P, cfg, chunked)
        (y * torch.tensor(dy32, dtype=torch.float64)).sum().backward()
        res[chunked] = (y.detach(), S.detach(), cs.detach(), x.grad, [p.grad for p in P])
    (y, S, cs, dx, G_), (y2, S2, _, dx2, G2) = res[True], res[False]
    worst = max(
        float((y - y2).abs().max() / y2.abs().max()),
        float((S - S2).abs().max() / S2.abs().max()),
        float((dx - dx2).abs().max() / dx2.abs().max()),
        *[float((a - b).abs().max() / b.abs().max()) for a, b in zip(G_, G2)],
    )
    assert worst < 1e-12, f"{name}: chunked SSD and recurrence differ by {worst:.3g}"
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, name), "wb") as f:
        f.write(struct.pack("<12i", MAGIC, Bsz, T, D, Di, Pd, G, N, K, Q, 0, 0))
        f.write(struct.pack("<d", EPS))
        w = lambda t: f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())
        w(x32)
        for p in P32:
            w(p)
        w(y.numpy())
        w(dy32)
        w(dx.numpy())
        for g in G_:
            w(g.numpy())
        w(S.numpy())
        w(cs.numpy())
    print(f"{name}: B={Bsz} T={T} D={D} Di={Di} headdim={Pd} ngroups={G} d_state={N} "
          f"d_conv={K} chunk={Q}; chunked vs recurrent max rel diff {worst:.2e}")


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    for c in CASES:
        run(c, os.path.join(here, "..", "data", "mamba2"))
