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
