"""Render BENCHMARKS.md from the JSON that `quamba bench --json` wrote (one file per model shape),
plus, optionally, what benchmarks/decode_variants.py wrote (PDL on/off, prefill host vs GPU time).

Usage: python benchmarks/render_benchmarks.py benchmarks/results/bench_*.json \
           [benchmarks/results/decode_variants_*.json] > BENCHMARKS.md
"""
from __future__ import annotations

import json
import sys

TARGETS = """Targets (issue: fast GPU inference), batch 1:
- fp16 decode time per output token within 1.5x of the decode floor, and >= 10x faster than
  transformers' implementation on the same GPU;
- W8A8 decode time per token <= 0.6x our fp16; W8A8 time to first token at 1024 prompt tokens
  <= 0.85x our fp16; W8A8 model size <= 0.55x fp16."""


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(paths: list[str]) -> None:
    print("# Benchmarks\n")
    print("Measured by `quamba bench` (median of repeated runs, CUDA events, decode replayed from a CUDA")
    print("graph, prefill eager). The decode floor is the bytes one decode step must read (every weight")
    print("but the embedding table, plus the SSM/conv states read and written) over the device-to-device")
    print("copy bandwidth measured in the same run. Random weights at the real model shapes (speed does")
    print("not depend on the values).\n")
    print(TARGETS + "\n")
    variants = []
    for p in paths:
        d = load(p)
        if "results" not in d:
            variants.append(d)
            continue
        rows = {(r["impl"], r["precision"]): r for r in d["results"]}
        print(f"## {d['model']} on {d['device']} (copy bandwidth {d['copy_bandwidth_GBps']:.0f} GB/s)\n")
        if d.get("command"):
            print(f"Command: `{d['command']}`\n")
        print("| impl | precision | TTFT ms | TPOT ms | TTLT ms | decode tok/s | peak GiB | size GiB | floor ms | TPOT / floor |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in d["results"]:
            fl = r.get("decode_floor_ms")
            print(f"| {r['impl']} | {r['precision']} | {r['ttft_ms']:.2f} | {r['tpot_ms']:.3f} | {r['ttlt_ms']:.1f} | "
                  f"{r['decode_tokens_per_s']:.1f} | {r['peak_mem_gib']:.2f} | {r['model_size_gib']:.2f} | "
                  f"{fl:.3f} | {r['tpot_ms'] / fl:.2f} |" if fl else
                  f"| {r['impl']} | {r['precision']} | {r['ttft_ms']:.2f} | {r['tpot_ms']:.3f} | {r['ttlt_ms']:.1f} | "
                  f"{r['decode_tokens_per_s']:.1f} | {r['peak_mem_gib']:.2f} | {r['model_size_gib']:.2f} | - | - |")
        fp, q, tf = rows.get(("quamba", "fp16")), rows.get(("quamba", "w8a8")), rows.get(("transformers", "fp16"))
        print()
        if fp and fp.get("decode_floor_ms"):
            x = fp["tpot_ms"] / fp["decode_floor_ms"]
            print(f"- fp16 TPOT / floor = {x:.2f} (target <= 1.5): {verdict(x <= 1.5)}")
        if fp and tf:
            x = tf["tpot_ms"] / fp["tpot_ms"]
            print(f"- transformers TPOT / ours = {x:.1f}x (target >= 10x): {verdict(x >= 10)}")
        if fp and q:
            a, b, c = q["tpot_ms"] / fp["tpot_ms"], q["ttft_ms"] / fp["ttft_ms"], q["model_size_gib"] / fp["model_size_gib"]
            print(f"- W8A8 / fp16 TPOT = {a:.2f} (target <= 0.6): {verdict(a <= 0.6)}")
            print(f"- W8A8 / fp16 TTFT = {b:.2f} (target <= 0.85): {verdict(b <= 0.85)}")
            print(f"- W8A8 / fp16 size = {c:.2f} (target <= 0.55): {verdict(c <= 0.55)}")
        print()
    if variants:
        render_variants(variants)


def load(path: str) -> dict:
    """A JSON file, or the JSON object that ends a log (decode_variants prints lines before it)."""
    text = open(path).read()
    return json.loads(text[text.index("\n{") + 1:] if not text.startswith("{") else text)


_VARIANT_COLUMNS = {"plain": "no PDL", "pdl": "PDL", "unfused": "PDL, unfused Mamba2 step",
                    "nofold": "PDL, block norms not folded"}


def render_variants(variants: list[dict]) -> None:
    print("## Decode variants (PDL, fused steps, folded norms); prefill host vs GPU time\n")
    print("From `benchmarks/decode_variants.py` (one process per shape: the same model and prompt, a CUDA-graph")
    print("decoder captured under each variant: without PDL (`QUAMBA_PDL=0`), with it (the default), with it")
    print("but the unfused Mamba2 decode chains (`QUAMBA_FUSED_DECODE=0`), or with it but one norm kernel per")
    print("block (`QUAMBA_FOLD_NORMS=0`); the eager prefill's host time to issue its launches against its")
    print("summed GPU kernel time). Host time above GPU time means the prefill waits on Python and launch")
    print("overhead, not on the GPU. Greedy tokens (24, random weights) are compared across the variants:")
    print("the variants round differently (and fp32 atomics sum in varying order), so near-tied random logits")
    print("can flip.\n")
    names = [n for n in _VARIANT_COLUMNS if any(f"tpot_ms_{n}" in d.get(p, {}) for d in variants
                                                for p in ("fp16", "w8a8"))]
    print("| shape | precision | " + " | ".join(f"TPOT ms, {_VARIANT_COLUMNS[n]}" for n in names)
          + " | greedy tokens agree | prefill host ms | prefill GPU ms |")
    print("|---|---|" + "---|" * len(names) + "---|---|---|")
    for d in variants:
        for prec in ("fp16", "w8a8"):
            r = d.get(prec)
            if r:
                cells = " | ".join(f"{r[f'tpot_ms_{n}']:.3f}" if f"tpot_ms_{n}" in r else "-" for n in names)
                print(f"| {d['shape']} | {prec} | {cells} | {r['tokens_agree']} | {r['prefill_host_ms']:.1f} | "
                      f"{r['prefill_gpu_busy_ms']:.1f} |")
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
