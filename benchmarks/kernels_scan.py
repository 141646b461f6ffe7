"""Times the prefill scans (Mamba1 selective scan, Mamba2 SSD; fp16 and int8 inputs) against their
plain-torch references at real model shapes, batch 1.

For each case: median time of the Triton op and of the reference (triton.testing.do_bench), the
bytes the op must move (inputs read + outputs and final state written), the achieved bandwidth of
the Triton op, and (``--breakdown``) the time of each of its kernel launches from the profiler.
Inputs have the strides the mixers give them (B/C and x views of one projection output).

``--variants`` instead times alternative plans of the Mamba1 scan (channels per warp ``bd``, token
block ``t``, number of chunks) for fp16 and int8 inputs at each token count, checks each against the
torch reference, and prints one table (compiles one kernel set per distinct ``bd, t``).

Usage: PYTHONPATH=src python benchmarks/kernels_scan.py [--shapes mamba-2.8b,mamba2-2.7b,mamba2-8b]
       [--tokens 1024,2048] [--no-ref] [--breakdown] [--json]
       [--variants ["auto;chunks=1;bd=16,t=4,chunks=3;..."]]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import triton
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


def mamba1_inputs(shape: str, L: int) -> tuple[tuple, tuple, int, int]:
    """Batch-1 Mamba1 scan arguments as the mixer passes them: ``(fp16 args, int8 args, fp16 bytes,
    int8 bytes)``; B and C are column slices of one x_proj output."""
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
    return fp, qa, io, qio


def mamba1_cases(shape: str, L: int) -> list[Case]:
    fp, qa, io, qio = mamba1_inputs(shape, L)
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


DEFAULT_VARIANTS = ("auto;chunks=1;chunks=2;chunks=3;chunks=4;chunks=6;chunks=8;bd=16,t=4,chunks=2;"
                    "bd=16,t=4,chunks=4;bd=16,t=8,chunks=3;bd=8,t=16,chunks=2;bd=8,t=16,chunks=3;"
                    "bd=8,t=4,chunks=3;bd=32,t=4,chunks=6")


def parse_variant(spec: str) -> dict:
    """``"bd=16,t=4,chunks=3"`` -> ``{"bd": 16, "t": 4, "chunks": 3}``; ``"auto"`` -> the default plan."""
    out = {}
    for item in filter(None, spec.replace(" ", "").split(",")):
        if item == "auto":
            continue
        key, _, value = item.partition("=")
        if key not in ("bd", "t", "chunks", "chunk"):
            raise SystemExit(f"unknown variant key {key!r} in {spec!r} (bd, t, chunks, chunk)")
        out[key] = int(value)
    return out


def plan_overrides(v: dict, L: int) -> dict:
    chunk = v.get("chunk") or (-(-L // v["chunks"]) if "chunks" in v else None)
    return dict(chunk=chunk, bd=v.get("bd"), t_block=v.get("t"))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def variant_rows(shape: str, L: int, specs: list[str], breakdown: bool) -> list[dict]:
    """Each plan variant of the fp16 and int8 Mamba1 scans: time, bandwidth, error against the reference."""
    from quamba.kernels.int8_gemm import num_sms

    fp, qa, io, qio = mamba1_inputs(shape, L)
    u, delta, A, B, C, D, z, bias, _, _ = fp
    uq, s, dq, _, _, Bq, _, Cq, _, _, zq, _, _, ss, _ = qa
    d, n = u.shape[2], A.shape[1]
    ops = {
        "selective_scan": (lambda kw: SS._scan(u, delta, A, B, C, D, z, bias, True, None, F16, None, **kw),
                           R.selective_scan(*fp), io),
        "qselective_scan": (lambda kw: SS._scan(uq, dq, A, Bq, Cq, D, zq, bias, True, None, F16,
                                                (s, s, s, ss, s, s), **kw), Q.qselective_scan(*qa), qio),
    }
    rows = []
    for op, (call, (y_ref, last_ref), nb) in ops.items():
        for spec in specs:
            kw = plan_overrides(parse_variant(spec), L)
            plan = SS.scan_plan(1, L, d, n, num_sms(u.device), **kw)
            fn = (lambda kw=kw: call(kw))
            y, last = fn()
            torch.cuda.synchronize()
            err_state = (last.int() - last_ref.int()).abs().max().item() if last.dtype == torch.int8 \
                else rel_err(last, last_ref)
            ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
            row = dict(shape=shape, tokens=L, op=op, variant=spec, bd=plan.bd, t_block=plan.t_block,
                       t_state=SS.state_block(plan, triton.next_power_of_2(n)),
                       t_chunk=plan.t_chunk, n_chunks=plan.n_chunks, ms=ms, GBps=nb / (ms * 1e-3) / 1e9,
                       y_rel_err=rel_err(y, y_ref), state_err=err_state,
                       launches=launch_breakdown(fn) if breakdown else {})
            rows.append(row)
            print(format_variants([row]).splitlines()[-1], flush=True)
            if row["launches"]:
                print("    launches (us):", row["launches"], flush=True)
    return rows


def format_variants(rows: list[dict]) -> str:
    head = f"{'shape':<11} {'tokens':>6} {'op':<16} {'variant':<22} {'bd':>3} {'T/Ts':>5} {'chunk':>5} {'nch':>3} " \
           f"{'ms':>8} {'GB/s':>6} {'y err':>8} {'state err':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['shape']:<11} {r['tokens']:6d} {r['op']:<16} {r['variant'][:22]:<22} {r['bd']:3d} "
                     f"{str(r['t_block']) + '/' + str(r['t_state']):>5} {r['t_chunk']:5d} {r['n_chunks']:3d} {r['ms']:8.4f} {r['GBps']:6.0f} "
                     f"{r['y_rel_err']:8.1e} {r['state_err']:9.2g}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="mamba-2.8b,mamba2-2.7b,mamba2-8b")
    ap.add_argument("--tokens", default="1024,2048", help="prefill lengths, comma separated")
    ap.add_argument("--no-ref", action="store_true", help="skip timing the torch references")
    ap.add_argument("--breakdown", action="store_true", help="print the time of each kernel launch")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--variants", nargs="?", const=DEFAULT_VARIANTS, default=None,
                    help="time plan variants of the Mamba1 scans instead: ';'-separated, each 'auto' or "
                         "comma-separated bd=, t=, chunks= (or chunk= tokens); no value: a built-in list")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels_scan.py needs a CUDA GPU")
    print(torch.cuda.get_device_name(), flush=True)
    if args.variants is not None:
        specs = [v for v in args.variants.split(";") if v.strip()]
        for v in specs:
            parse_variant(v)
        rows = []
        for shape in (s for s in args.shapes.split(",") if shape_config(s).arch == "mamba1"):
            for L in (int(t) for t in args.tokens.split(",")):
                rows += variant_rows(shape, L, specs, args.breakdown)
                torch.cuda.empty_cache()
        print(format_variants(rows))
        if args.json:
            print(json.dumps(rows, indent=1))
        return
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
