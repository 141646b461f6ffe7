"""W8A8 decode TPOT with the conv update inside in_proj (``qin_proj_conv_step``) under several tile plans, in the
model, against the two-launch chain; PDL on and off.

A kernel timed alone (benchmarks/qin_proj_sweep.py) does not show how it overlaps its neighbours under PDL in a
decode graph: here each plan is patched into ``qin_proj_plan``, a CUDA-graph decoder is captured, and its step is
timed (CUDA events, median) and run greedily. With PDL off the fused step must give the tokens it gives with PDL
on (a difference would be a race); against the two-launch chain tokens may part where a conv output rounds
differently (the two kernels evaluate the same fp32 expression, contracted into FMAs differently).
Usage: PYTHONPATH=src python benchmarks/qin_proj_tpot.py --shape mamba-2.8b --tiles "0,32,512,4;0,16,512,4" --json
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from quamba.bench import cuda_time_ms
from quamba.cli.bench import build_model
from quamba.graphs import GraphDecoder
from quamba.kernels import qin_proj_step as K

from decode_variants import greedy  # benchmarks/ is on the path when this script runs


def run(model, prompt, nxt, env: dict) -> tuple[float, list[int]]:
    os.environ.update(env)
    dec = GraphDecoder(model, 1)
    dec.prefill(prompt)
    tpot = cuda_time_ms(lambda: dec.step(nxt), warmup=5, repeats=80)
    return tpot, greedy(dec, prompt[:, :64], 24)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mamba-2.8b")
    ap.add_argument("--tiles", default="", help="';'-separated prefetch,BLOCK_N,BLOCK_K,warps plans to try")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = build_model(None, args.shape, "w8a8")
    vocab = model.config.tokenizer_vocab_size
    g = torch.Generator(device="cuda").manual_seed(0)
    prompt = torch.randint(0, vocab, (1, 256), device="cuda", generator=g)
    nxt = torch.randint(0, vocab, (1,), device="cuda", generator=g)
    plan = K.qin_proj_plan
    on = {"QUAMBA_PDL": "1", "QUAMBA_FUSED_IN_PROJ": "1"}
    rows = {}
    rows["two launches"] = run(model, prompt, nxt, {**on, "QUAMBA_FUSED_IN_PROJ": "0"})
    rows["library plan"] = run(model, prompt, nxt, on)
    rows["library plan, PDL off"] = run(model, prompt, nxt, {**on, "QUAMBA_PDL": "0"})
    rows["two launches, PDL off"] = run(model, prompt, nxt, {"QUAMBA_PDL": "0", "QUAMBA_FUSED_IN_PROJ": "0"})
    for spec in filter(None, args.tiles.split(";")):
        pf, bn, bk, w = (int(v) for v in spec.split(","))
        K.qin_proj_plan = lambda n, k, m, xproj, t=(bool(pf), bn, bk, w): (t[0], max(1, t[1] // m), t[2], t[3])
        rows[f"tiles {spec}"] = run(model, prompt, nxt, on)
    K.qin_proj_plan = plan
    os.environ.update(on)
    ref = rows["library plan"][1]
    report = {"shape": args.shape, "rows": {k: dict(tpot_ms=t, tokens_equal_library=tok == ref, tokens=tok)
                                            for k, (t, tok) in rows.items()}}
    for k, r in report["rows"].items():
        print(f"== {args.shape} {k:<28} tpot {r['tpot_ms']:.3f} ms  tokens == library plan's: {r['tokens_equal_library']}",
              flush=True)
    if args.json:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
