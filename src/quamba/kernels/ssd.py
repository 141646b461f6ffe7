"""Mamba2 SSD chunked scan (prefill) in Triton; fp inputs and int8 inputs.

The chunked algorithm in four launches (``T`` = chunk size, ``c`` a chunk, ``cs`` the within-chunk
cumulative sum of ``dt * A`` in log2 units):

1. ``_state_kernel`` per (chunk, batch*head, state block): ``dt`` processing (bias, softplus, clamp),
   ``cs``, both stored for the later kernels, and the chunk's end state from a zero start,
   ``sum_t exp(cs_end - cs_t) dt_t x_t B_t^T`` (a tensor-core dot over the chunk);
2. ``_cb_kernel`` per (block pair, chunk, batch*group): ``C B^T`` of the chunk, shared by the heads
   of a group (int8 x int8 -> int32, exact, on the int8 path);
3. ``_pass_kernel`` per (state block, batch*head): the chunk states are passed along the chunks in
   order, starting from the initial state; each chunk's incoming state is written in the dot operand
   dtype, and the final state in fp32 (int8 on the int8 path);
4. ``_out_kernel`` per (row block, chunk, batch*head): ``y = exp(cs_t) C_t S_in^T`` plus the causal
   intra-chunk part ``sum_{s<=t} (C_t . B_s) exp(cs_t - cs_s) dt_s x_s`` (dot), plus ``D x``.

Dot operands are in the input dtype (fp16/bf16) with fp32 accumulation; fp32 inputs use exact fp32
dots. On the int8 path int8 values are exact in fp16; the chunk-state operand ``x * weight`` is
split into an fp16 high and low part (two dots), so chunk states are accurate to ~1e-6 and the
int8 final state matches the reference except for rare rounding ties; bf16 inputs use the same split.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .selective_scan import _scale, quantize_int8, scalar_arg, softplus
from . import reuse
from .launch import launch_for_reuse, cdiv, next_pow2
from .pdl import pdl_args, pdl_sync
from ..errors import InvalidArgumentError

Tensor = torch.Tensor


@triton.jit
def _dt_block(dt_ptrs, mask, bias, lo, hi, dt_scale, QUANT: tl.constexpr, HAS_BIAS: tl.constexpr,
              SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr):
    dt = tl.load(dt_ptrs, mask=mask, other=0.0).to(tl.float32)
    if QUANT:
        dt = dt * dt_scale
    if HAS_BIAS:
        dt = dt + bias
    if SOFTPLUS:
        dt = softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, lo), hi)
    return tl.where(mask, dt, 0.0)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _state_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, dtp_ptr, cs_ptr, st_ptr,
        L, H, G, N, P, NC, lo, hi, x_scale, dt_scale, B_scale,
        s_xb, s_xl, s_xh, s_xp, s_db, s_dl, s_dh, s_bb, s_bl, s_bg, s_bn,
        QUANT: tl.constexpr, PTRS: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_LIMIT: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr,
        OP: tl.constexpr, CHUNK: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
        USE_PDL: tl.constexpr):
    pdl_sync(USE_PDL)
    c = tl.program_id(0)
    bh = tl.program_id(1)
    pn = tl.program_id(2)
    b = (bh // H).to(tl.int64)
    h = bh % H
    g = h // (H // G)
    a2 = tl.load(A_ptr + h).to(tl.float32) * 1.4426950408889634
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h).to(tl.float32)
    sx = 1.0
    sd = 1.0
    sb = 1.0
    if QUANT:
        sx = scalar_arg(x_scale, PTRS & 1)
        sd = scalar_arg(dt_scale, PTRS & 2)
        sb = scalar_arg(B_scale, PTRS & 4)
    t_lo = c * CHUNK
    n_valid = L - t_lo
    dt_base = dt_ptr + b * s_db + h * s_dh + t_lo * s_dl
    offs_t = tl.arange(0, BT)
    offs_p = tl.arange(0, BP)
    offs_n = pn * BN + tl.arange(0, BN)

    total = 0.0
    for k in range(0, CHUNK, BT):
        m = k + offs_t < n_valid
        dt = _dt_block(dt_base + (k + offs_t) * s_dl, m, bias, lo, hi, sd, QUANT, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
        total += tl.sum(dt * a2, axis=0)

    x_base = x_ptr + b * s_xb + h * s_xh + t_lo * s_xl
    B_base = B_ptr + b * s_bb + g * s_bg + t_lo * s_bl
    row = (b * H + h) * NC + c
    acc = tl.zeros([BP, BN], tl.float32)
    carry = 0.0
    for k in range(0, CHUNK, BT):
        m = k + offs_t < n_valid
        dt = _dt_block(dt_base + (k + offs_t) * s_dl, m, bias, lo, hi, sd, QUANT, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
        a = dt * a2
        cs = tl.cumsum(a, axis=0) + carry
        carry += tl.sum(a, axis=0)
        if pn == 0:
            tl.store(dtp_ptr + row * CHUNK + k + offs_t, dt)
            tl.store(cs_ptr + row * CHUNK + k + offs_t, cs)
        w = tl.exp2(total - cs) * dt * sx
        xt = tl.load(x_base + (k + offs_t)[:, None] * s_xl + offs_p[None, :] * s_xp,
                     mask=m[:, None] & (offs_p < P)[None, :], other=0.0).to(tl.float32) * w[:, None]
        Bt = tl.load(B_base + (k + offs_t)[:, None] * s_bl + offs_n[None, :] * s_bn,
                     mask=m[:, None] & (offs_n < N)[None, :], other=0.0).to(OP)
        xh = xt.to(OP)
        acc += _dot(tl.trans(xh), Bt, IEEE)
        if SPLIT:
            acc += _dot(tl.trans((xt - xh.to(tl.float32)).to(OP)), Bt, IEEE)
    if QUANT:
        acc = acc * sb
    st = st_ptr + ((b * NC + c) * H + h) * P * N
    tl.store(st + offs_p[:, None] * N + offs_n[None, :], acc, mask=(offs_p < P)[:, None] & (offs_n < N)[None, :])


@triton.jit
def _cb_kernel(
        B_ptr, C_ptr, cb_ptr, L, G, N, NC, B_scale, C_scale,
        s_bb, s_bl, s_bg, s_bn, s_cb, s_cl, s_cg, s_cn,
        QUANT: tl.constexpr, PTRS: tl.constexpr, IEEE: tl.constexpr, OP: tl.constexpr,
        CHUNK: tl.constexpr, BM: tl.constexpr, NP: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_sync(USE_PDL)
    pair = tl.program_id(0)
    c = tl.program_id(1)
    bg = tl.program_id(2)
    nb = CHUNK // BM
    mi = pair // nb
    ki = pair % nb
    if ki <= mi:
        b = (bg // G).to(tl.int64)
        g = bg % G
        t_lo = c * CHUNK
        n_valid = L - t_lo
        offs_m = mi * BM + tl.arange(0, BM)
        offs_k = ki * BM + tl.arange(0, BM)
        offs_n = tl.arange(0, NP)
        mn = (offs_n < N)[None, :]
        Cm = tl.load(C_ptr + b * s_cb + g * s_cg + (t_lo + offs_m)[:, None] * s_cl + offs_n[None, :] * s_cn,
                     mask=(offs_m < n_valid)[:, None] & mn, other=0.0)
        Bk = tl.load(B_ptr + b * s_bb + g * s_bg + (t_lo + offs_k)[:, None] * s_bl + offs_n[None, :] * s_bn,
                     mask=(offs_k < n_valid)[:, None] & mn, other=0.0)
        if QUANT:
            cb = tl.dot(Cm, tl.trans(Bk), out_dtype=tl.int32).to(tl.float32)
            cb = cb * (scalar_arg(B_scale, PTRS & 4) * scalar_arg(C_scale, PTRS & 8))
        else:
            cb = _dot(Cm.to(OP), tl.trans(Bk.to(OP)), IEEE)
        out = cb_ptr + ((b * NC + c) * G + g) * CHUNK * CHUNK
        tl.store(out + offs_m[:, None] * CHUNK + offs_k[None, :], cb)


@triton.jit
def _pass_kernel(st_ptr, cs_ptr, init_ptr, sin_ptr, last_ptr, H, NC, SIZE, state_scale,
                 QUANT: tl.constexpr, PTRS: tl.constexpr, HAS_INIT: tl.constexpr,
                 CHUNK: tl.constexpr, BS: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_sync(USE_PDL)
    blk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs = blk * BS + tl.arange(0, BS)
    m = offs < SIZE
    ss = 1.0
    if QUANT:
        ss = scalar_arg(state_scale, PTRS & 16)
    s = tl.zeros([BS], tl.float32)
    if HAS_INIT:
        s = tl.load(init_ptr + bh * SIZE + offs, mask=m, other=0.0).to(tl.float32)
        if QUANT:
            s = s * ss
    step = H * SIZE
    base = st_ptr + b * NC * step + h * SIZE + offs
    cs_row = cs_ptr + bh * NC * CHUNK + CHUNK - 1
    nxt = tl.load(base, mask=m, other=0.0)
    nxt_a = tl.load(cs_row)
    for c in range(NC):
        cur = nxt
        a = nxt_a
        cn = tl.minimum(c + 1, NC - 1)
        nxt = tl.load(base + cn * step, mask=m, other=0.0)
        nxt_a = tl.load(cs_row + cn * CHUNK)
        tl.store(sin_ptr + b * NC * step + h * SIZE + offs + c * step, s.to(sin_ptr.dtype.element_ty), mask=m)
        s = tl.exp2(a) * s + cur
    if QUANT:
        tl.store(last_ptr + bh * SIZE + offs, quantize_int8(s, ss), mask=m)
    else:
        tl.store(last_ptr + bh * SIZE + offs, s, mask=m)


@triton.jit
def _out_inter(Cm, sin_ptr, cs_ptr, b, c, h, H, N, P, NC, sc, offs_m, offs_p, offs_n,
               IEEE: tl.constexpr, CHUNK: tl.constexpr):
    """``exp(cs_t) * C_t . S_in`` for one head: the contribution of the chunk's incoming state."""
    cs_m = tl.load(cs_ptr + ((b * H + h) * NC + c) * CHUNK + offs_m)
    S = tl.load(sin_ptr + ((b * NC + c) * H + h) * P * N + offs_p[:, None] * N + offs_n[None, :],
                mask=(offs_p < P)[:, None] & (offs_n < N)[None, :], other=0.0)
    return _dot(Cm, tl.trans(S), IEEE) * (tl.exp2(cs_m) * sc)[:, None], cs_m


@triton.jit
def _out_intra(acc, cb, cs_m, x_base, dtp_ptr, cs_ptr, row, n_valid, sx, s_xl, s_xp, P, offs_m, offs_k, offs_p,
               IEEE: tl.constexpr, OP: tl.constexpr, CHUNK: tl.constexpr):
    """One key block of the causal in-chunk part for one head, added to ``acc``."""
    cs_k = tl.load(cs_ptr + row * CHUNK + offs_k)
    dt_k = tl.load(dtp_ptr + row * CHUNK + offs_k)
    decay = tl.exp2(tl.minimum(cs_m[:, None] - cs_k[None, :], 0.0))
    w = tl.where(offs_m[:, None] >= offs_k[None, :], cb * decay * (dt_k * sx)[None, :], 0.0)
    xk = tl.load(x_base + offs_k[:, None] * s_xl + offs_p[None, :] * s_xp,
                 mask=(offs_k < n_valid)[:, None] & (offs_p < P)[None, :], other=0.0).to(OP)
    return acc + _dot(w.to(OP), xk, IEEE)


@triton.jit
def _out_store(acc, x_base, D_ptr, h, y_base, n_valid, sx, s_xl, s_xp, s_yl, s_yp, P, offs_m, offs_p,
               HAS_D: tl.constexpr):
    m = (offs_m < n_valid)[:, None] & (offs_p < P)[None, :]
    if HAS_D:
        xm = tl.load(x_base + offs_m[:, None] * s_xl + offs_p[None, :] * s_xp, mask=m, other=0.0).to(tl.float32)
        acc += xm * (tl.load(D_ptr + h).to(tl.float32) * sx)
    tl.store(y_base + offs_m[:, None] * s_yl + offs_p[None, :] * s_yp, acc.to(y_base.dtype.element_ty), mask=m)


@triton.jit
def _out_kernel(
        x_ptr, C_ptr, D_ptr, dtp_ptr, cs_ptr, sin_ptr, cb_ptr, y_ptr,
        L, H, G, N, P, NC, x_scale, C_scale,
        s_xb, s_xl, s_xh, s_xp, s_cb, s_cl, s_cg, s_cn, s_yb, s_yl, s_yh, s_yp,
        QUANT: tl.constexpr, PTRS: tl.constexpr, HAS_D: tl.constexpr, IEEE: tl.constexpr,
        OP: tl.constexpr, CHUNK: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
        BP: tl.constexpr, NP: tl.constexpr, TWO_HEADS: tl.constexpr, USE_PDL: tl.constexpr):
    """Rows ``offs_m`` of one chunk for one head, or for two heads of a group (``TWO_HEADS``),
    which then share the loads of ``C`` and of the ``C B^T`` blocks."""
    pdl_sync(USE_PDL)
    mi = tl.program_id(0)
    c = tl.program_id(1)
    bh = tl.program_id(2)
    if TWO_HEADS:
        b = (bh // (H // 2)).to(tl.int64)
        h = (bh % (H // 2)) * 2
    else:
        b = (bh // H).to(tl.int64)
        h = bh % H
    g = h // (H // G)
    sx = 1.0
    sc = 1.0
    if QUANT:
        sx = scalar_arg(x_scale, PTRS & 1)
        sc = scalar_arg(C_scale, PTRS & 8)
    t_lo = c * CHUNK
    n_valid = L - t_lo
    offs_m = mi * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, NP)
    Cm = tl.load(C_ptr + b * s_cb + g * s_cg + (t_lo + offs_m)[:, None] * s_cl + offs_n[None, :] * s_cn,
                 mask=(offs_m < n_valid)[:, None] & (offs_n < N)[None, :], other=0.0).to(OP)
    x_base = x_ptr + b * s_xb + h * s_xh + t_lo * s_xl
    y_base = y_ptr + b * s_yb + h * s_yh + t_lo * s_yl
    row = (b * H + h) * NC + c
    acc, cs_m = _out_inter(Cm, sin_ptr, cs_ptr, b, c, h, H, N, P, NC, sc, offs_m, offs_p, offs_n, IEEE, CHUNK)
    if TWO_HEADS:
        acc2, cs_m2 = _out_inter(Cm, sin_ptr, cs_ptr, b, c, h + 1, H, N, P, NC, sc, offs_m, offs_p, offs_n,
                                 IEEE, CHUNK)

    cb_base = cb_ptr + ((b * NC + c) * G + g) * CHUNK * CHUNK + offs_m[:, None] * CHUNK
    for k in range(0, (mi + 1) * BM, BK):
        offs_k = k + tl.arange(0, BK)
        cb = tl.load(cb_base + offs_k[None, :])
        acc = _out_intra(acc, cb, cs_m, x_base, dtp_ptr, cs_ptr, row, n_valid, sx, s_xl, s_xp, P,
                         offs_m, offs_k, offs_p, IEEE, OP, CHUNK)
        if TWO_HEADS:
            acc2 = _out_intra(acc2, cb, cs_m2, x_base + s_xh, dtp_ptr, cs_ptr, row + NC, n_valid, sx, s_xl, s_xp,
                              P, offs_m, offs_k, offs_p, IEEE, OP, CHUNK)

    _out_store(acc, x_base, D_ptr, h, y_base, n_valid, sx, s_xl, s_xp, s_yl, s_yp, P, offs_m, offs_p, HAS_D)
    if TWO_HEADS:
        _out_store(acc2, x_base + s_xh, D_ptr, h + 1, y_base + s_yh, n_valid, sx, s_xl, s_xp, s_yl, s_yp, P,
                   offs_m, offs_p, HAS_D)


OUT_TWO_HEADS = True  # output programs take two heads of a group: half the C and C.B^T loads

_OP = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
_TORCH = {v: k for k, v in _OP.items()}


def _ssd(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_limit, init, out_dtype, scales):
    """Shared wrapper; ``scales`` = (x, dt, B, C, state) scales on the int8 path, None for fp inputs. A call
    with the signature of an earlier one replays its launches (``reuse``)."""
    key = None
    if reuse.ENABLED:
        key = (reuse.signature(x), reuse.signature(dt), reuse.signature(B), reuse.signature(C), chunk_size,
               reuse.fixed(A), reuse.fixed(D), reuse.fixed(dt_bias), bool(dt_softplus), tuple(dt_limit),
               reuse.signature(init), out_dtype, scales and tuple(map(reuse.scalar_or_fixed, scales)))
        hit = _REPLAYS.get_usable(key)
        if hit is not None:
            made = hit.run([x, dt, B, C] if init is None else [x, dt, B, C, init])
            return made[0], made[1]
    if x.dim() != 4:
        raise InvalidArgumentError(f"x must be [B, L, H, P], got {tuple(x.shape)}")
    bt, L, h, p = x.shape
    if dt.shape != (bt, L, h):
        raise InvalidArgumentError(f"dt must be [{bt}, {L}, {h}], got {tuple(dt.shape)}")
    if not (B.dim() == 4 and B.shape[:2] == (bt, L) and C.shape == B.shape):
        raise InvalidArgumentError(f"B and C must be [{bt}, {L}, G, N] alike, got {tuple(B.shape)} and "
                                   f"{tuple(C.shape)}")
    g, n = B.shape[2], B.shape[3]
    if not (g > 0 and h % g == 0):
        raise InvalidArgumentError(f"{h} heads cannot be split into {g} groups")
    if A.numel() != h:
        raise InvalidArgumentError(f"A must have {h} elements, got {tuple(A.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None:
            if t.numel() != h:
                raise InvalidArgumentError(f"{name} must have {h} elements, got {tuple(t.shape)}")
    if init is not None:
        if init.shape != (bt, h, p, n):
            raise InvalidArgumentError(f"initial_state must be [{bt}, {h}, {p}, {n}], got {tuple(init.shape)}")
    if not (isinstance(chunk_size, int) and chunk_size >= 16 and chunk_size & (chunk_size - 1) == 0):
        raise InvalidArgumentError(f"chunk_size must be a power of two >= 16, got {chunk_size}")
    quant = scales is not None
    if not (quant or x.dtype in _OP):
        raise InvalidArgumentError(f"unsupported dtype {x.dtype}")
    dev = x.device
    y = torch.empty(bt, L, h, p, device=dev, dtype=out_dtype)
    last = torch.empty(bt, h, p, n, device=dev, dtype=torch.int8 if quant else torch.float32)
    if L == 0 or bt == 0:
        if init is None:
            last.zero_()
        else:
            last.copy_(init)
        return y, last
    T = chunk_size
    nc = cdiv(L, T)
    op = tl.float16 if quant else _OP[x.dtype]
    ieee = op == tl.float32
    split = quant or op == tl.bfloat16
    bp = max(16, next_pow2(p))
    np2 = max(32 if quant else 16, next_pow2(n))
    bn = min(np2, 128)
    bt_blk = min(T, 32)
    bm = min(T, 64)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    has_limit = (lo, hi) != (0.0, float("inf"))
    sx, sdt, sb, sc, ss = scales if quant else (1.0,) * 5
    ptrs = sum(1 << i for i, s in enumerate((sx, sdt, sb, sc, ss)) if isinstance(s, Tensor))

    dtp = torch.empty(bt, h, nc, T, device=dev, dtype=torch.float32)
    cs = torch.empty(bt, h, nc, T, device=dev, dtype=torch.float32)
    st = torch.empty(bt, nc, h, p, n, device=dev, dtype=torch.float32)
    cb = torch.empty(bt, nc, g, T, T, device=dev, dtype=torch.float32)
    A_ = A.reshape(-1)
    bias_ = dt_bias.reshape(-1) if dt_bias is not None else A_
    D_ = D.reshape(-1) if D is not None else A_

    pdl = pdl_args(x, eager=True)
    launches = [launch_for_reuse(_state_kernel, (nc, bt * h, cdiv(n, bn)),
           x, dt, A_, B, bias_, dtp, cs, st, L, h, g, n, p, nc, lo, hi, sx, sdt, sb,
           *x.stride(), *dt.stride(), *B.stride(),
           QUANT=quant, PTRS=ptrs, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit,
           SPLIT=split, IEEE=ieee, OP=op, CHUNK=T, BT=bt_blk, BP=bp, BN=bn, num_warps=4, **pdl)]
    launches.append(launch_for_reuse(_cb_kernel, ((T // bm) ** 2, nc, bt * g),
           B, C, cb, L, g, n, nc, sb, sc, *B.stride(), *C.stride(),
           QUANT=quant, PTRS=ptrs, IEEE=ieee, OP=op, CHUNK=T, BM=bm, NP=np2, num_warps=4, **pdl))
    size = p * n
    bs = min(1024, next_pow2(size))
    init_ = init.contiguous() if init is not None else last
    sin = torch.empty(bt, nc, h, p, n, device=dev, dtype=_TORCH[op])
    launches.append(launch_for_reuse(_pass_kernel, (cdiv(size, bs), bt * h),
           st, cs, init_, sin, last, h, nc, size, ss,
           QUANT=quant, PTRS=ptrs, HAS_INIT=init is not None, CHUNK=T, BS=bs, num_warps=4, **pdl))
    two = OUT_TWO_HEADS and (h // g) % 2 == 0
    launches.append(launch_for_reuse(_out_kernel, (T // bm, nc, bt * h // (2 if two else 1)),
           x, C, D_, dtp, cs, sin, cb, y, L, h, g, n, p, nc, sx, sc,
           *x.stride(), *C.stride(), *y.stride(),
           QUANT=quant, PTRS=ptrs, HAS_D=D is not None, IEEE=ieee, OP=op, CHUNK=T, BM=bm, BK=bm,
           BP=bp, NP=np2, TWO_HEADS=two, num_warps=4, num_stages=1 if two else 2, **pdl))
    if key is not None:
        constants = [t for t in (A, D, dt_bias) if t is not None] + [s for s in (sx, sdt, sb, sc, ss)
                                                                    if isinstance(s, Tensor)]
        inputs = [x, dt, B, C] if init is None else [x, dt, B, C, init]
        _REPLAYS.keep(key, reuse.record(launches, inputs, [y, last, dtp, cs, st, cb, sin], constants))
    return y, last


_REPLAYS = reuse.ReplayTable()


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
                dt_limit: tuple[float, float] = (0.0, float("inf")),
                initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Triton ``reference.ssd_chunked``: ``(y [Bt, L, H, P] in x.dtype, final_state [Bt, H, P, N] fp32)``."""
    return _ssd(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_limit, initial_state, x.dtype, None)


def qssd_chunked(x_q: Tensor, x_scale: float, dt_q: Tensor, dt_scale: float, A: Tensor, B_q: Tensor,
                 B_scale: float, C_q: Tensor, C_scale: float, chunk_size: int, D: Tensor | None,
                 dt_bias: Tensor | None, state_scale: float, dt_limit: tuple[float, float] = (0.0, float("inf")),
                 initial_state: Tensor | None = None,
                 out_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """Triton ``qreference.qssd_chunked``: int8 ``x, dt, B, C`` (per-tensor scales, floats or
    one-element tensors) and int8 initial state; returns ``(y in out_dtype, int8 final state)``."""
    for name, t in (("x_q", x_q), ("dt_q", dt_q), ("B_q", B_q), ("C_q", C_q), ("initial_state", initial_state)):
        if t is not None:
            if t.dtype != torch.int8:
                raise InvalidArgumentError(f"{name} must be int8, got {t.dtype}")
    scales = tuple(_scale(s, name) for s, name in ((x_scale, "x_scale"), (dt_scale, "dt_scale"),
                                                   (B_scale, "B_scale"), (C_scale, "C_scale"),
                                                   (state_scale, "state_scale")))
    return _ssd(x_q, dt_q, A, B_q, C_q, chunk_size, D, dt_bias, True, dt_limit, initial_state, out_dtype, scales)
