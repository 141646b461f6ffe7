"""Triton Mamba2 SSD chunked scan (fp and int8 inputs) against the plain-torch references.

On CPU the kernels run in the Triton interpreter at small odd shapes (the interpreter cannot do
bf16 dots, so bf16 is covered on the GPU only); the GPU tests use the mamba2-2.7b and mamba2-8b shapes.
"""
from __future__ import annotations

import pytest
import torch

from quamba.errors import InvalidArgumentError
from quamba.ops import qreference as Q
from quamba.ops import reference as R

from kernel_checks import assert_int8_close

K = pytest.importorskip("quamba.kernels.ssd")

INF = float("inf")


def _inputs(bt, L, h, p, g, n, dtype, device="cpu", packed=False):
    if packed:  # x, B, C as views of one conv output and dt a slice of in_proj's, as in Mamba2Mixer
        xbc = torch.randn(bt, L, h * p + 2 * g * n, device=device).to(dtype)
        x = xbc[..., :h * p].reshape(bt, L, h, p)
        B = xbc[..., h * p:h * p + g * n].reshape(bt, L, g, n)
        C = xbc[..., h * p + g * n:].reshape(bt, L, g, n)
        dt = (torch.randn(bt, L, h + 5, device=device) * 0.7 - 1.5).to(dtype)[..., 5:]
    else:
        x = torch.randn(bt, L, h, p, device=device).to(dtype)
        B = torch.randn(bt, L, g, n, device=device).to(dtype)
        C = torch.randn(bt, L, g, n, device=device).to(dtype)
        dt = (torch.randn(bt, L, h, device=device) * 0.7 - 1.5).to(dtype)
    A = -torch.exp(torch.randn(h, device=device) * 0.7)
    D = torch.randn(h, device=device)
    bias = torch.randn(h, device=device) * 0.5
    h0 = torch.randn(bt, h, p, n, device=device)
    return x, dt, A, B, C, D, bias, h0


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("bt,L,g,T,dtype,init,limit", [
    (1, 45, 1, 16, torch.float32, True, (0.0, INF)),
    (3, 45, 2, 16, torch.float16, False, (0.0, INF)),
    (2, 45, 3, 32, torch.float32, True, (0.02, 0.4)),
    (3, 37, 6, 16, torch.float16, True, (0.0, INF)),
])
def test_ssd_chunked_matches_reference(poisoned, bt, L, g, T, dtype, init, limit):
    x, dt, A, B, C, D, bias, h0 = _inputs(bt, L, 6, 16, g, 16, dtype, packed=g == 2)
    h0 = h0 if init else None
    y, last = K.ssd_chunked(x, dt, A, B, C, T, D, bias, True, limit, h0)
    y_ref, last_ref = R.ssd_chunked(x, dt, A, B, C, T, D, bias, True, limit, h0)
    assert y.dtype == x.dtype and last.dtype == torch.float32 and y.shape == y_ref.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert _rel(y, y_ref) < tol
    assert _rel(last, last_ref) < tol


def test_ssd_chunked_real_head_and_state_sizes(poisoned):
    x, dt, A, B, C, D, bias, h0 = _inputs(1, 40, 2, 64, 1, 128, torch.float16)
    y, last = K.ssd_chunked(x, dt, A, B, C, 32, D, bias, True, (0.0, INF), h0)
    y_ref, last_ref = R.ssd_chunked(x, dt, A, B, C, 32, D, bias, True, (0.0, INF), h0)
    assert _rel(y, y_ref) < 2e-3 and _rel(last, last_ref) < 2e-3


def test_ssd_chunked_without_optional_inputs(poisoned):
    x, dt, A, B, C, D, bias, h0 = _inputs(2, 23, 4, 32, 1, 16, torch.float32)
    dt = dt.abs() * 0.1
    y, last = K.ssd_chunked(x, dt, A, B, C, 16, dt_softplus=False)
    y_ref, last_ref = R.ssd_chunked(x, dt, A, B, C, 16, dt_softplus=False)
    assert _rel(y, y_ref) < 1e-5 and _rel(last, last_ref) < 1e-5


@pytest.mark.parametrize("bt,L,g,T,init,tensor_scales", [
    (1, 45, 1, 16, True, False),
    (3, 40, 2, 32, False, True),
])
def test_qssd_chunked_matches_reference(poisoned, bt, L, g, T, init, tensor_scales):
    x, dt, A, B, C, D, bias, h0 = _inputs(bt, L, 6, 16, g, 16, torch.float32)
    s = dict(x=0.03, dt=0.02, B=0.03, C=0.03, state=0.05)
    xq, dq, Bq, Cq = (Q.quantize(t, s[k]) for t, k in ((x, "x"), (dt, "dt"), (B, "B"), (C, "C")))
    h0q = Q.quantize(h0, s["state"]) if init else None
    ks = {k: torch.tensor(v) for k, v in s.items()} if tensor_scales else s
    y, last = K.qssd_chunked(xq, ks["x"], dq, ks["dt"], A, Bq, ks["B"], Cq, ks["C"], T, D, bias, ks["state"],
                             (0.0, INF), h0q)
    y_ref, last_ref = Q.qssd_chunked(xq, s["x"], dq, s["dt"], A, Bq, s["B"], Cq, s["C"], T, D, bias, s["state"],
                                     (0.0, INF), h0q)
    assert y.dtype == torch.float16 and last.dtype == torch.int8
    assert _rel(y, y_ref) < 2e-3
    diff = (last.int() - last_ref.int()).abs()
    assert diff.max().item() <= 1
    assert (diff > 0).float().mean().item() < 0.01


def test_ssd_chunked_rejects_bad_arguments():
    x, dt, A, B, C, D, bias, h0 = _inputs(1, 8, 4, 16, 2, 16, torch.float32)
    with pytest.raises(InvalidArgumentError):
        K.ssd_chunked(x, dt, A, B, C, 24)
    with pytest.raises(InvalidArgumentError):
        K.ssd_chunked(x, dt, A, B[:, :, :1].expand(1, 8, 3, 16), C[:, :, :1].expand(1, 8, 3, 16), 16)
    with pytest.raises(InvalidArgumentError):
        K.ssd_chunked(x, dt[:, :4], A, B, C, 16)
    with pytest.raises(InvalidArgumentError):
        K.qssd_chunked(x, 0.1, dt, 0.1, A, B, 0.1, C, 0.1, 16, None, None, 0.1)


GPU_SHAPES = {  # name: (nheads, headdim, ngroups, d_state, chunk)
    "mamba2-2.7b": (80, 64, 1, 128, 256),
    "mamba2-8b": (128, 64, 8, 128, 128),
}


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(GPU_SHAPES))
@pytest.mark.parametrize("bt,L,dtype", [(1, 1024, torch.float16), (2, 2047, torch.float16),
                                        (1, 2047, torch.bfloat16)])
def test_ssd_chunked_gpu_real_shapes(shape, bt, L, dtype):
    h, p, g, n, T = GPU_SHAPES[shape]
    x, dt, A, B, C, D, bias, h0 = _inputs(bt, L, h, p, g, n, dtype, device="cuda", packed=True)
    dt = (dt.float() - 2.0).to(dtype)
    y, last = K.ssd_chunked(x, dt, A, B, C, T, D, bias, True, (0.0, INF), h0)
    y_ref, last_ref = R.ssd_chunked(x, dt, A, B, C, T, D, bias, True, (0.0, INF), h0)
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    assert _rel(y, y_ref) < tol
    assert _rel(last, last_ref) < 2e-3


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(GPU_SHAPES))
def test_ssd_chunked_gpu_fp32_exact(shape):
    h, p, g, n, T = GPU_SHAPES[shape]
    x, dt, A, B, C, D, bias, h0 = _inputs(1, 1000, h, p, g, n, torch.float32, device="cuda")
    y, last = K.ssd_chunked(x, dt - 2.0, A, B, C, T, D, bias, True, (0.0, INF), h0)
    y_ref, last_ref = R.ssd_chunked(x, dt - 2.0, A, B, C, T, D, bias, True, (0.0, INF), h0)
    assert _rel(y, y_ref) < 1e-4 and _rel(last, last_ref) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(GPU_SHAPES))
@pytest.mark.parametrize("bt,L", [(2, 2047)])
def test_qssd_chunked_gpu_real_shapes(shape, bt, L):
    h, p, g, n, T = GPU_SHAPES[shape]
    x, dt, A, B, C, D, bias, h0 = _inputs(bt, L, h, p, g, n, torch.float32, device="cuda")
    s = dict(x=0.03, dt=0.02, B=0.03, C=0.03, state=0.05)
    xq, dq, Bq, Cq = (Q.quantize(t, s[k]) for t, k in ((x, "x"), (dt - 2.0, "dt"), (B, "B"), (C, "C")))
    h0q = Q.quantize(h0, s["state"])
    args = (xq, s["x"], dq, s["dt"], A, Bq, s["B"], Cq, s["C"], T, D, bias, s["state"], (0.0, INF), h0q)
    y, last = K.qssd_chunked(*args)
    y_ref, last_ref = Q.qssd_chunked(*args)
    assert _rel(y, y_ref) < 2e-3
    assert_int8_close(last, last_ref)


def _check_ssd(quant, x, dt, A, B, C, D, bias, h0, T, own=lambda t: t):
    """``ssd_chunked`` (or ``qssd_chunked`` on ``x, dt, B, C, h0`` quantized) against its reference."""
    s = dict(x=0.03, dt=0.02, B=0.03, C=0.04, state=0.05)
    if quant:
        xq, dq, Bq, Cq = (own(Q.quantize(t.float(), s[k])) for t, k in ((x, "x"), (dt, "dt"), (B, "B"), (C, "C")))
        h0q = own(Q.quantize(h0, s["state"]))
        args = (xq, s["x"], dq, s["dt"], A, Bq, s["B"], Cq, s["C"], T, D, bias, s["state"])
        y, last = K.qssd_chunked(*args, initial_state=h0q)
        y_ref, last_ref = Q.qssd_chunked(*args, initial_state=h0q)
        assert _rel(y, y_ref) < 2e-3
        assert_int8_close(last, last_ref)
    else:
        y, last = K.ssd_chunked(x, dt, A, B, C, T, D, bias, True, (0.0, INF), h0)
        y_ref, last_ref = R.ssd_chunked(x.float(), dt.float(), A, B.float(), C.float(), T, D, bias, True, (0.0, INF),
                                        h0)
        tol = 1e-5 if x.dtype == torch.float32 else 2e-3
        assert _rel(y, y_ref) < tol and _rel(last, last_ref) < tol


@pytest.mark.parametrize("quant", [False, True])
def test_ssd_replays_repeated_calls(quant, monkeypatch):
    """A call with the signature of an earlier one replays its four launches with fresh inputs, outputs and
    scratch; another length records its own."""
    from kernel_checks import replaying

    own, replays = replaying(monkeypatch, K, K)
    _, _, A, _, _, D, bias, _ = _inputs(2, 16, 4, 16, 2, 16, torch.float32)
    for L in (21, 21, 13, 21):
        x, dt, _, B, C, _, _, h0 = (own(t) for t in _inputs(2, L, 4, 16, 2, 16, torch.float32, packed=True))
        _check_ssd(quant, x, dt, A, B, C, D, bias, h0, 16, own)
    assert len(replays) == 2 and len(K._REPLAYS) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("quant", [False, True])
def test_ssd_replay_gpu(quant):
    """Repeated calls through the compiled launchers (the later ones replay the first) at a Mamba2 head shape."""
    _, _, A, _, _, D, bias, _ = _inputs(2, 16, 16, 64, 1, 128, torch.float32, device="cuda")
    for _ in range(3):
        x, dt, _, B, C, _, _, h0 = _inputs(2, 300, 16, 64, 1, 128, torch.float16, device="cuda", packed=True)
        _check_ssd(quant, x, dt, A, B, C, D, bias, h0, 64)
