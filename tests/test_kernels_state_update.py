"""Triton decode state updates (Mamba1 selective, Mamba2 SSD; fp and int8) against the reference.

States are updated in place and compared with the reference's in-place result; int8 states may be
off by one only where float rounding legitimately differs (counted and bounded). Outputs the
wrappers allocate are poisoned (NaN) so unwritten elements fail.
"""
from __future__ import annotations


import pytest
import torch

from quamba.errors import InvalidArgumentError
from quamba.kernels import state_update as K
from quamba.ops import qreference as Q
from quamba.ops import reference as R

from kernel_checks import DEV, assert_int8_close, poisoned_outputs, q8, rel_err, rnd

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}  # bf16: the interpreter truncates


def strided(b: int, d: int, dtype, pad: int = 9) -> torch.Tensor:
    """A ``[b, d]`` slice of a wider row, like a segment of a projection output."""
    return rnd(b, d + pad, dtype=dtype)[:, 4:4 + d]


# ---------------------------------------------------------------- Mamba1

def mamba1_inputs(b, d, n, dtype, opts):
    x, dt = strided(b, d, dtype), rnd(b, d, dtype=dtype, scale=2, shift=-1)
    A = -torch.exp(rnd(d, n))
    B, C = strided(b, n, dtype), strided(b, n, dtype)
    D = rnd(d) if "D" in opts else None
    z = strided(b, d, dtype) if "z" in opts else None
    dt_bias = rnd(d, scale=0.5) if "bias" in opts else None
    return x, dt, A, B, C, D, z, dt_bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,d,n,opts,softplus", [
    (1, 97, 16, "D z bias", True),
    (3, 48, 5, "", False),
    (3, 20, 16, "D bias", True),
])
def test_selective_state_update(dtype, b, d, n, opts, softplus):
    state = rnd(b, d, n)
    ref_state = state.clone()
    args = mamba1_inputs(b, d, n, dtype, opts)
    if not softplus:
        args = (args[0], args[1].abs() * 0.2) + args[2:]
    for _ in range(2):
        with poisoned_outputs():
            y = K.selective_state_update(state, *args, dt_softplus=softplus)
        ref = R.selective_state_update(ref_state, *args, dt_softplus=softplus)
        assert y.dtype == ref.dtype and y.shape == ref.shape
        assert rel_err(y, ref) < TOL[dtype]
        assert rel_err(state, ref_state) < 1e-5


@pytest.mark.parametrize("b,d,n", [(1, 97, 16), (3, 24, 16)])
def test_qselective_state_update(b, d, n):
    state = q8(b, d, n)
    ref_state = state.clone()
    x, dt, B, C, z = q8(b, d), q8(b, d), q8(b, n), q8(b, n), q8(b, d)
    A, D, dt_bias = -torch.exp(rnd(d, n)), rnd(d), rnd(d, scale=0.5, shift=-2)
    scales = [(0.02, 0.005, 0.03, 0.004, 0.006, 0.05),
              (torch.tensor(0.03, device=DEV), 0.004, torch.tensor([0.02], device=DEV), 0.005, 0.005, 0.04)]
    for ss, xs, dts, Bs, Cs, zs in scales:
        args = (x, xs, dt, dts, A, B, Bs, C, Cs, D, z, zs, dt_bias)
        with poisoned_outputs():
            y = K.qselective_state_update(state, ss, *args)
        ref = Q.qselective_state_update(ref_state, ss, *args)
        assert y.dtype == torch.float16
        assert rel_err(y, ref) < 2e-3
        assert_int8_close(state, ref_state)
        state.copy_(ref_state)
    with poisoned_outputs():
        y = K.qselective_state_update(state, 0.02, x, 0.005, dt, 0.03, A, B, 0.004, C, 0.006, None, None, 1.0,
                                      None, out_dtype=torch.float32)
    ref = Q.qselective_state_update(ref_state, 0.02, x, 0.005, dt, 0.03, A, B, 0.004, C, 0.006, None, None, 1.0,
                                    None, out_dtype=torch.float32)
    assert y.dtype == torch.float32 and rel_err(y, ref) < 1e-5
    assert_int8_close(state, ref_state)


# ---------------------------------------------------------------- Mamba2

def mamba2_inputs(b, h, p, g, n, dtype, opts, dt_scale=2.0):
    x = rnd(b, h * p + 11, dtype=dtype)[:, 5:5 + h * p].reshape(b, h, p)
    dt = strided(b, h, dtype) * dt_scale
    A = -torch.exp(rnd(h))
    B = rnd(b, 2 * g * n + 3, dtype=dtype)[:, :g * n].reshape(b, g, n)
    C = rnd(b, g, n, dtype=dtype)
    D = rnd(h) if "D" in opts else None
    dt_bias = rnd(h, scale=0.5) if "bias" in opts else None
    return x, dt, A, B, C, D, dt_bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,h,p,g,n,opts,limit", [
    (1, 6, 12, 3, 20, "D bias", (0.0, float("inf"))),
    (3, 4, 16, 1, 16, "", (0.05, 2.0)),
    (3, 2, 5, 2, 7, "D", (0.0, float("inf"))),
])
def test_ssd_state_update(dtype, b, h, p, g, n, opts, limit):
    state = rnd(b, h, p, n)
    ref_state = state.clone()
    x, dt, A, B, C, D, dt_bias = mamba2_inputs(b, h, p, g, n, dtype, opts)
    for _ in range(2):
        with poisoned_outputs():
            y = K.ssd_state_update(state, x, dt, A, B, C, D, dt_bias, True, limit)
        ref = R.ssd_state_update(ref_state, x, dt, A, B, C, D, dt_bias, True, limit)
        assert y.dtype == ref.dtype and y.shape == ref.shape
        assert rel_err(y, ref) < TOL[dtype]
        assert rel_err(state, ref_state) < 1e-5


def test_softplus_range():
    """dt over [-30, 40] (tiny softplus values, and past the threshold 20) stays fp32-accurate."""
    b, h, p, n = 1, 64, 4, 16
    state = rnd(b, h, p, n)
    ref_state = state.clone()
    x, _, A, B, C, D, _ = mamba2_inputs(b, h, p, 1, n, torch.float32, "D")
    dt = torch.linspace(-30, 40, h, device=DEV).reshape(1, h)
    y = K.ssd_state_update(state, x, dt, A * 1e-3, B, C, D, None, True)
    ref = R.ssd_state_update(ref_state, x, dt, A * 1e-3, B, C, D, None, True)
    assert rel_err(y, ref) < 1e-5
    per_head = ((state - ref_state).flatten(1).norm(dim=1) / ref_state.flatten(1).norm(dim=1))
    assert per_head.max().item() < 1e-5


@pytest.mark.parametrize("b,h,p,g,n,limit", [(1, 6, 12, 3, 20, (0.0, float("inf"))), (3, 4, 16, 1, 16, (0.0, 0.5))])
def test_qssd_state_update(b, h, p, g, n, limit):
    state = q8(b, h, p, n)
    ref_state = state.clone()
    x, dt, B, C = q8(b, h, p), q8(b, h), q8(b, g, n), q8(b, g, n)
    A, D, dt_bias = -torch.exp(rnd(h)), rnd(h), rnd(h, scale=0.5, shift=-2)
    one = torch.tensor([0.03], device=DEV)
    for ss, xs, dts, Bs, Cs in [(0.02, 0.005, 0.03, 0.004, 0.006),
                                (one, 0.004, torch.tensor(0.02, device=DEV), 0.005, 0.005)]:
        args = (x, xs, dt, dts, A, B, Bs, C, Cs, D, dt_bias, limit)
        with poisoned_outputs():
            y = K.qssd_state_update(state, ss, *args)
        ref = Q.qssd_state_update(ref_state, ss, *args)
        assert y.dtype == torch.float16 and y.shape == ref.shape
        assert rel_err(y, ref) < 2e-3
        assert_int8_close(state, ref_state)
        state.copy_(ref_state)


def test_bad_inputs():
    state = rnd(2, 8, 4)
    with pytest.raises(InvalidArgumentError):
        K.selective_state_update(state, rnd(2, 8), rnd(2, 8), rnd(8, 5), rnd(2, 4), rnd(2, 4))
    with pytest.raises(InvalidArgumentError):
        K.ssd_state_update(rnd(1, 3, 4, 5), rnd(1, 3, 4), rnd(1, 3), rnd(3), rnd(1, 2, 5), rnd(1, 2, 5))
    with pytest.raises(InvalidArgumentError):
        K.qselective_state_update(state, 0.1, q8(2, 8), 0.1, q8(2, 8), 0.1, rnd(8, 4), q8(2, 4), 0.1, q8(2, 4),
                                  0.1, None, None, 0.1, None)
    with pytest.raises(InvalidArgumentError):
        K.qssd_state_update(q8(1, 2, 4, 5), torch.ones(2, device=DEV), q8(1, 2, 4), 0.1, q8(1, 2), 0.1, rnd(2),
                            q8(1, 1, 5), 0.1, q8(1, 1, 5), 0.1, None, None)


# ---------------------------------------------------------------- real shapes on the GPU

@pytest.mark.gpu
@pytest.mark.parametrize("b", [1, 3])
def test_selective_state_update_gpu(b):
    d, n = 5120, 16
    state = rnd(b, d, n)
    ref_state = state.clone()
    args = mamba1_inputs(b, d, n, torch.float16, "D z bias")
    with poisoned_outputs():
        y = K.selective_state_update(state, *args)
    ref = R.selective_state_update(ref_state, *args)
    assert rel_err(y, ref) < 2e-3 and rel_err(state, ref_state) < 1e-5
    qs = q8(b, d, n)
    qr = qs.clone()
    qargs = (q8(b, d), 0.005, q8(b, d), 0.03, args[2], q8(b, n), 0.004, q8(b, n), 0.006, args[5], q8(b, d), 0.05,
             args[7])
    with poisoned_outputs():
        y = K.qselective_state_update(qs, 0.02, *qargs)
    ref = Q.qselective_state_update(qr, 0.02, *qargs)
    assert rel_err(y, ref) < 2e-3
    assert_int8_close(qs, qr)


@pytest.mark.gpu
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("h,g", [(80, 1), (128, 8)])
def test_ssd_state_update_gpu(b, h, g):
    p, n = 64, 128
    state = rnd(b, h, p, n)
    ref_state = state.clone()
    x, dt, A, B, C, D, dt_bias = mamba2_inputs(b, h, p, g, n, torch.float16, "D bias")
    with poisoned_outputs():
        y = K.ssd_state_update(state, x, dt, A, B, C, D, dt_bias, True)
    ref = R.ssd_state_update(ref_state, x, dt, A, B, C, D, dt_bias, True)
    assert rel_err(y, ref) < 2e-3 and rel_err(state, ref_state) < 1e-5
    qs = q8(b, h, p, n)
    qr = qs.clone()
    qargs = (q8(b, h, p), 0.005, q8(b, h), 0.03, A, q8(b, g, n), 0.004, q8(b, g, n), 0.006, D, dt_bias)
    with poisoned_outputs():
        y = K.qssd_state_update(qs, 0.02, *qargs)
    ref = Q.qssd_state_update(qr, 0.02, *qargs)
    assert rel_err(y, ref) < 2e-3
    assert_int8_close(qs, qr)
