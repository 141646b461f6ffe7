"""Triton causal conv1d (prefill, decode) and norms (add+RMSNorm, gated RMSNorm) against the reference.

On CPU the kernels run in the Triton interpreter at small odd shapes; GPU tests use real model shapes.
Outputs the wrappers allocate are poisoned (NaN) so an element a kernel forgets to write fails.
"""
from __future__ import annotations

import os

import pytest
import torch

from quamba import ops
from quamba.errors import InvalidArgumentError
from quamba.kernels import conv1d as KC
from quamba.kernels import norm as KN
from quamba.ops import reference as R

from kernel_checks import DEV, poisoned_outputs, rel_err

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}  # bf16: the interpreter truncates


def token_major(b: int, L: int, d: int, dtype, pad: int = 7) -> torch.Tensor:
    """A ``[b, L, d]`` slice of a wider buffer, like a segment of an in_proj output."""
    return torch.randn(b, L, d + pad, device=DEV, dtype=dtype)[:, :, 3:3 + d]


# ---------------------------------------------------------------- conv1d

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,L,d,k,bias,state,silu", [
    (1, 37, 97, 4, True, True, True),
    (3, 5, 48, 4, False, False, True),
    (3, 40, 24, 3, True, False, False),
    (2, 9, 24, 3, False, True, True),  # 3 taps with a state
    (1, 2, 20, 4, True, True, True),
    (2, 101, 32, 4, True, True, True),  # interior tiles: the unmasked path
])
def test_causal_conv1d(dtype, b, L, d, k, bias, state, silu):
    x = token_major(b, L, d, dtype)
    w = torch.randn(d, k, device=DEV, dtype=dtype) * 0.5
    bb = torch.randn(d, device=DEV, dtype=dtype) if bias else None
    st = torch.randn(b, d, k, device=DEV, dtype=dtype) if state else None
    with poisoned_outputs():
        y = KC.causal_conv1d(x, w, bb, silu, st)
    ref = R.causal_conv1d(x, w, bb, silu, st)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert rel_err(y, ref) < TOL[dtype]
    if state:  # the state after x, written in place by the first tile's programs
        st2, ref_st = st.clone(), st.clone()
        assert torch.equal(KC.causal_conv1d(x, w, bb, silu, st2, update_state=True), y)
        R.causal_conv1d(x, w, bb, silu, ref_st, update_state=True)
        assert torch.equal(st2, ref_st) and torch.equal(ref_st, R.conv_state_from_inputs(x, k, st))


@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                               (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
@pytest.mark.parametrize("b,d,bias", [(1, 97, True), (3, 48, False)])
def test_causal_conv1d_update(dtype, state_dtype, b, d, bias):
    k = 4
    w = torch.randn(d, k, device=DEV, dtype=dtype)
    bb = torch.randn(d, device=DEV, dtype=dtype) if bias else None
    state = torch.randn(b, d, k, device=DEV, dtype=state_dtype)
    ref_state = state.clone()
    for _ in range(2):
        x = torch.randn(b, d + 5, device=DEV, dtype=dtype)[:, 2:2 + d]
        with poisoned_outputs():
            y = KC.causal_conv1d_update(x, state, w, bb, True)
        ref = R.causal_conv1d_update(x, ref_state, w, bb, True)
        assert y.dtype == ref.dtype
        assert rel_err(y, ref) < TOL[dtype]
        assert torch.equal(state, ref_state)


def test_decode_continues_prefill():
    """Prefill L tokens, then decode one: equals the last output of a prefill over L+1 tokens."""
    b, L, d, k = 3, 9, 36, 4
    x = torch.randn(b, L + 1, d, device=DEV)
    w, bb = torch.randn(d, k, device=DEV), torch.randn(d, device=DEV)
    full = KC.causal_conv1d(x, w, bb, True)
    state = R.conv_state_from_inputs(x[:, :L], k)
    y = KC.causal_conv1d_update(x[:, L], state, w, bb, True)
    assert rel_err(y, full[:, L]) < 1e-5


def test_conv_bad_shapes():
    x = torch.randn(2, 5, 16, device=DEV)
    with pytest.raises(InvalidArgumentError):
        KC.causal_conv1d(x, torch.randn(15, 4, device=DEV))
    with pytest.raises(InvalidArgumentError):
        KC.causal_conv1d(x, torch.randn(16, 4, device=DEV), initial_state=torch.randn(2, 16, 3, device=DEV))
    for conv in (KC.causal_conv1d, R.causal_conv1d):
        with pytest.raises(InvalidArgumentError):
            conv(x, torch.randn(16, 4, device=DEV), update_state=True)
    with pytest.raises(InvalidArgumentError):
        KC.causal_conv1d_update(x[:, 0], torch.randn(1, 16, 4, device=DEV), torch.randn(16, 4, device=DEV))


# ---------------------------------------------------------------- norms

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("res_kind", ["none", "fp32", "same"])
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_add_rms_norm(dtype, res_kind, residual_in_fp32):
    x = token_major(3, 2, 97, dtype) * 3
    residual = {"none": None, "fp32": torch.randn(3, 2, 97, device=DEV) * 5,
                "same": torch.randn(3, 2, 97, device=DEV, dtype=dtype)}[res_kind]
    w = torch.randn(97, device=DEV, dtype=dtype)
    with poisoned_outputs():
        y, res = KN.add_rms_norm(x, residual, w, 1e-5, residual_in_fp32)
    ry, rres = R.add_rms_norm(x, residual, w, 1e-5, residual_in_fp32)
    assert y.dtype == ry.dtype and res.dtype == rres.dtype and res.shape == rres.shape
    assert rel_err(y, ry) < TOL[dtype]
    rounded = dtype != torch.float32 and res_kind != "fp32"  # the sum is rounded to a 16-bit dtype
    assert rel_err(res, rres) < (TOL[dtype] if rounded else 1e-6)


@pytest.mark.parametrize("b,L,d,weight", [(1, 1, 1000, True), (3, 1, 40, False)])
def test_add_rms_norm_shapes(b, L, d, weight):
    x = torch.randn(b, L, d, device=DEV, dtype=torch.float16)
    residual = torch.randn(b, L, d, device=DEV)
    w = torch.rand(d, device=DEV, dtype=torch.float16) + 0.5 if weight else None
    with poisoned_outputs():
        y, res = KN.add_rms_norm(x, residual, w, 1e-6, True)
    ry, rres = R.add_rms_norm(x, residual, w, 1e-6, True)
    assert rel_err(y, ry) < 2e-3 and rel_err(res, rres) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,L,d,group,gate,weight", [
    (3, 2, 96, 32, True, True),
    (1, 1, 60, 60, True, True),
    (1, 3, 48, 16, False, False),
])
def test_gated_rms_norm(dtype, b, L, d, group, gate, weight):
    x = torch.randn(b, L, d, device=DEV, dtype=dtype)
    z = token_major(b, L, d, dtype) * 2 if gate else None
    w = torch.randn(d, device=DEV, dtype=dtype) if weight else None
    with poisoned_outputs():
        y = KN.gated_rms_norm(x, z, w, 1e-5, group)
    ref = R.gated_rms_norm(x, z, w, 1e-5, group)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert rel_err(y, ref) < TOL[dtype]


def test_norm_bad_shapes():
    x = torch.randn(2, 3, 16, device=DEV)
    with pytest.raises(InvalidArgumentError):
        KN.add_rms_norm(x, torch.randn(2, 3, 15, device=DEV), None, 1e-5)
    with pytest.raises(InvalidArgumentError):
        KN.gated_rms_norm(x, None, None, 1e-5, 5)


def test_dispatch_reaches_kernels():
    x = torch.randn(1, 3, 8, device=DEV)
    with ops.backend("triton"):
        if DEV == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
            assert ops.dispatch.kernel_for("causal_conv1d", x) is KC.causal_conv1d
            assert ops.dispatch.kernel_for("causal_conv1d_update", x) is KC.causal_conv1d_update
            assert ops.dispatch.kernel_for("add_rms_norm", x) is KN.add_rms_norm
            assert ops.dispatch.kernel_for("gated_rms_norm", x) is KN.gated_rms_norm


# ---------------------------------------------------------------- real shapes on the GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [5120, 5120 + 2 * 128, 8192 + 2 * 8 * 128])
@pytest.mark.parametrize("b,L", [(1, 1024), (3, 257)])
def test_causal_conv1d_gpu(dtype, d, b, L):
    x = token_major(b, L, d, dtype, pad=d + 80)
    w = torch.randn(d, 4, device=DEV, dtype=dtype) * 0.5
    bb = torch.randn(d, device=DEV, dtype=dtype)
    st = torch.randn(b, d, 4, device=DEV, dtype=dtype)
    ref = R.causal_conv1d(x, w, bb, True, st)
    with poisoned_outputs():
        y = KC.causal_conv1d(x, w, bb, True, st)
    assert rel_err(y, ref) < (2e-3 if dtype == torch.float16 else 1e-2)
    state = st.clone()
    assert torch.equal(KC.causal_conv1d(x, w, bb, True, state, update_state=True), y)
    assert torch.equal(state, R.conv_state_from_inputs(x, 4, st))
    state = st.clone()
    xd = x[:, 0]
    with poisoned_outputs():
        y = KC.causal_conv1d_update(xd, state, w, bb, True)
    ref = R.causal_conv1d_update(xd, st, w, bb, True)
    assert rel_err(y, ref) < (2e-3 if dtype == torch.float16 else 1e-2)
    assert torch.equal(state, st)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [2560, 4096, 8192])
@pytest.mark.parametrize("rows", [1, 1024])
def test_add_rms_norm_gpu(d, rows):
    x = torch.randn(1, rows, d, device=DEV, dtype=torch.float16)
    residual = torch.randn(1, rows, d, device=DEV) * 4
    w = torch.rand(d, device=DEV, dtype=torch.float16) + 0.5
    with poisoned_outputs():
        y, res = KN.add_rms_norm(x, residual, w, 1e-5, True)
    ry, rres = R.add_rms_norm(x, residual, w, 1e-5, True)
    assert rel_err(y, ry) < 2e-3 and rel_err(res, rres) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("d,group", [(5120, 5120), (8192, 1024)])
@pytest.mark.parametrize("rows", [1, 1024])
def test_gated_rms_norm_gpu(d, group, rows):
    x = torch.randn(1, rows, d, device=DEV, dtype=torch.float16)
    z = token_major(1, rows, d, torch.float16, pad=d + 300)
    w = torch.rand(d, device=DEV, dtype=torch.float16) + 0.5
    with poisoned_outputs():
        y = KN.gated_rms_norm(x, z, w, 1e-5, group)
    assert rel_err(y, R.gated_rms_norm(x, z, w, 1e-5, group)) < 2e-3


def test_prefill_tile_plan():
    """Tiles span >= 8 tokens (only the first reads the initial state) and switch to int64 offsets when
    a tile's reach overflows int32."""
    assert KC.prefill_tile(1024, 5120, 10240, 1) == (32, 128, False)
    assert KC.prefill_tile(3, 20, 20, 1)[0] == 8 and KC.prefill_tile(40, 20, 20, 1)[0] == 32
    assert KC.prefill_tile(1024, 5120, 2 ** 26, 1)[2] and KC.prefill_tile(64, 2 ** 20, 2 ** 20, 2048)[2]
