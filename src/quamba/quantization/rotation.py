"""Offline Hadamard rotation of the residual stream (QuaRot-style, spec §2 step 2).

With ``Q = H_Dᵀ`` (normalized Hadamard, orthogonal) every residual-stream vector ``r`` is replaced
by ``r Q``: RMSNorm with unit weight commutes with ``Q``, so after folding each norm weight ``γ``
into the next layer the model computes the same function while its norm outputs have their
channel outliers spread out. Weights absorb the rotation:

- embedding rows ``e -> e Q``;
- in_proj ``W -> W diag(γ) Q`` (its norm weight becomes 1);
- out_proj ``W -> Qᵀ W H_innerᵀ`` with an online Hadamard ``H_inner`` on its input
  (``HadamardLinear``), so its int8 input is rotated too; bias ``b -> Qᵀ b``;
- lm_head ``W -> W diag(γ_f) Q`` (final norm weight becomes 1), untied from the embedding.

Mamba2's gated norm is not rotation invariant, so only the residual stream and the out_proj input
rotate. All products are computed in float64.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import MambaConfig
from ..errors import InvalidArgumentError
from ..qmodules.linear import HadamardLinear
from .hadamard import hadamard_matrix_normalized, supported_hadamard_size

Tensor = torch.Tensor


def check_rotatable(cfg: MambaConfig) -> None:
    """Raise ``InvalidArgumentError`` unless Hadamard matrices exist for d_model and d_inner."""
    for what, n in (("d_model", cfg.d_model), ("d_inner", cfg.d_inner)):
        if not supported_hadamard_size(n):
            raise InvalidArgumentError(f"Hadamard rotation needs {what} = 2^k, 12·2^k, 20·2^k or 28·2^k; "
                                       f"this model has {what} = {n} (use a recipe without rotation)")


def untie_lm_head(model: nn.Module) -> None:
    """Give the lm_head its own weight tensor (quantized models never share it with the embedding)."""
    emb, head = model.backbone.embeddings, model.lm_head
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    model.config.tie_embeddings = False


def _set(p: Tensor, value: Tensor) -> None:
    with torch.no_grad():
        p.copy_(value.to(p.dtype))


def fold_norm(norm_weight: Tensor, linear: nn.Linear) -> None:
    """``W -> W diag(γ)``, ``γ -> 1`` (fp64)."""
    _set(linear.weight, linear.weight.double() * norm_weight.double())
    _set(norm_weight, torch.ones_like(norm_weight))


def _to_hadamard_linear(lin: nn.Linear) -> HadamardLinear:
    new = HadamardLinear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                         device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight)
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


@torch.no_grad()
def rotate_model(model: nn.Module) -> None:
    """Fold every RMSNorm weight and rotate the residual stream in place (see the module docstring)."""
    cfg = model.config
    check_rotatable(cfg)
    if any(isinstance(blk.mixer.out_proj, HadamardLinear) for blk in model.backbone.layers):
        raise InvalidArgumentError("the model is already rotated")
    untie_lm_head(model)
    dev = model.backbone.embeddings.weight.device
    Q = hadamard_matrix_normalized(cfg.d_model).t().to(dev)
    Hi = hadamard_matrix_normalized(cfg.d_inner).to(dev)
    emb = model.backbone.embeddings.weight
    _set(emb, emb.double() @ Q)
    for blk in model.backbone.layers:
        mixer = blk.mixer
        fold_norm(blk.norm.weight, mixer.in_proj)
        _set(mixer.in_proj.weight, mixer.in_proj.weight.double() @ Q)
        out = mixer.out_proj
        _set(out.weight, Q.t() @ out.weight.double() @ Hi.t())
        if out.bias is not None:
            _set(out.bias, Q.t() @ out.bias.double())
        mixer.out_proj = _to_hadamard_linear(out)
    fold_norm(model.backbone.norm_f.weight, model.lm_head)
    _set(model.lm_head.weight, model.lm_head.weight.double() @ Q)
