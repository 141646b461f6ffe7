"""SmoothQuant baseline: migrate activation outliers into weights with per-channel factors.

For a linear layer whose input is ``X`` and weight ``W``, ``s_j = max|X_j|^α / max|W_:,j|^(1-α)``;
``X -> X / s`` is folded into the norm weight that produces ``X`` and ``W -> W diag(s)``. It is only
applied where that fold is exact: in_proj (after the block RMSNorm), Mamba2's out_proj (after the
gated RMSNorm, whose weight multiplies the normalized values) and, when it is quantized, the
lm_head (after the final norm). Mamba1's x_proj/out_proj inputs come out of SiLU / the scan, where
no weight can absorb ``1/s``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .calibration import Site, collect
from .rotation import untie_lm_head

Tensor = torch.Tensor

SCALE_MIN = 1e-5


def smoothing_factors(act_absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """``s_j = max|X_j|^α / max_i|W_ij|^(1-α)`` (fp64), clamped away from 0."""
    a = act_absmax.double().clamp_min(SCALE_MIN)
    w = weight.detach().double().abs().amax(0).clamp_min(SCALE_MIN)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp_min(SCALE_MIN)


@torch.no_grad()
def apply_smoothing(norm_weight: Tensor, linear: nn.Linear, s: Tensor) -> None:
    """Divide the producing norm's weight by ``s`` and scale the linear's input columns by ``s``."""
    norm_weight.copy_((norm_weight.double() / s).to(norm_weight.dtype))
    linear.weight.copy_((linear.weight.double() * s).to(linear.weight.dtype))


def smoothing_sites(model: nn.Module, include_lm_head: bool) -> list[tuple[Site, Tensor, nn.Linear]]:
    """``(site, norm weight, linear)`` for every place where smoothing folds exactly."""
    sites = []
    for i, blk in enumerate(model.backbone.layers):
        sites.append((Site(i, "in_proj:input"), blk.norm.weight, blk.mixer.in_proj))
        if model.config.arch == "mamba2":
            sites.append((Site(i, "out_proj:input"), blk.mixer.norm.weight, blk.mixer.out_proj))
    if include_lm_head:
        sites.append((Site(None, "lm_head:input"), model.backbone.norm_f.weight, model.lm_head))
    return sites


def smooth_model(model: nn.Module, samples: list[Tensor], alpha: float = 0.5, include_lm_head: bool = False,
                 show_progress: bool = True) -> None:
    """Measure per-channel input absmax on ``samples`` and fold the smoothing factors in place
    (the lm_head is untied from the embedding first when it is smoothed)."""
    if include_lm_head:
        untie_lm_head(model)
    sites = smoothing_sites(model, include_lm_head)
    stats = collect(model, samples, {site: "per_channel_absmax" for site, _, _ in sites},
                    show_progress=show_progress, desc="smoothquant statistics")
    for site, norm_weight, linear in sites:
        s = smoothing_factors(stats[site].value(), linear.weight, alpha).to(linear.weight.device)
        apply_smoothing(norm_weight, linear, s)
