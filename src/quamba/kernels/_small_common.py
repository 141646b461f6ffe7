"""Pieces shared by the small memory-bound kernels (conv, norms, decode state updates).

- scale arguments: a scale arrives as a Python float, a one-element tensor or a per-channel tensor;
  ``scale_arg`` turns it into (pointer, value, mode) so one kernel serves all three without host syncs
  (``device_scale_arg``: the same with a stand-in tensor for unread pointers, for the GEMM and Hadamard
  epilogues);
- exact int8 quantization (``torch.round(y / s)`` + clamp): on the GPU a reciprocal multiply corrected
  by one fused residual step (the IEEE quotient without a division) and one ``cvt.rni.sat``; under the
  interpreter ``div_rn`` and round-half-to-even by the 1.5 * 2**23 trick;
- fp32 activations (SiLU, softplus with an accurate log1p) written with core ``tl`` ops only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import InvalidArgumentError
from .launch import interpreting, next_pow2

SCALAR, SCALAR_PTR, PER_CHANNEL = 0, 1, 2
ON_GPU = tl.constexpr(not interpreting())  # inline PTX where the kernels are compiled, not interpreted


def scale_arg(scale, channels: int, name: str) -> tuple[torch.Tensor | None, float, int]:
    """``(pointer or None, value, mode)`` for a scale that is a float, a 1-element or a ``[channels]`` tensor."""
    if scale is None:
        return None, 1.0, SCALAR
    if isinstance(scale, torch.Tensor):
        if scale.numel() == 1:
            return scale.reshape(1), 1.0, SCALAR_PTR
        if scale.numel() == channels:
            return scale.reshape(-1), 1.0, PER_CHANNEL
        raise InvalidArgumentError(f"{name} has {scale.numel()} elements; expected 1 or {channels}")
    return None, float(scale), SCALAR


def per_tensor_scale_arg(scale, name: str) -> tuple[torch.Tensor | None, float, int]:
    """Like ``scale_arg`` for scales that must be per-tensor (a float or a one-element tensor)."""
    return scale_arg(scale, 1, name)


def device_scale_arg(s, n: int, what: str, device: torch.device,
                     dummy: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """``(pointer, value, mode)`` of a scale for a kernel whose unused pointer arguments must still be tensors:
    mode 0 = Python float (or a one-element host tensor, read by value), 1 = one-element tensor, 2 = ``n``
    entries, 3 = None; ``dummy`` stands in for the pointer where none is read."""
    if s is None:
        return dummy, 1.0, 3
    if not isinstance(s, torch.Tensor):
        return dummy, float(s), 0
    if s.numel() not in (1, n):
        raise InvalidArgumentError(f"{what} has {s.numel()} elements; expected 1 or {n}")
    if s.device != device:
        if s.numel() == 1 and s.device.type == "cpu":
            return dummy, float(s.float()), 0
        raise InvalidArgumentError(f"{what} is on {s.device}, the inputs on {device}")
    s = s.reshape(-1).contiguous()
    return s, 1.0, 1 if s.numel() == 1 else 2


def pow2(n: int, lo: int = 1) -> int:
    """The next power of two >= n, at least ``lo`` (block sizes)."""
    return max(lo, next_pow2(max(int(n), 1)))


def channel_vector(t: torch.Tensor | None, n: int, name: str) -> torch.Tensor | None:
    """A per-channel parameter as a contiguous 1-D tensor of ``n`` elements (None stays None)."""
    if t is None:
        return None
    if t.numel() != n:
        raise InvalidArgumentError(f"{name} has {t.numel()} elements, expected {n}")
    return t.reshape(-1).contiguous()


@triton.jit
def load_scale(ptr, val, offs, mask, MODE: tl.constexpr):
    """The scale as fp32: the scalar ``val`` (MODE 0), ``ptr[0]`` (MODE 1) or ``ptr[offs]`` (MODE 2)."""
    if MODE == 2:
        s = tl.load(ptr + offs, mask=mask, other=1.0).to(tl.float32)
    elif MODE == 1:
        s = tl.load(ptr).to(tl.float32)
    else:
        s = val
    return s


@triton.jit
def round_half_even(x):
    """Round to the nearest integer, ties to even (exact for every finite fp32)."""
    f = tl.floor(x)
    d = x - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _round_clamped(q):
    """Round to nearest, ties to even, of ``q`` clamped to [-130, 130] (past int8 either way): adding and
    removing 1.5 * 2**23 leaves the fp32 sum's own round-to-nearest-even (exact for |q| < 2**22)."""
    return (tl.minimum(tl.maximum(q, -130.0), 130.0) + 12582912.0) - 12582912.0


@triton.jit
def _saturate_int8(q):
    return tl.minimum(tl.maximum(q, -128.0), 127.0).to(tl.int8)


@triton.jit
def round_sat_int8(v):
    """``clamp(round_half_even(v), -128, 127)`` as int8: one ``cvt.rni.sat`` on the GPU (NaN gives 0), the
    1.5 * 2**23 rounding under the interpreter."""
    if ON_GPU:
        return tl.inline_asm_elementwise("cvt.rni.sat.s8.f32 $0, $1;", "=r,r", [v], dtype=tl.int32, is_pure=True,
                                         pack=1).to(tl.int8)
    return _saturate_int8(_round_clamped(v))


@triton.jit
def quantize_int8(y, scale):
    """``clamp(round_half_even(y / scale), -128, 127)`` as int8, with the IEEE-rounded quotient.

    On the GPU without a division: ``r = y * RN(1 / scale)`` is within an ulp of ``y / scale``, and one
    residual step, ``RN(r + RN(y - r * scale) / scale)`` with both products fused, gives the correctly
    rounded quotient (Markstein's theorem). ``r`` is clamped to +-256 first: beyond it the result saturates
    whatever the rounding, and the residual cannot overflow. The interpreter divides (``div_rn``).
    """
    sf = scale + tl.zeros_like(y)
    if ON_GPU:
        inv = tl.div_rn(scale * 0.0 + 1.0, scale)
        r = tl.minimum(tl.maximum(y * inv, -256.0), 256.0)
        return round_sat_int8(tl.fma(tl.fma(-r, sf, y), inv, r))
    return round_sat_int8(tl.div_rn(y, sf))


@triton.jit
def silu(x):
    """``x * sigmoid(x)`` in fp32."""
    return x / (1.0 + tl.exp(-x))


@triton.jit
def log1p(x):
    """Accurate ``log(1 + x)`` for x > -1: corrects the rounding of ``1 + x`` (Goldberg's trick)."""
    u = 1.0 + x
    d = u - 1.0
    return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def softplus(x):
    """``torch.nn.functional.softplus`` with beta 1 and threshold 20."""
    return tl.where(x > 20.0, x, log1p(tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def old_taps(base, offs_k, mask, K: tl.constexpr, s_k):
    """Taps ``1..K-1`` of a conv state moved to ``0..K-2`` (the last is then ``push_tap``'s). ``base``
    points at each channel's state row; ``offs_k`` and ``mask`` broadcast against it. The state was
    written by an earlier decode step, so decode kernels read it before their ``pdl_sync``."""
    return tl.load(base + (offs_k + 1) * s_k, mask=mask & (offs_k + 1 < K), other=0)


@triton.jit
def push_tap(taps, xv, offs_k, K: tl.constexpr):
    """The conv window after the step: ``old_taps`` with ``xv`` as its last tap."""
    return tl.where(offs_k == K - 1, xv.to(taps.dtype), taps)


@triton.jit
def store_window(base, window, offs_k, mask, K: tl.constexpr, s_k):
    """Write ``push_tap``'s window back once every thread has read the old state."""
    tl.debug_barrier()
    tl.store(base + offs_k * s_k, window, mask=mask & (offs_k < K))
