"""Triton hadamard_quant (fused rotation + int8) against the reference transform + quantize."""
from __future__ import annotations

import math

import pytest
import torch

from quamba.errors import InvalidArgumentError
from quamba.kernels import hadamard as K
from quamba.ops import qreference as Q
from quamba.quantization.hadamard import hadamard_matrix, hadamard_transform

from kernel_checks import DEV


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
    if y.numel() == 0:
        return
    d = (y.int() - ref.int()).abs()
    assert d.max().item() <= 1
    assert (d > 0).sum().item() <= max(2, max_frac * d.numel())


def _scales(x):
    n = x.shape[-1]
    amax = hadamard_transform(x.float()).abs().max().item()
    return (amax / 100, torch.tensor(amax / 127, device=x.device),
            torch.rand(n, device=x.device) * amax / 60 + 1e-3)


def _launch(x, scale, **kw):
    n = x.shape[-1]
    out = torch.full(x.shape, 77, dtype=torch.int8, device=x.device)
    K.launch_hadamard(x.reshape(-1, n), out.view(-1, n), scale, **kw)
    return out


@pytest.mark.parametrize("n", [1, 8, 64, 96, 160, 224, 320, 768, 1024, 1536, 2560, 5120])
def test_factors_rebuild_the_hadamard_matrix(n):
    r, c, rp, cp = K.tile_plan(n)
    assert r * c == n and r <= rp and c <= cp and (r == 1 or rp >= 16) and cp >= 16
    assert c & (c - 1) == 0 and c <= 256
    for tm in {rp, max(rp, 64)}:
        hc, hr = K._tables(n, tm, torch.float32, torch.device("cpu"))
        h_c = hc[:c, :c].t().contiguous().to(torch.int8)
        k = tm // r
        blocks = [hr[i * r:(i + 1) * r, j * r:(j + 1) * r] for i in range(k) for j in range(k)]
        for i in range(k):
            assert torch.equal(torch.kron(blocks[i * k + i].to(torch.int8), h_c), hadamard_matrix(n, torch.int8))
        assert sum(blk.abs().sum() for i, blk in enumerate(blocks) if i % (k + 1)) == 0
        assert hc[c:].abs().sum() == 0 and hc[:, c:].abs().sum() == 0 and hr[k * r:].abs().sum() == 0


@pytest.mark.parametrize("c,bk", [(64, 16), (128, 64), (256, 64), (32, 16)])
def test_sylvester_blocks_are_kronecker(c, bk):
    """The row-tile launch relies on ``H_C = kron(H_{C/BK}, H_BK)``, with ``H_BK`` the table's corner."""
    g = c // bk
    assert torch.equal(hadamard_matrix(c), torch.kron(hadamard_matrix(g), hadamard_matrix(bk)))
    hc, _ = K._tables(c, 16, torch.float32, torch.device("cpu"))
    assert torch.equal(hc[:bk, :bk].double(), hadamard_matrix(bk).t())


@pytest.mark.parametrize("n", [64, 96, 160, 320, 1024, 1536])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(n, dtype, poisoned):
    x = (torch.randn(3, 5, n, device=DEV) * 2).to(dtype)
    x[..., n // 3] *= 30  # an outlier channel, as the rotation is meant for
    for scale in _scales(x):
        _check_codes(K.hadamard_quant(x, scale), Q.hadamard_quant(x, scale))


@pytest.mark.parametrize("n,bk", [(1024, 16), (768, 32), (3072, None), (224, None), (64, 16)])
@pytest.mark.parametrize("col_split", [False, True])
def test_both_launch_shapes(n, bk, col_split):
    """Row tiles (2- and 4-way butterflies over ``H_BK`` chunks) and column blocks, rows not a multiple
    of the tile."""
    x = torch.randn(37 if n == 64 else 3, n, device=DEV).to(torch.float16)
    scale = _scales(x)[2]
    _check_codes(_launch(x, scale, col_split=col_split, bk=bk), Q.hadamard_quant(x, scale))


@pytest.mark.parametrize("n,tm,programs", [(160, 64, None), (160, 64, 2), (96, 64, 1), (64, 64, None),
                                            (1024, 32, 2), (320, 32, 3)])
def test_packed_tiles_and_persistent_grid(n, tm, programs):
    """Tiles packing ``tm // R`` rows (block-diagonal row mixing), grids looping over several tiles."""
    x = torch.randn(7 if n != 64 else 37, n, device=DEV).to(torch.bfloat16)
    scale = _scales(x)[0]
    _check_codes(_launch(x, scale, col_split=False, tm=tm, programs=programs), Q.hadamard_quant(x, scale))


@pytest.mark.parametrize("bc", [16, 32])
def test_column_blocks(bc):
    x = torch.randn(2, 768, device=DEV, dtype=torch.bfloat16)
    s = _scales(x)[1]
    _check_codes(_launch(x, s, col_split=True, bc=bc), Q.hadamard_quant(x, s))


@pytest.mark.parametrize("shape", [(1, 96), (160,), (2, 1, 7, 64), (0, 320)])
def test_batch_shapes_and_noncontiguous(shape, poisoned):
    n = shape[-1]
    base = torch.randn(*shape[:-1], 2 * n, device=DEV)
    x = base[..., ::2]
    s = 0.05 if x.numel() == 0 else hadamard_transform(x.float()).abs().max().item() / 127
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


def test_saturates_and_rounds_half_to_even():
    n = 64
    x = torch.zeros(2, n, device=DEV)
    x[0, 0] = 8.0 * 2.5  # every output is 2.5 (-> 2) after / sqrt(64) with scale 1
    x[1, 0] = 8.0 * 1000
    y = K.hadamard_quant(x, 1.0)
    assert torch.equal(y[0], torch.full((n,), 2, dtype=torch.int8, device=DEV))
    assert torch.equal(y[1], torch.full((n,), 127, dtype=torch.int8, device=DEV))
    assert torch.equal(K.hadamard_quant(-x, 1.0)[1], torch.full((n,), -128, dtype=torch.int8, device=DEV))


def test_bad_inputs_raise():
    with pytest.raises(InvalidArgumentError):
        K.hadamard_quant(torch.randn(2, 36, device=DEV), 0.1)
    with pytest.raises(InvalidArgumentError):
        K.hadamard_quant(torch.randint(0, 3, (2, 64), device=DEV), 0.1)
    with pytest.raises(InvalidArgumentError):
        K.hadamard_quant(torch.randn(2, 64, device=DEV), torch.ones(3, device=DEV))
    with pytest.raises(InvalidArgumentError):
        K.tile_plan(12 * 2048)
    with pytest.raises(InvalidArgumentError):
        _launch(torch.randn(2, 320, device=DEV), 0.1, tm=16)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [768, 1536, 2560, 4096, 5120, 8192])
@pytest.mark.parametrize("m", [1, 1024])
def test_real_shapes_gpu(n, m):
    x = torch.randn(m, n, device=DEV).to(torch.float16)
    x[:, 7] *= 50
    s = hadamard_transform(x.float()).abs().max().item() / 127
    _check_codes(K.hadamard_quant(x, torch.tensor(s, device=DEV)), Q.hadamard_quant(x, s))
    per_chan = torch.rand(n, device=DEV) * s + s / 2
    _check_codes(K.hadamard_quant(x, per_chan), Q.hadamard_quant(x, per_chan))
    assert math.isfinite(s)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 5, 1024])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_input_dtypes_gpu(m, dtype):
    x = torch.randn(3, m, 5120, device=DEV).to(dtype)
    s = hadamard_transform(x.float()).abs().max().item() / 127
    _check_codes(K.hadamard_quant(x, s), Q.hadamard_quant(x, s))


@pytest.mark.gpu
@pytest.mark.parametrize("kw", [{"col_split": True}, {"col_split": False, "tm": 64, "bk": 128, "warps": 8},
                                {"col_split": False, "tm": 32, "bk": 128, "warps": 8},
                                {"col_split": False, "stages": 2, "programs": 100}])
def test_launch_variants_gpu(kw):
    """The launch shapes the benchmark sweep offers, at mamba-2.8b's d_inner."""
    x = torch.randn(300, 5120, device=DEV, dtype=torch.float16)
    s = torch.tensor(hadamard_transform(x.float()).abs().max().item() / 127, device=DEV)
    _check_codes(_launch(x, s, **kw), Q.hadamard_quant(x, s))


@pytest.mark.gpu
def test_cuda_graph_capture():
    n = 5120
    x = torch.randn(1, n, device=DEV, dtype=torch.float16)
    s = torch.tensor(0.05, device=DEV)
    K.hadamard_quant(x, s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = K.hadamard_quant(x, s)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    _check_codes(y, Q.hadamard_quant(x, s))
