"""Triton int8_linear (decode GEMV and prefill GEMM paths) against the W8A8 reference."""
from __future__ import annotations

import pytest
import torch

from quamba.errors import InvalidArgumentError
from quamba.kernels import int8_gemm as G, reuse
from quamba.ops import qreference as Q

from kernel_checks import DEV, interpreted_relaunch


@pytest.fixture
def poisoned(monkeypatch):
    """Every tensor the kernel wrapper allocates starts as NaN (floats) or a sentinel (ints)."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else 77)

    monkeypatch.setattr(G.torch, "empty", empty)


def _int8(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=DEV)


def _assert_float_close(y, ref):
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert not torch.isnan(y).any()
    rtol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[y.dtype]
    torch.testing.assert_close(y.float(), ref.float(), rtol=rtol, atol=rtol * ref.float().abs().max().item())


def _assert_int8_close(y, ref, max_frac=2e-3):
    assert y.dtype == torch.int8 and y.shape == ref.shape
    d = (y.int() - ref.int()).abs()
    assert d.max().item() <= 1
    assert (d > 0).sum().item() <= max(1, max_frac * d.numel())


@pytest.mark.parametrize("m", [1, 3, 17, 33])
@pytest.mark.parametrize("k", [100, 128])
def test_integer_part_is_exact(m, k, poisoned):
    n = 72
    x, w = _int8(m, k), _int8(n, k)
    y = G.int8_linear(x, w, 1.0, 1.0, out_dtype=torch.float32)
    exact = (x.double() @ w.double().t()).float()
    assert torch.equal(y, exact)


@pytest.mark.parametrize("m", [1, 3, 17, 33])
@pytest.mark.parametrize("k", [100, 300])
def test_dequant_epilogue_matches_reference(m, k, poisoned):
    n = 72
    x, w = _int8(m, k), _int8(n, k)
    xs = torch.rand(m, device=DEV) * 0.02 + 1e-3
    ws = torch.rand(n, device=DEV) * 0.01 + 1e-4
    bias = torch.randn(n, device=DEV)
    for args in [(0.013, 0.002, None), (xs, 0.002, bias), (0.013, ws, bias), (xs, ws, None)]:
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            y = G.int8_linear(x, w, args[0], args[1], args[2], out_dtype=dt)
            _assert_float_close(y, Q.int8_linear(x, w, args[0], args[1], args[2], out_dtype=dt))


@pytest.mark.parametrize("m", [1, 3, 17, 33])
def test_requantized_output_matches_reference(m, poisoned):
    k, n = 100, 72
    x, w = _int8(m, k), _int8(n, k)
    xs = torch.rand(m, device=DEV) * 0.02 + 1e-3
    ws = torch.rand(n, device=DEV) * 0.01 + 1e-4
    bias = torch.randn(n, device=DEV)
    y_ref = Q.int8_linear(x, w, xs, ws, bias, out_dtype=torch.float32)
    per_tensor = y_ref.abs().max().item() / 100  # a few values saturate
    per_chan = y_ref.abs().amax(0) / 127 + 1e-6
    for os_ in (per_tensor, per_chan, torch.tensor(per_tensor, device=DEV)):
        y = G.int8_linear(x, w, xs, ws, bias, out_scale=os_)
        _assert_int8_close(y, Q.int8_linear(x, w, xs, ws, bias, out_scale=os_))


@pytest.mark.parametrize("lead", [(2, 3), (3, 7)])
def test_batched_noncontiguous_input(lead, poisoned):
    k, n = 96, 40
    big = _int8(*lead, k + 8)
    x = big[..., 3:3 + k]
    w = _int8(n, k)
    xs = torch.rand(*lead, device=DEV) * 0.02 + 1e-3
    ws = torch.rand(n, device=DEV) * 0.01
    y = G.int8_linear(x, w, xs, ws, out_dtype=torch.float32)
    assert y.shape == (*lead, n)
    _assert_float_close(y, Q.int8_linear(x, w, xs, ws, out_dtype=torch.float32))


@pytest.mark.parametrize("plan", [(16, 32, 4, 32), (32, 64, 3, 64), (64, 32, 1, 128)])
def test_gemv_plans(plan, poisoned):
    m, k, n = 5, 128, 80
    x, w = _int8(m, k), _int8(n, k)
    out = torch.empty(m, n, dtype=torch.float32, device=DEV)
    ep = G.epilogue_args(1.0, 1.0, None, None, m, n, out)
    G.launch_gemv(x, w, out, ep, plan)
    assert torch.equal(out, (x.double() @ w.double().t()).float())


@pytest.mark.parametrize("m,n,k,split,bk", [(40, 24, 200, 3, 32), (17, 50, 130, 4, 32), (33, 16, 64, 2, 16)])
@pytest.mark.parametrize("out_scale", [None, 0.5])
def test_split_k_gemm_is_exact(m, n, k, split, bk, out_scale, poisoned):
    """K split across programs (per-split int32 planes, the last program's epilogue), twice in a row: the
    tile counters are kept between launches, each reset by the program that finished its tile."""
    for _ in range(2):
        x, w = _int8(m, k), _int8(n, k)
        out = torch.empty(m, n, dtype=torch.int8 if out_scale else torch.float16, device=DEV)
        ep = G.epilogue_args(0.01, 0.02, None, out_scale, m, n, out)
        G.launch_gemm(x, w, out, ep, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=bk, GROUP_M=2, num_stages=1, num_warps=4,
                                          SPLIT_K=split))
        assert torch.equal(out, Q.int8_linear(x, w, 0.01, 0.02, out_scale=out_scale))
    assert not G.split_counters(x.device, 1).any()


@pytest.mark.parametrize("m,n,k,progs", [(40, 50, 200, 1), (17, 72, 130, 2), (64, 16, 64, 3)])
@pytest.mark.parametrize("out_scale", [None, 0.5])
def test_persistent_gemm_is_exact(m, n, k, progs, out_scale, poisoned, monkeypatch):
    """Fewer programs than output tiles, each taking every ``progs``-th tile (odd sizes: masked edges)."""
    monkeypatch.setattr(G, "num_sms", lambda device: progs)
    x, w = _int8(m, k), _int8(n, k)
    out = torch.empty(m, n, dtype=torch.int8 if out_scale else torch.float16, device=DEV)
    ep = G.epilogue_args(0.01, 0.02, None, out_scale, m, n, out)
    G.launch_gemm(x, w, out, ep, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2, num_stages=1, num_warps=4,
                                      SPLIT_K=1, PERSIST=1))
    assert torch.equal(out, Q.int8_linear(x, w, 0.01, 0.02, out_scale=out_scale))


def test_gemm_split_only_when_tiles_are_few():
    assert G.gemm_split(1024, 10240, 2560, 128, 128, 128, 132) == 1
    split = G.gemm_split(1024, 192, 5120, 64, 256, 64, 132)
    assert 4 <= split <= 80 // 2 and 16 * split >= 132
    assert all(c["SPLIT_K"] >= 1 for c in G.gemm_configs(1024, 192, 5120, 132))
    assert all(c["BLOCK_M"] <= 32 for c in G.gemm_configs(20, 192, 5120, 132))
    assert any(c.get("PERSIST") for c in G.gemm_configs(1024, 10240, 2560, 132))


def test_split_gemms_also_try_fewer_splits():
    """Each x_proj tile comes with its planned split, 2 splits and none; dt_proj (tiles enough) is never split."""
    def tile(c):
        return c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c["num_stages"], c["num_warps"]

    splits: dict[tuple, list[int]] = {}
    for c in G.gemm_configs(1024, 192, 5120, 132):
        splits.setdefault(tile(c), []).append(c["SPLIT_K"])
    assert any(max(v) > 2 for v in splits.values())
    for t, got in splits.items():
        planned = G.gemm_split(1024, 192, 5120, *t[:3], 132)
        assert sorted(got) == sorted({1, min(2, planned), planned}), (t, got)
    dt_proj = G.gemm_configs(1024, 5120, 160, 132)
    assert all(c["SPLIT_K"] == 1 for c in dt_proj)
    assert any(tile(c) == (64, 128, 64, 3, 4) for c in dt_proj)


def test_gemv_plan_fills_the_gpu():
    for n, k in [(10240, 2560), (192, 5120), (5120, 160), (2560, 5120), (10576, 2560)]:
        bn, bk, split, per = G.gemv_plan(n, k, 132)
        assert split * per >= k > (split - 1) * per and per % bk == 0
        assert -(-n // bn) * split >= 80


def test_bad_inputs_raise():
    x, w = _int8(2, 16), _int8(8, 16)
    with pytest.raises(InvalidArgumentError):
        G.int8_linear(x.float(), w, 1.0, 1.0)
    with pytest.raises(InvalidArgumentError):
        G.int8_linear(_int8(2, 15), w, 1.0, 1.0)
    with pytest.raises(InvalidArgumentError):
        G.int8_linear(x, w, 1.0, torch.ones(7, device=DEV))
    with pytest.raises(InvalidArgumentError):
        G.int8_linear(x, w, 1.0, 1.0, out_dtype=torch.int32)


MAMBA_SHAPES = {  # (N, K)
    "mamba-2.8b in_proj": (10240, 2560), "mamba-2.8b x_proj": (192, 5120),
    "mamba-2.8b dt_proj": (5120, 160), "mamba-2.8b out_proj": (2560, 5120), "mamba2-2.7b in_proj": (10576, 2560),
}


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 4, 1024])
@pytest.mark.parametrize("name", list(MAMBA_SHAPES))
def test_real_shapes_gpu(name, m):
    n, k = MAMBA_SHAPES[name]
    x, w = _int8(m, k), _int8(n, k)
    xs = torch.rand(m, device=DEV) * 0.02 + 1e-3
    ws = torch.rand(n, device=DEV) * 0.01 + 1e-4
    bias = torch.randn(n, device=DEV)
    exact = G.int8_linear(x, w, 1.0, 1.0, out_dtype=torch.float32)
    assert torch.equal(exact, (x.double() @ w.double().t()).float())
    _assert_float_close(G.int8_linear(x, w, xs, ws, bias), Q.int8_linear(x, w, xs, ws, bias))
    ref = Q.int8_linear(x, w, xs, ws, bias, out_dtype=torch.float32)
    os_ = ref.abs().amax(0) / 127 + 1e-6
    _assert_int8_close(G.int8_linear(x, w, xs, ws, bias, out_scale=os_), Q.int8_linear(x, w, xs, ws, bias,
                                                                                         out_scale=os_))


@pytest.mark.gpu
@pytest.mark.parametrize("persist", [1, 2])
@pytest.mark.parametrize("m", [1000, 1024])
def test_persistent_gemm_real_shape_gpu(m, persist):
    n, k = MAMBA_SHAPES["mamba-2.8b in_proj"]
    x, w = _int8(m, k), _int8(n, k)
    cfg = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_stages=3, num_warps=4, SPLIT_K=1,
               PERSIST=persist)
    out = torch.empty(m, n, dtype=torch.float32, device=DEV)
    G.launch_gemm(x, w, out, G.epilogue_args(1.0, 1.0, None, None, m, n, out), cfg)
    assert torch.equal(out, (x.double() @ w.double().t()).float())
    out8 = torch.empty(m, n, dtype=torch.int8, device=DEV)
    G.launch_gemm(x, w, out8, G.epilogue_args(0.01, 0.02, None, 40.0, m, n, out8), cfg)
    assert torch.equal(out8, Q.int8_linear(x, w, 0.01, 0.02, out_scale=40.0))


def test_dispatch_routes_to_the_kernel(monkeypatch):
    from quamba import ops
    calls = []
    real = G.launch_gemv
    monkeypatch.setattr(G, "launch_gemv", lambda *a, **k: (calls.append(1), real(*a, **k)))
    x, w = _int8(2, 40), _int8(24, 40)
    with ops.backend("triton"):
        y = ops.int8_linear(x, w, 0.5, 0.25, out_dtype=torch.float32)
    assert calls and torch.equal(y, Q.int8_linear(x, w, 0.5, 0.25, out_dtype=torch.float32))


def test_epilogue_args_memoized_per_scale_objects():
    """A layer's fixed scales are validated once; per-token scales are read every call; a scale tensor
    updated in place keeps its (pointer) entry valid."""
    G._EPILOGUES.clear()
    out = torch.empty(3, 8, dtype=torch.int8, device=DEV)
    ws = torch.rand(8, device=DEV) + 0.5
    bias = torch.randn(8, device=DEV)
    ep = G.cached_epilogue_args(0.25, ws, bias, 0.5, 3, 8, out)
    assert G.cached_epilogue_args(0.25, ws, bias, 0.5, 5, 8, torch.empty(5, 8, dtype=torch.int8, device=DEV)) is ep
    assert ep["flags"] == dict(XS_MODE=0, WS_MODE=2, HAS_BIAS=True, OS_MODE=0) and ep["scales"][1] == 0.25
    assert G.cached_epilogue_args(0.3, ws, bias, 0.5, 3, 8, out)["scales"][1] == 0.3
    assert G.cached_epilogue_args(0.25, ws.clone(), bias, 0.5, 3, 8, out) is not ep
    per_token = torch.rand(3, device=DEV)
    a = G.cached_epilogue_args(per_token, ws, None, None, 3, 8, out)
    assert a["flags"]["XS_MODE"] == 2 and a["scales"][0].data_ptr() == per_token.data_ptr()
    assert G.cached_epilogue_args(per_token, ws, None, None, 3, 8, out) is not a
    with pytest.raises(InvalidArgumentError):
        G.cached_epilogue_args(torch.rand(4, device=DEV), ws, None, None, 3, 8, out)
    with pytest.raises(InvalidArgumentError):
        G.cached_epilogue_args(0.25, torch.rand(7, device=DEV), None, None, 3, 8, out)
    x = torch.randint(-9, 9, (20, 16), dtype=torch.int8, device=DEV)
    w = torch.randint(-9, 9, (8, 16), dtype=torch.int8, device=DEV)
    for _ in range(2):
        got = G.int8_linear(x, w, 0.25, ws, bias, out_dtype=torch.float32)
        assert torch.equal(got, Q.int8_linear(x, w, 0.25, ws, bias, out_dtype=torch.float32))
        ws.mul_(2)


@pytest.mark.parametrize("config", [dict(), dict(SPLIT_K=3), dict(PERSIST=1)])
@pytest.mark.parametrize("out_scale", [None, 0.5])
def test_prefill_gemm_relaunch_matches_reference(config, out_scale, monkeypatch):
    """A layer's GEMM is kept for reuse after its first launch; later calls with fresh inputs (and one with
    another alignment, which must not reuse it) put their own pointers in and still match the reference."""
    own, _ = interpreted_relaunch(monkeypatch, G)
    monkeypatch.setattr(G, "split_counters", lambda *a, real=G.split_counters: own(real(*a)))
    monkeypatch.setattr(reuse, "ENABLED", True)
    G._REPLAYS.clear()
    monkeypatch.setattr(G, "num_sms", lambda device: 2)
    monkeypatch.setattr(G, "_INTERPRETER_TILE", dict(dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2, num_stages=1,
                                                          num_warps=4, SPLIT_K=1), **config))
    relaunched = []
    real = G._relaunch_gemm
    monkeypatch.setattr(G, "_relaunch_gemm", lambda r, x: relaunched.append(1) or real(r, x))
    m, n, k = 37, 40, 96
    w = _int8(n, k)
    ws = torch.rand(n, device=DEV) * 0.02 + 1e-3
    bias = torch.randn(n, device=DEV)
    for i, lead in enumerate([(1, m), (1, m), (m,), (1, m), (1, m)]):
        x = own(_int8(m * k + 16)[16 - (i == 3):][: m * k].view(*lead, k))  # call 3 misaligned (1 byte off)
        got = G.int8_linear(x, w, 0.01, ws, bias, out_scale=out_scale)
        ref = Q.int8_linear(x, w, 0.01, ws, bias, out_scale=out_scale)
        assert got.shape == ref.shape and torch.equal(got, ref), i
    assert len(relaunched) == 2  # calls 1 and 4 (call 2 is another shape, call 3 another alignment)
    assert len(G._REPLAYS) == 3


@pytest.mark.gpu
@pytest.mark.parametrize("config", [dict(), dict(SPLIT_K=4), dict(PERSIST=2)])
@pytest.mark.parametrize("out_scale", [None, 0.5])
def test_prefill_gemm_relaunch_gpu(config, out_scale, monkeypatch):
    """The same on the GPU, through the compiled launcher: fresh inputs every call, one misaligned, an
    in-place scale update and a weight whose storage is swapped (``w.data = ...``) between calls."""
    m, n, k = 1000, 192, 640
    cfg = dict(dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=4, num_stages=3, num_warps=4, SPLIT_K=1), **config)
    dev = torch.device("cuda", torch.cuda.current_device())
    monkeypatch.setitem(G._TUNED, G.tune_key(m, n, k, dev, out_scale is not None), cfg)
    monkeypatch.setattr(G, "_REPLAYS", reuse.ReplayTable())  # else an entry at reused addresses could count
    relaunched = []
    real = G._relaunch_gemm
    monkeypatch.setattr(G, "_relaunch_gemm", lambda r, x: relaunched.append(1) or real(r, x))
    w = torch.nn.Parameter(_int8(n, k), requires_grad=False)
    ws = torch.rand(n, device=DEV) * 0.02 + 1e-3
    bias = torch.randn(n, device=DEV)
    w0 = torch.nn.Parameter(_int8(n, k), requires_grad=False)
    for _ in range(2):  # compiled by another weight's first launches: w's own first call is kept for reuse
        G.int8_linear(_int8(1, m, k), w0, 0.01, ws, bias, out_scale=out_scale)
    relaunched.clear()
    for i in range(6):
        x = _int8(m * k + 16)[16 - (i == 3):][: m * k].view(1, m, k)
        if i == 4:
            ws.mul_(1.5)
        if i == 5:
            w.data = _int8(n, k)
        got = G.int8_linear(x, w, 0.01, ws, bias, out_scale=out_scale)
        ref = Q.int8_linear(x, w.data, 0.01, ws, bias, out_scale=out_scale)
        if out_scale is None:
            _assert_float_close(got, ref)
        else:
            _assert_int8_close(got, ref)
    assert len(relaunched) == 3  # calls 1, 2 and 4 (3 is misaligned: kept apart; 5 has another weight address)
