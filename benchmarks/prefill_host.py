"""Where the eager prefill's host time goes: per op, per Triton launch, and launch micro-benchmarks.

Wraps every dispatched ``quamba.ops`` function, ``quamba.kernels.launch.launch`` and
``JITFunction.run`` (the generic path, taken on cache misses) with wall-clock timers (no profiler), runs one
prefill, and prints host microseconds per op call and per launch (the timed prefill is the second, so an op
whose launches are replayed, ``quamba.kernels.reuse``, shows in its op row only). Then times
the bare host cost of a Triton launch through ``kernel[grid](...)`` and through the compiled
kernel's own launcher, of ``torch.empty`` and of an fp16 ``F.linear`` issue.
``--cprofile N`` adds the N functions with the most own time (cProfile) over three prefills without timers.
Usage: PYTHONPATH=src python benchmarks/prefill_host.py --shape mamba-2.8b --precision fp16,w8a8 [--cprofile 30]
       [--json PATH]
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import pkgutil
import pstats
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

import quamba.kernels
import quamba.ops as ops
from quamba.cli.bench import build_model
from quamba.kernels.launch import launch as fast

from launch_overhead import per_launch_us  # benchmarks/ is on the path when this script runs


class Timers:
    def __init__(self):
        self.total = defaultdict(float)
        self.calls = defaultdict(int)

    def wrap(self, name, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[name] += time.perf_counter() - t0
                self.calls[name] += 1
        return timed


def per_op_host(model, prompt) -> dict:
    timers = Timers()
    saved = {}
    for name in dir(ops):
        fn = getattr(ops, name)
        if callable(fn) and hasattr(fn, "reference"):
            saved[name] = fn
            setattr(ops, name, timers.wrap("op:" + name, fn))
    run = JITFunction.run

    def jit_run(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return run(self, *a, **k)
        finally:
            key = "jit_run:" + self.fn.__name__
            timers.total[key] += time.perf_counter() - t0
            timers.calls[key] += 1

    def cached_launch(kernel, *a, **k):
        t0 = time.perf_counter()
        try:
            return fast(kernel, *a, **k)
        finally:
            key = "launch:" + getattr(getattr(kernel, "fn", kernel), "__name__", "?")
            timers.total[key] += time.perf_counter() - t0
            timers.calls[key] += 1

    JITFunction.run = jit_run
    for info in pkgutil.iter_modules(quamba.kernels.__path__):  # a module imported later would bind the wrapper
        importlib.import_module(f"quamba.kernels.{info.name}")
    patched = [m for m in list(sys.modules.values())
               if getattr(m, "__name__", "").startswith("quamba.kernels.") and m.__name__ != "quamba.kernels.launch"
               and getattr(m, "launch", None) is fast]
    for m in patched:
        m.launch = cached_launch
    try:
        cache = model.allocate_cache(1)
        model(prompt, cache, last_only=True)
        torch.cuda.synchronize()
        timers.total.clear()
        timers.calls.clear()
        cache.reset()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(prompt, cache, last_only=True)
        wall = time.perf_counter() - t0
        torch.cuda.synchronize()
    finally:
        JITFunction.run = run
        for m in patched:
            m.launch = fast
        for name, fn in saved.items():
            setattr(ops, name, fn)
    rows = sorted(((k, timers.total[k] * 1e3, timers.calls[k]) for k in timers.total), key=lambda r: -r[1])
    return {"wall_ms": wall * 1e3, "rows": [{"name": k, "ms": ms, "calls": c, "us_per_call": ms * 1e3 / c}
                                            for k, ms, c in rows]}


def cprofile_prefill(model, prompt, top: int, reps: int = 3) -> str:
    """cProfile's table (own time) over ``reps`` eager prefills after a warm one."""
    with torch.inference_mode():
        cache = model.allocate_cache(1)
        model(prompt, cache, last_only=True)
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        for _ in range(reps):
            cache.reset()
            prof.enable()
            model(prompt, cache, last_only=True)
            prof.disable()
            torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


@triton.jit
def _touch(x_ptr, y_ptr, a, b, c, d, n, s0, s1, s2, MODE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    if MODE == 1:
        v = v * a + b
    tl.store(y_ptr + offs, v * c + d + s0 + s1 + s2, mask=offs < n)


def launch_micro(reps: int = 2000) -> dict:
    x = torch.randn(4096, device="cuda")
    y = torch.empty_like(x)
    args = (x, y, 1.0, 2.0, 3.0, 4.0, 4096, 1, 2, 3)
    res = {}

    def timeit(fn, n=reps):
        return per_launch_us(fn, n)

    res["jit_launch_us"] = timeit(lambda: _touch[(4,)](*args, MODE=1, BLOCK=1024))
    compiled = _touch[(4,)](*args, MODE=1, BLOCK=1024)
    try:
        runner = compiled[(4, 1, 1)]
        res["compiled_launch_us"] = timeit(lambda: runner(*args, 1, 1024))
    except Exception as e:
        res["compiled_launch_error"] = f"{type(e).__name__}: {e}"[:200]
    res["torch_empty_us"] = timeit(lambda: torch.empty((1024, 10240), dtype=torch.float16, device="cuda"))
    a = torch.randn(1024, 2560, device="cuda", dtype=torch.float16)
    w = torch.randn(10240, 2560, device="cuda", dtype=torch.float16)
    res["F_linear_issue_us"] = timeit(lambda: F.linear(a, w), n=200)
    res["is_capturing_us"] = timeit(lambda: torch.cuda.is_current_stream_capturing())
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mamba-2.8b")
    ap.add_argument("--precision", default="fp16,w8a8")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--cprofile", type=int, default=0, metavar="N")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    report = {"shape": args.shape, "micro": launch_micro()}
    print(args.shape, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in report["micro"].items()})
    for prec in args.precision.split(","):
        model = build_model(None, args.shape, prec)
        prompt = torch.randint(0, model.config.tokenizer_vocab_size, (1, args.prompt_len), device="cuda")
        with torch.inference_mode():
            r = per_op_host(model, prompt)
        report[prec] = r
        n_layer = model.config.n_layer
        print(f"== {args.shape} {prec}: one prefill issued in {r['wall_ms']:.1f} ms host (with timers)")
        for row in r["rows"][:args.top]:
            print(f"  {row['name']:<40} {row['ms']:8.2f} ms {row['calls'] / n_layer:6.2f}/layer "
                  f"{row['us_per_call']:8.1f} us/call")
        if args.cprofile:
            print(f"== {args.shape} {prec}: cProfile, 3 prefills, by own time")
            print(cprofile_prefill(model, prompt, args.cprofile))
        del model
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
