"""Fused Mamba1 decode step in two launches (fp and W8A8): conv + x_proj, then dt_proj + state update.

At batch-1 decode the unfused step runs four latency-bound kernels (conv update, x_proj GEMV,
dt_proj GEMV, selective state update) that together move only ~2.5 MB. Fused:

- ``conv_xproj_step``: a grid over channel blocks. Each program shifts its channels of the conv
  state (it owns them, no race), computes ``u`` for them, stores ``u`` and adds its partial
  products ``xproj_w[:, block] @ u[block]`` into a zero-initialised ``dbc`` with atomic adds
  (fp32 atomics: the summation order varies run to run at fp32 rounding; int32 atomics in the
  int8 twin: exact and deterministic). The x_proj weight tile is loaded first, so its HBM read
  overlaps the conv.
- ``dtproj_state_step``: a grid over channel blocks. Each program computes the dt of its channels
  from the R-vector at the head of ``dbc`` (its ``dt_w`` rows are contiguous), then runs the
  selective state update for those channels with B and C from ``dbc``. Given the counter ``done``,
  each program counts itself in after its last read of ``dbc`` (acquire-release atomic); the last
  one zeroes ``dbc`` and the counter, so the decoder's recycled accumulator needs no memset.

The int8 twins follow ``quamba.qmodules.mamba1``: int8 conv (int32 taps) -> int8 ``u``; x_proj
int32 accumulator; every program of the second kernel requantizes the accumulator exactly as
``int8_linear`` does (``acc * s_u * s_wx``, IEEE division by the shared dt|B|C scale, round half
to even, saturate), runs the int8 dt_proj (int32 dot over R) to an int8 dt, and the int8 state
update of ``qselective_state_update``. References: ``quamba.ops.fused_reference``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_args, pdl_sync
from ._small_common import (channel_vector, load_scale, old_taps, per_tensor_scale_arg, pow2, push_tap,
                            quantize_int8, scale_arg, silu, softplus, store_window)
from .launch import launch, cdiv
from ..errors import InvalidArgumentError

Tensor = torch.Tensor
Scale = float | Tensor
_TARGET_PROGRAMS = 264  # two per SM on an H200 (132 SMs)
_NO_SCALE = (None, 1.0, 0)


@triton.jit
def _conv_xproj_kernel(x_ptr, s_ptr, cw_ptr, cb_ptr, w_ptr, u_ptr, acc_ptr, DIM, NR,
                       xs_ptr, xs_val, ws_ptr, ws_val, bs_ptr, bs_val, us_ptr, us_val,
                       s_xb, s_xd, s_sb, s_sd, s_sk, s_cd, s_ck, s_wr, s_wd, s_ub, s_ab,
                       QUANT: tl.constexpr, XS_M: tl.constexpr, WS_M: tl.constexpr, BS_M: tl.constexpr,
                       US_M: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, USE_PDL: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, KP)
    md = offs_d < DIM
    mr = offs_r < NR
    w = tl.load(w_ptr + offs_r[:, None] * s_wr + offs_d[None, :] * s_wd, mask=mr[:, None] & md[None, :], other=0)
    mk = md[:, None] & (offs_k < K)[None, :]
    cw = tl.load(cw_ptr + offs_d[:, None] * s_cd + offs_k[None, :] * s_ck, mask=mk, other=0)
    base = s_ptr + b * s_sb + offs_d[:, None] * s_sd
    taps = old_taps(base, offs_k[None, :], md[:, None], K, s_sk)
    cb = tl.load(cb_ptr + offs_d, mask=md, other=0).to(tl.float32) if HAS_BIAS else 0.0
    if QUANT:
        wsv = load_scale(ws_ptr, ws_val, offs_d, md, WS_M)
        xsv = load_scale(xs_ptr, xs_val, offs_d, md, XS_M)
        if HAS_BIAS:
            cb = cb * load_scale(bs_ptr, bs_val, offs_d, md, BS_M)
        u_scale = load_scale(us_ptr, us_val, offs_d, md, US_M)
    pdl_sync(USE_PDL)

    xv = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=md, other=0)
    window = push_tap(taps, xv[:, None], offs_k[None, :], K)
    if QUANT:
        conv = tl.sum(window.to(tl.int32) * cw.to(tl.int32), axis=1)
    else:
        conv = tl.sum(window.to(tl.float32) * cw.to(tl.float32), axis=1)
    store_window(base, window, offs_k[None, :], md[:, None], K, s_sk)

    if QUANT:
        u = quantize_int8(silu(conv.to(tl.float32) * wsv * xsv + cb), u_scale)
        part = tl.sum(w.to(tl.int32) * u.to(tl.int32)[None, :], axis=1)
    else:
        u = silu(conv + cb).to(u_ptr.dtype.element_ty)
        part = tl.sum(w.to(tl.float32) * u.to(tl.float32)[None, :], axis=1)
    tl.store(u_ptr + b * s_ub + offs_d, u, mask=md)
    tl.atomic_add(acc_ptr + b * s_ab + offs_r, part, mask=mr, sem="relaxed")


@triton.jit
def _dbc_part(dbc_ptr, row, offs, mask, s_cr, us, xws_ptr, xws_val, dbcs, QUANT: tl.constexpr, XWS_M: tl.constexpr):
    """Columns ``offs`` of dbc: fp32 as stored, or (QUANT) the int8 requantization of the x_proj accumulator."""
    v = tl.load(dbc_ptr + row + offs * s_cr, mask=mask, other=0)
    if QUANT:
        v = quantize_int8(v.to(tl.float32) * us * load_scale(xws_ptr, xws_val, offs, mask, XWS_M), dbcs)
    return v


@triton.jit
def _dtproj_state_kernel(
        st_ptr, u_ptr, dbc_ptr, dtw_ptr, dtb_ptr, A_ptr, D_ptr, z_ptr, y_ptr, done_ptr,
        sst_ptr, sst_val, us_ptr, us_val, xws_ptr, xws_val, dbcs_ptr, dbcs_val, dtws_ptr, dtws_val,
        dts_ptr, dts_val, zs_ptr, zs_val,
        DIM, N, R,
        s_sb, s_sd, s_sn, s_ub, s_ud, s_cb, s_cr, s_wd, s_wr, s_ad, s_an, s_zb, s_zd, s_yb,
        QUANT: tl.constexpr, SST_M: tl.constexpr, US_M: tl.constexpr, XWS_M: tl.constexpr,
        DBCS_M: tl.constexpr, DTWS_M: tl.constexpr, DTS_M: tl.constexpr, ZS_M: tl.constexpr,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, RECYCLE: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, USE_PDL: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    md = offs_d < DIM
    mn = offs_n < N
    mr = offs_r < R
    m2 = md[:, None] & mn[None, :]
    wdt = tl.load(dtw_ptr + offs_d[:, None] * s_wd + offs_r[None, :] * s_wr, mask=md[:, None] & mr[None, :], other=0)
    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=m2, other=0.0).to(tl.float32)
    st_offs = b * s_sb + offs_d[:, None] * s_sd + offs_n[None, :] * s_sn
    h = tl.load(st_ptr + st_offs, mask=m2, other=0).to(tl.float32)  # written by an earlier step only
    us = load_scale(us_ptr, us_val, 0, True, US_M)
    dbcs = load_scale(dbcs_ptr, dbcs_val, 0, True, DBCS_M)
    dtb = tl.load(dtb_ptr + offs_d, mask=md, other=0.0).to(tl.float32) if HAS_DTB else 0.0
    Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32) if HAS_D else 0.0
    if QUANT:
        dtws = load_scale(dtws_ptr, dtws_val, offs_d, md, DTWS_M)
        dts = load_scale(dts_ptr, dts_val, 0, True, DTS_M)
        sst = load_scale(sst_ptr, sst_val, 0, True, SST_M)
        zs = load_scale(zs_ptr, zs_val, 0, True, ZS_M) if HAS_Z else 1.0
    pdl_sync(USE_PDL)
    x = tl.load(u_ptr + b * s_ub + offs_d * s_ud, mask=md, other=0).to(tl.float32)

    row = b * s_cb
    dtv = _dbc_part(dbc_ptr, row, offs_r, mr, s_cr, us, xws_ptr, xws_val, dbcs, QUANT, XWS_M)
    Bv = _dbc_part(dbc_ptr, row, R + offs_n, mn, s_cr, us, xws_ptr, xws_val, dbcs, QUANT, XWS_M).to(tl.float32)
    Cv = _dbc_part(dbc_ptr, row, R + N + offs_n, mn, s_cr, us, xws_ptr, xws_val, dbcs, QUANT, XWS_M).to(tl.float32)
    if QUANT:
        dt_acc = tl.sum(wdt.to(tl.int32) * dtv.to(tl.int32)[None, :], axis=1)
        dt_y = dt_acc.to(tl.float32) * dbcs * dtws
        dt = quantize_int8(dt_y, dts).to(tl.float32) * dts
        h = h * sst
        x = x * us
        Bv = Bv * dbcs
        Cv = Cv * dbcs
    else:
        dt = tl.sum(wdt.to(tl.float32) * dtv[None, :], axis=1)
    if HAS_DTB:
        dt += dtb
    dt = softplus(dt)

    h = h * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv[None, :]
    if QUANT:
        tl.store(st_ptr + st_offs, quantize_int8(h, sst), mask=m2)
    else:
        tl.store(st_ptr + st_offs, h.to(st_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += x * Dv
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_zb + offs_d * s_zd, mask=md, other=0).to(tl.float32)
        if QUANT:
            zv = zv * zs
        y *= silu(zv)
    tl.store(y_ptr + b * s_yb + offs_d, y.to(y_ptr.dtype.element_ty), mask=md)
    if RECYCLE:
        tl.debug_barrier()
        if tl.atomic_add(done_ptr + b, 1, sem="acq_rel") == tl.num_programs(0) - 1:
            zero = tl.zeros([BLOCK_R], dtype=dbc_ptr.dtype.element_ty)
            for c0 in range(0, R + 2 * N, BLOCK_R):
                tl.store(dbc_ptr + row + (c0 + offs_r) * s_cr, zero, mask=c0 + offs_r < R + 2 * N)
            tl.store(done_ptr + b, 0)


def conv_xproj_plan(dim: int, nr: int, bsz: int) -> tuple[int, int]:
    """``(BLOCK_D, num_warps)`` of ``conv_xproj_step``: 32-channel slabs of x_proj (64-byte fp16 row
    segments, 160 programs at d_inner 5120), narrower while the grid is small."""
    block_d = 32
    while block_d > 16 and bsz * cdiv(dim, block_d) < _TARGET_PROGRAMS // 2:
        block_d //= 2
    return block_d, 4


def dtproj_state_plan(dim: int, n: int, r: int, bsz: int) -> tuple[int, int]:
    """``(BLOCK_D, num_warps)`` of ``dtproj_state_step``: >= ~2 programs per SM when possible."""
    block_d = 64
    while block_d > 16 and bsz * cdiv(dim, block_d) < _TARGET_PROGRAMS:
        block_d //= 2
    return block_d, 4


def _check_conv(x: Tensor, conv_state: Tensor, conv_w: Tensor, conv_b: Tensor | None, xproj_w: Tensor) -> None:
    if x.dim() != 2:
        raise InvalidArgumentError(f"x must be [B, D], got {tuple(x.shape)}")
    bsz, d = x.shape
    if not (conv_state.dim() == 3 and tuple(conv_state.shape[:2]) == (bsz, d)):
        raise InvalidArgumentError(f"conv_state {tuple(conv_state.shape)} does not match x {tuple(x.shape)}")
    k = conv_state.shape[2]
    if not (1 <= k <= 8):
        raise InvalidArgumentError(f"conv width {k} not supported (1..8)")
    if tuple(conv_w.shape) != (d, k):
        raise InvalidArgumentError(f"conv weight {tuple(conv_w.shape)} != {(d, k)}")
    if not (conv_b is None or conv_b.numel() == d):
        raise InvalidArgumentError(f"conv bias does not match {d} channels")
    if not (xproj_w.dim() == 2 and xproj_w.shape[1] == d):
        raise InvalidArgumentError(f"x_proj weight {tuple(xproj_w.shape)} does not take {d} inputs")
    if xproj_w.shape[0] > 1024:
        raise InvalidArgumentError(f"x_proj has {xproj_w.shape[0]} outputs; at most 1024 supported")


def launch_conv_xproj(x: Tensor, conv_state: Tensor, conv_w: Tensor, conv_b: Tensor | None, xproj_w: Tensor,
                      u: Tensor, acc: Tensor, scales: tuple, block_d: int, num_warps: int) -> None:
    """Run the first fused kernel into ``u`` and the zeroed ``acc`` with an explicit plan."""
    bsz, d = x.shape
    k, nr = conv_state.shape[2], xproj_w.shape[0]
    (xs, xsv, xsm), (ws, wsv, wsm), (bs, bsv, bsm), (us, usv, usm) = scales
    b_c = conv_b.reshape(-1).contiguous() if conv_b is not None else None
    launch(_conv_xproj_kernel, (cdiv(d, block_d), bsz),
           x, conv_state, conv_w, b_c, xproj_w, u, acc, d, nr, xs, xsv, ws, wsv, bs, bsv, us, usv,
           *x.stride(), *conv_state.stride(), *conv_w.stride(), *xproj_w.stride(), u.stride(0), acc.stride(0),
           QUANT=x.dtype == torch.int8, XS_M=xsm, WS_M=wsm, BS_M=bsm, US_M=usm, K=k, KP=pow2(k, 2),
           HAS_BIAS=conv_b is not None, BLOCK_D=block_d, BLOCK_R=pow2(nr, 16), num_warps=num_warps,
           **pdl_args(x))


def _acc(acc: Tensor | None, bsz: int, nr: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if acc is None:
        return torch.zeros((bsz, nr), device=device, dtype=dtype)
    if not (tuple(acc.shape) == (bsz, nr) and acc.dtype == dtype and acc.is_contiguous()):
        raise InvalidArgumentError(f"acc must be a contiguous {dtype} [{bsz}, {nr}] tensor, got {acc.dtype} "
                                   f"{tuple(acc.shape)}")
    return acc


def _done(done: Tensor | None, bsz: int) -> Tensor | None:
    if not (done is None or (done.dtype == torch.int32 and done.numel() == bsz)):
        raise InvalidArgumentError(f"done must be an int32 counter of {bsz} entries")
    return done


def conv_xproj_step(x: Tensor, conv_state: Tensor, conv_w: Tensor, conv_b: Tensor | None,
                    xproj_w: Tensor, acc: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Conv update + SiLU + x_proj in one launch; see ``fused_reference.conv_xproj_step``."""
    _check_conv(x, conv_state, conv_w, conv_b, xproj_w)
    bsz, d = x.shape
    u = torch.empty((bsz, d), device=x.device, dtype=x.dtype)
    dbc = _acc(acc, bsz, xproj_w.shape[0], torch.float32, x.device)
    if u.numel():
        launch_conv_xproj(x, conv_state, conv_w, conv_b, xproj_w, u, dbc, (_NO_SCALE,) * 4,
                          *conv_xproj_plan(d, xproj_w.shape[0], bsz))
    return u, dbc


def qconv_xproj_step(x_q: Tensor, conv_state: Tensor, x_scale: Scale, conv_w_q: Tensor, conv_w_scale: Scale,
                     conv_b_q: Tensor | None, conv_b_scale: Scale, u_scale: Scale,
                     xproj_w_q: Tensor, acc: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Int8 conv update + SiLU + x_proj accumulator in one launch; see ``fused_reference.qconv_xproj_step``."""
    _check_conv(x_q, conv_state, conv_w_q, conv_b_q, xproj_w_q)
    for t in (x_q, conv_state, conv_w_q, conv_b_q, xproj_w_q):
        if not (t is None or t.dtype == torch.int8):
            raise InvalidArgumentError(f"expected int8 tensors, got {t.dtype if t is not None else None}")
    bsz, d = x_q.shape
    scales = (scale_arg(x_scale, d, "x_scale"), scale_arg(conv_w_scale, d, "conv_w_scale"),
              scale_arg(conv_b_scale if conv_b_q is not None else None, d, "conv_b_scale"),
              scale_arg(u_scale, d, "u_scale"))
    u = torch.empty((bsz, d), device=x_q.device, dtype=torch.int8)
    acc = _acc(acc, bsz, xproj_w_q.shape[0], torch.int32, x_q.device)
    if u.numel():
        launch_conv_xproj(x_q, conv_state, conv_w_q, conv_b_q, xproj_w_q, u, acc, scales,
                          *conv_xproj_plan(d, xproj_w_q.shape[0], bsz))
    return u, acc


def _check_state(state: Tensor, u: Tensor, dbc: Tensor, dt_w: Tensor, A: Tensor, z: Tensor | None) -> None:
    if u.dim() != 2:
        raise InvalidArgumentError(f"u must be [B, D], got {tuple(u.shape)}")
    bsz, d = u.shape
    if not (state.dim() == 3 and tuple(state.shape[:2]) == (bsz, d)):
        raise InvalidArgumentError(f"state {tuple(state.shape)} does not match u {tuple(u.shape)}")
    n = state.shape[2]
    if tuple(A.shape) != (d, n):
        raise InvalidArgumentError(f"A {tuple(A.shape)} != {(d, n)}")
    if not (dt_w.dim() == 2 and dt_w.shape[0] == d):
        raise InvalidArgumentError(f"dt_proj weight {tuple(dt_w.shape)} does not give {d} outputs")
    r = dt_w.shape[1]
    if r > 1024:
        raise InvalidArgumentError(f"dt_rank {r} > 1024 not supported")
    if tuple(dbc.shape) != (bsz, r + 2 * n):
        raise InvalidArgumentError(f"dbc {tuple(dbc.shape)} != {(bsz, r + 2 * n)}")
    if not (z is None or tuple(z.shape) == (bsz, d)):
        raise InvalidArgumentError(f"z must be {(bsz, d)}")


def launch_dtproj_state(state: Tensor, u: Tensor, dbc: Tensor, dt_w: Tensor, dt_bias: Tensor | None, A: Tensor,
                        D: Tensor | None, z: Tensor | None, y: Tensor, scales: tuple, block_d: int,
                        num_warps: int, done: Tensor | None = None) -> None:
    """Run the second fused kernel into ``y`` with an explicit plan (``done``: recycle ``dbc``)."""
    bsz, d = u.shape
    n, r = state.shape[2], dt_w.shape[1]
    D_, dtb = channel_vector(D, d, "D"), channel_vector(dt_bias, d, "dt_bias")
    (sst, sstv, sstm), (us, usv, usm), (xws, xwsv, xwsm), (dbcs, dbcsv, dbcsm), (dtws, dtwsv, dtwsm), \
        (dts, dtsv, dtsm), (zs, zsv, zsm) = scales
    launch(_dtproj_state_kernel, (cdiv(d, block_d), bsz),
           state, u, dbc, dt_w, dtb, A, D_, z, y, done,
           sst, sstv, us, usv, xws, xwsv, dbcs, dbcsv, dtws, dtwsv, dts, dtsv, zs, zsv,
           d, n, r, *state.stride(), *u.stride(), *dbc.stride(), *dt_w.stride(), *A.stride(),
           *(z.stride() if z is not None else (0, 0)), y.stride(0),
           QUANT=state.dtype == torch.int8, SST_M=sstm, US_M=usm, XWS_M=xwsm, DBCS_M=dbcsm, DTWS_M=dtwsm,
           DTS_M=dtsm, ZS_M=zsm, HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=dt_bias is not None,
           RECYCLE=done is not None, BLOCK_D=block_d, BLOCK_N=pow2(n, 16), BLOCK_R=pow2(r, 16), num_warps=num_warps,
           **pdl_args(u))


def dtproj_state_step(state: Tensor, u: Tensor, dbc: Tensor, dt_w: Tensor, dt_bias: Tensor | None, A: Tensor,
                      D: Tensor | None, z: Tensor | None, done: Tensor | None = None) -> Tensor:
    """dt_proj + softplus + selective state update in one launch; see ``fused_reference.dtproj_state_step``."""
    _check_state(state, u, dbc, dt_w, A, z)
    if state.dtype == torch.int8:
        raise InvalidArgumentError("dtproj_state_step takes a float state; use qdtproj_state_step for int8")
    bsz, d = u.shape
    y = torch.empty((bsz, d), device=u.device, dtype=u.dtype)
    if y.numel() and state.shape[2]:
        launch_dtproj_state(state, u, dbc, dt_w, dt_bias, A, D, z, y, (_NO_SCALE,) * 7,
                            *dtproj_state_plan(d, state.shape[2], dt_w.shape[1], bsz), _done(done, bsz))
    return y


def qdtproj_state_step(state: Tensor, state_scale: Scale, u_q: Tensor, u_scale: Scale, acc: Tensor,
                       xproj_w_scale: Scale, dbc_scale: Scale, dt_w_q: Tensor, dt_w_scale: Scale, dt_scale: Scale,
                       A: Tensor, D: Tensor | None, z_q: Tensor | None, z_scale: Scale, dt_bias: Tensor | None,
                       out_dtype: torch.dtype = torch.float16, done: Tensor | None = None) -> Tensor:
    """Int8 dt_proj + int8 state update in one launch; see ``fused_reference.qdtproj_state_step``."""
    _check_state(state, u_q, acc, dt_w_q, A, z_q)
    for t in (state, u_q, dt_w_q, z_q):
        if not (t is None or t.dtype == torch.int8):
            raise InvalidArgumentError(f"expected int8 tensors, got {t.dtype if t is not None else None}")
    if acc.dtype != torch.int32:
        raise InvalidArgumentError(f"acc must be the int32 x_proj accumulator, got {acc.dtype}")
    bsz, d = u_q.shape
    scales = (per_tensor_scale_arg(state_scale, "state_scale"), per_tensor_scale_arg(u_scale, "u_scale"),
              scale_arg(xproj_w_scale, acc.shape[1], "xproj_w_scale"), per_tensor_scale_arg(dbc_scale, "dbc_scale"),
              scale_arg(dt_w_scale, d, "dt_w_scale"), per_tensor_scale_arg(dt_scale, "dt_scale"),
              per_tensor_scale_arg(z_scale if z_q is not None else None, "z_scale"))
    y = torch.empty((bsz, d), device=u_q.device, dtype=out_dtype)
    if y.numel() and state.shape[2]:
        launch_dtproj_state(state, u_q, acc, dt_w_q, dt_bias, A, D, z_q, y, scales,
                            *dtproj_state_plan(d, state.shape[2], dt_w_q.shape[1], bsz), _done(done, bsz))
    return y
