"""Plain-torch reference math of every Mamba op: the ground truth that kernels are tested against.

Layouts are token-major ("channel-last"), the layout linear layers produce:
- sequences ``[batch, seqlen, channels]``; Mamba2 heads ``[batch, seqlen, nheads, headdim]``;
- conv state ``[batch, channels, d_conv]`` (the last ``d_conv`` conv inputs, oldest first);
- Mamba1 SSM state ``[batch, d_inner, d_state]``; Mamba2 SSM state ``[batch, nheads, headdim, d_state]``.

All arithmetic is fp32; outputs are cast back to the input dtype, SSM states are returned in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError

Tensor = torch.Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight^T + bias`` (the reference of the decode GEMV kernel)."""
    return F.linear(x, weight, bias)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMSNorm over the last dim; statistics in fp32, result in ``x.dtype``."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = y.to(x.dtype)
    return y * weight if weight is not None else y


def add_rms_norm(x: Tensor, residual: Tensor | None, weight: Tensor | None, eps: float,
                 residual_in_fp32: bool = True) -> tuple[Tensor, Tensor]:
    """Pre-norm block input: ``residual += x`` then RMSNorm. Returns ``(normed, new_residual)``.

    The residual stays fp32 when ``residual_in_fp32`` (as in the state-spaces checkpoints).
    """
    res = x if residual is None else residual + x.to(residual.dtype)
    if residual_in_fp32:
        res = res.float()
    return rms_norm(res.to(x.dtype), weight, eps), res


def gated_rms_norm(x: Tensor, z: Tensor | None, weight: Tensor | None, eps: float, group_size: int) -> Tensor:
    """Mamba2 mixer norm, ``norm_before_gate=False``: RMSNorm per group of ``x * silu(z)``, times weight."""
    xf = x.float()
    if z is not None:
        xf = xf * F.silu(z.float())
    shape = xf.shape
    g = xf.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    y = g.reshape(shape).to(x.dtype)
    return y * weight if weight is not None else y


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                  initial_state: Tensor | None = None, update_state: bool = False) -> Tensor:
    """Depthwise causal conv over ``x [B, L, D]`` with ``weight [D, K]``.

    ``initial_state [B, D, K]`` holds the inputs preceding ``x`` (only its last ``K-1`` are used);
    zeros when None. ``update_state``: replace it in place by the state after ``x``
    (``conv_state_from_inputs``), as a prefill that continues a cache does.
    """
    b, L, d = x.shape
    k = weight.shape[-1]
    xt = x.float().transpose(1, 2)
    if initial_state is None:
        pre = xt.new_zeros(b, d, k - 1)
    else:
        pre = initial_state[..., 1:].float()
    xt = torch.cat([pre, xt], dim=-1)
    y = F.conv1d(xt, weight.float().unsqueeze(1), bias.float() if bias is not None else None, groups=d)
    if silu:
        y = F.silu(y)
    if update_state:
        replace_state(x, initial_state)
    return y.transpose(1, 2).to(x.dtype)


def replace_state(x: Tensor, state: Tensor | None) -> None:
    """``state.copy_(conv_state_from_inputs(x, K, state))`` for a prefill conv's ``update_state``."""
    if state is None:
        raise InvalidArgumentError("update_state needs an initial_state to update")
    state.copy_(conv_state_from_inputs(x, state.shape[-1], state))


def conv_state_from_inputs(x: Tensor, k: int, initial_state: Tensor | None = None) -> Tensor:
    """The conv state ``[B, D, K]`` after consuming ``x [B, L, D]``: its last ``K`` inputs.

    Only the last ``K`` tokens are touched (a prefill of thousands of tokens copies ``K`` columns).
    """
    b, L, d = x.shape
    tail = x[:, -k:].transpose(1, 2)
    if L >= k:
        return tail.contiguous()
    prev = initial_state.to(x.dtype) if initial_state is not None else x.new_zeros(b, d, k)
    return torch.cat([prev[..., L:], tail], dim=-1)


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         silu: bool = True) -> Tensor:
    """One decode step: shift ``x [B, D]`` into ``conv_state [B, D, K]`` (in place) and convolve."""
    conv_state.copy_(torch.cat([conv_state[..., 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    y = (conv_state.float() * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


def _softplus_dt(dt: Tensor, dt_bias: Tensor | None, softplus: bool) -> Tensor:
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    return F.softplus(dt) if softplus else dt


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                   initial_state: Tensor | None = None, chunk_size: int = 32) -> tuple[Tensor, Tensor]:
    """Mamba1 selective scan, exact, parallel inside chunks of ``chunk_size`` tokens.

    ``u, delta, z: [Bt, L, D]``, ``A: [D, N]``, ``B, C: [Bt, L, N]``. Recurrence per channel d and
    state n: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = C_t . h_t + D u_t``, gated by
    ``silu(z_t)``. Inside a chunk the linear recurrence is solved by a parallel prefix scan
    (Hillis-Steele: log2(chunk) doubling steps over the pairs (decay, input)); the state is carried
    from chunk to chunk. Returns ``(y [Bt, L, D] in u.dtype, last_state [Bt, D, N] fp32)``.
    """
    bt, L, d = u.shape
    n = A.shape[-1]
    dt = _softplus_dt(delta, delta_bias, delta_softplus)
    uf, Bf, Cf, Af = u.float(), B.float(), C.float(), A.float()
    h = initial_state.float() if initial_state is not None else uf.new_zeros(bt, d, n)
    ys = []
    for s in range(0, L, chunk_size):
        e = min(s + chunk_size, L)
        decay = torch.exp(dt[:, s:e, :, None] * Af)  # [b, t, d, n]
        hs = (dt[:, s:e] * uf[:, s:e]).unsqueeze(-1) * Bf[:, s:e].unsqueeze(2)
        hs[:, 0] += decay[:, 0] * h
        k = 1
        while k < e - s:  # after the step at k, position t holds the scan over (t - 2k, t]
            hs = torch.cat([hs[:, :k], decay[:, k:] * hs[:, :-k] + hs[:, k:]], dim=1)
            decay = torch.cat([decay[:, :k], decay[:, k:] * decay[:, :-k]], dim=1)
            k *= 2
        ys.append(torch.einsum("btdn,btn->btd", hs, Cf[:, s:e]))
        h = hs[:, -1]
    y = torch.cat(ys, dim=1) if ys else uf.new_zeros(bt, 0, d)
    if D is not None:
        y = y + uf * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), h


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                           dt_softplus: bool = True) -> Tensor:
    """Mamba1 decode step. ``state [Bt, D, N]`` is updated in place; ``x, dt, z: [Bt, D]``; ``B, C: [Bt, N]``."""
    dtf = _softplus_dt(dt, dt_bias, dt_softplus)
    dA = torch.exp(dtf.unsqueeze(-1) * A.float())
    new = state.float() * dA + (dtf * x.float()).unsqueeze(-1) * B.float().unsqueeze(1)
    state.copy_(new.to(state.dtype))
    y = (new * C.float().unsqueeze(1)).sum(-1)
    if D is not None:
        y = y + x.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def _ssd_dt(dt: Tensor, dt_bias: Tensor | None, softplus: bool, dt_limit: tuple[float, float]) -> Tensor:
    dt = _softplus_dt(dt, dt_bias, softplus)
    if dt_limit != (0.0, float("inf")):
        dt = dt.clamp(dt_limit[0], dt_limit[1])
    return dt


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
                dt_limit: tuple[float, float] = (0.0, float("inf")),
                initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mamba2 state-space duality (SSD) scan in its chunked form, exact.

    ``x [Bt, L, H, P]``, ``dt [Bt, L, H]`` (pre-bias), ``A [H]`` (negative), ``B, C [Bt, L, G, N]``.
    Per head: ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``.
    Inside each chunk the output is a masked attention-like product (C B^T weighted by segment
    decays); across chunks only the chunk-end states are carried. Returns
    ``(y [Bt, L, H, P] in x.dtype, final_state [Bt, H, P, N] fp32)``.
    """
    bt, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    dtf = _ssd_dt(dt, dt_bias, dt_softplus, dt_limit)
    chunk_size = max(1, min(chunk_size, L))  # same result; a short prompt is not padded to a full chunk
    pad = (-L) % chunk_size
    xf = F.pad(x.float(), (0, 0, 0, 0, 0, pad))
    dtp = F.pad(dtf, (0, 0, 0, pad))  # padded steps have dt = 0: no decay, no input
    Bf = F.pad(B.float(), (0, 0, 0, 0, 0, pad)).repeat_interleave(h // g, dim=2)
    Cf = F.pad(C.float(), (0, 0, 0, 0, 0, pad)).repeat_interleave(h // g, dim=2)
    nc, T = (L + pad) // chunk_size, chunk_size
    xc = xf.reshape(bt, nc, T, h, p)
    dtc = dtp.reshape(bt, nc, T, h)
    Bc = Bf.reshape(bt, nc, T, h, n)
    Cc = Cf.reshape(bt, nc, T, h, n)
    acum = torch.cumsum(dtc * A.float(), dim=2)  # [b, c, t, h]

    seg = acum.unsqueeze(3) - acum.unsqueeze(2)  # [b, c, t, s, h]
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    decay = seg.masked_fill(~causal[None, None, :, :, None], float("-inf")).exp()
    scores = torch.einsum("bcthn,bcshn->bctsh", Cc, Bc) * decay
    y = torch.einsum("bctsh,bcsh,bcshp->bcthp", scores, dtc, xc)

    to_end = torch.exp(acum[:, :, -1:] - acum) * dtc  # [b, c, t, h]
    chunk_states = torch.einsum("bcthn,bcth,bcthp->bchpn", Bc, to_end, xc)
    state = initial_state.float() if initial_state is not None else xf.new_zeros(bt, h, p, n)
    chunk_decay = acum[:, :, -1].exp()  # [b, c, h]
    entering = []
    for c in range(nc):
        entering.append(state)
        state = chunk_decay[:, c, :, None, None] * state + chunk_states[:, c]
    entering_t = torch.stack(entering, dim=1)  # [b, c, h, p, n]
    y = y + torch.einsum("bcthn,bchpn,bcth->bcthp", Cc, entering_t, acum.exp())

    y = y.reshape(bt, nc * T, h, p)[:, :L]
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype), state


def ssd_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
                     dt_limit: tuple[float, float] = (0.0, float("inf"))) -> Tensor:
    """Mamba2 decode step. ``state [Bt, H, P, N]`` is updated in place; ``x [Bt, H, P]``, ``dt [Bt, H]``,
    ``B, C [Bt, G, N]``. Returns ``y [Bt, H, P]``."""
    bt, h, p = x.shape
    g = B.shape[1]
    dtf = _ssd_dt(dt, dt_bias, dt_softplus, dt_limit)  # [b, h]
    dA = torch.exp(dtf * A.float())[:, :, None, None]
    Bh = B.float().repeat_interleave(h // g, dim=1)  # [b, h, n]
    Ch = C.float().repeat_interleave(h // g, dim=1)
    new = state.float() * dA + (dtf[:, :, None] * x.float()).unsqueeze(-1) * Bh.unsqueeze(2)
    state.copy_(new.to(state.dtype))
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype)
