"""The cached-launch path: its specialization key, and (GPU) launches that must not reuse a binary
compiled for other argument properties."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from quamba.kernels import launch as L


def test_spec_key_separates_what_triton_specializes_on():
    k = L.spec_key
    assert k(1) != k(2) and k(16) != k(17) and k(16) == k(32) and k(48) != k(50)
    assert k(2 ** 31 - 16) != k(2 ** 31) and k(2 ** 63) != k(2 ** 62)
    assert k(1) != k(32) and k(0) != k(17) and k(-16) != k(16)
    assert k(3) == k(19) and k(0) == k(32)  # Triton specializes them alike
    assert k(True) != k(1) and k(None) != k(0) and k(1.0) == k(2.5)
    assert k(7, constexpr=True) != k(9, constexpr=True)
    buf = torch.zeros(64, dtype=torch.float32)
    assert k(buf) != k(buf[1:]) and k(buf) == k(buf[4:]) and k(buf) != k(buf.half())
    assert k(torch.nn.Parameter(buf))[1] == k(buf)[1]  # same specialization (the type pattern differs)


def test_launch_hooks_are_detected(monkeypatch):
    from triton import knobs

    assert not L.hooks_set()
    knobs.runtime.launch_enter_hook.add(print)
    try:
        assert L.hooks_set()
    finally:
        knobs.runtime.launch_enter_hook.remove(print)


def test_host_helpers():
    assert [L.cdiv(a, 4) for a in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert [L.next_pow2(n) for n in (0, 1, 2, 3, 16, 17)] == [1, 1, 2, 4, 16, 32]


@triton.jit
def _axpy(x_ptr, y_ptr, a, n, stride, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(y_ptr + offs * stride, tl.load(x_ptr + offs * stride, mask=ok) * a, mask=ok)


@pytest.mark.gpu
def test_cached_launches_follow_argument_properties():
    """Alternate strides 1 / 3 / 16, aligned and misaligned pointers and sizes: each launch through the
    cache must equal the reference (a wrongly reused binary would mis-stride or mis-vectorize)."""
    base = torch.randn(4099, device="cuda")
    sizes = []
    for _ in range(2):
        for stride, off, n in [(1, 0, 1024), (3, 1, 700), (16, 0, 200), (1, 1, 1023), (1, 4, 2048), (1, 0, 1)]:
            x = base[off:]
            y = torch.zeros_like(x)
            L.launch(_axpy, (L.cdiv(n, 128),), x, y, 2.0, n, stride, BLOCK=128)
            idx = torch.arange(n, device="cuda") * stride
            assert torch.equal(y[idx], 2.0 * x[idx])
            mask = torch.ones_like(y, dtype=torch.bool)
            mask[idx] = False
            assert not y[mask].any()
        sizes.append(len(L._compiled))
    assert L._enabled and sizes[0] > 0 and sizes[1] == sizes[0]  # the second pass launched from the cache only
    with pytest.raises(ValueError, match="cpu tensor"):  # pointers go as ints: a host tensor must still be caught
        L.launch(_axpy, (8,), base.cpu(), torch.zeros_like(base), 2.0, 1024, 1, BLOCK=128)


def test_launch_pattern_orders_arguments_and_keys_constexprs_by_value():
    """The generated function of a launch pattern returns every kernel argument in signature order
    (keywords after the positional ones) and a key that follows the specialization of each."""
    from triton.runtime.jit import JITFunction

    kernel = _axpy if isinstance(_axpy, JITFunction) else JITFunction(_axpy.fn)  # interpreter: wrap the source
    x = torch.zeros(64)
    args = (x, x[1:], 2.0, 1000, 3)
    go = L._make_slot(kernel, len(args), tuple(map(type, args)), ("BLOCK", "num_warps"))
    key, full = go(args, {"BLOCK": 128, "num_warps": 4})
    assert full == (x.data_ptr(), x[1:].data_ptr(), 2.0, 1000, 3, 128)  # tensors go to the launcher as pointers
    assert key == (torch.float32, 0, False, torch.float32, 4, False, L.spec_key(1000)[1][0], L.spec_key(3)[1][0],
                   128, 4)
    key2, _ = go((x, x[4:], 5.0, 1008, 19), {"BLOCK": 128, "num_warps": 4})
    assert key2 != key and key2[4] == 0 and key2[6] != key[6] and key2[7] == key[7]
    assert go((x, x[1:], 2.0, 1000, 3), {"BLOCK": 64, "num_warps": 4})[0] != key
    assert L._make_slot(kernel, 4, tuple(map(type, args[:4])), ("stride", "BLOCK")) is None  # not a constexpr
    assert L._make_slot(kernel, 5, tuple(map(type, args)), ()) is None  # a constexpr missing
