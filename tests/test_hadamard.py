import math

import pytest
import torch

from quamba.errors import InvalidArgumentError
from quamba.quantization.hadamard import (
    hadamard_matrix,
    hadamard_matrix_normalized,
    hadamard_transform,
    supported_hadamard_size,
)


def _family(base: int, limit: int = 8192) -> list[int]:
    out, n = [], base
    while n <= limit:
        out.append(n)
        n *= 2
    return out


ALL_SIZES = sorted(set(_family(1) + _family(12) + _family(20) + _family(28) + [768, 1536, 2560, 5120]))
MODEL_SIZES = [768, 1536, 2560, 5120]


@pytest.mark.parametrize("n", ALL_SIZES)
def test_orthogonal_pm1(n):
    assert supported_hadamard_size(n)
    h = hadamard_matrix(n, dtype=torch.float32)
    assert h.shape == (n, n)
    assert bool((h.abs() == 1).all())
    if n <= 2048:
        rows = torch.arange(n)
    else:
        rows = torch.randperm(n)[:48]
    gram = h[rows] @ h.T
    expect = torch.zeros(len(rows), n)
    expect[torch.arange(len(rows)), rows] = n
    assert torch.equal(gram, expect)


def test_forty_family_and_repeat_calls_are_independent_copies():
    for n in (40, 80, 2560, 5120):
        assert supported_hadamard_size(n)
    h = hadamard_matrix(40)
    h.zero_()
    again = hadamard_matrix(40)
    assert bool((again.abs() == 1).all())
    assert torch.equal(again @ again.T, 40 * torch.eye(40, dtype=torch.float64))


def test_normalized_matrix_is_orthogonal():
    for n in (12, 28, 768):
        q = hadamard_matrix_normalized(n)
        assert q.dtype == torch.float64
        assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


FAST_SIZES = [1, 2, 8, 12, 20, 24, 28, 40, 56, 64, 96, 160, 224, 1024] + MODEL_SIZES


@pytest.mark.parametrize("n", FAST_SIZES)
def test_fast_transform_matches_matrix(n):
    x = torch.randn(3, 5, n, dtype=torch.float64)
    h = hadamard_matrix(n)
    assert _rel(hadamard_transform(x, normalize=False), x @ h.T) < 1e-10
    assert _rel(hadamard_transform(x), x @ h.T / math.sqrt(n)) < 1e-10
    assert _rel(hadamard_transform(x), x @ hadamard_matrix_normalized(n).T) < 1e-10


@pytest.mark.parametrize("n", [12, 20, 28, 64, 768, 2560])
def test_orthogonality_preserves_norm_and_inverts(n):
    x = torch.randn(7, n, dtype=torch.float64)
    y = hadamard_transform(x)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)
    back = y @ hadamard_matrix_normalized(n)
    assert _rel(back, x) < 1e-12


@pytest.mark.parametrize("n", [2, 16, 512])
def test_power_of_two_is_an_involution(n):
    x = torch.randn(2, 3, n, dtype=torch.float64)
    assert _rel(hadamard_transform(hadamard_transform(x)), x) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_dtypes(dtype):
    n = 1536
    x = torch.randn(4, 3, n).to(dtype)
    y = hadamard_transform(x)
    assert y.dtype == dtype and y.shape == x.shape
    ref = x.double() @ hadamard_matrix_normalized(n).T
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert _rel(y.double(), ref) < tol


def test_no_leading_dims_and_input_untouched():
    x = torch.randn(20)
    x0 = x.clone()
    y = hadamard_transform(x)
    assert y.shape == (20,)
    assert torch.equal(x, x0)
    assert _rel(y.double(), x.double() @ hadamard_matrix_normalized(20).T) < 1e-6


@pytest.mark.parametrize("n", [0, 3, 6, 10, 36, 44, 60, 100, 384 * 3, -4])
def test_unsupported_size_raises(n):
    assert not supported_hadamard_size(n)
    with pytest.raises(InvalidArgumentError, match="12"):
        hadamard_matrix(n)
    if n > 0:
        with pytest.raises(InvalidArgumentError, match="2\\^k"):
            hadamard_transform(torch.randn(2, n))


def test_integer_input_raises():
    with pytest.raises(InvalidArgumentError):
        hadamard_transform(torch.ones(2, 8, dtype=torch.int32))
