"""Int8 embedding table with one scale per row (token)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import ops
from .base import WEIGHT_SCALE_FLOOR

Tensor = torch.Tensor


class QEmbedding(nn.Module):
    """Lookup ``weight[ids] * row_scale[ids]`` from an int8 table ``[V, D]``.

    Row scales are ``max|row| / 127`` (absmax, so rows dominated by negative values keep their
    range). Weight-only quantization: the fake-quant result is the same lookup.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, out_dtype: torch.dtype = torch.float16):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.out_dtype = out_dtype
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("row_scale", torch.ones(num_embeddings, dtype=torch.float32))

    @classmethod
    def from_float(cls, emb: nn.Embedding, out_dtype: torch.dtype = torch.float16) -> "QEmbedding":
        w = emb.weight.detach().float()
        mod = cls(w.shape[0], w.shape[1], out_dtype).to(w.device)
        s = (w.abs().amax(1) / 127.0).clamp_min(WEIGHT_SCALE_FLOOR)
        mod.weight.copy_(ops.quantize(w, s.unsqueeze(1)))
        mod.row_scale.copy_(s)
        return mod

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"

    def forward(self, ids: Tensor) -> Tensor:
        return ops.qembedding(ids, self.weight, self.row_scale, self.out_dtype)
