"""Depthwise causal conv1d (+ bias, SiLU) over token-major sequences, prefill and one-token decode.

Prefill: each program owns a tile of ``BLOCK_L`` tokens x ``BLOCK_D`` channels (loads coalesced
along the channel dim); tap ``k`` reads the tile shifted back by ``K-1-k`` tokens (the overlap is
served from cache), the first tokens reading their predecessors from ``initial_state``.
Decode: each program shifts ``BLOCK_D`` channels of the conv state in place and convolves them.
Arithmetic is fp32, as in ``quamba.ops.reference``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_args, pdl_sync
from ._small_common import old_taps, pow2, push_tap, silu, store_window
from .launch import launch, cdiv
from ..errors import InvalidArgumentError

Tensor = torch.Tensor


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, L, D,
                     sxb, sxl, sxd, swd, swk, ssb, ssd, ssk, syb, syl,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for k in tl.static_range(K):
        w = tl.load(w_ptr + offs_d * swd + k * swk, mask=md, other=0.0).to(tl.float32)
        src = offs_l - (K - 1 - k)
        m = ((src >= 0) & (src < L))[:, None] & md[None, :]
        v = tl.load(x_ptr + b * sxb + src[:, None].to(tl.int64) * sxl + offs_d[None, :] * sxd,
                    mask=m, other=0.0).to(tl.float32)
        if HAS_STATE:
            ms = (src < 0)[:, None] & md[None, :]
            v += tl.load(s_ptr + b * ssb + offs_d[None, :] * ssd + (src + K)[:, None] * ssk,
                         mask=ms, other=0.0).to(tl.float32)
        acc += v * w[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = silu(acc)
    mo = (offs_l < L)[:, None] & md[None, :]
    tl.store(y_ptr + b * syb + offs_l[:, None].to(tl.int64) * syl + offs_d[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mo)


@triton.jit
def _conv_update_kernel(x_ptr, s_ptr, w_ptr, b_ptr, y_ptr, D,
                        sxb, sxd, ssb, ssd, ssk, swd, swk, syb,
                        K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                        BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, KP)
    md = offs_d < D
    base = s_ptr + b * ssb + offs_d[:, None] * ssd
    taps = old_taps(base, offs_k[None, :], md[:, None], K, ssk)
    mk = md[:, None] & (offs_k < K)[None, :]
    w = tl.load(w_ptr + offs_d[:, None] * swd + offs_k[None, :] * swk, mask=mk, other=0.0).to(tl.float32)
    pdl_sync(USE_PDL)
    xs = tl.load(x_ptr + b * sxb + offs_d * sxd, mask=md, other=0.0)
    window = push_tap(taps, xs[:, None], offs_k[None, :], K)
    acc = tl.sum(window.to(tl.float32) * w, axis=1)
    store_window(base, window, offs_k[None, :], md[:, None], K, ssk)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if SILU:
        acc = silu(acc)
    tl.store(y_ptr + b * syb + offs_d, acc.to(y_ptr.dtype.element_ty), mask=md)


def _check_common(d: int, k: int, weight: Tensor, bias: Tensor | None) -> None:
    if not (weight.dim() == 2 and weight.shape[0] == d):
        raise InvalidArgumentError(f"conv weight {tuple(weight.shape)} does not match {d} channels")
    if not (1 <= k <= 8):
        raise InvalidArgumentError(f"conv width {k} not supported (1..8)")
    if not (bias is None or bias.numel() == d):
        raise InvalidArgumentError(f"conv bias does not match {d} channels")


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                  initial_state: Tensor | None = None) -> Tensor:
    """Depthwise causal conv over ``x [B, L, D]`` with ``weight [D, K]``; see ``reference.causal_conv1d``."""
    if x.dim() != 3:
        raise InvalidArgumentError(f"causal_conv1d expects x [B, L, D], got {tuple(x.shape)}")
    bsz, L, d = x.shape
    k = weight.shape[-1]
    _check_common(d, k, weight, bias)
    if initial_state is not None:
        if tuple(initial_state.shape) != (bsz, d, k):
            raise InvalidArgumentError(f"initial_state {tuple(initial_state.shape)} != {(bsz, d, k)}")
    y = torch.empty((bsz, L, d), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    bias_c = bias.reshape(-1).contiguous() if bias is not None else None
    st = initial_state
    block_d = min(128, pow2(d, 16))
    block_l = 32 if L >= 32 else pow2(L, 4)
    grid = (cdiv(L, block_l), cdiv(d, block_d), bsz)
    launch(_conv_fwd_kernel, grid,
           x, weight, bias_c, st, y, L, d,
           x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(1),
           st.stride(0) if st is not None else 0, st.stride(1) if st is not None else 0,
           st.stride(2) if st is not None else 0, y.stride(0), y.stride(1),
           K=k, HAS_BIAS=bias is not None, HAS_STATE=st is not None, SILU=bool(silu),
           BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4)
    return y


def update_block(d: int, bsz: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) for a decode conv: >= ~2 programs per SM (132 on H200) when possible."""
    block_d = 128
    while block_d > 32 and bsz * cdiv(d, block_d) < 264:
        block_d //= 2
    return block_d, block_d // 32


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         silu: bool = True) -> Tensor:
    """One decode step: shift ``x [B, D]`` into ``conv_state [B, D, K]`` (in place) and convolve."""
    if x.dim() != 2:
        raise InvalidArgumentError(f"causal_conv1d_update expects x [B, D], got {tuple(x.shape)}")
    bsz, d = x.shape
    k = conv_state.shape[-1]
    _check_common(d, k, weight, bias)
    if not (tuple(conv_state.shape) == (bsz, d, k) and weight.shape[1] == k):
        raise InvalidArgumentError(f"conv_state {tuple(conv_state.shape)} / weight {tuple(weight.shape)} do not match "
                                   f"x {tuple(x.shape)}")
    y = torch.empty((bsz, d), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    bias_c = bias.reshape(-1).contiguous() if bias is not None else None
    block_d, warps = update_block(d, bsz)
    grid = (cdiv(d, block_d), bsz)
    launch(_conv_update_kernel, grid,
           x, conv_state, weight, bias_c, y, d,
           x.stride(0), x.stride(1), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
           weight.stride(0), weight.stride(1), y.stride(0),
           K=k, KP=pow2(k, 2), HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK_D=block_d, num_warps=warps,
           **pdl_args(x))
    return y
