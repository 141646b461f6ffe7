"""Weight-streaming GEMV for decode: ``y = x @ W^T (+ b)`` with few rows (M <= 8) in fp16/bf16/fp32.

At decode the linear layers read every weight once per token, so they are bound by memory
bandwidth; cuBLAS reaches only ~1.3 TB/s of the H200's ~4.2 TB/s at M=1. Each program here owns a
few output rows and streams their contiguous K-long weight rows in wide tiles, accumulating
elementwise in fp32 registers and reducing once at the end. Larger M goes to ``F.linear``
(cuBLAS), which is compute-efficient there. Reference: ``quamba.ops.reference.linear``.

Int8 twins (W8A8 decode, exact int32 accumulation, the shared ``int8_gemm`` epilogue): an
elementwise kernel, and kernels that read both operands as int32 words of 4 codes and multiply them
with one ``dp4a`` each (fewer load and unpack instructions per byte, the int8 kernel's limit).
``int8_gemv_plan`` names the variant and tiles per shape; ``launch_int8_gemv`` dispatches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..errors import InvalidArgumentError
from ..ops import fused_reference as FR
from .int8_gemm import _epilogue, interpreting
from .pdl import pdl_args, pdl_sync
from .launch import launch, cdiv, next_pow2

MAX_M = 8


@triton.jit
def gemv_rows(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``(rn, rm, n_ok, m_ok)``: the output rows (weight rows) of this program and the activation rows."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    return rn, rm, rn < N, rm < M


@triton.jit
def _x_tile(x_ptr, rm, m_ok, k0, rk, k_ok, stride_xm, ACC: tl.constexpr, ss_ptr, s_ssm, eps,
            RMS: tl.constexpr, GROUP: tl.constexpr):
    """Activation columns ``rk`` (from ``k0``) of rows ``rm`` in ``ACC``. ``RMS`` finishes an RMSNorm from
    its per-group sums of squares ``ss [M, K / GROUP]``: each column times ``rsqrt(ss / GROUP + eps)`` of
    its group, looked up once per tile (``RMS == 1``: the tile lies in one group) or per column (2)."""
    x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0).to(ACC)
    if RMS == 1:
        ss = tl.load(ss_ptr + rm * s_ssm + k0 // GROUP, mask=m_ok, other=0.0)
        x = x * tl.rsqrt(ss / GROUP + eps)[:, None]
    elif RMS == 2:
        ss = tl.load(ss_ptr + rm[:, None] * s_ssm + rk[None, :] // GROUP, mask=m_ok[:, None] & k_ok[None, :],
                     other=0.0)
        x = x * tl.rsqrt(ss / GROUP + eps)
    return x


@triton.jit
def _row_dots(x_ptr, w_ptr, rm, rn, m_ok, n_ok, K, stride_xm, stride_wn, ss_ptr, s_ssm, eps,
              ACC: tl.constexpr, BLOCK_K: tl.constexpr, RMS: tl.constexpr, GROUP: tl.constexpr,
              USE_PDL: tl.constexpr):
    """``x[rm] . w[rn]`` over K in ``ACC`` (fp32, or exact int32 for int8), streaming ``BLOCK_K``-wide
    tiles and reducing once at the end; the first weight tile loads before ``pdl_sync``.
    ``RMS``, ``GROUP``: see ``_x_tile``."""
    rk = tl.arange(0, BLOCK_K)
    k_ok = rk < K
    w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
    pdl_sync(USE_PDL)
    x = _x_tile(x_ptr, rm, m_ok, 0, rk, k_ok, stride_xm, ACC, ss_ptr, s_ssm, eps, RMS, GROUP)
    acc = x[:, None, :] * w.to(ACC)[None, :, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
        x = _x_tile(x_ptr, rm, m_ok, k0, rk, k_ok, stride_xm, ACC, ss_ptr, s_ssm, eps, RMS, GROUP)
        acc += x[:, None, :] * w.to(ACC)[None, :, :]
    return tl.sum(acc, axis=2)


@triton.jit
def _add_norm(y, rm, rn, m_ok, n_ok, res_ptr, s_rm, nw_ptr, ss_ptr, s_ssm, OUT: tl.constexpr):
    """Residual add + the first half of the next RMSNorm on output tile ``y``: ``residual += h`` (``h`` =
    ``y`` rounded to ``OUT``, in place, in the residual's dtype), ``sum(r^2)`` of the rows added into
    ``ss[m]`` (fp32 atomics) and ``r * norm_w`` returned, with ``r`` the residual rounded to ``OUT``."""
    mask = m_ok[:, None] & n_ok[None, :]
    rp = res_ptr + rm[:, None] * s_rm + rn[None, :]
    r = (tl.load(rp, mask=mask, other=0.0).to(tl.float32) + y.to(OUT).to(tl.float32)).to(res_ptr.dtype.element_ty)
    tl.store(rp, r, mask=mask)
    r = r.to(OUT).to(tl.float32)
    tl.atomic_add(ss_ptr + rm * s_ssm, tl.sum(r * r, axis=1), mask=m_ok, sem="relaxed")
    return r * tl.load(nw_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]


@triton.jit
def zero_scratch(zero_ptr, NZERO, BLOCK_Z: tl.constexpr):
    """Program 0 zeroes the ``NZERO`` leading elements of a scratch buffer (call after ``pdl_sync``)."""
    if tl.program_id(0) == 0:
        rz = tl.arange(0, BLOCK_Z)
        tl.store(zero_ptr + rz, tl.zeros((BLOCK_Z,), dtype=zero_ptr.dtype.element_ty), mask=rz < NZERO)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ss_ptr, res_ptr, nw_ptr, ss2_ptr, zero_ptr,
                 M, N, K, NZERO, stride_xm, stride_wn, stride_ym, s_ssm, s_rm, s_ss2m, eps,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 RMS: tl.constexpr, GROUP: tl.constexpr, ADD_NORM: tl.constexpr, BLOCK_Z: tl.constexpr,
                 USE_PDL: tl.constexpr):
    rn, rm, n_ok, m_ok = gemv_rows(M, N, BLOCK_M, BLOCK_N)
    y = _row_dots(x_ptr, w_ptr, rm, rn, m_ok, n_ok, K, stride_xm, stride_wn, ss_ptr, s_ssm, eps, tl.float32,
                  BLOCK_K, RMS, GROUP, USE_PDL)
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if ADD_NORM:
        y = _add_norm(y, rm, rn, m_ok, n_ok, res_ptr, s_rm, nw_ptr, ss2_ptr, s_ss2m, x_ptr.dtype.element_ty)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])
    if BLOCK_Z > 0:
        zero_scratch(zero_ptr, NZERO, BLOCK_Z)


def fp16_plan(n: int, k: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_K, num_warps)`` for M <= 2, from a CUDA-graph sweep on the H200
    (benchmarks/gemv_sweep.py): two rows per program, long K tiles; 3.2 TB/s on in_proj of
    mamba-2.8b, 4.0 TB/s on its LM head. Autotuning at run time cannot pick these: outside a graph
    every candidate is launch-bound and times the same."""
    if k <= 256:
        return 4, 256, 2
    if n <= 512:
        return 1, 2048, 4
    return (2, 512, 2) if k <= 4096 else (2, 1024, 4)


def decode_tiles(m: int, n: int, k: int) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps)`` of an fp decode GEMV: ``fp16_plan``'s tiles, the channel
    tile narrowed as the padded row count grows past 2 (same work per program)."""
    bm = max(1, next_pow2(m))
    bn, bk, warps = fp16_plan(n, k)
    if bm > 2:
        bn = max(1, bn * 2 // bm)
    return bm, bn, bk, warps


def rms_plan(rms: tuple[torch.Tensor, int, float] | None, block_k: int, dummy: torch.Tensor
             ) -> tuple[tuple[torch.Tensor, int, float, int], int]:
    """``((ss, group, eps, RMS mode), BLOCK_K)`` for ``_x_tile``: the K tile halved (down to 64) until it
    divides the norm group (mode 1, one rsqrt per tile), else mode 2 (per column); mode 0 without ``rms``."""
    if rms is None:
        return (dummy, 1, 0.0, 0), block_k
    ss, group, eps = rms
    while block_k > 64 and group % block_k:
        block_k //= 2
    return (ss, group, float(eps), 1 if group % block_k == 0 else 2), block_k


def check_rms(ss: torch.Tensor, group: int, m: int, k: int) -> None:
    """``ss`` must hold one sum of squares per row and group of ``group`` of the ``k`` columns, ``[m, k / group]``
    with unit column stride (``_x_tile``'s and the Hadamard kernel's layout)."""
    if not (group > 0 and k % group == 0 and tuple(ss.shape) == (m, k // group) and ss.stride(-1) == 1):
        raise InvalidArgumentError(f"ss {tuple(ss.shape)} does not hold groups of {group} of {k} columns")


def scratch_plan(zero: torch.Tensor | None) -> tuple[int, int]:
    """``(NZERO, BLOCK_Z)`` of ``zero_scratch`` for an optional scratch tensor, which must be contiguous
    (``BLOCK_Z = 0``: nothing to zero)."""
    if zero is None:
        return 0, 0
    if not zero.is_contiguous():
        raise InvalidArgumentError("zero must be contiguous")
    return zero.numel(), next_pow2(zero.numel()) if zero.numel() else 0


def gemv(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         block_n: int | None = None, block_k: int | None = None, num_warps: int | None = None,
         rms: tuple[torch.Tensor, int, float] | None = None,
         add_norm: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
         zero: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x2 [M, K] @ weight[N, K]^T`` for M <= 8 through the Triton kernel (``block_n``, ``block_k``,
    ``num_warps`` override ``decode_tiles``' plan), in ``out_dtype`` (default x2's).

    - ``rms = (ss [M, K / group] fp32, group, eps)`` first scales each column by ``rsqrt(ss / group + eps)``
      of its group (once per K tile when a power-of-two tile of >= 64 columns divides the group, else
      per column).
    - ``add_norm = (residual [M, N], norm_w [N], ss_out [M, 1] fp32)``: the epilogue of ``_add_norm``;
      the result is then ``residual * norm_w`` (see ``fused_reference.linear_add_norm``).
    - ``zero``: a contiguous scratch tensor that program 0 zeroes.
    """
    m, k = x2.shape
    n = weight.shape[0]
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    y = torch.empty(m, n, device=x2.device, dtype=out_dtype or x2.dtype)
    bm, bn, bk, warps = decode_tiles(m, n, k)
    bn, bk, warps = block_n or bn, block_k or bk, num_warps or warps
    (ss, group, eps, mode), bk = rms_plan(rms, bk, weight)
    res, nw, ss2 = add_norm if add_norm is not None else (weight, weight, weight)
    nz, bz = scratch_plan(zero)
    launch(_gemv_kernel, (cdiv(n, bn),), x2, weight, bias if bias is not None else weight, y, ss, res, nw, ss2,
           zero if zero is not None else weight, m, n, k, nz, x2.stride(0), weight.stride(0), y.stride(0),
           ss.stride(0) if rms is not None else 0, res.stride(0) if add_norm is not None else 0,
           ss2.stride(0) if add_norm is not None else 0, float(eps),
           HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, RMS=mode, GROUP=group,
           ADD_NORM=add_norm is not None, BLOCK_Z=bz, num_warps=warps, **pdl_args(x2))
    return y


def linear_add_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor,
                    norm_w: torch.Tensor, ss: torch.Tensor,
                    rms: tuple[torch.Tensor, int, float] | None = None) -> torch.Tensor:
    """A block's ``out_proj`` with the residual add and the first half of the next RMSNorm in its
    epilogue; see ``fused_reference.linear_add_norm``."""
    if x.dim() != 2:
        raise InvalidArgumentError(f"x must be [B, K], got {tuple(x.shape)}")
    m, k = x.shape
    n = weight.shape[0]
    if tuple(residual.shape) != (m, n) or residual.stride(-1) != 1:
        raise InvalidArgumentError(f"residual must be a row-contiguous {(m, n)}, got {tuple(residual.shape)}")
    if tuple(norm_w.shape) != (n,) or not norm_w.is_contiguous():
        raise InvalidArgumentError(f"norm weight must be a contiguous ({n},), got {tuple(norm_w.shape)}")
    if tuple(ss.shape) != (m, 1) or ss.dtype != torch.float32:
        raise InvalidArgumentError(f"ss must be fp32 {(m, 1)}, got {ss.dtype} {tuple(ss.shape)}")
    if rms is not None:
        check_rms(rms[0], rms[1], m, k)
    if m == 0 or m > MAX_M or x.dtype != weight.dtype:
        return FR.linear_add_norm(x, weight, bias, residual, norm_w, ss, rms)
    return gemv(x, weight, bias, rms=rms, add_norm=(residual, norm_w, ss))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` semantics; rows <= 8 stream the weight through the GEMV kernel."""
    lead = x.shape[:-1]
    m = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if m == 0 or m > MAX_M or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    return gemv(x.reshape(m, x.shape[-1]), weight, bias).reshape(*lead, weight.shape[0])


@triton.jit
def _int8_gemv_kernel(x_ptr, w_ptr, out_ptr, xs_ptr, xs_val, ws_ptr, ws_val, b_ptr, os_ptr, os_val,
                      M, N, K, stride_xm, stride_wn, stride_om,
                      XS_MODE: tl.constexpr, WS_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, OS_MODE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    """Int8 twin of ``_gemv_kernel``: exact int32 accumulation, then the shared int8 epilogue."""
    rn, rm, n_ok, m_ok = gemv_rows(M, N, BLOCK_M, BLOCK_N)
    acc = _row_dots(x_ptr, w_ptr, rm, rn, m_ok, n_ok, K, stride_xm, stride_wn, x_ptr, 0, 0.0, tl.int32,
                    BLOCK_K, 0, 1, USE_PDL)
    _epilogue(acc, rm[:, None], rn[None, :], M, N, out_ptr, stride_om,
              xs_ptr, xs_val, ws_ptr, ws_val, b_ptr, os_ptr, os_val, XS_MODE, WS_MODE, HAS_BIAS, OS_MODE)


@triton.jit
def _dot4(w, x, acc, USE_DP4A: tl.constexpr):
    """``acc + sum_i w.byte[i] * x.byte[i]`` over the 4 signed int8 codes packed in each int32 word."""
    if USE_DP4A:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [w, x, acc],
                                         dtype=tl.int32, is_pure=True, pack=1)
    else:
        for i in tl.static_range(4):
            acc += ((w << (24 - 8 * i)) >> 24) * ((x << (24 - 8 * i)) >> 24)
        return acc


@triton.jit
def word_dots(x_ptr, w_ptr, rm, rn, M, N, K4, stride_xm4, stride_wn4, USE_DP4A: tl.constexpr,
              PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K4: tl.constexpr,
              USE_PDL: tl.constexpr):
    """``x[rm] . w[rn]`` in exact int32 ``[BLOCK_M, BLOCK_N]`` over int32 words (4 codes each, ``K4 = K / 4``):
    one dp4a per word, 16-byte loads.

    Rows past ``N`` / ``M`` are clamped on load (so whole K tiles load unmasked); the caller masks them.
    ``PREFETCH`` (needs ``K4 >= BLOCK_K4``) issues the loads of the next K tile before multiplying the
    current one, doubling the bytes each thread keeps in flight (the last tile is loaded twice, from
    cache). A masked tail tile covers ``K4 % BLOCK_K4``. The first weight tile is loaded before
    ``pdl_sync`` (weights do not depend on the previous kernel).
    """
    rk = tl.arange(0, BLOCK_K4)
    w_ptrs = w_ptr.to(tl.pointer_type(tl.int32)) + tl.minimum(rn, N - 1)[:, None] * stride_wn4 + rk[None, :]
    x_ptrs = x_ptr.to(tl.pointer_type(tl.int32)) + tl.minimum(rm, M - 1)[:, None] * stride_xm4 + rk[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K4), dtype=tl.int32)
    k_full = (K4 // BLOCK_K4) * BLOCK_K4
    if PREFETCH:
        last = k_full - BLOCK_K4
        w = tl.load(w_ptrs)
        pdl_sync(USE_PDL)
        x = tl.load(x_ptrs)
        for k0 in range(0, k_full, BLOCK_K4):
            nxt = tl.minimum(k0 + BLOCK_K4, last)
            w_n = tl.load(w_ptrs + nxt)
            x_n = tl.load(x_ptrs + nxt)
            acc = _dot4(w[None, :, :], x[:, None, :], acc, USE_DP4A)
            w = w_n
            x = x_n
        k_tail = k_full
    else:
        first = (rk < K4)[None, :]
        w = tl.load(w_ptrs, mask=first, other=0)
        pdl_sync(USE_PDL)
        x = tl.load(x_ptrs, mask=first, other=0)
        acc = _dot4(w[None, :, :], x[:, None, :], acc, USE_DP4A)
        for k0 in range(BLOCK_K4, k_full, BLOCK_K4):
            w = tl.load(w_ptrs + k0)
            x = tl.load(x_ptrs + k0)
            acc = _dot4(w[None, :, :], x[:, None, :], acc, USE_DP4A)
        k_tail = tl.maximum(k_full, BLOCK_K4)
    for k0 in range(k_tail, K4, BLOCK_K4):
        k_ok = (k0 + rk) < K4
        w_t = tl.load(w_ptrs + k0, mask=k_ok[None, :], other=0)
        x_t = tl.load(x_ptrs + k0, mask=k_ok[None, :], other=0)
        acc = _dot4(w_t[None, :, :], x_t[:, None, :], acc, USE_DP4A)
    return tl.sum(acc, axis=2)


@triton.jit
def _int8_gemv4_kernel(x_ptr, w_ptr, out_ptr, xs_ptr, xs_val, ws_ptr, ws_val, b_ptr, os_ptr, os_val,
                       M, N, K4, stride_xm4, stride_wn4, stride_om,
                       XS_MODE: tl.constexpr, WS_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, OS_MODE: tl.constexpr,
                       USE_DP4A: tl.constexpr, PREFETCH: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K4: tl.constexpr, USE_PDL: tl.constexpr):
    """Int8 GEMV on int32 words (``word_dots``), then the shared int8 epilogue."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    acc = word_dots(x_ptr, w_ptr, rm, rn, M, N, K4, stride_xm4, stride_wn4, USE_DP4A, PREFETCH,
                    BLOCK_M, BLOCK_N, BLOCK_K4, USE_PDL)
    _epilogue(acc, rm[:, None], rn[None, :], M, N, out_ptr, stride_om,
              xs_ptr, xs_val, ws_ptr, ws_val, b_ptr, os_ptr, os_val, XS_MODE, WS_MODE, HAS_BIAS, OS_MODE)


# variant -> (USE_DP4A, PREFETCH) of the word kernel; "ew" is the elementwise int8 kernel. "i32" is the
# word kernel with shift unpacking instead of dp4a (what the interpreter runs for every word variant).
INT8_VARIANTS = {"ew": None, "dp4a": (True, False), "dp4a_pf": (True, True), "i32": (False, False),
                 "i32_pf": (False, True)}


def int8_gemv_plan(n: int, k: int) -> tuple[str, int, int, int]:
    """``(variant, BLOCK_N, BLOCK_K bytes, num_warps)`` of the int8 decode GEMV for M = 1 (BLOCK_N is
    divided by the padded M), from the H200 CUDA-graph sweep (benchmarks/gemv_sweep.py, M=1): in_proj
    10240x2560 9.0 us (2.9 TB/s, elementwise was 12.7 us), out_proj 2560x5120 6.0 us, x_proj 3.0 us,
    dt_proj 2.4 us, LM head 50280x2560 33 us (3.9 TB/s)."""
    if n <= 512:
        return "dp4a", 1, 4096, 4
    if k <= 256:
        return "dp4a_pf", 16, 256, 4
    if k <= 4096:
        return ("dp4a", 16, 256, 4) if n >= 32768 else ("dp4a", 4, 512, 2)
    return "dp4a_pf", 2, 1024, 2


def _words_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether both int8 operands can be read as int32 words (K, row strides and bases 4-aligned)."""
    return (x.shape[1] % 4 == 0 and x.stride(0) % 4 == 0 and w.stride(0) % 4 == 0
            and x.data_ptr() % 4 == 0 and w.data_ptr() % 4 == 0)


def launch_int8_gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, ep: dict, block_n: int, block_k: int,
                     num_warps: int = 4, variant: str | None = None) -> None:
    """Int8 GEMV of contiguous-row ``x [M, K]`` and ``w [N, K]`` (``ep`` from ``int8_gemm.epilogue_args``).

    ``variant`` (a key of ``INT8_VARIANTS``; default: ``int8_gemv_plan``'s) selects the kernel; the word
    variants fall back to the elementwise one when K or the rows are not 4-byte aligned, and run
    dp4a as shift unpacking under the interpreter (no inline assembly there).
    """
    m, k = x.shape
    n = w.shape[0]
    if variant is None:
        variant = int8_gemv_plan(n, k)[0]
    if variant not in INT8_VARIANTS:
        raise InvalidArgumentError(f"unknown int8 GEMV variant {variant!r}; one of {sorted(INT8_VARIANTS)}")
    scales, flags = ep["scales"], ep["flags"]
    bm = max(1, next_pow2(m))
    grid = (cdiv(n, block_n),)
    if INT8_VARIANTS[variant] is None or not _words_ok(x, w):
        launch(_int8_gemv_kernel, grid, x, w, out, *scales, m, n, k, x.stride(0), w.stride(0), out.stride(0), **flags,
               BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps,
               **pdl_args(x))
        return
    dp4a, prefetch = INT8_VARIANTS[variant]
    block_k4 = max(1, block_k // 4)
    launch(_int8_gemv4_kernel, grid, x, w, out, *scales, m, n, k // 4, x.stride(0) // 4, w.stride(0) // 4,
           out.stride(0),
           **flags, USE_DP4A=dp4a and not interpreting(), PREFETCH=prefetch and k >= block_k4 * 4,
           BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K4=block_k4, num_warps=num_warps,
           **pdl_args(x))


def int8_gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, ep: dict) -> None:
    """``launch_int8_gemv`` with the plan of ``int8_gemv_plan`` (channel tile divided by the padded M)."""
    m, k = x.shape
    variant, bn, bk, warps = int8_gemv_plan(w.shape[0], k)
    launch_int8_gemv(x, w, out, ep, max(1, bn // next_pow2(m)), bk, warps, variant)
