"""Times the small memory-bound kernels (conv1d, norms, decode state updates; fp16 and int8) against
their plain-torch references at real model shapes: decode (batch 1) and prefill (1024 tokens).

For each case: median time of the Triton kernel and of the reference (triton.testing.do_bench), the
kernel's time inside a CUDA graph (its GPU time: the eager time of a short kernel includes its launch),
the bytes the op must move (inputs read + outputs and states written) and the achieved bandwidth.

Usage: PYTHONPATH=src python benchmarks/kernels_small.py [--shapes mamba-2.8b,mamba2-2.7b,mamba2-8b]
       [--tokens 1024] [--json]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import triton.testing

from quamba.config import shape_config
from quamba.kernels import conv1d, norm, qconv1d, qnorm, state_update
from quamba.ops import qreference as Q
from quamba.ops import reference as R

DEV = "cuda"
F16 = torch.float16


@dataclass
class Case:
    shape: str
    phase: str
    op: str
    kernel: Callable
    reference: Callable
    bytes: int


@dataclass
class Result:
    shape: str
    phase: str
    op: str
    kernel_us: float
    ref_us: float
    speedup: float
    graph_us: float | None
    bytes: int
    kernel_GBps: float


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def rnd(*shape, dtype=F16, scale=1.0):
    return (torch.randn(*shape, device=DEV) * scale).to(dtype)


def q8(*shape):
    return torch.randint(-128, 128, shape, device=DEV, dtype=torch.int8)


def norm_cases(name: str, phase: str, rows: int, d_model: int, d_inner: int, group: int) -> list[Case]:
    x, res, w = rnd(1, rows, d_model), rnd(1, rows, d_model, dtype=torch.float32), rnd(d_model)
    y, z, zq, wi = rnd(1, rows, d_inner), rnd(1, rows, d_inner), q8(1, rows, d_inner), rnd(d_inner)
    io = nbytes(x, res, w) + x.numel() * (2 + 4)
    qio = nbytes(x, res, w) + x.numel() * (1 + 4)
    gio = nbytes(y, z, wi) + y.numel() * 2
    qgio = nbytes(y, zq, wi) + y.numel() * 2
    return [
        Case(name, phase, "add_rms_norm", lambda: norm.add_rms_norm(x, res, w, 1e-5, True),
             lambda: R.add_rms_norm(x, res, w, 1e-5, True), io),
        Case(name, phase, "qadd_rms_norm", lambda: qnorm.qadd_rms_norm(x, res, w, 1e-5, 0.02, True),
             lambda: Q.qadd_rms_norm(x, res, w, 1e-5, 0.02, True), qio),
        Case(name, phase, "gated_rms_norm", lambda: norm.gated_rms_norm(y, z, wi, 1e-5, group),
             lambda: R.gated_rms_norm(y, z, wi, 1e-5, group), gio),
        Case(name, phase, "qgated_rms_norm", lambda: qnorm.qgated_rms_norm(y, zq, 0.03, wi, 1e-5, group),
             lambda: Q.qgated_rms_norm(y, zq, 0.03, wi, 1e-5, group), qgio),
    ]


def conv_prefill_cases(name: str, L: int, d: int, in_proj_dim: int) -> list[Case]:
    buf = rnd(1, L, in_proj_dim)
    x = buf[:, :, :d]
    w, b, st = rnd(d, 4), rnd(d), rnd(1, d, 4)
    qbuf = q8(1, L, in_proj_dim)
    xq, wq, bq, stq = qbuf[:, :, :d], q8(d, 4), q8(d), q8(1, d, 4)
    ch = torch.rand(d, device=DEV) * 0.02 + 0.01
    return [
        Case(name, "prefill", "causal_conv1d", lambda: conv1d.causal_conv1d(x, w, b, True, st),
             lambda: R.causal_conv1d(x, w, b, True, st), 2 * L * d * 2 + nbytes(w, b, st)),
        Case(name, "prefill", "qcausal_conv1d",
             lambda: qconv1d.qcausal_conv1d(xq, 0.01, wq, 0.02, bq, 0.01, ch, stq),
             lambda: Q.qcausal_conv1d(xq, 0.01, wq, 0.02, bq, 0.01, ch, stq), 2 * L * d + nbytes(wq, bq, stq, ch)),
    ]


def decode_cases(name: str, cfg) -> list[Case]:
    d = cfg.conv_dim
    x, w, b, st = rnd(1, d), rnd(d, 4), rnd(d), rnd(1, d, 4)
    xq, wq, bq, stq = q8(1, d), q8(d, 4), q8(d), q8(1, d, 4)
    st_ref, stq_ref = st.clone(), stq.clone()
    cases = [
        Case(name, "decode", "causal_conv1d_update", lambda: conv1d.causal_conv1d_update(x, st, w, b, True),
             lambda: R.causal_conv1d_update(x, st_ref, w, b, True), nbytes(x, w, b, st, st, x)),
        Case(name, "decode", "qcausal_conv1d_update",
             lambda: qconv1d.qcausal_conv1d_update(xq, stq, 0.01, wq, 0.02, bq, 0.01, 0.03),
             lambda: Q.qcausal_conv1d_update(xq, stq_ref, 0.01, wq, 0.02, bq, 0.01, 0.03),
             nbytes(xq, wq, bq, stq, stq, xq)),
    ]
    if cfg.arch == "mamba1":
        di, n = cfg.d_inner, cfg.d_state
        s, sq = torch.randn(1, di, n, device=DEV), q8(1, di, n)
        s_ref, sq_ref = s.clone(), sq.clone()
        xx, dt, z = rnd(1, di), rnd(1, di), rnd(1, di)
        A, B, C, D, dtb = -torch.rand(di, n, device=DEV), rnd(1, n), rnd(1, n), rnd(di, dtype=torch.float32), \
            rnd(di, dtype=torch.float32)
        xq8, dtq, Bq, Cq, zq = q8(1, di), q8(1, di), q8(1, n), q8(1, n), q8(1, di)
        fp = lambda st_: (st_, xx, dt, A, B, C, D, z, dtb)  # noqa: E731
        qa = lambda st_: (st_, 0.02, xq8, 0.005, dtq, 0.03, A, Bq, 0.004, Cq, 0.006, D, zq, 0.05, dtb)  # noqa: E731
        cases += [
            Case(name, "decode", "selective_state_update", lambda: state_update.selective_state_update(*fp(s)),
                 lambda: R.selective_state_update(*fp(s_ref)), nbytes(s, s, xx, dt, A, B, C, D, z, dtb, xx)),
            Case(name, "decode", "qselective_state_update", lambda: state_update.qselective_state_update(*qa(sq)),
                 lambda: Q.qselective_state_update(*qa(sq_ref)),
                 nbytes(sq, sq, xq8, dtq, A, Bq, Cq, D, zq, dtb, xx)),
        ]
    else:
        h, p, n, g = cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups
        s, sq = torch.randn(1, h, p, n, device=DEV), q8(1, h, p, n)
        s_ref, sq_ref = s.clone(), sq.clone()
        xx, dt, B, C = rnd(1, h, p), rnd(1, h), rnd(1, g, n), rnd(1, g, n)
        A, D, dtb = -torch.rand(h, device=DEV), torch.randn(h, device=DEV), torch.randn(h, device=DEV)
        xq8, dtq, Bq, Cq = q8(1, h, p), q8(1, h), q8(1, g, n), q8(1, g, n)
        fp = lambda st_: (st_, xx, dt, A, B, C, D, dtb)  # noqa: E731
        qa = lambda st_: (st_, 0.02, xq8, 0.005, dtq, 0.03, A, Bq, 0.004, Cq, 0.006, D, dtb)  # noqa: E731
        cases += [
            Case(name, "decode", "ssd_state_update", lambda: state_update.ssd_state_update(*fp(s)),
                 lambda: R.ssd_state_update(*fp(s_ref)), nbytes(s, s, xx, dt, A, B, C, D, dtb, xx)),
            Case(name, "decode", "qssd_state_update", lambda: state_update.qssd_state_update(*qa(sq)),
                 lambda: Q.qssd_state_update(*qa(sq_ref)), nbytes(sq, sq, xq8, dtq, A, Bq, Cq, D, dtb, xx)),
        ]
    return cases


def cases_for(shape: str, tokens: int) -> list[Case]:
    cfg = shape_config(shape)
    group = cfg.d_inner // cfg.ngroups
    return (decode_cases(shape, cfg)
            + norm_cases(shape, "decode", 1, cfg.d_model, cfg.d_inner, group)
            + conv_prefill_cases(shape, tokens, cfg.conv_dim, cfg.in_proj_dim)
            + norm_cases(shape, "prefill", tokens, cfg.d_model, cfg.d_inner, group))


def graph_time_us(fn: Callable) -> float | None:
    """Median time of ``fn`` replayed from a CUDA graph (None when capture fails)."""
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3
    except Exception:
        return None


def run(case: Case) -> Result:
    case.kernel()
    torch.cuda.synchronize()
    k = triton.testing.do_bench(case.kernel, warmup=25, rep=100, return_mode="median") * 1e3
    r = triton.testing.do_bench(case.reference, warmup=25, rep=100, return_mode="median") * 1e3
    g = graph_time_us(case.kernel)
    best = min(k, g) if g is not None else k
    return Result(case.shape, case.phase, case.op, k, r, r / k, g, case.bytes, case.bytes / (best * 1e-6) / 1e9)


def format_rows(results: list[Result]) -> str:
    head = f"{'shape':<12} {'phase':<8} {'op':<24} {'kernel us':>10} {'ref us':>10} {'speedup':>8} " \
           f"{'graph us':>9} {'bytes':>11} {'GB/s':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        g = f"{r.graph_us:9.2f}" if r.graph_us is not None else f"{'-':>9}"
        lines.append(f"{r.shape:<12} {r.phase:<8} {r.op:<24} {r.kernel_us:10.2f} {r.ref_us:10.2f} "
                     f"{r.speedup:8.2f} {g} {r.bytes:11d} {r.kernel_GBps:8.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="mamba-2.8b,mamba2-2.7b,mamba2-8b")
    ap.add_argument("--tokens", type=int, default=1024, help="prefill length")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels_small.py needs a CUDA GPU")
    print(torch.cuda.get_device_name(), flush=True)
    results = []
    for shape in args.shapes.split(","):
        for case in cases_for(shape, args.tokens):
            results.append(run(case))
            print(format_rows(results[-1:]).splitlines()[-1], flush=True)
    print(format_rows(results))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
