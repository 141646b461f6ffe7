"""Decode GEMV configurations timed inside CUDA graphs on rotating weights (HBM, not L2, not launch).

For each real decode shape it times our fp16 GEMV, the tensor-core int8 GEMV plans and the
elementwise int8 GEMV over a grid of block sizes, and prints the best of each with its GB/s.
Usage: PYTHONPATH=src python benchmarks/gemv_sweep.py [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
import triton

from quamba.kernels.gemv import _gemv_kernel, launch_int8_gemv
from quamba.kernels.int8_gemm import epilogue_args, launch_gemv

SHAPES = {"in_proj m1": (10240, 2560), "x_proj m1": (192, 5120), "dt_proj m1": (5120, 160),
          "out_proj": (2560, 5120), "in_proj m2": (10576, 2560), "lm_head": (50280, 2560)}
FP16 = [(bn, bk, w) for bn, bk, w in [(1, 1024, 4), (1, 2048, 4), (2, 1024, 4), (2, 2048, 8), (4, 512, 4),
                                      (4, 1024, 4), (4, 1024, 8), (8, 256, 4), (8, 512, 4), (8, 1024, 8),
                                      (16, 256, 4), (16, 512, 8), (2, 512, 2), (4, 256, 2)]]
INT8_EW = [(bn, bk, w) for bn, bk, w in [(2, 1024, 4), (4, 512, 4), (4, 1024, 4), (8, 512, 4), (8, 1024, 8),
                                         (16, 256, 4), (16, 512, 8), (4, 2048, 8), (2, 2048, 4), (32, 256, 8)]]
INT8_TC = [(bn, bk, s, st) for bn in (16, 32, 64) for bk in (256, 512) for s in (1, 2, 4) for st in (3,)]


def graph_us(calls, reps: int = 7) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts) * 1e3 / len(calls)


def copies(n: int, k: int, dtype: torch.dtype) -> list[torch.Tensor]:
    per = n * k * (1 if dtype == torch.int8 else 2)
    cnt = max(4, min(128, (384 << 20) // per))
    if dtype == torch.int8:
        return [torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda") for _ in range(cnt)]
    return [torch.randn(n, k, dtype=dtype, device="cuda") for _ in range(cnt)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--m", type=int, default=1)
    args = ap.parse_args()
    m = args.m
    res = {}
    for name, (n, k) in SHAPES.items():
        row = {}
        ws = copies(n, k, torch.float16)
        x = torch.randn(m, k, dtype=torch.float16, device="cuda")
        y = torch.empty(m, n, dtype=torch.float16, device="cuda")
        best = None
        for bn, bk, nw in FP16:
            if bk > 2 * triton.next_power_of_2(k):
                continue
            calls = [lambda w=w, bn=bn, bk=bk, nw=nw: _gemv_kernel[(triton.cdiv(n, bn),)](
                x, w, w, y, m, n, k, x.stride(0), w.stride(0), y.stride(0), HAS_BIAS=False,
                BLOCK_M=max(1, triton.next_power_of_2(m)), BLOCK_N=bn, BLOCK_K=bk, num_warps=nw) for w in ws]
            t = graph_us(calls)
            if best is None or t < best[0]:
                best = (t, (bn, bk, nw))
        row["fp16"] = {"us": best[0], "cfg": best[1], "GBps": n * k * 2 / best[0] / 1e3}
        del ws
        ws = copies(n, k, torch.int8)
        xq = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
        out = torch.empty(m, n, dtype=torch.int8, device="cuda")
        ep = epilogue_args(0.01, 0.01, None, 0.5, m, n, out)
        best = None
        for bn, bk, nw in INT8_EW:
            if bk > 2 * triton.next_power_of_2(k):
                continue
            calls = [lambda w=w, bn=bn, bk=bk, nw=nw: launch_int8_gemv(xq, w, out, ep, bn, bk, nw) for w in ws]
            t = graph_us(calls)
            if best is None or t < best[0]:
                best = (t, (bn, bk, nw))
        row["int8_ew"] = {"us": best[0], "cfg": best[1], "GBps": n * k / best[0] / 1e3}
        best = None
        for bn, bk, split, st in INT8_TC:
            kb = triton.cdiv(k, bk)
            if split > kb or bk > 2 * triton.next_power_of_2(k):
                continue
            per = triton.cdiv(kb, split)
            plan = (bn, bk, triton.cdiv(kb, per), per * bk)
            calls = [lambda w=w, plan=plan, st=st: launch_gemv(xq, w, out, ep, plan, st) for w in ws]
            t = graph_us(calls)
            if best is None or t < best[0]:
                best = (t, plan + (st,))
        row["int8_tc"] = {"us": best[0], "cfg": best[1], "GBps": n * k / best[0] / 1e3}
        del ws
        torch.cuda.empty_cache()
        res[name] = row
        print(f"{name:12s} N={n:6d} K={k:5d}  " + "  ".join(
            f"{kind} {v['us']:7.2f}us {v['GBps']:6.0f}GB/s {v['cfg']}" for kind, v in row.items()), flush=True)
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
