"""Prefill int8 GEMM on the GPU: every tile config of a grid, pointer loads and TMA descriptors.

For each Mamba block shape at ``M`` prompt tokens, times ``quamba.kernels.int8_gemm._gemm_kernel``
(pointer loads) and a TMA-descriptor twin under each config (and K splits where the tiles are
few), against cuBLAS fp16 ``F.linear`` and
``torch._int_mm`` (cuBLASLt int8, int32 out, no epilogue). Each config's output is checked exact
against the library's int8_linear before it is timed. Prints the best configs per shape.
Usage: PYTHONPATH=src python benchmarks/int8_gemm_sweep.py [--m 1024] [--json PATH]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.testing import do_bench

from quamba.kernels import int8_gemm as G
from quamba.kernels.int8_gemm import grouped_tile

SHAPES = {  # name: (N, K)
    "m1 in_proj": (10240, 2560), "m1 x_proj": (192, 5120), "m1 dt_proj": (5120, 160),
    "m1 out_proj": (2560, 5120), "m2 in_proj": (10576, 2560),
}
TILES = [  # BLOCK_M, BLOCK_N, BLOCK_K, stages, warps
    (128, 256, 128, 3, 8), (128, 256, 128, 4, 8), (256, 128, 128, 3, 8), (256, 128, 128, 4, 8),
    (128, 128, 128, 3, 4), (128, 128, 128, 4, 4), (128, 128, 128, 5, 4), (128, 128, 128, 4, 8),
    (128, 256, 64, 4, 8), (128, 256, 64, 5, 8), (256, 128, 64, 5, 8), (128, 128, 64, 5, 4),
    (64, 256, 128, 4, 4), (64, 128, 128, 4, 4), (64, 64, 128, 5, 4), (128, 64, 128, 5, 4),
    (256, 256, 64, 3, 8), (128, 256, 128, 3, 4), (64, 256, 64, 5, 4), (128, 192, 128, 3, 8),
]

SPLIT_TILES = [(128, 128, 128, 3, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4), (128, 64, 128, 5, 4)]

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None


@triton.jit
def _gemm_tma_kernel(a_desc, b_desc, out_ptr, xs_val, ws_val, M, N, K, stride_om,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """``_gemm_kernel`` with both operands fetched by TMA (fp16 out, per-tensor scales)."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([off_m, k * BLOCK_K])
        b = b_desc.load([off_n, k * BLOCK_K])
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
    rows = off_m + tl.arange(0, BLOCK_M)[:, None]
    cols = off_n + tl.arange(0, BLOCK_N)[None, :]
    y = acc.to(tl.float32) * xs_val * ws_val
    tl.store(out_ptr + rows * stride_om + cols, y.to(out_ptr.dtype.element_ty), mask=(rows < M) & (cols < N))


def _ms(fn) -> float:
    return do_bench(fn, warmup=5, rep=30, return_mode="median")


def sweep(name: str, m: int, n: int, k: int, quick: bool = False) -> dict:
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
    xh, wh = x.half(), w.half()
    out = torch.empty(m, n, dtype=torch.float16, device="cuda")
    ep = G.epilogue_args(1e-3, 1e-3, None, None, m, n, out)
    ref = G.int8_linear(x, w, 1e-3, 1e-3)
    flops = 2 * m * n * k
    row = {"shape": name, "M": m, "N": n, "K": k,
           "fp16_cublas_us": _ms(lambda: F.linear(xh, wh)) * 1e3,
           "int_mm_us": _ms(lambda: torch._int_mm(x, w.t())) * 1e3 if k % 8 == 0 and n % 8 == 0 else None,
           "library_us": _ms(lambda: G.int8_linear(x, w, 1e-3, 1e-3)) * 1e3, "ptr": [], "tma": []}
    for bm, bn, bk, stages, warps in ([] if quick else TILES):
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_stages=stages, num_warps=warps)
        try:
            out.fill_(float("nan"))
            G.launch_gemm(x, w, out, ep, cfg)
            exact = torch.equal(out, ref)
            us = _ms(lambda: G.launch_gemm(x, w, out, ep, cfg)) * 1e3
            row["ptr"].append({"cfg": (bm, bn, bk, stages, warps), "us": us, "TOPS": flops / us / 1e6, "exact": exact})
        except Exception as e:
            print(f"  {name} ptr {cfg}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
        if TensorDescriptor is None:
            continue
        try:
            a_d = TensorDescriptor.from_tensor(x, [bm, bk])
            b_d = TensorDescriptor.from_tensor(w, [bn, bk])
            grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)

            def run():
                _gemm_tma_kernel[grid](a_d, b_d, out, 1e-3, 1e-3, m, n, k, out.stride(0), BLOCK_M=bm, BLOCK_N=bn,
                                       BLOCK_K=bk, GROUP_M=8, num_stages=stages, num_warps=warps)

            out.fill_(float("nan"))
            run()
            exact = torch.equal(out, ref)
            us = _ms(run) * 1e3
            row["tma"].append({"cfg": (bm, bn, bk, stages, warps), "us": us, "TOPS": flops / us / 1e6, "exact": exact})
        except Exception as e:
            print(f"  {name} tma {cfg}: {type(e).__name__}: {str(e)[:160]}", file=sys.stderr)
    if not quick and G.gemm_split(m, n, k, 128, 128, 128, G.num_sms(x.device)) > 1:
        row["split"] = []
        for (bm, bn, bk, stages, warps), split in itertools.product(SPLIT_TILES, (2, 4, 8, 16)):
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_stages=stages, num_warps=warps,
                       SPLIT_K=split)
            try:
                out.fill_(float("nan"))
                G.launch_gemm(x, w, out, ep, cfg)
                exact = torch.equal(out, ref)
                us = _ms(lambda: G.launch_gemm(x, w, out, ep, cfg)) * 1e3
            except Exception as e:
                print(f"  {name} split {cfg}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
                continue
            row["split"].append({"cfg": (bm, bn, bk, stages, warps, split), "us": us, "TOPS": flops / us / 1e6,
                                 "exact": exact})
    for kind in ("ptr", "tma", "split"):
        row.get(kind, []).sort(key=lambda r: r["us"])
    row["tuned"] = G._TUNED.get((min(triton.next_power_of_2(m), 4096), n, k, x.device))
    if row["tuned"] is not None:  # the epilogue's share: the tuned config with fp16 and with int8 output
        out8 = torch.empty(m, n, dtype=torch.int8, device="cuda")
        ep8 = G.epilogue_args(1e-3, 1e-3, None, 0.05, m, n, out8)
        cfg = row["tuned"]
        row["tuned_fp16_out_us"] = _ms(lambda: G.launch_gemm(x, w, out, ep, cfg)) * 1e3
        row["tuned_int8_out_us"] = _ms(lambda: G.launch_gemm(x, w, out8, ep8, cfg)) * 1e3
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="no tile sweep: the tuned config only")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "triton", triton.__version__)
    rows = []
    for name in args.shapes.split(","):
        t0 = time.time()
        n, k = SHAPES[name]
        r = sweep(name, args.m, n, k, args.quick)
        rows.append(r)
        print(f"{name} M={args.m} N={n} K={k}: cuBLAS fp16 {r['fp16_cublas_us']:.1f} us, _int_mm "
              f"{r['int_mm_us'] and round(r['int_mm_us'], 1)} us, library int8 {r['library_us']:.1f} us "
              f"({time.time() - t0:.0f}s)")
        print(f"    tuned: {r['tuned']} fp16 out {r.get('tuned_fp16_out_us', 0):.1f} us, int8 out "
              f"{r.get('tuned_int8_out_us', 0):.1f} us")
        for kind in ("ptr", "tma", "split"):
            for e in r.get(kind, [])[:4]:
                print(f"    {kind} {e['cfg']} {e['us']:.1f} us {e['TOPS']:.0f} TOPS exact={e['exact']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
