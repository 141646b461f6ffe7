"""Oracle: our fp32 logits equal transformers' MambaForCausalLM / Mamba2ForCausalLM on the same weights."""
from __future__ import annotations

import pytest
import torch
import transformers

from quamba.config import MambaConfig
from quamba.loading import load_model
from quamba.models import MambaLM, init_random_weights

REL_TOL = 1e-4


def hf_config(cfg: MambaConfig):
    """The transformers config describing the same architecture as ``cfg``."""
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, state_size=cfg.d_state,
                  num_hidden_layers=cfg.n_layer, layer_norm_epsilon=cfg.norm_eps, expand=cfg.expand,
                  conv_kernel=cfg.d_conv, use_bias=cfg.proj_bias, use_conv_bias=cfg.conv_bias,
                  residual_in_fp32=cfg.residual_in_fp32, tie_word_embeddings=cfg.tie_embeddings,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if cfg.arch == "mamba1":
        return transformers.MambaConfig(intermediate_size=cfg.d_inner, time_step_rank=cfg.dt_rank, **common)
    return transformers.Mamba2Config(num_heads=cfg.nheads, head_dim=cfg.headdim, n_groups=cfg.ngroups,
                                     chunk_size=cfg.chunk_size, time_step_limit=cfg.dt_limit, **common)


def hf_model_with(state_dict: dict[str, torch.Tensor], hf_cfg):
    cls = transformers.MambaForCausalLM if hf_cfg.model_type == "mamba" else transformers.Mamba2ForCausalLM
    model = cls(hf_cfg).float().eval()
    model.load_state_dict(state_dict, strict=not hf_cfg.tie_word_embeddings)
    return model


def assert_same_logits(ours: MambaLM, theirs, ids: torch.Tensor) -> None:
    with torch.no_grad():
        a = ours(ids)
        b = theirs(ids).logits.float()
    assert a.shape == b.shape
    assert torch.isfinite(b).all()
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= REL_TOL * scale, f"max |diff| {err:.3g} > {REL_TOL} * max |logit| {scale:.3g}"


def random_model(**kw) -> MambaLM:
    model = MambaLM(MambaConfig(**kw))
    init_random_weights(model, seed=int(torch.randint(0, 2**31 - 1, ())), std=0.1)
    return model.float().eval()


@pytest.mark.parametrize("name, length", [("mamba1-small", 67), ("mamba2-small", 133)])
def test_shared_trained_models(name, length, shared_dir):
    path = shared_dir / "models" / name
    ours = load_model(path, device="cpu", dtype="fp32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # transformers 5.x re-initialises out_proj after from_pretrained when rescale_prenorm_residual is
    # true (mamba2-small has it), so its weights would silently differ from the checkpoint: load the
    # very same tensors explicitly so both sides compute with identical weights.
    theirs.load_state_dict(ours.state_dict())
    ids = torch.randint(0, ours.config.tokenizer_vocab_size, (3, length))  # mamba2-small: chunk 128
    assert_same_logits(ours, theirs, ids)


@pytest.mark.parametrize("kw", [
    dict(d_model=48, d_state=8),  # d_inner 96, not a power of two
    dict(d_model=40, d_state=5, d_conv=3, proj_bias=True, conv_bias=False, tie_embeddings=False),
], ids=["d_inner96", "d_inner80-bias-untied"])
def test_random_mamba1(kw):
    ours = random_model(arch="mamba1", n_layer=2, vocab_size=97, **kw)
    theirs = hf_model_with(ours.state_dict(), hf_config(ours.config))
    assert_same_logits(ours, theirs, torch.randint(0, 97, (3, 45)))


@pytest.mark.parametrize("ngroups", [1, 2, 4])
def test_random_mamba2(ngroups):
    ours = random_model(arch="mamba2", d_model=64, n_layer=2, vocab_size=101, d_state=16, headdim=16,
                        ngroups=ngroups, chunk_size=16)
    theirs = hf_model_with(ours.state_dict(), hf_config(ours.config))
    assert_same_logits(ours, theirs, torch.randint(0, 101, (3, 37)))  # 37: three partial chunks


def test_random_mamba2_untied_with_bias_and_dt_limit():
    ours = random_model(arch="mamba2", d_model=48, n_layer=2, vocab_size=83, d_state=12, headdim=24, ngroups=2,
                        chunk_size=8, proj_bias=True, tie_embeddings=False, dt_limit=(0.01, 0.05))
    theirs = hf_model_with(ours.state_dict(), hf_config(ours.config))
    assert_same_logits(ours, theirs, torch.randint(0, 83, (3, 21)))


def test_transformers_checkpoint_round_trip(tmp_path):
    """A transformers-saved random model loads through our loader (config parsing included)."""
    ours = random_model(arch="mamba2", d_model=64, n_layer=2, vocab_size=101, d_state=16, headdim=16,
                        ngroups=2, chunk_size=16)
    theirs = hf_model_with(ours.state_dict(), hf_config(ours.config))
    theirs.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, device="cpu", dtype="fp32")
    assert loaded.config.ngroups == 2 and loaded.config.chunk_size == 16 and loaded.config.headdim == 16
    assert_same_logits(loaded, theirs, torch.randint(0, 101, (3, 19)))
