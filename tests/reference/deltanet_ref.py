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
    """q,k [B,H,T,n], v [B,H,T,nv], beta,g [B,H,T] -> o [B,H,T,nv], S [B,H,n,nv] (dk x dv)."""
    Bb, Hh, Tt, n = q.shape
    S = torch.zeros(Bb, Hh, n, v.shape[-1], dtype=q.dtype)
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
    S = torch.zeros(Bb, Hh, n, v.shape[-1], dtype=q.dtype)
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


# fla's options (defaults: the layer above as it always was). Hv value heads share the q/k head
# hv // (Hv / H) (fla repeats q and k over the group); NV = expand_v * N is the value head size;
# neg: beta = 2 sigmoid; no gate: o_norm without the silu(g_proj x) factor (and no g_proj); no
# short conv: q, k, v = silu(projection) and no conv weights or windows.
DEFAULT_OPTS = dict(Hv=H, NV=N, gate=True, conv=True, neg=False)


def layer(x, P, gated, form, o=DEFAULT_OPTS):
    Bb, Tt, _ = x.shape
    Hv, NV = o["Hv"], o["NV"]
    Cv = Hv * NV

    def conv(w, raw, ch):  # raw [B,T,ch] -> silu(causal depthwise conv)
        if not o["conv"]:
            return F.silu(raw)
        y = F.conv1d(raw.transpose(1, 2), w, padding=K - 1, groups=ch)[..., :Tt]
        return F.silu(y.transpose(1, 2))

    raws = [x @ P["q_proj.weight"].T, x @ P["k_proj.weight"].T, x @ P["v_proj.weight"].T]
    q = conv(P.get("q_conv1d.weight"), raws[0], C).view(Bb, Tt, H, N).transpose(1, 2)
    k = conv(P.get("k_conv1d.weight"), raws[1], C).view(Bb, Tt, H, N).transpose(1, 2)
    v = conv(P.get("v_conv1d.weight"), raws[2], Cv).view(Bb, Tt, Hv, NV).transpose(1, 2)
    q = l2norm(q) * N ** -0.5
    k = l2norm(k)
    if Hv != H:
        q = q.repeat_interleave(Hv // H, dim=1)
        k = k.repeat_interleave(Hv // H, dim=1)
    beta = torch.sigmoid(x @ P["b_proj.weight"].T).transpose(1, 2)  # [B,Hv,T]
    if o["neg"]:
        beta = beta * 2
    if gated:
        a = x @ P["a_proj.weight"].T + P["dt_bias"]
        g = (-torch.exp(P["A_log"]) * F.softplus(a)).transpose(1, 2)
    else:
        g = torch.zeros_like(beta)
    out, S = recurrent(q, k, v, beta, g) if form == "recurrent" else chunked(q, k, v, beta, g, REF_CHUNK)
    out = out.transpose(1, 2)  # [B,T,Hv,nv]
    out = out * torch.rsqrt((out * out).mean(-1, keepdim=True) + NORM_EPS) * P["o_norm.weight"]
    if o["gate"]:
        gate = (x @ P["g_proj.weight"].T).view(Bb, Tt, Hv, NV)
        out = out * F.silu(gate)
    z = out.reshape(Bb, Tt, Cv)
    y = z @ P["o_proj.weight"].T
    if o["conv"]:  # [B, (C + C + Cv) (K-1)]: each conv's raw inputs of the last K-1 tokens
        win = torch.cat([r[:, Tt - (K - 1):, :].transpose(1, 2).reshape(Bb, -1) for r in raws], 1)
    else:
        win = None
    return y, S, win


def write_case(fname, gated, seed, o=DEFAULT_OPTS):
    rng = np.random.default_rng(seed)
    f32 = lambda *s, scale=1.0, mean=0.0: (mean + rng.standard_normal(s) * scale).astype(np.float32)
    Hv, NV = o["Hv"], o["NV"]
    Cv = Hv * NV
    names = [("q_proj.weight", (C, D), 0.25), ("k_proj.weight", (C, D), 0.25),
             ("v_proj.weight", (Cv, D), 0.25), ("b_proj.weight", (Hv, D), 0.3),
             ("q_conv1d.weight", (C, 1, K), 0.4), ("k_conv1d.weight", (C, 1, K), 0.4),
             ("v_conv1d.weight", (Cv, 1, K), 0.4), ("g_proj.weight", (Cv, D), 0.3),
             ("o_norm.weight", (NV,), 0.1), ("o_proj.weight", (D, Cv), 0.2)]
    if gated:
        names += [("a_proj.weight", (Hv, D), 0.2), ("A_log", (Hv,), 0), ("dt_bias", (Hv,), 0)]
    Pn = {}
    for name, shape, sc in names:
        Pn[name] = f32(*shape, scale=sc)
    Pn["o_norm.weight"] += 1.0
    if gated:
        Pn["A_log"] = np.log(rng.uniform(0.5, 2.0, Hv)).astype(np.float32)
        Pn["dt_bias"] = f32(Hv, scale=0.5, mean=-1.0)
    x = f32(B, T, D)
    dy = f32(B, T, D)
    # the parameters the options leave out (drawn anyway, so the other draws stay the same)
    drop = ([] if o["gate"] else ["g_proj.weight"]) + \
        ([] if o["conv"] else ["q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"])
    names = [nm for nm in names if nm[0] not in drop]
    for nm in drop:
        del Pn[nm]

    P = {k: torch.from_numpy(v).double().requires_grad_(True) for k, v in Pn.items()}
    xt = torch.from_numpy(x).double().requires_grad_(True)
    y, S, win = layer(xt, P, gated, "recurrent", o)
    with torch.no_grad():
        yc, Sc, _ = layer(xt, P, gated, "chunked", o)
        ey = float((yc - y).abs().max() / y.abs().max())
        es = float((Sc - S).abs().max() / S.abs().max())
        assert ey < 1e-10 and es < 1e-10, (ey, es)
    (y * torch.from_numpy(dy).double()).sum().backward()

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "deltanet", fname)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        if o is DEFAULT_OPTS:  # the original format
            f.write(struct.pack("<8i", 0x31544E44, B, T, D, H, N, K, int(gated)))
        else:  # "DNT2": the options follow
            f.write(struct.pack("<12i", 0x32544E44, B, T, D, H, N, K, int(gated), Hv, NV,
                                int(o["gate"]) | int(o["conv"]) << 1 | int(o["neg"]) << 2, 0))
        f.write(struct.pack("<d", NORM_EPS))
        arrays = [x] + [Pn[n] for n, _, _ in names] + [y.detach().numpy(), S.detach().numpy()]
        if win is not None:
            arrays.append(win.detach().numpy())
        arrays += [dy, xt.grad.numpy()]
        arrays += [P[n].grad.numpy() for n, _, _ in names]
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    print("wrote", os.path.normpath(out), "max|y| = %.4f, chunked vs recurrent %.2g / %.2g"
          % (float(y.detach().abs().max()), ey, es))


def main():
    torch.set_default_dtype(torch.float64)
    write_case("deltanet.bin", False, 2024)
    write_case("gated_deltanet.bin", True, 2025)
    # the fla options: GVA 2:4 with expand_v 0.5 (dv 8 != dk 16) and beta in (0, 2); and no output
    # gate, no short convs, beta in (0, 2)
    gva = dict(Hv=4, NV=N // 2, gate=True, conv=True, neg=True)
    plain = dict(Hv=H, NV=N, gate=False, conv=False, neg=True)
    write_case("deltanet_gva.bin", False, 2026, gva)
    write_case("gated_deltanet_gva.bin", True, 2027, gva)
    write_case("deltanet_nogate_noconv.bin", False, 2028, plain)
    write_case("gated_deltanet_nogate_noconv.bin", True, 2029, plain)


if __name__ == "__main__":
    main()
