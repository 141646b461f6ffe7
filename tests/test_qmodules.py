"""Quantized modules: int8 storage, agreement with the dequantized float math, prefill/decode, fake quant."""
from __future__ import annotations

import pytest
import torch

from quamba import ops
from quamba.config import MambaConfig
from quamba.models import MambaLM, init_random_weights
from quamba.models.mixers import RMSNorm
from quamba.qmodules import QEmbedding, QMamba1Mixer, QMamba2Mixer, QRMSNorm, W8A8Linear
from quamba.quantization import get_recipe, quantize_
from quamba.quantization.hadamard import hadamard_transform

torch.set_grad_enabled(False)


def _linear(n: int, k: int, bias: bool = False) -> torch.nn.Linear:
    lin = torch.nn.Linear(k, n, bias=bias)
    lin.weight.normal_(0, 0.05)
    lin.weight[0, k // 3] = 0.9  # an outlier so the per-tensor scale matters
    return lin


def test_w8a8_linear_stores_int8_and_matches_dequantized_math(seed):
    lin = _linear(37, 53, bias=True)
    q = W8A8Linear.from_float(lin, input_scale=0.02)
    assert q.weight.dtype == torch.int8 and q.weight.shape == (37, 53)
    assert q.weight_scale.dtype == torch.float32 and q.weight_scale.dim() == 0
    assert float(q.weight_scale) == pytest.approx(0.9 / 127, rel=1e-6)
    x_q = torch.randint(-128, 128, (3, 5, 53), dtype=torch.int8)
    y = q(x_q, 0.02).float()
    ref = (x_q.double() * 0.02) @ (q.weight.double() * float(q.weight_scale)).t() + lin.bias.double()
    torch.testing.assert_close(y.double(), ref, rtol=2e-3, atol=2e-3)  # fp16 output


def test_w8a8_linear_float_input_quantizes_with_its_static_scale(seed):
    lin = _linear(29, 40)
    q = W8A8Linear.from_float(lin, input_scale=0.01, out_dtype=torch.float32)
    x = torch.randn(2, 7, 40)
    y = q(x)
    ref = ops.dequantize(ops.quantize(x, 0.01), 0.01) @ (q.weight.float() * float(q.weight_scale)).t()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_w8a8_linear_int8_output_per_segment(seed):
    lin = _linear(24, 33)
    segments = [10, 6, 8]
    lin.weight[10:16] *= 20
    out_scale = torch.cat([torch.full((10,), 0.01), torch.full((6,), 0.2), torch.full((8,), 0.02)])
    q = W8A8Linear.from_float(lin, input_scale=0.03, output_scale=out_scale, segments=segments)
    ws = q.weight_scale
    assert ws.shape == (24,) and q.output == "channel"
    for part, sc in zip(lin.weight.split(segments), ws.split(segments)):
        torch.testing.assert_close(sc, torch.full_like(sc, float(part.abs().max()) / 127))
    x_q = torch.randint(-128, 128, (4, 33), dtype=torch.int8)
    y = q(x_q, 0.03)
    assert y.dtype == torch.int8
    exact = (x_q.double() @ q.weight.double().t()) * 0.03 * ws.double() / out_scale.double()
    ref = exact.round().clamp(-128, 127)
    assert (y.double() - ref).abs().max() <= 1
    near_tie = ((exact - exact.floor()) - 0.5).abs() < 1e-4  # fp32 may round these either way
    assert torch.equal(y.double()[~near_tie], ref[~near_tie])


def test_w8a8_linear_dynamic_per_token(seed):
    lin = _linear(19, 24)
    q = W8A8Linear.from_float(lin, act="dynamic", out_dtype=torch.float32)
    assert not hasattr(q, "input_scale")
    x = torch.randn(3, 24) * torch.tensor([[1.0], [100.0], [0.01]])
    y = q(x)
    s = x.abs().amax(-1, keepdim=True) / 127
    ref = (torch.round(x / s).clamp(-128, 127) * s) @ (q.weight.float() * float(q.weight_scale)).t()
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-6)


def test_w8a8_linear_hadamard_input(seed):
    lin = _linear(16, 48)
    x = torch.randn(2, 3, 48)
    x[..., 5] *= 30
    scale = float(hadamard_transform(x).abs().max()) / 127
    q = W8A8Linear.from_float(lin, input_scale=scale, hadamard_input=True, out_dtype=torch.float32)
    w = q.weight.float() * float(q.weight_scale)
    ref = ops.dequantize(ops.quantize(hadamard_transform(x), scale), scale) @ w.t()
    torch.testing.assert_close(q(x), ref, rtol=1e-4, atol=1e-5)


def test_w8a8_linear_fake_matches_real(seed):
    lin = _linear(21, 30, bias=True)
    kw = dict(input_scale=0.015, out_dtype=torch.float32)
    real, fake = W8A8Linear.from_float(lin, **kw), W8A8Linear.from_float(lin, fake=True, **kw)
    assert fake.weight.dtype == torch.int8
    x = torch.randn(5, 30)
    torch.testing.assert_close(fake(x), real(x), rtol=1e-5, atol=1e-5)


def test_qrmsnorm_int8_output_and_residual(seed):
    norm = RMSNorm(45, 1e-5)
    norm.weight.data = torch.rand(45) + 0.5
    x, res = torch.randn(2, 6, 45), torch.randn(2, 6, 45)
    ref_y, _ = norm(x, res)
    s = float(ref_y.abs().max()) / 127
    q = QRMSNorm.from_float(norm, s)
    y, r = q(x, res)
    assert y.dtype == torch.int8 and r.dtype == torch.float32
    torch.testing.assert_close(r, res + x)
    assert (ops.dequantize(y, s) - ref_y).abs().max() <= s / 2 + 1e-6
    fake = QRMSNorm.from_float(norm, s, fake=True)
    torch.testing.assert_close(fake(x, res)[0], ops.dequantize(y, s))


def test_qembedding_per_row(seed):
    emb = torch.nn.Embedding(31, 20)
    emb.weight.data[3] *= 50
    q = QEmbedding.from_float(emb, out_dtype=torch.float32)
    assert q.weight.dtype == torch.int8 and q.row_scale.shape == (31,)
    ids = torch.randint(0, 31, (3, 9))
    err = (q(ids) - emb(ids)).abs()
    assert (err <= q.row_scale[ids].unsqueeze(-1) / 2 + 1e-6).all()


def _small(arch: str, **kw) -> MambaLM:
    if arch == "mamba1":
        cfg = MambaConfig(arch="mamba1", d_model=40, n_layer=2, vocab_size=53, d_state=8, **kw)
    else:
        cfg = MambaConfig(arch="mamba2", d_model=48, n_layer=2, vocab_size=53, d_state=12, headdim=16, ngroups=2,
                          chunk_size=8, **kw)
    return init_random_weights(MambaLM(cfg), seed=int(torch.randint(0, 2**31, ())))


def _calib(vocab: int, n: int = 3, L: int = 24) -> list[torch.Tensor]:
    return [torch.randint(0, vocab, (1, L)) for _ in range(n)]


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_quantized_mixers_have_int8_storage_and_caches(arch, seed):
    m = _small(arch)
    quantize_(m, get_recipe("naive"), _calib(53), show_progress=False)
    mixer = m.backbone.layers[0].mixer
    assert isinstance(mixer, QMamba1Mixer if arch == "mamba1" else QMamba2Mixer)
    for name in ("conv_weight", "A_log", "D"):
        assert getattr(mixer, name).dtype == torch.int8
    for lin in (mixer.in_proj, mixer.out_proj):
        assert lin.weight.dtype == torch.int8
    assert not [n for n, p in mixer.named_parameters()]
    cache = m.allocate_cache(3)
    assert all(s.conv.dtype == torch.int8 and s.ssm.dtype == torch.int8 for s in cache.layers)


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
@pytest.mark.parametrize("fake", [False, True])
def test_prefill_then_decode_matches_full_prefill(arch, fake, seed):
    m = _small(arch, conv_bias=True)
    quantize_(m, get_recipe("quamba", fake_quant=fake), _calib(53), show_progress=False)
    ids = torch.randint(0, 53, (3, 21))
    full = m(ids)
    cache = m.allocate_cache(3)
    steps = [m(ids[:, :13], cache)]
    for t in range(13, 21):
        steps.append(m(ids[:, t:t + 1], cache))
    inc = torch.cat(steps, dim=1)
    torch.testing.assert_close(inc[:, :13], full[:, :13], rtol=0, atol=0)
    rel = (inc[:, 13:] - full[:, 13:]).norm() / full[:, 13:].norm()
    assert rel < 0.05, rel  # only the int8 rounding of the cached conv/SSM states differs
    assert cache.seqlen_offset == 21


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_fake_quant_matches_int8_path(arch, seed):
    """Same storage, two compute paths: int8 ops vs quantize-dequantize around the float ops."""
    real = quantize_(_small(arch), get_recipe("quamba"), _calib(53), show_progress=False)
    ids = torch.randint(0, 53, (2, 17))
    for mod in real.modules():
        if hasattr(mod, "fake"):
            mod.fake = True
    y_fake = real(ids)
    for mod in real.modules():
        if hasattr(mod, "fake"):
            mod.fake = False
    y_real = real(ids)
    rel = (y_fake - y_real).norm() / y_real.norm()
    assert rel < 0.02, rel
