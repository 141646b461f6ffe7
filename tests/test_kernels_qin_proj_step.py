"""W8A8 decode in_proj with the int8 conv update fused on its conv columns (``qin_proj_conv_step``; Mamba1:
with x_proj's int32 products added into the accumulator) against ``fused_reference``, and whole W8A8 models
decoding with it against the two-launch chain. Everything int8 here is exact: the kernel applies the same
fp32 operations in the same order as the reference, and int32 sums do not depend on their order."""
from __future__ import annotations

import pytest
import torch

from quamba import ops
from quamba.config import MambaConfig
from quamba.errors import InvalidArgumentError
from quamba.kernels import qin_proj_step as K
from quamba.models import MambaLM, init_random_weights
from quamba.ops import fused_reference as FR
from quamba.ops import qreference as Q

from kernel_checks import DEV, assert_int8_close, poisoned_outputs, q8

torch.set_grad_enabled(False)


def _args(m, n, k, start, c, kc, r, per_channel, bias):
    """Fresh operands: int8 h, weight, conv state/weights (and x_proj when ``r``), random positive scales."""
    pos = lambda *s: torch.rand(*s, device=DEV) * 0.02 + 0.005  # noqa: E731
    return dict(h_q=q8(m, k), h_scale=0.01 if per_channel else torch.tensor([0.01], device=DEV), weight=q8(n, k),
                w_scale=pos(n) if per_channel else 0.004, bias=torch.randn(n, device=DEV) if bias else None,
                out_scale=pos(n) * 20 if per_channel else 0.3, conv_state=q8(m, c, kc), conv_w=q8(c, kc),
                conv_w_scale=pos(c) if per_channel else 0.01, conv_b=q8(c) if bias else None,
                conv_b_scale=pos(c) if per_channel else 0.02, conv_out_scale=pos(c) if per_channel else 0.03,
                start=start, zero=torch.rand(m, 3, device=DEV), xproj_w=q8(r, c) if r else None,
                acc=torch.randint(-9, 9, (m, r), device=DEV, dtype=torch.int32) if r else None)


def _clone(a):
    return {k: v.clone() if isinstance(v, torch.Tensor) and k in ("conv_state", "zero", "acc") else v
            for k, v in a.items()}


CASES = [  # m, n, k, start, c, kc, r, per_channel, bias
    (1, 40, 64, 0, 20, 4, 12, False, False),   # Mamba1 layout: x then z, x_proj
    (3, 40, 64, 0, 20, 4, 7, False, True),
    (1, 74, 96, 24, 42, 4, None, True, False),  # Mamba2 layout: z, xBC (conv), dt
    (3, 77, 52, 31, 40, 3, None, True, True),
    (2, 50, 36, 5, 27, 2, 20, True, False),
]


@pytest.mark.parametrize("m,n,k,start,c,kc,r,per_channel,bias", CASES)
def test_matches_reference(m, n, k, start, c, kc, r, per_channel, bias):
    a = _args(m, n, k, start, c, kc, r, per_channel, bias)
    ref = _clone(a)
    for step in range(2):
        with poisoned_outputs():
            y = K.qin_proj_conv_step(**a)
        want = FR.qin_proj_conv_step(**ref)
        assert y.dtype == torch.int8 and y.shape == (m, n)
        assert torch.equal(y, want), step
        assert torch.equal(a["conv_state"], ref["conv_state"])
        assert (a["zero"] == 0).all() and (ref["zero"] == 0).all()
        if r:
            assert torch.equal(a["acc"], ref["acc"])
        a["h_q"] = ref["h_q"] = q8(m, k)


@pytest.mark.parametrize("tiles", [(False, 1, 16, 1), (True, 4, 32, 2), (True, 16, 64, 4), (False, 32, 512, 4)])
def test_explicit_tiles_ragged_blocks(tiles):
    a = _args(2, 77, 104, 9, 51, 4, 11, True, True)
    ref = _clone(a)
    assert torch.equal(K.qin_proj_conv_step(**a, tiles=tiles), FR.qin_proj_conv_step(**ref))
    assert torch.equal(a["conv_state"], ref["conv_state"]) and torch.equal(a["acc"], ref["acc"])


@pytest.mark.parametrize("m,k", [(9, 64), (2, 62)])
def test_two_launch_fallback(m, k):
    """More rows than the GEMV takes, or a K the word kernel cannot read: in_proj and the conv launched apart."""
    for r in (None, 6):
        a = _args(m, 30, k, 4, 18, 4, r, True, False)
        ref = _clone(a)
        assert torch.equal(K.qin_proj_conv_step(**a), FR.qin_proj_conv_step(**ref))
        assert torch.equal(a["conv_state"], ref["conv_state"]) and (a["zero"] == 0).all()
        if r:
            assert torch.equal(a["acc"], ref["acc"])


def test_bad_input_raises():
    good = _args(1, 40, 64, 0, 20, 4, 12, False, False)
    bad = [dict(out_scale=None), dict(start=30), dict(h_q=torch.zeros(1, 64, device=DEV)),
           dict(conv_w=q8(20, 3)), dict(acc=None), dict(acc=torch.zeros(1, 12, device=DEV)),
           dict(xproj_w=q8(12, 19)), dict(conv_state=q8(2, 20, 4))]
    for change in bad:
        with pytest.raises(InvalidArgumentError):
            K.qin_proj_conv_step(**{**_clone(good), **change})


def test_dispatch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with ops.backend("triton"):
        assert ops.dispatch.kernel_for("qin_proj_conv_step", torch.zeros(1, 8)) is K.qin_proj_conv_step
    assert ops.qin_proj_conv_step.reference is FR.qin_proj_conv_step


def _w8a8(arch, seed):
    from quamba.quantization import RECIPES, quantize_

    extra = dict(d_state=16, headdim=16, ngroups=2, chunk_size=8) if arch == "mamba2" else dict(d_state=8)
    cfg = MambaConfig(arch=arch, d_model=64, expand=2, n_layer=1, vocab_size=67, **extra)
    m = init_random_weights(MambaLM(cfg), seed=seed, std=0.1).eval()
    quantize_(m, RECIPES["quamba"](), [torch.randint(0, 67, (1, 24))], show_progress=False)
    return m.to(DEV)


@pytest.mark.parametrize("arch,batch", [("mamba1", 3), ("mamba2", 3)])
def test_models_decode_the_same_with_and_without_the_fused_in_proj(arch, batch, seed, monkeypatch):
    """Decode logits and caches of W8A8 models (kernels through the interpreter on CPU) with in_proj and the
    conv in one launch equal those of the two-launch chain, bit for bit."""
    model = _w8a8(arch, seed)
    ids = torch.randint(0, 67, (batch, 3), device=DEV)

    def decode(fused: str):
        monkeypatch.setenv("QUAMBA_FUSED_IN_PROJ", fused)
        cache = model.allocate_cache(batch)
        with ops.backend("triton"):
            logits = torch.cat([model(ids[:, t:t + 1], cache) for t in range(ids.shape[1])], dim=1)
        return logits, [(s.conv.clone(), s.ssm.clone()) for s in cache.layers]

    (want, want_cache), (got, got_cache) = decode("0"), decode("1")
    assert torch.equal(got, want)
    for (c1, s1), (c2, s2) in zip(got_cache, want_cache):
        assert torch.equal(c1, c2) and torch.equal(s1, s2)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ["mamba-2.8b", "mamba2-2.7b"])
@pytest.mark.parametrize("m", [1, 3])
def test_real_shapes_gpu(shape, m):
    """The integer parts exact (in_proj's codes in the conv state, x_proj's products of the kernel's own conv
    output); a conv output may be one code off where the compiled ``y * x_scale + b * b_scale`` rounds once as
    an FMA and the reference twice."""
    if shape == "mamba-2.8b":
        a = _args(m, 10240, 2560, 0, 5120, 4, 192, False, True)
    else:
        a = _args(m, 10576, 2560, 5120, 5376, 4, None, True, True)
    ref = _clone(a)
    s, e = a["start"], a["start"] + a["conv_state"].shape[1]
    for _ in range(2):
        acc0 = a["acc"].clone() if a["acc"] is not None else None
        y = K.qin_proj_conv_step(**a)
        want = FR.qin_proj_conv_step(**ref)
        assert_int8_close(y, want)
        assert torch.equal(y[:, :s], want[:, :s]) and torch.equal(y[:, e:], want[:, e:])
        assert torch.equal(a["conv_state"], ref["conv_state"])
        if acc0 is not None:
            assert torch.equal(a["acc"], acc0 + Q.int_matmul(y[:, s:e], a["xproj_w"]))
            ref["acc"].copy_(a["acc"])
