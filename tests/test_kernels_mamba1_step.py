"""Fused Mamba1 decode step (conv + x_proj, dt_proj + state update; fp and int8) against the
references in ``quamba.ops.fused_reference``, and those references against the unfused op sequence.

Several consecutive steps run with the conv and SSM states carried in place. Integer parts
(conv state, x_proj accumulator) must be exact; int8 ``u`` and int8 SSM states may be off by one
only where float rounding legitimately differs (counted and bounded). Outputs the wrappers
allocate with ``torch.empty`` are poisoned first; the accumulators are zero-initialised by design.
"""
from __future__ import annotations

import math

import pytest
import torch

from quamba import ops
from quamba.config import MambaConfig
from quamba.errors import InvalidArgumentError
from quamba.kernels import mamba1_step as K
from quamba.models.mixers import Mamba1Mixer, _negative_exp
from quamba.ops import fused_reference as FR
from quamba.ops import qreference as Q
from quamba.ops import reference as R
from quamba.qmodules import QMamba1Mixer

from kernel_checks import DEV, assert_int8_close, poisoned_outputs, q8, rel_err, rnd

torch.set_grad_enabled(False)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}  # bf16: the interpreter truncates
STEPS = 3


def segment(b: int, d: int, gen=rnd, **kw) -> torch.Tensor:
    """A ``[b, d]`` slice of a wider row, like the x or z half of an in_proj output."""
    return gen(b, 2 * d + 3, **kw)[:, 2:2 + d]


# ---------------------------------------------------------------- floating point

def fp_weights(d, k, r, n, dtype, opts):
    return dict(conv_w=rnd(d, k, dtype=dtype, scale=0.5), conv_b=rnd(d, dtype=dtype) if "bias" in opts else None,
                xproj_w=rnd(r + 2 * n, d, dtype=dtype, scale=1 / math.sqrt(d)),
                dt_w=rnd(d, r, dtype=dtype, scale=1 / math.sqrt(r)),
                dt_bias=rnd(d, scale=0.5, shift=-2) if "bias" in opts else None,
                A=-torch.exp(rnd(d, n, scale=0.5)), D=rnd(d) if "D" in opts else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,d,k,r,n,opts", [(1, 96, 4, 7, 8, "bias D z"), (3, 40, 3, 5, 16, "")])
def test_fp_steps(dtype, b, d, k, r, n, opts):
    p = fp_weights(d, k, r, n, dtype, opts)
    conv_k = rnd(b, d, k, dtype=dtype)
    conv_r = conv_k.clone()
    ssm_k = rnd(b, d, n)
    ssm_r = ssm_k.clone()
    for _ in range(STEPS):
        x = segment(b, d, dtype=dtype)
        z = segment(b, d, dtype=dtype) if "z" in opts else None
        with poisoned_outputs():
            u, dbc = K.conv_xproj_step(x, conv_k, p["conv_w"], p["conv_b"], p["xproj_w"])
        u_r, dbc_r = FR.conv_xproj_step(x, conv_r, p["conv_w"], p["conv_b"], p["xproj_w"])
        assert torch.equal(conv_k, conv_r)
        assert u.dtype == dtype and dbc.dtype == torch.float32 and dbc.shape == (b, r + 2 * n)
        assert rel_err(u, u_r) < TOL[dtype]
        assert rel_err(dbc, R.linear(u.float(), p["xproj_w"].float())) < 1e-5
        with poisoned_outputs():
            y = K.dtproj_state_step(ssm_k, u, dbc, p["dt_w"], p["dt_bias"], p["A"], p["D"], z)
        y_r = FR.dtproj_state_step(ssm_r, u, dbc, p["dt_w"], p["dt_bias"], p["A"], p["D"], z)
        assert y.dtype == dtype and y.shape == (b, d)
        assert rel_err(y, y_r) < TOL[dtype]
        assert rel_err(ssm_k, ssm_r) < 1e-5


@pytest.mark.parametrize("plan", [(64, 2), (16, 8)])
def test_fp_explicit_plans_ragged_blocks(plan):
    b, d, k, r, n = 3, 96, 4, 7, 8
    p = fp_weights(d, k, r, n, torch.float16, "bias D")
    conv = rnd(b, d, k, dtype=torch.float16)
    conv_r = conv.clone()
    x, z = segment(b, d, dtype=torch.float16), rnd(b, d, dtype=torch.float16)
    u = torch.full((b, d), float("nan"), device=DEV, dtype=torch.float16)
    dbc = torch.zeros(b, r + 2 * n, device=DEV)
    K.launch_conv_xproj(x, conv, p["conv_w"], p["conv_b"], p["xproj_w"], u, dbc, (K._NO_SCALE,) * 4, *plan)
    u_r, dbc_r = FR.conv_xproj_step(x, conv_r, p["conv_w"], p["conv_b"], p["xproj_w"])
    assert torch.equal(conv, conv_r) and rel_err(u, u_r) < 2e-3 and rel_err(dbc, dbc_r) < 2e-3
    ssm = rnd(b, d, n)
    ssm_r = ssm.clone()
    y = torch.full((b, d), float("nan"), device=DEV, dtype=torch.float16)
    K.launch_dtproj_state(ssm, u_r, dbc_r, p["dt_w"], p["dt_bias"], p["A"], p["D"], z, y, (K._NO_SCALE,) * 7, *plan)
    y_r = FR.dtproj_state_step(ssm_r, u_r, dbc_r, p["dt_w"], p["dt_bias"], p["A"], p["D"], z)
    assert rel_err(y, y_r) < 2e-3 and rel_err(ssm, ssm_r) < 1e-5


@pytest.mark.parametrize("b", [1, 3])
def test_fp_recycled_accumulator(b):
    """With ``acc`` and ``done`` the steps add into one accumulator that the second kernel zeroes
    (last program of each row), steps after steps; results equal fresh-accumulator steps."""
    d, k, r, n = 80, 4, 5, 8
    p = fp_weights(d, k, r, n, torch.float32, "bias D z")
    acc = torch.zeros(b, r + 2 * n, device=DEV)
    done = torch.zeros(b, device=DEV, dtype=torch.int32)
    conv, ssm = rnd(b, d, k), rnd(b, d, n)
    conv_r, ssm_r = conv.clone(), ssm.clone()
    for _ in range(STEPS):
        x, z = segment(b, d), rnd(b, d)
        u, dbc = K.conv_xproj_step(x, conv, p["conv_w"], p["conv_b"], p["xproj_w"], acc)
        assert dbc.data_ptr() == acc.data_ptr()
        u_r, dbc_r = FR.conv_xproj_step(x, conv_r, p["conv_w"], p["conv_b"], p["xproj_w"])
        assert rel_err(dbc, dbc_r) < 1e-5
        y = K.dtproj_state_step(ssm, u, dbc, p["dt_w"], p["dt_bias"], p["A"], p["D"], z, done)
        y_r = FR.dtproj_state_step(ssm_r, u_r, dbc_r, p["dt_w"], p["dt_bias"], p["A"], p["D"], z)
        assert rel_err(y, y_r) < 1e-5 and rel_err(ssm, ssm_r) < 1e-5
        assert not acc.any() and not done.any()
    acc2, done2 = torch.zeros_like(acc), torch.zeros_like(done)
    u, dbc = FR.conv_xproj_step(segment(b, d), conv_r, p["conv_w"], p["conv_b"], p["xproj_w"], acc2)
    FR.dtproj_state_step(ssm_r, u, dbc, p["dt_w"], p["dt_bias"], p["A"], p["D"], None, done2)
    assert not acc2.any() and not done2.any()


# ---------------------------------------------------------------- int8

def q_weights(d, k, r, n, opts, scales):
    """Int8 weights and scales giving O(1) dequantized values at every quantization point."""
    nr = r + 2 * n
    dbc_scale = 4.0 / 127
    p = dict(conv_w=q8(d, k), conv_b=q8(d) if "bias" in opts else None, xproj_w=q8(nr, d), dt_w=q8(d, r),
             x_scale=0.02, conv_w_scale=0.01, conv_b_scale=0.05, u_scale=0.03, state_scale=0.1,
             xproj_w_scale=1.0 / (math.sqrt(d) * 50 * 74 * 0.03), dbc_scale=dbc_scale,
             dt_w_scale=1.0 / (math.sqrt(r) * 25 * 74 * dbc_scale), dt_scale=4.0 / 127, z_scale=0.04,
             A=-torch.exp(rnd(d, n, scale=0.5)), D=rnd(d) if "D" in opts else None,
             dt_bias=rnd(d, scale=0.5, shift=-2) if "bias" in opts else None)
    if scales == "tensor":
        for key in ("x_scale", "u_scale", "state_scale", "dbc_scale", "dt_scale", "z_scale"):
            p[key] = torch.tensor(p[key], device=DEV)
    elif scales == "channel":
        p["conv_w_scale"] = torch.rand(d, device=DEV) * 0.01 + 0.005
        p["xproj_w_scale"] = p["xproj_w_scale"] * (0.5 + torch.rand(nr, device=DEV))
        p["dt_w_scale"] = p["dt_w_scale"] * (0.5 + torch.rand(d, device=DEV))
    return p


def conv_args(p):
    return (p["x_scale"], p["conv_w"], p["conv_w_scale"], p["conv_b"], p["conv_b_scale"], p["u_scale"], p["xproj_w"])


def state_args(p, u, acc, z):
    return (p["state_scale"], u, p["u_scale"], acc, p["xproj_w_scale"], p["dbc_scale"], p["dt_w"], p["dt_w_scale"],
            p["dt_scale"], p["A"], p["D"], z, p["z_scale"], p["dt_bias"])


@pytest.mark.parametrize("b,d,k,r,n,opts,scales", [
    (1, 96, 4, 7, 8, "bias D z", "float"),
    (3, 96, 4, 7, 8, "bias D z", "tensor"),
    (3, 40, 3, 5, 16, "z", "channel"),
])
def test_int8_steps(b, d, k, r, n, opts, scales):
    p = q_weights(d, k, r, n, opts, scales)
    conv_k = q8(b, d, k)
    conv_r = conv_k.clone()
    ssm_k = q8(b, d, n)
    ssm_r = ssm_k.clone()
    for step in range(STEPS):
        x = segment(b, d, gen=lambda *s: q8(*s))
        z = segment(b, d, gen=lambda *s: q8(*s)) if "z" in opts else None
        with poisoned_outputs():
            u, acc = K.qconv_xproj_step(x, conv_k, *conv_args(p))
        u_r, acc_r = FR.qconv_xproj_step(x, conv_r, *conv_args(p))
        assert torch.equal(conv_k, conv_r)
        assert_int8_close(u, u_r, at_least=2)
        assert acc.dtype == torch.int32 and torch.equal(acc, Q.int_matmul(u, p["xproj_w"]))
        assert u.abs().max() > 20, "u should use the int8 range"
        out_dtype = torch.float32 if step == STEPS - 1 else torch.float16
        with poisoned_outputs():
            y = K.qdtproj_state_step(ssm_k, *state_args(p, u, acc, z), out_dtype=out_dtype)
        y_r = FR.qdtproj_state_step(ssm_r, *state_args(p, u, acc, z), out_dtype=out_dtype)
        assert y.dtype == out_dtype and y.shape == (b, d)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y.float(), y_r.float(), rtol=2e-3, atol=1e-3 * y_r.float().abs().max().item())
        assert_int8_close(ssm_k, ssm_r, at_least=2)
        ssm_k.copy_(ssm_r)  # the next step starts from the same state: y is compared element by element


@pytest.mark.parametrize("b", [1, 3])
def test_int8_recycled_accumulator(b):
    """Recycled int32 accumulator: same codes as a fresh one, zeroed after each step."""
    d, k, r, n = 96, 4, 7, 8
    p = q_weights(d, k, r, n, "bias D z", "float")
    acc = torch.zeros(b, r + 2 * n, device=DEV, dtype=torch.int32)
    done = torch.zeros(b, device=DEV, dtype=torch.int32)
    conv, ssm = q8(b, d, k), q8(b, d, n)
    ssm_r = ssm.clone()
    for _ in range(STEPS):
        x, z = q8(b, d), q8(b, d)
        u, a = K.qconv_xproj_step(x, conv, *conv_args(p), acc)
        fresh = Q.int_matmul(u, p["xproj_w"])
        assert a.data_ptr() == acc.data_ptr() and torch.equal(a, fresh)
        y = K.qdtproj_state_step(ssm, *state_args(p, u, a, z), done=done)
        y_r = K.qdtproj_state_step(ssm_r, *state_args(p, u, fresh, z))
        assert torch.equal(y, y_r) and torch.equal(ssm, ssm_r)
        assert not acc.any() and not done.any()


def test_int8_requantization_points_are_exact():
    """From a zero state with no D and no gate, ``y = dt u (C . B)``: one flipped int8 code of dt, B or C
    (a requantization or int8 dt_proj that is not exact) moves y far beyond fp32 rounding."""
    b, d, k, r, n = 3, 96, 4, 7, 8
    p = q_weights(d, k, r, n, "bias", "float")
    u, acc = FR.qconv_xproj_step(q8(b, d), q8(b, d, k), *conv_args(p))
    ssm_k = torch.zeros(b, d, n, device=DEV, dtype=torch.int8)
    ssm_r = ssm_k.clone()
    y = K.qdtproj_state_step(ssm_k, *state_args(p, u, acc, None), out_dtype=torch.float32)
    y_r = FR.qdtproj_state_step(ssm_r, *state_args(p, u, acc, None), out_dtype=torch.float32)
    torch.testing.assert_close(y, y_r, rtol=1e-5, atol=1e-6 * y_r.abs().max().item())
    assert_int8_close(ssm_k, ssm_r, at_least=2)


@pytest.mark.parametrize("plan", [(64, 2), (16, 8)])
def test_int8_explicit_plans_ragged_blocks(plan):
    b, d, k, r, n = 3, 96, 4, 7, 8
    p = q_weights(d, k, r, n, "bias D z", "float")
    x, z, conv = q8(b, d), q8(b, d), q8(b, d, k)
    conv_r = conv.clone()
    u = torch.full((b, d), 77, device=DEV, dtype=torch.int8)
    acc = torch.zeros(b, r + 2 * n, device=DEV, dtype=torch.int32)
    args = conv_args(p)
    scales = tuple(K.scale_arg(s, d, "s") for s in (args[0], args[2], args[4], args[5]))
    K.launch_conv_xproj(x, conv, p["conv_w"], p["conv_b"], p["xproj_w"], u, acc, scales, *plan)
    u_r, acc_r = FR.qconv_xproj_step(x, conv_r, *args)
    assert torch.equal(conv, conv_r)
    assert_int8_close(u, u_r, at_least=2)
    assert torch.equal(acc, Q.int_matmul(u, p["xproj_w"]))
    ssm = q8(b, d, n)
    ssm_r = ssm.clone()
    y = torch.full((b, d), float("nan"), device=DEV, dtype=torch.float16)
    sa = state_args(p, u_r, acc_r, z)
    scales = (K.scale_arg(sa[0], 1, "s"), K.scale_arg(sa[2], 1, "s"), K.scale_arg(sa[4], r + 2 * n, "s"),
              K.scale_arg(sa[5], 1, "s"), K.scale_arg(sa[7], d, "s"), K.scale_arg(sa[8], 1, "s"),
              K.scale_arg(sa[12], 1, "s"))
    K.launch_dtproj_state(ssm, u_r, acc_r, p["dt_w"], p["dt_bias"], p["A"], p["D"], z, y, scales, *plan)
    y_r = FR.qdtproj_state_step(ssm_r, *sa)
    assert rel_err(y, y_r) < 2e-3
    assert_int8_close(ssm, ssm_r, at_least=2)


# ---------------------------------------------------------------- the references are the unfused data flow

def _mixers(b: int):
    cfg = MambaConfig(arch="mamba1", d_model=48, n_layer=1, vocab_size=64, d_state=8, dt_rank=7)
    m = Mamba1Mixer(cfg).to(DEV)
    for name, t in m.named_parameters():
        t.copy_(torch.randn_like(t) * (0.5 if t.dim() > 1 else 0.2))
    m.A_log.copy_(torch.rand_like(m.A_log))
    m.dt_proj.bias.add_(-2.0)
    m.x_proj.weight.mul_(0.3)
    m.dt_proj.weight.mul_(0.3)
    h = torch.randn(b, 1, cfg.d_model, device=DEV)
    x, z = m.in_proj(h).chunk(2, dim=-1)
    u = R.causal_conv1d_update(x[:, 0], torch.randn(b, cfg.d_inner, cfg.d_conv, device=DEV), m.conv1d.weight[:, 0],
                               m.conv1d.bias)
    dbc = m.x_proj(u)
    dt = m.dt_proj(dbc[:, :cfg.dt_rank]) - m.dt_proj.bias
    st = m.allocate_state(b, DEV, torch.float32)
    R.selective_state_update(st.ssm, u, dt, _negative_exp(m), dbc[:, 7:15], dbc[:, 15:], m.D, None, m.dt_proj.bias)
    amax = lambda t: float(t.abs().max()) / 127  # noqa: E731
    scales = {"in_proj:input": amax(h), "in_proj:output": amax(torch.cat([x, z])) * 2, "x_proj:input": amax(u),
              "x_proj:output": amax(dbc), "dt_proj:output": amax(dt), "ssm_state": amax(st.ssm) * 4,
              "out_proj:input": 0.05}
    return m, QMamba1Mixer.from_float(m, scales, out_dtype=torch.float32), h


def fused_decode_fp(m: Mamba1Mixer, h, state):
    """The decode branch of ``Mamba1Mixer.forward`` on the fused ops (the call the mixer should make)."""
    x, z = m.in_proj(h).chunk(2, dim=-1)
    u, dbc = ops.conv_xproj_step(x[:, 0], state.conv, m.conv1d.weight[:, 0], m.conv1d.bias, m.x_proj.weight)
    y = ops.dtproj_state_step(state.ssm, u, dbc, m.dt_proj.weight, m.dt_proj.bias, _negative_exp(m), m.D, z[:, 0])
    return m.out_proj(y).unsqueeze(1)


def fused_decode_int8(m: QMamba1Mixer, h, state):
    """The decode branch of ``QMamba1Mixer.forward`` on the fused ops (the call the mixer should make)."""
    x, z = m.in_proj(h).chunk(2, dim=-1)
    s_xz, s_u = m.in_proj.scale("output_scale"), m.x_proj.scale("input_scale")
    A, D, dt_bias = m._params()
    u, acc = ops.qconv_xproj_step(x[:, 0], state.conv, s_xz, *m._conv_params(), s_u, m.x_proj.weight)
    y = ops.qdtproj_state_step(state.ssm, m.scale("ssm_state_scale"), u, s_u, acc, m.x_proj.scale("weight_scale"),
                               m.x_proj.scale("output_scale"), m.dt_proj.weight, m.dt_proj.scale("weight_scale"),
                               m.dt_proj.scale("output_scale"), A, D, z[:, 0], s_xz, dt_bias, out_dtype=m.out_dtype)
    return m.out_proj(y).unsqueeze(1)


@pytest.mark.parametrize("b", [1, 3])
def test_references_equal_the_mixers_unfused_decode(b):
    m, qm, h = _mixers(b)
    for mixer, fused in ((m, fused_decode_fp), (qm, fused_decode_int8)):
        s_unfused = mixer.allocate_state(b, DEV, torch.float32)
        c = s_unfused.conv
        c.copy_(q8(*c.shape) if c.dtype == torch.int8 else torch.randn_like(c))
        s_fused = mixer.allocate_state(b, DEV, torch.float32)
        s_fused.conv.copy_(s_unfused.conv)
        with ops.backend("torch"):
            for _ in range(STEPS):
                hs = h + 0.3 * torch.randn_like(h)
                out = mixer(hs, s_unfused)
                assert torch.equal(fused(mixer, hs, s_fused), out)
                assert torch.equal(s_fused.conv, s_unfused.conv) and torch.equal(s_fused.ssm, s_unfused.ssm)
        assert s_unfused.ssm.abs().max() > 0


@pytest.mark.parametrize("b", [1, 3])
def test_dispatched_fused_decode_matches_the_mixers(b):
    m, qm, h = _mixers(b)
    for mixer, fused, tol in ((m, fused_decode_fp, 1e-5), (qm, fused_decode_int8, 2e-2)):
        s_ref, s_k = mixer.allocate_state(b, DEV, torch.float32), mixer.allocate_state(b, DEV, torch.float32)
        for _ in range(2):
            hs = h + 0.3 * torch.randn_like(h)
            with ops.backend("torch"):
                ref = mixer(hs, s_ref)
            with ops.backend("triton"):
                out = fused(mixer, hs, s_k)
            assert rel_err(out, ref) < tol
            if s_k.ssm.dtype == torch.int8:
                assert torch.equal(s_k.conv, s_ref.conv)
                assert_int8_close(s_k.ssm, s_ref.ssm, at_least=2)
                s_k.ssm.copy_(s_ref.ssm)
            else:  # in_proj ran through the Triton GEMV: x differs at fp32 rounding
                assert rel_err(s_k.conv, s_ref.conv) < 1e-5 and rel_err(s_k.ssm, s_ref.ssm) < 1e-5


def test_ops_dispatch_to_the_kernels(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(1, 8)
    with ops.backend("triton"):
        for name in ("conv_xproj_step", "dtproj_state_step", "qconv_xproj_step", "qdtproj_state_step"):
            assert ops.dispatch.kernel_for(name, x) is getattr(K, name)
            assert getattr(ops, name).reference is getattr(FR, name)


def test_bad_shapes_raise():
    b, d, k, r, n = 2, 32, 4, 5, 8
    p = fp_weights(d, k, r, n, torch.float32, "bias D")
    x, conv = rnd(b, d), rnd(b, d, k)
    with pytest.raises(InvalidArgumentError):
        K.conv_xproj_step(x, rnd(b, d + 1, k), p["conv_w"], p["conv_b"], p["xproj_w"])
    with pytest.raises(InvalidArgumentError):
        K.conv_xproj_step(x, conv, p["conv_w"], p["conv_b"], rnd(r + 2 * n, d - 1))
    u, dbc = K.conv_xproj_step(x, conv, p["conv_w"], p["conv_b"], p["xproj_w"])
    with pytest.raises(InvalidArgumentError):
        K.dtproj_state_step(rnd(b, d, n), u, dbc[:, 1:], p["dt_w"], p["dt_bias"], p["A"], p["D"], None)
    with pytest.raises(InvalidArgumentError):
        K.dtproj_state_step(rnd(b, d, n + 1), u, dbc, p["dt_w"], p["dt_bias"], p["A"], p["D"], None)
    qp = q_weights(d, k, r, n, "bias", "float")
    with pytest.raises(InvalidArgumentError):
        K.qconv_xproj_step(x, q8(b, d, k), *conv_args(qp))
    uq, acc = K.qconv_xproj_step(q8(b, d), q8(b, d, k), *conv_args(qp))
    with pytest.raises(InvalidArgumentError):
        K.qdtproj_state_step(q8(b, d, n), *state_args(qp, uq, acc.float(), None))


# ---------------------------------------------------------------- GPU, mamba-2.8b shapes

@pytest.mark.gpu
@pytest.mark.parametrize("b", [1, 3])
def test_fp16_steps_gpu(b):
    d, k, r, n = 5120, 4, 160, 16
    p = fp_weights(d, k, r, n, torch.float16, "bias D")
    conv_k = rnd(b, d, k, dtype=torch.float16)
    conv_r, ssm_k = conv_k.clone(), rnd(b, d, n)
    ssm_r = ssm_k.clone()
    for _ in range(2):
        x, z = segment(b, d, dtype=torch.float16), segment(b, d, dtype=torch.float16)
        with poisoned_outputs():
            u, dbc = K.conv_xproj_step(x, conv_k, p["conv_w"], p["conv_b"], p["xproj_w"])
            y = K.dtproj_state_step(ssm_k, u, dbc, p["dt_w"], p["dt_bias"], p["A"], p["D"], z)
        u_r, dbc_r = FR.conv_xproj_step(x, conv_r, p["conv_w"], p["conv_b"], p["xproj_w"])
        y_r = FR.dtproj_state_step(ssm_r, u, dbc, p["dt_w"], p["dt_bias"], p["A"], p["D"], z)
        assert torch.equal(conv_k, conv_r) and rel_err(u, u_r) < 2e-3
        assert rel_err(dbc, R.linear(u.float(), p["xproj_w"].float())) < 1e-5
        assert rel_err(y, y_r) < 2e-3 and rel_err(ssm_k, ssm_r) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("b", [1, 3])
def test_int8_steps_gpu(b):
    d, k, r, n = 5120, 4, 160, 16
    p = q_weights(d, k, r, n, "bias D z", "float")
    conv_k, ssm_k = q8(b, d, k), q8(b, d, n)
    conv_r, ssm_r = conv_k.clone(), ssm_k.clone()
    for _ in range(2):
        x, z = segment(b, d, gen=lambda *s: q8(*s)), segment(b, d, gen=lambda *s: q8(*s))
        with poisoned_outputs():
            u, acc = K.qconv_xproj_step(x, conv_k, *conv_args(p))
            y = K.qdtproj_state_step(ssm_k, *state_args(p, u, acc, z))
        u_r, _ = FR.qconv_xproj_step(x, conv_r, *conv_args(p))
        y_r = FR.qdtproj_state_step(ssm_r, *state_args(p, u, acc, z))
        assert torch.equal(conv_k, conv_r)
        assert_int8_close(u, u_r, at_least=2)
        assert torch.equal(acc, Q.int_matmul(u, p["xproj_w"]))
        assert rel_err(y, y_r) < 2e-3
        assert_int8_close(ssm_k, ssm_r, at_least=2)
        ssm_k.copy_(ssm_r)
