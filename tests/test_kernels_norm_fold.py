"""Block pre-norm folded into the decode GEMVs: ``linear_add_norm`` (out_proj + residual add + sum of
squares), ``rms_linear`` / ``in_proj_conv_step`` finishing the norm on load, against the references in
``quamba.ops.fused_reference``; the references against ``add_rms_norm`` + ``linear``; and a folded
decode step of whole models against the unfolded one.

The sums of squares use fp32 atomics, so they match to fp32 rounding, not bit for bit.
"""
from __future__ import annotations

import pytest
import torch

from quamba import ops
from quamba.config import MambaConfig
from quamba.errors import InvalidArgumentError
from quamba.kernels import gemv as G
from quamba.kernels import mamba2_step as K
from quamba.models import MambaLM, init_random_weights
from quamba.ops import fused_reference as FR
from quamba.ops import reference as R

from kernel_checks import DEV, poisoned_outputs, rel_err, rnd

torch.set_grad_enabled(False)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
STEPS = 3


@pytest.mark.parametrize("m,k,n", [(1, 40, 24), (3, 72, 37), (2, 160, 96)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("res_dtype", [torch.float32, torch.float16])
def test_linear_add_norm_matches_reference(seed, m, k, n, dtype, bias, gated, res_dtype):
    w = rnd(n, k, dtype=dtype, scale=k ** -0.5)
    b = rnd(n, dtype=dtype) if bias else None
    nw = rnd(n, dtype=dtype, scale=0.3).add(1.0)
    res = rnd(m, n, dtype=res_dtype)
    res_ref = res.clone()
    tol = max(TOL[dtype], TOL[res_dtype])  # an fp16 residual rounds the fp32 sum: one ulp flips it
    for _ in range(STEPS):
        x = rnd(m, k, dtype=dtype)
        group = k // 4 if gated else k
        rms = (torch.rand(m, k // group, device=DEV) * group, group, 1e-5) if gated else None
        ss = torch.rand(m, 1, device=DEV)
        ss_ref = ss.clone()
        with poisoned_outputs():
            y = G.linear_add_norm(x, w, b, res, nw, ss, rms)
        ref = FR.linear_add_norm(x, w, b, res_ref, nw, ss_ref, rms)
        assert y.dtype == dtype and y.shape == (m, n)
        assert rel_err(y, ref) < tol
        assert rel_err(res, res_ref) < tol
        torch.testing.assert_close(ss, ss_ref, rtol=tol, atol=1e-5)
        res_ref.copy_(res)


def test_linear_add_norm_many_rows_fall_back(seed):
    x, w, nw = rnd(9, 32), rnd(20, 32), rnd(20)
    res, ss = rnd(9, 20), torch.zeros(9, 1, device=DEV)
    res_ref, ss_ref = res.clone(), ss.clone()
    y = G.linear_add_norm(x, w, None, res, nw, ss)
    assert rel_err(y, FR.linear_add_norm(x, w, None, res_ref, nw, ss_ref)) < 1e-5
    torch.testing.assert_close(res, res_ref)
    torch.testing.assert_close(ss, ss_ref)


def test_linear_add_norm_rejects_bad_shapes(seed):
    x, w, nw = rnd(2, 32), rnd(20, 32), rnd(20)
    with pytest.raises(InvalidArgumentError):
        G.linear_add_norm(x, w, None, rnd(2, 21), nw, torch.zeros(2, 1, device=DEV))
    with pytest.raises(InvalidArgumentError):
        G.linear_add_norm(x, w, None, rnd(2, 20), nw, torch.zeros(2, 2, device=DEV))
    with pytest.raises(InvalidArgumentError):
        G.linear_add_norm(x, w, None, rnd(2, 20), rnd(19), torch.zeros(2, 1, device=DEV))


@pytest.mark.parametrize("m,k,n", [(1, 96, 40), (3, 80, 33), (2, 320, 70)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("normed", [False, True])
def test_rms_linear_whole_row_and_zero(seed, m, k, n, dtype, normed):
    """``rms_linear`` as a block's first GEMV: one norm group over the whole row (or none), scratch zeroed."""
    x, w, b = rnd(m, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5), rnd(n, dtype=dtype)
    ss = torch.rand(m, 1, device=DEV) * k if normed else None
    zero = torch.full((m, 3), 7.0, device=DEV)
    with poisoned_outputs():
        y = K.rms_linear(x, ss, k, 1e-5, w, b, zero=zero)
    assert y.dtype == dtype and rel_err(y, FR.rms_linear(x, ss, k, 1e-5, w, b)) < TOL[dtype]
    assert (zero == 0).all()
    y32 = K.rms_linear(x, ss, k, 1e-5, w, b, out_dtype=torch.float32)
    assert y32.dtype == torch.float32 and rel_err(y32, FR.rms_linear(x, ss, k, 1e-5, w, b, out_dtype=torch.float32)) < 1e-5


@pytest.mark.parametrize("m,k,d_inner,conv_dim,heads", [(1, 40, 24, 40, 3), (3, 72, 48, 80, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_in_proj_conv_step_with_block_norm(seed, m, k, d_inner, conv_dim, heads, dtype):
    n = d_inner + conv_dim + heads
    w, cw, cb = rnd(n, k, dtype=dtype, scale=k ** -0.5), rnd(conv_dim, 4, dtype=dtype, scale=0.5), rnd(conv_dim)
    st = rnd(m, conv_dim, 4, dtype=dtype)
    st_ref = st.clone()
    for _ in range(STEPS):
        h = rnd(m, k, dtype=dtype)
        rms = (torch.rand(m, 1, device=DEV) * k, k, 1e-5)
        with poisoned_outputs():
            y = K.in_proj_conv_step(h, w, None, st, cw, cb.to(dtype), d_inner, rms=rms)
        ref = FR.in_proj_conv_step(h, w, None, st_ref, cw, cb.to(dtype), d_inner, rms=rms)
        assert rel_err(y, ref) < TOL[dtype]
        torch.testing.assert_close(st.float(), st_ref.float(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_fold_references_equal_add_rms_norm_then_linear(seed, residual_in_fp32):
    """``linear_add_norm`` then ``rms_linear(.., K, ..)`` == ``linear``, ``add_rms_norm``, ``linear`` (fp32)."""
    m, k, d, n = 3, 48, 40, 56
    x, w_out, w_in, nw = rnd(m, k), rnd(d, k), rnd(n, d), rnd(d).add(1.0)
    res = rnd(m, d)
    normed, res_want = R.add_rms_norm(R.linear(x, w_out), res, nw, 1e-5, residual_in_fp32)
    want = R.linear(normed, w_in)
    ss = torch.zeros(m, 1)
    rw = FR.linear_add_norm(x, w_out, None, res, nw, ss)
    got = FR.rms_linear(rw, ss, d, 1e-5, w_in)
    assert rel_err(got, want) < 1e-5 and rel_err(res, res_want) < 1e-6


CONFIGS = {
    "mamba1": dict(arch="mamba1", d_model=40, n_layer=2, vocab_size=67, d_state=7),
    "mamba2": dict(arch="mamba2", d_model=32, expand=1, n_layer=2, vocab_size=67, d_state=12, headdim=8, ngroups=2,
                   chunk_size=8),
}


def _decode(model, ids, cache):
    return torch.cat([model(ids[:, t:t + 1], cache) for t in range(ids.shape[1])], dim=1)


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("batch", [1, 3])
def test_folded_decode_equals_unfolded(seed, arch, batch, monkeypatch):
    """Decode steps with the block norms folded (the default) give the logits of the unfolded op chain,
    on the references and through the Triton kernels (the interpreter on CPU)."""
    model = init_random_weights(MambaLM(MambaConfig(**CONFIGS[arch])), seed=seed, std=0.1).to(DEV).eval()
    ids = torch.randint(0, 67, (batch, 4), device=DEV)
    cache = model.allocate_cache(batch)
    assert model.folds_norms(ids[:, :1], cache) and not model.folds_norms(ids, cache)
    monkeypatch.setenv("QUAMBA_FUSED_DECODE", "0")
    assert not model.folds_norms(ids[:, :1], cache)
    with ops.backend("torch"):
        want = _decode(model, ids, cache)
    monkeypatch.setenv("QUAMBA_FUSED_DECODE", "1")
    for name in ("torch", "triton"):
        cache = model.allocate_cache(batch)
        with ops.backend(name):
            got = _decode(model, ids, cache)
        assert cache.seqlen_offset == 4
        assert rel_err(got, want) < 1e-5, name


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ["mamba-2.8b", "mamba2-2.7b"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fold_kernels_real_shapes_gpu(seed, shape, batch):
    from quamba.config import shape_config

    cfg = shape_config(shape)
    dtype, d, di = torch.float16, cfg.d_model, cfg.d_inner
    x, w_out, nw = rnd(batch, di, dtype=dtype), rnd(d, di, dtype=dtype, scale=di ** -0.5), rnd(d, dtype=dtype).add(1)
    res, ss = rnd(batch, d), torch.zeros(batch, 1, device=DEV)
    res_ref, ss_ref = res.clone(), ss.clone()
    rw = G.linear_add_norm(x, w_out, None, res, nw, ss)
    rw_ref = FR.linear_add_norm(x, w_out, None, res_ref, nw, ss_ref)
    assert rel_err(rw, rw_ref) < TOL[dtype] and rel_err(res, res_ref) < 1e-4  # h rounded to fp16: ulp flips
    torch.testing.assert_close(ss, ss_ref, rtol=1e-4, atol=1e-3)
    w_in = rnd(cfg.in_proj_dim, d, dtype=dtype, scale=d ** -0.5)
    assert rel_err(K.rms_linear(rw, ss, d, 1e-5, w_in), FR.rms_linear(rw_ref, ss_ref, d, 1e-5, w_in)) < TOL[dtype]
