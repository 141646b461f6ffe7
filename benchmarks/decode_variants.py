"""Decode and prefill under launch variants (PDL, fused Mamba2 decode step, block norms folded into GEMVs, the
W8A8 conv update inside in_proj).

For each precision: TPOT of a CUDA-graph decoder captured under each variant, the greedy tokens of
all (must agree), the eager prefill's wall time, and (``--cprofile``) where the prefill's host time goes.
Usage: PYTHONPATH=src python benchmarks/decode_variants.py --shape mamba-2.8b --precision fp16,w8a8 --json
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time

import torch

from quamba.bench import cuda_time_ms
from quamba.cli.bench import build_model
from quamba.graphs import GraphDecoder

from profile_step import gpu_total_us  # benchmarks/ is on the path when this script runs


_DEFAULTS = {"QUAMBA_PDL": "1", "QUAMBA_FUSED_DECODE": "1", "QUAMBA_FOLD_NORMS": "1", "QUAMBA_FUSED_IN_PROJ": "1"}
VARIANTS = {"plain": {"QUAMBA_PDL": "0"}, "pdl": {}, "unfused": {"QUAMBA_FUSED_DECODE": "0"},
            "nofold": {"QUAMBA_FOLD_NORMS": "0"}, "noinproj": {"QUAMBA_FUSED_IN_PROJ": "0"}}


def greedy(dec: GraphDecoder, prompt: torch.Tensor, n: int) -> list[int]:
    logits = dec.prefill(prompt)
    out = []
    for _ in range(n):
        tok = logits.argmax(-1)
        out.append(int(tok[0]))
        logits = dec.step(tok)
    return out


@torch.inference_mode()
def host_and_gpu_ms(model, prompt: torch.Tensor, reps: int = 5) -> tuple[float, float]:
    """Median host time to issue one eager prefill (no sync inside) and the summed GPU kernel time
    of one prefill (torch.profiler): host > GPU means the prefill is launch-bound."""
    from torch.profiler import ProfilerActivity, profile

    cache = model.allocate_cache(prompt.shape[0])
    host = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(prompt, cache, last_only=True)
        host.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(prompt, cache, last_only=True)
        torch.cuda.synchronize()
    gpu = gpu_total_us(prof) / 1e3
    return statistics.median(host[1:]), gpu


def host_profile(fn, rows: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    torch.cuda.synchronize()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(rows)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mamba-2.8b")
    ap.add_argument("--precision", default="fp16,w8a8")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--cprofile", type=int, default=0, help="rows of the prefill host profile (0: none)")
    ap.add_argument("--variants", default="plain,pdl", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = {"shape": args.shape}
    for prec in args.precision.split(","):
        model = build_model(None, args.shape, prec)
        vocab = model.config.tokenizer_vocab_size
        g = torch.Generator(device="cuda").manual_seed(0)
        prompt = torch.randint(0, vocab, (1, args.prompt_len), device="cuda", generator=g)
        nxt = torch.randint(0, vocab, (1,), device="cuda", generator=g)
        row = {}
        tokens = {}
        for name in args.variants.split(","):
            os.environ.update({**_DEFAULTS, **VARIANTS[name]})
            dec = GraphDecoder(model, 1)
            row[f"ttft_ms_{name}"] = cuda_time_ms(lambda: dec.prefill(prompt), warmup=2, repeats=5)
            dec.prefill(prompt)
            row[f"tpot_ms_{name}"] = cuda_time_ms(lambda: dec.step(nxt), warmup=5, repeats=60)
            tokens[name] = greedy(dec, prompt[:, :64], 24)
            del dec
            torch.cuda.empty_cache()
        os.environ.update(_DEFAULTS)
        first = next(iter(tokens.values()))
        row["tokens_agree"] = all(t == first for t in tokens.values())
        row["prefill_host_ms"], row["prefill_gpu_busy_ms"] = host_and_gpu_ms(model, prompt)
        if args.cprofile:
            cache = model.allocate_cache(1)
            with torch.inference_mode():
                row["prefill_host_profile"] = host_profile(lambda: model(prompt, cache, last_only=True),
                                                           args.cprofile)
        report[prec] = row
        print(f"== {args.shape} {prec}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in row.items() if k != "prefill_host_profile"),
              flush=True)
        if "prefill_host_profile" in row and not args.json:
            print(row["prefill_host_profile"])
        del model
        torch.cuda.empty_cache()
    if args.json:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
