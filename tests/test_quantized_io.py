"""Quantized checkpoints: save -> load gives bit-identical logits; bad directories are refused."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from quamba import api
from quamba.config import MambaConfig
from quamba.errors import InvalidArgumentError, ModelLoadError, QuantizedFormatError
from quamba.loading import load_model, load_tokenizer
from quamba.models import MambaLM, init_random_weights
from quamba.quantization import RECIPES, get_recipe, quantize_
from quamba.quantized_io import is_quantized_dir, load_quantized, save_quantized

torch.set_grad_enabled(False)


def _quantized(arch: str, recipe: str = "quamba", seed: int = 0, dtype=torch.float32, **kw) -> MambaLM:
    if arch == "mamba1":
        cfg = MambaConfig(arch="mamba1", d_model=32, n_layer=2, vocab_size=45, d_state=8)
    else:
        cfg = MambaConfig(arch="mamba2", d_model=64, n_layer=2, vocab_size=45, d_state=8, headdim=16, ngroups=2,
                          chunk_size=8)
    m = init_random_weights(MambaLM(cfg), seed=seed).to(dtype)
    calib = [torch.randint(0, 45, (1, 19)) for _ in range(3)]
    return quantize_(m, get_recipe(recipe, **kw), calib, show_progress=False)


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_save_load_bit_identical(arch, recipe, tmp_path, seed):
    extra = dict(quantize_embedding=True, quantize_lm_head=True, fake_quant=True) if recipe == "rotation" else {}
    m = _quantized(arch, recipe, seed=seed, **extra)
    ids = torch.randint(0, 45, (2, 13))
    want = m(ids)
    out = save_quantized(m, None, tmp_path / "q")
    assert is_quantized_dir(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quamba_format_version"] == 1 and cfg["recipe"]["name"] == recipe
    assert cfg["model_config"]["arch"] == arch and cfg["model_config"]["tie_embeddings"] is False
    sd = load_file(str(out / "model.safetensors"))
    assert sd["backbone.layers.0.mixer.in_proj.weight"].dtype == torch.int8
    back = load_quantized(out)
    assert torch.equal(back(ids), want)
    cache_a, cache_b = m.allocate_cache(2), back.allocate_cache(2)
    torch.testing.assert_close(back(ids, cache_b), m(ids, cache_a), rtol=0, atol=0)
    step = torch.randint(0, 45, (2, 1))
    assert torch.equal(back(step, cache_b), m(step, cache_a))
    assert [p.name for p in tmp_path.iterdir()] == ["q"]


def test_shared_model_round_trip_with_tokenizer(mamba2_small_dir, tmp_path):
    m = load_model(mamba2_small_dir)  # fp16 checkpoint: float leftovers stay fp16
    tok = load_tokenizer(mamba2_small_dir)
    calib = [torch.randint(5, 8000, (1, 32)) for _ in range(2)]
    quantize_(m, get_recipe("quamba", percentile=0.99999), calib, show_progress=False)
    ids = torch.randint(5, 8000, (1, 40))
    want = m(ids)
    save_quantized(m, tok, tmp_path / "out")
    model, tok2 = api.load(tmp_path / "out")
    assert model.quant_config == m.quant_config and model.backbone.embeddings.weight.dtype == torch.float16
    assert torch.equal(model(ids), want)
    assert tok2("hello world").input_ids == tok("hello world").input_ids


def test_refuses_non_empty_dir_without_overwrite(tmp_path):
    m = _quantized("mamba1")
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InvalidArgumentError, match="not empty"):
        save_quantized(m, None, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    save_quantized(m, None, out, overwrite=True)
    assert not (out / "keep.txt").exists() and is_quantized_dir(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    empty = tmp_path / "empty"
    empty.mkdir()
    save_quantized(m, None, empty)
    assert is_quantized_dir(empty)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    m = _quantized("mamba1")

    class BadTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_quantized(m, BadTokenizer(), tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


def test_refuses_unquantized_model(tmp_path):
    m = init_random_weights(MambaLM(MambaConfig(arch="mamba1", d_model=32, n_layer=1, vocab_size=11)))
    with pytest.raises(InvalidArgumentError, match="not quantized"):
        save_quantized(m, None, tmp_path / "q")
    assert not (tmp_path / "q").exists()


@pytest.fixture
def saved(tmp_path):
    return save_quantized(_quantized("mamba2"), None, tmp_path / "q")


def test_unknown_format_version(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["quamba_format_version"] = 7
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizedFormatError, match="version 7"):
        load_quantized(saved)


def test_missing_and_unexpected_tensors(saved):
    sd = load_file(str(saved / "model.safetensors"))
    orig = sd.pop("backbone.layers.1.mixer.conv_out_scale")
    save_file(sd, str(saved / "model.safetensors"))
    with pytest.raises(QuantizedFormatError, match="missing tensors: backbone.layers.1.mixer.conv_out_scale"):
        load_quantized(saved)
    sd["backbone.layers.1.mixer.conv_out_scale"] = torch.ones(3)
    save_file(sd, str(saved / "model.safetensors"))
    with pytest.raises(QuantizedFormatError, match="conv_out_scale"):
        load_quantized(saved)
    sd["backbone.layers.1.mixer.conv_out_scale"] = orig
    sd["backbone.layers.0.mixer.in_proj.weight"] = sd["backbone.layers.0.mixer.in_proj.weight"].float()
    sd["extra.tensor"] = torch.zeros(1)
    save_file(sd, str(saved / "model.safetensors"))
    with pytest.raises(QuantizedFormatError, match="dtype.*unexpected tensors: extra.tensor"):
        load_quantized(saved)


def test_bad_config_and_missing_weights(saved, tmp_path):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["recipe"]["name"] = "mystery"
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizedFormatError, match="mystery"):
        load_quantized(saved)
    cfg["recipe"]["name"] = "quamba"
    del cfg["model_config"]
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizedFormatError, match="model_config"):
        load_quantized(saved)
    (saved / "model.safetensors").unlink()
    with pytest.raises(QuantizedFormatError):
        load_quantized(saved)
    with pytest.raises(ModelLoadError):
        load_quantized(tmp_path / "nowhere")
