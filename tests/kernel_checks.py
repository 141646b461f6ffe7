"""Shared by the kernel tests: the test device, random inputs, poisoned allocations, the relative error and
the int8 comparison."""
from __future__ import annotations

from contextlib import contextmanager

import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def rnd(*shape, dtype=torch.float32, scale=1.0, shift=0.0):
    """Fresh normal values on ``DEV``: ``randn * scale + shift`` in ``dtype``."""
    return (torch.randn(*shape, device=DEV) * scale + shift).to(dtype)


@contextmanager
def poisoned_outputs():
    """Every tensor ``torch.empty`` creates inside the block starts as NaN (floats) or random bytes."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.numel():
            t.copy_(torch.randint(-100, 100, t.shape, device=t.device).to(t.dtype))
        return t

    torch.empty = empty
    try:
        yield
    finally:
        torch.empty = real


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    assert torch.isfinite(a).all(), "non-finite (unwritten?) output"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


MAX_OFF_BY_ONE = 1e-3


def q8(*shape):
    """Fresh int8 codes over the whole range on ``DEV``."""
    return torch.randint(-128, 128, shape, device=DEV, dtype=torch.int8)


def assert_int8_close(a: torch.Tensor, b: torch.Tensor, max_frac: float = MAX_OFF_BY_ONE, at_least: int = 1) -> None:
    """Int8 codes equal, or off by one where float rounding legitimately differs: at most ``max_frac`` of
    the elements, and always ``at_least`` (a small tensor's 0.1% is less than one element)."""
    assert a.dtype == b.dtype == torch.int8 and a.shape == b.shape
    diff = (a.int() - b.int()).abs()
    assert diff.max().item() <= 1
    assert (diff > 0).sum().item() <= max(at_least, int(max_frac * diff.numel()))


def interpreted_relaunch(monkeypatch, module):
    """On the CPU, stand ``module.launch_for_reuse`` in with one that launches in the interpreter and returns
    a ``Relaunch`` whose launcher maps the data pointers it is given back to the tensors that own them (every
    ``torch.empty`` is registered, and poisoned; ``own(t)`` registers others) and runs the kernel in the
    interpreter again: the pointers that a replay puts in are then checked by the results.
    Returns ``(own, owners)``."""
    from triton.runtime.jit import JITFunction
    from quamba.kernels import launch as L

    owners: dict[int, torch.Tensor] = {}
    real_empty = torch.empty

    def own(t):
        owners.setdefault(t.data_ptr(), t)
        return t

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return own(t.fill_(float("nan") if t.is_floating_point() else 77))

    def run(g0, g1, g2, stream, kernel, packed, *rest):
        kernel[(g0, g1, g2)](*[owners.get(a, a) if type(a) is int else a for a in rest[3:]])

    def for_reuse(kernel, grid, *args, **kwargs):
        kernel[grid](*args, **kwargs)
        pointers = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        for i in pointers:
            own(args[i])
        go = L._make_slot(JITFunction(kernel.fn), len(args), tuple(map(type, args)), tuple(kwargs))
        g = tuple(grid) + (1,) * (3 - len(grid))
        return L.Relaunch(run, kernel, None, g, go(args, kwargs)[1], 0, pointers)

    monkeypatch.setattr(L, "_raw_stream", lambda device: 0)
    monkeypatch.setattr(L, "_current_device", lambda: 0)
    monkeypatch.setattr(module, "launch_for_reuse", for_reuse)
    monkeypatch.setattr(torch, "empty", empty)
    return own, owners


def replaying(monkeypatch, launching, table):
    """``interpreted_relaunch`` for the wrappers of ``launching`` with replays switched on and the replay
    table of ``table`` (the module holding ``_REPLAYS``) emptied. Returns ``(own, replays)``: ``replays``
    gets an entry per replayed call."""
    from quamba.kernels import reuse

    own, _ = interpreted_relaunch(monkeypatch, launching)
    monkeypatch.setattr(reuse, "ENABLED", True)
    table._REPLAYS.clear()
    replays = []
    run = reuse.Replay.run
    monkeypatch.setattr(reuse.Replay, "run", lambda self, inputs: replays.append(1) or run(self, inputs))
    return own, replays
