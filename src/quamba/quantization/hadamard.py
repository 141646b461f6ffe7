"""Hadamard matrices and the fast Hadamard transform used to rotate outliers away before int8.

Supported sizes are ``n = m * 2^k`` with base ``m`` in 1, 12, 20, 28 (so 40·2^k = 20·2^(k+1) too).
``H_n = kron(H_m, H_{2^k})``: the 2^k factor is Sylvester's construction, the 12/20 blocks are
Paley construction I (q = 11, 19) and the 28 block is Paley construction II (q = 13). The fast
transform applies the same ``H_n`` as ``hadamard_matrix`` (``x @ H_n.T``), so a rotation applied
online and its inverse folded into a weight offline cancel exactly.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..errors import InvalidArgumentError

Tensor = torch.Tensor

_BASES = (1, 12, 20, 28)
_FORMS = "2^k, 12·2^k, 20·2^k (incl. 40·2^k) or 28·2^k"


def _legendre(a: int, q: int) -> int:
    a %= q
    if a == 0:
        return 0
    return 1 if pow(a, (q - 1) // 2, q) == 1 else -1


def _jacobsthal(q: int) -> Tensor:
    idx = torch.arange(q)
    chi = torch.tensor([_legendre(a, q) for a in range(q)], dtype=torch.int64)
    return chi[(idx.view(1, -1) - idx.view(-1, 1)) % q]


def _paley1(q: int) -> Tensor:
    """Order q+1 for a prime q ≡ 3 (mod 4): H = I + [[0, 1ᵀ], [-1, Q]], Q antisymmetric."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return s + torch.eye(q + 1, dtype=torch.int64)


def _paley2(q: int) -> Tensor:
    """Order 2(q+1) for a prime q ≡ 1 (mod 4): blocks of [[0, 1ᵀ], [1, Q]] replaced by 2x2 patterns."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    s[0, 1:] = 1
    s[1:, 0] = 1
    s[1:, 1:] = _jacobsthal(q)
    plus = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    zero = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int64)
    blocks = s.view(q + 1, q + 1, 1, 1) * plus + (s == 0).view(q + 1, q + 1, 1, 1) * zero
    return blocks.permute(0, 2, 1, 3).reshape(2 * (q + 1), 2 * (q + 1))


def _split(n: int) -> tuple[int, int] | None:
    """``(m, p)`` with ``n = m * p``, ``m`` a supported base and ``p`` a power of two, else None."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None
    for m in _BASES:
        if n % m == 0:
            p = n // m
            if p & (p - 1) == 0:
                return m, p
    return None


def supported_hadamard_size(n: int) -> bool:
    """Whether a Hadamard matrix of order ``n`` is available (``n = m·2^k``, ``m`` in 1, 12, 20, 28)."""
    return _split(n) is not None


def _check(n: int) -> tuple[int, int]:
    mp = _split(n)
    if mp is None:
        raise InvalidArgumentError(f"no Hadamard matrix of size {n!r}: supported sizes are {_FORMS}")
    return mp


@lru_cache(maxsize=None)
def _base(m: int) -> Tensor:
    if m == 1:
        return torch.ones(1, 1, dtype=torch.int8)
    h = {12: lambda: _paley1(11), 20: lambda: _paley1(19), 28: lambda: _paley2(13)}[m]()
    return h.to(torch.int8)


def _sylvester(p: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.int8)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@lru_cache(maxsize=4)
def _matrix_int8(n: int) -> Tensor:
    m, p = _check(n)
    h = torch.kron(_base(m), _sylvester(p)) if m > 1 else _sylvester(p)
    h.requires_grad_(False)
    return h


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The ``n x n`` ±1 Hadamard matrix ``H_n`` (``H Hᵀ = n I``); a fresh tensor of ``dtype``."""
    return _matrix_int8(n).to(dtype, copy=True)


def hadamard_matrix_normalized(n: int) -> Tensor:
    """``H_n / sqrt(n)`` in float64 (orthogonal), for folding the rotation into weights offline."""
    return hadamard_matrix(n, torch.float64) / math.sqrt(n)


@lru_cache(maxsize=32)
def _base_on(m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _base(m).to(device=device, dtype=dtype)


def _walsh(x: Tensor) -> Tensor:
    """Unnormalized Sylvester transform over the last dim (a power of two) by radix-2 butterflies."""
    p = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < p:
        v = x.reshape(*lead, p // (2 * h), 2, h)
        a, b = v[..., 0, :], v[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, p)
        h *= 2
    return x


def hadamard_transform(x: Tensor, normalize: bool = True) -> Tensor:
    """``x @ H_nᵀ`` over the last dim (divided by ``sqrt(n)`` when ``normalize``, making it orthogonal).

    Costs ``O(n log n)`` per row: butterflies for the 2^k factor and an ``m x m`` matmul for the base.
    fp16/bf16 inputs are computed in fp32 and returned in their own dtype.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InvalidArgumentError("hadamard_transform needs a floating-point tensor")
    if x.dim() == 0:
        raise InvalidArgumentError("hadamard_transform needs at least one dimension")
    n = x.shape[-1]
    m, p = _check(n)
    compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    lead = x.shape[:-1]
    y = _walsh(x.to(compute).reshape(*lead, m, p))
    if m > 1:
        y = torch.matmul(_base_on(m, compute, y.device), y)
    y = y.reshape(*lead, n)
    if normalize:
        y = y * (1.0 / math.sqrt(n))
    return y.to(x.dtype)
