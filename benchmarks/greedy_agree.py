"""Greedy tokens of real checkpoints under decode variants (CUDA-graph decoder), to check that a
fused decode path picks the tokens of the unfused one.

Usage: PYTHONPATH=src python benchmarks/greedy_agree.py MODEL_DIR [MODEL_DIR ...] --variants pdl,nofold,unfused
       [--w8a8 CALIB_FILE]   (quantize each model with the Quamba recipe on 64 x 512 calibration tokens first)
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from quamba import api
from quamba.graphs import GraphDecoder

from decode_variants import _DEFAULTS, VARIANTS, greedy  # benchmarks/ is on the path when this script runs

PROMPTS = ["The history of", "In 1998, the city council", "Mamba is a state space model that"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--variants", default="pdl,nofold,unfused", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--w8a8", metavar="CALIB_FILE", help="quantize (Quamba recipe) with this calibration text")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = []
    for path in args.models:
        model, tok = api.load(path, device="cuda", dtype=args.dtype)
        if args.w8a8:
            from quamba.quantization import RECIPES, quantize_
            from quamba.quantization.calib_data import load_calibration_samples

            samples = load_calibration_samples(args.w8a8, tok, num_samples=64, seqlen=512, show_progress=False)
            quantize_(model, RECIPES["quamba"](), [s.cuda() for s in samples], show_progress=False)
        for prompt in PROMPTS:
            ids = torch.tensor([tok.encode(prompt)], device="cuda")
            out = {}
            for name in args.variants.split(","):
                os.environ.update({**_DEFAULTS, **VARIANTS[name]})
                out[name] = greedy(GraphDecoder(model, 1), ids, args.tokens)
            os.environ.update(_DEFAULTS)
            first = next(iter(out.values()))
            row = {"model": path, "prompt": prompt, "agree": all(t == first for t in out.values()),
                   "first_difference": {k: next((i for i, (a, b) in enumerate(zip(first, t)) if a != b), None)
                                        for k, t in out.items()}}
            report.append(row)
            print(f"{path} {prompt!r}: agree={row['agree']} first difference {row['first_difference']}")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
