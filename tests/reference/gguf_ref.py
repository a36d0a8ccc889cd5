#!/usr/bin/env python3
"""Golden files for tests/test_gguf.c and tests/model_gguf.c, made with the `gguf` python package
(the reference GGUF writer/reader published with ggml) and numpy.

Run from the repository root with the project venv:
    /work/venv/bin/python tests/reference/gguf_ref.py            # synthetic fixtures
    /work/venv/bin/python tests/reference/gguf_ref.py --model ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf

Outputs (tests/data/gguf/, committed so CI needs no python):
  meta.gguf        every metadata value type, arrays of each (strings, bools, nested arrays too),
                   plain tensors in 1..4 dims (the C test checks values and PyTorch-order shapes)
  align64.gguf     general.alignment = 64
  quants.gguf      one tensor per storage type; quantised blocks are random valid blocks (all bit
                   patterns, finite scales) or gguf.quants.quantize() of normal data
  expect_<tensor>.f32   the reference dequantisation (gguf.quants.dequantize) as raw little-endian f32
  quants.txt       tensor name, GGML type name, shape (outermost first)
  smollm2_golden.txt / smollm2_<i>.f32 (with --model): every kv (scalars as values, strings hex,
                   arrays as length + FNV-1a hash), every tensor's type/shape/file offset, the double
                   sum and sum of squares of every dequantised tensor and an exact checksum of
                   its f32 bits (bits_checksum), and the first 4096 values of a few tensors.
The fixed seed makes the files reproducible.
"""
import argparse
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "gguf")
QK_K = 256


def fnv1a(data: bytes, h: int = 0xCBF29CE484222325) -> int:
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ---- meta.gguf -----------------------------------------------------------------------------------
# Array contents are formulas of the index i that tests/test_gguf.c recomputes.
N_ARR = 100


def arrays():
    i = np.arange(N_ARR, dtype=np.int64)
    return {
        "arr.u8": (VT.UINT8, [int(v) for v in (i * 37) % 256]),
        "arr.i8": (VT.INT8, [int(v) for v in (i * 37) % 256 - 128]),
        "arr.u16": (VT.UINT16, [int(v) for v in (i * 1000) % 65536]),
        "arr.i16": (VT.INT16, [int(v) for v in i * 600 - 30000]),
        "arr.u32": (VT.UINT32, [int(v) for v in i * 40000000]),
        "arr.i32": (VT.INT32, [int(v) for v in i * 40000000 - 2000000000]),
        "arr.u64": (VT.UINT64, [int(v) * 180000000000000000 for v in i]),
        "arr.i64": (VT.INT64, [int(v) * 180000000000000000 - 9000000000000000000 for v in i]),
        "arr.f32": (VT.FLOAT32, [float(np.float32(v) / np.float32(7)) for v in i]),
        "arr.f64": (VT.FLOAT64, [float(v) / 7.0 for v in i]),
        "arr.bool": (VT.BOOL, [bool(v % 3 == 0) for v in i]),
    }


STRINGS = ["", "a", "h\u00e9llo w\u00f6rld \u2713", "tab\tnew\nline", "embedded\x00nul", "x" * 300]


def write_meta():
    w = gguf.GGUFWriter(os.path.join(OUT, "meta.gguf"), "testarch")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 18000000000000000000)
    w.add_int64("test.i64", -9000000000000000000)
    w.add_float32("test.f32", 3.14159265358979)
    w.add_float64("test.f64", 2.718281828459045)
    w.add_bool("test.bool_t", True)
    w.add_bool("test.bool_f", False)
    w.add_string("test.str", "h\u00e9llo w\u00f6rld \u2713")
    w.add_key_value("test.str_empty", "", VT.STRING)  # add_string() drops empty strings
    for k, (t, v) in arrays().items():
        w.add_key_value("test." + k, v, VT.ARRAY, sub_type=t)
    w.add_key_value("test.arr.str", STRINGS, VT.ARRAY, sub_type=VT.STRING)
    w.add_key_value("test.arr.nested", [[1, 2, 3], [4], [5, 6]], VT.ARRAY, sub_type=VT.ARRAY)
    # tensors: values k = flat index, so element [a][b][c][d] = ((a*3+b)*4+c)*5+d
    w.add_tensor("t4d", np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5))
    w.add_tensor("t3d", (np.arange(3 * 2 * 8, dtype=np.float32) * 0.5).reshape(3, 2, 8))
    w.add_tensor("vec", np.arange(7, dtype=np.float32) - 3)
    w.add_tensor("mat_i32", (np.arange(12, dtype=np.int32) * -3).reshape(3, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_align64():
    w = gguf.GGUFWriter(os.path.join(OUT, "align64.gguf"), "testarch")
    w.add_custom_alignment(64)
    w.add_tensor("a", np.arange(5, dtype=np.float32))
    w.add_tensor("b", (np.arange(9, dtype=np.float32) / 4).astype(np.float16).reshape(3, 3))
    w.add_tensor("c", np.arange(3, dtype=np.float32) + 100)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- quants.gguf ---------------------------------------------------------------------------------

def rand_f16(rng, n, lo=-1.5, hi=1.5):
    return rng.uniform(lo, hi, n).astype(np.float16).view(np.uint8).reshape(n, 2)


def random_blocks(rng, qt, nblocks):
    """Random valid blocks: every quant bit random, every f16 scale a finite random value."""
    _, size = gguf.GGML_QUANT_SIZES[qt]
    b = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    # where the f16 / f32 scales sit in each block (byte offsets)
    h = {QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
         QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208]}
    if qt in h:
        for off in h[qt]:
            b[:, off:off + 2] = rand_f16(rng, nblocks, -0.05, 0.05) if qt in (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K) else rand_f16(rng, nblocks)
    if qt == QT.Q8_K:
        b[:, 0:4] = rng.uniform(-0.02, 0.02, nblocks).astype(np.float32).view(np.uint8).reshape(nblocks, 4)
    return b


def ref_q8_k(blocks):
    """gguf-py has no Q8_K decoder: d (f32) times each signed byte, in f32."""
    d = blocks[:, 0:4].copy().view(np.float32)
    q = blocks[:, 4:4 + QK_K].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def write_quants():
    rng = np.random.default_rng(20261124)
    ROWS, COLS = 2, 1024
    tensors = []  # (name, data array for the writer, raw_dtype or None, shape, expected f32)

    # plain float types with special values
    f16_bits = rng.integers(0, 65536, ROWS * COLS, dtype=np.uint16)
    specials = np.array([0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE55, 0x0001, 0x8001,
                         0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0x3555], dtype=np.uint16)
    f16_bits[:len(specials)] = specials
    f16 = f16_bits.view(np.float16).reshape(ROWS, COLS)
    tensors.append(("f16", f16, None, (ROWS, COLS), f16.astype(np.float32)))

    bf16_bits = rng.integers(0, 65536, ROWS * COLS, dtype=np.uint16)
    bf16_bits[:6] = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001]
    bf = bf16_bits.view(np.uint8).reshape(ROWS, COLS * 2)
    tensors.append(("bf16", bf, QT.BF16, (ROWS, COLS), gguf.quants.dequantize(bf, QT.BF16)))

    f32 = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    tensors.append(("f32", f32, None, (ROWS, COLS), f32))
    f64 = rng.standard_normal((ROWS, COLS)) * 1e3
    tensors.append(("f64", f64, None, (ROWS, COLS), f64.astype(np.float32)))
    i8 = rng.integers(-128, 128, (ROWS, COLS), dtype=np.int8)
    tensors.append(("i8", i8, None, (ROWS, COLS), i8.astype(np.float32)))
    i16 = rng.integers(-32768, 32768, (ROWS, COLS), dtype=np.int16)
    tensors.append(("i16", i16, None, (ROWS, COLS), i16.astype(np.float32)))
    i32 = rng.integers(-2**31, 2**31, (ROWS, COLS), dtype=np.int32)
    tensors.append(("i32", i32, None, (ROWS, COLS), i32.astype(np.float32)))

    # quantised: random blocks for every type, quantize() of normal data where gguf-py can
    for qt in [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K,
               QT.Q6_K, QT.Q8_K]:
        blck, size = gguf.GGML_QUANT_SIZES[qt]
        nb = ROWS * COLS // blck
        blocks = random_blocks(rng, qt, nb)
        raw = blocks.reshape(ROWS, COLS // blck * size)
        exp = ref_q8_k(blocks) if qt == QT.Q8_K else gguf.quants.dequantize(raw, qt)
        tensors.append((qt.name.lower() + "_rand", raw, qt, (ROWS, COLS), exp.reshape(ROWS, COLS)))
        if qt in (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0):
            x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
            q = gguf.quants.quantize(x, qt)
            tensors.append((qt.name.lower() + "_normal", q, qt, (ROWS, COLS), gguf.quants.dequantize(q, qt)))

    # a 3-d quantised tensor: shapes are reported outermost-first
    x = rng.standard_normal((3, 2, 64)).astype(np.float32)
    q = gguf.quants.quantize(x, QT.Q8_0)
    tensors.append(("q8_0_3d", q, QT.Q8_0, (3, 2, 64), gguf.quants.dequantize(q, QT.Q8_0)))

    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "testarch")
    lines = []
    for name, data, raw_dtype, shape, exp in tensors:
        if raw_dtype is None:
            w.add_tensor(name, data)
            tname = {np.float16: "F16", np.float32: "F32", np.float64: "F64", np.int8: "I8",
                     np.int16: "I16", np.int32: "I32"}[data.dtype.type]
        else:
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=raw_dtype)
            tname = raw_dtype.name
        exp = np.ascontiguousarray(exp, dtype=np.float32)
        assert exp.shape == tuple(shape), (name, exp.shape, shape)
        exp.astype("<f4").tofile(os.path.join(OUT, "expect_%s.f32" % name))
        lines.append("%s %s %s" % (name, tname, " ".join(str(s) for s in shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(os.path.join(OUT, "quants.txt"), "w") as f:
        f.write("# name ggml_type shape(outermost first); expected values in expect_<name>.f32\n")
        f.write("\n".join(lines) + "\n")

    # cross-check the written file with the package's own reader
    r = gguf.GGUFReader(os.path.join(OUT, "quants.gguf"))
    for t, (name, data, raw_dtype, shape, exp) in zip(r.tensors, tensors):
        assert t.name == name
        if t.tensor_type == QT.Q8_K:
            got = ref_q8_k(np.asarray(t.data).reshape(-1, 292))
        elif t.tensor_type in (QT.F64, QT.I8, QT.I16, QT.I32):
            got = np.asarray(t.data).astype(np.float32)
        else:
            got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        np.testing.assert_array_equal(np.asarray(got, dtype=np.float32).reshape(-1).view(np.uint32),
                                      np.asarray(exp, dtype=np.float32).reshape(-1).view(np.uint32))


# ---- the real model ------------------------------------------------------------------------------

GOLDEN_SLICES = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight",
                 "blk.29.ffn_down.weight", "output_norm.weight"]


def bits_checksum(x):
    """Exact checksum of f32 values: sum over i of (bits_i + 1) * (2 i + 1) mod 2^64."""
    bits = x.reshape(-1).view(np.uint32).astype(np.uint64) + np.uint64(1)
    odd = np.arange(bits.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return int(np.sum(bits * odd, dtype=np.uint64))


def write_model_golden(path):
    r = gguf.GGUFReader(path)
    out = []
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        t = f.types[0]
        if t == VT.ARRAY:
            et = f.types[1] if len(f.types) > 1 else None
            n = len(f.data)
            h = 0xCBF29CE484222325
            if et == VT.STRING:
                for idx in f.data:
                    s = bytes(f.parts[idx])
                    h = fnv1a(struct.pack("<Q", len(s)), h)
                    h = fnv1a(s, h)
            else:
                for idx in f.data:
                    h = fnv1a(bytes(np.asarray(f.parts[idx]).tobytes()), h)
            out.append("arr %s %s %d %016x" % (k, et.name, n, h))
        elif t == VT.STRING:
            out.append("str %s %s" % (k, bytes(f.parts[f.data[0]]).hex() or "-"))
        else:
            v = f.parts[f.data[0]][0]
            if t in (VT.FLOAT32, VT.FLOAT64):
                out.append("num %s %s %.17g" % (k, t.name, float(v)))
            else:
                out.append("num %s %s %d" % (k, t.name, int(v)))
    # general.alignment absent: 32
    for i, t in enumerate(r.tensors):
        shape = [int(s) for s in reversed(t.shape)]  # outermost first
        x = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64).reshape(-1)
        out.append("tensor %s %s %d %s %.17g %.17g %016x" % (
            t.name, t.tensor_type.name, int(t.data_offset), ",".join(map(str, shape)),
            float(x.sum()), float((x * x).sum()), bits_checksum(x.astype(np.float32))))
        if t.name in GOLDEN_SLICES:
            j = GOLDEN_SLICES.index(t.name)
            x[:4096].astype("<f4").tofile(os.path.join(OUT, "smollm2_%d.f32" % j))
            out.append("slice %s smollm2_%d.f32 %d" % (t.name, j, min(4096, x.size)))
    with open(os.path.join(OUT, "smollm2_golden.txt"), "w") as f:
        f.write("# made by tests/reference/gguf_ref.py --model from %s (%d bytes)\n"
                % (os.path.basename(path), os.path.getsize(path)))
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="also write golden values for this GGUF model")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    write_meta()
    write_align64()
    write_quants()
    if a.model:
        write_model_golden(os.path.expanduser(a.model))
    print("wrote", OUT)


if __name__ == "__main__":
    sys.exit(main())
