"""Python host cost of ``quamba.kernels.launch.launch`` and of ``int8_linear``'s wrapper, on a CPU-only machine.

Nothing reaches a GPU: Triton's compiled launcher is replaced by a no-op (``launch``'s cache is filled
with it on the first, "missing", launch), so the times are our Python alone. A W8A8 model at a real shape
(four layers) runs one 1024-token prefill with replays off to record the first launch of every kernel;
each is then relaunched in a loop. ``int8_linear`` is timed at mamba-2.8b's in_proj shape with the launch
stubbed, set up in full on every call (replays off) and replayed.
Usage: python benchmarks/launch_host_cpu.py [--shape mamba-2.8b] [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import pkgutil
import time

import torch
from triton.runtime.jit import JITFunction

import quamba.kernels as KP
from quamba.kernels import launch as L, reuse

for _mi in pkgutil.iter_modules(KP.__path__):  # kernels compile as JITFunctions (not interpreted) ...
    importlib.import_module(f"quamba.kernels.{_mi.name}")
os.environ["TRITON_INTERPRET"] = "1"  # ... while the dispatcher sends CPU tensors to their wrappers

from quamba import ops  # noqa: E402
from quamba.config import shape_config  # noqa: E402
from quamba.kernels import int8_gemm as G  # noqa: E402
from quamba.models import MambaLM, init_random_weights  # noqa: E402
from quamba.quantization import RECIPES, quantize_  # noqa: E402


class _NoLaunch:
    function, packed_metadata = 1, ()

    @staticmethod
    def run(*_):
        pass


def _us(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mamba-2.8b")
    ap.add_argument("--reps", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    L._enabled = True
    L._raw_stream = lambda device: 0
    L._current_device = lambda: 0
    JITFunction.__getitem__ = lambda self, grid: (lambda *a, **k: _NoLaunch())
    for name in ("int8_gemm", "selective_scan", "ssd"):
        mod = importlib.import_module(f"quamba.kernels.{name}")
        if hasattr(mod, "num_sms"):
            mod.num_sms = lambda device: 132
    G._tune = lambda x, w, out, ep: dict(G._INTERPRETER_TILE)

    cfg = dataclasses.replace(shape_config(args.shape), n_layer=4)
    torch.manual_seed(0)
    model = init_random_weights(MambaLM(cfg)).eval()
    quantize_(model, RECIPES["quamba"](quantize_embedding=True, quantize_lm_head=True),
              [torch.randint(0, 1000, (1, 64))], show_progress=False)
    seen, real = {}, L.launch

    def spy(kernel, grid, *a, _real=L.launch, **k):
        seen.setdefault(kernel.fn.__name__, (kernel, grid, a, k))
        return _real(kernel, grid, *a, **k)

    patched = []
    for mi in pkgutil.iter_modules(KP.__path__):
        m = importlib.import_module(f"quamba.kernels.{mi.name}")
        for name in ("launch", "launch_for_reuse"):
            if m is not L and getattr(m, name, None) is getattr(L, name):
                setattr(m, name, functools.partial(spy, _real=getattr(L, name)))
                patched.append((m, name))
    ops.set_backend("triton")
    reuse.ENABLED = False  # every op call reaches a launch
    with torch.inference_mode():
        model(torch.randint(0, 1000, (1, 1024)), model.allocate_cache(1), last_only=True)
    for m, name in patched:
        setattr(m, name, getattr(L, name))
    report = {"shape": args.shape, "launch_us": {}}
    for name, (kernel, grid, a, k) in sorted(seen.items()):
        report["launch_us"][name] = _us(lambda: real(kernel, grid, *a, **k), args.reps)

    G.launch = lambda *a, **k: None
    x = torch.randint(-5, 5, (1, 1024, 2560), dtype=torch.int8)
    w = torch.randint(-5, 5, (10240, 2560), dtype=torch.int8)
    report["int8_linear_wrapper_us"] = _us(lambda: G.int8_linear(x, w, 0.1, 0.2, None, out_scale=0.3), 5000)
    reuse.ENABLED = True  # the same call replayed: the first one records (through the stubbed launcher)
    report["int8_linear_replay_us"] = _us(lambda: G.int8_linear(x, w, 0.1, 0.2, None, out_scale=0.3), 5000)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, us in report["launch_us"].items():
            print(f"launch {name:28s} {us:6.2f} us")
        print(f"int8_linear wrapper (in_proj shape, launch stubbed) {report['int8_linear_wrapper_us']:.2f} us, "
              f"replayed {report['int8_linear_replay_us']:.2f} us")


if __name__ == "__main__":
    main()
