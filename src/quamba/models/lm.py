"""Mamba language model: embedding, pre-norm residual blocks, final norm and LM head."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .. import ops
from ..config import MambaConfig
from .cache import InferenceCache
from .mixers import Linear, Mamba1Mixer, Mamba2Mixer, RMSNorm, fold_norms


class Block(nn.Module):
    """``normed, residual = norm(hidden, residual); hidden = mixer(normed)``."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.residual_in_fp32)
        self.mixer = Mamba1Mixer(cfg) if cfg.arch == "mamba1" else Mamba2Mixer(cfg)

    def forward(self, hidden, residual, state=None):
        normed, residual = self.norm(hidden, residual)
        return self.mixer(normed, state), residual


def _replays_blocks(hidden: torch.Tensor) -> bool:
    return hidden.is_cuda and hidden.shape[1] > 1 and ops.dispatch.triton_available()


def _run_block(blk: Block, hidden: torch.Tensor, residual: torch.Tensor | None, state) -> tuple:
    """``blk(hidden, residual, state)``; a prefill on the GPU goes through the block replays
    (``kernels.block_replay``: one host call for all of a quantized block's launches)."""
    if _replays_blocks(hidden):
        from ..kernels.block_replay import run_block

        ins = (hidden, residual) if state is None else (hidden, residual, state.conv, state.ssm, *state.work)
        return run_block(blk, ins, lambda: blk(hidden, residual, state))
    return blk(hidden, residual, state)


class Backbone(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.residual_in_fp32)


class MambaLM(nn.Module):
    """A Mamba1 or Mamba2 causal LM. ``forward(input_ids, cache)`` returns fp32 logits ``[B, L, vocab]``.

    With a cache, a one-token call is a decode step and a longer call a prefill that continues from
    (and updates) the cached states.
    """

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.config = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype of the model (of its unquantized parts once quantized)."""
        return getattr(self, "quant_dtype", None) or self.backbone.norm_f.weight.dtype

    def allocate_cache(self, batch_size: int, device=None, dtype=None) -> InferenceCache:
        device = device or self.device
        dtype = dtype or self.dtype
        return InferenceCache([blk.mixer.allocate_state(batch_size, device, dtype)
                               for blk in self.backbone.layers], batch_size)

    def hidden_states(self, input_ids: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """Final-norm output ``[B, L, d_model]`` (the lm_head input)."""
        hidden = self.backbone.embeddings(input_ids)
        residual = None
        for i, blk in enumerate(self.backbone.layers):
            hidden, residual = _run_block(blk, hidden, residual, cache.layers[i] if cache is not None else None)
        out, _ = self.backbone.norm_f(hidden, residual)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return out

    def folds_norms(self, input_ids: torch.Tensor, cache: InferenceCache | None) -> bool:
        """Whether this call is a decode step that runs with the block norms folded into the GEMVs
        (float mixers with their decode scratch; ``mixers.fold_norms``)."""
        if cache is None or input_ids.shape[1] != 1 or not fold_norms():
            return False
        bb = self.backbone
        return (type(self.lm_head) is Linear and type(bb.norm_f) is RMSNorm
                and all(type(b.norm) is RMSNorm and type(b.mixer) in (Mamba1Mixer, Mamba2Mixer) for b in bb.layers)
                and all(s.work for s in cache.layers))

    def decode_folded(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """Logits ``[B, 1, vocab]`` of one decode step with each block's pre-norm folded into the GEMVs
        around it: only the first block's norm runs as its own kernel; every ``out_proj`` adds into the
        residual and starts the next norm (``ops.linear_add_norm``), which the next ``in_proj`` (or the
        LM head) finishes on load. Equal to ``forward`` up to fp rounding; the logits come fp32 straight
        from the LM head's accumulator (no separate cast)."""
        bb = self.backbone
        h, residual = bb.layers[0].norm(bb.embeddings(input_ids)[:, 0], None)
        rms = None
        nxt = [blk.norm for blk in bb.layers[1:]] + [bb.norm_f]
        for blk, norm, state in zip(bb.layers, nxt, cache.layers):
            h, rms = blk.mixer.decode_folded(h, rms, state, (residual, norm.weight, norm.eps))
        cache.seqlen_offset += 1
        ss, eps = rms
        return ops.rms_linear(h, ss, h.shape[-1], eps, self.lm_head.weight, self.lm_head.bias,
                              out_dtype=torch.float32).unsqueeze(1)

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        if self.folds_norms(input_ids, cache):
            return self.decode_folded(input_ids, cache)
        h = self.hidden_states(input_ids, cache)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h).float()


@torch.no_grad()
def init_random_weights(model: MambaLM, seed: int = 0, std: float = 0.02) -> MambaLM:
    """Fill a model with the usual Mamba initialisation (S4D-real A, dt in [1e-3, 1e-1]), for tests
    and speed work at real shapes."""
    cfg = model.config
    gens: dict[torch.device, torch.Generator] = {}

    for name, p in model.named_parameters():
        dev, dt = p.device, p.dtype
        g = gens.setdefault(dev, torch.Generator(device=dev).manual_seed(seed))

        def rand(*shape):
            return torch.randn(*shape, generator=g, device=dev)

        leaf = name.rsplit(".", 1)[-1]
        if leaf == "A_log":
            n = p.shape[-1] if cfg.arch == "mamba1" else p.shape[0]
            a = torch.arange(1, n + 1, dtype=torch.float32, device=dev)
            val = torch.log(a).expand(p.shape) if cfg.arch == "mamba1" else torch.log(a)
        elif leaf == "D":
            val = torch.ones(p.shape, device=dev)
        elif leaf == "dt_bias" or name.endswith("dt_proj.bias"):
            u = torch.rand(p.shape, generator=g, device=dev)
            t = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
            val = t + torch.log(-torch.expm1(-t))
        elif "norm" in name:
            val = 1.0 + 0.1 * rand(*p.shape)
        elif leaf == "bias":
            val = 0.02 * rand(*p.shape)
        elif "conv1d" in name:
            val = rand(*p.shape) / math.sqrt(p.shape[-1])
        elif name.endswith("dt_proj.weight"):
            val = rand(*p.shape) * cfg.dt_rank ** -0.5
        else:
            val = rand(*p.shape) * std
        p.copy_(val.to(device=dev, dtype=dt))
    return model
