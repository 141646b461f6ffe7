"""Fused Mamba2 decode step in three launches (fp): in_proj + conv, SSD update + gate, out_proj + norm.

The unfused step runs six short kernels per layer (norm, in_proj, conv update, SSD update, gated
RMSNorm, out_proj); at batch-1 decode each costs a launch, a ramp and a tail of ~2 us. Fused:

- ``in_proj_conv_step``: the decode GEMV of ``in_proj``. The program that computes an xBC column
  also owns that channel's conv state: it shifts the new value in, convolves, applies SiLU and
  stores the conv output in place of the raw column (the old taps load with the first weight tile,
  before the PDL wait). Program 0 zeroes the step's ``ss`` scratch.
- ``ssd_gate_step``: the SSD state update (``state_update._ssd_update_kernel`` in its ``GATE`` mode)
  writes ``g * norm_w`` with ``g = y * silu(z)`` and adds each program's ``sum(g^2)`` into the sum
  of its norm group (fp32 atomics: the order of the additions varies run to run at fp32 rounding).
- ``rms_linear``: the decode GEMV of ``out_proj`` that scales each activation column by
  ``rsqrt(ss / group + eps)`` as it loads it, finishing the gated RMSNorm on the fly.

More than ``gemv.MAX_M`` rows take the unfused kernels. References: ``quamba.ops.fused_reference``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import InvalidArgumentError
from ._small_common import channel_vector, old_taps, per_tensor_scale_arg, pow2, push_tap, silu, store_window
from ..ops import fused_reference as FR
from .gemv import MAX_M, _row_dots, check_rms, decode_tiles, gemv, gemv_rows, rms_plan, scratch_plan, zero_scratch
from .launch import cdiv, launch
from .pdl import pdl_args
from .state_update import _FP_SCALES, _NO_LIMIT, _ssd

Tensor = torch.Tensor


@triton.jit
def _in_proj_conv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, s_ptr, cw_ptr, cb_ptr, zero_ptr, ss_ptr,
                         M, N, K, C0, C, NZERO, stride_xm, stride_wn, stride_ym, s_sb, s_sc, s_sk, s_cc, s_ck,
                         s_ssm, eps,
                         HAS_BIAS: tl.constexpr, HAS_CB: tl.constexpr, KC: tl.constexpr, KCP: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         RMS: tl.constexpr, GROUP: tl.constexpr, BLOCK_Z: tl.constexpr, USE_PDL: tl.constexpr):
    rn, rm, n_ok, m_ok = gemv_rows(M, N, BLOCK_M, BLOCK_N)
    c = rn - C0
    c_ok = (c >= 0) & (c < C) & n_ok
    rk = tl.arange(0, KCP)
    base = s_ptr + rm[:, None, None] * s_sb + c[None, :, None] * s_sc
    live = m_ok[:, None, None] & c_ok[None, :, None]
    taps = old_taps(base, rk[None, None, :], live, KC, s_sk)
    cw = tl.load(cw_ptr + c[:, None] * s_cc + rk[None, :] * s_ck, mask=c_ok[:, None] & (rk < KC)[None, :],
                 other=0.0).to(tl.float32)
    if HAS_CB:
        cb = tl.load(cb_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    acc = _row_dots(x_ptr, w_ptr, rm, rn, m_ok, n_ok, K, stride_xm, stride_wn, ss_ptr, s_ssm, eps, tl.float32,
                    BLOCK_K, RMS, GROUP, USE_PDL)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = acc.to(y_ptr.dtype.element_ty)
    first = tl.program_id(0) * BLOCK_N
    if (first < C0 + C) & (first + BLOCK_N > C0):
        window = push_tap(taps, y[:, :, None], rk[None, None, :], KC)
        conv = tl.sum(window.to(tl.float32) * cw[None, :, :], axis=2)
        store_window(base, window, rk[None, None, :], live, KC, s_sk)
        if HAS_CB:
            conv += cb[None, :]
        y = tl.where(c_ok[None, :], silu(conv).to(y_ptr.dtype.element_ty), y)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y, mask=m_ok[:, None] & n_ok[None, :])
    if BLOCK_Z > 0:
        zero_scratch(zero_ptr, NZERO, BLOCK_Z)


def in_proj_conv_step(h: Tensor, weight: Tensor, bias: Tensor | None, conv_state: Tensor, conv_w: Tensor,
                      conv_b: Tensor | None, start: int, zero: Tensor | None = None,
                      rms: tuple[Tensor, int, float] | None = None) -> Tensor:
    """``in_proj`` of one token with the conv update + SiLU fused on columns ``[start, start + C)``;
    see ``fused_reference.in_proj_conv_step``."""
    if h.dim() != 2:
        raise InvalidArgumentError(f"h must be [B, K], got {tuple(h.shape)}")
    m, k = h.shape
    n = weight.shape[0]
    if conv_state.dim() != 3 or conv_state.shape[0] != m:
        raise InvalidArgumentError(f"conv_state {tuple(conv_state.shape)} does not match h {tuple(h.shape)}")
    c, kc = conv_state.shape[1], conv_state.shape[2]
    if not (0 <= start and start + c <= n):
        raise InvalidArgumentError(f"conv columns [{start}, {start + c}) outside in_proj's {n} outputs")
    if tuple(conv_w.shape) != (c, kc):
        raise InvalidArgumentError(f"conv weight {tuple(conv_w.shape)} != {(c, kc)}")
    cb = channel_vector(conv_b, c, "conv bias")
    nz, bz = scratch_plan(zero)
    if rms is not None:
        check_rms(rms[0], rms[1], m, k)
    if m == 0 or m > MAX_M or h.dtype != weight.dtype:
        return FR.in_proj_conv_step(h, weight, bias, conv_state, conv_w, cb, start, zero, rms)
    if h.stride(-1) != 1:
        h = h.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    y = torch.empty(m, n, device=h.device, dtype=h.dtype)
    bm, bn, bk, warps = decode_tiles(m, n, k)
    (ss, group, eps, mode), bk = rms_plan(rms, bk, weight)
    launch(_in_proj_conv_kernel, (cdiv(n, bn),), h, weight, bias if bias is not None else weight, y, conv_state,
           conv_w, cb, zero, ss, m, n, k, start, c, nz, h.stride(0), weight.stride(0), y.stride(0),
           *conv_state.stride(), *conv_w.stride(), ss.stride(0) if rms is not None else 0, eps,
           HAS_BIAS=bias is not None, HAS_CB=cb is not None, KC=kc, KCP=pow2(kc, 2), BLOCK_M=bm, BLOCK_N=bn,
           BLOCK_K=bk, RMS=mode, GROUP=group, BLOCK_Z=bz, num_warps=warps, **pdl_args(h))
    return y


def ssd_gate_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                  dt_bias: Tensor | None, dt_limit: tuple[float, float], z: Tensor, norm_w: Tensor, group: int,
                  ss: Tensor) -> Tensor:
    """SSD state update + the first half of the gated RMSNorm; see ``fused_reference.ssd_gate_step``."""
    bsz, d = _check_gate(x, z, group, ss)
    if z.stride(-1) != 1:
        z = z.contiguous()
    nw = channel_vector(norm_w, d, "norm weight")
    lim = dt_limit if dt_limit is not None else _NO_LIMIT
    return _ssd(state, x, dt, A, B, C, D, dt_bias, True, lim, x.dtype, _FP_SCALES[:5],
                gate=(z, nw, ss, group, _FP_SCALES[0])).reshape(bsz, d)


def _check_gate(x: Tensor, z: Tensor, group: int, ss: Tensor) -> tuple[int, int]:
    if x.dim() != 3:
        raise InvalidArgumentError(f"x must be [B, H, P], got {tuple(x.shape)}")
    bsz, heads, p = x.shape
    d = heads * p
    if tuple(z.shape) != (bsz, d):
        raise InvalidArgumentError(f"z {tuple(z.shape)} != {(bsz, d)}")
    if not (group > 0 and d % group == 0 and group % p == 0):
        raise InvalidArgumentError(f"norm group {group} must divide {d} channels and hold whole heads of {p}")
    if tuple(ss.shape) != (bsz, d // group) or ss.dtype != torch.float32:
        raise InvalidArgumentError(f"ss must be fp32 {(bsz, d // group)}, got {ss.dtype} {tuple(ss.shape)}")
    return bsz, d


def qssd_gate_step(state: Tensor, state_scale: float, x_q: Tensor, x_scale: float, dt_q: Tensor, dt_scale: float,
                   A: Tensor, B_q: Tensor, B_scale: float, C_q: Tensor, C_scale: float, D: Tensor | None,
                   dt_bias: Tensor | None, dt_limit: tuple[float, float], z_q: Tensor, z_scale: float,
                   norm_w: Tensor, group: int, ss: Tensor, out_dtype: torch.dtype = torch.float16) -> Tensor:
    """Int8 SSD state update + the first half of the gated RMSNorm; see ``fused_reference.qssd_gate_step``."""
    if state.dtype != torch.int8 or x_q.dtype != torch.int8 or z_q.dtype != torch.int8:
        raise InvalidArgumentError("qssd_gate_step takes an int8 state, x and z")
    bsz, d = _check_gate(x_q, z_q, group, ss)
    if z_q.stride(-1) != 1:
        z_q = z_q.contiguous()
    nw = channel_vector(norm_w, d, "norm weight")
    scales = (per_tensor_scale_arg(state_scale, "state_scale"), per_tensor_scale_arg(x_scale, "x_scale"),
              per_tensor_scale_arg(dt_scale, "dt_scale"), per_tensor_scale_arg(B_scale, "B_scale"),
              per_tensor_scale_arg(C_scale, "C_scale"))
    lim = dt_limit if dt_limit is not None else _NO_LIMIT
    return _ssd(state, x_q, dt_q, A, B_q, C_q, D, dt_bias, True, lim, out_dtype, scales,
                gate=(z_q, nw, ss, group, per_tensor_scale_arg(z_scale, "z_scale"))).reshape(bsz, d)


def rms_linear(gw: Tensor, ss: Tensor | None, group: int, eps: float, weight: Tensor, bias: Tensor | None = None,
               zero: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """A decode GEMV with an RMSNorm finished on load; see ``fused_reference.rms_linear``."""
    if gw.dim() != 2:
        raise InvalidArgumentError(f"gw must be [B, K], got {tuple(gw.shape)}")
    m, k = gw.shape
    if ss is not None:
        check_rms(ss, group, m, k)
    scratch_plan(zero)
    if m == 0 or m > MAX_M or gw.dtype != weight.dtype:
        return FR.rms_linear(gw, ss, group, eps, weight, bias, zero, out_dtype)
    return gemv(gw, weight, bias, rms=(ss, group, eps) if ss is not None else None, zero=zero, out_dtype=out_dtype)
