"""Triton int8 conv1d (prefill, decode) and int8 norms against the W8A8 reference (qreference).

Int8 outputs must equal the reference or be off by one where float rounding legitimately differs
(counted: at most 0.1% of the elements, or one element in a tensor of under 1000). Outputs the wrappers
allocate are poisoned first.
"""
from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl

from quamba import ops
from quamba.errors import InvalidArgumentError
from quamba.kernels import qconv1d as KQC
from quamba.kernels import qnorm as KQN
from quamba.kernels._small_common import quantize_int8, round_half_even
from quamba.ops import qreference as Q
from quamba.ops import reference as R

from kernel_checks import DEV, assert_int8_close, poisoned_outputs, q8, rel_err


def assert_spread(q: torch.Tensor) -> None:
    """The test values exercise rounding, not just saturation or zero."""
    assert (q.abs() == 127).float().mean() < 0.3 and (q == 0).float().mean() < 0.3


def scales(kind: str, d: int, base: float):
    """A scale as a Python float, a one-element tensor or a per-channel ``[d]`` tensor around ``base``."""
    if kind == "float":
        return base
    if kind == "tensor1":
        return torch.tensor(base, device=DEV)
    return base * (0.5 + torch.rand(d, device=DEV))


# ---------------------------------------------------------------- rounding helper

@triton.jit
def _round_kernel(x_ptr, r_ptr, q_ptr, scale, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m)
    tl.store(r_ptr + offs, round_half_even(x), mask=m)
    tl.store(q_ptr + offs, quantize_int8(x, scale), mask=m)


def test_round_half_even_and_saturation():
    ties = torch.arange(-300, 300, device=DEV, dtype=torch.float32) + 0.5
    near = torch.tensor([0.49999997, -0.49999997, 1e-8, -1e-8, 126.49999, 127.5, -128.5, -127.5, 3e9, -3e9,
                         8388607.5, 2.0 ** 23 + 1], device=DEV)
    x = torch.cat([ties, near, torch.randn(300, device=DEV) * 100])
    r, q = torch.empty_like(x), torch.empty(x.shape, device=DEV, dtype=torch.int8)
    _round_kernel[(1,)](x, r, q, 0.5, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    assert torch.equal(r, torch.round(x))
    assert torch.equal(q, Q.quantize(x, 0.5))


@triton.jit
def _quant2d_kernel(x_ptr, s_ptr, q_ptr, R, C, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)[:, None]
    cols = tl.arange(0, BC)[None, :]
    m = (rows < R) & (cols < C)
    x = tl.load(x_ptr + rows * C + cols, mask=m, other=0.0)
    s = tl.load(s_ptr + cols, mask=cols < C, other=1.0)
    tl.store(q_ptr + rows * C + cols, quantize_int8(x, s), mask=m)


def _check_ties(scale: float, cols: int, br: int, bc: int) -> None:
    s = torch.full((cols,), scale, device=DEV) * (1 + 0.01 * torch.arange(cols, device=DEV))
    k = torch.arange(-140, 140, device=DEV, dtype=torch.float32) + 0.5
    x = (k[:, None] * s[None, :])
    steps = [x]
    for _ in range(3):
        steps = [torch.nextafter(steps[0], steps[0] - 1)] + steps + [torch.nextafter(steps[-1], steps[-1] + 1)]
    wide = torch.randn(64, cols, device=DEV) * 60 * s
    huge = torch.tensor([3e38, -3e38, 1e-40, -1e-40, 0.0, -0.0], device=DEV)[:, None] * torch.ones_like(s)
    x = torch.cat(steps + [wide, huge]).contiguous()
    q = torch.empty(x.shape, device=DEV, dtype=torch.int8)
    _quant2d_kernel[(triton.cdiv(x.shape[0], br),)](x, s, q, x.shape[0], cols, BR=br, BC=bc)
    assert torch.equal(q, Q.quantize(x, s))


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the interpreter's quotients of +-3e38
@pytest.mark.parametrize("scale", [0.1, 0.0137, 3.3e-3, 7.0, 1e-8])
def test_quantize_matches_ieee_division_at_ties(scale):
    """Quotients at and up to three ulps around every rounding tie, per-column scales, saturating and tiny
    values: the kernel quantization must equal ``torch.round(x / s)`` + clamp exactly."""
    _check_ties(scale, 24, 64, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [0.1, 0.0137, 3.3e-3, 7.0, 1e-8])
def test_quantize_prefill_tile_gpu(scale):
    """The same in 128 x 128 blocks (a prefill GEMM tile)."""
    _check_ties(scale, 128, 128, 128)


# ---------------------------------------------------------------- conv1d

@pytest.mark.parametrize("b,L,d,bias,state", [(1, 37, 97, True, True), (3, 6, 48, False, False),
                                              (3, 33, 20, True, False), (2, 101, 64, True, True),
                                              (2, 3, 24, False, True)])
@pytest.mark.parametrize("kind", ["float", "tensor1", "channel"])
def test_qcausal_conv1d(b, L, d, bias, state, kind):
    x = torch.randint(-128, 128, (b, L, d + 9), device=DEV, dtype=torch.int8)[:, :, 2:2 + d]
    w, bq = q8(d, 4), (q8(d) if bias else None)
    st = q8(b, d, 4) if state else None
    sc = (scales(kind, d, 0.01), scales(kind, d, 0.02), scales(kind, d, 0.01), scales(kind, d, 0.03))
    with poisoned_outputs():
        y = KQC.qcausal_conv1d(x, sc[0], w, sc[1], bq, sc[2], sc[3], st)
    ref = Q.qcausal_conv1d(x, sc[0], w, sc[1], bq, sc[2], sc[3], st)
    assert_int8_close(y, ref)
    assert_spread(ref)
    if state:
        st2, ref_st = st.clone(), st.clone()
        assert torch.equal(KQC.qcausal_conv1d(x, sc[0], w, sc[1], bq, sc[2], sc[3], st2, update_state=True), y)
        Q.qcausal_conv1d(x, sc[0], w, sc[1], bq, sc[2], sc[3], ref_st, update_state=True)
        assert torch.equal(st2, ref_st) and torch.equal(ref_st, R.conv_state_from_inputs(x, 4, st))


@pytest.mark.parametrize("b,d,bias", [(1, 97, True), (3, 48, False)])
@pytest.mark.parametrize("kind", ["float", "channel"])
def test_qcausal_conv1d_update(b, d, bias, kind):
    w, bq = q8(d, 4), (q8(d) if bias else None)
    state = q8(b, d, 4)
    ref_state = state.clone()
    sc = (scales(kind, d, 0.01), scales(kind, d, 0.02), scales(kind, d, 0.01), scales(kind, d, 0.03))
    for _ in range(2):
        x = torch.randint(-128, 128, (b, d + 5), device=DEV, dtype=torch.int8)[:, 1:1 + d]
        with poisoned_outputs():
            y = KQC.qcausal_conv1d_update(x, state, sc[0], w, sc[1], bq, sc[2], sc[3])
        ref = Q.qcausal_conv1d_update(x, ref_state, sc[0], w, sc[1], bq, sc[2], sc[3])
        assert_int8_close(y, ref)
        assert torch.equal(state, ref_state)


def test_qconv_bad_inputs():
    x = q8(1, 4, 8)
    with pytest.raises(InvalidArgumentError):
        KQC.qcausal_conv1d(x, 0.1, q8(8, 4), torch.ones(5, device=DEV), None, None, 0.1)
    with pytest.raises(InvalidArgumentError):
        KQC.qcausal_conv1d(x.float(), 0.1, q8(8, 4), 0.1, None, None, 0.1)
    with pytest.raises(InvalidArgumentError):
        KQC.qcausal_conv1d_update(x[:, 0], q8(1, 8, 3), 0.1, q8(8, 4), 0.1, None, None, 0.1)


# ---------------------------------------------------------------- norms

@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("res_kind,residual_in_fp32", [("none", True), ("none", False), ("fp32", True),
                                                       ("same", False), ("same", True)])
@pytest.mark.parametrize("kind", ["float", "channel"])
def test_qadd_rms_norm(dtype, res_kind, residual_in_fp32, kind):
    b, L, d = 3, 2, 97
    x = (torch.randn(b, L, d + 4, device=DEV) * 3).to(dtype)[:, :, 1:1 + d]
    residual = {"none": None, "fp32": torch.randn(b, L, d, device=DEV) * 5,
                "same": torch.randn(b, L, d, device=DEV).to(dtype)}[res_kind]
    w = (torch.rand(d, device=DEV) + 0.5).to(dtype)
    out_scale = scales(kind, d, 3.0 / 127)
    with poisoned_outputs():
        y, res = KQN.qadd_rms_norm(x, residual, w, 1e-5, out_scale, residual_in_fp32)
    ry, rres = Q.qadd_rms_norm(x, residual, w, 1e-5, out_scale, residual_in_fp32)
    assert_int8_close(y, ry)
    assert_spread(ry)
    assert res.dtype == rres.dtype and rel_err(res, rres) < 1e-6


@pytest.mark.parametrize("b,L,d,weight", [(1, 1, 1000, True), (3, 1, 40, False)])
def test_qadd_rms_norm_shapes(b, L, d, weight):
    x = torch.randn(b, L, d, device=DEV, dtype=torch.float16)
    residual = torch.randn(b, L, d, device=DEV)
    w = torch.rand(d, device=DEV, dtype=torch.float16) + 0.5 if weight else None
    with poisoned_outputs():
        y, res = KQN.qadd_rms_norm(x, residual, w, 1e-6, torch.tensor([0.03], device=DEV))
    ry, rres = Q.qadd_rms_norm(x, residual, w, 1e-6, torch.tensor([0.03], device=DEV))
    assert_int8_close(y, ry)
    assert rel_err(res, rres) < 1e-6


@pytest.mark.parametrize("b,L,d,group", [(3, 2, 96, 32), (1, 1, 60, 60)])
@pytest.mark.parametrize("kind", ["float", "channel"])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.float32])
def test_qgated_rms_norm(b, L, d, group, kind, out_dtype):
    y = torch.randn(b, L, d, device=DEV, dtype=torch.float16)
    z = torch.randint(-128, 128, (b, L, d + 6), device=DEV, dtype=torch.int8)[:, :, 3:3 + d]
    w = torch.randn(d, device=DEV, dtype=torch.float16)
    zs = scales(kind, d, 0.03)
    with poisoned_outputs():
        out = KQN.qgated_rms_norm(y, z, zs, w, 1e-5, group, out_dtype)
    ref = Q.qgated_rms_norm(y, z, zs, w, 1e-5, group, out_dtype)
    assert out.dtype == ref.dtype == out_dtype
    assert rel_err(out, ref) < (2e-3 if out_dtype == torch.float16 else 1e-5)


def test_qnorm_bad_inputs():
    x = torch.randn(2, 16, device=DEV)
    with pytest.raises(InvalidArgumentError):
        KQN.qadd_rms_norm(x, None, None, 1e-5, torch.ones(3, device=DEV))
    with pytest.raises(InvalidArgumentError):
        KQN.qgated_rms_norm(x, x, 0.1, None, 1e-5, 16)


def test_dispatch_reaches_kernels():
    x = q8(1, 3, 8)
    with ops.backend("triton"):
        if DEV == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
            assert ops.dispatch.kernel_for("qcausal_conv1d", x) is KQC.qcausal_conv1d
            assert ops.dispatch.kernel_for("qcausal_conv1d_update", x) is KQC.qcausal_conv1d_update
            assert ops.dispatch.kernel_for("qadd_rms_norm", x) is KQN.qadd_rms_norm
            assert ops.dispatch.kernel_for("qgated_rms_norm", x) is KQN.qgated_rms_norm


# ---------------------------------------------------------------- real shapes on the GPU

@pytest.mark.gpu
@pytest.mark.parametrize("d", [5120, 5120 + 2 * 128, 8192 + 2 * 8 * 128])
@pytest.mark.parametrize("b,L", [(1, 1024), (3, 257)])
@pytest.mark.parametrize("kind", ["float", "channel"])
def test_qcausal_conv1d_gpu(d, b, L, kind):
    x = torch.randint(-128, 128, (b, L, 2 * d), device=DEV, dtype=torch.int8)[:, :, d // 2:d // 2 + d]
    w, bq, st = q8(d, 4), q8(d), q8(b, d, 4)
    sc = (scales(kind, d, 0.01), scales(kind, d, 0.02), scales(kind, d, 0.01), scales(kind, d, 0.03))
    with poisoned_outputs():
        y = KQC.qcausal_conv1d(x, sc[0], w, sc[1], bq, sc[2], sc[3], st)
    assert_int8_close(y, Q.qcausal_conv1d(x, sc[0], w, sc[1], bq, sc[2], sc[3], st))
    state = st.clone()
    assert torch.equal(KQC.qcausal_conv1d(x, sc[0], w, sc[1], bq, sc[2], sc[3], state, update_state=True), y)
    assert torch.equal(state, R.conv_state_from_inputs(x, 4, st))
    state, ref_state = st.clone(), st.clone()
    with poisoned_outputs():
        y = KQC.qcausal_conv1d_update(x[:, 0], state, sc[0], w, sc[1], bq, sc[2], sc[3])
    assert_int8_close(y, Q.qcausal_conv1d_update(x[:, 0], ref_state, sc[0], w, sc[1], bq, sc[2], sc[3]))
    assert torch.equal(state, ref_state)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [2560, 4096])
@pytest.mark.parametrize("rows", [1, 1024])
def test_qadd_rms_norm_gpu(d, rows):
    x = torch.randn(1, rows, d, device=DEV, dtype=torch.float16)
    residual = torch.randn(1, rows, d, device=DEV) * 4
    w = torch.rand(d, device=DEV, dtype=torch.float16) + 0.5
    with poisoned_outputs():
        y, res = KQN.qadd_rms_norm(x, residual, w, 1e-5, 3.0 / 127, True)
    ry, rres = Q.qadd_rms_norm(x, residual, w, 1e-5, 3.0 / 127, True)
    assert_int8_close(y, ry)
    assert rel_err(res, rres) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("d,group", [(5120, 5120), (8192, 1024)])
@pytest.mark.parametrize("rows", [1, 1024])
def test_qgated_rms_norm_gpu(d, group, rows):
    y = torch.randn(1, rows, d, device=DEV, dtype=torch.float16)
    z = torch.randint(-128, 128, (1, rows, 2 * d), device=DEV, dtype=torch.int8)[:, :, :d]
    w = torch.rand(d, device=DEV, dtype=torch.float16) + 0.5
    zs = scales("channel", d, 0.03)
    with poisoned_outputs():
        out = KQN.qgated_rms_norm(y, z, zs, w, 1e-5, group)
    assert rel_err(out, Q.qgated_rms_norm(y, z, zs, w, 1e-5, group)) < 2e-3
