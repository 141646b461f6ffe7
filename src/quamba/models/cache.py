"""Inference cache: per-layer conv and SSM states carried between prefill and decode steps."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerState:
    """``conv`` holds the last ``d_conv`` conv inputs ``[B, C, K]``; ``ssm`` the recurrent state.

    ``work`` is decode scratch a mixer may keep between steps, per batch row: Mamba1 the x_proj
    accumulator and its counter (recycled: zeros between steps) and the folded block norm's sum of
    squares ``[B, 1]``; Mamba2 ``[B, G + 1]``, the gated norm's per-group sums and the folded block
    norm's sum (W8A8 Mamba2: ``[B, G]``). The sums are zeroed by one of the layer's kernels of a step
    before they accumulate.
    """

    conv: torch.Tensor
    ssm: torch.Tensor
    work: tuple[torch.Tensor, ...] = ()


class InferenceCache:
    """States of every layer plus the number of tokens consumed so far."""

    def __init__(self, layers: list[LayerState], batch_size: int):
        self.layers = layers
        self.batch_size = batch_size
        self.seqlen_offset = 0

    def reset(self) -> None:
        """Zero every state, one ``_foreach_zero_`` per (device, dtype) group: a new prompt issues a handful
        of launches instead of one ``zero_`` per tensor (2-5 per layer, ~10 us of host time each)."""
        groups: dict[tuple, list[torch.Tensor]] = {}
        for s in self.layers:
            for t in (s.conv, s.ssm, *s.work):
                groups.setdefault((t.device, t.dtype), []).append(t)
        for tensors in groups.values():
            torch._foreach_zero_(tensors)
        self.seqlen_offset = 0

    def nbytes(self) -> int:
        return sum(s.conv.numel() * s.conv.element_size() + s.ssm.numel() * s.ssm.element_size()
                   for s in self.layers)
