"""Replayed launches of the small prefill wrappers (``quamba.kernels.reuse``): repeated calls with fresh inputs
equal the reference, a call of another shape or alignment records its own replay, and a recording that
would replay a temporary is refused. The scan and int8 GEMM replays are tested beside their kernels."""
from __future__ import annotations

import pytest
import torch

from quamba.kernels import conv1d as CV, hadamard as H, norm as N, qconv1d as QC, qnorm as QN
from quamba.ops import qreference as Q
from quamba.ops import reference as R

from kernel_checks import DEV, assert_int8_close, replaying, rnd


def _misaligned(x, by):
    """``x``'s values at an address ``by`` elements past a fresh allocation."""
    return torch.cat([x.new_zeros(by), x.flatten()])[by:].view(x.shape) if by else x


def _norm(shape, misaligned, own):
    x = own(_misaligned(rnd(*shape, dtype=torch.float16), misaligned))
    residual = own(rnd(*shape))
    w = _norm.w
    got = N.add_rms_norm(x, residual, w, 1e-5)
    ref = R.add_rms_norm(x, residual, w, 1e-5)
    torch.testing.assert_close(got[0].float(), ref[0].float(), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(got[1], ref[1])


def _qnorm(shape, misaligned, own):
    x = own(_misaligned(rnd(*shape, dtype=torch.float16), misaligned))
    got = QN.qadd_rms_norm(x, None, _norm.w, 1e-5, _qnorm.scale)
    ref = Q.qadd_rms_norm(x, None, _norm.w, 1e-5, _qnorm.scale)
    assert_int8_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])


def _conv(shape, misaligned, own):
    bsz, L, d = shape
    x = own(_misaligned(rnd(bsz, L, d, dtype=torch.float16), misaligned))
    state = own(rnd(bsz, d, 4, dtype=torch.float16))
    got = CV.causal_conv1d(x, _conv.w, _conv.b, True, state)
    ref = R.causal_conv1d(x, _conv.w, _conv.b, True, state)
    torch.testing.assert_close(got.float(), ref.float(), rtol=2e-3, atol=2e-3)


def _qconv(shape, misaligned, own):
    x = own(_misaligned(torch.randint(-128, 128, shape, dtype=torch.int8, device=DEV), misaligned))
    w = _qconv.w
    got = QC.qcausal_conv1d(x, 0.05, w, 0.01, None, None, 0.02)
    ref = Q.qcausal_conv1d(x, 0.05, w, 0.01, None, None, 0.02)
    assert_int8_close(got, ref)


def _hadamard(shape, misaligned, own):
    x = own(_misaligned(rnd(*shape, dtype=torch.float16), misaligned))
    assert_int8_close(H.hadamard_quant(x, _hadamard.scale), Q.hadamard_quant(x, _hadamard.scale))


def _gated(shape, misaligned, own):
    x = own(_misaligned(rnd(*shape, dtype=torch.float16), misaligned))
    z = own(rnd(*shape, dtype=torch.float16))
    got = N.gated_rms_norm(x, z, _norm.w, 1e-5, 8)
    torch.testing.assert_close(got.float(), R.gated_rms_norm(x, z, _norm.w, 1e-5, 8).float(), rtol=2e-3, atol=2e-3)


def _qgated(shape, misaligned, own):
    x = own(_misaligned(rnd(*shape, dtype=torch.float16), misaligned))
    z = own(torch.randint(-128, 128, shape, dtype=torch.int8, device=DEV))
    got = QN.qgated_rms_norm(x, z, _qnorm.scale, _norm.w, 1e-5, 20)
    ref = Q.qgated_rms_norm(x, z, _qnorm.scale, _norm.w, 1e-5, 20)
    torch.testing.assert_close(got.float(), ref.float(), rtol=2e-3, atol=2e-3)


OPS = {  # op -> (checking call, module whose launches are replayed, module holding _REPLAYS)
    "add_rms_norm": (_norm, N, N), "qadd_rms_norm": (_qnorm, QN, N), "causal_conv1d": (_conv, CV, CV),
    "qcausal_conv1d": (_qconv, QC, CV), "hadamard_quant": (_hadamard, H, H), "gated_rms_norm": (_gated, N, N),
    "qgated_rms_norm": (_qgated, N, N),
}


@pytest.mark.parametrize("op", list(OPS))
def test_replayed_calls_match_the_reference(op, monkeypatch):
    check, launching, table = OPS[op]
    own, replays = replaying(monkeypatch, launching, table)
    d = 40
    _norm.w = own(rnd(d))
    _qnorm.scale = own(torch.tensor([0.03], device=DEV))  # a scale read through its pointer
    _conv.w, _conv.b = own(rnd(d, 4, dtype=torch.float16)), own(rnd(d, dtype=torch.float16))
    _qconv.w = own(torch.randint(-128, 128, (d, 4), dtype=torch.int8, device=DEV))
    _hadamard.scale = 0.05
    for i, (shape, misaligned) in enumerate([((2, 9, d), 0), ((2, 9, d), 0), ((1, 5, d), 0), ((2, 9, d), 1),
                                             ((2, 9, d), 0)]):
        check(shape, misaligned, own)
    assert len(replays) == 2, op  # calls 1 and 4 replay call 0; 2 and 3 have their own signatures
    assert len(table._REPLAYS) == 3


def test_a_temporary_copy_is_not_replayed(monkeypatch):
    """A float64 input is converted in the call (a temporary the kernel reads): nothing is kept."""
    own, _ = replaying(monkeypatch, H, H)
    x = own(rnd(3, 40).double())
    assert_int8_close(H.hadamard_quant(x, 0.05), Q.hadamard_quant(x.float(), 0.05))
    assert not H._REPLAYS
