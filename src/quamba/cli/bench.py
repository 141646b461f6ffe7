"""``quamba bench``: generation latency, throughput and memory on a CUDA GPU."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from ..errors import InvalidArgumentError

PRECISIONS = ("fp16", "w8a8")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency/memory benchmark on a CUDA GPU (ours vs transformers)")
    p.add_argument("model", nargs="?", help="model directory or hub id (or use --shape)")
    p.add_argument("--shape", help="random weights at a real model's shape: mamba-2.8b, mamba2-2.7b, mamba2-8b, ...")
    p.add_argument("--precision", default="fp16,w8a8", help="comma list of fp16, w8a8")
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def build_model(model: str | None, shape: str | None, precision: str):
    """An fp16 model on the GPU (from a checkpoint or random weights at a shape); for w8a8 the Quamba
    recipe with int8 embedding and LM head too (as the authors' evaluation script does)."""
    from ..config import shape_config
    from ..loading import load_model
    from ..models import MambaLM, init_random_weights

    if shape:
        cfg = shape_config(shape)
        with torch.device("cuda"):
            m = MambaLM(cfg).to(torch.float16)
        init_random_weights(m, seed=0)
        m.eval()
    else:
        m = load_model(model, device="cuda", dtype="fp16")
    if precision == "w8a8":
        from ..quantization import RECIPES, quantize_

        vocab = m.config.tokenizer_vocab_size
        calib = [torch.randint(0, vocab, (1, 128), device="cuda") for _ in range(2)]
        quantize_(m, RECIPES["quamba"](quantize_embedding=True, quantize_lm_head=True), calib, show_progress=False)
    return m


def run(args: argparse.Namespace) -> int:
    from ..bench import bench_ours, bench_transformers, copy_bandwidth, format_table

    if not torch.cuda.is_available():
        raise InvalidArgumentError("quamba bench needs a CUDA GPU (none is visible)")
    if bool(args.model) == bool(args.shape):
        raise InvalidArgumentError("give either a MODEL or --shape NAME")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise InvalidArgumentError(f"unknown precision {','.join(bad) or '(none)'}; expected {', '.join(PRECISIONS)}")
    for name in ("prompt_len", "gen_len", "batch", "repeats"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be >= 1")

    bw = copy_bandwidth()
    results = []
    cfg = None
    for prec in precisions:
        model = build_model(args.model, args.shape, prec)
        cfg = model.config
        results.append(bench_ours(model, prec, args.batch, args.prompt_len, args.gen_len, args.repeats, bw))
        del model
        torch.cuda.empty_cache()
    if not args.no_transformers:
        results.append(bench_transformers(cfg, args.batch, args.prompt_len, args.gen_len))
    if args.json:
        print(json.dumps({"device": torch.cuda.get_device_name(), "copy_bandwidth_GBps": bw / 1e9,
                          "command": "quamba " + " ".join(sys.argv[1:]),
                          "model": args.model or args.shape, "results": [r.to_dict() for r in results]}, indent=1))
    else:
        print(f"device: {torch.cuda.get_device_name()}  copy bandwidth {bw / 1e9:.0f} GB/s  model: "
              f"{args.model or args.shape}")
        print(format_table(results))
    return 0
