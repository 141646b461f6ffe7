"""CUDA-graph decoding: one captured decode step per batch size, replayed for every new token.

A decode step of a Mamba LM is hundreds of small kernels; replaying them as one graph removes the
launch gaps. The graph is bound to the cache tensors it was captured with, so a decoder owns its
cache: prefill writes into it in place (eagerly) and every replay reads and updates it.
"""
from __future__ import annotations

import torch

from .models.cache import InferenceCache


class GraphDecoder:
    """Decode steps for a fixed batch size through a captured CUDA graph.

    ``prefill(ids)`` runs the prompt eagerly into the decoder's cache and returns the last logits;
    ``step(ids)`` (``ids [B]`` or ``[B, 1]``) replays the graph and returns logits ``[B, vocab]``.
    The returned logits tensor is a static buffer overwritten by the next step.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, warmup: int = 2):
        if not torch.cuda.is_available() or model.device.type != "cuda":
            raise RuntimeError("GraphDecoder needs a model on a CUDA device")
        self.model = model
        self.batch_size = batch_size
        self.cache: InferenceCache = model.allocate_cache(batch_size)
        self._ids = torch.zeros(batch_size, 1, dtype=torch.long, device=model.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup):
                model(self._ids, self.cache)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self._logits = model(self._ids, self.cache)[:, -1]
        self.cache.reset()

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reset the cache and run the prompt ``[B, L]`` eagerly; returns logits of the last position."""
        self.cache.reset()
        return self.model(input_ids, self.cache, last_only=True)[:, -1]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self._ids.copy_(ids.reshape(self.batch_size, 1))
        self.graph.replay()
        self.cache.seqlen_offset += 1
        return self._logits
