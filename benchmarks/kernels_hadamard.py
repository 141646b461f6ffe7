"""Times hadamard_quant (fused normalized Hadamard rotation + int8 quantization) on the GPU.

Each case captures 50 calls on rotating inputs in one CUDA graph, replays it and divides, so host
launch overhead is excluded (what a CUDA-graph decode step pays per call; for tiny kernels this still
includes the short gap between consecutive graph kernels that a profiler's kernel time leaves out).
Inputs rotate over enough copies that the working set of a prefill case exceeds L2. Bytes moved =
input read + int8 output written.
``--ref`` adds the plain-torch reference (eager), ``--sweep`` also times alternative launch shapes
(column blocks vs row tiles, block sizes, warps) to tune ``quamba.kernels.hadamard.launch_hadamard``.

Usage: PYTHONPATH=src python benchmarks/kernels_hadamard.py [--sizes 2560,5120,8192] [--rows 1,1024]
       [--dtype fp16|bf16|fp32] [--ref] [--sweep] [--json]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import triton.testing

from quamba.kernels import hadamard as K
from quamba.ops import qreference as Q
from quamba.kernels.timing import graph_replay_ms

DEV = "cuda"
CALLS = 50
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class Result:
    n: int
    rows: int
    dtype: str
    config: str
    us: float
    bytes: int
    GBps: float
    ref_us: float | None = None


def graph_us(calls: list[Callable[[], object]], reps: int = 9) -> float:
    """Median replay time of a CUDA graph holding ``calls``, divided by their number (us per call)."""
    return graph_replay_ms(calls, reps, warmup_calls=3) * 1e3 / len(calls)


def inputs(rows: int, n: int, dtype: torch.dtype) -> list[torch.Tensor]:
    per = rows * n * torch.tensor([], dtype=dtype).element_size()
    count = max(2, min(CALLS, (256 << 20) // per))
    return [torch.randn(rows, n, device=DEV).to(dtype) for _ in range(count)]


def configs(rows: int, n: int, sweep: bool) -> list[tuple[str, dict]]:
    """The default launch, plus (``sweep``) column-block and row-tile alternatives."""
    out = [("default", {})]
    if not sweep:
        return out
    r, c, rp, cp = K.tile_plan(n)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for bc in (16, 32, 64):
        for w in (2, 4):
            if bc <= cp:
                out.append((f"cols bc={bc} w={w}", {"col_split": True, "bc": bc, "warps": w}))
    for tm, bk, w in ((32, 64, 4), (32, 128, 4), (32, 128, 8), (64, 64, 4), (64, 128, 8)):
        if rows < 32 or tm < rp or bk > cp or cp // bk > 4:
            continue
        base = {"col_split": False, "tm": tm, "bk": bk, "warps": w}
        out.append((f"rows tm={tm} bk={bk} w={w}", base))
        for per_sm in (1, 2, 3):
            out.append((f"  persist {per_sm}/SM s=2", {**base, "stages": 2, "programs": per_sm * sms}))
    return out


def bench(n: int, rows: int, dtype_name: str, ref: bool, sweep: bool) -> list[Result]:
    dtype = DTYPES[dtype_name]
    xs = inputs(rows, n, dtype)
    scale = torch.tensor(0.05, device=DEV)
    outs = [torch.empty(rows, n, dtype=torch.int8, device=DEV) for _ in range(CALLS)]
    nbytes = rows * n * (xs[0].element_size() + 1)
    results = []
    for name, kw in configs(rows, n, sweep):
        def call(i: int, kw=kw) -> Callable[[], None]:
            return lambda: K.launch_hadamard(xs[i % len(xs)], outs[i], scale, **kw)

        try:
            us = graph_us([call(i) for i in range(CALLS)])
        except Exception as e:  # a sweep point the compiler rejects (e.g. out of shared memory)
            print(f"n={n} rows={rows} {name}: failed ({type(e).__name__}: {str(e)[:80]})", flush=True)
            continue
        results.append(Result(n, rows, dtype_name, name, us, nbytes, nbytes / (us * 1e-6) / 1e9))
    if ref and results:
        results[0].ref_us = triton.testing.do_bench(lambda: Q.hadamard_quant(xs[0], scale), warmup=5, rep=50,
                                                    return_mode="median") * 1e3
    return results


def format_rows(results: list[Result]) -> str:
    head = f"{'n':>6} {'rows':>5} {'dtype':<5} {'config':<26} {'us':>9} {'GB/s':>8} {'ref us':>9}"
    lines = [head, "-" * len(head)]
    for r in results:
        ref = f"{r.ref_us:9.1f}" if r.ref_us is not None else f"{'-':>9}"
        lines.append(f"{r.n:6d} {r.rows:5d} {r.dtype:<5} {r.config:<26} {r.us:9.2f} {r.GBps:8.1f} {ref}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2560,5120,8192")
    ap.add_argument("--rows", default="1,1024")
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--ref", action="store_true", help="also time the plain-torch reference")
    ap.add_argument("--sweep", action="store_true", help="also time alternative launch shapes")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels_hadamard.py needs a CUDA GPU")
    print(torch.cuda.get_device_name(), flush=True)
    results = []
    for n in (int(v) for v in args.sizes.split(",")):
        for rows in (int(v) for v in args.rows.split(",")):
            rs = bench(n, rows, args.dtype, args.ref, args.sweep)
            for r in rs:
                print(format_rows([r]).splitlines()[-1], flush=True)
            results += rs
    print(format_rows(results))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
