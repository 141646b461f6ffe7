"""Time to first token of fp16 and W8A8, with and without replayed launches, in alternating rounds.

TTFT is an eager prefill, host-bound on the H200 at these shapes, and host speed drifts within a run
(one bench run read 33 ms for an fp16 prefill that reads 19 ms in others): interleaving the variants
in rounds in one process and taking the median over rounds keeps the drift out of their ratios.
Each round measures every variant with ``quamba.bench.cuda_time_ms`` (median of ``--repeats``).
Four settings: ``all`` (op and block replays, eager prefill kernels launched with PDL), ``nopdl`` (the same
without PDL: ``pdl.EAGER`` off), ``ops`` (op replays only, no PDL: ``block_replay.ENABLED`` off) and ``off``
(``quamba.kernels.reuse.ENABLED`` off; ``QUAMBA_REPLAY=0`` at start-up does the same for a process). Every switch
drops the recorded replays (``reuse.forget``), which the warm-up calls record again.
Usage: PYTHONPATH=src python benchmarks/ttft_rounds.py --shape mamba-2.8b [--rounds 7] [--settings all,nopdl] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from quamba.bench import cuda_time_ms
from quamba.cli.bench import build_model
from quamba.graphs import GraphDecoder
from quamba.kernels import block_replay, pdl, reuse

# (op replays, block replays, eager PDL)
SETTINGS = {"all": (True, True, True), "nopdl": (True, True, False), "ops": (True, False, False),
            "off": (False, False, False)}

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mamba-2.8b")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="a comma-separated subset of " + ",".join(SETTINGS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    settings = [s for s in SETTINGS if s in args.settings.split(",")]
    decoders = {}
    for prec in ("fp16", "w8a8"):
        model = build_model(None, args.shape, prec)
        prompt = torch.randint(0, model.config.tokenizer_vocab_size, (1, args.prompt_len), device="cuda")
        decoders[prec] = (GraphDecoder(model, 1), prompt)
    variants = [(prec, s) for s in settings for prec in ("fp16", "w8a8")]
    times: dict[str, list[float]] = {f"{p} replay={s}": [] for p, s in variants}
    for _ in range(args.rounds):
        for prec, setting in variants:
            reuse.ENABLED, block_replay.ENABLED, pdl.EAGER = SETTINGS[setting]
            reuse.forget()
            dec, prompt = decoders[prec]
            times[f"{prec} replay={setting}"].append(
                cuda_time_ms(lambda: dec.prefill(prompt), warmup=3, repeats=args.repeats))
    reuse.ENABLED = block_replay.ENABLED = pdl.EAGER = True
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {"shape": args.shape, "device": torch.cuda.get_device_name(), "prompt_len": args.prompt_len,
              "rounds": times, "median_ms": med,
              "w8a8_over_fp16": {s: med[f"w8a8 replay={s}"] / med[f"fp16 replay={s}"] for s in settings}}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for k, v in times.items():
            print(f"{args.shape} {k:18s} median {med[k]:7.2f} ms  rounds " + " ".join(f"{t:.2f}" for t in v))
        print(f"{args.shape} W8A8/fp16 TTFT: " + ", ".join(f"replay={s} {r:.3f}"
                                                          for s, r in report["w8a8_over_fp16"].items()))


if __name__ == "__main__":
    main()
