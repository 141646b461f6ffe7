"""Fused normalized Hadamard transform + int8 quantization (one read of x, one int8 write).

``H_n = kron(H_R, H_C)`` with ``H_C`` a Sylvester matrix of order ``C <= 256`` and ``H_R`` the
rest of the project's ``hadamard_matrix`` (``kron(H_m, H_{2^j})``). A row viewed as ``X [R, C]``
maps to ``Y = H_R X H_C^T / sqrt(n)``. Tiles are kept transposed (``X^T [C, TM]``, the ``TM``
tile columns being the ``R`` sub-rows of one or more rows): the first product ``H_C X^T`` takes
``X^T`` as the shared-memory operand, and its fp32 result is the register operand of the ``H_R``
mixing, so no layout shuffles sit between the two tensor-core products.

Two launch shapes share one kernel:

* column blocks (few rows, decode): program ``(row, j)`` computes output columns ``j*BC ..`` of
  one row: ``H_C[block, :] X^T`` (the ±1 block from a small cached device table), then the
  mixing. A row's work spreads over ``C / BC`` programs.
* row tiles (prefill): a program owns ``TM // R`` whole rows (tile columns past that are padding;
  the mixing matrix is block diagonal). ``H_C = kron(H_G, H_BK)`` with ``G <= 4``: each
  ``BK``-wide chunk is multiplied by ``H_BK`` once and the ``G`` chunk products are combined by
  fp32 butterflies, so the tensor-core work per element is ``BK``, not ``C``.

Precision: products with ±1 are exact; fp16/bf16 ``x`` feeds the tensor cores directly with fp32
accumulation; fp32 operands (fp32 ``x`` and the intermediate before the ``R`` mixing) are split
into three bf16 pieces (8 significant bits each, so the split is exact). The result can differ
from the reference's fp32 butterflies only by summation-order rounding (and the scale being applied
as one multiplication by ``1 / (sqrt(n) * scale)``), i.e. rare off-by-one int8 codes.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ..errors import InvalidArgumentError
from ..ops import fused_reference as FR
from ..quantization.hadamard import hadamard_matrix, supported_hadamard_size
from ._small_common import ON_GPU, device_scale_arg, round_sat_int8
from .int8_gemm import num_sms
from .pdl import pdl_args, pdl_sync
from .gemv import check_rms
from . import reuse
from .launch import cdiv, launch_for_reuse, next_pow2

Tensor = torch.Tensor
Scale = float | Tensor

_BASES = (1, 12, 20, 28)
_MAX_C = 256
_MAX_RP = 64
_MAX_BK = 64
_TILE = 32


@triton.jit
def _split3(v):
    """Three fp32 values with 8 significant bits each (exact in bf16) that sum exactly to ``v``."""
    hi = (v.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
    r = v - hi
    mid = (r.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
    return hi, mid, r - mid


@triton.jit
def _hdot(h, x, acc, IN_KIND: tl.constexpr):
    """``acc + h @ x`` for ±1 ``h`` (fp16 for fp16 ``x``, else bf16) with exact products."""
    if not ON_GPU:
        return tl.dot(h.to(tl.float32), x.to(tl.float32), acc, input_precision="ieee")
    elif IN_KIND == 2:
        hi, mid, lo = _split3(x)
        acc = tl.dot(h, hi.to(tl.bfloat16), acc)
        acc = tl.dot(h, mid.to(tl.bfloat16), acc)
        return tl.dot(h, lo.to(tl.bfloat16), acc)
    else:
        return tl.dot(h, x, acc)


@triton.jit
def _mix(t, h):
    """``t @ h`` for fp32 ``t`` and ±1 bf16 ``h`` at fp32 accuracy on bf16 tensor cores (``t`` is the
    register operand, so no layout shuffle is needed after the first product)."""
    if not ON_GPU:
        return tl.dot(t, h.to(tl.float32), input_precision="ieee")
    hi, mid, lo = _split3(t)
    acc = tl.dot(hi.to(tl.bfloat16), h)
    acc = tl.dot(mid.to(tl.bfloat16), h, acc)
    return tl.dot(lo.to(tl.bfloat16), h, acc)


@triton.jit
def _finish(tt, hr_t, col0, ooff, soff, ok_t, out_ptr, os_ptr, mult, inv_sqrt_n,
            W: tl.constexpr, C: tl.constexpr, HAS_R: tl.constexpr, OS_MODE: tl.constexpr):
    """``tt [W, TM]`` holds columns ``col0 .. col0+W`` of the tile transposed: mix the tile rows with
    ``H_R``, scale by ``1 / (sqrt(n) * out_scale)`` (``mult`` unless per channel), quantize, store."""
    if HAS_R:
        tt = _mix(tt, hr_t)
    col = col0 + tl.arange(0, W)
    ok = (col < C)[:, None] & ok_t[None, :]
    if OS_MODE == 2:
        s = tl.load(os_ptr + soff[None, :] + col[:, None], mask=ok, other=1.0).to(tl.float32)
        q = round_sat_int8(tt * (inv_sqrt_n / s))
    else:
        q = round_sat_int8(tt * mult)
    tl.store(out_ptr + ooff[None, :] + col[:, None], q, mask=ok)


@triton.jit
def _load_t(x_ptr, xoff, ok_t, c0, W: tl.constexpr, C: tl.constexpr):
    """Columns ``c0 .. c0+W`` of the tile's rows, transposed to ``[W, TM]`` (zeros past ``C``)."""
    col = c0 + tl.arange(0, W)
    x = tl.load(x_ptr + xoff[:, None] + col[None, :], mask=ok_t[:, None] & (col < C)[None, :], other=0.0)
    return tl.trans(x)


@triton.jit
def _row_tile(x_ptr, out_ptr, os_ptr, h, hr_t, mult, inv_sqrt_n, xoff, ooff, soff, ok_t,
              C: tl.constexpr, CP: tl.constexpr, TM: tl.constexpr, BK: tl.constexpr, HAS_R: tl.constexpr,
              IN_KIND: tl.constexpr, OS_MODE: tl.constexpr):
    """All ``C`` columns of one tile: ``H_BK`` products of the ``CP / BK`` chunks, fp32 butterflies
    across chunks (``H_C = kron(H_G, H_BK)``), then the row mixing and quantization per chunk."""
    G: tl.constexpr = CP // BK
    z = tl.zeros([BK, TM], tl.float32)
    if G == 1:
        _finish(_hdot(h, _load_t(x_ptr, xoff, ok_t, 0, BK, C), z, IN_KIND), hr_t, 0, ooff, soff,
                ok_t, out_ptr, os_ptr, mult, inv_sqrt_n, BK, C, HAS_R, OS_MODE)
    elif G == 2:
        x0 = _load_t(x_ptr, xoff, ok_t, 0, BK, C)
        x1 = _load_t(x_ptr, xoff, ok_t, BK, BK, C)
        p0 = _hdot(h, x0, z, IN_KIND)
        p1 = _hdot(h, x1, z, IN_KIND)
        _finish(p0 + p1, hr_t, 0, ooff, soff, ok_t, out_ptr, os_ptr, mult, inv_sqrt_n, BK, C, HAS_R,
                OS_MODE)
        _finish(p0 - p1, hr_t, BK, ooff, soff, ok_t, out_ptr, os_ptr, mult, inv_sqrt_n, BK, C, HAS_R,
                OS_MODE)
    else:
        if IN_KIND == 2:
            p0 = _hdot(h, _load_t(x_ptr, xoff, ok_t, 0, BK, C), z, IN_KIND)
            p1 = _hdot(h, _load_t(x_ptr, xoff, ok_t, BK, BK, C), z, IN_KIND)
            p2 = _hdot(h, _load_t(x_ptr, xoff, ok_t, 2 * BK, BK, C), z, IN_KIND)
            p3 = _hdot(h, _load_t(x_ptr, xoff, ok_t, 3 * BK, BK, C), z, IN_KIND)
        else:
            x0 = _load_t(x_ptr, xoff, ok_t, 0, BK, C)
            x1 = _load_t(x_ptr, xoff, ok_t, BK, BK, C)
            x2 = _load_t(x_ptr, xoff, ok_t, 2 * BK, BK, C)
            x3 = _load_t(x_ptr, xoff, ok_t, 3 * BK, BK, C)
            p0 = _hdot(h, x0, z, IN_KIND)
            p1 = _hdot(h, x1, z, IN_KIND)
            p2 = _hdot(h, x2, z, IN_KIND)
            p3 = _hdot(h, x3, z, IN_KIND)
        s0 = p0 + p1
        d0 = p0 - p1
        s1 = p2 + p3
        d1 = p2 - p3
        _finish(s0 + s1, hr_t, 0, ooff, soff, ok_t, out_ptr, os_ptr, mult, inv_sqrt_n, BK, C, HAS_R,
                OS_MODE)
        _finish(d0 + d1, hr_t, BK, ooff, soff, ok_t, out_ptr, os_ptr, mult, inv_sqrt_n, BK, C, HAS_R,
                OS_MODE)
        _finish(s0 - s1, hr_t, 2 * BK, ooff, soff, ok_t, out_ptr, os_ptr, mult, inv_sqrt_n, BK, C, HAS_R,
                OS_MODE)
        _finish(d0 - d1, hr_t, 3 * BK, ooff, soff, ok_t, out_ptr, os_ptr, mult, inv_sqrt_n, BK, C, HAS_R,
                OS_MODE)


@triton.jit
def _hadamard_quant_kernel(x_ptr, out_ptr, hc_ptr, hr_ptr, os_ptr, ss_ptr, os_mult, inv_sqrt_n, eps,
                           M, stride_xm, stride_om, s_ssm,
                           R: tl.constexpr, C: tl.constexpr, CP: tl.constexpr, PR: tl.constexpr,
                           TM: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr, COL_SPLIT: tl.constexpr,
                           IN_KIND: tl.constexpr, OS_MODE: tl.constexpr,
                           GROUP: tl.constexpr, USE_PDL: tl.constexpr):
    """``GROUP > 0`` (column blocks only): the input is first RMS-normalized per group of ``GROUP``
    columns (a multiple of ``C``) from the sums of squares ``ss [M, n / GROUP]``."""
    pdl_sync(USE_PDL)
    HAS_R: tl.constexpr = R > 1
    q = tl.arange(0, TM)
    sub = q // R
    b = q % R
    if HAS_R:
        hr_t = tl.load(hr_ptr + q[None, :] * TM + q[:, None])
    else:
        hr_t = 0.0
    if OS_MODE == 1:
        mult = inv_sqrt_n / tl.load(os_ptr).to(tl.float32)
    else:
        mult = os_mult
    if COL_SPLIT:
        row = tl.program_id(0).to(tl.int64) * PR + sub
        ok_t = (sub < PR) & (row < M)
        xoff = row * stride_xm + b * C
        ooff = row * stride_om + b * C
        col0 = tl.program_id(1) * BC
        j = col0 + tl.arange(0, BC)
        acc = tl.zeros([BC, TM], tl.float32)
        for k0 in tl.static_range(0, CP, BK):
            k = k0 + tl.arange(0, BK)
            h = tl.load(hc_ptr + k[None, :] * CP + j[:, None])
            acc = _hdot(h, _load_t(x_ptr, xoff, ok_t, k0, BK, C), acc, IN_KIND)
        if GROUP > 0:  # H_C acts within tile columns (sub-rows): scaling them now scales the input
            ss = tl.load(ss_ptr + row * s_ssm + (b * C) // GROUP, mask=ok_t, other=0.0)
            acc = acc * tl.rsqrt(ss / GROUP + eps)[None, :]
        _finish(acc, hr_t, col0, ooff, b * C, ok_t, out_ptr, os_ptr, mult, inv_sqrt_n, BC, C, HAS_R, OS_MODE)
    else:
        k = tl.arange(0, BK)
        h = tl.load(hc_ptr + k[None, :] * CP + k[:, None])
        for tile in range(tl.program_id(0), tl.cdiv(M, PR), tl.num_programs(0)):
            row = (tile * PR + sub).to(tl.int64)
            ok_t = (sub < PR) & (row < M)
            _row_tile(x_ptr, out_ptr, os_ptr, h, hr_t, mult, inv_sqrt_n, row * stride_xm + b * C,
                      row * stride_om + b * C, b * C, ok_t, C, CP, TM, BK, HAS_R, IN_KIND, OS_MODE)


@functools.lru_cache(maxsize=None)
def tile_plan(n: int) -> tuple[int, int, int, int]:
    """``(R, C, RP, CP)``: a row is ``R x C`` (``n = R*C``, ``H_n = kron(H_R, H_C)``, ``C`` a power of
    two), padded to ``RP x CP`` for ``tl.dot`` (``RP = 1`` when ``R = 1``: no row mixing)."""
    if not supported_hadamard_size(n):
        raise InvalidArgumentError(f"no Hadamard transform of size {n}")
    m = next(b for b in _BASES if n % b == 0 and (n // b) & (n // b - 1) == 0)
    p = n // m
    c = min(p, _MAX_C) if m > 1 or p <= _MAX_C else min(_MAX_C, p // 16)
    r = n // c
    rp = 1 if r == 1 else max(16, next_pow2(r))
    if rp > _MAX_RP:
        raise InvalidArgumentError(f"hadamard_quant supports sizes with at most {_MAX_RP} rows of "
                                   f"{_MAX_C}, got {n}")
    return r, c, rp, max(16, c)


@functools.lru_cache(maxsize=None)
def _tables(n: int, tm: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Zero-padded ``H_C^T [CP, CP]`` in the dot dtype and ``kron(I_{tm // R}, H_R)`` zero-padded to
    ``[tm, tm]`` in bf16 (the row mixing of a tile that packs ``tm // R`` rows), on ``device``."""
    r, c, rp, cp = tile_plan(n)
    hc = torch.zeros(cp, cp)
    hc[:c, :c] = hadamard_matrix(c, torch.float32).t()
    k = tm // r
    hr = torch.zeros(tm, tm)
    hr[:k * r, :k * r] = torch.kron(torch.eye(k), hadamard_matrix(r, torch.float32))
    return hc.to(device=device, dtype=dtype), hr.to(device=device, dtype=torch.bfloat16)


def _col_block(cp: int, row_tiles: int) -> int:
    if row_tiles <= 8:
        return min(16, cp)
    return min(32 if row_tiles <= 32 else 64, cp)


def launch_hadamard(x2: Tensor, out: Tensor, out_scale: Scale, col_split: bool | None = None, bk: int | None = None,
           bc: int | None = None, warps: int | None = None, tm: int | None = None, stages: int | None = None,
           programs: int | None = None, rms: tuple[Tensor, int, float] | None = None, pdl: bool = True) -> tuple:
    """Run the kernel on ``x2 [M, n]`` (unit column stride) into int8 ``out [M, n]``.

    The keyword arguments override the launch shape (tests and the benchmark sweep): ``tm`` tile width
    (rows of length ``C`` per tile, packing ``tm // R`` rows), ``bk``/``bc`` column chunk/block,
    ``programs`` caps the row-tile grid (the programs then loop over tiles). ``rms = (ss, group, eps)``
    (column blocks only; ``group`` a multiple of ``C``) normalizes the input first, as in ``rms_linear``.
    ``pdl=False`` launches without programmatic dependent launch even inside a capture.
    Returns ``launch_for_reuse``'s result and the long-lived tensors the launch reads (for ``reuse.record``)."""
    m, n = x2.shape
    r, c, rp, cp = tile_plan(n)
    if rms is not None:
        col_split = True
    if col_split is None:
        col_split = cdiv(m, max(rp, _TILE) // r) < num_sms(x2.device)
    if col_split:
        tm = tm or (rp if r > 1 else 16)
        per = 1 if r > 1 else tm
    else:
        tm = tm or max(rp, _TILE)
        per = tm // r
    if tm < max(rp, 16) or tm & (tm - 1):
        raise InvalidArgumentError(f"bad hadamard_quant tile width {tm} for R={r}")
    row_tiles = cdiv(m, per)
    if col_split:
        bk = bk or (cp if x2.dtype != torch.float32 else min(_MAX_BK, cp))
        bc = bc or _col_block(cp, row_tiles)
        grid = (row_tiles, cp // bc)
    else:
        bk = bk or min(_MAX_BK if tm <= _TILE else 2 * _MAX_BK, cp)
        bc = bk
        grid = (min(row_tiles, programs or row_tiles),)
    if cp % bc or cp % bk or (not col_split and cp // bk > 4) or bc < 16 or bk < 16:
        raise InvalidArgumentError(f"bad hadamard_quant blocks bk={bk} bc={bc} for C={cp}")
    warps = warps or (8 if not col_split and tm > _TILE else 4)
    in_kind = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}[x2.dtype]
    hc, hr = _tables(n, tm, torch.float16 if in_kind == 0 else torch.bfloat16, x2.device)
    if out_scale is None:
        raise InvalidArgumentError("hadamard_quant needs an out_scale")
    os_ptr, os_val, os_mode = device_scale_arg(out_scale, n, "out_scale", x2.device, out)
    inv_sqrt_n = 1.0 / math.sqrt(n)
    mult = inv_sqrt_n / os_val if os_val != 0 else math.copysign(math.inf, os_val)
    ss, group, eps = rms if rms is not None else (out, 0, 0.0)
    made = launch_for_reuse(_hadamard_quant_kernel, grid,
                            x2, out, hc, hr, os_ptr, ss, mult, inv_sqrt_n, float(eps), m, x2.stride(0), out.stride(0),
                            ss.stride(0) if rms is not None else 0,
                            R=r, C=c, CP=cp, PR=per, TM=tm, BK=bk, BC=bc, COL_SPLIT=col_split, IN_KIND=in_kind,
                            OS_MODE=os_mode, GROUP=group, num_warps=warps, num_stages=stages or 1,
                            **(pdl_args(x2, eager=True) if pdl else {"USE_PDL": False}))
    return made, (hc, hr, os_ptr)


def hadamard_quant(x: Tensor, out_scale: Scale) -> Tensor:
    """``quantize(x @ H_n^T / sqrt(n), out_scale)`` over the last dim ``n`` of fp16/bf16/fp32 ``x``."""
    key = None
    if reuse.ENABLED and isinstance(x, Tensor):
        key = (reuse.signature(x), reuse.scalar_or_fixed(out_scale), pdl_args(x, eager=True)["USE_PDL"])
        hit = _REPLAYS.get_usable(key)
        if hit is not None:
            return hit.run([x])[0]
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() == 0:
        raise InvalidArgumentError("hadamard_quant needs a floating-point tensor with at least one dimension")
    n = x.shape[-1]
    tile_plan(n)
    x2 = (x if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else x.float()).reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    if x2.shape[0] == 0:
        return out
    made, constants = launch_hadamard(x2, out.view(-1, n), out_scale)
    if key is not None:
        _REPLAYS.keep(key, reuse.record([made], [x], [out], constants))
    return out


_REPLAYS = reuse.ReplayTable()


def rms_hadamard_quant(gw: Tensor, ss: Tensor, group: int, eps: float, out_scale: Scale) -> Tensor:
    """The gated RMSNorm finished on load, then ``hadamard_quant``: see ``fused_reference.rms_hadamard_quant``.

    Launched without PDL: at decode its few heavy programs follow the SSD update; started early, they
    land on SMs that the SSD update's programs still hold (H200, mamba2-2.7b W8A8 TPOT 1.983 ms with
    PDL, 1.838 without it on this launch, 1.873 for the unfused six-kernel chain)."""
    if gw.dim() != 2 or not gw.is_floating_point():
        raise InvalidArgumentError(f"gw must be a float [B, n] tensor, got {gw.dtype} {tuple(gw.shape)}")
    m, n = gw.shape
    r, c, _, _ = tile_plan(n)
    check_rms(ss, group, m, n)
    if group % c or gw.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return FR.rms_hadamard_quant(gw, ss, group, eps, out_scale)
    x2 = gw if gw.stride(-1) == 1 else gw.contiguous()
    out = torch.empty((m, n), dtype=torch.int8, device=gw.device)
    if m:
        launch_hadamard(x2, out, out_scale, rms=(ss, group, eps), pdl=False)
    return out
