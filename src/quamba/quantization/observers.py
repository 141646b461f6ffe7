"""Streaming activation statistics for static int8 scales (Quamba calibration observers).

Each observer keeps only its running statistic, so memory is bounded by the model, not by the
number of calibration samples. ``update(x)`` folds one activation in, ``value()`` returns the
statistic and ``scale(qmax)`` the symmetric int8 scale. Per-tensor statistics and scales are Python
floats (the scale convention of ``quamba.ops.qreference``); per-channel ones are fp32 tensors.
"""
from __future__ import annotations

import math

import torch

from ..errors import CalibrationError, InvalidArgumentError

Tensor = torch.Tensor

ABSMAX_FLOOR = 1e-5
SCALE_FLOOR = 1e-6


class Observer:
    """Common checks: finite, non-empty inputs; no scale before the first update."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.num_updates = 0

    def _label(self) -> str:
        return f"observer {self.name!r}" if self.name else f"unnamed {type(self).__name__}"

    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise InvalidArgumentError(f"{self._label()}: update() needs a tensor, got {type(x).__name__}")
        if x.numel() == 0:
            raise CalibrationError(f"{self._label()} received an empty activation tensor")
        return x.detach()

    def _non_finite(self) -> CalibrationError:
        return CalibrationError(f"{self._label()} saw NaN/Inf activations: the model diverged on the "
                                "calibration data (check the checkpoint and dtype)")

    def _check_ready(self) -> None:
        if self.num_updates == 0:
            raise CalibrationError(f"{self._label()} has no statistics: it was never updated "
                                   "(no calibration forward reached it)")

    def update(self, x: Tensor) -> None:
        raise NotImplementedError

    def value(self):
        raise NotImplementedError

    def scale(self, qmax: int = 127):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, updates={self.num_updates})"


class AbsMaxObserver(Observer):
    """Running max over updates of ``max|x|`` (floored at 1e-5); scale = max/qmax, floored at 1e-6."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._max = 0.0

    def update(self, x: Tensor) -> None:
        x = self._check_input(x)
        cur = float(x.abs().amax())
        if not math.isfinite(cur):
            raise self._non_finite()
        self._max = max(self._max, cur, ABSMAX_FLOOR)
        self.num_updates += 1

    def value(self) -> float:
        self._check_ready()
        return self._max

    def scale(self, qmax: int = 127) -> float:
        return max(self.value() / qmax, SCALE_FLOOR)


def abs_quantile(x: Tensor, p: float) -> float:
    """Quantile ``p`` of ``|x|`` (all elements, fp32) with linear interpolation, as torch.quantile.

    Uses topk on the upper tail (or kthvalue) instead of torch.quantile, so inputs above its
    16M-element limit work and only the tail is ordered.
    """
    a = x.reshape(-1).abs().float()
    n = a.numel()
    pos = p * (n - 1)
    lo = min(int(math.floor(pos)), n - 1)
    frac = pos - lo
    hi = min(lo + 1, n - 1)
    tail = n - lo
    if tail <= max(n // 2, 1):
        vals = torch.topk(a, tail, largest=True, sorted=False).values
        if tail >= 2:
            two = torch.topk(vals, 2, largest=False, sorted=True).values
            v_lo, v_hi = float(two[0]), float(two[1])
        else:
            v_lo = v_hi = float(vals[0])
    else:
        v_lo = float(torch.kthvalue(a, lo + 1).values)
        v_hi = float(torch.kthvalue(a, hi + 1).values) if hi != lo else v_lo
    return v_lo + frac * (v_hi - v_lo)


class PercentileObserver(Observer):
    """EMA over updates of the ``p``-quantile of ``|x|``; the first update initialises it.

    ``m <- m + momentum * (cur - m)``; scale = m/qmax (floored at 1e-6 so an all-zero input cannot
    produce a zero scale).
    """

    def __init__(self, p: float = 0.9995, momentum: float = 0.01, name: str = "") -> None:
        super().__init__(name)
        if not 0.0 <= p <= 1.0:
            raise InvalidArgumentError(f"percentile p must be in [0, 1], got {p}")
        if not 0.0 < momentum <= 1.0:
            raise InvalidArgumentError(f"percentile momentum must be in (0, 1], got {momentum}")
        self.p = float(p)
        self.momentum = float(momentum)
        self._m = 0.0

    def update(self, x: Tensor) -> None:
        x = self._check_input(x)
        if not bool(torch.isfinite(x).all()):
            raise self._non_finite()
        cur = abs_quantile(x, self.p)
        self._m = cur if self.num_updates == 0 else self._m + self.momentum * (cur - self._m)
        self.num_updates += 1

    def value(self) -> float:
        self._check_ready()
        return self._m

    def scale(self, qmax: int = 127) -> float:
        return max(self.value() / qmax, SCALE_FLOOR)


class PerChannelAbsMaxObserver(Observer):
    """Running ``max|x|`` per channel of dim ``dim`` over all other dims -> fp32 ``[C]`` (floored 1e-5)."""

    def __init__(self, dim: int = -1, name: str = "") -> None:
        super().__init__(name)
        self.dim = dim
        self._max: Tensor | None = None

    def update(self, x: Tensor) -> None:
        x = self._check_input(x)
        if x.dim() == 0:
            raise InvalidArgumentError(f"{self._label()}: per-channel statistics need at least one dimension")
        c = x.shape[self.dim]
        cur = x.movedim(self.dim, -1).reshape(-1, c).abs().amax(0).float()
        if not bool(torch.isfinite(cur).all()):
            raise self._non_finite()
        cur = cur.clamp_min(ABSMAX_FLOOR)
        if self._max is None:
            self._max = cur
        elif self._max.shape[0] != c:
            raise InvalidArgumentError(f"{self._label()}: channel count changed from {self._max.shape[0]} to {c}")
        else:
            self._max = torch.maximum(self._max, cur.to(self._max.device))
        self.num_updates += 1

    def value(self) -> Tensor:
        self._check_ready()
        return self._max.clone()

    def scale(self, qmax: int = 127) -> Tensor:
        return (self.value() / qmax).clamp_min(SCALE_FLOOR)


_KINDS = {
    "absmax": AbsMaxObserver,
    "percentile": PercentileObserver,
    "per_channel_absmax": PerChannelAbsMaxObserver,
}


def make_observer(kind: str, **kw) -> Observer:
    """Observer by kind: "absmax", "percentile" or "per_channel_absmax"; ``kw`` go to its constructor."""
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise InvalidArgumentError(f"unknown observer kind {kind!r}; choose one of {', '.join(_KINDS)}") from None
    return cls(**kw)
