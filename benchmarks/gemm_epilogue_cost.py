"""What the int8-output epilogue of the prefill GEMM costs, by quantization method (in_proj shape).

One ``BLOCK_M x BLOCK_N`` tile kernel (``int8_gemm._tile_dot`` main loop) with five epilogues:
``fp16`` (dequantize and store, no requantization), ``library`` (``quantize_int8``: exact),
``rni`` (multiply by ``1 / scale`` and one ``cvt.rni.sat``: not exact at near-ties), ``fma`` (``rni`` with
only the near-ties corrected by the FMA residual step) and ``near`` (``rni`` plus the near-tie test alone). Prints us per variant and how many int8 codes differ from the exact one.
Usage: PYTHONPATH=src python benchmarks/gemm_epilogue_cost.py [--m 1024] [--n 10240] [--k 2560]
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from quamba.kernels import int8_gemm as G
from quamba.kernels._small_common import quantize_int8

VARIANTS = ("fp16", "library", "rni", "fma", "near")


@triton.jit
def _rni(v):
    return tl.inline_asm_elementwise("cvt.rni.sat.s8.f32 $0, $1;", "=r,r", [v], dtype=tl.int32, is_pure=True,
                                     pack=1).to(tl.int8)


@triton.jit
def _kernel(x_ptr, w_ptr, out_ptr, xs, ws, os, M, N, K, stride_xm, stride_wn, stride_om,
            VARIANT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            GROUP_M: tl.constexpr):
    pid_m, pid_n = G.grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = G._tile_dot(x_ptr, w_ptr, offs_m, offs_n, 0, K, M, N, stride_xm, stride_wn, True, BLOCK_M, BLOCK_N,
                      BLOCK_K)
    y = acc.to(tl.float32) * xs * ws
    lr = tl.arange(0, BLOCK_M)[:, None]
    lc = tl.arange(0, BLOCK_N)[None, :]
    ptrs = out_ptr + (pid_m * BLOCK_M).to(tl.int64) * stride_om + pid_n * BLOCK_N + (lr * stride_om + lc)
    if VARIANT == 0:
        tl.store(ptrs, y.to(tl.float16))
    elif VARIANT == 1:
        tl.store(ptrs, quantize_int8(y, os))
    elif VARIANT == 2:
        tl.store(ptrs, _rni(y * (1.0 / os)))
    elif VARIANT == 3:
        inv = 1.0 / os
        r = y * inv
        near = tl.abs((r - tl.floor(r)) - 0.5) <= 2e-4
        e = tl.fma(-r, os + tl.zeros_like(r), y)
        tl.store(ptrs, _rni(tl.where(near, tl.fma(e, inv, r), r)))
    else:
        r = y * (1.0 / os)
        near = tl.abs((r - tl.floor(r)) - 0.5) <= 2e-4
        tl.store(ptrs, _rni(tl.where(near, r + 0.25, r)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--n", type=int, default=10240)
    ap.add_argument("--k", type=int, default=2560)
    args = ap.parse_args()
    m, n, k = args.m, args.n, args.k
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
    xs, ws, os_ = 1e-3, 1e-3, 0.05
    exact = G.int8_linear(x, w, xs, ws, out_scale=os_)
    bm, bn, bk = 128, 128, 128
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    print(torch.cuda.get_device_name(), f"M={m} N={n} K={k}, tile {bm}x{bn}x{bk}, 3 stages, 4 warps")
    for i, name in enumerate(VARIANTS):
        out = torch.empty(m, n, dtype=torch.float16 if i == 0 else torch.int8, device="cuda")

        def run():
            _kernel[grid](x, w, out, xs, ws, os_, m, n, k, x.stride(0), w.stride(0), out.stride(0), VARIANT=i,
                          BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_stages=3, num_warps=4)

        run()
        us = do_bench(run, warmup=10, rep=50, return_mode="median") * 1e3
        diff = "" if i == 0 else f", {(out != exact).sum().item()} codes differ from the exact ones"
        print(f"  {name:8s} {us:7.1f} us{diff}")
    for ck in _kernel.device_caches[torch.cuda.current_device()][0].values():
        print(f"  compiled: regs={getattr(ck, 'n_regs', '?')} spills={getattr(ck, 'n_spills', '?')}")


if __name__ == "__main__":
    main()
