"""Triton qembedding (int8 table, per-row scales) against the reference gather."""
from __future__ import annotations

import pytest
import torch

from quamba.errors import InvalidArgumentError
from quamba.kernels import qembedding as K
from quamba.ops import qreference as Q

from kernel_checks import DEV


@pytest.fixture
def poisoned(monkeypatch):
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else 77)

    monkeypatch.setattr(K.torch, "empty", empty)


def _table(v, d):
    return torch.randint(-128, 128, (v, d), dtype=torch.int8, device=DEV), torch.rand(v, device=DEV) * 0.05


def _assert_same(y, ref):
    assert y.dtype == ref.dtype and y.shape == ref.shape and not torch.isnan(y).any()
    if y.dtype == torch.bfloat16 and DEV == "cpu":  # the interpreter truncates fp32 -> bf16 (GPU rounds)
        torch.testing.assert_close(y.float(), ref.float(), rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(y, ref)


@pytest.mark.parametrize("ids_shape", [(1,), (9,), (3, 5)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_matches_reference(ids_shape, dtype, poisoned):
    v, d = 37, 1100  # d spans two column blocks, the second ragged
    w, s = _table(v, d)
    ids = torch.randint(-v, v, ids_shape, device=DEV)
    _assert_same(K.qembedding(ids, w, s, dtype), Q.qembedding(ids, w, s, dtype))


def test_noncontiguous_ids_and_int32(poisoned):
    w, s = _table(50, 24)
    ids = torch.randint(0, 50, (4, 10), device=DEV)[:, ::3]
    _assert_same(K.qembedding(ids, w, s), Q.qembedding(ids, w, s))
    _assert_same(K.qembedding(ids.int(), w, s), Q.qembedding(ids, w, s))


def test_out_of_range_ids_give_nan_rows():
    w, s = _table(10, 16)
    y = K.qembedding(torch.tensor([3, 10, -11], device=DEV), w, s)
    assert not torch.isnan(y[0]).any() and torch.isnan(y[1:]).all()


def test_bad_inputs_raise():
    w, s = _table(10, 16)
    ids = torch.tensor([1, 2], device=DEV)
    with pytest.raises(InvalidArgumentError):
        K.qembedding(ids.float(), w, s)
    with pytest.raises(InvalidArgumentError):
        K.qembedding(ids, w.float(), s)
    with pytest.raises(InvalidArgumentError):
        K.qembedding(ids, w, s[:5])


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [(1,), (1, 1024), (4, 7)])
def test_real_shapes_gpu(tokens):
    w, s = _table(50280, 2560)
    ids = torch.randint(0, 50280, tokens, device=DEV)
    for dtype in (torch.float16, torch.bfloat16):
        _assert_same(K.qembedding(ids, w, s, dtype), Q.qembedding(ids, w, s, dtype))
