"""Quantized pre-norm: fused residual add + RMSNorm with an int8 output (Quamba's QRMSNorm)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import ops
from ..models.mixers import RMSNorm
from .base import QModule, fake_quant

Tensor = torch.Tensor


class QRMSNorm(QModule):
    """``forward(x, residual) -> (normed, residual)`` like ``RMSNorm``, with ``normed`` int8.

    ``output="int8"`` quantizes with the static ``output_scale`` (the next layer's input scale);
    ``output="float"`` returns the float normed values, for layers that quantize their input
    dynamically. The residual stays in fp32 when ``residual_in_fp32``. With ``fake`` the int8 output
    is simulated (float holding the dequantized values).
    """

    def __init__(self, dim: int, eps: float, residual_in_fp32: bool = True, *, output: str = "int8",
                 fake: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32), requires_grad=False)
        self.eps = eps
        self.residual_in_fp32 = residual_in_fp32
        self.output = output
        self.fake = fake
        if output == "int8":
            self.add_scale("output_scale")

    @classmethod
    def from_float(cls, norm: RMSNorm, output_scale: float | None, **kw) -> "QRMSNorm":
        mod = cls(norm.weight.shape[0], norm.eps, norm.residual_in_fp32,
                  output="int8" if output_scale is not None else "float", **kw)
        mod.to(norm.weight.device)
        with torch.no_grad():
            mod.weight.copy_(norm.weight.float())
        if output_scale is not None:
            mod.set_scale("output_scale", output_scale)
        return mod

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, output={self.output}, fake={self.fake}"

    def forward(self, x: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.output == "float":
            return ops.add_rms_norm(x, residual, self.weight, self.eps, self.residual_in_fp32)
        if not self.fake:
            return ops.qadd_rms_norm(x, residual, self.weight, self.eps, self.scale("output_scale"),
                                     self.residual_in_fp32)
        res = x if residual is None else residual + x.to(residual.dtype)
        if self.residual_in_fp32:
            res = res.float()
        y = ops.rms_norm(res.float(), self.weight, self.eps)
        return fake_quant(y, self.scale("output_scale")), res
