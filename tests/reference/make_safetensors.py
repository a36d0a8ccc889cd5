"""Write tests/data/st_ref.safetensors with the reference implementation (the `safetensors`
Python package), for tests/test_safetensors.c.

Run once from the repository root under the project venv:
    ${HYB_VENV:-/work/venv}/bin/python3 tests/reference/make_safetensors.py

Each tensor holds x[i] = (i - 5) * 0.25 (floats) or i - 5 (integers) in row-major order; all
values are exact in every dtype used.
"""
import os

import numpy as np
from safetensors.numpy import save_file


def vals(n, integer=False):
    i = np.arange(n, dtype=np.float64) - 5
    return i if integer else i * 0.25


def main():
    out = os.path.join(os.path.dirname(__file__), "..", "data", "st_ref.safetensors")
    bf16_bits = (vals(12).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    tensors = {
        "f32": vals(12).astype(np.float32).reshape(3, 4),
        "f16": vals(10).astype(np.float16),
        "i32": vals(5, True).astype(np.int32),
        "f64": vals(4).astype(np.float64),
        "i64": vals(4, True).astype(np.int64),
    }
    save_file(tensors, out, metadata={"format": "pt"})
    # numpy has no bfloat16: write it through the raw API by re-saving with torch if present,
    # else patch the header of a uint16 tensor (same bytes, dtype renamed).
    try:
        import torch
        from safetensors.torch import save_file as tsave

        tt = {k: torch.from_numpy(v) for k, v in tensors.items()}
        tt["bf16"] = torch.from_numpy(vals(12).astype(np.float32).reshape(2, 3, 2)).to(torch.bfloat16)
        tsave(tt, out, metadata={"format": "pt"})
    except ImportError:
        tensors["bf16"] = bf16_bits.reshape(2, 3, 2)
        save_file(tensors, out, metadata={"format": "pt"})
        import json
        import struct

        raw = open(out, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        hdr = json.loads(raw[8 : 8 + n])
        hdr["bf16"]["dtype"] = "BF16"
        text = json.dumps(hdr, separators=(",", ":")).encode()
        text += b" " * (n - len(text))  # same length: offsets stay valid
        assert len(text) == n
        open(out, "wb").write(raw[:8] + text + raw[8 + n :])
    print("wrote", out)


if __name__ == "__main__":
    main()
