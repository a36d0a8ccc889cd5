#!/usr/bin/env python3
"""Golden data for tests/test_deltanet.c: flash-linear-attention's DeltaNet and GatedDeltaNet
layers (short convs + SiLU, L2-normalised q/k, sigmoid beta, [Mamba-style decay], gated RMSNorm
output, o_proj), written here from the published math (fla's naive recurrent form, SPEC.md
section 6) in PyTorch float64, with autograd for the gradients. The naive chunked (WY) form is
computed too and must agree with the recurrent one (asserted below), so the chunk formulas the C
code uses are cross-checked independently of it.

Run once, under the venv that has torch (not needed by the build or by ctest):
    /work/venv/bin/python3 tests/reference/deltanet_ref.py
writes tests/data/deltanet/{deltanet,gated_deltanet}.bin (B=2, T=37, D=32, H=2, n=16, K=4; the
C test runs them with chunk 16, so the last chunk is partial).

File layout (little-endian):
    int32[8]  magic 0x31544e44, B, T, D, H, n (head_dim), K (conv_size), gated
    float64   norm_eps (o_norm)
    float32   arrays, row-major:
        x [B,T,D]
        params in the plugin's declaration order: q_proj [C,D] k_proj [C,D] v_proj [C,D]
          b_proj [H,D] q_conv1d [C,1,K] k_conv1d v_conv1d g_proj [C,D] o_norm [n] o_proj [D,C]
          (gated:) a_proj [H,D] A_log [H] dt_bias [H]
        y [B,T,D]
        S [B,H,n,n]            final recurrent state
        win [B,3,C,K-1]        final conv windows (raw q/k/v projections of the last K-1 tokens)
        dy [B,T,D]  dx [B,T,D]  then d(param) for every param, same order  (grads of sum(y*dy))
Inputs are drawn in float32 so the C side sees exactly the same numbers.
"""
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

B, T, D, H, N, K = 2, 37, 32, 2, 16, 4
C = H * N
NORM_EPS = 1e-5
L2_EPS = 1e-6
REF_CHUNK = 16


def l2norm(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + L2_EPS)


def recurrent(q, k, v, beta, g):
    """q,k,v [B,H,T,n], beta,g [B,H,T] -> o [B,H,T,n], S [B,H,n,n] (dk x dv)."""
    Bb, Hh, Tt, n = q.shape
    S = torch.zeros(Bb, Hh, n, n, dtype=q.dtype)
    eye = torch.eye(n, dtype=q.dtype)
    outs = []
    for t in range(Tt):
        kt, vt, qt = k[:, :, t], v[:, :, t], q[:, :, t]
        bt = beta[:, :, t][..., None, None]
        at = torch.exp(g[:, :, t])[..., None, None]
        S = at * ((eye - bt * kt[..., :, None] * kt[..., None, :]) @ S) + bt * kt[..., :, None] * vt[..., None, :]
        outs.append((S * qt[..., :, None]).sum(-2))
    return torch.stack(outs, 2), S


def chunked(q, k, v, beta, g, c):
    """The WY chunked form of SPEC.md section 6 (explicit inverse, float64)."""
    Bb, Hh, Tt, n = q.shape
    S = torch.zeros(Bb, Hh, n, n, dtype=q.dtype)
    outs = []
    for t0 in range(0, Tt, c):
        sl = slice(t0, min(t0 + c, Tt))
        qc, kc, vc, bc, gc = q[:, :, sl], k[:, :, sl], v[:, :, sl], beta[:, :, sl], g[:, :, sl]
        L = qc.shape[2]
        Gam = gc.cumsum(-1)
        Lm = torch.exp(Gam[..., :, None] - Gam[..., None, :]).tril()
        kb = kc * bc[..., None]
        A = ((kb @ kc.transpose(-1, -2)) * Lm).tril(-1)
        Tm = torch.linalg.inv(torch.eye(L, dtype=q.dtype) + A)
        U = Tm @ (vc * bc[..., None])
        W = Tm @ (kb * torch.exp(Gam)[..., None])
        vnew = U - W @ S
        o = (qc * torch.exp(Gam)[..., None]) @ S + ((qc @ kc.transpose(-1, -2)) * Lm) @ vnew
        gl = Gam[..., -1:]
        S = torch.exp(gl)[..., None] * S + (kc * torch.exp(gl - Gam)[..., None]).transpose(-1, -2) @ vnew
        outs.append(o)
    return torch.cat(outs, 2), S


def layer(x, P, gated, form):
    Bb, Tt, _ = x.shape

    def conv(w, raw):  # raw [B,T,C] -> silu(causal depthwise conv)
        y = F.conv1d(raw.transpose(1, 2), w, padding=K - 1, groups=C)[..., :Tt]
        return F.silu(y.transpose(1, 2))

    raws = [x @ P["q_proj.weight"].T, x @ P["k_proj.weight"].T, x @ P["v_proj.weight"].T]
    q = conv(P["q_conv1d.weight"], raws[0]).view(Bb, Tt, H, N).transpose(1, 2)
    k = conv(P["k_conv1d.weight"], raws[1]).view(Bb, Tt, H, N).transpose(1, 2)
    v = conv(P["v_conv1d.weight"], raws[2]).view(Bb, Tt, H, N).transpose(1, 2)
    q = l2norm(q) * N ** -0.5
    k = l2norm(k)
    beta = torch.sigmoid(x @ P["b_proj.weight"].T).transpose(1, 2)  # [B,H,T]
    if gated:
        a = x @ P["a_proj.weight"].T + P["dt_bias"]
        g = (-torch.exp(P["A_log"]) * F.softplus(a)).transpose(1, 2)
    else:
        g = torch.zeros_like(beta)
    o, S = recurrent(q, k, v, beta, g) if form == "recurrent" else chunked(q, k, v, beta, g, REF_CHUNK)
    o = o.transpose(1, 2)  # [B,T,H,n]
    o = o * torch.rsqrt((o * o).mean(-1, keepdim=True) + NORM_EPS) * P["o_norm.weight"]
    gate = (x @ P["g_proj.weight"].T).view(Bb, Tt, H, N)
    z = (o * F.silu(gate)).reshape(Bb, Tt, C)
    y = z @ P["o_proj.weight"].T
    win = torch.stack([r[:, Tt - (K - 1):, :].transpose(1, 2) for r in raws], 1)  # [B,3,C,K-1]
    return y, S, win


def write_case(fname, gated, seed):
    rng = np.random.default_rng(seed)
    f32 = lambda *s, scale=1.0, mean=0.0: (mean + rng.standard_normal(s) * scale).astype(np.float32)
    names = [("q_proj.weight", (C, D), 0.25), ("k_proj.weight", (C, D), 0.25),
             ("v_proj.weight", (C, D), 0.25), ("b_proj.weight", (H, D), 0.3),
             ("q_conv1d.weight", (C, 1, K), 0.4), ("k_conv1d.weight", (C, 1, K), 0.4),
             ("v_conv1d.weight", (C, 1, K), 0.4), ("g_proj.weight", (C, D), 0.3),
             ("o_norm.weight", (N,), 0.1), ("o_proj.weight", (D, C), 0.2)]
    if gated:
        names += [("a_proj.weight", (H, D), 0.2), ("A_log", (H,), 0), ("dt_bias", (H,), 0)]
    Pn = {}
    for name, shape, sc in names:
        Pn[name] = f32(*shape, scale=sc)
    Pn["o_norm.weight"] += 1.0
    if gated:
        Pn["A_log"] = np.log(rng.uniform(0.5, 2.0, H)).astype(np.float32)
        Pn["dt_bias"] = f32(H, scale=0.5, mean=-1.0)
    x = f32(B, T, D)
    dy = f32(B, T, D)

    P = {k: torch.from_numpy(v).double().requires_grad_(True) for k, v in Pn.items()}
    xt = torch.from_numpy(x).double().requires_grad_(True)
    y, S, win = layer(xt, P, gated, "recurrent")
    with torch.no_grad():
        yc, Sc, _ = layer(xt, P, gated, "chunked")
        ey = float((yc - y).abs().max() / y.abs().max())
        es = float((Sc - S).abs().max() / S.abs().max())
        assert ey < 1e-10 and es < 1e-10, (ey, es)
    (y * torch.from_numpy(dy).double()).sum().backward()

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "deltanet", fname)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        f.write(struct.pack("<8i", 0x31544E44, B, T, D, H, N, K, int(gated)))
        f.write(struct.pack("<d", NORM_EPS))
        arrays = [x] + [Pn[n] for n, _, _ in names] + [y.detach().numpy(), S.detach().numpy(),
                                                         win.detach().numpy(), dy, xt.grad.numpy()]
        arrays += [P[n].grad.numpy() for n, _, _ in names]
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    print("wrote", os.path.normpath(out), "max|y| = %.4f, chunked vs recurrent %.2g / %.2g"
          % (float(y.detach().abs().max()), ey, es))


def main():
    torch.set_default_dtype(torch.float64)
    write_case("deltanet.bin", False, 2024)
    write_case("gated_deltanet.bin", True, 2025)


if __name__ == "__main__":
    main()
