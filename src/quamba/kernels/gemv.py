"""Weight-streaming GEMV for decode: ``y = x @ W^T (+ b)`` with few rows (M <= 8) in fp16/bf16/fp32.

At decode the linear layers read every weight once per token, so they are bound by memory
bandwidth; cuBLAS reaches only ~1.3 TB/s of the H200's ~4.2 TB/s at M=1. Each program here owns a
few output rows and streams their contiguous K-long weight rows in wide tiles, accumulating
elementwise in fp32 registers and reducing once at the end. Larger M goes to ``F.linear``
(cuBLAS), which is compute-efficient there. Reference: ``quamba.ops.reference.linear``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .int8_gemm import _epilogue

MAX_M = 8


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    n_ok = rn < N
    m_ok = rm < M
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    y = tl.sum(acc, axis=2)
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def fp16_plan(n: int, k: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_K, num_warps)`` for M <= 2, from a CUDA-graph sweep on the H200
    (benchmarks/gemv_sweep.py): two rows per program, long K tiles; 3.2 TB/s on in_proj of
    mamba-2.8b, 4.0 TB/s on its LM head. Autotuning at run time cannot pick these: outside a graph
    every candidate is launch-bound and times the same."""
    if k <= 256:
        return 4, 256, 2
    if n <= 512:
        return 1, 2048, 4
    return (2, 512, 2) if k <= 4096 else (2, 1024, 4)


def int8_plan(n: int, k: int) -> tuple[int, int, int]:
    """Plan of the elementwise int8 GEMV, from the same sweep."""
    if n <= 512:
        return 2, 2048, 4
    if k <= 256:
        return 16, 256, 4
    return (16, 256, 4) if k <= 4096 else (4, 1024, 4)


def gemv(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         block_n: int | None = None, block_k: int | None = None) -> torch.Tensor:
    """``x2 [M, K] @ weight[N, K]^T`` for M <= 8 through the Triton kernel."""
    m, k = x2.shape
    n = weight.shape[0]
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    y = torch.empty(m, n, device=x2.device, dtype=x2.dtype)
    bm = max(1, triton.next_power_of_2(m))
    bn, bk, warps = fp16_plan(n, k)
    if bm > 2:
        bn = max(1, bn * 2 // bm)
    bn, bk = block_n or bn, block_k or bk
    _gemv_kernel[(triton.cdiv(n, bn),)](x2, weight, bias if bias is not None else weight, y, m, n, k, x2.stride(0),
                                        weight.stride(0), y.stride(0), HAS_BIAS=bias is not None, BLOCK_M=bm,
                                        BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    return y


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` semantics; rows <= 8 stream the weight through the GEMV kernel."""
    lead = x.shape[:-1]
    m = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if m == 0 or m > MAX_M or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    return gemv(x.reshape(m, x.shape[-1]), weight, bias).reshape(*lead, weight.shape[0])


@triton.jit
def _int8_gemv_kernel(x_ptr, w_ptr, out_ptr, xs_ptr, xs_val, ws_ptr, ws_val, b_ptr, os_ptr, os_val,
                      M, N, K, stride_xm, stride_wn, stride_om,
                      XS_MODE: tl.constexpr, WS_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, OS_MODE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Int8 twin of ``_gemv_kernel``: exact int32 accumulation, then the shared int8 epilogue."""
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    n_ok = rn < N
    m_ok = rm < M
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0)
        acc += x.to(tl.int32)[:, None, :] * w.to(tl.int32)[None, :, :]
    _epilogue(tl.sum(acc, axis=2), rm[:, None], rn[None, :], M, N, out_ptr, stride_om,
              xs_ptr, xs_val, ws_ptr, ws_val, b_ptr, os_ptr, os_val, XS_MODE, WS_MODE, HAS_BIAS, OS_MODE)


def launch_int8_gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, ep: dict, block_n: int, block_k: int,
                     num_warps: int = 4) -> None:
    """Elementwise int8 GEMV (``ep`` from ``int8_gemm.epilogue_args``)."""
    m, k = x.shape
    n = w.shape[0]
    _int8_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w, out, ep["xs_ptr"], ep["xs_val"], ep["ws_ptr"], ep["ws_val"], ep["b_ptr"], ep["os_ptr"], ep["os_val"],
        m, n, k, x.stride(0), w.stride(0), out.stride(0), XS_MODE=ep["XS_MODE"], WS_MODE=ep["WS_MODE"],
        HAS_BIAS=ep["HAS_BIAS"], OS_MODE=ep["OS_MODE"], BLOCK_M=max(1, triton.next_power_of_2(m)),
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps)
