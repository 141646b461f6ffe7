"""Prefill int8 GEMM on the GPU: every tile config of a grid, pointer loads and TMA descriptors.

For each Mamba block shape at ``M`` prompt tokens, times ``quamba.kernels.int8_gemm._gemm_kernel``
(pointer loads; ``ptr``) and a TMA-descriptor twin (``tma``) under each config, each also as a
persistent kernel of 1 or 2 programs per SM (``-p1``, ``-p2``) where the tiles make more than one wave,
and K splits where the tiles are few, against cuBLAS fp16 ``F.linear`` and
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
    (128, 256, 128, 3, 8), (128, 256, 64, 4, 8), (256, 128, 128, 3, 8), (128, 128, 128, 3, 4),
    (128, 128, 128, 4, 4), (128, 128, 128, 3, 8), (128, 128, 64, 5, 4), (128, 128, 64, 4, 8),
    (64, 256, 128, 4, 4), (64, 128, 128, 4, 4), (128, 64, 128, 5, 4), (64, 64, 128, 5, 4),
]
PERSIST = (1, 2)  # programs per SM of the persistent variants

KINDS = ("ptr", "ptr-p1", "ptr-p2", "tma", "tma-p1", "tma-p2", "split")
SPLIT_TILES = [(128, 128, 128, 3, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4), (128, 64, 128, 5, 4)]

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None


@triton.jit
def _gemm_tma_kernel(a_desc, b_desc, out_ptr, xs_val, ws_val, M, N, K, stride_om,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                     NUM_PROGS: tl.constexpr):
    """``_gemm_persistent_kernel`` with both operands fetched by TMA (fp16 out, per-tensor scales);
    ``NUM_PROGS`` = the number of output tiles makes it one tile per program."""
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), tiles, NUM_PROGS, flatten=True):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
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
           "library_us": _ms(lambda: G.int8_linear(x, w, 1e-3, 1e-3)) * 1e3}
    sms = G.num_sms(x.device)
    for bm, bn, bk, stages, warps in ([] if quick else TILES):
        tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
        base = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_stages=stages, num_warps=warps)
        for persist in (0,) + (PERSIST if tiles > sms else ()):
            cfg = dict(base, PERSIST=persist) if persist else base
            kind = f"ptr-p{persist}" if persist else "ptr"
            try:
                out.fill_(float("nan"))
                G.launch_gemm(x, w, out, ep, cfg)
                exact = torch.equal(out, ref)
                us = _ms(lambda: G.launch_gemm(x, w, out, ep, cfg)) * 1e3
                row.setdefault(kind, []).append({"cfg": (bm, bn, bk, stages, warps), "us": us,
                                                 "TOPS": flops / us / 1e6, "exact": exact})
            except Exception as e:
                print(f"  {name} {kind} {cfg}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
            if TensorDescriptor is None:
                continue
            kind = f"tma-p{persist}" if persist else "tma"
            try:
                a_d = TensorDescriptor.from_tensor(x, [bm, bk])
                b_d = TensorDescriptor.from_tensor(w, [bn, bk])
                progs = min(tiles, persist * sms) if persist else tiles

                def run():
                    _gemm_tma_kernel[(progs,)](a_d, b_d, out, 1e-3, 1e-3, m, n, k, out.stride(0), BLOCK_M=bm,
                                               BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, NUM_PROGS=progs,
                                               num_stages=stages, num_warps=warps)

                out.fill_(float("nan"))
                run()
                exact = torch.equal(out, ref)
                us = _ms(run) * 1e3
                row.setdefault(kind, []).append({"cfg": (bm, bn, bk, stages, warps), "us": us,
                                                 "TOPS": flops / us / 1e6, "exact": exact})
            except Exception as e:
                print(f"  {name} {kind} {cfg}: {type(e).__name__}: {str(e)[:160]}", file=sys.stderr)
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
    for kind in KINDS:
        row.get(kind, []).sort(key=lambda r: r["us"])
    out8 = torch.empty(m, n, dtype=torch.int8, device="cuda")
    ep8 = G.epilogue_args(1e-3, 1e-3, None, 0.05, m, n, out8)
    row["library_int8_out_us"] = _ms(lambda: G.int8_linear(x, w, 1e-3, 1e-3, out_scale=0.05)) * 1e3
    for tag, o, e in (("fp16_out", out, ep), ("int8_out", out8, ep8)):
        cfg = row[f"tuned_{tag}"] = G._TUNED.get(G.tune_key(m, n, k, x.device, tag == "int8_out"))
        if cfg is not None:  # the tuned configs of both epilogues, each timed with both
            row[f"tuned_{tag}_as_fp16_us"] = _ms(lambda: G.launch_gemm(x, w, out, ep, cfg)) * 1e3
            row[f"tuned_{tag}_as_int8_us"] = _ms(lambda: G.launch_gemm(x, w, out8, ep8, cfg)) * 1e3
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
        print(f"    library int8 out {r['library_int8_out_us']:.1f} us")
        for tag in ("fp16_out", "int8_out"):
            print(f"    tuned for {tag}: {r[f'tuned_{tag}']}: as fp16 out {r.get(f'tuned_{tag}_as_fp16_us', 0):.1f} us, "
                  f"as int8 out {r.get(f'tuned_{tag}_as_int8_us', 0):.1f} us")
        for kind in KINDS:
            for e in r.get(kind, [])[:3]:
                print(f"    {kind} {e['cfg']} {e['us']:.1f} us {e['TOPS']:.0f} TOPS exact={e['exact']}")
    print("compiled GEMM kernels (registers, spills):")
    for kern in (G._gemm_kernel, G._gemm_persistent_kernel):
        for dev_cache in getattr(kern, "device_caches", {}).values():
            for ck in dev_cache[0].values():
                consts = getattr(getattr(ck, "src", None), "constants", {})
                print(f"  {kern.fn.__name__} regs={getattr(ck, 'n_regs', '?')} spills={getattr(ck, 'n_spills', '?')} "
                      f"{ {k: v for k, v in consts.items() if 'MODE' in str(k) or 'BLOCK' in str(k)} }")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
