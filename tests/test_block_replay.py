"""Whole-block prefill replays (``quamba.kernels.block_replay``), on the CPU through the interpreter with a
stand-in launcher: replayed prefills of W8A8 models equal the prefills that run every op, for fresh prompts and
cache states; a changed scale or parameter is not replayed stale; a block with torch ops is never recorded."""
from __future__ import annotations

import pytest
import torch

from quamba import ops
from quamba.config import MambaConfig
from quamba.kernels import (block_replay as BR, conv1d, hadamard, int8_gemm, norm, qconv1d, qnorm, reuse, selective_scan,
                            ssd)
from quamba.models import MambaLM, init_random_weights, lm
from quamba.quantization import RECIPES, quantize_

from kernel_checks import DEV, interpreted_relaunch

CONFIGS = {
    "mamba1": dict(arch="mamba1", d_model=40, n_layer=2, vocab_size=97, d_state=8, dt_rank=6),
    "mamba2": dict(arch="mamba2", d_model=48, n_layer=2, vocab_size=97, d_state=16, headdim=16, ngroups=2,
                   chunk_size=16),
}
KERNEL_MODULES = (conv1d, hadamard, int8_gemm, norm, qconv1d, qnorm, selective_scan, ssd)


def _w8a8(arch: str) -> MambaLM:
    m = init_random_weights(MambaLM(MambaConfig(**CONFIGS[arch])).to(DEV), seed=1, std=0.05).eval()
    calib = [torch.randint(0, 97, (1, 24), device=DEV) for _ in range(2)]
    quantize_(m, RECIPES["quamba"](), calib, show_progress=False)
    return m


@pytest.fixture
def replays(monkeypatch):
    """Block replays on for CPU prefills, each op's and block's table emptied; counts the block replays run."""
    own, _ = interpreted_relaunch(monkeypatch, *KERNEL_MODULES)
    monkeypatch.setattr(reuse, "ENABLED", True)
    monkeypatch.setattr(lm, "_replays_blocks", lambda hidden: hidden.shape[1] > 1)
    for mod in KERNEL_MODULES:
        if hasattr(mod, "_REPLAYS"):
            mod._REPLAYS.clear()
    runs = []
    real = BR.BlockReplay.run
    monkeypatch.setattr(BR.BlockReplay, "run", lambda self, inputs: runs.append(self) or real(self, [t if t is None else own(t) for t in inputs]))
    with ops.backend("triton"):
        yield runs


@torch.inference_mode()
def _prefill(model, ids, states):
    cache = model.allocate_cache(ids.shape[0])
    for s, (conv, ssm) in zip(cache.layers, states):
        s.conv.copy_(conv)
        s.ssm.copy_(ssm)
    logits = model(ids, cache)
    return logits, [(s.conv.clone(), s.ssm.clone()) for s in cache.layers]


def _states(model, batch):
    cache = model.allocate_cache(batch)
    return [(torch.randint(-60, 60, s.conv.shape, dtype=s.conv.dtype), torch.randint(-60, 60, s.ssm.shape,
                                                                                      dtype=s.ssm.dtype))
            for s in cache.layers]


def _same(got, want):
    (lg, sg), (lw, sw) = got, want
    torch.testing.assert_close(lg, lw, rtol=1e-4, atol=1e-4)
    for (cg, hg), (cw, hw) in zip(sg, sw):
        assert torch.equal(cg, cw)
        assert (hg.int() - hw.int()).abs().max() <= 1


def _unreplayed(model, ids, states, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(reuse, "ENABLED", False)
        return _prefill(model, ids, states)


@torch.inference_mode()
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_replayed_prefills_equal_prefills_that_run_every_op(arch, replays, monkeypatch):
    model = _w8a8(arch)
    for call in range(3):
        ids = torch.randint(0, 97, (2, 19), device=DEV)
        states = _states(model, 2)
        got = _prefill(model, ids, states)
        _same(got, _unreplayed(model, ids, states, monkeypatch))
        assert len(replays) == (0 if call < 2 else 2 * (call - 1)), call  # seen, recorded, then replayed
    rec = replays[-1]
    copied = sum(st[3] for st in rec.steps if st[0] == "copy")  # the scan's end state into the cache
    assert rec.workspace > 0 and copied > 0
    ids, states = torch.randint(0, 97, (1, 37), device=DEV), _states(model, 1)  # another signature: its own replay
    for _ in range(3):
        got = _prefill(model, ids, states)
    _same(got, _unreplayed(model, ids, states, monkeypatch))
    assert len(replays) == 4 and replays[-1] is not rec


def test_the_workspace_reuses_the_regions_of_dead_tensors():
    sizes, last_use = [1000, 2000, 500, 3000, 700, 64], {0: 1, 1: 4, 2: 3, 3: 5, 4: 6}  # 5: never used
    b = BR._Build([], [], [])
    b.allocs = [torch.empty(n, dtype=torch.uint8) for n in sizes]
    b.alloc_at, b.last_use = list(range(len(sizes))), dict(last_use)
    offsets, total = b._pack({4: 0})  # 4: an output, allocated on its own
    assert set(offsets) == {0, 1, 2, 3}
    assert offsets[2] == 0  # 0 is dead when 2 is allocated
    padded = {k: -(-sizes[k] // BR.ALIGN) * BR.ALIGN for k in offsets}
    assert total == max(offsets[k] + padded[k] for k in offsets) < sum(padded.values())
    for i in offsets:
        for j in offsets:
            live_together = i < j and last_use[i] >= j
            if live_together:
                assert offsets[i] + padded[i] <= offsets[j] or offsets[j] + padded[j] <= offsets[i], (i, j)
    assert all(o % BR.ALIGN == 0 for o in offsets.values())


def test_a_changed_scale_or_parameter_is_not_replayed_stale(replays, monkeypatch):
    model = _w8a8("mamba1")  # made outside inference mode: its tensors count their in-place changes
    ids, states = torch.randint(0, 97, (1, 17), device=DEV), _states(model, 1)
    for _ in range(3):
        _prefill(model, ids, states)
    assert len(replays) == 2
    mixer = model.backbone.layers[0].mixer
    mixer.out_proj.set_scale("input_scale", mixer.out_proj.scale("input_scale") * 1.5)
    with torch.no_grad():
        mixer.D.mul_(-1)
    got = _prefill(model, ids, states)
    _same(got, _unreplayed(model, ids, states, monkeypatch))
    assert len(replays) == 2  # the epoch moved: both blocks seen again under a new key
    for _ in range(2):
        _prefill(model, ids, states)
    assert len(replays) == 4
    with torch.no_grad():
        mixer.D.mul_(-1)  # an in-place edit only: same key, the recorded versions differ
    _same(_prefill(model, ids, states), _unreplayed(model, ids, states, monkeypatch))
    assert len(replays) == 5  # layer 1 replayed; layer 0 recorded again


@torch.inference_mode()
def test_a_block_with_torch_ops_is_never_recorded(replays):
    m = init_random_weights(MambaLM(MambaConfig(**CONFIGS["mamba1"])).to(DEV), seed=1).eval()
    for _ in range(BR.MAX_TRIES + 2):
        m(torch.randint(0, 97, (1, 9), device=DEV), m.allocate_cache(1))
    assert not replays
    for blk in m.backbone.layers:
        assert list(blk.__dict__["_block_replays"].values()) == [BR.MAX_TRIES]


@pytest.mark.gpu
@torch.inference_mode()
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_gpu_replayed_prefills_equal_prefills_that_run_every_op(arch, monkeypatch):
    cfg = dict(CONFIGS[arch], d_model=256, n_layer=3)
    with torch.device("cuda"):
        model = init_random_weights(MambaLM(MambaConfig(**cfg)).to(torch.float16), seed=2, std=0.05).eval()
    quantize_(model, RECIPES["quamba"](), [torch.randint(0, 97, (1, 64), device="cuda") for _ in range(2)],
              show_progress=False)
    monkeypatch.setattr(reuse, "ENABLED", True)
    monkeypatch.setattr(BR, "ENABLED", True)
    for call in range(4):
        ids, states = torch.randint(0, 97, (3, 301), device="cuda"), _states(model, 3)
        got = _prefill(model, ids, states)
        _same(got, _unreplayed(model, ids, states, monkeypatch))
    for blk in model.backbone.layers:
        assert any(isinstance(r, BR.BlockReplay) for r in blk.__dict__["_block_replays"].values())
