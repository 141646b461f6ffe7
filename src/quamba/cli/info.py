"""``quamba info MODEL [--json]``: architecture, sizes, parameter count, dtype and checkpoint layout."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .. import api, loading


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe a model checkpoint",
                              description="Print what a model directory or hub id holds.")
    p.add_argument("model", help="model directory or hub id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def checkpoint_layout(model_dir: Path) -> str:
    """``transformers``, ``state-spaces`` or ``other``, from the keys of ``config.json``."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        return "other"
    d = loading.read_json(cfg_path)
    if "model_type" in d and "hidden_size" in d:
        return "transformers"
    if "d_model" in d and "n_layer" in d:
        return "state-spaces"
    return "other"


def describe(model, model_dir: Path, tokenizer=None) -> dict[str, Any]:
    """The facts ``quamba info`` prints, as a JSON-ready dict."""
    cfg = model.config
    seen: set[tuple[int, tuple[int, ...]]] = set()
    numel_by_dtype: Counter[str] = Counter()
    for t in model.state_dict().values():
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        numel_by_dtype[str(t.dtype).replace("torch.", "")] += t.numel()
    info: dict[str, Any] = {
        "path": str(model_dir),
        "architecture": cfg.arch,
        "d_model": cfg.d_model,
        "n_layer": cfg.n_layer,
        "d_inner": cfg.d_inner,
        "d_state": cfg.d_state,
        "d_conv": cfg.d_conv,
    }
    if cfg.arch == "mamba1":
        info["dt_rank"] = cfg.dt_rank
    else:
        info.update(nheads=cfg.nheads, headdim=cfg.headdim, ngroups=cfg.ngroups, chunk_size=cfg.chunk_size)
    info.update({
        "vocab_size": cfg.vocab_size,
        "tokenizer_vocab_size": cfg.tokenizer_vocab_size,
        "tie_embeddings": cfg.tie_embeddings,
        "parameters": sum(numel_by_dtype.values()),
        "dtype": numel_by_dtype.most_common(1)[0][0] if numel_by_dtype else None,
        "tensor_dtypes": dict(numel_by_dtype),
        "quantized": "int8" in numel_by_dtype,
        "layout": checkpoint_layout(model_dir),
        "weight_files": sorted(p.name for p in model_dir.iterdir()
                               if p.suffix in (".safetensors", ".bin", ".pt") or p.name.endswith(".index.json")),
    })
    if tokenizer is not None:
        info["tokenizer_size"] = len(tokenizer)
    return info


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def run(args: argparse.Namespace) -> int:
    model_dir = loading.resolve_model_dir(args.model)
    model, tokenizer = api.load(str(model_dir), device="cpu", dtype=None)
    info = describe(model, model_dir, tokenizer)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        if k == "parameters":
            v = f"{v:,} ({_human(v)})"
        elif isinstance(v, dict):
            v = ", ".join(f"{name} {n:,}" for name, n in v.items())
        elif isinstance(v, list):
            v = ", ".join(v) or "-"
        print(f"{k + ':':<22}{v}")
    return 0
