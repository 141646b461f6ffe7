"""Floating-point Mamba1 and Mamba2 mixers (the sequence-mixing half of a block).

Parameter names and shapes follow the transformers / mamba_ssm checkpoints, so state dicts load
directly. Each mixer runs in two modes: prefill (whole sequence through the chunked scan,
continuing from a cache when given) and decode (one token from the cache).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .. import ops
from ..config import MambaConfig
from .cache import LayerState
from .stamp import tensor_stamp


class Linear(nn.Linear):
    """``nn.Linear`` whose forward goes through ``ops.linear`` (a GEMV kernel at decode on CUDA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)


def _negative_exp(mixer: nn.Module) -> torch.Tensor:
    """``A = -exp(A_log)`` in fp32, recomputed only when ``A_log`` changes (saves launches per step)."""
    p = mixer.A_log
    key = tensor_stamp(p)
    cached = getattr(mixer, "_A_cache", None)
    if cached is None or cached[0] != key:
        cached = (key, -torch.exp(p.detach().float()))
        mixer._A_cache = cached
    return cached[1]


def fused_decode() -> bool:
    """Whether Mamba2 decode steps run fused (``QUAMBA_FUSED_DECODE=0`` selects the unfused op chain)."""
    return os.environ.get("QUAMBA_FUSED_DECODE", "1") != "0"


def fused_in_proj() -> bool:
    """Whether W8A8 decode steps run the conv update inside in_proj's GEMV (``ops.qin_proj_conv_step``;
    ``QUAMBA_FUSED_IN_PROJ=0``: two launches, in_proj then the conv)."""
    return os.environ.get("QUAMBA_FUSED_IN_PROJ", "1") != "0"


def fold_norms() -> bool:
    """Whether fused decode steps fold the block norms into the GEMVs (``QUAMBA_FOLD_NORMS=0``: one norm
    kernel per block)."""
    return fused_decode() and os.environ.get("QUAMBA_FOLD_NORMS", "1") != "0"


def decode_work(cfg: MambaConfig, batch: int, device, acc_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed x_proj accumulator ``[B, R + 2N]`` and int32 counter ``[B]`` of the fused Mamba1 decode step."""
    return (torch.zeros(batch, cfg.dt_rank + 2 * cfg.d_state, device=device, dtype=acc_dtype),
            torch.zeros(batch, device=device, dtype=torch.int32))


def folded_out(out_proj: nn.Linear, y: torch.Tensor, fold: tuple, ss: torch.Tensor,
               rms: tuple | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, float]]:
    """``out_proj`` of a decode step whose block norms are folded into the GEMVs (``MambaLM`` decode):
    ``fold = (residual, next norm weight, next eps)``; returns ``(residual * norm_w, (ss, eps))``."""
    residual, norm_w, eps = fold
    return ops.linear_add_norm(y, out_proj.weight, out_proj.bias, residual, norm_w, ss, rms), (ss, eps)


class Mamba1Mixer(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        di, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.in_proj = Linear(cfg.d_model, 2 * di, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = Linear(di, r + 2 * n, bias=False)
        self.dt_proj = Linear(r, di, bias=True)
        self.A_log = nn.Parameter(torch.empty(di, n))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = Linear(di, cfg.d_model, bias=cfg.proj_bias)

    def allocate_state(self, batch: int, device, dtype) -> LayerState:
        c = self.cfg
        return LayerState(conv=torch.zeros(batch, c.d_inner, c.d_conv, device=device, dtype=dtype),
                          ssm=torch.zeros(batch, c.d_inner, c.d_state, device=device, dtype=torch.float32),
                          work=(*decode_work(c, batch, device, torch.float32),
                                torch.zeros(batch, 1, device=device, dtype=torch.float32)))

    def _ssm_step(self, xz: torch.Tensor, state: LayerState) -> torch.Tensor:
        """conv + x_proj, then dt_proj + state update, of one token (``xz [B, 2 * d_inner]``): two fused ops."""
        acc, done = state.work[:2]
        x, z = xz.chunk(2, dim=-1)
        u, dbc = ops.conv_xproj_step(x, state.conv, self.conv1d.weight[:, 0], self.conv1d.bias, self.x_proj.weight,
                                     acc)
        return ops.dtproj_state_step(state.ssm, u, dbc, self.dt_proj.weight, self.dt_proj.bias, _negative_exp(self),
                                     self.D, z, done)

    def decode_folded(self, h: torch.Tensor, rms: tuple | None, state: LayerState, fold: tuple):
        """One token ``h [B, d_model]`` with the block norms folded into the GEMVs: ``h`` is the normed
        input (``rms`` None) or ``residual * norm_w`` with ``rms = (ss, eps)`` to finish on load; see
        ``folded_out`` for ``fold`` and the result. Four launches: in_proj, conv + x_proj, dt_proj + state
        update, out_proj + residual."""
        ss = state.work[2]
        ss_in, eps = rms or (None, 0.0)
        xz = ops.rms_linear(h, ss_in, h.shape[-1], eps, self.in_proj.weight, self.in_proj.bias, zero=ss)
        return folded_out(self.out_proj, self._ssm_step(xz, state), fold, ss)

    def _ssm_params(self, x: torch.Tensor):
        c = self.cfg
        dt, B, C = self.x_proj(x).split([c.dt_rank, c.d_state, c.d_state], dim=-1)
        return ops.linear(dt, self.dt_proj.weight), B, C, _negative_exp(self)

    def forward(self, h: torch.Tensor, state: LayerState | None = None) -> torch.Tensor:
        if state is not None and h.shape[1] == 1:
            return self.out_proj(self._ssm_step(self.in_proj(h[:, 0]), state)).unsqueeze(1)
        x, z = self.in_proj(h).chunk(2, dim=-1)
        w = self.conv1d.weight[:, 0]
        x = ops.causal_conv1d(x, w, self.conv1d.bias, silu=True,
                              initial_state=state.conv if state is not None else None, update_state=state is not None)
        dt, B, C, A = self._ssm_params(x)
        y, last = ops.selective_scan(x, dt, A, B, C, self.D, z, delta_bias=self.dt_proj.bias,
                                     delta_softplus=True, initial_state=state.ssm if state is not None else None)
        if state is not None:
            state.ssm.copy_(last)
        return self.out_proj(y)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        di, h = cfg.d_inner, cfg.nheads
        self.in_proj = Linear(cfg.d_model, cfg.in_proj_dim, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.empty(h))
        self.norm = GatedRMSNorm(di, di // cfg.ngroups, cfg.norm_eps)
        self.out_proj = Linear(di, cfg.d_model, bias=cfg.proj_bias)

    def allocate_state(self, batch: int, device, dtype) -> LayerState:
        c = self.cfg
        return LayerState(conv=torch.zeros(batch, c.conv_dim, c.d_conv, device=device, dtype=dtype),
                          ssm=torch.zeros(batch, c.nheads, c.headdim, c.d_state, device=device,
                                          dtype=torch.float32),
                          work=(torch.zeros(batch, c.ngroups + 1, device=device, dtype=torch.float32),))

    def split_in_proj(self, zxbcdt: torch.Tensor):
        """``in_proj`` output -> (z, xBC, dt), the mamba_ssm segment order [z, x, B, C, dt]."""
        c = self.cfg
        return zxbcdt.split([c.d_inner, c.conv_dim, c.nheads], dim=-1)

    def split_xbc(self, xbc: torch.Tensor):
        c = self.cfg
        return xbc.split([c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)

    def _step_fused(self, h: torch.Tensor, state: LayerState, rms: tuple | None) -> torch.Tensor:
        """in_proj + conv and SSD + gate of one token; returns the gated output ``g * norm_w``."""
        c = self.cfg
        b = h.shape[0]
        work = state.work[0]
        zxbcdt = ops.in_proj_conv_step(h, self.in_proj.weight, self.in_proj.bias, state.conv,
                                       self.conv1d.weight[:, 0], self.conv1d.bias, c.d_inner, zero=work, rms=rms)
        z, xbc, dt = self.split_in_proj(zxbcdt)
        x, B, C = self.split_xbc(xbc)
        return ops.ssd_gate_step(state.ssm, x.reshape(b, c.nheads, c.headdim), dt, _negative_exp(self),
                                 B.reshape(b, c.ngroups, c.d_state), C.reshape(b, c.ngroups, c.d_state), self.D,
                                 self.dt_bias, c.dt_limit, z, self.norm.weight, self.norm.group_size,
                                 work[:, :c.ngroups])

    def _decode_fused(self, h: torch.Tensor, state: LayerState) -> torch.Tensor:
        """One token in three fused launches (``ops.in_proj_conv_step``, ``ssd_gate_step``, ``rms_linear``).

        ``state.work[0] [B, G + 1]``: the gated norm's per-group sums (and, in a folded step, the next
        block norm's sum in the last column); ``in_proj_conv_step`` zeroes it."""
        gw = self._step_fused(h[:, 0], state, None)
        ss = state.work[0][:, :self.cfg.ngroups]
        return ops.rms_linear(gw, ss, self.norm.group_size, self.norm.eps, self.out_proj.weight,
                              self.out_proj.bias).unsqueeze(1)

    def decode_folded(self, h: torch.Tensor, rms: tuple | None, state: LayerState, fold: tuple):
        """``Mamba1Mixer.decode_folded`` for Mamba2: three launches, out_proj finishing the gated norm
        and starting the next block norm."""
        k = h.shape[-1]
        gw = self._step_fused(h, state, (rms[0], k, rms[1]) if rms is not None else None)
        work, g = state.work[0], self.cfg.ngroups
        return folded_out(self.out_proj, gw, fold, work[:, g:], (work[:, :g], self.norm.group_size, self.norm.eps))

    def forward(self, h: torch.Tensor, state: LayerState | None = None) -> torch.Tensor:
        c = self.cfg
        b, L, _ = h.shape
        if state is not None and L == 1 and state.work and fused_decode():
            return self._decode_fused(h, state)
        z, xbc, dt = self.split_in_proj(self.in_proj(h))
        w = self.conv1d.weight[:, 0]
        A = _negative_exp(self)
        if state is not None and L == 1:
            xbc = ops.causal_conv1d_update(xbc[:, 0], state.conv, w, self.conv1d.bias, silu=True)
            x, B, C = self.split_xbc(xbc)
            y = ops.ssd_state_update(state.ssm, x.reshape(b, c.nheads, c.headdim), dt[:, 0], A,
                                     B.reshape(b, c.ngroups, c.d_state), C.reshape(b, c.ngroups, c.d_state),
                                     self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=c.dt_limit)
            y = y.reshape(b, 1, c.d_inner)
        else:
            xbc = ops.causal_conv1d(xbc, w, self.conv1d.bias, silu=True,
                                    initial_state=state.conv if state is not None else None,
                                    update_state=state is not None)
            x, B, C = self.split_xbc(xbc)
            y, last = ops.ssd_chunked(x.reshape(b, L, c.nheads, c.headdim), dt, A,
                                      B.reshape(b, L, c.ngroups, c.d_state), C.reshape(b, L, c.ngroups, c.d_state),
                                      c.chunk_size, self.D, dt_bias=self.dt_bias, dt_softplus=True,
                                      dt_limit=c.dt_limit, initial_state=state.ssm if state is not None else None)
            if state is not None:
                state.ssm.copy_(last)
            y = y.reshape(b, L, c.d_inner)
        return self.out_proj(self.norm(y, z))


class GatedRMSNorm(nn.Module):
    """``RMSNorm_group(y * silu(z)) * weight`` with ``group_size = d_inner / ngroups``."""

    def __init__(self, dim: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return ops.gated_rms_norm(y, z, self.weight, self.eps, self.group_size)


class RMSNorm(nn.Module):
    """Pre-norm with the residual add fused in: ``forward(x, residual) -> (normed, residual)``."""

    def __init__(self, dim: int, eps: float, residual_in_fp32: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return ops.add_rms_norm(x, residual, self.weight, self.eps, self.residual_in_fp32)
