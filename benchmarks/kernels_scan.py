"""Times the prefill scans (Mamba1 selective scan, Mamba2 SSD; fp16 and int8 inputs) against their
plain-torch references at real model shapes, batch 1.

For each case: median time of the Triton op and of the reference (triton.testing.do_bench), the
bytes the op must move (inputs read + outputs and final state written), the achieved bandwidth of
the Triton op, and (``--breakdown``) the time of each of its kernel launches from the profiler.
Inputs have the strides the mixers give them (B/C and x views of one projection output).

Usage: PYTHONPATH=src python benchmarks/kernels_scan.py [--shapes mamba-2.8b,mamba2-2.7b,mamba2-8b]
       [--tokens 1024,2048] [--no-ref] [--breakdown] [--json]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import triton.testing

from quamba.config import shape_config
from quamba.kernels import selective_scan as SS
from quamba.kernels import ssd as SSD
from quamba.ops import qreference as Q
from quamba.ops import reference as R

DEV = "cuda"
F16 = torch.float16


@dataclass
class Case:
    shape: str
    tokens: int
    op: str
    kernel: Callable
    reference: Callable
    bytes: int


@dataclass
class Result:
    shape: str
    tokens: int
    op: str
    kernel_ms: float
    ref_ms: float | None
    speedup: float | None
    bytes: int
    kernel_GBps: float
    launches: dict


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def q8(t: torch.Tensor, scale: float) -> torch.Tensor:
    return Q.quantize(t, scale)


def mamba1_cases(shape: str, L: int) -> list[Case]:
    cfg = shape_config(shape)
    d, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
    u = torch.randn(1, L, d, device=DEV).to(F16)
    z = torch.randn(1, L, d, device=DEV).to(F16)
    delta = (torch.randn(1, L, d, device=DEV) * 0.5 - 3.0).to(F16)
    xdbl = torch.randn(1, L, r + 2 * n, device=DEV).to(F16)
    B, C = xdbl[..., r:r + n], xdbl[..., r + n:]
    A = -torch.exp(torch.rand(d, n, device=DEV) * 2.0)
    D, bias = torch.randn(d, device=DEV), torch.randn(d, device=DEV) * 0.1
    fp = (u, delta, A, B, C, D, z, bias, True, None)
    s = 0.03
    uq, dq, zq = q8(u, s), q8(delta, s), q8(z, s)
    xq = q8(xdbl, s)
    Bq, Cq = xq[..., r:r + n], xq[..., r + n:]
    qa = (uq, s, dq, s, A, Bq, s, Cq, s, D, zq, s, bias, 0.05, None)
    io = nbytes(u, delta, z, A, D, bias) + 2 * L * n * 2 + u.numel() * 2 + d * n * 4
    qio = nbytes(uq, dq, zq, A, D, bias) + 2 * L * n + u.numel() * 2 + d * n
    return [Case(shape, L, "selective_scan", lambda: SS.selective_scan(*fp), lambda: R.selective_scan(*fp), io),
            Case(shape, L, "qselective_scan", lambda: SS.qselective_scan(*qa), lambda: Q.qselective_scan(*qa), qio)]


def mamba2_cases(shape: str, L: int) -> list[Case]:
    cfg = shape_config(shape)
    h, p, g, n, T = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.chunk_size
    xbc = torch.randn(1, L, h * p + 2 * g * n, device=DEV).to(F16)
    x = xbc[..., :h * p].reshape(1, L, h, p)
    B = xbc[..., h * p:h * p + g * n].reshape(1, L, g, n)
    C = xbc[..., h * p + g * n:].reshape(1, L, g, n)
    dt = (torch.randn(1, L, h, device=DEV) * 0.5 - 3.0).to(F16)
    A = -torch.exp(torch.rand(h, device=DEV) * 2.0)
    D, bias = torch.randn(h, device=DEV), torch.randn(h, device=DEV) * 0.1
    fp = (x, dt, A, B, C, T, D, bias, True, cfg.dt_limit, None)
    s = 0.03
    xbcq = q8(xbc, s)
    xq = xbcq[..., :h * p].reshape(1, L, h, p)
    Bq = xbcq[..., h * p:h * p + g * n].reshape(1, L, g, n)
    Cq = xbcq[..., h * p + g * n:].reshape(1, L, g, n)
    dq = q8(dt, s)
    qa = (xq, s, dq, s, A, Bq, s, Cq, s, T, D, bias, 0.05, cfg.dt_limit, None)
    io = L * (h * p + 2 * g * n + h) * 2 + L * h * p * 2 + h * p * n * 4
    qio = L * (h * p + 2 * g * n + h) + L * h * p * 2 + h * p * n
    return [Case(shape, L, "ssd_chunked", lambda: SSD.ssd_chunked(*fp), lambda: R.ssd_chunked(*fp), io),
            Case(shape, L, "qssd_chunked", lambda: SSD.qssd_chunked(*qa), lambda: Q.qssd_chunked(*qa), qio)]


def launch_breakdown(fn: Callable, iters: int = 10) -> dict:
    """Mean GPU time (us) of each kernel that ``fn`` launches, from the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = getattr(ev, "cuda_time_total", 0.0)
        if t > 0 and (ev.key.startswith("_") or "kernel" in ev.key):
            totals[ev.key[:40]] += t / iters
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v > 0}


def run(case: Case, with_ref: bool, breakdown: bool) -> Result:
    case.kernel()
    torch.cuda.synchronize()
    k = triton.testing.do_bench(case.kernel, warmup=10, rep=50, return_mode="median")
    r = triton.testing.do_bench(case.reference, warmup=1, rep=20, return_mode="median") if with_ref else None
    launches = launch_breakdown(case.kernel) if breakdown else {}
    return Result(case.shape, case.tokens, case.op, k, r, r / k if r else None, case.bytes,
                  case.bytes / (k * 1e-3) / 1e9, launches)


def format_rows(results: list[Result]) -> str:
    head = f"{'shape':<12} {'tokens':>6} {'op':<16} {'kernel ms':>10} {'ref ms':>9} {'speedup':>8} " \
           f"{'bytes':>11} {'GB/s':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        ref = f"{r.ref_ms:9.3f}" if r.ref_ms is not None else f"{'-':>9}"
        sp = f"{r.speedup:8.1f}" if r.speedup is not None else f"{'-':>8}"
        lines.append(f"{r.shape:<12} {r.tokens:6d} {r.op:<16} {r.kernel_ms:10.4f} {ref} {sp} "
                     f"{r.bytes:11d} {r.kernel_GBps:7.0f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="mamba-2.8b,mamba2-2.7b,mamba2-8b")
    ap.add_argument("--tokens", default="1024,2048", help="prefill lengths, comma separated")
    ap.add_argument("--no-ref", action="store_true", help="skip timing the torch references")
    ap.add_argument("--breakdown", action="store_true", help="print the time of each kernel launch")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels_scan.py needs a CUDA GPU")
    print(torch.cuda.get_device_name(), flush=True)
    results = []
    for shape in args.shapes.split(","):
        arch = shape_config(shape).arch
        for L in (int(t) for t in args.tokens.split(",")):
            for case in (mamba1_cases if arch == "mamba1" else mamba2_cases)(shape, L):
                res = run(case, not args.no_ref, args.breakdown)
                results.append(res)
                print(format_rows([res]).splitlines()[-1], flush=True)
                if res.launches:
                    print("    launches (us):", res.launches, flush=True)
            torch.cuda.empty_cache()
    print(format_rows(results))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
