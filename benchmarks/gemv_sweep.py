"""Decode GEMV configurations timed inside CUDA graphs on rotating weights (HBM, not L2, not launch).

For each real decode shape it times our fp16 GEMV, the tensor-core int8 GEMV plans, the
elementwise int8 GEMV and the int32-word int8 GEMVs (dp4a, dp4a with register prefetch, shift
unpacking) over grids of block sizes, and prints the best of each with its GB/s, then the
``int8_gemv_plan`` entry each shape would get (fastest variant among ew/dp4a/dp4a_pf/i32).
Usage: PYTHONPATH=src python benchmarks/gemv_sweep.py [--json] [--m M] [--only int8|fp16]
"""
from __future__ import annotations

import argparse
import json

import torch
import triton

from quamba.kernels.gemv import INT8_VARIANTS, gemv, launch_int8_gemv
from quamba.kernels.int8_gemm import epilogue_args, launch_gemv
from quamba.kernels.timing import graph_replay_ms

SHAPES = {"in_proj m1": (10240, 2560), "x_proj m1": (192, 5120), "dt_proj m1": (5120, 160),
          "out_proj": (2560, 5120), "in_proj m2": (10576, 2560), "lm_head": (50280, 2560)}
FP16 = [(bn, bk, w) for bn, bk, w in [(1, 1024, 4), (1, 2048, 4), (2, 1024, 4), (2, 2048, 8), (4, 512, 4),
                                      (4, 1024, 4), (4, 1024, 8), (8, 256, 4), (8, 512, 4), (8, 1024, 8),
                                      (16, 256, 4), (16, 512, 8), (2, 512, 2), (4, 256, 2)]]
INT8_EW = [(bn, bk, w) for bn, bk, w in [(2, 1024, 4), (4, 512, 4), (4, 1024, 4), (8, 512, 4), (8, 1024, 8),
                                         (16, 256, 4), (16, 512, 8), (4, 2048, 8), (2, 2048, 4), (32, 256, 8)]]
WORDS = {v: [(bn, bk, w) for bn in (1, 2, 4, 8, 16) for bk in (256, 512, 1024, 2048, 4096) for w in (2, 4, 8)
             if 8 <= bn * bk // (128 * w) <= (16 if v.endswith("_pf") else 32)] for v in ("dp4a", "dp4a_pf")}
WORDS["i32"] = [(2, 1024, 4), (4, 1024, 4), (4, 2048, 8), (8, 512, 4), (16, 256, 4)]
INT8_TC = [(bn, bk, s, st) for bn in (16, 32, 64) for bk in (256, 512) for s in (1, 2, 4) for st in (3,)]


def graph_us(calls, reps: int = 7) -> float:
    """Microseconds per call of ``calls`` replayed from one CUDA graph."""
    return graph_replay_ms(calls, reps) * 1e3 / len(calls)


def copies(n: int, k: int, dtype: torch.dtype) -> list[torch.Tensor]:
    per = n * k * (1 if dtype == torch.int8 else 2)
    cnt = max(4, min(128, (384 << 20) // per))
    if dtype == torch.int8:
        return [torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda") for _ in range(cnt)]
    return [torch.randn(n, k, dtype=dtype, device="cuda") for _ in range(cnt)]


def best_of(grid, make_calls) -> tuple[float, tuple] | None:
    """Fastest ``(us, cfg)`` over ``grid``; ``make_calls(cfg)`` gives the graph's calls or None to skip."""
    best = None
    for cfg in grid:
        calls = make_calls(cfg)
        if calls is None:
            continue
        t = graph_us(calls)
        if best is None or t < best[0]:
            best = (t, cfg)
    return best


def sweep_fp16(n: int, k: int, m: int) -> dict:
    ws = copies(n, k, torch.float16)
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")

    def make(cfg):
        bn, bk, nw = cfg
        if bk > 2 * triton.next_power_of_2(k):
            return None
        return [lambda w=w: gemv(x, w, block_n=bn, block_k=bk, num_warps=nw) for w in ws]

    best = best_of(FP16, make)
    return {"fp16": {"us": best[0], "cfg": best[1], "GBps": n * k * 2 / best[0] / 1e3}} if best else {}


def sweep_int8(n: int, k: int, m: int, variants: list[str]) -> dict:
    ws = copies(n, k, torch.int8)
    xq = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    out = torch.empty(m, n, dtype=torch.int8, device="cuda")
    ep = epilogue_args(0.01, 0.01, None, 0.5, m, n, out)
    row = {}
    grids = {"ew": INT8_EW, **WORDS}
    for variant in [v for v in variants if v in grids]:
        def make(cfg, variant=variant):
            bn, bk, nw = cfg
            if bk > 2 * triton.next_power_of_2(k):
                return None
            bn_m = max(1, bn // triton.next_power_of_2(m))
            return [lambda w=w: launch_int8_gemv(xq, w, out, ep, bn_m, bk, nw, variant) for w in ws]

        best = best_of(grids[variant], make)
        if best:
            row[f"int8_{variant}"] = {"us": best[0], "cfg": best[1], "GBps": n * k / best[0] / 1e3}
    if "tc" in variants:
        def make_tc(cfg):
            bn, bk, split, st = cfg
            kb = triton.cdiv(k, bk)
            if split > kb or bk > 2 * triton.next_power_of_2(k):
                return None
            per = triton.cdiv(kb, split)
            plan = (bn, bk, triton.cdiv(kb, per), per * bk)
            return [lambda w=w: launch_gemv(xq, w, out, ep, plan, st) for w in ws]

        best = best_of(INT8_TC, make_tc)
        if best:
            t, (bn, bk, split, st) = best
            per = triton.cdiv(triton.cdiv(k, bk), split)
            row["int8_tc"] = {"us": t, "cfg": (bn, bk, triton.cdiv(triton.cdiv(k, bk), per), per * bk, st),
                              "GBps": n * k / t / 1e3}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--only", choices=["int8", "fp16"], default=None, help="time only this dtype's kernels")
    ap.add_argument("--variants", default="ew,dp4a,dp4a_pf,i32,tc",
                    help="comma-separated int8 kernels to sweep (ew, dp4a, dp4a_pf, i32, tc)")
    args = ap.parse_args()
    m, variants = args.m, args.variants.split(",")
    res = {}
    for name, (n, k) in SHAPES.items():
        row = {}
        if args.only != "int8":
            row.update(sweep_fp16(n, k, m))
        if args.only != "fp16":
            row.update(sweep_int8(n, k, m, variants))
        torch.cuda.empty_cache()
        res[name] = row
        print(f"{name} N={n} K={k} M={m}", flush=True)
        for kind, v in row.items():
            print(f"    {kind:14s} {v['us']:8.2f}us {v['GBps']:6.0f}GB/s {v['cfg']}", flush=True)
    plans = {}
    for name, row in res.items():
        cands = [(v["us"], kind[5:], v["cfg"]) for kind, v in row.items() if kind[5:] in INT8_VARIANTS]
        if cands:
            t, variant, cfg = min(cands)
            plans[name] = (variant, *cfg)
            print(f"int8_gemv_plan {name} (N={SHAPES[name][0]}, K={SHAPES[name][1]}): {plans[name]}  {t:.2f}us")
    if args.json:
        print(json.dumps({"results": res, "int8_gemv_plan": plans}))


if __name__ == "__main__":
    main()
