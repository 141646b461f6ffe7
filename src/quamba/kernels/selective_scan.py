"""Mamba1 selective scan (prefill) as a chunked Triton scan; fp inputs and int8 inputs.

The recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t`` (per channel ``d`` and state ``n``) is
split into ``n_chunks`` chunks of ``t_chunk`` tokens so that a batch-1 prefill still has enough
independent programs to fill the GPU (few chunks: the work of pass 1 is repeated by pass 3):

1. ``_chunk_state_kernel`` per (channel block, chunk, batch), not for the last chunk: the chunk's end
   state from a zero start and the sum of its ``dt`` (its total decay is ``exp(A * sum dt)``);
2. ``_chunk_combine_kernel`` per (channel block, batch): the incoming state of each chunk, combined in
   chunk order from the initial state (``n_chunks x N`` values per channel, read once). With at most
   ``FOLD_CHUNKS + 1`` chunks (the default plans) this launch is skipped: each scan program combines
   its few predecessors' end states itself (one tile load, a short in-register scan);
3. ``_chunk_scan_kernel`` per (channel block, chunk, batch): the chunk rescanned from its incoming
   state, writing ``y`` with the ``D`` skip and the ``silu(z)`` gate; the last chunk writes the final
   state (quantized, round half to even and saturated, on the int8 path).

A program is one warp over ``bd`` channels (8 by default); a channel's states are spread over 4
lanes (``N / 4`` each; the layout of the ``n``-contiguous state tiles). Tokens are processed in
blocks of ``t_block``: the block's ``u, dt, z, B, C`` tiles are loaded one block ahead (registers),
``dt`` processing, the ``D`` skip, ``silu(z)`` and the output store happen once per (token, channel),
and the recurrence over the block runs inside each thread (``tl.associative_scan`` along an axis held
in registers), so a thread issues the exponentials of a whole block at once instead of one dependent
step at a time. ``exp`` is ``exp2`` with ``log2(e)`` folded into ``A``. The int8 variant dequantizes
``u, dt, B, C, z`` and the initial state in the same kernels.

Cost (sm_90 SASS of the main loops, per (token, channel, state) element and thread): the scan pass
issues ~12 instructions of which 1.25 MUFU (a MUFU op occupies its unit for 8 issue cycles, so both
limits are ~10-12 cycles), the state pass ~8 with 1.125 MUFU. The default plan takes as many chunks
as keep the scan pass within one wave of resident warps.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._small_common import ON_GPU, quantize_int8
from .int8_gemm import num_sms
from . import reuse
from .launch import cdiv, launch_for_reuse, next_pow2
from .pdl import pdl_args, pdl_sync
from ..errors import InvalidArgumentError

Tensor = torch.Tensor

@triton.jit
def fast_log2(x):
    """``log2(x)``: the hardware approximation (rel. error ~1e-7 away from x = 1) on GPU."""
    if ON_GPU:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def fast_rcp(x):
    """``1 / x``: the hardware approximation (1 ulp) on GPU."""
    if ON_GPU:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def softplus(x):
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
    big = fast_log2(1.0 + e) * 0.6931471805599453
    return tl.where(x > 20.0, x, tl.where(e < 0.125, s, big))


@triton.jit
def silu(z):
    return z * fast_rcp(1.0 + tl.exp2(-1.4426950408889634 * z))


@triton.jit
def scalar_arg(s, IS_PTR: tl.constexpr):
    """A scale given as an fp32 kernel argument or (``IS_PTR``) as a pointer to one element."""
    if IS_PTR:
        return tl.load(s).to(tl.float32)
    else:
        return s


@triton.jit
def _compose(a1, b1, a2, b2):
    """``h -> a h + b`` maps composed in sequence order (first ``(a1, b1)``, then ``(a2, b2)``)."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _last_row(x, rows, T: tl.constexpr):
    """Row ``T - 1`` of ``x [T, ...]`` as ``[1, ...]``, bit-exact: an integer sum of zeros and the row,
    which the compiler drops when the rows of ``x`` are registers of one thread."""
    bits = tl.where(rows == T - 1, x.to(tl.int32, bitcast=True), 0)
    return tl.sum(bits, 0, keep_dims=True).to(tl.float32, bitcast=True)


@triton.jit
def _scan_block(h, dt, u, Bt, A2, rows3):
    """States after each token of a block: ``h_t = exp2(dt_t A2) h_{t-1} + dt_t u_t B_t``.

    ``h [1, NP, BD]`` enters as the input of the first token; the scan over the block axis runs inside
    each thread, so only the ``b`` half of ``_compose`` is computed.
    """
    dA = tl.exp2(dt[:, None, :] * A2)
    x = (dt * u)[:, None, :] * Bt[:, :, None]
    x = tl.where(rows3 == 0, x + dA * h, x)
    _, hs = tl.associative_scan((dA, x), 0, _compose)
    return hs


@triton.jit
def _load_a2(A_ptr, d3, n3, m3, s_ad, s_an):
    """``A * log2(e)`` as a ``[1, NP, BD]`` tile (0 on padding: no decay there)."""
    return tl.load(A_ptr + d3 * s_ad + n3 * s_an, mask=m3, other=0.0).to(tl.float32) * 1.4426950408889634


@triton.jit
def _init_state(init_ptr, b, d3, n3, m3, s_ib, s_id, s_in, ss, HAS_INIT: tl.constexpr, QUANT: tl.constexpr,
                NP: tl.constexpr, BD: tl.constexpr):
    """The (dequantized) initial state as a ``[1, NP, BD]`` tile; zeros without one."""
    h = tl.zeros([1, NP, BD], tl.float32)
    if HAS_INIT:
        h = tl.load(init_ptr + b * s_ib + d3 * s_id + n3 * s_in, mask=m3, other=0.0).to(tl.float32)
        if QUANT:
            h = h * ss
    return h


@triton.jit
def _combine_chunks(h, A2, ds_ptr, st_ptr, b, c0, c_end, n_chunks, D, N, d3, n3, m3, rows3):
    """States after chunks ``c0 .. c0+U-1`` (those ``< c_end``) from the state ``h`` before ``c0``:
    ``[U, NP, BD]``, the rows past ``c_end`` repeat the last (their chunks act as the identity)."""
    cc = c0 + rows3
    mc = cc < c_end
    row = b * n_chunks + cc
    ds = tl.load(ds_ptr + row * D + d3, mask=mc & (d3 < D), other=0.0)
    s = tl.load(st_ptr + (row * D + d3) * N + n3, mask=mc & m3, other=0.0)
    dA = tl.exp2(A2 * ds)
    s = tl.where(rows3 == 0, s + dA * h, s)
    _, hs = tl.associative_scan((dA, s), 0, _compose)
    return hs


@triton.jit
def _prep(u, dt, m2, bias, su, sdt, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, QUANT: tl.constexpr):
    """fp32 ``u`` and processed ``dt`` (scale, bias, softplus) of a loaded ``[T, BD]`` block; ``dt = 0``
    outside ``m2`` (no decay, no input)."""
    u = u.to(tl.float32)
    dt = dt.to(tl.float32)
    if QUANT:
        u = u * su
        dt = dt * sdt
    if HAS_BIAS:
        dt = dt + bias[None, :]
    if SOFTPLUS:
        dt = softplus(dt)
    return u, tl.where(m2, dt, 0.0)


@triton.jit
def _fp32(v, scale, QUANT: tl.constexpr):
    v = v.to(tl.float32)
    if QUANT:
        v = v * scale
    return v


@triton.jit
def _chunk_state_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, st_ptr, ds_ptr,
        L, D, N, T_CHUNK, n_chunks,
        s_ub, s_ul, s_ud, s_tb, s_tl, s_td, s_ad, s_an, s_bb, s_bl, s_bn,
        u_scale, dt_scale, B_scale,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, QUANT: tl.constexpr, PTRS: tl.constexpr,
        BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, USE_PDL: tl.constexpr):
    """End state of chunk ``c`` from a zero start, and the chunk's ``dt`` sum, per channel block."""
    pdl_sync(USE_PDL)
    pid_d = tl.program_id(0)
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    rows = tl.arange(0, T)
    mask_d = offs_d < D
    mask_n = offs_n < N
    d3 = offs_d[None, None, :]
    n3 = offs_n[None, :, None]
    m3 = (d3 < D) & (n3 < N)
    rows3 = rows[:, None, None]
    A2 = _load_a2(A_ptr, d3, n3, m3, s_ad, s_an)
    bias = tl.zeros([BD], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    su = 1.0
    sdt = 1.0
    sb = 1.0
    if QUANT:
        su = scalar_arg(u_scale, PTRS & 1)
        sdt = scalar_arg(dt_scale, PTRS & 2)
        sb = scalar_arg(B_scale, PTRS & 16)
    h = tl.zeros([1, NP, BD], tl.float32)
    dsum = tl.zeros([BD], tl.float32)
    t_lo = c * T_CHUNK
    t_hi = tl.minimum(t_lo + T_CHUNK, L)
    tr = (t_lo + rows).to(tl.int64)[:, None]
    u_p = u_ptr + b * s_ub + tr * s_ul + offs_d[None, :] * s_ud
    dt_p = dt_ptr + b * s_tb + tr * s_tl + offs_d[None, :] * s_td
    B_p = B_ptr + b * s_bb + tr * s_bl + offs_n[None, :] * s_bn
    md = mask_d[None, :]
    mn = mask_n[None, :]
    mt = tr < t_hi
    uq = tl.load(u_p, mask=mt & md, other=0.0)
    dq = tl.load(dt_p, mask=mt & md, other=0.0)
    Bq = tl.load(B_p, mask=mt & mn, other=0.0)
    for t0 in range(t_lo, t_hi, T):
        u, dt = _prep(uq, dq, mt & md, bias, su, sdt, HAS_BIAS, SOFTPLUS, QUANT)
        Bt = _fp32(Bq, sb, QUANT)
        u_p += T * s_ul
        dt_p += T * s_tl
        B_p += T * s_bl
        mt = (t0 + T + rows)[:, None] < t_hi
        uq = tl.load(u_p, mask=mt & md, other=0.0)
        dq = tl.load(dt_p, mask=mt & md, other=0.0)
        Bq = tl.load(B_p, mask=mt & mn, other=0.0)
        h = _last_row(_scan_block(h, dt, u, Bt, A2, rows3), rows3, T)
        dsum += tl.sum(dt, 0)
    row = b * n_chunks + c
    tl.store(st_ptr + (row * D + d3) * N + n3, h, mask=m3)
    tl.store(ds_ptr + row * D + offs_d, dsum, mask=mask_d)


@triton.jit
def _chunk_combine_kernel(
        A_ptr, init_ptr, st_ptr, ds_ptr, D, N, n_chunks, s_ib, s_id, s_in, s_ad, s_an, state_scale,
        HAS_INIT: tl.constexpr, QUANT: tl.constexpr, PTRS: tl.constexpr,
        BD: tl.constexpr, NP: tl.constexpr, U: tl.constexpr, USE_PDL: tl.constexpr):
    """Incoming state of every chunk, in chunk order: ``H_{c+1} = exp2(A2 dsum_c) H_c + end_c``.

    ``H_{c+1}`` overwrites ``end_c`` in place; ``U`` chunks are loaded and combined at a time.
    """
    pdl_sync(USE_PDL)
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    rows = tl.arange(0, U)
    d3 = offs_d[None, None, :]
    n3 = offs_n[None, :, None]
    rows3 = rows[:, None, None]
    m3 = (d3 < D) & (n3 < N)
    A2 = _load_a2(A_ptr, d3, n3, m3, s_ad, s_an)
    h = _init_state(init_ptr, b, d3, n3, m3, s_ib, s_id, s_in, scalar_arg(state_scale, PTRS & 8), HAS_INIT, QUANT,
                    NP, BD)
    for c0 in range(0, n_chunks - 1, U):
        hs = _combine_chunks(h, A2, ds_ptr, st_ptr, b, c0, n_chunks - 1, n_chunks, D, N, d3, n3, m3, rows3)
        row = b * n_chunks + c0 + rows3
        tl.store(st_ptr + (row * D + d3) * N + n3, hs, mask=(c0 + rows3 < n_chunks - 1) & m3)
        h = _last_row(hs, rows3, U)


@triton.jit
def _chunk_scan_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, st_ptr, ds_ptr, y_ptr, last_ptr,
        L, D, N, T_CHUNK, n_chunks,
        s_ub, s_ul, s_ud, s_tb, s_tl, s_td, s_ad, s_an, s_bb, s_bl, s_bn, s_cb, s_cl, s_cn,
        s_zb, s_zl, s_zd, s_ib, s_id, s_in,
        u_scale, dt_scale, z_scale, state_scale, B_scale, C_scale,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
        HAS_INIT: tl.constexpr, QUANT: tl.constexpr, PTRS: tl.constexpr,
        COMBINE: tl.constexpr, CMAX: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
        USE_PDL: tl.constexpr):
    """Rescan of chunk ``c`` from its incoming state: ``y`` with the ``D`` skip and ``silu(z)`` gate;
    the last chunk also writes the final state.

    The incoming state is read from ``st`` (written by the combine kernel) or, with ``COMBINE`` (at
    most ``CMAX`` earlier chunks), combined here from the earlier chunks' end states.
    """
    pdl_sync(USE_PDL)
    pid_d = tl.program_id(0)
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    rows = tl.arange(0, T)
    mask_d = offs_d < D
    mask_n = offs_n < N
    d3 = offs_d[None, None, :]
    n3 = offs_n[None, :, None]
    m3 = (d3 < D) & (n3 < N)
    rows3 = rows[:, None, None]
    A2 = _load_a2(A_ptr, d3, n3, m3, s_ad, s_an)
    bias = tl.zeros([BD], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BD], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    su = 1.0
    sdt = 1.0
    sz = 1.0
    ss = 1.0
    sb = 1.0
    sc = 1.0
    if QUANT:
        su = scalar_arg(u_scale, PTRS & 1)
        sdt = scalar_arg(dt_scale, PTRS & 2)
        sz = scalar_arg(z_scale, PTRS & 4)
        ss = scalar_arg(state_scale, PTRS & 8)
        sb = scalar_arg(B_scale, PTRS & 16)
        sc = scalar_arg(C_scale, PTRS & 32)

    h = _init_state(init_ptr, b, d3, n3, m3, s_ib, s_id, s_in, ss, HAS_INIT, QUANT, NP, BD)
    if c > 0:
        if COMBINE:
            cr3 = tl.arange(0, CMAX)[:, None, None]
            hs = _combine_chunks(h, A2, ds_ptr, st_ptr, b, 0, c, n_chunks, D, N, d3, n3, m3, cr3)
            h = _last_row(hs, cr3, CMAX)
        else:
            h = tl.load(st_ptr + ((b * n_chunks + c - 1) * D + d3) * N + n3, mask=m3, other=0.0)

    t_lo = c * T_CHUNK
    t_hi = tl.minimum(t_lo + T_CHUNK, L)
    tr = (t_lo + rows).to(tl.int64)[:, None]
    u_p = u_ptr + b * s_ub + tr * s_ul + offs_d[None, :] * s_ud
    dt_p = dt_ptr + b * s_tb + tr * s_tl + offs_d[None, :] * s_td
    z_p = z_ptr + b * s_zb + tr * s_zl + offs_d[None, :] * s_zd
    y_p = y_ptr + b * L * D + tr * D + offs_d[None, :]
    B_p = B_ptr + b * s_bb + tr * s_bl + offs_n[None, :] * s_bn
    C_p = C_ptr + b * s_cb + tr * s_cl + offs_n[None, :] * s_cn
    md = mask_d[None, :]
    mn = mask_n[None, :]
    mt = tr < t_hi
    uq = tl.load(u_p, mask=mt & md, other=0.0)
    dq = tl.load(dt_p, mask=mt & md, other=0.0)
    zq = tl.load(z_p, mask=mt & md, other=0.0)
    Bq = tl.load(B_p, mask=mt & mn, other=0.0)
    Cq = tl.load(C_p, mask=mt & mn, other=0.0)
    for t0 in range(t_lo, t_hi, T):
        m2 = mt & md
        u, dt = _prep(uq, dq, m2, bias, su, sdt, HAS_BIAS, SOFTPLUS, QUANT)
        Bt = _fp32(Bq, sb, QUANT)
        Ct = _fp32(Cq, sc, QUANT)
        z = _fp32(zq, sz, QUANT)
        u_p += T * s_ul
        dt_p += T * s_tl
        z_p += T * s_zl
        B_p += T * s_bl
        C_p += T * s_cl
        mt = (t0 + T + rows)[:, None] < t_hi
        uq = tl.load(u_p, mask=mt & md, other=0.0)
        dq = tl.load(dt_p, mask=mt & md, other=0.0)
        if HAS_Z:
            zq = tl.load(z_p, mask=mt & md, other=0.0)
        Bq = tl.load(B_p, mask=mt & mn, other=0.0)
        Cq = tl.load(C_p, mask=mt & mn, other=0.0)

        hs = _scan_block(h, dt, u, Bt, A2, rows3)
        y = tl.sum(hs * Ct[:, :, None], 1)
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            y = y * silu(z)
        tl.store(y_p, y.to(y_ptr.dtype.element_ty), mask=m2)
        y_p += T * D
        h = _last_row(hs, rows3, T)

    if c == n_chunks - 1:
        out = last_ptr + b * D * N + d3 * N + n3
        if QUANT:
            tl.store(out, quantize_int8(h, ss), mask=m3)
        else:
            tl.store(out, h, mask=m3)


WARPS_PER_SM = 40
MIN_CHUNK = 64
COMBINE_BD = 32
COMBINE_ROWS = 4
FOLD_CHUNKS = 4  # up to this many earlier chunks, each scan program combines its incoming state itself
SCAN_MAX_REGS = 128  # 16 one-warp scan programs per SM (the default plan's wave); small tiles only


class ScanPlan(NamedTuple):
    """``bd`` channels per program (one warp), ``t_block`` tokens per register block, chunks of
    ``t_chunk`` tokens, ``n_chunks`` of them."""
    bd: int
    t_block: int
    t_chunk: int
    n_chunks: int


def scan_plan(bt: int, L: int, d: int, n: int, sms: int, chunk: int | None = None, bd: int | None = None,
              t_block: int | None = None) -> ScanPlan:
    """Chunking for ``[bt, L, d]`` inputs with ``n`` states on a GPU with ``sms`` SMs.

    Defaults: 8 channels per warp (4 lanes per channel at ``N = 16``), blocks of 8 tokens (fewer for
    ``N > 16``: a thread holds ``t_block * N / 4`` values of each block tile), and as
    many chunks (of at least ``MIN_CHUNK`` tokens) as keep the one-warp programs of the scan within
    one wave of ``WARPS_PER_SM`` resident warps per SM: more chunks add pass-1 work, a second partial
    wave doubles the time of the scan.
    """
    np2 = next_pow2(max(n, 1))
    bd = bd or 32 // min(4, np2)
    t_block = t_block or max(2, min(8, 128 // np2))
    if chunk is None:
        want = max(1, sms * WARPS_PER_SM // (bt * cdiv(d, bd)))
        chunk = max(MIN_CHUNK, cdiv(L, want))
    chunk = max(t_block, cdiv(chunk, t_block) * t_block)
    return ScanPlan(bd, t_block, chunk, max(1, cdiv(L, chunk)))


def state_block(p: ScanPlan, np2: int) -> int:
    """Token block of the state pass: twice the scan's while its tile stays small (the state pass
    keeps fewer values per token, so a longer block buys more independent work per warp)."""
    return 2 * p.t_block if p.t_block * np2 <= 128 else p.t_block


def _scale(s, name: str):
    if isinstance(s, Tensor):
        if s.numel() != 1:
            raise InvalidArgumentError(f"{name} must be a float or a one-element tensor, got {tuple(s.shape)}")
        return s.reshape(1).float()
    return float(s)


def _scan(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
          bias: Tensor | None, softplus_dt: bool, init: Tensor | None, out_dtype: torch.dtype,
          scales: tuple | None = None, chunk: int | None = None, bd: int | None = None,
          t_block: int | None = None) -> tuple[Tensor, Tensor]:
    """Shared wrapper; ``scales`` = (u, dt, z, state, B, C) scales for int8 inputs, None for fp inputs.

    ``chunk``, ``bd``, ``t_block`` override the plan (see ``scan_plan``). A call with the signature of an
    earlier one replays its launches (``reuse``).
    """
    key = None
    if reuse.ENABLED:
        key = (reuse.signature(u), reuse.signature(dt), reuse.signature(B), reuse.signature(C),
               reuse.signature(z), reuse.signature(init), reuse.fixed(A), reuse.fixed(D), reuse.fixed(bias),
               bool(softplus_dt), out_dtype, scales and tuple(map(reuse.scalar_or_fixed, scales)), chunk, bd, t_block)
        hit = _REPLAYS.get_usable(key)
        if hit is not None:
            y, last, _, _ = hit.run([t for t in (u, dt, B, C, z, init) if t is not None])
            return y, last
    if not (u.dim() == 3 and dt.shape == u.shape):
        raise InvalidArgumentError(f"u and delta must be [B, L, D] alike, got "
           f"{tuple(u.shape)} and {tuple(dt.shape)}")
    bt, L, d = u.shape
    if not (A.dim() == 2 and A.shape[0] == d):
        raise InvalidArgumentError(f"A must be [{d}, N], got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (bt, L, n):
            raise InvalidArgumentError(f"{name} must be [{bt}, {L}, {n}], got {tuple(t.shape)}")
    if z is not None:
        if z.shape != u.shape:
            raise InvalidArgumentError(f"z must be {tuple(u.shape)}, got {tuple(z.shape)}")
    if init is not None:
        if init.shape != (bt, d, n):
            raise InvalidArgumentError(f"initial_state must be [{bt}, {d}, {n}], got {tuple(init.shape)}")
    for name, t in (("D", D), ("delta_bias", bias)):
        if t is not None:
            if t.numel() != d:
                raise InvalidArgumentError(f"{name} must have {d} elements, got {tuple(t.shape)}")
    quant = scales is not None
    y = torch.empty(bt, L, d, device=u.device, dtype=out_dtype)
    last = torch.empty(bt, d, n, device=u.device, dtype=torch.int8 if quant else torch.float32)
    if L == 0 or bt == 0 or d == 0:
        if init is None:
            last.zero_()
        else:
            last.copy_(init)
        return y, last
    p = scan_plan(bt, L, d, n, num_sms(u.device), chunk, bd, t_block)
    np2 = next_pow2(n)
    st = torch.empty(bt, p.n_chunks, d, n, device=u.device, dtype=torch.float32)
    ds = torch.empty(bt, p.n_chunks, d, device=u.device, dtype=torch.float32)
    D_ = D.reshape(-1).contiguous() if D is not None else u
    bias_ = bias.reshape(-1).contiguous() if bias is not None else u
    z_ = z if z is not None else u
    init_ = init if init is not None else last
    sc = scales if quant else (1.0,) * 6
    ptrs = sum(1 << i for i, s in enumerate(sc) if isinstance(s, Tensor))
    su, sdt, sz, ss, sb, scc = sc
    flags = dict(QUANT=quant, PTRS=ptrs, NP=np2)
    nblk = cdiv(d, p.bd)
    fold = 1 < p.n_chunks <= FOLD_CHUNKS + 1
    pdl = pdl_args(u, eager=True)
    launches = []
    if p.n_chunks > 1:
        launches.append(launch_for_reuse(_chunk_state_kernel, (nblk, p.n_chunks - 1, bt),
               u, dt, A, B, bias_, st, ds, L, d, n, p.t_chunk, p.n_chunks,
               *u.stride(), *dt.stride(), *A.stride(), *B.stride(), su, sdt, sb,
               HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus_dt), BD=p.bd, T=state_block(p, np2),
               num_warps=1, **flags, **pdl))
        if not fold:
            launches.append(launch_for_reuse(_chunk_combine_kernel, (cdiv(d, COMBINE_BD), bt),
                   A, init_, st, ds, d, n, p.n_chunks, *init_.stride(), *A.stride(), ss,
                   HAS_INIT=init is not None, BD=COMBINE_BD, U=COMBINE_ROWS, num_warps=1, **flags, **pdl))
    regs = SCAN_MAX_REGS if p.t_block * np2 * max(1, p.bd // 8) <= 128 else None
    launches.append(launch_for_reuse(_chunk_scan_kernel, (nblk, p.n_chunks, bt),
           u, dt, A, B, C, D_, z_, bias_, init_, st, ds, y, last, L, d, n, p.t_chunk, p.n_chunks,
           *u.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *z_.stride(), *init_.stride(),
           su, sdt, sz, ss, sb, scc,
           HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus_dt), HAS_D=D is not None, HAS_Z=z is not None,
           HAS_INIT=init is not None, COMBINE=fold, CMAX=FOLD_CHUNKS, BD=p.bd, T=p.t_block,
           num_warps=1, maxnreg=regs, **flags, **pdl))
    if key is not None:
        constants = [t for t in (A, D, bias) if t is not None] + [s for s in sc if isinstance(s, Tensor)]
        _REPLAYS.keep(key, reuse.record(launches, [t for t in (u, dt, B, C, z, init) if t is not None],
                                        [y, last, st, ds], constants))
    return y, last


_REPLAYS = reuse.ReplayTable()


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                   initial_state: Tensor | None = None, chunk_size: int = 32) -> tuple[Tensor, Tensor]:
    """Triton ``reference.selective_scan``: ``(y [Bt, L, D] in u.dtype, last_state [Bt, D, N] fp32)``.

    ``chunk_size`` (the reference's internal block) is ignored: the kernel picks its own chunking.
    """
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, u.dtype)


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
            if t.dtype != torch.int8:
                raise InvalidArgumentError(f"{name} must be int8, got {t.dtype}")
    scales = (_scale(u_scale, "u_scale"), _scale(dt_scale, "dt_scale"),
              _scale(z_scale, "z_scale") if z_q is not None else 1.0, _scale(state_scale, "state_scale"),
              _scale(B_scale, "B_scale"), _scale(C_scale, "C_scale"))
    return _scan(u_q, dt_q, A, B_q, C_q, D, z_q, dt_bias, True, initial_state, out_dtype, scales)
