#!/usr/bin/env python3
"""Golden data for tests/test_mamba1.c: an independent PyTorch re-implementation (float64, CPU) of
the Apriel-H1 "m2" mixer (HF apriel_h Mamba mixer) written from SPEC.md sections 3 and 7, with the
selective scan written here from the documented math of mamba's `selective_scan_ref`
(u, delta, A, B, C, D, z, delta_bias, delta_softplus), and its autograd gradients.

Run once, under the venv that has torch (not needed by the build or by ctest):
    /work/venv/bin/python3 tests/reference/mamba1_ref.py
writes tests/data/mamba1/golden_*.bin.

Cases: (name, B, T, D, Di, Dx, N, R, K, double_dt_bias, seed)
    small:  B=2 T=11 D=32 Di=32 Dx=16 N=4 R=4 K=4, double bias  (8 C heads, 4 x/B heads, repeat 2)
    nodbl:  B=1 T=40 D=24 Di=48 Dx=12 N=4 R=3 K=3, single bias  (12 C heads, 3 x/B heads, repeat 4)

File layout (little-endian):
    int32[12]  magic 0x3141424D ("MBA1"), B, T, D, Di, Dx, N, R, K, double_dt_bias, 0, 0
    float32 arrays, row-major, in this order:
        x [B,T,D]
        in_proj.weight [2Di+2Dx, D]  dt_in_proj.weight [R, D]  dt_proj.weight [Di, R]
        dt_proj.bias [Di]  conv1d.weight [Di, 1, K]  conv1d.bias [Di]  A_log [Di, N]  D [Di]
        out_proj.weight [D, Di]
        y [B,T,D]  dy [B,T,D]  dx [B,T,D]
        the gradients of sum(y * dy) for the 9 parameters, same order and shapes
        ssm_state [B, Di, N]   (scan state after the last token)
        conv_state [B, Di, K]  (last K raw inputs of the conv: x repeated, before the conv,
                                oldest first, left zero-padded)
Inputs are drawn in float32 (the C side sees exactly the same numbers); the mixer runs in float64.
"""
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

CASES = [
    ("golden_small.bin", 2, 11, 32, 32, 16, 4, 4, 4, True, 2024),
    ("golden_nodbl.bin", 1, 40, 24, 48, 12, 4, 3, 3, False, 77),
]


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Mamba-1 selective scan, written from its documented semantics.
    u, delta, z: (b, d, l); A: (d, n); B, C: (b, G, n, l) with d % G == 0 (channel i uses group
    i // (d // G)); D: (d,). Returns out (b, d, l) and the last state (b, d, n)."""
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    Bx = B.repeat_interleave(d // B.shape[1], dim=1)  # (b, d, n, l)
    Cx = C.repeat_interleave(d // C.shape[1], dim=1)
    dA = torch.exp(delta[:, :, :, None] * A[None, :, None, :])  # (b, d, l, n)
    dBu = delta[:, :, :, None] * Bx.permute(0, 1, 3, 2) * u[:, :, :, None]  # (b, d, l, n)
    h = torch.zeros(b, d, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(l):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D[None, :, None]
    if z is not None:
        y = y * F.silu(z)
    return y, h


def m2_mixer(x, p, Di, Dx, N, K, double_dt_bias):
    """HF apriel_h "m2" forward (SPEC.md section 3). x: (b, l, D). Returns out, ssm_state, conv_state."""
    b, l, _ = x.shape
    zxbc = x @ p["in_proj.weight"].T
    z, xs, Bs, Cs = torch.split(zxbc, [Di, Dx, Dx, Di], dim=-1)
    rep = (Di // N) // (Dx // N)
    # delta from the two-stage dt projection; dt_proj is a Linear WITH its bias
    delta = (x @ p["dt_in_proj.weight"].T) @ p["dt_proj.weight"].T + p["dt_proj.bias"]
    # x and B: [Dx] -> [Dx/N, N] -> repeat_interleave(rep, heads) -> [Di/N, N]; C: no repeat
    xr = xs.reshape(b, l, Dx // N, N).repeat_interleave(rep, dim=2).reshape(b, l, Di)
    Br = Bs.reshape(b, l, Dx // N, N).repeat_interleave(rep, dim=2)  # (b, l, nC, N)
    Cr = Cs.reshape(b, l, Di // N, N)
    # causal depthwise conv on x only, then silu
    xr_t = xr.transpose(1, 2)  # (b, Di, l)
    xc = F.conv1d(F.pad(xr_t, (K - 1, 0)), p["conv1d.weight"], p["conv1d.bias"], groups=Di)
    xc = F.silu(xc)
    A = -torch.exp(p["A_log"])
    y, last = selective_scan_ref(
        xc, delta.transpose(1, 2), A, Br.permute(0, 2, 3, 1), Cr.permute(0, 2, 3, 1),
        D=p["D"], z=z.transpose(1, 2),
        delta_bias=p["dt_proj.bias"] if double_dt_bias else None, delta_softplus=True)
    out = y.transpose(1, 2) @ p["out_proj.weight"].T
    conv_state = F.pad(xr_t, (K, 0))[:, :, -K:]  # last K raw inputs, left zero-padded
    return out, last, conv_state


def write_case(fname, B, T, D, Di, Dx, N, R, K, dbl, seed):
    rng = np.random.default_rng(seed)
    f32 = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
    P = 2 * Di + 2 * Dx
    x = f32(B, T, D)
    dt0 = rng.uniform(0.02, 0.4, Di)
    params = {
        "in_proj.weight": f32(P, D, scale=D ** -0.5),
        "dt_in_proj.weight": f32(R, D, scale=D ** -0.5),
        "dt_proj.weight": f32(Di, R, scale=R ** -0.5),
        "dt_proj.bias": np.log(np.expm1(dt0)).astype(np.float32),
        "conv1d.weight": f32(Di, 1, K, scale=K ** -0.5),
        "conv1d.bias": f32(Di, scale=0.2),
        "A_log": (np.log(np.arange(1, N + 1))[None, :] + rng.standard_normal((Di, N)) * 0.3)
        .astype(np.float32),
        "D": (1.0 + rng.standard_normal(Di) * 0.5).astype(np.float32),
        "out_proj.weight": f32(D, Di, scale=Di ** -0.5),
    }
    dy = f32(B, T, D)
    pt = {k: torch.from_numpy(v).double().requires_grad_(True) for k, v in params.items()}
    xt = torch.from_numpy(x).double().requires_grad_(True)
    y, ssm, conv = m2_mixer(xt, pt, Di, Dx, N, K, dbl)
    (y * torch.from_numpy(dy).double()).sum().backward()

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mamba1", fname)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        f.write(struct.pack("<12i", 0x3141424D, B, T, D, Di, Dx, N, R, K, int(dbl), 0, 0))
        arrays = [x] + list(params.values()) + [y.detach().numpy(), dy, xt.grad.numpy()]
        arrays += [pt[k].grad.numpy() for k in params]
        arrays += [ssm.detach().numpy(), conv.detach().numpy()]
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    print("wrote", os.path.normpath(out), "max|y| = %.4f" % float(y.detach().abs().max()),
          "max|ssm| = %.4f" % float(ssm.detach().abs().max()))


def main():
    for case in CASES:
        write_case(*case)


if __name__ == "__main__":
    main()
