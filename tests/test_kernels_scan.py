"""Triton Mamba1 selective scan (fp and int8 inputs) against the plain-torch references.

On CPU the kernels run in the Triton interpreter at small odd shapes; the GPU tests use the real
mamba-2.8b shapes.
"""
from __future__ import annotations

import pytest
import torch

from quamba.errors import InvalidArgumentError
from quamba.ops import qreference as Q
from quamba.ops import reference as R

from kernel_checks import assert_int8_close

K = pytest.importorskip("quamba.kernels.selective_scan")


def _inputs(bt, L, d, n, dtype, device="cpu", strided_bc=False):
    u = torch.randn(bt, L, d, device=device).to(dtype)
    delta = (torch.randn(bt, L, d, device=device) * 0.7 - 1.5).to(dtype)
    A = -torch.exp(torch.randn(d, n, device=device) * 0.7)
    if strided_bc:  # B, C as column slices of one projection output, like x_proj's
        xbc = torch.randn(bt, L, 3 + 2 * n, device=device).to(dtype)
        B, C = xbc[..., 3:3 + n], xbc[..., 3 + n:]
    else:
        B = torch.randn(bt, L, n, device=device).to(dtype)
        C = torch.randn(bt, L, n, device=device).to(dtype)
    D = torch.randn(d, device=device)
    z = torch.randn(bt, L, d, device=device).to(dtype)
    if strided_bc:  # z as the second half of in_proj's output
        z = torch.cat([torch.randn_like(z), z], dim=-1)[..., d:]
    bias = torch.randn(d, device=device) * 0.5
    h0 = torch.randn(bt, d, n, device=device)
    return u, delta, A, B, C, D, z, bias, h0


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("bt,L,d,n,dtype,plan,full", [
    (1, 37, 24, 16, torch.float32, dict(chunk=16), True),                    # 3 chunks (combined in the scan)
    (3, 19, 40, 5, torch.float16, dict(chunk=2, t_block=2), False),          # ragged N; 10 chunks: combine pass
    (2, 29, 48, 16, torch.bfloat16, dict(chunk=16, bd=16, t_block=4), True),  # another program shape
])
def test_selective_scan_matches_reference(poisoned, bt, L, d, n, dtype, plan, full):
    u, delta, A, B, C, D, z, bias, h0 = _inputs(bt, L, d, n, dtype, strided_bc=full)
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True, initial_state=h0) if full else \
        dict(delta_softplus=False)
    if not full:
        delta = delta.abs() * 0.1
    y, last = K._scan(u, delta, A, B, C, kw.get("D"), kw.get("z"), kw.get("delta_bias"), kw["delta_softplus"],
                      kw.get("initial_state"), u.dtype, None, **plan)
    y_ref, last_ref = R.selective_scan(u, delta, A, B, C, **kw)
    assert y.dtype == u.dtype and last.dtype == torch.float32 and y.shape == y_ref.shape
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert _rel(y, y_ref) < tol
    assert _rel(last, last_ref) < 1e-5


def test_selective_scan_public_entry_point(poisoned):
    u, delta, A, B, C, D, z, bias, h0 = _inputs(2, 19, 24, 16, torch.float32)
    y, last = K.selective_scan(u, delta, A, B, C, D, z, bias, True, h0, chunk_size=4)
    y_ref, last_ref = R.selective_scan(u, delta, A, B, C, D, z, bias, True, h0)
    assert _rel(y, y_ref) < 1e-5 and _rel(last, last_ref) < 1e-5


def test_scan_plan_fills_the_gpu_with_few_chunks():
    p = K.scan_plan(1, 1024, 5120, 16, 132)
    assert 2 <= p.n_chunks <= 8 and p.t_chunk % p.t_block == 0
    assert p.n_chunks * -(-5120 // p.bd) >= 132 * 8
    assert p.n_chunks * p.t_chunk >= 1024 > (p.n_chunks - 1) * p.t_chunk
    assert K.scan_plan(16, 1024, 5120, 16, 132).n_chunks == 1  # enough channels: one pass
    assert K.scan_plan(1, 37, 24, 16, 132, chunk=13) == K.ScanPlan(8, 8, 16, 3)


@pytest.mark.parametrize("bt,L,d,n,plan,tensor_scales", [
    (2, 21, 40, 16, dict(chunk=8), True),
    (1, 23, 24, 5, None, False),
])
def test_qselective_scan_matches_reference(poisoned, bt, L, d, n, plan, tensor_scales):
    u, delta, A, B, C, D, z, bias, h0 = _inputs(bt, L, d, n, torch.float32)
    s = dict(u=0.03, dt=0.02, B=0.03, C=0.04, z=0.03, state=0.05)
    uq, dq, Bq, Cq, zq = (Q.quantize(t, s[k]) for t, k in ((u, "u"), (delta, "dt"), (B, "B"), (C, "C"), (z, "z")))
    h0q = Q.quantize(h0, s["state"])
    ks = {k: torch.tensor(v) for k, v in s.items()} if tensor_scales else s
    if plan is None:
        y, last = K.qselective_scan(uq, ks["u"], dq, ks["dt"], A, Bq, ks["B"], Cq, ks["C"], D, zq, ks["z"], bias,
                                    ks["state"], h0q)
    else:
        scales = tuple(ks[k].reshape(1).float() if tensor_scales else ks[k]
                       for k in ("u", "dt", "z", "state", "B", "C"))
        y, last = K._scan(uq, dq, A, Bq, Cq, D, zq, bias, True, h0q, torch.float16, scales, **plan)
    y_ref, last_ref = Q.qselective_scan(uq, s["u"], dq, s["dt"], A, Bq, s["B"], Cq, s["C"], D, zq, s["z"], bias,
                                        s["state"], h0q)
    assert y.dtype == torch.float16 and last.dtype == torch.int8
    assert _rel(y, y_ref) < 2e-3
    diff = (last.int() - last_ref.int()).abs()
    assert diff.max().item() <= 1
    assert (diff > 0).float().mean().item() < 0.01


@pytest.mark.parametrize("quant,plan", [(False, dict(chunk=8)), (False, dict(chunk=2, t_block=2)),
                                        (True, dict(chunk=8))])
def test_scan_replays_repeated_calls(quant, plan, monkeypatch):
    """A call with the signature of an earlier one replays its launches with fresh inputs, outputs and scratch
    (a plan with the combine pass too); another length or a misaligned input records its own."""
    from kernel_checks import replaying

    own, replays = replaying(monkeypatch, K, K)
    bt, d, n = 2, 24, 16
    _, _, A, _, _, D, _, bias, _ = _inputs(bt, 8, d, n, torch.float32)
    s = dict(u=0.03, dt=0.02, B=0.03, C=0.04, z=0.03, state=0.05)
    state_scale = torch.tensor(0.05)
    for i, L in enumerate([21, 21, 13, 21, 21]):
        u, delta, _, B, C, _, z, _, h0 = _inputs(bt, L, d, n, torch.float32, strided_bc=True)
        for t in (u, delta, B, C, z, h0):
            own(t)
        if quant:
            uq, dq, Bq, Cq, zq = (own(Q.quantize(t, s[k])) for t, k in ((u, "u"), (delta, "dt"), (B, "B"), (C, "C"),
                                                                        (z, "z")))
            if i == 3:  # one byte off 16-byte alignment
                uq = own(torch.cat([uq.new_zeros(1), uq.flatten()])[1:].view(uq.shape))
            h0q = own(Q.quantize(h0, s["state"]))
            scales = (s["u"], s["dt"], s["z"], state_scale.reshape(1), s["B"], s["C"])
            y, last = K._scan(uq, dq, A, Bq, Cq, D, zq, bias, True, h0q, torch.float16, scales, **plan)
            y_ref, last_ref = Q.qselective_scan(uq, s["u"], dq, s["dt"], A, Bq, s["B"], Cq, s["C"], D, zq, s["z"],
                                                bias, s["state"], h0q)
            assert _rel(y, y_ref) < 2e-3 and (last.int() - last_ref.int()).abs().max().item() <= 1
        else:
            if i == 3:  # 4 bytes off 16-byte alignment
                u = own(torch.cat([u.new_zeros(1), u.flatten()])[1:].view(u.shape))
            y, last = K._scan(u, delta, A, B, C, D, z, bias, True, h0, u.dtype, None, **plan)
            y_ref, last_ref = R.selective_scan(u, delta, A, B, C, D, z, bias, True, h0)
            assert _rel(y, y_ref) < 1e-5 and _rel(last, last_ref) < 1e-5, i
    assert len(replays) == 2 and len(K._REPLAYS) == 3  # calls 1 and 4 replay call 0


def test_selective_scan_rejects_bad_shapes():
    u, delta, A, B, C, D, z, bias, h0 = _inputs(1, 8, 32, 16, torch.float32)
    with pytest.raises(InvalidArgumentError):
        K.selective_scan(u, delta[:, :4], A, B, C)
    with pytest.raises(InvalidArgumentError):
        K.selective_scan(u, delta, A, B, C, initial_state=h0[:, :, :8])
    with pytest.raises(InvalidArgumentError):
        K.qselective_scan(u, 0.1, delta, 0.1, A, B, 0.1, C, 0.1, None, None, 1.0, None, 0.1)


@pytest.mark.gpu
@pytest.mark.parametrize("bt,L,dtype", [(1, 1024, torch.float16), (2, 2047, torch.float16),
                                        (1, 2047, torch.bfloat16), (2, 1024, torch.float32)])
def test_selective_scan_gpu_mamba_2_8b(bt, L, dtype):
    u, delta, A, B, C, D, z, bias, h0 = _inputs(bt, L, 5120, 16, dtype, device="cuda", strided_bc=True)
    delta = (delta.float() - 2.0).to(dtype)  # dt around softplus(-3.5): the trained range
    y, last = K.selective_scan(u, delta, A, B, C, D, z, bias, True, h0)
    y_ref, last_ref = R.selective_scan(u, delta, A, B, C, D, z, bias, True, h0)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert _rel(y, y_ref) < tol
    assert _rel(last, last_ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("bt,L", [(1, 1024), (2, 2047)])
def test_qselective_scan_gpu_mamba_2_8b(bt, L):
    u, delta, A, B, C, D, z, bias, h0 = _inputs(bt, L, 5120, 16, torch.float32, device="cuda")
    s = dict(u=0.03, dt=0.02, B=0.03, C=0.03, z=0.03, state=0.05)
    uq, dq, Bq, Cq, zq = (Q.quantize(t, s[k]) for t, k in ((u, "u"), (delta - 2.0, "dt"), (B, "B"), (C, "C"),
                                                          (z, "z")))
    h0q = Q.quantize(h0, s["state"])
    args = (uq, s["u"], dq, s["dt"], A, Bq, s["B"], Cq, s["C"], D, zq, s["z"], bias, s["state"], h0q)
    y, last = K.qselective_scan(*args)
    y_ref, last_ref = Q.qselective_scan(*args)
    assert _rel(y, y_ref) < 2e-3
    assert_int8_close(last, last_ref)


@pytest.mark.gpu
def test_selective_scan_gpu_many_chunks_other_program_shape():
    """The combine pass (16 chunks) and 16-channel programs at the real shape."""
    u, delta, A, B, C, D, z, bias, h0 = _inputs(1, 1024, 5120, 16, torch.float16, device="cuda", strided_bc=True)
    delta = (delta.float() - 2.0).half()
    y, last = K._scan(u, delta, A, B, C, D, z, bias, True, h0, u.dtype, None, chunk=64, bd=16, t_block=4)
    y_ref, last_ref = R.selective_scan(u, delta, A, B, C, D, z, bias, True, h0)
    assert _rel(y, y_ref) < 2e-3 and _rel(last, last_ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("quant", [False, True])
def test_scan_replay_gpu(quant, monkeypatch):
    """Repeated calls through the compiled launchers: the second and later calls replay the first."""
    from quamba.kernels import reuse

    replays = []
    run = reuse.Replay.run
    monkeypatch.setattr(reuse.Replay, "run", lambda self, inputs: replays.append(1) or run(self, inputs))
    bt, L, d, n = 2, 300, 640, 16
    _, _, A, _, _, D, _, bias, _ = _inputs(bt, 8, d, n, torch.float32, device="cuda")
    s = dict(u=0.03, dt=0.02, B=0.03, C=0.04, z=0.03, state=0.05)
    for _ in range(3):
        u, delta, _, B, C, _, z, _, h0 = _inputs(bt, L, d, n, torch.float16, device="cuda", strided_bc=True)
        if quant:
            uq, dq, Bq, Cq, zq = (Q.quantize(t.float(), s[k]) for t, k in ((u, "u"), (delta, "dt"), (B, "B"),
                                                                          (C, "C"), (z, "z")))
            h0q = Q.quantize(h0, s["state"])
            y, last = K.qselective_scan(uq, s["u"], dq, s["dt"], A, Bq, s["B"], Cq, s["C"], D, zq, s["z"], bias,
                                        s["state"], h0q)
            y_ref, last_ref = Q.qselective_scan(uq, s["u"], dq, s["dt"], A, Bq, s["B"], Cq, s["C"], D, zq, s["z"],
                                                bias, s["state"], h0q)
            assert _rel(y, y_ref) < 2e-3
            assert_int8_close(last, last_ref)
        else:
            y, last = K.selective_scan(u, delta, A, B, C, D, z, bias, True, h0)
            y_ref, last_ref = R.selective_scan(u.float(), delta.float(), A, B.float(), C.float(), D, z.float(), bias,
                                               True, h0)
            assert _rel(y, y_ref) < 2e-3 and _rel(last, last_ref) < 1e-4
    assert len(replays) >= 1
