"""Int8 embedding lookup: ``w_q[ids] * row_scales[ids]`` gathered and dequantized in one pass.

Out-of-range ids cannot be reported without a host sync, so their rows come out as NaN (negative
ids wrap around like torch indexing, as in the reference).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import InvalidArgumentError
from .pdl import pdl_args, pdl_sync
from .launch import launch, cdiv, next_pow2

Tensor = torch.Tensor
_FLOAT_OUT = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _qembedding_kernel(ids_ptr, w_ptr, s_ptr, out_ptr, V, D, stride_ids, stride_w, stride_s, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_sync(USE_PDL)
    tok = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs < D
    idx = tl.load(ids_ptr + tok * stride_ids).to(tl.int64)
    idx = tl.where(idx < 0, idx + V, idx)
    valid = (idx >= 0) & (idx < V)
    row = tl.where(valid, idx, 0)
    q = tl.load(w_ptr + row * stride_w + offs, mask=d_ok, other=0)
    s = tl.load(s_ptr + row * stride_s).to(tl.float32)
    y = q.to(tl.float32) * s
    y = tl.where(valid, y, float("nan"))
    tl.store(out_ptr + tok.to(tl.int64) * D + offs, y.to(out_ptr.dtype.element_ty), mask=d_ok)


def qembedding(ids: Tensor, w_q: Tensor, row_scales: Tensor, out_dtype: torch.dtype = torch.float16) -> Tensor:
    """Rows of the int8 table ``w_q [V, D]`` times their fp32 scales ``row_scales [V]``; ids of any shape."""
    if ids.dtype not in (torch.int64, torch.int32) or w_q.dtype != torch.int8 or w_q.dim() != 2:
        raise InvalidArgumentError(f"qembedding needs integer ids and an int8 [V, D] table, "
                                   f"got {ids.dtype} ids and a {w_q.dtype} table of shape {tuple(w_q.shape)}")
    if row_scales.numel() != w_q.shape[0]:
        raise InvalidArgumentError(f"row_scales has {row_scales.numel()} entries for {w_q.shape[0]} rows")
    if out_dtype not in _FLOAT_OUT:
        raise InvalidArgumentError(f"out_dtype must be one of {_FLOAT_OUT}, got {out_dtype}")
    if ids.device != w_q.device or row_scales.device != w_q.device:
        raise InvalidArgumentError("ids, w_q and row_scales must be on one device")
    v, d = w_q.shape
    flat = ids.reshape(-1)
    w = w_q if w_q.stride(1) == 1 else w_q.contiguous()
    scales = row_scales.reshape(-1)
    out = torch.empty((flat.numel(), d), dtype=out_dtype, device=w_q.device)
    if flat.numel() and d:
        block = min(next_pow2(d), 1024)
        launch(_qembedding_kernel, (flat.numel(), cdiv(d, block)),
               flat, w, scales, out, v, d, flat.stride(0), w.stride(0), scales.stride(0), BLOCK_D=block, num_warps=4,
               **pdl_args(w_q))
    return out.reshape(*ids.shape, d)
