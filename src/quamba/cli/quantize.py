"""``quamba quantize MODEL --calib FILE --out DIR``: calibrate, quantize (W8A8) and save a model."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError


def add_parser(subparsers: Any) -> None:
    from ..quantization.recipes import RECIPES

    p = subparsers.add_parser("quantize", help="quantize a model with a W8A8 recipe and save it",
                              description="Calibrate static int8 scales on --calib, quantize the model with "
                                          "the chosen recipe and save it as a quamba quantized directory.")
    p.add_argument("model", help="floating-point model directory or hub id")
    p.add_argument("--recipe", default="quamba", help=f"one of {', '.join(RECIPES)} (default quamba)")
    p.add_argument("--wbits", type=int, default=8, help="weight bits (only 8 for now)")
    p.add_argument("--abits", type=int, default=8, help="activation bits (only 8 for now)")
    p.add_argument("--calib", required=True, metavar="FILE",
                   help="calibration text: .txt, .jsonl with a \"text\" field per line, or a hub dataset id")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory of the quantized model")
    p.add_argument("--num-samples", type=int, default=512, help="calibration windows (default 512)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    p.add_argument("--percentile", type=float, default=None,
                   help="quantile kept by percentile observers (recipe default 0.9995; 0.99999 suits small models)")
    p.add_argument("--state-percentile", type=float, default=None,
                   help="quantile for the SSM state (default: --percentile)")
    p.add_argument("--alpha", type=float, default=None, help="SmoothQuant migration strength (smoothquant recipe)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration window offsets (default 0)")
    p.add_argument("--fake-quant", action="store_true", help="simulate the int8 points in float (research mode)")
    p.add_argument("--quantize-embedding", action="store_true", help="int8 embedding table (per-row scales)")
    p.add_argument("--quantize-lm-head", action="store_true", help="W8A8 lm_head")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="dtype of the parts left in floating point (default: fp32 on CPU, the checkpoint's on GPU)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(run=run)


def recipe_from_args(args: argparse.Namespace):
    """The recipe config the flags describe (raises ``InvalidArgumentError`` on bad combinations)."""
    from ..quantization.recipes import get_recipe

    settings: dict[str, Any] = dict(wbits=args.wbits, abits=args.abits, fake_quant=args.fake_quant,
                                    quantize_embedding=args.quantize_embedding, quantize_lm_head=args.quantize_lm_head)
    for name in ("percentile", "state_percentile", "alpha"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.alpha is not None and args.recipe != "smoothquant":
        raise InvalidArgumentError("--alpha only applies to the smoothquant recipe")
    return get_recipe(args.recipe, **settings)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidArgumentError(f"--out {out} is not empty (pass --overwrite to replace it)")


def run(args: argparse.Namespace) -> int:
    from ..loading import load_model, load_tokenizer, parse_device
    from ..quantization.calib_data import load_calibration_samples
    from ..quantization.recipes import quantize_
    from ..quantized_io import save_quantized

    recipe = recipe_from_args(args)
    for name, low in (("num_samples", 1), ("seqlen", 2)):
        if getattr(args, name) < low:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    out = Path(args.out)
    _check_out(out, args.overwrite)
    device = parse_device(args.device)
    dtype = args.dtype or ("fp32" if device.type == "cpu" else None)
    start = time.perf_counter()
    tokenizer = load_tokenizer(args.model)
    samples = load_calibration_samples(args.calib, tokenizer, num_samples=args.num_samples, seqlen=args.seqlen,
                                       seed=args.seed, show_progress=not args.no_progress)
    model = load_model(args.model, device=device, dtype=dtype)
    quantize_(model, recipe, samples, show_progress=not args.no_progress)
    save_quantized(model, tokenizer, out, overwrite=args.overwrite)
    print(f"quantized {args.model} with {recipe.name} W{recipe.wbits}A{recipe.abits} "
          f"({len(samples)} x {args.seqlen} calibration tokens) -> {out} in {time.perf_counter() - start:.1f}s")
    sys.stdout.flush()
    return 0
