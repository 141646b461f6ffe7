"""Loading Mamba checkpoints: transformers layout and state-spaces (mamba_ssm) layout, local or hub.

- transformers: ``config.json`` with ``model_type`` ``mamba`` / ``mamba2``; weights in
  ``model.safetensors``, sharded safetensors with ``model.safetensors.index.json``, or
  ``pytorch_model.bin``; keys ``backbone.embeddings.weight``, ``backbone.layers.{i}...``.
- state-spaces: ``config.json`` with ``d_model``, ``n_layer``, ``ssm_cfg``, ``pad_vocab_size_multiple``;
  ``pytorch_model.bin``; key ``backbone.embedding.weight``. Tokenizer: GPT-NeoX.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .config import MambaConfig
from .errors import CheckpointMismatchError, InvalidArgumentError, ModelLoadError, UnsupportedModelError
from .models import MambaLM

NEOX_TOKENIZER = "EleutherAI/gpt-neox-20b"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id fetched through huggingface_hub (when online)."""
    p = Path(name_or_path)
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"{p} is a file, not a model directory")
        return p
    s = str(name_or_path)
    if s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise ModelLoadError(f"model path {s} does not exist")
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(s, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"])
    except Exception as e:  # offline, unknown repo, auth
        raise ModelLoadError(f"model {s} is not a local directory and could not be fetched from the hub "
                             f"({type(e).__name__})") from None
    return Path(local)


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(d, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return d


def config_from_dict(d: dict[str, Any]) -> MambaConfig:
    """Our config from a transformers or state-spaces ``config.json``."""
    try:
        if "model_type" in d and "hidden_size" in d:
            return _from_transformers(d)
        if "d_model" in d and "n_layer" in d:
            return _from_state_spaces(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"config.json is missing or has a bad value for {e}") from None
    mt = d.get("model_type")
    if mt is not None:
        raise UnsupportedModelError(f"unsupported model_type {mt!r}: quamba loads mamba and mamba2 models")
    raise UnsupportedModelError("config.json describes neither a transformers Mamba/Mamba2 model nor a "
                                "state-spaces (mamba_ssm) model")


def _json_float(v: Any) -> float:
    """A float from config JSON, including transformers 5's ``{"__float__": "Infinity"}`` encoding."""
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)


def _dt_limit(v: Any) -> tuple[float, float]:
    lo, hi = v
    return _json_float(lo), _json_float(hi)


def _from_transformers(d: dict[str, Any]) -> MambaConfig:
    mt = d["model_type"]
    common = dict(d_model=int(d["hidden_size"]), n_layer=int(d["num_hidden_layers"]), vocab_size=int(d["vocab_size"]),
                  d_state=int(d.get("state_size", 16)), d_conv=int(d.get("conv_kernel", 4)),
                  expand=int(d.get("expand", 2)), conv_bias=bool(d.get("use_conv_bias", True)),
                  proj_bias=bool(d.get("use_bias", False)), norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
                  residual_in_fp32=bool(d.get("residual_in_fp32", True)),
                  tie_embeddings=bool(d.get("tie_word_embeddings", True)),
                  bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
                  pad_token_id=d.get("pad_token_id"))
    if mt == "mamba":
        if "intermediate_size" in d:
            common["expand"] = int(d["intermediate_size"]) // common["d_model"]
        rank = d.get("time_step_rank", "auto")
        rank = math.ceil(common["d_model"] / 16) if rank == "auto" else int(rank)
        return MambaConfig(arch="mamba1", dt_rank=rank, **common)
    if mt == "mamba2":
        limit = d.get("time_step_limit", (0.0, float("inf")))
        return MambaConfig(arch="mamba2", headdim=int(d.get("head_dim", 64)), ngroups=int(d.get("n_groups", 1)),
                           chunk_size=int(d.get("chunk_size", 256)), dt_limit=_dt_limit(limit), **common)
    raise UnsupportedModelError(f"unsupported model_type {mt!r}: quamba loads mamba and mamba2 models")


def _from_state_spaces(d: dict[str, Any]) -> MambaConfig:
    ssm = dict(d.get("ssm_cfg") or {})
    layer = ssm.get("layer", "Mamba1")
    if d.get("attn_layer_idx"):
        raise UnsupportedModelError("hybrid Mamba/attention models (attn_layer_idx) are not supported")
    if d.get("d_intermediate", 0):
        raise UnsupportedModelError("models with an MLP after each mixer (d_intermediate > 0) are not supported")
    vocab = int(d["vocab_size"])
    mult = int(d.get("pad_vocab_size_multiple", 1) or 1)
    padded = vocab + (-vocab) % mult
    d_model = int(d["d_model"])
    common = dict(d_model=d_model, n_layer=int(d["n_layer"]), vocab_size=padded, tokenizer_vocab_size=vocab,
                  d_conv=int(ssm.get("d_conv", 4)), expand=int(ssm.get("expand", 2)),
                  conv_bias=bool(ssm.get("conv_bias", True)), proj_bias=bool(ssm.get("bias", False)),
                  norm_eps=float(d.get("norm_epsilon", 1e-5)), residual_in_fp32=bool(d.get("residual_in_fp32", True)),
                  tie_embeddings=bool(d.get("tie_embeddings", True)))
    if not d.get("rms_norm", True):
        raise UnsupportedModelError("models with LayerNorm instead of RMSNorm (rms_norm=false) are not supported")
    if layer == "Mamba1":
        rank = ssm.get("dt_rank", "auto")
        rank = math.ceil(d_model / 16) if rank == "auto" else int(rank)
        return MambaConfig(arch="mamba1", d_state=int(ssm.get("d_state", 16)), dt_rank=rank, **common)
    if layer == "Mamba2":
        if ssm.get("d_ssm") not in (None, common["expand"] * d_model):
            raise UnsupportedModelError("Mamba2 with d_ssm != d_inner is not supported")
        if ssm.get("norm_before_gate", False) or not ssm.get("rmsnorm", True):
            raise UnsupportedModelError("Mamba2 with norm_before_gate=True or without the gated RMSNorm is not supported")
        limit = ssm.get("dt_limit", (0.0, float("inf")))
        return MambaConfig(arch="mamba2", d_state=int(ssm.get("d_state", 128)), headdim=int(ssm.get("headdim", 64)),
                           ngroups=int(ssm.get("ngroups", 1)), chunk_size=int(ssm.get("chunk_size", 256)),
                           dt_limit=_dt_limit(limit), **common)
    raise UnsupportedModelError(f"unsupported ssm_cfg.layer {layer!r} (expected Mamba1 or Mamba2)")


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``model_dir`` (safetensors, sharded safetensors or .bin)."""
    from safetensors.torch import load_file

    def st(path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path))
        except Exception as e:
            raise ModelLoadError(f"{path} is not a readable safetensors file ({e})") from None

    if (model_dir / "model.safetensors").exists():
        return st(model_dir / "model.safetensors")
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index} has no weight_map")
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (model_dir / shard).exists():
                raise ModelLoadError(f"shard {shard} named in {index.name} is missing")
            out.update(st(model_dir / shard))
        return out
    if (model_dir / "pytorch_model.bin").exists():
        try:
            sd = torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"{model_dir / 'pytorch_model.bin'} could not be read ({type(e).__name__}: {e})") from None
        if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
            sd = sd["model"]
        if not isinstance(sd, dict):
            raise ModelLoadError(f"{model_dir / 'pytorch_model.bin'} does not hold a state dict")
        return sd
    raise ModelLoadError(f"{model_dir} has no weights (looked for {', '.join(WEIGHT_FILES)})")


def normalize_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map state-spaces key names onto ours (which are the transformers names)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("backbone.embedding."):
            k = "backbone.embeddings." + k[len("backbone.embedding."):]
        out[k] = v
    return out


def load_state_into(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Strict load that reports missing, unexpected and mis-shaped tensors in one message."""
    sd = normalize_keys(sd)
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    expected = model.state_dict()
    if cfg is not None and cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    bad = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if k in sd and sd[k].shape != v.shape]
    if missing or bad:
        parts = []
        if bad:
            parts.append("shape mismatch: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
        if missing:
            parts.append("missing: " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
        raise CheckpointMismatchError("checkpoint does not match its config (" + "; ".join(parts) + ")")
    if unexpected:
        raise CheckpointMismatchError("checkpoint has tensors the config does not explain: "
                                      + ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else ""))
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k in sd:
                v.copy_(sd[k].to(v.dtype))


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise InvalidArgumentError(f"unknown dtype {name!r}; expected fp32, fp16 or bf16")
    return table[name]


def parse_device(name: str | torch.device | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"unknown device {name!r}; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"device {name!r} was asked for but no CUDA GPU is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidArgumentError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPU(s))")
    elif dev.type != "cpu":
        raise InvalidArgumentError(f"unsupported device {name!r}; expected cpu, cuda or cuda:N")
    return dev


def load_config(model_dir: Path) -> MambaConfig:
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise ModelLoadError(f"{model_dir} has no config.json")
    return config_from_dict(read_json(cfg_path))


def load_model(name_or_path: str | os.PathLike, device: str | torch.device | None = "cpu",
               dtype: str | torch.dtype | None = None) -> MambaLM:
    """Load a floating-point Mamba/Mamba2 LM from a local directory or a hub id.

    ``dtype`` None keeps the checkpoint's floating dtype (A_log and D stay fp32 either way only if
    the checkpoint stores them so).
    """
    dev = parse_device(device)
    want = parse_dtype(dtype)
    model_dir = resolve_model_dir(name_or_path)
    cfg = load_config(model_dir)
    sd = read_state_dict(model_dir)
    floats = [v.dtype for v in sd.values() if v.is_floating_point()]
    ckpt_dtype = max(set(floats), key=floats.count) if floats else torch.float32
    with torch.device("meta"):  # every tensor is overwritten below: skip the random init
        model = MambaLM(cfg)
    model.to_empty(device="cpu")
    if cfg.tie_embeddings:  # to_empty gives each parameter its own storage
        model.lm_head.weight = model.backbone.embeddings.weight
    load_state_into(model, sd)
    model.to(device=dev, dtype=want or ckpt_dtype)
    model.eval()
    model.source = str(model_dir)  # type: ignore[attr-defined]
    return model


def load_tokenizer(name_or_path: str | os.PathLike, model: MambaLM | None = None):
    """The tokenizer stored with the model; state-spaces models use GPT-NeoX's, named when missing."""
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(name_or_path)
    has_own = any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    source = str(model_dir) if has_own else NEOX_TOKENIZER
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception:
        if has_own:
            raise ModelLoadError(f"the tokenizer files in {model_dir} could not be read") from None
        raise ModelLoadError(f"{model_dir} has no tokenizer and the GPT-NeoX tokenizer ({NEOX_TOKENIZER}) that "
                             "state-spaces models use could not be loaded (offline?)") from None
    return tok
