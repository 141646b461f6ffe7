"""The same W8A8 checkpoint evaluated through the Triton kernels (GPU) and the plain-torch reference (CPU).

Quantizes a model with the Quamba recipe, saves it, reloads it on each device and compares
WikiText-2 perplexity; the issue asks for agreement within 0.5%.
Usage: PYTHONPATH=src python benchmarks/gpu_vs_cpu_ppl.py MODEL --calib FILE --ppl FILE [--max-tokens N] [--json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from quamba import api
from quamba.evaluation.perplexity import load_ppl_text, perplexity, tokenize_stream
from quamba.loading import load_model, load_tokenizer
from quamba.quantization import RECIPES, quantize_
from quamba.quantization.calib_data import load_calibration_samples
from quamba.quantized_io import save_quantized


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--ppl", required=True)
    ap.add_argument("--num-samples", type=int, default=128)
    ap.add_argument("--percentile", type=float, default=0.99999)
    ap.add_argument("--max-tokens", type=int, default=65536)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--dtype", default="fp32", help="float dtype of the model and of the quantized ops' float "
                    "outputs (mamba1-small overflows fp16: its layer-10 SSM output reaches ~7e4)")
    ap.add_argument("--devices", default="cuda,cpu", help="evaluation devices; the first one is compared to the last")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tok = load_tokenizer(args.model)
    devices = args.devices.split(",")
    model = load_model(args.model, device=devices[0], dtype=args.dtype)
    calib = load_calibration_samples(args.calib, tok, num_samples=args.num_samples, seqlen=512, seed=0,
                                     show_progress=False)
    quantize_(model, RECIPES["quamba"](percentile=args.percentile), [c.to(devices[0]) for c in calib], show_progress=False)
    ids = tokenize_stream(tok, load_ppl_text(args.ppl))
    out = {"model": args.model, "max_tokens": args.max_tokens, "seqlen": args.seqlen, "dtype": args.dtype}
    with tempfile.TemporaryDirectory() as d:
        save_quantized(model, tok, f"{d}/q", overwrite=True)
        del model
        for dev in devices:
            m, _ = api.load(f"{d}/q", device=dev)
            t = time.time()
            with torch.inference_mode():
                r = perplexity(m, None, ids, seqlen=args.seqlen, max_tokens=args.max_tokens, show_progress=False)
            out[dev] = {"ppl": r["ppl"], "windows": r["windows"], "seconds": time.time() - t}
            del m
    a, b = out[devices[0]]["ppl"], out[devices[-1]]["ppl"]
    out["rel_diff"] = abs(a - b) / b
    if args.json:
        print(json.dumps(out))
    print(f"{args.model}: W8A8 ppl {devices[0]} {a:.4f}  {devices[-1]} {b:.4f}  relative difference "
          f"{100 * out['rel_diff']:.3f}% over {out[devices[-1]]['windows']} x {args.seqlen} tokens")


if __name__ == "__main__":
    main()
