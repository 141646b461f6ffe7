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


def interpreted_relaunch(monkeypatch, *modules):
    """On the CPU, stand each module's ``launch_for_reuse`` in with one that returns a ``Relaunch`` (fired as the
    real one is) whose launcher maps the data pointers it is given back to tensors and runs the kernel in the
    interpreter: the tensor registered at that address (every ``torch.empty`` is registered, and poisoned;
    ``own(t)`` registers others), or a view, of the dtype the kernel was compiled for, into the registered tensor
    whose storage holds the address (the block replays put in workspace offsets). The inputs of op replays are
    registered too. The pointers that a replay puts in are then checked by the results. Returns ``(own, owners)``."""
    from torch.utils._python_dispatch import _disable_current_modes
    from triton.runtime.jit import JITFunction
    from quamba.kernels import launch as L

    owners: dict[int, torch.Tensor] = {}
    real_empty = torch.empty

    def own(t):
        owners.setdefault(t.data_ptr(), t)
        return t

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        with _disable_current_modes():  # not an op of the code under test (block recordings watch torch ops)
            return own(t.fill_(float("nan") if t.is_floating_point() else 77))

    def tensor_at(p, dtype):
        t = owners.get(p)
        if t is not None and t.dtype == dtype:
            return t
        for o in list(owners.values()):
            st = o.untyped_storage()
            if st.data_ptr() <= p < st.data_ptr() + st.nbytes():
                off = p - st.data_ptr()
                n = (st.nbytes() - off) // dtype.itemsize * dtype.itemsize
                return torch.tensor([], dtype=torch.uint8).set_(st)[off:off + n].view(dtype)
        raise AssertionError(f"no tensor holds address {p:#x}")

    def launcher(dtypes):
        def run(g0, g1, g2, stream, kernel, packed, *rest):
            with _disable_current_modes():
                args = list(rest[3:])
                for i, dt in dtypes.items():
                    args[i] = tensor_at(args[i], dt)
                kernel[(g0, g1, g2)](*args)
        return run

    def for_reuse(kernel, grid, *args, **kwargs):
        pointers = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        for i in pointers:
            own(args[i])
        go = L._make_slot(JITFunction(kernel.fn), len(args), tuple(map(type, args)), tuple(kwargs))
        full = go(args, kwargs)[1]
        g = tuple(grid) + (1,) * (3 - len(grid))
        r = L.Relaunch(launcher({i: args[i].dtype for i in pointers}), kernel, None, g, full, 0, pointers)
        r.fire(full)
        return r

    from quamba.kernels import int8_gemm, reuse

    replay_run, relaunch_gemm = reuse.Replay.run, int8_gemm._relaunch_gemm
    monkeypatch.setattr(reuse.Replay, "run", lambda self, inputs: replay_run(self, [own(t) for t in inputs]))
    monkeypatch.setattr(int8_gemm, "_relaunch_gemm", lambda r, x_q: relaunch_gemm(r, own(x_q)))
    monkeypatch.setattr(L, "_raw_stream", lambda device: 0)
    monkeypatch.setattr(L, "_current_device", lambda: 0)
    for module in modules:
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
