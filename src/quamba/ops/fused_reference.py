"""Plain-torch references of the fused decode ops: compositions of the existing reference ops.

A Mamba1 decode step splits into two fused halves (see ``quamba.kernels.mamba1_step``):

- ``conv_xproj_step``: conv-state update + depthwise conv + SiLU (``u``), then ``x_proj`` (``dbc``);
- ``dtproj_state_step``: ``dt_proj`` on the dt part of ``dbc``, then the selective state update.

The int8 twins follow the W8A8 data flow of ``quamba.qmodules.mamba1`` exactly: the first half
returns the exact int32 ``x_proj`` accumulator, the second requantizes it as ``int8_linear`` would
(one shared scale for dt, B and C), runs the int8 ``dt_proj`` to an int8 dt (pre-bias) and the int8
state update. Chaining the two equals the unfused op sequence of the mixers bit for bit.

A Mamba2 decode step runs in three launches (see ``quamba.kernels.mamba2_step``):

- ``in_proj_conv_step``: ``in_proj`` with the conv-state update + conv + SiLU applied to its xBC
  columns (each output column's conv belongs to the program that computes the column);
- ``ssd_gate_step``: the SSD state update, then the first half of the gated RMSNorm: ``g * norm_w``
  with ``g = y * silu(z)``, and each norm group's ``sum(g^2)`` added into ``ss``;
- ``rms_linear``: ``out_proj`` of ``g * norm_w * rsqrt(ss / group + eps)``, the norm finished on the fly.
  ``ss`` is zeroed by ``in_proj_conv_step`` (its ``zero`` argument) before the next step accumulates.

Across blocks (either architecture) the pre-norm can fold into the two GEMVs around it:
``linear_add_norm`` is ``out_proj`` that adds its output into the residual and returns
``residual * norm_w`` with the sum of squares of the residual in ``ss``; the next block's first GEMV
(``rms_linear`` / ``in_proj_conv_step`` with ``rms = (ss, K, eps)``) finishes the norm on load.

The W8A8 Mamba2 step has the same shape around its int8 ops: ``qssd_gate_step`` (int8 SSD update +
gate, sums into ``ss``) and ``rms_hadamard_quant`` (norm finished on load, Hadamard, int8 for ``out_proj``).

At decode the Mamba1 accumulator can be recycled: ``acc`` (zeros) is added into instead of a fresh
tensor, and the second half, given the int32 counter ``done`` (zeros), leaves it zeroed again for
the next step, so a CUDA graph of the step holds no memset.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import qreference as Q
from . import reference as R

Tensor = torch.Tensor
Scale = float | Tensor


def _into(acc: Tensor | None, v: Tensor) -> Tensor:
    return v if acc is None else acc.add_(v)


def _recycle(acc: Tensor, done: Tensor | None) -> None:
    if done is not None:
        acc.zero_()
        done.zero_()


def conv_xproj_step(x: Tensor, conv_state: Tensor, conv_w: Tensor, conv_b: Tensor | None,
                    xproj_w: Tensor, acc: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``u = silu(causal_conv1d_update(x))`` (``conv_state [B, D, K]`` updated in place) and
    ``dbc = u @ xproj_w^T`` in fp32 (added into the zeroed ``acc`` when given).
    Returns ``(u [B, D] in x.dtype, dbc [B, R+2N] fp32)``."""
    u = R.causal_conv1d_update(x, conv_state, conv_w, conv_b, silu=True)
    return u, _into(acc, R.linear(u.float(), xproj_w.float()))


def dtproj_state_step(state: Tensor, u: Tensor, dbc: Tensor, dt_w: Tensor, dt_bias: Tensor | None, A: Tensor,
                      D: Tensor | None, z: Tensor | None, done: Tensor | None = None) -> Tensor:
    """``dt = dbc[:, :R] @ dt_w^T`` (pre-bias), ``B, C`` the next ``N`` columns each, then
    ``selective_state_update`` (``state [B, D, N]`` in place, softplus(dt + dt_bias)). Returns ``y`` in u.dtype.
    With the counter ``done`` (int32 ``[B]``, zeros) ``dbc`` is zeroed afterwards for reuse."""
    r, n = dt_w.shape[1], A.shape[1]
    d = dbc.float()
    dt = R.linear(d[:, :r], dt_w.float())
    y = R.selective_state_update(state, u, dt, A, d[:, r:r + n], d[:, r + n:r + 2 * n], D, z,
                                 dt_bias=dt_bias, dt_softplus=True)
    _recycle(dbc, done)
    return y


def qconv_xproj_step(x_q: Tensor, conv_state: Tensor, x_scale: Scale, conv_w_q: Tensor, conv_w_scale: Scale,
                     conv_b_q: Tensor | None, conv_b_scale: Scale, u_scale: Scale,
                     xproj_w_q: Tensor, acc: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``qcausal_conv1d_update`` (int8 ``conv_state`` in place, int8 ``u`` with ``u_scale``), then the
    exact int32 ``x_proj`` accumulator ``u_q @ xproj_w_q^T`` (added into the zeroed ``acc`` when given).
    Returns ``(u_q [B, D], acc [B, R+2N] int32)``."""
    u_q = Q.qcausal_conv1d_update(x_q, conv_state, x_scale, conv_w_q, conv_w_scale, conv_b_q, conv_b_scale, u_scale)
    return u_q, _into(acc, Q.int_matmul(u_q, xproj_w_q))


def requantize(acc: Tensor, x_scale: Scale, w_scale: Scale, out_scale: Scale) -> Tensor:
    """The int8 epilogue of ``qreference.int8_linear`` (no bias) applied to its int32 accumulator."""
    xs = x_scale.float() if isinstance(x_scale, Tensor) else x_scale
    ws = w_scale.float() if isinstance(w_scale, Tensor) else w_scale
    return Q.quantize(acc.float() * xs * ws, out_scale)


def qdtproj_state_step(state: Tensor, state_scale: Scale, u_q: Tensor, u_scale: Scale, acc: Tensor,
                       xproj_w_scale: Scale, dbc_scale: Scale, dt_w_q: Tensor, dt_w_scale: Scale, dt_scale: Scale,
                       A: Tensor, D: Tensor | None, z_q: Tensor | None, z_scale: Scale, dt_bias: Tensor | None,
                       out_dtype: torch.dtype = torch.float16, done: Tensor | None = None) -> Tensor:
    """Int8 second half: ``dbc_q = requantize(acc, u_scale, xproj_w_scale, dbc_scale)``;
    ``dt_q = int8_linear(dbc_q[:, :R], dt_w_q, dbc_scale, dt_w_scale, out_scale=dt_scale)``;
    then ``qselective_state_update`` (int8 ``state`` in place) with ``B, C`` at ``dbc_scale``.
    With the counter ``done`` (int32 ``[B]``, zeros) ``acc`` is zeroed afterwards for reuse."""
    r, n = dt_w_q.shape[1], A.shape[1]
    dbc_q = requantize(acc, u_scale, xproj_w_scale, dbc_scale)
    dt_q = Q.int8_linear(dbc_q[:, :r], dt_w_q, dbc_scale, dt_w_scale, None, out_scale=dt_scale)
    y = Q.qselective_state_update(state, state_scale, u_q, u_scale, dt_q, dt_scale, A, dbc_q[:, r:r + n],
                                  dbc_scale, dbc_q[:, r + n:r + 2 * n], dbc_scale, D, z_q, z_scale, dt_bias,
                                  out_dtype=out_dtype)
    _recycle(acc, done)
    return y


def in_proj_conv_step(h: Tensor, weight: Tensor, bias: Tensor | None, conv_state: Tensor, conv_w: Tensor,
                      conv_b: Tensor | None, start: int, zero: Tensor | None = None,
                      rms: tuple[Tensor, int, float] | None = None) -> Tensor:
    """``y = h [B, K] @ weight^T (+ bias)``, then ``causal_conv1d_update`` + SiLU on the columns
    ``[start, start + C)`` (``conv_state [B, C, K]`` updated in place). ``zero`` (a scratch tensor) is zeroed.
    With ``rms = (ss, group, eps)`` the input is first normalized as in ``rms_linear`` (fp32 math)."""
    y = rms_linear(h, rms[0], rms[1], rms[2], weight, bias) if rms is not None else R.linear(h, weight, bias)
    end = start + conv_state.shape[1]
    y[:, start:end] = R.causal_conv1d_update(y[:, start:end], conv_state, conv_w, conv_b, silu=True)
    if zero is not None:
        zero.zero_()
    return y


def conv_input_scale(out_scale: Scale, start: int, end: int) -> Scale:
    """The conv's input scale: in_proj's output scale on the conv columns ``[start, end)`` (per-tensor as is)."""
    return out_scale[start:end] if isinstance(out_scale, Tensor) and out_scale.numel() > 1 else out_scale


def qin_proj_conv_step(h_q: Tensor, h_scale: Scale, weight: Tensor, w_scale: Scale, bias: Tensor | None,
                       out_scale: Scale, conv_state: Tensor, conv_w: Tensor, conv_w_scale: Scale,
                       conv_b: Tensor | None, conv_b_scale: Scale, conv_out_scale: Scale, start: int,
                       zero: Tensor | None = None, xproj_w: Tensor | None = None,
                       acc: Tensor | None = None) -> Tensor:
    """Int8 twin of ``in_proj_conv_step``: ``y = int8_linear(h_q, weight, ..., out_scale)`` (int8), then
    ``qcausal_conv1d_update`` on the columns ``[start, start + C)`` (int8 ``conv_state [B, C, K]`` in place;
    its input scale is ``out_scale`` on those columns), whose int8 output replaces them. ``zero`` is zeroed.
    With ``xproj_w [R, C]`` the exact int32 ``u @ xproj_w^T`` of those columns is added into ``acc [B, R]``."""
    y = Q.int8_linear(h_q, weight, h_scale, w_scale, bias, out_scale=out_scale)
    end = start + conv_state.shape[1]
    in_scale = conv_input_scale(out_scale, start, end)
    y[:, start:end] = Q.qcausal_conv1d_update(y[:, start:end], conv_state, in_scale, conv_w, conv_w_scale, conv_b,
                                              conv_b_scale, conv_out_scale, zero=zero)
    if xproj_w is not None:
        acc.add_(Q.int_matmul(y[:, start:end], xproj_w))
    return y


def ssd_gate_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                  dt_bias: Tensor | None, dt_limit: tuple[float, float], z: Tensor, norm_w: Tensor, group: int,
                  ss: Tensor) -> Tensor:
    """``ssd_state_update`` (softplus dt, ``state`` in place), then ``g = y * silu(z)``: returns
    ``g * norm_w`` ``[B, H*P]`` in x.dtype and adds each group's ``sum(g^2)`` into ``ss [B, H*P / group]``."""
    y = R.ssd_state_update(state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True, dt_limit=dt_limit)
    return _gate_start(y, z.float(), norm_w, group, ss, y.dtype)


def _gate_start(y: Tensor, z: Tensor, norm_w: Tensor, group: int, ss: Tensor, dtype: torch.dtype) -> Tensor:
    """First half of the gated RMSNorm: ``g = y * silu(z)`` (fp32), each group's ``sum(g^2)`` added into
    ``ss``; returns ``g * norm_w`` in ``dtype``."""
    b = y.shape[0]
    g = y.reshape(b, -1).float() * F.silu(z)
    ss.add_(g.pow(2).reshape(b, -1, group).sum(-1))
    return (g * norm_w.float()).to(dtype)


def _group_rms(gw: Tensor, ss: Tensor, group: int, eps: float) -> Tensor:
    """Second half: ``gw`` (fp32) with each group of ``group`` columns scaled by ``rsqrt(ss / group + eps)``."""
    b, k = gw.shape
    return (gw.float().reshape(b, -1, group) * torch.rsqrt(ss.float() / group + eps)[..., None]).reshape(b, k)


def rms_linear(gw: Tensor, ss: Tensor | None, group: int, eps: float, weight: Tensor, bias: Tensor | None = None,
               zero: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """``out_proj`` of ``gw [B, K]`` with each group of ``group`` columns scaled by ``rsqrt(ss / group + eps)``
    (the gated RMSNorm finished from ``ssd_gate_step``'s sums, or a block's RMSNorm from
    ``linear_add_norm``'s with ``group = K``); fp32 math, result in ``out_dtype`` (default gw.dtype).
    ``ss`` None: no scaling. ``zero`` (a scratch tensor) is zeroed."""
    x = _group_rms(gw, ss, group, eps) if ss is not None else gw.float()
    y = F.linear(x, weight.float(), bias.float() if bias is not None else None).to(out_dtype or gw.dtype)
    if zero is not None:
        zero.zero_()
    return y


def linear_add_norm(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor, norm_w: Tensor, ss: Tensor,
                    rms: tuple[Tensor, int, float] | None = None) -> Tensor:
    """A block's ``out_proj`` with the residual add and the first half of the next block's RMSNorm:
    ``h = rms_linear(x, *rms, weight, bias)`` (plain linear without ``rms``), ``residual += h`` in place
    (in its dtype), ``r = residual`` in x.dtype, ``ss [B, 1] += sum(r^2)``; returns ``r * norm_w`` in
    x.dtype. The next block's ``rms_linear(.., ss, K, eps, ..)`` finishes the norm on load."""
    h = rms_linear(x, *(rms or (None, 1, 0.0)), weight, bias)
    residual.copy_(residual + h.to(residual.dtype))
    r = residual.to(x.dtype).float()
    ss.add_(r.pow(2).sum(-1, keepdim=True))
    return (r * norm_w.float()).to(x.dtype)


def qssd_gate_step(state: Tensor, state_scale: Scale, x_q: Tensor, x_scale: Scale, dt_q: Tensor, dt_scale: Scale,
                   A: Tensor, B_q: Tensor, B_scale: Scale, C_q: Tensor, C_scale: Scale, D: Tensor | None,
                   dt_bias: Tensor | None, dt_limit: tuple[float, float], z_q: Tensor, z_scale: Scale,
                   norm_w: Tensor, group: int, ss: Tensor, out_dtype: torch.dtype = torch.float16) -> Tensor:
    """W8A8 twin of ``ssd_gate_step``: ``qssd_state_update`` (int8 state in place, ``y`` in out_dtype), then
    ``g = y * silu(z_q * z_scale)``; returns ``g * norm_w`` ``[B, H*P]`` in out_dtype and adds each group's
    ``sum(g^2)`` into ``ss``. The decode step zeroes ``ss`` in ``qcausal_conv1d_update`` (its ``zero``)."""
    y = Q.qssd_state_update(state, state_scale, x_q, x_scale, dt_q, dt_scale, A, B_q, B_scale, C_q, C_scale, D,
                            dt_bias, dt_limit=dt_limit, out_dtype=out_dtype)
    return _gate_start(y, Q.dequantize(z_q, z_scale), norm_w, group, ss, out_dtype)


def rms_hadamard_quant(gw: Tensor, ss: Tensor, group: int, eps: float, out_scale: Scale) -> Tensor:
    """The gated RMSNorm finished from ``qssd_gate_step``'s sums (``gw`` scaled by ``rsqrt(ss / group + eps)``
    per group, fp32), then ``hadamard_quant``: the int8 input of a W8A8 ``out_proj`` with a Hadamard input."""
    return Q.hadamard_quant(_group_rms(gw, ss, group, eps), out_scale)
