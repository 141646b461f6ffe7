"""Host cost of each Triton launch of an eager prefill, split into its parts.

Builds a model at a real shape (two layers), records the first launch of every kernel during one
prefill, then times per launch (GPU kept busy-free: the loops are short and synchronized):
``launch`` (ours, end to end), our Python alone (the cached launcher replaced by a no-op) and the
compiled kernel's launcher called directly, with the data pointers as ints (how ``launch`` calls it) and with
the tensors themselves (``compiled_run_tensors_us``: Triton then calls ``data_ptr`` and checks each pointer with
the driver); prints the Python ``__call__`` of Triton's launcher class
(what runs before its C launch). Also times ``torch.empty`` and an fp16 ``F.linear`` issue for comparison.
Usage: PYTHONPATH=src python benchmarks/launch_overhead.py --shape mamba-2.8b --precision w8a8 [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import pkgutil
import time

import torch
import torch.nn.functional as F

import quamba.kernels as KP
from quamba.kernels import launch as L, reuse


def per_launch_us(fn, reps: int = 200) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    dt = (time.perf_counter() - t0) / reps * 1e6
    torch.cuda.synchronize()
    return dt


def build(shape: str, precision: str):
    from quamba.config import shape_config
    from quamba.models import MambaLM, init_random_weights

    cfg = dataclasses.replace(shape_config(shape), n_layer=2)
    with torch.device("cuda"):
        m = MambaLM(cfg).to(torch.float16)
    init_random_weights(m, seed=0)
    m.eval()
    if precision == "w8a8":
        from quamba.quantization import RECIPES, quantize_

        calib = [torch.randint(0, cfg.tokenizer_vocab_size, (1, 128), device="cuda")]
        quantize_(m, RECIPES["quamba"](quantize_embedding=True, quantize_lm_head=True), calib, show_progress=False)
    return m


def record_launches(model, prompt) -> dict:
    """The first launch of every kernel in two prefills, through ``launch`` or ``launch_for_reuse`` (replays
    off, so that every op call reaches one of them)."""
    seen = {}
    spies = {}
    for name in ("launch", "launch_for_reuse"):
        def spy(kernel, grid, *a, _real=getattr(L, name), **k):
            seen.setdefault(kernel.fn.__name__, (kernel, tuple(grid), a, k))
            return _real(kernel, grid, *a, **k)
        spies[name] = spy
    patched = []
    for mi in pkgutil.iter_modules(KP.__path__):
        mod = importlib.import_module(f"quamba.kernels.{mi.name}")
        for name, spy in spies.items():
            if mod is not L and getattr(mod, name, None) is getattr(L, name):
                setattr(mod, name, spy)
                patched.append((mod, name))
    replay, reuse.ENABLED = reuse.ENABLED, False
    try:
        with torch.inference_mode():
            cache = model.allocate_cache(1)
            model(prompt, cache, last_only=True)
            model(prompt, cache, last_only=True)
    finally:
        reuse.ENABLED = replay
        for mod, name in patched:
            setattr(mod, name, getattr(L, name))
    torch.cuda.synchronize()
    return seen


def breakdown(kernel, grid, a, k) -> tuple[dict, type | None]:
    """Host microseconds per launch of one recorded launch, and the class of its compiled launcher."""
    row = {"args": len(a) + len(k)}
    row["launch_us"] = per_launch_us(lambda: L.launch(kernel, grid, *a, **k))
    types = tuple(map(type, a))
    entry = L._slots.get((id(kernel), types, tuple(k)))
    if entry is None:
        row["note"] = "not on the cached path"
        return row, None
    go = entry[0]
    made = go(a, k)
    key = (go, torch.cuda.current_device(), made[0])
    run, function, packed = L._compiled[key]
    L._compiled[key] = (lambda *x: None, function, packed)
    try:
        row["ours_python_us"] = per_launch_us(lambda: L.launch(kernel, grid, *a, **k), 2000)
    finally:
        L._compiled[key] = (run, function, packed)
    g = tuple(grid) + (1,) * (3 - len(grid))
    stream = L._raw_stream(torch.cuda.current_device())
    row["compiled_run_us"] = per_launch_us(lambda: run(*g, stream, function, packed, None, None, None, *made[1]))
    as_tensors = (*a, *made[1][len(a):])
    row["compiled_run_tensors_us"] = per_launch_us(lambda: run(*g, stream, function, packed, None, None, None,
                                                               *as_tensors))
    row["launcher_type"] = type(run).__name__
    return row, type(run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mamba-2.8b")
    ap.add_argument("--precision", default="w8a8")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = build(args.shape, args.precision)
    prompt = torch.randint(0, model.config.tokenizer_vocab_size, (1, 1024), device="cuda")
    seen = record_launches(model, prompt)
    report = {"shape": args.shape, "precision": args.precision, "kernels": {}}
    launcher = None
    for name, (kernel, grid, a, k) in sorted(seen.items()):
        report["kernels"][name], cls = breakdown(kernel, grid, a, k)
        launcher = cls or launcher
    report["torch_empty_us"] = per_launch_us(lambda: torch.empty((1024, 10240), dtype=torch.int8, device="cuda"), 2000)
    x = torch.randn(1024, 2560, device="cuda", dtype=torch.float16)
    w = torch.randn(10240, 2560, device="cuda", dtype=torch.float16)
    report["F_linear_issue_us"] = per_launch_us(lambda: F.linear(x, w), 100)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, row in report["kernels"].items():
            print(f"{name:28s} " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in row.items()))
        print({k: round(v, 2) for k, v in report.items() if isinstance(v, float)})
    if launcher is not None:
        try:
            print("---- launcher __call__ (tail) ----\n" + inspect.getsource(launcher.__call__)[-900:])
        except (OSError, TypeError):
            pass


if __name__ == "__main__":
    main()
