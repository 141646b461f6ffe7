"""``quamba eval MODEL --ppl FILE``: perplexity of a floating-point or quantized model on a text file."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError

GENERIC_STEMS = {"test", "valid", "validation", "val", "train", "wiki.test", "wiki.valid", "data"}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="evaluate perplexity on a text file",
                              description="Perplexity over non-overlapping windows of --seqlen tokens "
                                          "(WikiText-2 protocol: lines joined with blank lines, remainder dropped).")
    p.add_argument("model", help="model directory or hub id (floating-point or quamba quantized)")
    p.add_argument("--ppl", required=True, metavar="FILE",
                   help="text file (WikiText-2 raw layout) or .jsonl with a \"text\" field per line")
    p.add_argument("--seqlen", type=int, default=2048, help="window length in tokens (default 2048)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="evaluate only the first N tokens of the text (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="compute dtype (default: fp32 on CPU, the checkpoint's dtype on GPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a line of text")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..evaluation import load_ppl_text, perplexity
    from ..loading import parse_device

    for name in ("seqlen", "batch_size", "max_tokens"):
        value = getattr(args, name)
        low = 2 if name == "seqlen" else 1
        if value is not None and value < low:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    text = load_ppl_text(args.ppl)
    device = parse_device(args.device)
    dtype = args.dtype or ("fp32" if device.type == "cpu" else None)
    model, tokenizer = api.load(args.model, device, dtype)
    start = time.perf_counter()
    res = perplexity(model, tokenizer, text, seqlen=args.seqlen, batch_size=args.batch_size,
                     max_tokens=args.max_tokens, device=device, show_progress=not args.no_progress)
    seconds = time.perf_counter() - start
    label = dataset_label(args.ppl)
    if args.json:
        out = {"model": str(args.model), "data": str(args.ppl), "dataset": label,
               "ppl": _finite_or_none(res["ppl"]), "nll": _finite_or_none(res["nll"]),
               "windows": res["windows"], "seqlen": res["seqlen"], "tokens": res["tokens"],
               "stream_tokens": res["stream_tokens"], "batch_size": args.batch_size,
               "device": str(device), "dtype": str(getattr(model, "dtype", dtype)).replace("torch.", ""),
               "seconds": round(seconds, 3)}
        print(json.dumps(out))
    else:
        print(f"{label} ppl {res['ppl']:.2f} ({res['windows']} windows x {res['seqlen']} tokens)")
    sys.stdout.flush()
    return 0


def dataset_label(path: str) -> str:
    """A short name for the evaluation file: its stem, or its folder's name for generic stems like ``test``."""
    p = Path(path)
    stem = p.stem
    if stem.lower() in GENERIC_STEMS and p.parent.name:
        return p.parent.name.removesuffix("-raw")
    return stem


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
