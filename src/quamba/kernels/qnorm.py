"""Norms of W8A8 blocks: residual add + RMSNorm with static int8 output, and the gated RMSNorm
whose gate ``z`` arrives as int8 (dequantized in the kernel, fp16 output).

As in ``quamba.ops.qreference``, the int8 norm normalizes the fp32 residual sum directly (no
rounding to the input dtype) and quantizes ``y / out_scale`` with round-half-to-even.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._small_common import load_scale, pow2, quantize_int8, scale_arg
from . import norm as N, reuse
from .norm import launch_gated, norm_warps, residual_sum, rows_of
from .pdl import pdl_args, pdl_sync
from .launch import launch_for_reuse
from ..errors import InvalidArgumentError

Tensor = torch.Tensor
Scale = float | Tensor


@triton.jit
def _qadd_rms_norm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, ro_ptr, os_ptr, os_val, D, sx, sr, sy, sro, eps,
                          HAS_RES: tl.constexpr, HAS_W: tl.constexpr, STORE_RES: tl.constexpr,
                          OS_M: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32) if HAS_W else 1.0
    out_scale = load_scale(os_ptr, os_val, offs, m, OS_M)
    pdl_sync(USE_PDL)
    s = residual_sum(x_ptr, r_ptr, row, sx, sr, offs, m, HAS_RES)
    if STORE_RES:
        tl.store(ro_ptr + row * sro + offs, s.to(ro_ptr.dtype.element_ty), mask=m)
    h = s.to(ro_ptr.dtype.element_ty).to(tl.float32)
    y = h * tl.rsqrt(tl.sum(h * h, axis=0) / D + eps) * w
    tl.store(y_ptr + row * sy + offs, quantize_int8(y, out_scale), mask=m)


def qadd_rms_norm(x: Tensor, residual: Tensor | None, weight: Tensor | None, eps: float, out_scale: Scale,
                  residual_in_fp32: bool = True) -> tuple[Tensor, Tensor]:
    """Residual add + RMSNorm with int8 output: ``(int8 normed, new residual)``; see ``qreference``."""
    pdl = pdl_args(x, eager=True)
    key = None
    if reuse.ENABLED:
        key = (reuse.signature(x), reuse.signature(residual), reuse.fixed(weight), eps, residual_in_fp32,
               pdl["USE_PDL"], reuse.scalar_or_fixed(out_scale))
        hit = N._REPLAYS.get_usable(key)
        if hit is not None:
            return N.replayed_norm(hit, x, residual)
    d = x.shape[-1]
    if not (residual is None or residual.shape == x.shape):
        raise InvalidArgumentError(f"residual {None if residual is None else tuple(residual.shape)} does not match x "
                                   f"{tuple(x.shape)}")
    if not (weight is None or weight.numel() == d):
        raise InvalidArgumentError(f"norm weight does not match {d} channels")
    os_, osv, osm = scale_arg(out_scale, d, "out_scale")
    x2 = rows_of(x, d)
    r2 = rows_of(residual, d) if residual is not None else None
    res_dtype = torch.float32 if residual_in_fp32 else (residual.dtype if residual is not None else x.dtype)
    store_res = residual is not None or res_dtype != x.dtype
    y = torch.empty(x.shape, device=x.device, dtype=torch.int8)
    res = torch.empty(x.shape, device=x.device, dtype=res_dtype) if store_res else x
    rows = x2.shape[0]
    if rows == 0 or d == 0:
        return y, res
    block = pow2(d, 16)
    made = launch_for_reuse(_qadd_rms_norm_kernel, (rows,),
                            x2, r2, weight, y, res if store_res else x2, os_, osv, d, x2.stride(0),
                            r2.stride(0) if r2 is not None else 0, d, d if store_res else x2.stride(0), float(eps),
                            HAS_RES=residual is not None, HAS_W=weight is not None, STORE_RES=store_res, OS_M=osm,
                            BLOCK=block, num_warps=norm_warps(block), **pdl)
    if key is not None:
        N.keep_norm(key, made, x, residual, y, res if store_res else None, [weight, out_scale])
    return y, res


def qgated_rms_norm(y: Tensor, z_q: Tensor, z_scale: Scale, weight: Tensor | None, eps: float, group_size: int,
                    out_dtype: torch.dtype = torch.float16) -> Tensor:
    """Mamba2 gated RMSNorm with an int8 gate; see ``qreference.qgated_rms_norm``."""
    if z_q.dtype != torch.int8:
        raise InvalidArgumentError(f"z_q must be int8, got {z_q.dtype}")
    zs, zsv, zsm = scale_arg(z_scale, y.shape[-1], "z_scale")
    return launch_gated(y, z_q, weight, eps, group_size, out_dtype, round_mid=False, zs=zs, zs_val=zsv, zs_mode=zsm)
