"""CUDA-graph decoding (GPU only): replayed steps equal eager decode steps.

The graph is where the decode kernels launch with programmatic dependent launch
(``quamba.kernels.pdl``), so these tests are the ones that check that path: fp16
and W8A8, both architectures, batch 1 and 3, odd widths, and the greedy tokens of a short run.
"""
from __future__ import annotations

import pytest
import torch

from quamba.config import MambaConfig
from quamba.graphs import GraphDecoder
from quamba.models import MambaLM, init_random_weights
from quamba.quantization import RECIPES, quantize_

pytestmark = pytest.mark.gpu

CONFIGS = {
    "mamba1": dict(arch="mamba1", d_model=96, n_layer=3, vocab_size=301, d_state=12),
    "mamba2": dict(arch="mamba2", d_model=160, n_layer=3, vocab_size=301, d_state=24, headdim=40, ngroups=2,
                   chunk_size=16),
}


def _model(arch: str, precision: str, seed: int) -> MambaLM:
    with torch.device("cuda"):
        m = MambaLM(MambaConfig(**CONFIGS[arch])).to(torch.float16)
    init_random_weights(m, seed=seed, std=0.05)
    m.eval()
    if precision == "w8a8":
        calib = [torch.randint(0, 301, (1, 48), device="cuda") for _ in range(2)]
        quantize_(m, RECIPES["quamba"](quantize_embedding=True, quantize_lm_head=True), calib, show_progress=False)
    return m


@torch.inference_mode()
@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("precision", ["fp16", "w8a8"])
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_steps_equal_eager_steps(arch, precision, batch, seed):
    model = _model(arch, precision, seed)
    prompt = torch.randint(0, 301, (batch, 37), device="cuda")
    steps = torch.randint(0, 301, (batch, 9), device="cuda")
    cache = model.allocate_cache(batch)
    want = [model(prompt, cache, last_only=True)[:, -1].float()]
    want += [model(steps[:, t:t + 1], cache)[:, -1].float() for t in range(steps.shape[1])]

    dec = GraphDecoder(model, batch)
    got = [dec.prefill(prompt).float()]
    got += [dec.step(steps[:, t]).float().clone() for t in range(steps.shape[1])]
    torch.cuda.synchronize()
    for t, (g, w) in enumerate(zip(got, want)):
        err = (g - w).abs().max().item()
        assert err <= 2e-3 * w.abs().max().item() + 1e-3, f"step {t}: max |diff| {err:.3g}"
    assert dec.cache.seqlen_offset == 37 + steps.shape[1]


@torch.inference_mode()
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_pdl_off_and_on_give_the_same_tokens(arch, seed, monkeypatch):
    model = _model(arch, "w8a8", seed)
    prompt = torch.randint(0, 301, (1, 21), device="cuda")
    runs = []
    for pdl in ("0", "1"):
        monkeypatch.setenv("QUAMBA_PDL", pdl)
        dec = GraphDecoder(model, 1)
        logits = dec.prefill(prompt)
        out = []
        for _ in range(16):
            tok = logits.argmax(-1)
            out.append(int(tok[0]))
            logits = dec.step(tok)
        runs.append(out)
    assert runs[0] == runs[1]
