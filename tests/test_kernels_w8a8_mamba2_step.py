"""W8A8 Mamba2 decode step with the gated norm split around its int8 ops: ``qssd_gate_step`` (int8 SSD
update + gate, sums of squares) and ``rms_hadamard_quant`` (norm finished on load, Hadamard, int8), against
``quamba.ops.fused_reference``; the references against the unfused int8 ops; and whole W8A8 models.

int8 codes may differ by one where the fused path rounds at another point (fp32 summation order, the
normalized value not rounded to fp16 before the Hadamard): such codes are counted and bounded.
"""
from __future__ import annotations

import pytest
import torch

from quamba import ops
from quamba.config import MambaConfig
from quamba.errors import InvalidArgumentError
from quamba.kernels import hadamard as KH
from quamba.kernels import mamba2_step as K
from quamba.kernels import qconv1d as KQC
from quamba.models import MambaLM, init_random_weights
from quamba.ops import fused_reference as FR
from quamba.ops import qreference as Q

from kernel_checks import DEV, poisoned_outputs, q8, rel_err, rnd

torch.set_grad_enabled(False)


def assert_codes(a: torch.Tensor, b: torch.Tensor, max_frac: float = 2e-3) -> None:
    assert a.dtype == b.dtype == torch.int8 and a.shape == b.shape
    d = (a.int() - b.int()).abs()
    assert d.max().item() <= 1
    assert (d > 0).sum().item() <= max(2, max_frac * d.numel())


def _ssd_args(b, h, p, g, n):
    return dict(x=q8(b, h, p), dt=q8(b, h), A=-torch.exp(rnd(h)), B=q8(b, g, n), C=q8(b, g, n), D=rnd(h),
                dt_bias=rnd(h, scale=0.5) - 2, z=q8(b, 2 * h * p + 3)[:, 1:1 + h * p], nw=rnd(h * p).add(1.0))


def _call(fn, state, a, group, ss, limit=(0.0, float("inf"))):
    return fn(state, 0.02, a["x"], 0.005, a["dt"], 0.03, a["A"], a["B"], 0.004, a["C"], 0.006, a["D"], a["dt_bias"],
              limit, a["z"], 0.02, a["nw"], group, ss)


@pytest.mark.parametrize("b,h,p,g,n", [(1, 6, 12, 3, 20), (3, 4, 16, 1, 16), (2, 8, 8, 2, 32)])
@pytest.mark.parametrize("limit", [(0.0, float("inf")), (0.01, 0.5)])
def test_qssd_gate_step_matches_reference(b, h, p, g, n, limit):
    state = q8(b, h, p, n)
    ref_state = state.clone()
    group = h * p // g
    for _ in range(2):
        a = _ssd_args(b, h, p, g, n)
        ss = torch.rand(b, g, device=DEV)
        ss_ref = ss.clone()
        with poisoned_outputs():
            gw = _call(K.qssd_gate_step, state, a, group, ss, limit)
        ref = _call(FR.qssd_gate_step, ref_state, a, group, ss_ref, limit)
        assert gw.dtype == torch.float16 and gw.shape == (b, h * p)
        assert rel_err(gw, ref) < 2e-3
        torch.testing.assert_close(ss, ss_ref, rtol=2e-3, atol=1e-4)
        assert_codes(state, ref_state)
        state.copy_(ref_state)


def test_qssd_gate_step_rejects_float_gate():
    a = _ssd_args(1, 4, 8, 1, 16)
    a["z"] = rnd(1, 32)
    with pytest.raises(InvalidArgumentError):
        _call(K.qssd_gate_step, q8(1, 4, 8, 16), a, 32, torch.zeros(1, 1, device=DEV))


@pytest.mark.parametrize("m,n,groups", [(1, 192, 1), (3, 192, 3), (2, 256, 1), (1, 320, 5), (2, 1024, 4)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("scale_kind", ["float", "tensor"])
def test_rms_hadamard_quant_matches_reference(m, n, groups, dtype, scale_kind):
    gw = rnd(m, n, dtype=dtype)
    group = n // groups
    ss = (torch.rand(m, groups, device=DEV) + 0.5) * group
    s = 0.02 if scale_kind == "float" else torch.tensor([0.02], device=DEV)
    with poisoned_outputs():
        y = KH.rms_hadamard_quant(gw, ss, group, 1e-5, s)
    assert_codes(y, FR.rms_hadamard_quant(gw, ss, group, 1e-5, s))


def test_rms_hadamard_quant_group_smaller_than_a_column_block_falls_back():
    m, n = 2, 256  # one column block of 256: a group of 64 cannot be scaled per tile column
    gw, ss = rnd(m, n), torch.rand(m, 4, device=DEV) * 64 + 1
    assert torch.equal(KH.rms_hadamard_quant(gw, ss, 64, 1e-5, 0.02), FR.rms_hadamard_quant(gw, ss, 64, 1e-5, 0.02))
    with pytest.raises(InvalidArgumentError):
        KH.rms_hadamard_quant(gw, torch.zeros(m, 3, device=DEV), 64, 1e-5, 0.02)


def test_qconv_update_zeroes_scratch():
    b, d = 3, 40
    zero = torch.full((b, 2), 5.0, device=DEV)
    state, w = q8(b, d, 4), q8(d, 4)
    ref_state = state.clone()
    x = q8(b, d)
    y = KQC.qcausal_conv1d_update(x, state, 0.01, w, 0.02, None, None, 0.03, zero=zero)
    assert (zero == 0).all()
    assert torch.equal(y, Q.qcausal_conv1d_update(x, ref_state, 0.01, w, 0.02, None, None, 0.03))


@pytest.mark.parametrize("g", [1, 2])
def test_fused_references_equal_unfused_int8_ops(g):
    """qssd_gate_step + rms_hadamard_quant == qssd_state_update + qgated_rms_norm + hadamard_quant, up to the
    fp16 rounding of the normalized values that the fused path skips: it moves the Hadamard sums by a few
    hundredths of a code, so a few percent of the codes land one off."""
    b, h, p, n = 3, 8, 24, 16
    d, group = h * p, h * p // g
    a = _ssd_args(b, h, p, g, n)
    st_a = q8(b, h, p, n)
    st_b = st_a.clone()
    ss = torch.zeros(b, g, device=DEV)
    gw = _call(FR.qssd_gate_step, st_a, a, group, ss)
    got = FR.rms_hadamard_quant(gw, ss, group, 1e-5, 0.01)
    y = Q.qssd_state_update(st_b, 0.02, a["x"], 0.005, a["dt"], 0.03, a["A"], a["B"], 0.004, a["C"], 0.006, a["D"],
                            a["dt_bias"])
    normed = Q.qgated_rms_norm(y.reshape(b, d), a["z"], 0.02, a["nw"], 1e-5, group)
    assert torch.equal(st_a, st_b)
    assert_codes(got, Q.hadamard_quant(normed, 0.01), max_frac=6e-2)


def _w8a8_mamba2(seed):
    from quamba.quantization import RECIPES, quantize_

    cfg = MambaConfig(arch="mamba2", d_model=96, expand=2, n_layer=2, vocab_size=67, d_state=16, headdim=16,
                      ngroups=2, chunk_size=8)
    m = init_random_weights(MambaLM(cfg), seed=seed, std=0.1).eval()
    quantize_(m, RECIPES["quamba"](), [torch.randint(0, 67, (1, 24))], show_progress=False)
    return m.to(DEV)


@pytest.mark.parametrize("batch", [1, 3])
def test_w8a8_fused_decode_equals_unfused(seed, batch, monkeypatch):
    """Decode logits of a W8A8 Mamba2 with the fused step (references, and the kernels through the
    interpreter on CPU) against the unfused op chain."""
    model = _w8a8_mamba2(seed)
    ids = torch.randint(0, 67, (batch, 4), device=DEV)

    def decode(name):
        cache = model.allocate_cache(batch)
        with ops.backend(name):
            return torch.cat([model(ids[:, t:t + 1], cache) for t in range(ids.shape[1])], dim=1)

    monkeypatch.setenv("QUAMBA_FUSED_DECODE", "0")
    want = decode("torch")
    monkeypatch.setenv("QUAMBA_FUSED_DECODE", "1")
    for name in ("torch", "triton"):
        got = decode(name)
        assert rel_err(got, want) < 2e-2, name


@pytest.mark.gpu
@pytest.mark.parametrize("h,p,g,n,batch", [(80, 64, 1, 128, 1), (80, 64, 1, 128, 3), (128, 64, 8, 128, 1)])
def test_w8a8_step_real_shapes_gpu(h, p, g, n, batch):
    d, group = h * p, h * p // g
    state = q8(batch, h, p, n)
    ref_state = state.clone()
    a = _ssd_args(batch, h, p, g, n)
    ss = torch.zeros(batch, g, device=DEV)
    ss_ref = ss.clone()
    gw = _call(K.qssd_gate_step, state, a, group, ss)
    gw_ref = _call(FR.qssd_gate_step, ref_state, a, group, ss_ref)
    assert rel_err(gw, gw_ref) < 2e-3
    torch.testing.assert_close(ss, ss_ref, rtol=1e-3, atol=1e-2)
    assert_codes(state, ref_state)
    assert_codes(KH.rms_hadamard_quant(gw_ref, ss_ref, group, 1e-5, 0.01),
                 FR.rms_hadamard_quant(gw_ref, ss_ref, group, 1e-5, 0.01))
    assert d % KH.tile_plan(d)[1] == 0
