"""Cache consistency: decode steps and continued prefills reproduce the logits of one long prefill."""
from __future__ import annotations

import pytest
import torch

from quamba.config import MambaConfig
from quamba.loading import load_model
from quamba.models import MambaLM, init_random_weights

REL_TOL = 1e-4

CONFIGS = {
    "mamba1": dict(arch="mamba1", d_model=40, n_layer=2, vocab_size=89, d_state=7),
    "mamba2": dict(arch="mamba2", d_model=48, n_layer=2, vocab_size=89, d_state=12, headdim=16, ngroups=3,
                   chunk_size=8),
}


@pytest.fixture(params=list(CONFIGS))
def model(request) -> MambaLM:
    m = MambaLM(MambaConfig(**CONFIGS[request.param]))
    return init_random_weights(m, seed=int(torch.randint(0, 2**31 - 1, ())), std=0.1).float().eval()


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= REL_TOL * scale, f"max |diff| {err:.3g} > {REL_TOL} * {scale:.3g}"


def decode(model: MambaLM, ids: torch.Tensor, cache) -> torch.Tensor:
    return torch.cat([model(ids[:, t:t + 1], cache) for t in range(ids.shape[1])], dim=1)


@torch.no_grad()
def test_token_by_token_equals_prefill(model):
    ids = torch.randint(0, 89, (3, 19))
    want = model(ids)
    cache = model.allocate_cache(3)
    assert_close(decode(model, ids, cache), want)
    assert cache.seqlen_offset == 19


@torch.no_grad()
@pytest.mark.parametrize("split", [1, 5, 17])
def test_prefill_then_decode(model, split):
    ids = torch.randint(0, 89, (3, 23))
    want = model(ids)
    cache = model.allocate_cache(3)
    got = torch.cat([model(ids[:, :split], cache), decode(model, ids[:, split:], cache)], dim=1)
    assert_close(got, want)


@torch.no_grad()
@pytest.mark.parametrize("pieces", [(3, 9, 13), (11, 2, 7, 5), (1, 1, 21)])
def test_prefill_continues_from_cache(model, pieces):
    """Several multi-token prefills in a row (crossing chunk boundaries) equal one long prefill."""
    ids = torch.randint(0, 89, (3, sum(pieces)))
    want = model(ids)
    cache = model.allocate_cache(3)
    got, start = [], 0
    for n in pieces:
        got.append(model(ids[:, start:start + n], cache))
        start += n
    assert_close(torch.cat(got, dim=1), want)


@torch.no_grad()
def test_last_only_matches_full(model):
    ids = torch.randint(0, 89, (3, 11))
    assert_close(model(ids, last_only=True), model(ids)[:, -1:])


@torch.no_grad()
@pytest.mark.parametrize("name", ["mamba1-small", "mamba2-small"])
def test_shared_model_prefill_then_decode(name, shared_dir):
    model = load_model(shared_dir / "models" / name, device="cpu", dtype="fp32")
    ids = torch.randint(0, model.config.tokenizer_vocab_size, (3, 13))
    want = model(ids)
    cache = model.allocate_cache(3)
    got = torch.cat([model(ids[:, :7], cache), decode(model, ids[:, 7:], cache)], dim=1)
    assert_close(got, want)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_model_made_under_inference_mode(arch, seed):
    """Parameters created in inference mode track no version; the derived-parameter caches cope."""
    ids = torch.randint(0, 89, (2, 11))
    ref = init_random_weights(MambaLM(MambaConfig(**CONFIGS[arch])), seed=seed).eval()
    with torch.no_grad():
        want = ref(ids)
    with torch.inference_mode():
        m = init_random_weights(MambaLM(MambaConfig(**CONFIGS[arch])), seed=seed).eval()
        cache = m.allocate_cache(2)
        got = torch.cat([m(ids[:, :6], cache), decode(m, ids[:, 6:], cache)], dim=1)
    assert_close(got, want)


def test_cache_reset_zeroes_every_state(model):
    """After a prefill, ``reset`` (grouped ``_foreach_zero_``) leaves every state and scratch tensor zero,
    and the next prefill equals one on a fresh cache."""
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    cache = model.allocate_cache(2)
    with torch.inference_mode():
        model(ids, cache)
        for s in cache.layers:
            for t in (s.conv, s.ssm, *s.work):
                t.fill_(3)
        cache.reset()
        assert cache.seqlen_offset == 0
        assert all(not t.any() for s in cache.layers for t in (s.conv, s.ssm, *s.work))
        again = model(ids, cache)
        fresh = model(ids, model.allocate_cache(2))
    assert torch.equal(again, fresh)
