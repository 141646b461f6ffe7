"""The decode GEMV kernel against F.linear (interpreter on CPU, real shapes on GPU)."""
import pytest
import torch
import torch.nn.functional as F
import triton

from quamba.kernels.gemv import gemv, linear


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("m,n,k", [(1, 72, 100), (3, 33, 257), (8, 16, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear_fp32(seed, m, n, k, bias):
    x = torch.randn(m, k)
    w = torch.randn(n, k)
    b = torch.randn(n) if bias else None
    y = gemv(x, w, b, block_n=4, block_k=32)
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-4)


def test_gemv_strided_rows_fp16(seed):
    base = torch.randn(3, 200, dtype=torch.float16)
    x = base[:, 10:170]
    w = torch.randn(48, 160, dtype=torch.float16)
    y = gemv(x, w, block_n=8, block_k=64)
    assert y.dtype == torch.float16
    assert _rel(y, F.linear(x.float(), w.float())) < 2e-3


def test_linear_falls_back_for_many_rows(seed):
    x = torch.randn(2, 9, 24)
    w = torch.randn(12, 24)
    torch.testing.assert_close(linear(x, w), F.linear(x, w))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("n,k", [(10240, 2560), (192, 5120), (5120, 160), (2560, 5120), (10576, 2560), (50280, 2560)])
def test_gemv_real_shapes_gpu(seed, m, n, k):
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16) / k ** 0.5
    b = torch.randn(n, device="cuda", dtype=torch.float16)
    y = linear(x, w, b)
    assert _rel(y, F.linear(x.float(), w.float(), b.float())) < 2e-3


@pytest.mark.parametrize("m,n,k", [(1, 72, 100), (2, 33, 257), (4, 16, 64)])
@pytest.mark.parametrize("requant", [False, True])
def test_int8_gemv_matches_reference(seed, m, n, k, requant):
    from quamba.kernels.gemv import launch_int8_gemv
    from quamba.kernels.int8_gemm import epilogue_args
    from quamba.ops import qreference as Q

    x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    ws = torch.rand(n) * 0.01 + 1e-3
    bias = None if requant else torch.randn(n)
    out_scale = 0.37 if requant else None
    out = torch.full((m, n), 99, dtype=torch.int8) if requant else torch.full((m, n), float("nan"))
    launch_int8_gemv(x, w, out, epilogue_args(0.02, ws, bias, out_scale, m, n, out), 4, 32)
    ref = Q.int8_linear(x, w, 0.02, ws, bias, out_scale=out_scale, out_dtype=torch.float32)
    if requant:
        assert (out.int() - ref.int()).abs().max() <= 1 and (out != ref).float().mean() < 0.01
    else:
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)


def _int8_case(m, n, k, scales, out_kind, device="cpu"):
    """Fresh int8 operands, scales of the requested kind, a poisoned output and the reference result."""
    from quamba.kernels.int8_gemm import epilogue_args
    from quamba.ops import qreference as Q

    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=device)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=device)
    if scales == "tensor":
        xs, ws = torch.rand(m, device=device) * 0.02 + 1e-3, torch.rand(n, device=device) * 0.01 + 1e-3
    else:
        xs, ws = 0.013, 0.007
    bias = torch.randn(n, device=device) if out_kind != "int8" else None
    out_scale = (torch.rand(n, device=device) + 0.5 if scales == "tensor" else 0.61) if out_kind == "int8" else None
    dtype = {"int8": torch.int8, "fp16": torch.float16, "fp32": torch.float32}[out_kind]
    out = torch.full((m, n), 99 if out_kind == "int8" else float("nan"), dtype=dtype, device=device)
    ep = epilogue_args(xs, ws, bias, out_scale, m, n, out)
    ref = Q.int8_linear(x, w, xs, ws, bias, out_scale=out_scale, out_dtype=dtype)
    return x, w, out, ep, ref


def _check_int8(out, ref):
    if out.dtype == torch.int8:
        diff = (out.int() - ref.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    else:
        torch.testing.assert_close(out.float(), ref.float(), rtol=1e-3 if out.dtype == torch.float16 else 1e-6,
                                   atol=1e-3 if out.dtype == torch.float16 else 1e-5)


@pytest.mark.parametrize("variant", ["dp4a", "dp4a_pf", "i32", "ew"])
@pytest.mark.parametrize("m,n,k,bn,bk", [(1, 37, 100, 4, 32), (2, 33, 260, 8, 64), (3, 5, 12, 8, 64),
                                         (4, 19, 512, 2, 128), (1, 11, 99, 4, 32)])
@pytest.mark.parametrize("scales,out_kind", [("float", "int8"), ("tensor", "int8"), ("tensor", "fp16"),
                                             ("float", "fp32")])
def test_int8_gemv_variants_match_reference(seed, variant, m, n, k, bn, bk, scales, out_kind):
    from quamba.kernels.gemv import launch_int8_gemv

    x, w, out, ep, ref = _int8_case(m, n, k, scales, out_kind)
    launch_int8_gemv(x, w, out, ep, bn, bk, 4, variant)
    _check_int8(out, ref)


@pytest.mark.parametrize("variant", ["dp4a", "dp4a_pf"])
def test_int8_gemv_words_exact_int32(seed, variant):
    from quamba.kernels.gemv import launch_int8_gemv
    from quamba.kernels.int8_gemm import epilogue_args

    m, n, k = 3, 21, 1036
    x = torch.full((m, k), -128, dtype=torch.int8)
    x[1] = torch.randint(-128, 128, (k,), dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    w[0] = -128
    out = torch.full((m, n), float("nan"))
    launch_int8_gemv(x, w, out, epilogue_args(1.0, 1.0, None, None, m, n, out), 4, 256, 2, variant)
    assert torch.equal(out.double(), x.double() @ w.double().T)


def test_int8_gemv_unaligned_rows_fall_back(seed):
    from quamba.kernels.gemv import launch_int8_gemv

    x, w, out, ep, ref = _int8_case(2, 13, 64, "tensor", "fp32")
    base = torch.zeros(2, 70, dtype=torch.int8)
    base[:, 1:65] = x
    xs = base[:, 1:65]
    assert xs.data_ptr() % 4 != 0
    launch_int8_gemv(xs, w, out, ep, 4, 32, 4, "dp4a")
    _check_int8(out, ref)


def test_int8_gemv_plan_and_bad_variant(seed):
    from quamba.errors import InvalidArgumentError
    from quamba.kernels.gemv import INT8_VARIANTS, int8_gemv, int8_gemv_plan, launch_int8_gemv

    for n, k in [(10240, 2560), (192, 5120), (5120, 160), (2560, 5120)]:
        variant, bn, bk, warps = int8_gemv_plan(n, k)
        assert variant in INT8_VARIANTS and bn >= 1 and bk % 4 == 0 and warps in (1, 2, 4, 8)
    x, w, out, ep, ref = _int8_case(3, 24, 96, "float", "int8")
    int8_gemv(x, w, out, ep)
    _check_int8(out, ref)
    with pytest.raises(InvalidArgumentError):
        launch_int8_gemv(x, w, out, ep, 4, 32, 4, "dp8a")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["dp4a", "dp4a_pf"])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("n,k", [(10240, 2560), (192, 5120), (5120, 160), (2560, 5120), (10576, 2560),
                                 (50280, 2560)])
def test_int8_gemv_words_real_shapes_gpu(seed, variant, m, n, k):
    from quamba.kernels.gemv import launch_int8_gemv
    from quamba.kernels.int8_gemm import epilogue_args
    from quamba.ops import qreference as Q

    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
    out = torch.full((m, n), float("nan"), device="cuda")
    for bn, bk, warps in [(4, 1024, 4), (2, 2048, 8), (16, 256, 4)]:
        launch_int8_gemv(x, w, out, epilogue_args(1.0, 1.0, None, None, m, n, out),
                         max(1, bn // triton.next_power_of_2(m)), bk, warps, variant)
        torch.cuda.synchronize()
        assert torch.equal(out, Q.int_matmul(x, w).float())
    for scales, out_kind in [("tensor", "int8"), ("float", "fp16")]:
        x, w, out, ep, ref = _int8_case(m, n, k, scales, out_kind, device="cuda")
        launch_int8_gemv(x, w, out, ep, max(1, 4 // triton.next_power_of_2(m)), 1024, 4, variant)
        _check_int8(out, ref)
