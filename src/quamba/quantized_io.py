"""Quantized checkpoints: save a quantized model with its recipe and tokenizer, load it back.

Layout of a quantized directory (format version 1):

- ``model.safetensors``: the quantized state dict (int8 weights, fp32 scales, float leftovers);
- ``config.json``: ``quamba_format_version``, ``model_config`` (``MambaConfig.to_dict``),
  ``recipe`` (name and every setting), ``dtype`` (float dtype of the unquantized parts);
- the tokenizer files.

Loading rebuilds the quantized skeleton from ``config.json`` alone (no calibration data) and loads
the tensors strictly. Saving writes into a temporary directory next to the target and renames it
into place once complete, so an interrupted save never leaves a half-written model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from .config import MambaConfig
from .errors import InvalidArgumentError, ModelLoadError, QuambaError, QuantizedFormatError
from .loading import parse_device, parse_dtype, read_json

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def is_quantized_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory whose config.json carries ``quamba_format_version``."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "quamba_format_version" in d


def quantized_config(model: torch.nn.Module) -> dict[str, Any]:
    """The ``config.json`` content describing a quantized model."""
    recipe = getattr(model, "quant_config", None)
    if recipe is None:
        raise InvalidArgumentError("the model is not quantized (run quamba.quantization.quantize_ first)")
    return {"quamba_format_version": FORMAT_VERSION, "arch": model.config.arch,
            "model_config": model.config.to_dict(), "recipe": recipe.to_dict(),
            "dtype": _DTYPE_NAMES[getattr(model, "quant_dtype", torch.float16)]}


def save_quantized(model: torch.nn.Module, tokenizer, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``model`` (quantized), its recipe and ``tokenizer`` (may be None) to ``out_dir``.

    An existing non-empty ``out_dir`` is replaced only with ``overwrite``; otherwise
    ``InvalidArgumentError``. Returns the directory.
    """
    from safetensors.torch import save_file

    config = quantized_config(model)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidArgumentError(f"output directory {out} is not empty (pass overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt",
                                                             "quamba_format_version": str(FORMAT_VERSION)})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _read_config(path: Path) -> tuple[MambaConfig, Any, torch.dtype]:
    from .quantization.recipes import recipe_from_dict

    if not (path / CONFIG_FILE).is_file():
        raise QuantizedFormatError(f"{path} has no {CONFIG_FILE}")
    d = read_json(path / CONFIG_FILE)
    version = d.get("quamba_format_version")
    if version != FORMAT_VERSION:
        raise QuantizedFormatError(f"{path} has quamba format version {version!r}; this quamba reads version "
                                   f"{FORMAT_VERSION}")
    try:
        cfg = MambaConfig.from_dict(d["model_config"])
        recipe = recipe_from_dict(d["recipe"])
        dtype = parse_dtype(d.get("dtype", "float16"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise QuantizedFormatError(f"{path / CONFIG_FILE} is missing or has a bad entry "
                                   f"({type(e).__name__}: {e})") from None
    except QuambaError as e:
        raise QuantizedFormatError(f"{path / CONFIG_FILE} describes an unsupported quantized model: {e}") from None
    return cfg, recipe, dtype


def _check_tensors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], path: Path) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    bad = []
    for k, v in expected.items():
        if k not in got:
            continue
        g = got[k]
        if tuple(g.shape) != tuple(v.shape):
            bad.append(f"{k} {tuple(g.shape)} != {tuple(v.shape)}")
        elif (g.dtype == torch.int8) != (v.dtype == torch.int8) or g.is_floating_point() != v.is_floating_point():
            bad.append(f"{k} has dtype {g.dtype}, expected {v.dtype}")
    parts = []
    if missing:
        parts.append("missing tensors: " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
    if bad:
        parts.append("mismatched: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
    if unexpected:
        parts.append("unexpected tensors: " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
    if parts:
        raise QuantizedFormatError(f"{path / WEIGHTS_FILE} does not match its config ({'; '.join(parts)})")


def load_quantized(path: str | os.PathLike, device: str | torch.device | None = "cpu",
                   dtype: str | torch.dtype | None = None) -> torch.nn.Module:
    """Rebuild a quantized model saved by ``save_quantized`` (no calibration data needed).

    ``dtype`` overrides the float dtype of the unquantized parts (embedding, norms, float outputs).
    """
    from safetensors.torch import load_file

    from .quantization.recipes import build_quantized_model

    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(f"quantized model directory {p} does not exist")
    dev = parse_device(device)
    cfg, recipe, saved_dtype = _read_config(p)
    want = parse_dtype(dtype) or saved_dtype
    if not (p / WEIGHTS_FILE).is_file():
        raise QuantizedFormatError(f"{p} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(p / WEIGHTS_FILE))
    except Exception as e:
        raise QuantizedFormatError(f"{p / WEIGHTS_FILE} is not a readable safetensors file ({e})") from None
    model = build_quantized_model(cfg, recipe, want, device="cpu")
    _check_tensors(model.state_dict(), state, p)
    model.load_state_dict(state, strict=True)
    model.to(dev)
    model.eval()
    model.source = str(p)  # type: ignore[attr-defined]
    return model
