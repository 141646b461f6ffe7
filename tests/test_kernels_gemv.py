"""The decode GEMV kernel against F.linear (interpreter on CPU, real shapes on GPU)."""
import pytest
import torch
import torch.nn.functional as F

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
