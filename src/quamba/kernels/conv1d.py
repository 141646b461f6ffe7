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
from . import reuse
from .launch import launch, launch_for_reuse, cdiv
from ..errors import InvalidArgumentError

Tensor = torch.Tensor


@triton.jit
def conv_tile(x_ptr, w_ptr, s_ptr, b, l0, offs_d, md, d_full, L, sxb, sxl, sxd, swd, swk, ssb, ssd, ssk,
              K: tl.constexpr, HAS_STATE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
              ACC: tl.constexpr, OFF64: tl.constexpr):
    """Causal taps of tokens ``l0 .. l0 + BLOCK_L`` on channels ``offs_d``: ``[BLOCK_L, BLOCK_D]`` in ``ACC``.

    The per-element offsets are relative to the tile's first token (int32 unless ``OFF64``); a tile
    with all its taps inside the sequence and all its channels valid (every tile but the first and
    the edges) loads without masks and never reads ``initial_state``. The first tile adds the state's
    taps as ``K - 1`` per-channel vectors: input ``j - K`` (state slot ``j``) reaches token ``j - 1 - k``
    through tap ``k``. (A per-element gather of the state over the whole tile held ~120 more registers
    per thread than the rest of the kernel, for the whole kernel: int8, 32 x 128 tiles, sm_90: 201 with a state,
    80 without, 96 now.)
    """
    offs_l = tl.arange(0, BLOCK_L)
    x_base = x_ptr + b * sxb + l0.to(tl.int64) * sxl
    rows = offs_l[:, None].to(tl.int64) if OFF64 else offs_l[:, None]
    tile = rows * sxl + offs_d[None, :] * sxd
    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC)
    if (l0 >= K - 1) & (l0 + BLOCK_L <= L) & d_full:
        for k in tl.static_range(K):
            w = tl.load(w_ptr + offs_d * swd + k * swk).to(ACC)
            v = tl.load(x_base + (tile - (K - 1 - k) * sxl)).to(ACC)
            acc += v * w[None, :]
    else:
        for k in tl.static_range(K):
            w = tl.load(w_ptr + offs_d * swd + k * swk, mask=md, other=0).to(ACC)
            src = l0 + offs_l - (K - 1 - k)
            m = ((src >= 0) & (src < L))[:, None] & md[None, :]
            v = tl.load(x_base + (tile - (K - 1 - k) * sxl), mask=m, other=0).to(ACC)
            acc += v * w[None, :]
        if HAS_STATE:
            if l0 == 0:
                for j in tl.static_range(1, K):
                    sj = tl.load(s_ptr + b * ssb + offs_d * ssd + j * ssk, mask=md, other=0).to(ACC)
                    for k in tl.static_range(j):
                        w = tl.load(w_ptr + offs_d * swd + k * swk, mask=md, other=0).to(ACC)
                        acc += tl.where(offs_l[:, None] == j - 1 - k, (sj * w)[None, :], 0)
    return acc


@triton.jit
def store_final_state(x_ptr, s_ptr, b, offs_d, md, L, sxb, sxl, sxd, ssb, ssd, ssk, K: tl.constexpr,
                      KP: tl.constexpr, HAS_STATE: tl.constexpr):
    """Replace the conv state of channels ``offs_d`` by the last ``K`` inputs (older ones from the state
    itself when ``L < K``). Run by the program of the first token tile, after its own state reads: it
    is the only one that reads the state (tiles span >= K - 1 tokens), so nothing else races the store."""
    offs_k = tl.arange(0, KP)
    src = L - K + offs_k
    mk = md[:, None] & (offs_k < K)[None, :]
    v = tl.load(x_ptr + b * sxb + src[None, :].to(tl.int64) * sxl + offs_d[:, None] * sxd,
                mask=mk & (src >= 0)[None, :], other=0).to(s_ptr.dtype.element_ty)
    state = s_ptr + b * ssb + offs_d[:, None] * ssd + offs_k[None, :] * ssk
    if HAS_STATE:
        old = tl.load(s_ptr + b * ssb + offs_d[:, None] * ssd + (src + K)[None, :] * ssk,
                      mask=mk & (src < 0)[None, :], other=0)
        v = tl.where((src >= 0)[None, :], v, old)
    tl.debug_barrier()
    tl.store(state, v, mask=mk)


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, L, D,
                     sxb, sxl, sxd, swd, swk, ssb, ssd, ssk, syb, syl,
                     K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
                     SILU: tl.constexpr, STORE_STATE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                     OFF64: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_sync(USE_PDL)
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    l0 = pid_l * BLOCK_L
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    acc = conv_tile(x_ptr, w_ptr, s_ptr, b, l0, offs_d, md, (pid_d + 1) * BLOCK_D <= D, L, sxb, sxl, sxd, swd, swk,
                    ssb, ssd, ssk, K, HAS_STATE, BLOCK_L, BLOCK_D, tl.float32, OFF64)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = silu(acc)
    offs_l = l0 + tl.arange(0, BLOCK_L)
    mo = (offs_l < L)[:, None] & md[None, :]
    tl.store(y_ptr + b * syb + offs_l[:, None].to(tl.int64) * syl + offs_d[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mo)
    if STORE_STATE:
        if pid_l == 0:
            store_final_state(x_ptr, s_ptr, b, offs_d, md, L, sxb, sxl, sxd, ssb, ssd, ssk, K, KP, HAS_STATE)


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


def check_state(state: Tensor | None, shape: tuple[int, int, int], update: bool) -> None:
    """The prefill conv's ``initial_state``: ``[B, D, K]``, and present when it is to be updated."""
    if state is not None and tuple(state.shape) != shape:
        raise InvalidArgumentError(f"initial_state {tuple(state.shape)} != {shape}")
    if update and state is None:
        raise InvalidArgumentError("update_state needs an initial_state to update")


def prefill_tile(L: int, d: int, token_stride: int, channel_stride: int) -> tuple[int, int, bool]:
    """``(BLOCK_L, BLOCK_D, OFF64)`` of a prefill conv; ``OFF64`` when a tile's offsets (up to ``BLOCK_L``
    tokens ahead, ``K - 1 <= 7`` behind, any channel) overflow int32. Tiles span >= 8 tokens: only
    the first reads the initial state (taps K <= 8)."""
    block_l = 32 if L >= 32 else pow2(L, 8)
    block_d = min(128, pow2(d, 16))
    return block_l, block_d, needs_off64(block_l, d, token_stride, channel_stride)


def needs_off64(block_l: int, d: int, token_stride: int, channel_stride: int) -> bool:
    """Whether a tile of ``block_l`` tokens (plus up to 7 behind) over any of ``d`` channels has offsets past int32."""
    return (block_l + 8) * abs(token_stride) + d * abs(channel_stride) >= 2 ** 31


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                  initial_state: Tensor | None = None, update_state: bool = False) -> Tensor:
    """Depthwise causal conv over ``x [B, L, D]`` with ``weight [D, K]``; see ``reference.causal_conv1d``."""
    key = None
    if reuse.ENABLED:
        key = (reuse.signature(x), reuse.fixed(weight), reuse.fixed(bias), silu, reuse.signature(initial_state),
               update_state)
        hit = _REPLAYS.get_usable(key)
        if hit is not None:
            return hit.run([x] if initial_state is None else [x, initial_state])[0]
    if x.dim() != 3:
        raise InvalidArgumentError(f"causal_conv1d expects x [B, L, D], got {tuple(x.shape)}")
    bsz, L, d = x.shape
    k = weight.shape[-1]
    _check_common(d, k, weight, bias)
    check_state(initial_state, (bsz, d, k), update_state)
    y = torch.empty((bsz, L, d), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    bias_c = bias.reshape(-1).contiguous() if bias is not None else None
    st = initial_state
    block_l, block_d, off64 = prefill_tile(L, d, x.stride(1), x.stride(2))
    grid = (cdiv(L, block_l), cdiv(d, block_d), bsz)
    made = launch_for_reuse(_conv_fwd_kernel, grid,
                            x, weight, bias_c, st, y, L, d,
                            x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(1),
                            st.stride(0) if st is not None else 0, st.stride(1) if st is not None else 0,
                            st.stride(2) if st is not None else 0, y.stride(0), y.stride(1),
                            K=k, KP=pow2(k, 2), HAS_BIAS=bias is not None, HAS_STATE=st is not None, SILU=bool(silu),
                            STORE_STATE=update_state, BLOCK_L=block_l, BLOCK_D=block_d, OFF64=off64, num_warps=4,
                            **pdl_args(x, eager=True))
    keep_conv(key, made, x, initial_state, y, [weight, bias])
    return y


def keep_conv(key: tuple | None, made, x: Tensor, state: Tensor | None, y: Tensor, constants: list) -> None:
    """Record a prefill conv launch (inputs ``x`` and the state; tensors among ``constants`` read by pointer)."""
    if key is not None:
        _REPLAYS.keep(key, reuse.record([made], [x] if state is None else [x, state], [y],
                                        [t for t in constants if isinstance(t, Tensor)]))


_REPLAYS = reuse.ReplayTable()


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
