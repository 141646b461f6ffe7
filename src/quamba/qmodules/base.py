"""Shared pieces of the quantized modules: scale buffers and int8 weight quantization.

Scales are fp32 buffers, so they are saved with the state dict and follow ``.to(device)``. The
ops take per-tensor scales as Python floats (a kernel launch must not read a GPU tensor back), so
every 0-d scale buffer is mirrored as a float, refreshed after ``load_state_dict`` and whenever a
scale is set.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import ops
from ..models.stamp import bump_module_epoch, tensor_stamp

Tensor = torch.Tensor

WEIGHT_SCALE_FLOOR = 1e-8


class QModule(nn.Module):
    """Base of the quantized modules: named scale buffers with Python-float mirrors."""

    def __init__(self) -> None:
        super().__init__()
        self._floats: dict[str, float] = {}
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        bump_module_epoch()

    def add_scale(self, name: str, shape: tuple[int, ...] = ()) -> None:
        self.register_buffer(name, torch.ones(shape, dtype=torch.float32))
        if not shape:
            self._floats[name] = 1.0

    def set_scale(self, name: str, value: float | Tensor) -> None:
        buf = getattr(self, name)
        with torch.no_grad():
            buf.copy_(torch.as_tensor(value, dtype=torch.float32).to(buf.device).expand_as(buf))
        self.refresh_scales()

    def refresh_scales(self) -> None:
        """Re-read the Python-float mirrors of the 0-d scale buffers."""
        for name in list(self._floats):
            buf = getattr(self, name)
            if buf.device.type != "meta":
                self._floats[name] = float(buf)
        bump_module_epoch()

    def derived(self, key: str, compute, *deps: Tensor):
        """``compute()`` cached until a tensor in ``deps`` or a scale changes (decode steps would
        otherwise re-run the dequantize/exp launches of constant parameters every token)."""
        stamp = tuple(tensor_stamp(t) for t in deps) + tuple(sorted(self._floats.items()))
        cache = self.__dict__.setdefault("_derived", {})
        hit = cache.get(key)
        if hit is None or hit[0] != stamp:
            hit = cache[key] = (stamp, compute())
        return hit[1]

    def scale(self, name: str) -> float | Tensor:
        """A per-tensor scale as a float, a per-channel one as its fp32 buffer."""
        if name in self._floats:
            return self._floats[name]
        return getattr(self, name)


def _refresh_after_load(module: QModule, _incompatible_keys) -> None:
    module.refresh_scales()


def fake_quant(x: Tensor, scale: float | Tensor) -> Tensor:
    """Quantize to int8 and back (fp32), the simulation of one quantization point."""
    return ops.dequantize(ops.quantize(x, scale), scale)


def quantize_per_tensor(w: Tensor) -> tuple[Tensor, float]:
    """Symmetric absmax int8 of a whole tensor: ``(int8 codes, scale)``."""
    s = max(float(w.detach().abs().max()) / 127.0, WEIGHT_SCALE_FLOOR) if w.numel() else 1.0
    return ops.quantize(w.detach(), s), s


def quantize_per_segment(w: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor]:
    """Absmax int8 with one scale per row segment of ``w`` (dim 0 split into ``sizes``).

    Returns the codes and the scale expanded to one entry per row ``[N]``.
    """
    scales = []
    for part in w.detach().split(sizes, dim=0):
        s = max(float(part.abs().max()) / 127.0, WEIGHT_SCALE_FLOOR) if part.numel() else 1.0
        scales.append(torch.full((part.shape[0],), s, dtype=torch.float32, device=w.device))
    per_row = torch.cat(scales)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return ops.quantize(w.detach(), per_row.view(shape)), per_row


def segment_vector(values: list[float], sizes: list[int], device=None) -> Tensor:
    """A per-channel fp32 vector holding ``values[i]`` on the ``sizes[i]`` channels of segment i."""
    return torch.cat([torch.full((n,), float(v), dtype=torch.float32, device=device)
                      for v, n in zip(values, sizes)])
