"""Plain-torch reference of the integer ops of W8A8 Mamba blocks (the contract the Triton kernels meet).

Conventions:
- Symmetric int8: ``q = clamp(round_half_even(x / s), -128, 127)``, ``x_hat = s * q``.
- A scale is a Python float (per-tensor) or an fp32 tensor that broadcasts against the channel dim
  (per-channel, e.g. the per-segment scales of Mamba2's in_proj outputs) or, for linear inputs, a
  ``[M]`` per-token vector.
- Integer parts are exact: int8 x int8 products are accumulated in int32 (``torch._int_mm`` on CPU,
  float64 on other devices, exact for any K below 2^37 / 127^2).
- SSM math is fp32 on dequantized inputs; SSM outputs are returned in ``out_dtype`` (fp16 by default);
  states are stored as int8 with a per-tensor scale.
Layouts are those of ``quamba.ops.reference`` (token-major).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference as R

Tensor = torch.Tensor
Scale = float | Tensor


def quantize(x: Tensor, scale: Scale) -> Tensor:
    """Symmetric int8 with round-half-to-even and saturation."""
    return torch.clamp(torch.round(x.float() / scale), -128, 127).to(torch.int8)


def dequantize(q: Tensor, scale: Scale, dtype: torch.dtype = torch.float32) -> Tensor:
    return (q.float() * scale).to(dtype)


def int_matmul(a: Tensor, b_t: Tensor) -> Tensor:
    """Exact int32 ``a [M, K] @ b_t [N, K]^T`` for int8 operands."""
    if a.device.type == "cpu":
        return torch._int_mm(a.contiguous(), b_t.t().contiguous())
    return (a.double() @ b_t.double().t()).to(torch.int32)


def _rows(scale: Scale, m: int) -> Scale:
    if isinstance(scale, Tensor) and scale.dim() > 0 and scale.numel() == m and m > 1:
        return scale.reshape(m, 1).float()
    return scale if not isinstance(scale, Tensor) else scale.float()


def int8_linear(x_q: Tensor, w_q: Tensor, x_scale: Scale, w_scale: Scale, bias: Tensor | None = None,
                out_scale: Scale | None = None, out_dtype: torch.dtype = torch.float16) -> Tensor:
    """``y = (x_scale * w_scale) * (x_q @ w_q^T) + bias``; int8 ``x_q [..., K]``, ``w_q [N, K]``.

    ``x_scale``: float or per-token ``[...]``; ``w_scale``: float or per-output-channel ``[N]``.
    With ``out_scale`` the result is requantized to int8 (float or ``[N]``), else cast to ``out_dtype``.
    """
    lead, k = x_q.shape[:-1], x_q.shape[-1]
    a = x_q.reshape(-1, k)
    acc = int_matmul(a, w_q).float()
    xs = _rows(x_scale.reshape(-1) if isinstance(x_scale, Tensor) else x_scale, a.shape[0])
    y = acc * xs * (w_scale.float() if isinstance(w_scale, Tensor) else w_scale)
    if bias is not None:
        y = y + bias.float()
    y = y.reshape(*lead, w_q.shape[0])
    return quantize(y, out_scale) if out_scale is not None else y.to(out_dtype)


def per_token_quantize(x: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic per-token int8: scale = absmax over the last dim / 127 (floored at 1e-8)."""
    s = x.float().abs().amax(-1).clamp(min=1e-8) / 127.0
    return quantize(x, s.unsqueeze(-1)), s


def qadd_rms_norm(x: Tensor, residual: Tensor | None, weight: Tensor | None, eps: float, out_scale: Scale,
                  residual_in_fp32: bool = True) -> tuple[Tensor, Tensor]:
    """Residual add + RMSNorm with int8 output: returns ``(int8 normed, new residual)``."""
    res = x if residual is None else residual + x.to(residual.dtype)
    if residual_in_fp32:
        res = res.float()
    rf = res.float()
    y = rf * torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return quantize(y, out_scale), res


def qcausal_conv1d(x_q: Tensor, x_scale: Scale, w_q: Tensor, w_scale: Scale, b_q: Tensor | None, b_scale: Scale,
                   out_scale: Scale, initial_state: Tensor | None = None, update_state: bool = False) -> Tensor:
    """Int8 depthwise causal conv + SiLU with int8 output.

    ``y = w_scale * x_scale * sum_k w_q[k] x_q[t-K+1+k] + b_scale * b_q``; scales are floats or
    per-channel ``[D]``. ``initial_state [B, D, K]`` holds the int8 inputs before ``x_q``;
    ``update_state`` replaces it in place by the int8 state after ``x_q``.
    """
    b, L, d = x_q.shape
    k = w_q.shape[-1]
    xt = x_q.float().transpose(1, 2)
    pre = xt.new_zeros(b, d, k - 1) if initial_state is None else initial_state[..., 1:].float()
    acc = F.conv1d(torch.cat([pre, xt], -1), w_q.float().unsqueeze(1), groups=d).transpose(1, 2)
    y = acc * _chan(w_scale) * _chan(x_scale)
    if b_q is not None:
        y = y + b_q.float() * _chan(b_scale)
    if update_state:
        R.replace_state(x_q, initial_state)
    return quantize(F.silu(y), out_scale)


def qcausal_conv1d_update(x_q: Tensor, conv_state: Tensor, x_scale: Scale, w_q: Tensor, w_scale: Scale,
                          b_q: Tensor | None, b_scale: Scale, out_scale: Scale, zero: Tensor | None = None) -> Tensor:
    """Decode step of ``qcausal_conv1d``: ``x_q [B, D]`` is shifted into the int8 ``conv_state`` in place.
    ``zero`` (a decode scratch tensor, see ``fused_reference.qssd_gate_step``) is zeroed."""
    if zero is not None:
        zero.zero_()
    conv_state.copy_(torch.cat([conv_state[..., 1:], x_q.unsqueeze(-1)], dim=-1))
    acc = (conv_state.float() * w_q.float()).sum(-1)
    y = acc * _chan(w_scale) * _chan(x_scale)
    if b_q is not None:
        y = y + b_q.float() * _chan(b_scale)
    return quantize(F.silu(y), out_scale)


def _chan(s: Scale) -> Scale:
    return s.float() if isinstance(s, Tensor) else s


def qselective_scan(u_q: Tensor, u_scale: float, dt_q: Tensor, dt_scale: float, A: Tensor, B_q: Tensor,
                    B_scale: float, C_q: Tensor, C_scale: float, D: Tensor | None, z_q: Tensor | None,
                    z_scale: float, dt_bias: Tensor | None, state_scale: float,
                    initial_state: Tensor | None = None,
                    out_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """Mamba1 scan on int8 ``u, dt (pre-bias), B, C, z``; fp32 math; returns ``(y, int8 last state)``.

    ``A [D, N]``, ``D``, ``dt_bias`` are fp32 (the dequantized values of their int8 storage).
    ``initial_state`` is the int8 state ``[B, D, N]`` with ``state_scale``.
    """
    init = dequantize(initial_state, state_scale) if initial_state is not None else None
    y, last = R.selective_scan(dequantize(u_q, u_scale), dequantize(dt_q, dt_scale), A, dequantize(B_q, B_scale),
                               dequantize(C_q, C_scale), D, dequantize(z_q, z_scale) if z_q is not None else None,
                               delta_bias=dt_bias, delta_softplus=True, initial_state=init)
    return y.to(out_dtype), quantize(last, state_scale)


def qselective_state_update(state: Tensor, state_scale: float, x_q: Tensor, x_scale: float, dt_q: Tensor,
                            dt_scale: float, A: Tensor, B_q: Tensor, B_scale: float, C_q: Tensor, C_scale: float,
                            D: Tensor | None, z_q: Tensor | None, z_scale: float, dt_bias: Tensor | None,
                            out_dtype: torch.dtype = torch.float16) -> Tensor:
    """Mamba1 decode step on an int8 state (updated in place). The output uses the unrounded state."""
    st = dequantize(state, state_scale)
    y = R.selective_state_update(st, dequantize(x_q, x_scale), dequantize(dt_q, dt_scale), A,
                                 dequantize(B_q, B_scale), dequantize(C_q, C_scale), D,
                                 dequantize(z_q, z_scale) if z_q is not None else None, dt_bias=dt_bias)
    state.copy_(quantize(st, state_scale))
    return y.to(out_dtype)


def qssd_chunked(x_q: Tensor, x_scale: float, dt_q: Tensor, dt_scale: float, A: Tensor, B_q: Tensor,
                 B_scale: float, C_q: Tensor, C_scale: float, chunk_size: int, D: Tensor | None,
                 dt_bias: Tensor | None, state_scale: float, dt_limit: tuple[float, float] = (0.0, float("inf")),
                 initial_state: Tensor | None = None,
                 out_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """Mamba2 SSD on int8 ``x [B,L,H,P]``, ``dt [B,L,H]`` (pre-bias), ``B, C [B,L,G,N]``; returns
    ``(y [B,L,H,P], int8 final state [B,H,P,N])``."""
    init = dequantize(initial_state, state_scale) if initial_state is not None else None
    y, last = R.ssd_chunked(dequantize(x_q, x_scale), dequantize(dt_q, dt_scale), A, dequantize(B_q, B_scale),
                            dequantize(C_q, C_scale), chunk_size, D, dt_bias=dt_bias, dt_softplus=True,
                            dt_limit=dt_limit, initial_state=init)
    return y.to(out_dtype), quantize(last, state_scale)


def qssd_state_update(state: Tensor, state_scale: float, x_q: Tensor, x_scale: float, dt_q: Tensor,
                      dt_scale: float, A: Tensor, B_q: Tensor, B_scale: float, C_q: Tensor, C_scale: float,
                      D: Tensor | None, dt_bias: Tensor | None, dt_limit: tuple[float, float] = (0.0, float("inf")),
                      out_dtype: torch.dtype = torch.float16) -> Tensor:
    """Mamba2 decode step on an int8 state ``[B,H,P,N]`` (updated in place)."""
    st = dequantize(state, state_scale)
    y = R.ssd_state_update(st, dequantize(x_q, x_scale), dequantize(dt_q, dt_scale), A, dequantize(B_q, B_scale),
                           dequantize(C_q, C_scale), D, dt_bias=dt_bias, dt_softplus=True, dt_limit=dt_limit)
    state.copy_(quantize(st, state_scale))
    return y.to(out_dtype)


def qgated_rms_norm(y: Tensor, z_q: Tensor, z_scale: Scale, weight: Tensor | None, eps: float, group_size: int,
                    out_dtype: torch.dtype = torch.float16) -> Tensor:
    """Mamba2 gated RMSNorm with the gate ``z`` given as int8."""
    return R.gated_rms_norm(y.float(), dequantize(z_q, z_scale), weight, eps, group_size).to(out_dtype)


def hadamard_quant(x: Tensor, out_scale: Scale) -> Tensor:
    """Online normalized Hadamard transform over the last dim followed by int8 quantization."""
    from ..quantization.hadamard import hadamard_transform

    return quantize(hadamard_transform(x.float()), out_scale)


def qembedding(ids: Tensor, w_q: Tensor, row_scales: Tensor, out_dtype: torch.dtype = torch.float16) -> Tensor:
    """Int8 embedding lookup with one scale per row (token)."""
    return (w_q[ids].float() * row_scales[ids].float().unsqueeze(-1)).to(out_dtype)
