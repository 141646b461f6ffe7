"""One-token SSM decode steps (Mamba1 selective state update, Mamba2 SSD state update), fp and int8.

One launch per call; the state is read once and written once, in place. Mamba1: each program owns
``BLOCK_D`` channels x all ``N`` states; Mamba2: each program owns ``BLOCK_P`` rows of one head's
``[P, N]`` state. The int8 variants dequantize the int8 state and inputs with per-tensor scales,
run the same fp32 math, write the new state back as int8 (round half to even, saturate) and compute
the output from the unrounded fp32 state, as ``quamba.ops.qreference`` does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._small_common import (channel_vector, load_scale, per_tensor_scale_arg, pow2, quantize_int8, silu,
                            softplus)
from .pdl import pdl_args, pdl_sync
from .launch import launch, cdiv
from ..errors import InvalidArgumentError

Tensor = torch.Tensor
_NO_LIMIT = (0.0, float("inf"))
_TARGET_PROGRAMS = 264  # two per SM on an H200 (132 SMs)


@triton.jit
def _deq(ptr, offs, mask, s_ptr, s_val, QUANT: tl.constexpr, S_MODE: tl.constexpr):
    v = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if QUANT:
        v = v * load_scale(s_ptr, s_val, 0, True, S_MODE)
    return v


@triton.jit
def _selective_update_kernel(
        st_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, y_ptr,
        sst_ptr, sst_val, xs_ptr, xs_val, dts_ptr, dts_val, Bs_ptr, Bs_val, Cs_ptr, Cs_val, zs_ptr, zs_val,
        DIM, N,
        s_sb, s_sd, s_sn, s_xb, s_xd, s_dtb, s_dtd, s_ad, s_an, s_bb, s_bn, s_cb, s_cn, s_zb, s_zd, s_yb,
        QUANT: tl.constexpr, SST_M: tl.constexpr, XS_M: tl.constexpr, DTS_M: tl.constexpr,
        BS_M: tl.constexpr, CS_M: tl.constexpr, ZS_M: tl.constexpr,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md = offs_d < DIM
    mn = offs_n < N
    m2 = md[:, None] & mn[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=m2, other=0.0).to(tl.float32)
    st_offs = b * s_sb + offs_d[:, None] * s_sd + offs_n[None, :] * s_sn
    h = _deq(st_ptr, st_offs, m2, sst_ptr, sst_val, QUANT, SST_M)  # written by an earlier step only
    pdl_sync(USE_PDL)
    x = _deq(x_ptr, b * s_xb + offs_d * s_xd, md, xs_ptr, xs_val, QUANT, XS_M)
    dt = _deq(dt_ptr, b * s_dtb + offs_d * s_dtd, md, dts_ptr, dts_val, QUANT, DTS_M)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    Bv = _deq(B_ptr, b * s_bb + offs_n * s_bn, mn, Bs_ptr, Bs_val, QUANT, BS_M)
    Cv = _deq(C_ptr, b * s_cb + offs_n * s_cn, mn, Cs_ptr, Cs_val, QUANT, CS_M)
    h = h * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv[None, :]
    if QUANT:
        tl.store(st_ptr + st_offs, quantize_int8(h, load_scale(sst_ptr, sst_val, 0, True, SST_M)), mask=m2)
    else:
        tl.store(st_ptr + st_offs, h.to(st_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_Z:
        y *= silu(_deq(z_ptr, b * s_zb + offs_d * s_zd, md, zs_ptr, zs_val, QUANT, ZS_M))
    tl.store(y_ptr + b * s_yb + offs_d, y.to(y_ptr.dtype.element_ty), mask=md)


@triton.jit
def _ssd_update_kernel(
        st_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dtb_ptr, y_ptr, z_ptr, nw_ptr, ss_ptr,
        sst_ptr, sst_val, xs_ptr, xs_val, dts_ptr, dts_val, Bs_ptr, Bs_val, Cs_ptr, Cs_val, zs_ptr, zs_val,
        P, N, HPG, NORM_GROUP, dt_lo, dt_hi,
        s_sb, s_sh, s_sp, s_sn, s_xb, s_xh, s_xp, s_dtb, s_dth, s_bb, s_bg, s_bn, s_cb, s_cg, s_cn,
        s_yb, s_yh, s_zb, s_ssb,
        QUANT: tl.constexpr, SST_M: tl.constexpr, XS_M: tl.constexpr, DTS_M: tl.constexpr,
        BS_M: tl.constexpr, CS_M: tl.constexpr, ZS_M: tl.constexpr,
        HAS_D: tl.constexpr, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
        GATE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr):
    """One head's rows ``BLOCK_P`` of the Mamba2 state. ``GATE`` starts the gated RMSNorm: the output is
    ``g * norm_w`` with ``g = y * silu(z)`` (y rounded to the output dtype first, as the unfused norm
    reads it; an int8 ``z`` dequantized with its scale), and ``sum(g^2)`` is added into
    ``ss[b, norm group]`` (fp32 atomics)."""
    pid_p = tl.program_id(0)
    hd = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = hd // HPG
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp = offs_p < P
    mn = offs_n < N
    m2 = mp[:, None] & mn[None, :]
    st_offs = b * s_sb + hd * s_sh + offs_p[:, None] * s_sp + offs_n[None, :] * s_sn
    h = _deq(st_ptr, st_offs, m2, sst_ptr, sst_val, QUANT, SST_M)  # written by an earlier step only
    A = tl.load(A_ptr + hd).to(tl.float32)
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + hd).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + hd).to(tl.float32)
    if GATE:
        nw = tl.load(nw_ptr + hd * P + offs_p, mask=mp, other=0.0).to(tl.float32)
    pdl_sync(USE_PDL)
    x = _deq(x_ptr, b * s_xb + hd * s_xh + offs_p * s_xp, mp, xs_ptr, xs_val, QUANT, XS_M)
    dt = tl.load(dt_ptr + b * s_dtb + hd * s_dth).to(tl.float32)
    if QUANT:
        dt = dt * load_scale(dts_ptr, dts_val, 0, True, DTS_M)
    if HAS_DTB:
        dt += dtb
    if SOFTPLUS:
        dt = softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    dA = tl.exp(dt * A)
    Bv = _deq(B_ptr, b * s_bb + g * s_bg + offs_n * s_bn, mn, Bs_ptr, Bs_val, QUANT, BS_M)
    Cv = _deq(C_ptr, b * s_cb + g * s_cg + offs_n * s_cn, mn, Cs_ptr, Cs_val, QUANT, CS_M)
    h = h * dA + (dt * x)[:, None] * Bv[None, :]
    if QUANT:
        tl.store(st_ptr + st_offs, quantize_int8(h, load_scale(sst_ptr, sst_val, 0, True, SST_M)), mask=m2)
    else:
        tl.store(st_ptr + st_offs, h.to(st_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += x * Dv
    if GATE:
        ch = hd * P + offs_p
        g = y.to(y_ptr.dtype.element_ty).to(tl.float32) * silu(_deq(z_ptr, b * s_zb + ch, mp, zs_ptr, zs_val,
                                                                     QUANT, ZS_M))
        tl.atomic_add(ss_ptr + b * s_ssb + (hd * P) // NORM_GROUP, tl.sum(g * g, axis=0), sem="relaxed")
        y = g * nw
    tl.store(y_ptr + b * s_yb + hd * s_yh + offs_p, y.to(y_ptr.dtype.element_ty), mask=mp)


def _strides(t: Tensor | None, n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


def _mamba1_blocks(dim: int, n: int, bsz: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_N, num_warps): tiles of <= 4096 states, >= ~2 programs per SM when possible."""
    block_n = pow2(n, 16)
    block_d = max(16, min(128, 4096 // block_n))
    while block_d > 16 and bsz * cdiv(dim, block_d) < _TARGET_PROGRAMS:
        block_d //= 2
    return block_d, block_n, 4 if block_d * block_n >= 512 else 2


def _selective(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, out_dtype, scales) -> Tensor:
    if x.dim() != 2:
        raise InvalidArgumentError(f"x must be [B, D], got {tuple(x.shape)}")
    bsz, dim = x.shape
    if not (state.dim() == 3 and state.shape[:2] == (bsz, dim)):
        raise InvalidArgumentError(f"state {tuple(state.shape)} does not match x {tuple(x.shape)}")
    n = state.shape[2]
    if tuple(dt.shape) != (bsz, dim):
        raise InvalidArgumentError(f"dt {tuple(dt.shape)} != {(bsz, dim)}")
    if tuple(A.shape) != (dim, n):
        raise InvalidArgumentError(f"A {tuple(A.shape)} != {(dim, n)}")
    if not (tuple(B.shape) == (bsz, n) and tuple(C.shape) == (bsz, n)):
        raise InvalidArgumentError(f"B/C must be {(bsz, n)}")
    if not (z is None or tuple(z.shape) == (bsz, dim)):
        raise InvalidArgumentError(f"z must be {(bsz, dim)}")
    D_, dtb = channel_vector(D, dim, "D"), channel_vector(dt_bias, dim, "dt_bias")
    y = torch.empty((bsz, dim), device=x.device, dtype=out_dtype)
    if y.numel() == 0 or n == 0:
        return y
    (sst, sstv, sstm), (xs, xsv, xsm), (dts, dtsv, dtsm), (Bs, Bsv, Bsm), (Cs, Csv, Csm), (zs, zsv, zsm) = scales
    block_d, block_n, warps = _mamba1_blocks(dim, n, bsz)
    launch(_selective_update_kernel, (cdiv(dim, block_d), bsz),
           state, x, dt, A, B, C, D_, z, dtb, y,
           sst, sstv, xs, xsv, dts, dtsv, Bs, Bsv, Cs, Csv, zs, zsv, dim, n,
           *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *_strides(z, 2),
           y.stride(0),
           QUANT=state.dtype == torch.int8, SST_M=sstm, XS_M=xsm, DTS_M=dtsm, BS_M=Bsm, CS_M=Csm, ZS_M=zsm,
           HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
           BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps, **pdl_args(x))
    return y


_FP_SCALES = ((None, 1.0, 0),) * 6


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                           dt_softplus: bool = True) -> Tensor:
    """Mamba1 decode step; ``state [Bt, D, N]`` updated in place; see ``reference.selective_state_update``."""
    return _selective(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, x.dtype, _FP_SCALES)


def qselective_state_update(state: Tensor, state_scale: float, x_q: Tensor, x_scale: float, dt_q: Tensor,
                            dt_scale: float, A: Tensor, B_q: Tensor, B_scale: float, C_q: Tensor, C_scale: float,
                            D: Tensor | None, z_q: Tensor | None, z_scale: float, dt_bias: Tensor | None,
                            out_dtype: torch.dtype = torch.float16) -> Tensor:
    """Mamba1 decode step on an int8 state (in place); see ``qreference.qselective_state_update``."""
    if state.dtype != torch.int8:
        raise InvalidArgumentError(f"state must be int8, got {state.dtype}")
    scales = (per_tensor_scale_arg(state_scale, "state_scale"), per_tensor_scale_arg(x_scale, "x_scale"),
              per_tensor_scale_arg(dt_scale, "dt_scale"), per_tensor_scale_arg(B_scale, "B_scale"),
              per_tensor_scale_arg(C_scale, "C_scale"),
              per_tensor_scale_arg(z_scale if z_q is not None else None, "z_scale"))
    return _selective(state, x_q, dt_q, A, B_q, C_q, D, z_q, dt_bias, True, out_dtype, scales)


def _ssd_blocks(p: int, n: int, heads: int, bsz: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_N, num_warps): tiles of <= 2048 states, >= ~2 programs per SM when possible."""
    block_n = pow2(n, 16)
    block_p = max(4, min(pow2(p, 4), 2048 // block_n))
    while block_p > 4 and bsz * heads * cdiv(p, block_p) < _TARGET_PROGRAMS:
        block_p //= 2
    return block_p, block_n, 4 if block_p * block_n >= 1024 else 2


def _ssd(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, out_dtype, scales, gate=None) -> Tensor:
    """Checks and launch of ``_ssd_update_kernel``; ``gate = (z [B, H*P], norm_w [H*P], ss [B, H*P / group],
    group, z scale argument)`` selects its ``GATE`` mode."""
    if x.dim() != 3:
        raise InvalidArgumentError(f"x must be [B, H, P], got {tuple(x.shape)}")
    bsz, heads, p = x.shape
    if not (state.dim() == 4 and state.shape[:3] == (bsz, heads, p)):
        raise InvalidArgumentError(f"state {tuple(state.shape)} does not match x {tuple(x.shape)}")
    n = state.shape[3]
    if not (B.dim() == 3 and B.shape[0] == bsz and B.shape[2] == n and C.shape == B.shape):
        raise InvalidArgumentError(f"B/C {tuple(B.shape)}/{tuple(C.shape)} must be [{bsz}, G, {n}]")
    g = B.shape[1]
    if not (g > 0 and heads % g == 0):
        raise InvalidArgumentError(f"{heads} heads cannot be split into {g} groups")
    if tuple(dt.shape) != (bsz, heads):
        raise InvalidArgumentError(f"dt {tuple(dt.shape)} != {(bsz, heads)}")
    A_, D_ = channel_vector(A, heads, "A"), channel_vector(D, heads, "D")
    dtb = channel_vector(dt_bias, heads, "dt_bias")
    y = torch.empty((bsz, heads, p), device=x.device, dtype=out_dtype)
    if y.numel() == 0 or n == 0:
        return y
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    (sst, sstv, sstm), (xs, xsv, xsm), (dts, dtsv, dtsm), (Bs, Bsv, Bsm), (Cs, Csv, Csm) = scales
    block_p, block_n, warps = _ssd_blocks(p, n, heads, bsz)
    z, nw, ss, group, (zs, zsv, zsm) = gate if gate is not None else (None, None, None, 1, _FP_SCALES[0])
    launch(_ssd_update_kernel, (cdiv(p, block_p), heads, bsz),
           state, x, dt, A_, B, C, D_, dtb, y, z, nw, ss,
           sst, sstv, xs, xsv, dts, dtsv, Bs, Bsv, Cs, Csv, zs, zsv,
           p, n, heads // g, group, lo, min(hi, 3.0e38),
           *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), y.stride(0), y.stride(1),
           z.stride(0) if z is not None else 0, ss.stride(0) if ss is not None else 0,
           QUANT=state.dtype == torch.int8, SST_M=sstm, XS_M=xsm, DTS_M=dtsm, BS_M=Bsm, CS_M=Csm, ZS_M=zsm,
           HAS_D=D is not None, HAS_DTB=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
           HAS_LIMIT=(lo, hi) != _NO_LIMIT, GATE=gate is not None, BLOCK_P=block_p, BLOCK_N=block_n,
           num_warps=warps, **pdl_args(x))
    return y


def ssd_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
                     dt_limit: tuple[float, float] = _NO_LIMIT) -> Tensor:
    """Mamba2 decode step; ``state [Bt, H, P, N]`` updated in place; see ``reference.ssd_state_update``."""
    return _ssd(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, x.dtype, _FP_SCALES[:5])


def qssd_state_update(state: Tensor, state_scale: float, x_q: Tensor, x_scale: float, dt_q: Tensor,
                      dt_scale: float, A: Tensor, B_q: Tensor, B_scale: float, C_q: Tensor, C_scale: float,
                      D: Tensor | None, dt_bias: Tensor | None, dt_limit: tuple[float, float] = _NO_LIMIT,
                      out_dtype: torch.dtype = torch.float16) -> Tensor:
    """Mamba2 decode step on an int8 state (in place); see ``qreference.qssd_state_update``."""
    if state.dtype != torch.int8:
        raise InvalidArgumentError(f"state must be int8, got {state.dtype}")
    scales = (per_tensor_scale_arg(state_scale, "state_scale"), per_tensor_scale_arg(x_scale, "x_scale"),
              per_tensor_scale_arg(dt_scale, "dt_scale"), per_tensor_scale_arg(B_scale, "B_scale"),
              per_tensor_scale_arg(C_scale, "C_scale"))
    return _ssd(state, x_q, dt_q, A, B_q, C_q, D, dt_bias, True, dt_limit, out_dtype, scales)
