"""Checkpoint layouts (state-spaces / transformers, .bin / safetensors / sharded) and loading errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from quamba.config import MambaConfig
from quamba.errors import CheckpointMismatchError, ModelLoadError, UnsupportedModelError
from quamba.loading import NEOX_TOKENIZER, load_model, load_tokenizer
from quamba.models import MambaLM, init_random_weights

# The config.json files of state-spaces/mamba-130m and state-spaces/mamba2-130m.
SS_CONFIGS = {
    "mamba-130m": dict(d_model=768, n_layer=24, vocab_size=50277, ssm_cfg={}, rms_norm=True, residual_in_fp32=True,
                       fused_add_norm=True, pad_vocab_size_multiple=8, tie_embeddings=True),
    "mamba2-130m": dict(d_model=768, d_intermediate=0, n_layer=24, vocab_size=50277, ssm_cfg={"layer": "Mamba2"},
                        attn_layer_idx=[], attn_cfg={}, rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                        pad_vocab_size_multiple=16, tie_embeddings=True),
}
# The same models as transformers describes them (state-spaces/mamba-130m-hf style).
HF_CONFIGS = {
    "mamba-130m": dict(model_type="mamba", architectures=["MambaForCausalLM"], hidden_size=768, num_hidden_layers=24,
                       vocab_size=50280, state_size=16, expand=2, intermediate_size=1536, conv_kernel=4,
                       time_step_rank=48, use_bias=False, use_conv_bias=True, residual_in_fp32=True,
                       tie_word_embeddings=True, layer_norm_epsilon=1e-5),
    "mamba2-130m": dict(model_type="mamba2", architectures=["Mamba2ForCausalLM"], hidden_size=768,
                        num_hidden_layers=24, vocab_size=50288, state_size=128, expand=2, head_dim=64, num_heads=24,
                        n_groups=1, chunk_size=256, conv_kernel=4, use_bias=False, use_conv_bias=True,
                        residual_in_fp32=True, tie_word_embeddings=True, layer_norm_epsilon=1e-5,
                        time_step_limit=[0.0, {"__float__": "Infinity"}]),
}
PADDED_VOCAB = {"mamba-130m": 50280, "mamba2-130m": 50288}


def mamba_ssm_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Random fp16 weights under the key names and shapes mamba_ssm saves (written out independently
    of our model classes)."""
    d, L, V = 768, 24, PADDED_VOCAB[name]
    di = 2 * d

    def w(*shape, std=0.02):
        return (torch.randn(*shape) * std).half()

    sd = {"backbone.embedding.weight": w(V, d), "backbone.norm_f.weight": (1 + w(d, std=0.1))}
    for i in range(L):
        p = f"backbone.layers.{i}."
        sd[p + "norm.weight"] = 1 + w(d, std=0.1)
        m = p + "mixer."
        if name == "mamba-130m":
            n, r = 16, math.ceil(d / 16)
            sd.update({m + "in_proj.weight": w(2 * di, d), m + "conv1d.weight": w(di, 1, 4, std=0.5),
                       m + "conv1d.bias": w(di), m + "x_proj.weight": w(r + 2 * n, di),
                       m + "dt_proj.weight": w(di, r, std=0.15), m + "dt_proj.bias": (w(di, std=1.0) - 4),
                       m + "A_log": torch.log(torch.arange(1, n + 1.0)).repeat(di, 1).half(),
                       m + "D": torch.ones(di).half(), m + "out_proj.weight": w(d, di)})
        else:
            n, h = 128, di // 64
            conv = di + 2 * n
            sd.update({m + "in_proj.weight": w(2 * di + 2 * n + h, d), m + "conv1d.weight": w(conv, 1, 4, std=0.5),
                       m + "conv1d.bias": w(conv), m + "dt_bias": (w(h, std=1.0) - 4),
                       m + "A_log": torch.log(torch.arange(1, h + 1.0)).half(), m + "D": torch.ones(h).half(),
                       m + "norm.weight": 1 + w(di, std=0.1), m + "out_proj.weight": w(d, di)})
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    return sd


def write_json(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d))


def logits_of(path: Path, ids: torch.Tensor) -> torch.Tensor:
    model = load_model(path, device="cpu", dtype="fp32")
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize("name", ["mamba-130m", "mamba2-130m"])
def test_state_spaces_layout_matches_transformers_layout(name, tmp_path):
    sd = mamba_ssm_state_dict(name)
    ss, hf = tmp_path / "ss", tmp_path / "hf"
    ss.mkdir(), hf.mkdir()
    write_json(ss / "config.json", SS_CONFIGS[name])
    torch.save(sd, ss / "pytorch_model.bin")
    write_json(hf / "config.json", HF_CONFIGS[name])
    save_file({k.replace("backbone.embedding.", "backbone.embeddings."): v.clone() for k, v in sd.items()
               if k != "lm_head.weight"}, str(hf / "model.safetensors"))
    del sd

    model = load_model(ss, device="cpu")
    cfg = model.config
    assert cfg.vocab_size == PADDED_VOCAB[name] and cfg.tokenizer_vocab_size == 50277
    assert cfg.arch == ("mamba1" if name == "mamba-130m" else "mamba2") and cfg.n_layer == 24
    assert model.dtype == torch.float16

    ids = torch.randint(0, 50277, (2, 5))
    with torch.no_grad():
        a = model.float()(ids)
    del model
    b = logits_of(hf, ids)
    assert a.shape == (2, 5, PADDED_VOCAB[name])
    assert torch.isfinite(a).all() and a.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def small_model(tie: bool = True) -> MambaLM:
    m = MambaLM(MambaConfig(arch="mamba2", d_model=32, n_layer=3, vocab_size=77, d_state=8, headdim=16,
                            chunk_size=8, tie_embeddings=tie))
    return init_random_weights(m, seed=int(torch.randint(0, 2**31 - 1, ())), std=0.1).eval()


def hf_config_of(cfg: MambaConfig) -> dict:
    return dict(model_type="mamba2", hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
                vocab_size=cfg.vocab_size, state_size=cfg.d_state, expand=cfg.expand, head_dim=cfg.headdim,
                num_heads=cfg.nheads, n_groups=cfg.ngroups, chunk_size=cfg.chunk_size,
                tie_word_embeddings=cfg.tie_embeddings)


def write_hf_dir(path: Path, model: MambaLM, fmt: str) -> None:
    path.mkdir()
    write_json(path / "config.json", hf_config_of(model.config))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        del sd["lm_head.weight"]
    if fmt == "bin":
        torch.save(sd, path / "pytorch_model.bin")
    elif fmt == "safetensors":
        save_file(sd, str(path / "model.safetensors"))
    else:
        keys = sorted(sd)
        shards = {f"model-0000{i + 1}-of-00003.safetensors": keys[i::3] for i in range(3)}
        for shard, names in shards.items():
            save_file({k: sd[k] for k in names}, str(path / shard))
        write_json(path / "model.safetensors.index.json",
                   {"metadata": {}, "weight_map": {k: s for s, names in shards.items() for k in names}})


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
@pytest.mark.parametrize("tie", [True, False])
def test_transformers_layout_formats(fmt, tie, tmp_path):
    model = small_model(tie)
    write_hf_dir(tmp_path / "m", model, fmt)
    ids = torch.randint(0, 77, (3, 11))
    with torch.no_grad():
        want = model(ids)
    torch.testing.assert_close(logits_of(tmp_path / "m", ids), want, rtol=0, atol=0)


def test_dtype_argument_and_checkpoint_dtype(tmp_path):
    model = small_model().half()
    write_hf_dir(tmp_path / "m", model, "safetensors")
    assert load_model(tmp_path / "m").dtype == torch.float16
    assert load_model(tmp_path / "m", dtype="bf16").dtype == torch.bfloat16


def test_state_spaces_without_tokenizer_names_neox(tmp_path):
    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache(NEOX_TOKENIZER, "tokenizer.json"), str):
        pytest.skip("the GPT-NeoX tokenizer is in the local hub cache")
    d = tmp_path / "ss"
    d.mkdir()
    write_json(d / "config.json", dict(d_model=32, n_layer=1, vocab_size=50277, ssm_cfg={}))
    with pytest.raises(ModelLoadError, match="EleutherAI/gpt-neox-20b"):
        load_tokenizer(d)


# ---- bad checkpoints ------------------------------------------------------------------------

def test_missing_path_and_config(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(tmp_path / "f")


@pytest.mark.parametrize("cfg, match", [
    (dict(model_type="llama", hidden_size=32, num_hidden_layers=2, vocab_size=10), "llama"),
    (dict(model_type="bert"), "bert"),
    (dict(d_model=32, n_layer=2, vocab_size=10, ssm_cfg={"layer": "Mamba3"}), "Mamba3"),
    (dict(d_model=32, n_layer=2, vocab_size=10, attn_layer_idx=[1]), "hybrid"),
    (dict(foo=1), "neither"),
])
def test_unsupported_configs(cfg, match, tmp_path):
    write_json(tmp_path / "config.json", cfg)
    with pytest.raises(UnsupportedModelError, match=match):
        load_model(tmp_path)


def test_invalid_json_and_bad_values(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(tmp_path)
    write_json(tmp_path / "config.json", dict(model_type="mamba", hidden_size="big", num_hidden_layers=2,
                                              vocab_size=10))
    with pytest.raises(ModelLoadError, match="bad value"):
        load_model(tmp_path)


def test_shape_mismatch_and_missing_tensors(tmp_path):
    model = small_model()
    write_hf_dir(tmp_path / "m", model, "safetensors")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    write_json(tmp_path / "m" / "config.json", {**cfg, "state_size": 12})
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_model(tmp_path / "m")
    write_json(tmp_path / "m" / "config.json", {**cfg, "num_hidden_layers": 4})
    with pytest.raises(CheckpointMismatchError, match="missing: backbone.layers.3"):
        load_model(tmp_path / "m")
    write_json(tmp_path / "m" / "config.json", {**cfg, "num_hidden_layers": 2})
    with pytest.raises(CheckpointMismatchError, match="backbone.layers.2"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("fmt, keep", [("safetensors", 0.5), ("safetensors", 0.001), ("bin", 0.5)])
def test_truncated_weights(fmt, keep, tmp_path):
    write_hf_dir(tmp_path / "m", small_model(), fmt)
    f = tmp_path / "m" / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    data = f.read_bytes()
    f.write_bytes(data[:max(1, int(len(data) * keep))])
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "m")


def test_missing_shard_and_no_weights(tmp_path):
    write_hf_dir(tmp_path / "m", small_model(), "sharded")
    (tmp_path / "m" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model-00002-of-00003.safetensors"):
        load_model(tmp_path / "m")
    d = tmp_path / "empty"
    d.mkdir()
    write_json(d / "config.json", hf_config_of(small_model().config))
    with pytest.raises(ModelLoadError, match="has no weights"):
        load_model(d)
