"""Mamba1 selective scan (prefill) as a chunked Triton scan; fp inputs and int8 inputs.

The sequence is cut into chunks and scanned in two launches, so that the work has
``batch x channel blocks x chunks`` independent programs instead of one long dependent chain:

1. ``_chunk_end_kernel``: per (channel block, chunk, batch), the chunk's end state from a zero
   start and the sum of its ``dt`` (the chunk's decay is ``exp(A * sum dt)``); not run for the last chunk;
2. ``_chunk_scan_kernel``: per (channel block, chunk, batch), the chunk's incoming state is combined
   from the initial state and the end states of the earlier chunks (weights ``exp(A * dt summed over
   the chunks in between)``, all exponents <= 0), then the chunk is rescanned from it, writing ``y``
   with the ``D`` skip and the ``silu(z)`` gate fused; the last chunk's program writes the final state.

A thread owns one channel and its ``N`` fp32 state values (registers); the steps of a chunk are
unrolled ``T_SUB`` at a time so that their loads are issued together. The int8 variant loads int8
``u, dt, B, C, z`` and the int8 initial state, dequantizes with per-tensor scales in the same
kernels and quantizes the final state (round half to even, saturated).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import InvalidArgumentError

Tensor = torch.Tensor

T_SUB = 8
_TARGET_WARPS = 132 * 16


@triton.jit
def fast_log2(x, FAST: tl.constexpr):
    """``log2(x)``: the hardware approximation (rel. error ~1e-7 away from x = 1) on GPU."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def fast_rcp(x, FAST: tl.constexpr):
    """``1 / x``: the hardware approximation (1 ulp) on GPU."""
    if FAST:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def softplus(x, FAST: tl.constexpr):
    """``log(1 + exp(x))`` (``x`` itself above 20, as torch) to ~1e-6 relative.

    ``log1p(e)`` is a series when ``e < 1/8`` (the usual range of Mamba's dt) and ``log2(1 + e)``
    otherwise, where the approximate ``log2`` is accurate.
    """
    e = tl.exp2(x * 1.4426950408889634)
    s = 0.125 - e * 0.1111111111111111
    s = 0.14285714285714285 - e * s
    s = 0.16666666666666666 - e * s
    s = 0.2 - e * s
    s = 0.25 - e * s
    s = 0.3333333333333333 - e * s
    s = 0.5 - e * s
    s = e - e * (e * s)
    big = fast_log2(1.0 + e, FAST) * 0.6931471805599453
    return tl.where(x > 20.0, x, tl.where(e < 0.125, s, big))


@triton.jit
def silu(z, FAST: tl.constexpr):
    return z * fast_rcp(1.0 + tl.exp2(-1.4426950408889634 * z), FAST)


@triton.jit
def scalar_arg(s, IS_PTR: tl.constexpr):
    """A scale given as an fp32 kernel argument or (``IS_PTR``) as a pointer to one element."""
    if IS_PTR:
        return tl.load(s).to(tl.float32)
    else:
        return s


@triton.jit
def quantize_int8(x, scale):
    """``clamp(round_half_even(x / scale), -128, 127)`` as int8, as ``qreference.quantize``."""
    q = tl.div_rn(x, scale + tl.zeros_like(x))
    q = tl.minimum(tl.maximum(q, -130.0), 130.0)
    q = (q + 12582912.0) - 12582912.0
    return tl.minimum(tl.maximum(q, -128.0), 127.0).to(tl.int8)


@triton.jit
def _load_vec(ptrs, mask, EVEN: tl.constexpr):
    if EVEN:
        v = tl.load(ptrs)
    else:
        v = tl.load(ptrs, mask=mask, other=0.0)
    return v.to(tl.float32)


@triton.jit
def _dt_value(dt, bias, ok, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    if HAS_BIAS:
        dt = dt + bias
    if SOFTPLUS:
        dt = softplus(dt, FAST)
    return tl.where(ok, dt, 0.0)


@triton.jit(do_not_specialize=["s_ud", "s_td", "s_ad", "s_an", "s_sd", "s_sn"])
def _chunk_end_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, st_ptr, ds_ptr,
        L, D, N, T_CHUNK, n_chunks,
        s_ub, s_ul, s_ud, s_tb, s_tl, s_td, s_ad, s_an, s_bb, s_bl, s_bn, s_sd, s_sn,
        u_scale, dt_scale,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, QUANT: tl.constexpr, PTRS: tl.constexpr,
        EVEN_N: tl.constexpr, FAST: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, T_SUB: tl.constexpr):
    pid_d = tl.program_id(0)
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < D
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * s_an + offs_d[None, :] * s_ad, mask=mask_nd, other=0.0) * 1.4426950408889634
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    su = 1.0
    st = 1.0
    if QUANT:
        su = scalar_arg(u_scale, PTRS & 1)
        st = scalar_arg(dt_scale, PTRS & 2)
    offs_dl = tl.minimum(offs_d, D - 1)
    u_row = u_ptr + b * s_ub + offs_dl * s_ud
    dt_row = dt_ptr + b * s_tb + offs_dl * s_td
    B_row = B_ptr + b * s_bb + offs_n * s_bn

    h = tl.zeros([NP, BD], tl.float32)
    dsum = tl.zeros([BD], tl.float32)
    t_lo = c * T_CHUNK
    t_hi = tl.minimum(t_lo + T_CHUNK, L)
    for t0 in range(t_lo, t_hi, T_SUB):
        for i in tl.static_range(T_SUB):
            ok = t0 + i < t_hi
            t = tl.minimum(t0 + i, t_hi - 1)
            u = tl.load(u_row + t * s_ul).to(tl.float32)
            dt = tl.load(dt_row + t * s_tl).to(tl.float32)
            Bv = _load_vec(B_row + t * s_bl, mask_n, EVEN_N)
            if QUANT:
                u = u * su
                dt = dt * st
            dt = _dt_value(dt, bias, ok, HAS_BIAS, SOFTPLUS, FAST)
            h = tl.exp2(dt[None, :] * A2) * h + (dt * u)[None, :] * Bv[:, None]
            dsum += dt

    base = (b * n_chunks + c) * N * D
    tl.store(st_ptr + base + offs_n[:, None] * s_sn + offs_d[None, :] * s_sd, h, mask=mask_nd)
    tl.store(ds_ptr + (b * n_chunks + c) * D + offs_d, dsum, mask=mask_d)


@triton.jit(do_not_specialize=["s_ud", "s_td", "s_zd", "s_ad", "s_an", "s_sd", "s_sn", "s_yd", "s_id", "s_in",
                              "s_ld", "s_ln"])
def _chunk_scan_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, st_ptr, ds_ptr, y_ptr, last_ptr,
        L, D, N, T_CHUNK, n_chunks,
        s_ub, s_ul, s_ud, s_tb, s_tl, s_td, s_ad, s_an, s_bb, s_bl, s_bn, s_cb, s_cl, s_cn,
        s_zb, s_zl, s_zd, s_yb, s_yl, s_yd, s_ib, s_id, s_in, s_sd, s_sn, s_ld, s_ln,
        u_scale, dt_scale, z_scale, state_scale,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
        HAS_INIT: tl.constexpr, QUANT: tl.constexpr, PTRS: tl.constexpr,
        EVEN_N: tl.constexpr, FAST: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, T_SUB: tl.constexpr):
    pid_d = tl.program_id(0)
    c = n_chunks - 1 - tl.program_id(1)  # the chunks with the longest prefix to combine start first
    b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < D
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * s_an + offs_d[None, :] * s_ad, mask=mask_nd, other=0.0) * 1.4426950408889634
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = 0.0
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    su = 1.0
    st = 1.0
    sz = 1.0
    ss = 1.0
    if QUANT:
        su = scalar_arg(u_scale, PTRS & 1)
        st = scalar_arg(dt_scale, PTRS & 2)
        sz = scalar_arg(z_scale, PTRS & 4)
        ss = scalar_arg(state_scale, PTRS & 8)

    # incoming state: sum over earlier chunks c' of exp(A * dt-sum of chunks c'+1..c-1) * end_state(c')
    h = tl.zeros([NP, BD], tl.float32)
    w = tl.zeros([BD], tl.float32)
    for j0 in range(0, c, 4):
        for i in tl.static_range(4):
            cc = c - 1 - j0 - i
            m_d = offs_d < tl.where(cc >= 0, D, 0)
            row = b * n_chunks + cc
            s = tl.load(st_ptr + row * N * D + offs_n[:, None] * s_sn + offs_d[None, :] * s_sd,
                        mask=mask_n[:, None] & m_d[None, :], other=0.0)
            ds = tl.load(ds_ptr + row * D + offs_d, mask=m_d, other=0.0)
            h += tl.exp2(A2 * w[None, :]) * s
            w += ds
    if HAS_INIT:
        h0 = tl.load(init_ptr + b * s_ib + offs_d[None, :] * s_id + offs_n[:, None] * s_in,
                     mask=mask_nd, other=0.0).to(tl.float32)
        if QUANT:
            h0 = h0 * ss
        h += tl.exp2(A2 * w[None, :]) * h0

    offs_dl = tl.minimum(offs_d, D - 1)
    u_row = u_ptr + b * s_ub + offs_dl * s_ud
    dt_row = dt_ptr + b * s_tb + offs_dl * s_td
    z_row = z_ptr + b * s_zb + offs_dl * s_zd
    B_row = B_ptr + b * s_bb + offs_n * s_bn
    C_row = C_ptr + b * s_cb + offs_n * s_cn
    rows = tl.arange(0, T_SUB)
    y_tile_ptr = y_ptr + b * s_yb + rows[:, None] * s_yl + offs_d[None, :] * s_yd
    t_lo = c * T_CHUNK
    t_hi = tl.minimum(t_lo + T_CHUNK, L)
    for t0 in range(t_lo, t_hi, T_SUB):
        y_tile = tl.zeros([T_SUB, BD], tl.float32)
        for i in tl.static_range(T_SUB):
            ok = t0 + i < t_hi
            t = tl.minimum(t0 + i, t_hi - 1)
            u = tl.load(u_row + t * s_ul).to(tl.float32)
            dt = tl.load(dt_row + t * s_tl).to(tl.float32)
            Bv = _load_vec(B_row + t * s_bl, mask_n, EVEN_N)
            Cv = _load_vec(C_row + t * s_cl, mask_n, EVEN_N)
            if QUANT:
                u = u * su
                dt = dt * st
            dt = _dt_value(dt, bias, ok, HAS_BIAS, SOFTPLUS, FAST)
            h = tl.exp2(dt[None, :] * A2) * h + (dt * u)[None, :] * Bv[:, None]
            y = tl.sum(h * Cv[:, None], axis=0)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                z = tl.load(z_row + t * s_zl).to(tl.float32)
                if QUANT:
                    z = z * sz
                y = y * silu(z, FAST)
            y_tile = tl.where(rows[:, None] == i, y[None, :], y_tile)
        t_mask = (t0 + rows) < t_hi
        tl.store(y_tile_ptr + t0 * s_yl, y_tile.to(y_ptr.dtype.element_ty), mask=t_mask[:, None] & mask_d[None, :])

    if c == n_chunks - 1:
        out = last_ptr + b * D * N + offs_d[None, :] * s_ld + offs_n[:, None] * s_ln
        if QUANT:
            tl.store(out, quantize_int8(h, ss), mask=mask_nd)
        else:
            tl.store(out, h, mask=mask_nd)


def _plan(bt: int, L: int, d: int, t_chunk: int | None) -> tuple[int, int, int]:
    """``(num_warps, T_CHUNK, n_chunks)``: enough programs to fill the GPU, few chunks to combine."""
    nw = 2 if d >= 2048 else 1
    blocks = bt * triton.cdiv(d, 32 * nw)
    if t_chunk is None:
        want = max(1, min(64, _TARGET_WARPS // (blocks * nw)))
        t_chunk = max(4 * T_SUB, triton.cdiv(triton.cdiv(L, want), T_SUB) * T_SUB)
    else:
        t_chunk = max(T_SUB, triton.cdiv(t_chunk, T_SUB) * T_SUB)
    return nw, t_chunk, max(1, triton.cdiv(L, t_chunk))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise InvalidArgumentError(msg)


def _scale(s, name: str):
    if isinstance(s, Tensor):
        _check(s.numel() == 1, f"{name} must be a float or a one-element tensor, got {tuple(s.shape)}")
        return s.reshape(1).float()
    return float(s)


def _scan(u, dt, A, B, C, D, z, bias, softplus_dt, init, out_dtype, scales, t_chunk):
    """Shared wrapper; ``scales`` = (u, dt, z, state) scales for int8 inputs, None for fp inputs.

    ``B`` and ``C`` arrive in fp32 (every thread reads all N of them each step: fp32 saves the
    per-thread conversions).
    """
    _check(u.dim() == 3 and dt.shape == u.shape, f"u and delta must be [B, L, D] alike, got "
           f"{tuple(u.shape)} and {tuple(dt.shape)}")
    bt, L, d = u.shape
    _check(A.dim() == 2 and A.shape[0] == d, f"A must be [{d}, N], got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        _check(t.shape == (bt, L, n), f"{name} must be [{bt}, {L}, {n}], got {tuple(t.shape)}")
    if z is not None:
        _check(z.shape == u.shape, f"z must be {tuple(u.shape)}, got {tuple(z.shape)}")
    if init is not None:
        _check(init.shape == (bt, d, n), f"initial_state must be [{bt}, {d}, {n}], got {tuple(init.shape)}")
    for name, t in (("D", D), ("delta_bias", bias)):
        if t is not None:
            _check(t.numel() == d, f"{name} must have {d} elements, got {tuple(t.shape)}")
    quant = scales is not None
    y = torch.empty(bt, L, d, device=u.device, dtype=out_dtype)
    last = torch.empty(bt, d, n, device=u.device, dtype=torch.int8 if quant else torch.float32)
    if L == 0 or bt == 0 or d == 0:
        if init is None:
            last.zero_()
        else:
            last.copy_(init)
        return y, last
    nw, t_chunk, n_chunks = _plan(bt, L, d, t_chunk)
    bd, np2 = 32 * nw, triton.next_power_of_2(n)
    st = torch.empty(bt, n_chunks, n, d, device=u.device, dtype=torch.float32)
    ds = torch.empty(bt, n_chunks, d, device=u.device, dtype=torch.float32)
    D_ = D.reshape(-1) if D is not None else u
    bias_ = bias.reshape(-1) if bias is not None else u
    z_ = z if z is not None else u
    init_ = init if init is not None else last
    su, sdt, sz, ss = scales if quant else (1.0,) * 4
    ptrs = sum(1 << i for i, sc in enumerate((su, sdt, sz, ss)) if isinstance(sc, Tensor))
    flags = dict(HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus_dt), QUANT=quant, PTRS=ptrs, EVEN_N=n == np2,
                 FAST=u.is_cuda, BD=bd, NP=np2, T_SUB=T_SUB)
    nblk = triton.cdiv(d, bd)
    if n_chunks > 1:
        _chunk_end_kernel[(nblk, n_chunks - 1, bt)](
            u, dt, A, B, bias_, st, ds, L, d, n, t_chunk, n_chunks,
            *u.stride(), *dt.stride(), *A.stride(), *B.stride(), 1, d,
            su, sdt, num_warps=nw, **flags)
    _chunk_scan_kernel[(nblk, n_chunks, bt)](
        u, dt, A, B, C, D_, z_, bias_, init_, st, ds, y, last, L, d, n, t_chunk, n_chunks,
        *u.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *z_.stride(), *y.stride(),
        *init_.stride(), 1, d, n, 1, su, sdt, sz, ss,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_INIT=init is not None, num_warps=nw, **flags)
    return y, last


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                   initial_state: Tensor | None = None, chunk_size: int = 32) -> tuple[Tensor, Tensor]:
    """Triton ``reference.selective_scan``: ``(y [Bt, L, D] in u.dtype, last_state [Bt, D, N] fp32)``.

    ``chunk_size`` (the reference's internal block) is ignored: the kernel picks its own chunking.
    """
    return _scan(u, delta, A, B.float(), C.float(), D, z, delta_bias, delta_softplus, initial_state,
                 u.dtype, None, None)


def qselective_scan(u_q: Tensor, u_scale: float, dt_q: Tensor, dt_scale: float, A: Tensor, B_q: Tensor,
                    B_scale: float, C_q: Tensor, C_scale: float, D: Tensor | None, z_q: Tensor | None,
                    z_scale: float, dt_bias: Tensor | None, state_scale: float,
                    initial_state: Tensor | None = None,
                    out_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """Triton ``qreference.qselective_scan``: int8 ``u, dt, B, C, z`` (per-tensor scales, floats or
    one-element tensors) and int8 initial state; returns ``(y in out_dtype, int8 last state)``."""
    for name, t in (("u_q", u_q), ("dt_q", dt_q), ("B_q", B_q), ("C_q", C_q), ("z_q", z_q),
                    ("initial_state", initial_state)):
        if t is not None:
            _check(t.dtype == torch.int8, f"{name} must be int8, got {t.dtype}")
    scales = (_scale(u_scale, "u_scale"), _scale(dt_scale, "dt_scale"),
              _scale(z_scale, "z_scale") if z_q is not None else 1.0, _scale(state_scale, "state_scale"))
    Bf = B_q * _scale(B_scale, "B_scale")
    Cf = C_q * _scale(C_scale, "C_scale")
    return _scan(u_q, dt_q, A, Bf, Cf, D, z_q, dt_bias, True, initial_state, out_dtype, scales, None)
