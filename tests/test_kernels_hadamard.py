"""Triton hadamard_quant (fused rotation + int8) against the reference transform + quantize."""
from __future__ import annotations

import math

import pytest
import torch

from quamba.errors import InvalidArgumentError
from quamba.kernels import hadamard as K
from quamba.ops import qreference as Q
from quamba.quantization.hadamard import hadamard_matrix, hadamard_transform

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def poisoned(monkeypatch):
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else 77)

    monkeypatch.setattr(K.torch, "empty", empty)


def _check_codes(y, ref, max_frac=1e-3):
    """Equal int8 codes except rare off-by-one ones where fp32 summation order decides a rounding."""
    assert y.dtype == torch.int8 and y.shape == ref.shape
    d = (y.int() - ref.int()).abs()
    assert d.max().item() <= 1
    assert (d > 0).sum().item() <= max(2, max_frac * d.numel())


@pytest.mark.parametrize("n", [64, 96, 160, 224, 320, 768, 1024])
def test_factors_rebuild_the_hadamard_matrix(n):
    r, c, r_pad, c_pad, g = K.tile_plan(n)
    assert r * c == n and r <= r_pad and c <= c_pad and g * r_pad >= 16
    hc, hr = K._factors(n, torch.device("cpu"))
    h_c = hc[:c, :c].t().contiguous().double()
    h_r = hr[:r, :r].contiguous().double()
    assert torch.equal(torch.kron(h_r, h_c), hadamard_matrix(n))


@pytest.mark.parametrize("n", [64, 96, 160, 320, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(n, dtype, poisoned):
    x = (torch.randn(3, 5, n, device=DEV) * 2).to(dtype)
    x[..., n // 3] *= 30  # an outlier channel, as the rotation is meant for
    amax = hadamard_transform(x.float()).abs().max().item()
    for scale in (amax / 100, torch.tensor(amax / 127, device=DEV), torch.rand(n, device=DEV) * amax / 60 + 1e-3):
        _check_codes(K.hadamard_quant(x, scale), Q.hadamard_quant(x, scale))


@pytest.mark.parametrize("shape", [(1, 96), (160,), (2, 1, 7, 64)])
def test_batch_shapes_and_noncontiguous(shape, poisoned):
    n = shape[-1]
    base = torch.randn(*shape[:-1], 2 * n, device=DEV)
    x = base[..., ::2]
    s = hadamard_transform(x.float()).abs().max().item() / 127
    y = K.hadamard_quant(x, s)
    assert y.shape == x.shape
    _check_codes(y, Q.hadamard_quant(x, s))


def test_transform_is_normalized():
    n = 768
    x = torch.randn(4, n, device=DEV)
    s = 1.0 / 24
    y = K.hadamard_quant(x, s).float() * s
    ratio = y.norm(dim=-1) / x.norm(dim=-1)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.02)
    _check_codes(K.hadamard_quant(x, s), Q.hadamard_quant(x, s))


def test_bad_inputs_raise():
    with pytest.raises(InvalidArgumentError):
        K.hadamard_quant(torch.randn(2, 36, device=DEV), 0.1)
    with pytest.raises(InvalidArgumentError):
        K.hadamard_quant(torch.randint(0, 3, (2, 64), device=DEV), 0.1)
    with pytest.raises(InvalidArgumentError):
        K.hadamard_quant(torch.randn(2, 64, device=DEV), torch.ones(3, device=DEV))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [768, 1536, 2560, 4096, 5120, 8192])
@pytest.mark.parametrize("m", [1, 1024])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_real_shapes_gpu(n, m, dtype):
    x = torch.randn(m, n, device=DEV).to(dtype)
    x[:, 7] *= 50
    s = hadamard_transform(x.float()).abs().max().item() / 127
    _check_codes(K.hadamard_quant(x, s), Q.hadamard_quant(x, s))
    per_chan = torch.rand(n, device=DEV) * s + s / 2
    _check_codes(K.hadamard_quant(x, per_chan), Q.hadamard_quant(x, per_chan))
    assert math.isfinite(s)
