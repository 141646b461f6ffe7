"""W8A8 decode: the int8 ``in_proj`` GEMV with the int8 conv update fused on its conv columns.

Both W8A8 decode steps start with ``in_proj`` (int8 in, int8 out) and then a depthwise conv whose
input is a contiguous range of in_proj's outputs (Mamba1: x; Mamba2: xBC). The conv of a channel
needs only that channel's in_proj output and its own state, so the program that computes an output
column also owns its conv: it shifts the new int8 code into the state, convolves in int32,
dequantizes, applies SiLU and requantizes (``qconv1d._dequant_silu_quant``), and stores the conv
output in place of the raw column. The conv input scale is in_proj's output scale of that column,
as in the unfused chain. One launch replaces two.

With ``xproj_w`` (Mamba1) each program also adds its channels' share of ``x_proj`` (``u @ xproj_w^T``
over its columns) into the zeroed int32 accumulator ``acc`` with atomic adds: exact, in any order.
``dtproj_state_step`` then reads ``acc`` as it reads the one ``conv_xproj_step`` leaves.

The GEMV is ``gemv.word_dots`` (dp4a on int32 words, the first weight tile loaded before the PDL
wait); the conv taps, conv weights and x_proj slab load before the wait too. Program 0 zeroes the
``zero`` scratch (Mamba2: the gated norm's sums). Reference: ``fused_reference.qin_proj_conv_step``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import InvalidArgumentError
from ..ops import fused_reference as FR
from ._small_common import old_taps, pow2, push_tap, scale_arg, store_window
from .gemv import MAX_M, _words_ok, scratch_plan, word_dots, zero_scratch
from .int8_gemm import cached_epilogue_args, epilogue_values, int8_linear
from .launch import cdiv, interpreting, launch, next_pow2
from .pdl import pdl_args
from .mamba1_step import qconv_xproj_step
from .qconv1d import _dequant_silu_quant, qcausal_conv1d_update

Tensor = torch.Tensor
Scale = float | Tensor


@triton.jit
def _qin_proj_conv_kernel(x_ptr, w_ptr, out_ptr, xs_ptr, xs_val, ws_ptr, ws_val, b_ptr, os_ptr, os_val,
                          s_ptr, cw_ptr, cws_ptr, cws_val, cb_ptr, cbs_ptr, cbs_val, cos_ptr, cos_val,
                          xw_ptr, acc_ptr, zero_ptr,
                          M, N, K4, C0, C, NR, NZERO, stride_xm4, stride_wn4, stride_om,
                          s_sb, s_sc, s_sk, s_cc, s_ck, s_xr, s_xc, s_am,
                          XS_MODE: tl.constexpr, WS_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, OS_MODE: tl.constexpr,
                          CWS_M: tl.constexpr, CBS_M: tl.constexpr, COS_M: tl.constexpr, HAS_CB: tl.constexpr,
                          KC: tl.constexpr, KCP: tl.constexpr, XPROJ: tl.constexpr, BLOCK_R: tl.constexpr,
                          USE_DP4A: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K4: tl.constexpr, BLOCK_Z: tl.constexpr,
                          USE_PDL: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    m_ok = rm < M
    c = rn - C0
    c_ok = (c >= 0) & (c < C) & (rn < N)
    rk = tl.arange(0, KCP)
    base = s_ptr + rm[:, None, None] * s_sb + c[None, :, None] * s_sc
    live = m_ok[:, None, None] & c_ok[None, :, None]
    taps = old_taps(base, rk[None, None, :], live, KC, s_sk)
    cw = tl.load(cw_ptr + c[:, None] * s_cc + rk[None, :] * s_ck, mask=c_ok[:, None] & (rk < KC)[None, :],
                 other=0).to(tl.int32)
    if XPROJ:
        rr = tl.arange(0, BLOCK_R)
        xw = tl.load(xw_ptr + rr[:, None] * s_xr + c[None, :] * s_xc, mask=(rr < NR)[:, None] & c_ok[None, :],
                     other=0)
    acc = word_dots(x_ptr, w_ptr, rm, rn, M, N, K4, stride_xm4, stride_wn4, USE_DP4A, PREFETCH,
                    BLOCK_M, BLOCK_N, BLOCK_K4, USE_PDL)
    q = epilogue_values(acc, rm[:, None], rn[None, :], M, N, tl.int8, xs_ptr, xs_val, ws_ptr, ws_val, b_ptr,
                        os_ptr, os_val, XS_MODE, WS_MODE, HAS_BIAS, OS_MODE)
    first = tl.program_id(0) * BLOCK_N
    if (first < C0 + C) & (first + BLOCK_N > C0):
        window = push_tap(taps, q[:, :, None], rk[None, None, :], KC)
        conv = tl.sum(window.to(tl.int32) * cw[None, :, :], axis=2)
        store_window(base, window, rk[None, None, :], live, KC, s_sk)
        u = _dequant_silu_quant(conv, cb_ptr, c[None, :], c_ok[None, :], os_ptr + C0, os_val, cws_ptr, cws_val,
                                cbs_ptr, cbs_val, cos_ptr, cos_val, OS_MODE, CWS_M, CBS_M, COS_M, HAS_CB)
        q = tl.where(c_ok[None, :], u, q)
        if XPROJ:
            part = tl.sum(xw[None, :, :].to(tl.int32) * u.to(tl.int32)[:, None, :], axis=2)
            tl.atomic_add(acc_ptr + rm[:, None] * s_am + rr[None, :], part,
                          mask=m_ok[:, None] & (rr < NR)[None, :], sem="relaxed")
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], q, mask=m_ok[:, None] & (rn < N)[None, :])
    if BLOCK_Z > 0:
        zero_scratch(zero_ptr, NZERO, BLOCK_Z)


def qin_proj_plan(n: int, k: int, m: int, xproj: bool) -> tuple[bool, int, int, int]:
    """``(prefetch, BLOCK_N, BLOCK_K bytes, num_warps)`` (BLOCK_N divided by the padded M), picked by decode TPOT
    in the model's PDL graph on the H200 (benchmarks/qin_proj_tpot.py): mamba2-2.7b 8 rows x 512 B, 2 warps
    (1.528 ms against 1.570 for in_proj + conv update); with x_proj (mamba-2.8b) 32 rows, 8 warps (1.576 ms
    against 1.672 for in_proj + conv_xproj; 32 rows on 4 warps: 1.894). Timed alone (qin_proj_sweep.py) the
    ranking differs. Few rows per program cost the x_proj accumulator many atomic adds (4 rows: 38.9 us alone)."""
    bn, warps = (32, 8) if xproj else (8, 2)
    return False, max(1, bn // next_pow2(m)), 512, warps


def _check(h_q: Tensor, weight: Tensor, out_scale: Scale | None, conv_state: Tensor, conv_w: Tensor,
           conv_b: Tensor | None, start: int, xproj_w: Tensor | None, acc: Tensor | None) -> None:
    for name, t in (("h_q", h_q), ("weight", weight), ("conv_state", conv_state), ("conv_w", conv_w),
                    ("conv_b", conv_b), ("xproj_w", xproj_w)):
        if t is not None and t.dtype != torch.int8:
            raise InvalidArgumentError(f"{name} must be int8, got {t.dtype}")
    if h_q.dim() != 2 or weight.dim() != 2 or h_q.shape[1] != weight.shape[1]:
        raise InvalidArgumentError(f"h_q {tuple(h_q.shape)} and weight {tuple(weight.shape)} do not match")
    if out_scale is None:
        raise InvalidArgumentError("qin_proj_conv_step needs in_proj's output scale (its conv takes int8)")
    m, n = h_q.shape[0], weight.shape[0]
    if conv_state.dim() != 3 or conv_state.shape[0] != m:
        raise InvalidArgumentError(f"conv_state {tuple(conv_state.shape)} does not match h_q {tuple(h_q.shape)}")
    c, kc = conv_state.shape[1], conv_state.shape[2]
    if not (0 <= start and start + c <= n):
        raise InvalidArgumentError(f"conv columns [{start}, {start + c}) outside in_proj's {n} outputs")
    if not (1 <= kc <= 8):
        raise InvalidArgumentError(f"conv width {kc} not supported (1..8)")
    if tuple(conv_w.shape) != (c, kc):
        raise InvalidArgumentError(f"conv weight {tuple(conv_w.shape)} != {(c, kc)}")
    if conv_b is not None and conv_b.numel() != c:
        raise InvalidArgumentError(f"conv bias has {conv_b.numel()} elements, expected {c}")
    if xproj_w is None:
        return
    if xproj_w.dim() != 2 or xproj_w.shape[1] != c or xproj_w.shape[0] > 1024:
        raise InvalidArgumentError(f"x_proj weight {tuple(xproj_w.shape)} must be [R <= 1024, {c}]")
    if acc is None or acc.dtype != torch.int32 or tuple(acc.shape) != (m, xproj_w.shape[0]) or acc.stride(1) != 1:
        raise InvalidArgumentError(f"x_proj needs an int32 accumulator [{m}, {xproj_w.shape[0]}] (rows contiguous)")


def two_launches(h_q: Tensor, h_scale: Scale, weight: Tensor, w_scale: Scale, bias: Tensor | None,
                 out_scale: Scale, conv_state: Tensor, conv_w: Tensor, conv_w_scale: Scale, conv_b: Tensor | None,
                 conv_b_scale: Scale, conv_out_scale: Scale, start: int, zero: Tensor | None = None,
                 xproj_w: Tensor | None = None, acc: Tensor | None = None) -> Tensor:
    """The same step as the two launches it replaces, in_proj then the conv (or Mamba1's conv + x_proj): for more
    rows than the GEMV takes, operands not readable as words, and as the baseline of the benchmarks."""
    y = int8_linear(h_q, weight, h_scale, w_scale, bias, out_scale=out_scale)
    end = start + conv_state.shape[1]
    in_scale = FR.conv_input_scale(out_scale, start, end)
    if xproj_w is None:
        y[:, start:end] = qcausal_conv1d_update(y[:, start:end], conv_state, in_scale, conv_w, conv_w_scale, conv_b,
                                                conv_b_scale, conv_out_scale, zero=zero)
    else:
        if zero is not None:
            zero.zero_()
        y[:, start:end] = qconv_xproj_step(y[:, start:end], conv_state, in_scale, conv_w, conv_w_scale, conv_b,
                                           conv_b_scale, conv_out_scale, xproj_w, acc)[0]
    return y


def qin_proj_conv_step(h_q: Tensor, h_scale: Scale, weight: Tensor, w_scale: Scale, bias: Tensor | None,
                       out_scale: Scale, conv_state: Tensor, conv_w: Tensor, conv_w_scale: Scale,
                       conv_b: Tensor | None, conv_b_scale: Scale, conv_out_scale: Scale, start: int,
                       zero: Tensor | None = None, xproj_w: Tensor | None = None, acc: Tensor | None = None,
                       tiles: tuple[bool, int, int, int] | None = None) -> Tensor:
    """Int8 ``in_proj`` of one token with the int8 conv update fused on columns ``[start, start + C)``
    (and, given ``xproj_w`` and ``acc``, x_proj's int32 products added into ``acc``); see
    ``fused_reference.qin_proj_conv_step``. ``tiles`` overrides ``qin_proj_plan`` (sweeps)."""
    _check(h_q, weight, out_scale, conv_state, conv_w, conv_b, start, xproj_w, acc)
    m, k = h_q.shape
    n, c = weight.shape[0], conv_state.shape[1]
    nz, bz = scratch_plan(zero)
    if h_q.stride(-1) != 1:
        h_q = h_q.contiguous()
    if m == 0 or m > MAX_M or not _words_ok(h_q, weight):
        return two_launches(h_q, h_scale, weight, w_scale, bias, out_scale, conv_state, conv_w, conv_w_scale, conv_b,
                            conv_b_scale, conv_out_scale, start, zero, xproj_w, acc)
    out = torch.empty((m, n), device=h_q.device, dtype=torch.int8)
    ep = cached_epilogue_args(h_scale, w_scale, bias, out_scale, m, n, out)
    (cws, cwsv, cwsm), (cbs, cbsv, cbsm), (cos, cosv, cosm) = (
        scale_arg(conv_w_scale, c, "conv_w_scale"),
        scale_arg(conv_b_scale if conv_b is not None else None, c, "conv_b_scale"),
        scale_arg(conv_out_scale, c, "conv_out_scale"))
    cb = conv_b.reshape(-1).contiguous() if conv_b is not None else None
    xp = xproj_w is not None
    prefetch, bn, bk, warps = tiles or qin_proj_plan(n, k, m, xp)
    bk4 = max(1, bk // 4)
    launch(_qin_proj_conv_kernel, (cdiv(n, bn),), h_q, weight, out, *ep["scales"],
           conv_state, conv_w, cws, cwsv, cb, cbs, cbsv, cos, cosv,
           xproj_w if xp else weight, acc if xp else out, zero if zero is not None else out,
           m, n, k // 4, start, c, xproj_w.shape[0] if xp else 0, nz, h_q.stride(0) // 4, weight.stride(0) // 4,
           out.stride(0), *conv_state.stride(), *conv_w.stride(),
           *(xproj_w.stride() if xp else (0, 0)), acc.stride(0) if xp else 0,
           **ep["flags"], CWS_M=cwsm, CBS_M=cbsm, COS_M=cosm, HAS_CB=cb is not None, KC=conv_state.shape[2],
           KCP=pow2(conv_state.shape[2], 2), XPROJ=xp, BLOCK_R=pow2(xproj_w.shape[0], 16) if xp else 16,
           USE_DP4A=not interpreting(), PREFETCH=prefetch and k >= bk4 * 4, BLOCK_M=next_pow2(m), BLOCK_N=bn,
           BLOCK_K4=bk4, BLOCK_Z=bz, num_warps=warps, **pdl_args(h_q))
    return out
