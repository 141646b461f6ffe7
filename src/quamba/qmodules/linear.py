"""Linear layers: W8A8 with int8 weight storage, and the float linear with an online Hadamard input."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..errors import InvalidArgumentError
from ..quantization.hadamard import hadamard_transform
from .base import QModule, fake_quant, quantize_per_segment, quantize_per_tensor

Tensor = torch.Tensor

ACT_MODES = ("static", "dynamic")
OUTPUT_MODES = (None, "tensor", "channel")


class HadamardLinear(nn.Linear):
    """``nn.Linear`` applied to ``H x`` (normalized Hadamard over the input features), computed online.

    The float form of a rotated ``out_proj``: its weight already carries ``Hᵀ`` on the input side,
    so the product equals the unrotated layer while its input (``H x``) has no channel outliers.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(hadamard_transform(x.to(self.weight.dtype)), self.weight, self.bias)


class W8A8Linear(QModule):
    """``y = s_x s_w (x_q W_qᵀ) + bias`` with int8 ``W_q [N, K]`` and int8 activations.

    - ``act``: ``"static"`` (one calibrated input scale) or ``"dynamic"`` (per-token scales computed
      from each float input).
    - ``hadamard_input``: a float input is Hadamard-transformed before it is quantized (Quamba's
      QHadamard in front of ``out_proj``); an int8 input is taken as already transformed.
    - ``output``: ``None`` returns floats in ``out_dtype``; ``"tensor"`` int8 with one output scale;
      ``"channel"`` int8 with one output scale per channel (Mamba2's segmented in_proj).
    - ``per_channel_weight``: one weight scale per output row (segment scales), else one per tensor.

    ``forward(x, x_scale)`` takes either an int8 tensor with its scale (per-tensor, or the module's
    ``input_scale`` when omitted) or a float tensor that it quantizes. With ``fake`` the same
    quantization points are simulated in float: the result is a float tensor holding the
    dequantized int8 output.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, act: str = "static",
                 output: str | None = None, per_channel_weight: bool = False, hadamard_input: bool = False,
                 fake: bool = False, out_dtype: torch.dtype = torch.float16):
        super().__init__()
        if act not in ACT_MODES:
            raise InvalidArgumentError(f"unknown activation mode {act!r}; expected static or dynamic")
        if output not in OUTPUT_MODES:
            raise InvalidArgumentError(f"unknown output mode {output!r}; expected None, tensor or channel")
        self.in_features, self.out_features = in_features, out_features
        self.act, self.output, self.hadamard_input, self.fake = act, output, hadamard_input, fake
        self.out_dtype = out_dtype
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.add_scale("weight_scale", (out_features,) if per_channel_weight else ())
        if act == "static":
            self.add_scale("input_scale")
        if output is not None:
            self.add_scale("output_scale", (out_features,) if output == "channel" else ())
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32) if bias else None)

    @property
    def per_channel_weight(self) -> bool:
        return self.weight_scale.dim() == 1

    @classmethod
    def from_float(cls, linear: nn.Linear, **kw) -> "W8A8Linear":
        """Quantize an ``nn.Linear`` (see ``from_weight``)."""
        return cls.from_weight(linear.weight, linear.bias, **kw)

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None = None, *, input_scale: float | None = None,
                    output_scale: float | Tensor | None = None, segments: list[int] | None = None,
                    **kw) -> "W8A8Linear":
        """Quantize ``weight [N, K]`` (per tensor, or per row segment when ``segments`` is given)
        and set the calibrated activation scales."""
        w = weight.detach().float()
        if output_scale is not None and "output" not in kw:
            kw["output"] = "channel" if isinstance(output_scale, Tensor) and output_scale.dim() else "tensor"
        mod = cls(w.shape[1], w.shape[0], bias=bias is not None, per_channel_weight=segments is not None, **kw)
        mod.to(w.device)
        q, s = quantize_per_segment(w, segments) if segments is not None else quantize_per_tensor(w)
        mod.weight.copy_(q)
        mod.set_scale("weight_scale", s)
        if bias is not None:
            mod.bias.copy_(bias.detach().float())
        if mod.act == "static":
            if input_scale is None:
                raise InvalidArgumentError("a static W8A8Linear needs a calibrated input scale")
            mod.set_scale("input_scale", input_scale)
        if mod.output is not None:
            mod.set_scale("output_scale", output_scale)
        return mod

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, act={self.act}, output={self.output}, "
                f"hadamard_input={self.hadamard_input}, fake={self.fake}")

    def _out_scale(self):
        return self.scale("output_scale") if self.output is not None else None

    def quantize_input(self, x: Tensor) -> tuple[Tensor, float | Tensor]:
        """Float input -> (int8, scale) the way this layer quantizes it."""
        if self.act == "dynamic":
            if self.hadamard_input:
                x = hadamard_transform(x.float())
            return ops.per_token_quantize(x)
        s = self.scale("input_scale")
        return (ops.hadamard_quant(x, s) if self.hadamard_input else ops.quantize(x, s)), s

    def forward(self, x: Tensor, x_scale: float | Tensor | None = None) -> Tensor:
        if self.fake:
            return self._forward_fake(x, x_scale)
        if x.dtype == torch.int8:
            xs = x_scale if x_scale is not None else self.scale("input_scale")
        else:
            x, xs = self.quantize_input(x)
        return ops.int8_linear(x, self.weight, xs, self.scale("weight_scale"), self.bias,
                               out_scale=self._out_scale(), out_dtype=self.out_dtype)

    def _forward_fake(self, x: Tensor, x_scale: float | Tensor | None) -> Tensor:
        if x.dtype == torch.int8:
            x = ops.dequantize(x, x_scale if x_scale is not None else self.scale("input_scale"))
        else:
            x = x.float()
            if self.hadamard_input:
                x = hadamard_transform(x)
            if self.act == "dynamic":
                q, s = ops.per_token_quantize(x)
                x = ops.dequantize(q, s.unsqueeze(-1))
            else:
                x = fake_quant(x, self.scale("input_scale"))
        ws = self.scale("weight_scale")
        w = self.weight.float() * (ws.unsqueeze(1) if isinstance(ws, Tensor) else ws)
        y = F.linear(x, w, self.bias)
        if self.output is not None:
            return fake_quant(y, self._out_scale())
        return y.to(self.out_dtype)
