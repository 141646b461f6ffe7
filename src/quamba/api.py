"""Top-level entry points: load any supported model directory or hub id for inference."""
from __future__ import annotations

import os

import torch

from . import loading


def load(name_or_path: str | os.PathLike, device: str | torch.device | None = "cpu",
         dtype: str | torch.dtype | None = None):
    """Return ``(model, tokenizer)`` for a floating-point checkpoint (transformers or state-spaces
    layout) or a quamba quantized checkpoint directory."""
    from . import quantized_io

    if quantized_io.is_quantized_dir(name_or_path):
        model = quantized_io.load_quantized(name_or_path, device=device, dtype=dtype)
        return model, loading.load_tokenizer(name_or_path, model)
    model = loading.load_model(name_or_path, device=device, dtype=dtype)
    return model, loading.load_tokenizer(name_or_path, model)
