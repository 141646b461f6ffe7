"""Int8 depthwise causal conv1d + SiLU with int8 output (W8A8), prefill and one-token decode.

Same tiling as ``conv1d``: int8 taps are multiplied and accumulated in int32 (exact), then
``acc * w_scale * x_scale + b_q * b_scale`` in fp32, SiLU, and static int8 quantization with
round-half-to-even. Every scale is a Python float, a one-element tensor or a per-channel ``[D]`` tensor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_args, pdl_sync
from ._small_common import (load_scale, old_taps, pow2, push_tap, quantize_int8, scale_arg, silu,
                            store_window)
from .conv1d import (_check_common, check_state, conv_tile, needs_off64, prefill_tile, store_final_state,
                     update_block)
from .gemv import scratch_plan, zero_scratch
from . import conv1d as CV, reuse
from .launch import launch, launch_for_reuse, cdiv
from ..errors import InvalidArgumentError

Tensor = torch.Tensor
Scale = float | Tensor


@triton.jit
def _dequant_silu_quant(acc, b_ptr, offs_d, md, xs_ptr, xs_val, ws_ptr, ws_val, bs_ptr, bs_val, os_ptr, os_val,
                        XS_M: tl.constexpr, WS_M: tl.constexpr, BS_M: tl.constexpr, OS_M: tl.constexpr,
                        HAS_BIAS: tl.constexpr):
    y = acc.to(tl.float32) * load_scale(ws_ptr, ws_val, offs_d, md, WS_M)
    y = y * load_scale(xs_ptr, xs_val, offs_d, md, XS_M)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_d, mask=md, other=0).to(tl.float32) * load_scale(bs_ptr, bs_val, offs_d, md, BS_M)
    return quantize_int8(silu(y), load_scale(os_ptr, os_val, offs_d, md, OS_M))


@triton.jit
def _qconv_fwd_kernel(x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, L, D,
                      xs_ptr, xs_val, ws_ptr, ws_val, bs_ptr, bs_val, os_ptr, os_val,
                      sxb, sxl, sxd, swd, swk, ssb, ssd, ssk, syb, syl,
                      XS_M: tl.constexpr, WS_M: tl.constexpr, BS_M: tl.constexpr, OS_M: tl.constexpr,
                      K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
                      STORE_STATE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, OFF64: tl.constexpr,
                      USE_PDL: tl.constexpr):
    pdl_sync(USE_PDL)
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    l0 = pid_l * BLOCK_L
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    acc = conv_tile(x_ptr, w_ptr, s_ptr, b, l0, offs_d, md, (pid_d + 1) * BLOCK_D <= D, L, sxb, sxl, sxd, swd, swk,
                    ssb, ssd, ssk, K, HAS_STATE, BLOCK_L, BLOCK_D, tl.int32, OFF64)
    offs_l = l0 + tl.arange(0, BLOCK_L)
    q = _dequant_silu_quant(acc, b_ptr, offs_d[None, :], md[None, :], xs_ptr, xs_val, ws_ptr, ws_val,
                            bs_ptr, bs_val, os_ptr, os_val, XS_M, WS_M, BS_M, OS_M, HAS_BIAS)
    mo = (offs_l < L)[:, None] & md[None, :]
    tl.store(y_ptr + b * syb + offs_l[:, None].to(tl.int64) * syl + offs_d[None, :], q, mask=mo)
    if STORE_STATE:
        if pid_l == 0:
            store_final_state(x_ptr, s_ptr, b, offs_d, md, L, sxb, sxl, sxd, ssb, ssd, ssk, K, KP, HAS_STATE)


@triton.jit
def _qconv_update_kernel(x_ptr, s_ptr, w_ptr, b_ptr, y_ptr, zero_ptr, D, NZERO,
                         xs_ptr, xs_val, ws_ptr, ws_val, bs_ptr, bs_val, os_ptr, os_val,
                         sxb, sxd, ssb, ssd, ssk, swd, swk, syb,
                         XS_M: tl.constexpr, WS_M: tl.constexpr, BS_M: tl.constexpr, OS_M: tl.constexpr,
                         K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_Z: tl.constexpr, USE_PDL: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, KP)
    md = offs_d < D
    base = s_ptr + b * ssb + offs_d[:, None] * ssd
    taps = old_taps(base, offs_k[None, :], md[:, None], K, ssk)
    mk = md[:, None] & (offs_k < K)[None, :]
    w = tl.load(w_ptr + offs_d[:, None] * swd + offs_k[None, :] * swk, mask=mk, other=0).to(tl.int32)
    pdl_sync(USE_PDL)
    xq = tl.load(x_ptr + b * sxb + offs_d * sxd, mask=md, other=0)
    window = push_tap(taps, xq[:, None], offs_k[None, :], K)
    acc = tl.sum(window.to(tl.int32) * w, axis=1)
    store_window(base, window, offs_k[None, :], md[:, None], K, ssk)
    q = _dequant_silu_quant(acc, b_ptr, offs_d, md, xs_ptr, xs_val, ws_ptr, ws_val, bs_ptr, bs_val,
                            os_ptr, os_val, XS_M, WS_M, BS_M, OS_M, HAS_BIAS)
    tl.store(y_ptr + b * syb + offs_d, q, mask=md)
    if BLOCK_Z > 0:
        if b == 0:
            zero_scratch(zero_ptr, NZERO, BLOCK_Z)


def _scales(d: int, x_scale: Scale, w_scale: Scale, b_q: Tensor | None, b_scale: Scale | None,
            out_scale: Scale) -> tuple:
    xs = scale_arg(x_scale, d, "x_scale")
    ws = scale_arg(w_scale, d, "w_scale")
    bs = scale_arg(b_scale if b_q is not None else None, d, "b_scale")
    os_ = scale_arg(out_scale, d, "out_scale")
    return xs, ws, bs, os_


def _check(d: int, k: int, w_q: Tensor, b_q: Tensor | None, *int8: Tensor | None) -> None:
    _check_common(d, k, w_q, b_q)
    for t in (w_q, b_q) + int8:
        if not (t is None or t.dtype == torch.int8):
            raise InvalidArgumentError(f"expected int8 tensors, got {t.dtype if t is not None else None}")


def qcausal_conv1d(x_q: Tensor, x_scale: Scale, w_q: Tensor, w_scale: Scale, b_q: Tensor | None,
                   b_scale: Scale | None, out_scale: Scale, initial_state: Tensor | None = None,
                   update_state: bool = False) -> Tensor:
    """Int8 depthwise causal conv + SiLU with int8 output; see ``qreference.qcausal_conv1d``."""
    key = None
    if reuse.ENABLED:
        key = (reuse.signature(x_q), reuse.fixed(w_q), reuse.fixed(b_q), reuse.signature(initial_state),
               update_state, *map(reuse.scalar_or_fixed, (x_scale, w_scale, b_scale, out_scale)))
        hit = CV._REPLAYS.get_usable(key)
        if hit is not None:
            return hit.run([x_q] if initial_state is None else [x_q, initial_state])[0]
    if x_q.dim() != 3:
        raise InvalidArgumentError(f"qcausal_conv1d expects x [B, L, D], got {tuple(x_q.shape)}")
    bsz, L, d = x_q.shape
    k = w_q.shape[-1]
    _check(d, k, w_q, b_q, x_q, initial_state)
    check_state(initial_state, (bsz, d, k), update_state)
    y = torch.empty((bsz, L, d), device=x_q.device, dtype=torch.int8)
    if y.numel() == 0:
        return y
    made = launch_qconv(x_q, y, _scales(d, x_scale, w_scale, b_q, b_scale, out_scale), w_q, b_q, initial_state,
                        update_state)
    CV.keep_conv(key, made, x_q, initial_state, y, [w_q, b_q, x_scale, w_scale, b_scale, out_scale])
    return y


def qconv_tile(L: int, d: int) -> tuple[int, int, int]:
    """``(BLOCK_L, BLOCK_D, num_warps)`` of a prefill int8 conv: the fp conv's tiles over 4 warps, the fastest of the
    H200 sweep (benchmarks/prefill_tiles_sweep.py, 32 x 128: 9.7 us at 1024 x 5120)."""
    block_l, block_d, _ = prefill_tile(L, d, 0, 0)
    return block_l, block_d, 4


def launch_qconv(x_q: Tensor, y: Tensor, scales: tuple, w_q: Tensor, b_q: Tensor | None, state: Tensor | None,
                 update_state: bool, tile: tuple[int, int, int] | None = None):
    """Launch the prefill kernel (``scales``: ``_scales``' four ``scale_arg`` triples); ``tile = (BLOCK_L,
    BLOCK_D, num_warps)`` overrides ``qconv_tile`` (the benchmark sweep). Returns ``launch_for_reuse``'s result."""
    bsz, L, d = x_q.shape
    k = w_q.shape[-1]
    xs, ws, bs, os_ = scales
    block_l, block_d, warps = tile or qconv_tile(L, d)
    off64 = needs_off64(block_l, d, x_q.stride(1), x_q.stride(2))
    b_c = b_q.reshape(-1).contiguous() if b_q is not None else None
    st = state
    grid = (cdiv(L, block_l), cdiv(d, block_d), bsz)
    return launch_for_reuse(_qconv_fwd_kernel, grid,
                            x_q, w_q, b_c, st, y, L, d, *xs[:2], *ws[:2], *bs[:2], *os_[:2],
                            x_q.stride(0), x_q.stride(1), x_q.stride(2), w_q.stride(0), w_q.stride(1),
                            st.stride(0) if st is not None else 0, st.stride(1) if st is not None else 0,
                            st.stride(2) if st is not None else 0, y.stride(0), y.stride(1),
                            XS_M=xs[2], WS_M=ws[2], BS_M=bs[2], OS_M=os_[2], K=k, KP=pow2(k, 2),
                            HAS_BIAS=b_q is not None, HAS_STATE=st is not None, STORE_STATE=update_state,
                            BLOCK_L=block_l, BLOCK_D=block_d, OFF64=off64, num_warps=warps,
                            **pdl_args(x_q, eager=True))


def qcausal_conv1d_update(x_q: Tensor, conv_state: Tensor, x_scale: Scale, w_q: Tensor, w_scale: Scale,
                          b_q: Tensor | None, b_scale: Scale | None, out_scale: Scale,
                          zero: Tensor | None = None) -> Tensor:
    """Decode step: ``x_q [B, D]`` shifted into the int8 ``conv_state [B, D, K]`` in place; int8 output.
    ``zero``: a contiguous scratch tensor that the first program zeroes."""
    if x_q.dim() != 2:
        raise InvalidArgumentError(f"qcausal_conv1d_update expects x [B, D], got {tuple(x_q.shape)}")
    bsz, d = x_q.shape
    k = conv_state.shape[-1]
    _check(d, k, w_q, b_q, x_q, conv_state)
    if not (tuple(conv_state.shape) == (bsz, d, k) and w_q.shape[1] == k):
        raise InvalidArgumentError(f"conv_state {tuple(conv_state.shape)} / weight {tuple(w_q.shape)} do not match x "
                                   f"{tuple(x_q.shape)}")
    (xs, xsv, xsm), (ws, wsv, wsm), (bs, bsv, bsm), (os_, osv, osm) = _scales(d, x_scale, w_scale, b_q, b_scale,
                                                                                  out_scale)
    nz, bz = scratch_plan(zero)
    y = torch.empty((bsz, d), device=x_q.device, dtype=torch.int8)
    if y.numel() == 0:
        if zero is not None:
            zero.zero_()
        return y
    b_c = b_q.reshape(-1).contiguous() if b_q is not None else None
    block_d, warps = update_block(d, bsz)
    launch(_qconv_update_kernel, (cdiv(d, block_d), bsz),
           x_q, conv_state, w_q, b_c, y, zero, d, nz, xs, xsv, ws, wsv, bs, bsv, os_, osv,
           x_q.stride(0), x_q.stride(1), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
           w_q.stride(0), w_q.stride(1), y.stride(0),
           XS_M=xsm, WS_M=wsm, BS_M=bsm, OS_M=osm, K=k, KP=pow2(k, 2), HAS_BIAS=b_q is not None,
           BLOCK_D=block_d, BLOCK_Z=bz, num_warps=warps, **pdl_args(x_q))
    return y
