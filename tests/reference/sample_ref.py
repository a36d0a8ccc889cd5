#!/usr/bin/env python3
"""Golden sampling distributions from HF transformers' own logits processors.

Run under the venv with torch + transformers:
    /work/venv/bin/python tests/reference/sample_ref.py
For a few random logits vectors, histories and settings, applies transformers'
RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper
in generate()'s order and writes the softmax of the result (the distribution generate() samples
from) to tests/data/sample/hf_probs.json. tests/test_sample.c compares hyb_sampler_probs with it.
"""
import json
import os

import numpy as np
import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "sample")
V = 64
CASES = [
    dict(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0),
    dict(temperature=0.7, top_k=10, top_p=1.0, repetition_penalty=1.0),
    dict(temperature=1.3, top_k=0, top_p=0.8, repetition_penalty=1.0),
    dict(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2),
    dict(temperature=1.0, top_k=0, top_p=0.5, repetition_penalty=1.5),
    dict(temperature=0.5, top_k=5, top_p=0.95, repetition_penalty=0.8),
]


def main():
    rng = np.random.default_rng(1234)
    out = []
    for c in CASES:
        logits = (rng.standard_normal(V) * 2.5).astype(np.float32)
        hist = rng.integers(0, V, size=12).tolist()
        scores = torch.tensor(logits)[None, :]
        ids = torch.tensor(hist)[None, :]
        if c["repetition_penalty"] != 1.0:
            scores = RepetitionPenaltyLogitsProcessor(c["repetition_penalty"])(ids, scores)
        if c["temperature"] != 1.0:
            scores = TemperatureLogitsWarper(c["temperature"])(ids, scores)
        if c["top_k"] > 0:
            scores = TopKLogitsWarper(c["top_k"])(ids, scores)
        if c["top_p"] < 1.0:
            scores = TopPLogitsWarper(c["top_p"])(ids, scores)
        probs = torch.softmax(scores.double(), dim=-1)[0].numpy()
        out.append(dict(c, logits=[float(x) for x in logits], history=hist,
                        probs=[float(p) for p in probs]))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "hf_probs.json"), "w") as f:
        json.dump({"generator": "tests/reference/sample_ref.py", "V": V, "cases": out}, f)
    print("wrote", len(out), "cases")


if __name__ == "__main__":
    main()
