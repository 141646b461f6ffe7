"""Offline Hadamard rotation: the fp32 model computes the same function, weights absorb the rotation."""
from __future__ import annotations

import pytest
import torch

from quamba.config import MambaConfig
from quamba.errors import InvalidArgumentError
from quamba.loading import load_model
from quamba.models import MambaLM, init_random_weights
from quamba.qmodules import HadamardLinear
from quamba.quantization.rotation import rotate_model

torch.set_grad_enabled(False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _check_invariant(model: MambaLM, L: int) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, L))
    before = model(ids)
    emb = model.backbone.embeddings.weight.clone()
    rotate_model(model)
    after = model(ids)
    assert _rel(after, before) < 1e-4
    assert model.lm_head.weight.data_ptr() != model.backbone.embeddings.weight.data_ptr()
    assert not model.config.tie_embeddings
    torch.testing.assert_close(model.backbone.embeddings.weight.norm(dim=1), emb.norm(dim=1))
    assert not torch.allclose(model.backbone.embeddings.weight, emb)
    for blk in model.backbone.layers:
        assert torch.equal(blk.norm.weight, torch.ones_like(blk.norm.weight))
        assert isinstance(blk.mixer.out_proj, HadamardLinear)
    assert torch.equal(model.backbone.norm_f.weight, torch.ones_like(model.backbone.norm_f.weight))


@pytest.mark.parametrize("which", ["mamba1", "mamba2"])
def test_rotation_keeps_shared_model_logits(which, mamba1_small_dir, mamba2_small_dir):
    path = mamba1_small_dir if which == "mamba1" else mamba2_small_dir
    _check_invariant(load_model(path, dtype="fp32"), 23)


def test_rotation_keeps_random_mamba2_with_groups(seed):
    cfg = MambaConfig(arch="mamba2", d_model=96, n_layer=3, vocab_size=71, d_state=16, headdim=32, ngroups=2,
                      chunk_size=16, proj_bias=True)
    _check_invariant(init_random_weights(MambaLM(cfg), seed=seed), 37)


def test_rotation_rotates_norm_outputs_and_out_proj_input(seed):
    """The in_proj input (norm output) of the rotated model is H applied to the original one."""
    cfg = MambaConfig(arch="mamba1", d_model=48, n_layer=1, vocab_size=29, d_state=4)
    model = init_random_weights(MambaLM(cfg), seed=seed)
    seen = []
    model.backbone.layers[0].mixer.in_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    ids = torch.randint(0, 29, (1, 9))
    model(ids)
    gamma = model.backbone.layers[0].norm.weight.clone()
    rotate_model(model)
    model(ids)
    from quamba.quantization.hadamard import hadamard_transform
    torch.testing.assert_close(seen[1], hadamard_transform(seen[0] / gamma), rtol=1e-4, atol=1e-5)


def test_rotation_rejects_unsupported_sizes():
    cfg = MambaConfig(arch="mamba1", d_model=36, n_layer=1, vocab_size=11, d_state=4)  # 36 = 9·4, d_inner 72
    with pytest.raises(InvalidArgumentError, match="Hadamard"):
        rotate_model(MambaLM(cfg))


def test_rotation_twice_is_refused(seed):
    cfg = MambaConfig(arch="mamba1", d_model=32, n_layer=1, vocab_size=11, d_state=4)
    model = init_random_weights(MambaLM(cfg), seed=seed)
    rotate_model(model)
    with pytest.raises(InvalidArgumentError, match="already rotated"):
        rotate_model(model)
