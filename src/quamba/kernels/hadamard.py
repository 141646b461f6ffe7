"""Fused normalized Hadamard transform + int8 quantization (one read of x, one int8 write).

``H_n = kron(H_R, H_C)`` with ``H_C`` a Sylvester matrix of order ``C <= 128`` and
``H_R = kron(H_m, H_{2^j})`` (both from ``quamba.quantization.hadamard.hadamard_matrix``). Viewing
a row as ``X [R, C]``, ``x @ H_n^T`` is ``H_R @ X @ H_C^T``: two tensor-core products per row
tile. Products with ±1 are exact; to keep fp32 accuracy on tensor cores the fp32 operands are
split into three bf16 pieces (8 significant bits each, so the split is exact) and accumulated in
fp32. The result can differ from the fp32 butterflies of the reference only by summation-order
rounding, i.e. rare off-by-one int8 codes. Each program loads the two ±1 matrices once and then
walks over row tiles (persistent grid).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ..errors import InvalidArgumentError
from ..quantization.hadamard import hadamard_matrix, supported_hadamard_size
from .int8_gemm import interpreting, num_sms, quantize_int8

Tensor = torch.Tensor
Scale = float | Tensor

_MAX_C = 128
_BASES = (1, 12, 20, 28)
_MAX_TILE = 16384


@triton.jit
def _split3(v):
    """Three fp32 values with 8 significant bits each (exact in bf16) that sum exactly to ``v``."""
    hi = (v.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
    r = v - hi
    mid = (r.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
    return hi, mid, r - mid


@triton.jit
def _dot3_left(v, h, INTERP: tl.constexpr):
    """``v @ h`` for fp32 ``v`` and ±1 ``h`` at fp32 accuracy on bf16 tensor cores."""
    a, b, c = _split3(v)
    if INTERP:
        hf = h.to(tl.float32)
        acc = tl.dot(a, hf)
        acc = tl.dot(b, hf, acc)
        return tl.dot(c, hf, acc)
    else:
        hb = h.to(tl.bfloat16)
        acc = tl.dot(a.to(tl.bfloat16), hb)
        acc = tl.dot(b.to(tl.bfloat16), hb, acc)
        return tl.dot(c.to(tl.bfloat16), hb, acc)


@triton.jit
def _dot3_right(h, v, INTERP: tl.constexpr):
    """``h @ v`` for ±1 ``h`` and fp32 ``v`` at fp32 accuracy on bf16 tensor cores."""
    a, b, c = _split3(v)
    if INTERP:
        hf = h.to(tl.float32)
        acc = tl.dot(hf, a)
        acc = tl.dot(hf, b, acc)
        return tl.dot(hf, c, acc)
    else:
        hb = h.to(tl.bfloat16)
        acc = tl.dot(hb, a.to(tl.bfloat16))
        acc = tl.dot(hb, b.to(tl.bfloat16), acc)
        return tl.dot(hb, c.to(tl.bfloat16), acc)


@triton.jit
def _hadamard_quant_kernel(x_ptr, out_ptr, hc_ptr, hr_ptr, os_ptr, os_val, inv_sqrt_n,
                           M, stride_xm, stride_om, num_tiles,
                           R: tl.constexpr, C: tl.constexpr, R_PAD: tl.constexpr, C_PAD: tl.constexpr,
                           G: tl.constexpr, HAS_R: tl.constexpr, IN_KIND: tl.constexpr, OS_MODE: tl.constexpr,
                           INTERP: tl.constexpr):
    ROWS: tl.constexpr = G * R_PAD
    i = tl.arange(0, ROWS)
    c = tl.arange(0, C_PAD)
    g = i // R_PAD
    r = i % R_PAD
    col = r[:, None] * C + c[None, :]
    inner_ok = (r < R)[:, None] & (c < C)[None, :]
    hc = tl.load(hc_ptr + c[:, None] * C_PAD + c[None, :])
    if IN_KIND == 0:
        hc16 = hc.to(tl.float16)
    else:
        hc16 = hc.to(tl.bfloat16)
    if HAS_R:
        hr = tl.load(hr_ptr + i[:, None] * ROWS + i[None, :])
    if OS_MODE == 1:
        s_all = tl.load(os_ptr).to(tl.float32)
    for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        brow = tile * G + g
        ok = inner_ok & (brow < M)[:, None]
        x = tl.load(x_ptr + brow[:, None] * stride_xm + col, mask=ok, other=0.0)
        if IN_KIND == 2:
            t = _dot3_left(x, hc, INTERP)
        elif INTERP:
            t = tl.dot(x.to(tl.float32), hc.to(tl.float32))
        else:
            t = tl.dot(x, hc16)
        if HAS_R:
            t = _dot3_right(hr, t, INTERP)
        y = t * inv_sqrt_n
        if OS_MODE == 0:
            q = quantize_int8(y, os_val)
        elif OS_MODE == 1:
            q = quantize_int8(y, s_all)
        else:
            q = quantize_int8(y, tl.load(os_ptr + col, mask=ok, other=1.0).to(tl.float32))
        tl.store(out_ptr + brow[:, None] * stride_om + col, q, mask=ok)


@functools.lru_cache(maxsize=None)
def tile_plan(n: int) -> tuple[int, int, int, int, int]:
    """``(R, C, R_PAD, C_PAD, G)``: a row is ``R x C`` (``n = R*C``), padded to ``R_PAD x C_PAD``;
    ``G`` rows share a tile so that every tile has at least 16 rows for ``tl.dot``."""
    if not supported_hadamard_size(n):
        raise InvalidArgumentError(f"no Hadamard transform of size {n}")
    p = next(n // m for m in _BASES if n % m == 0 and (n // m) & (n // m - 1) == 0)
    c = min(p, _MAX_C)
    r = n // c
    r_pad = triton.next_power_of_2(r)
    c_pad = max(16, c)
    g = max(1, 16 // r_pad)
    if g * r_pad * c_pad > _MAX_TILE:
        raise InvalidArgumentError(f"hadamard_quant supports sizes up to 16384, got {n}")
    return r, c, r_pad, c_pad, g


@functools.lru_cache(maxsize=None)
def _factors(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Zero-padded int8 ``H_C^T [C_PAD, C_PAD]`` and block-diagonal ``kron(I_G, H_R) [ROWS, ROWS]``."""
    r, c, r_pad, c_pad, g = tile_plan(n)
    hc = torch.zeros(c_pad, c_pad, dtype=torch.int8)
    hc[:c, :c] = hadamard_matrix(c, torch.int8).t()
    hr_block = torch.zeros(r_pad, r_pad, dtype=torch.int8)
    hr_block[:r, :r] = hadamard_matrix(r, torch.int8)
    hr = torch.kron(torch.eye(g, dtype=torch.int8), hr_block)
    return hc.to(device), hr.contiguous().to(device)


def _scale_arg(s: Scale, n: int, device: torch.device, dummy: Tensor) -> tuple[Tensor, float, int]:
    if not isinstance(s, Tensor):
        return dummy, float(s), 0
    if s.numel() not in (1, n):
        raise InvalidArgumentError(f"out_scale has {s.numel()} elements; expected 1 or {n}")
    if s.device != device:
        if s.numel() == 1 and s.device.type == "cpu":
            return dummy, float(s.float()), 0
        raise InvalidArgumentError(f"out_scale is on {s.device}, x on {device}")
    s = s.reshape(-1).contiguous()
    return s, 1.0, 1 if s.numel() == 1 else 2


def hadamard_quant(x: Tensor, out_scale: Scale) -> Tensor:
    """``quantize(x @ H_n^T / sqrt(n), out_scale)`` over the last dim ``n`` of fp16/bf16/fp32 ``x``."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() == 0:
        raise InvalidArgumentError("hadamard_quant needs a floating-point tensor with at least one dimension")
    n = x.shape[-1]
    r, c, r_pad, c_pad, g = tile_plan(n)
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        x = x.float()
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    if m == 0:
        return out
    hc, hr = _factors(n, x.device)
    os_ptr, os_val, os_mode = _scale_arg(out_scale, n, x.device, out)
    tiles = triton.cdiv(m, g)
    grid = (min(tiles, 4 * num_sms(x.device)),)
    in_kind = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}[x2.dtype]
    _hadamard_quant_kernel[grid](
        x2, out, hc, hr, os_ptr, os_val, 1.0 / math.sqrt(n), m, x2.stride(0), n, tiles,
        R=r, C=c, R_PAD=r_pad, C_PAD=c_pad, G=g, HAS_R=r > 1, IN_KIND=in_kind, OS_MODE=os_mode,
        INTERP=interpreting(), num_warps=8 if g * r_pad * c_pad >= 4096 else 4, num_stages=2)
    return out
