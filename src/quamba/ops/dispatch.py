"""The one place that decides, per op, whether the plain-torch reference or a Triton kernel runs.

Every op the models call is looked up here by name. A Triton implementation registered in
``TRITON_KERNELS`` runs when the backend allows it and the first tensor argument lives on a CUDA
device; otherwise the reference in ``quamba.ops.reference`` (or ``quamba.ops.qreference``) runs.
The backend comes from ``set_backend`` or the ``QUAMBA_BACKEND`` environment variable
(``auto`` — the default —, ``torch`` or ``triton``).
"""
from __future__ import annotations

import functools
import importlib
import os
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from ..errors import InvalidArgumentError

BACKENDS = ("auto", "torch", "triton")

# op name -> "module:function" of its Triton implementation (same signature as the reference).
TRITON_KERNELS: dict[str, str] = {
    "linear": "quamba.kernels.gemv:linear",
    "add_rms_norm": "quamba.kernels.norm:add_rms_norm",
    "gated_rms_norm": "quamba.kernels.norm:gated_rms_norm",
    "causal_conv1d": "quamba.kernels.conv1d:causal_conv1d",
    "causal_conv1d_update": "quamba.kernels.conv1d:causal_conv1d_update",
    "selective_scan": "quamba.kernels.selective_scan:selective_scan",
    "selective_state_update": "quamba.kernels.state_update:selective_state_update",
    "ssd_chunked": "quamba.kernels.ssd:ssd_chunked",
    "ssd_state_update": "quamba.kernels.state_update:ssd_state_update",
    "int8_linear": "quamba.kernels.int8_gemm:int8_linear",
    "qadd_rms_norm": "quamba.kernels.qnorm:qadd_rms_norm",
    "qgated_rms_norm": "quamba.kernels.qnorm:qgated_rms_norm",
    "qcausal_conv1d": "quamba.kernels.qconv1d:qcausal_conv1d",
    "qcausal_conv1d_update": "quamba.kernels.qconv1d:qcausal_conv1d_update",
    "qselective_scan": "quamba.kernels.selective_scan:qselective_scan",
    "qselective_state_update": "quamba.kernels.state_update:qselective_state_update",
    "qssd_chunked": "quamba.kernels.ssd:qssd_chunked",
    "qssd_state_update": "quamba.kernels.state_update:qssd_state_update",
    "hadamard_quant": "quamba.kernels.hadamard:hadamard_quant",
    "qembedding": "quamba.kernels.qembedding:qembedding",
    "conv_xproj_step": "quamba.kernels.mamba1_step:conv_xproj_step",
    "dtproj_state_step": "quamba.kernels.mamba1_step:dtproj_state_step",
    "qconv_xproj_step": "quamba.kernels.mamba1_step:qconv_xproj_step",
    "qdtproj_state_step": "quamba.kernels.mamba1_step:qdtproj_state_step",
    "in_proj_conv_step": "quamba.kernels.mamba2_step:in_proj_conv_step",
    "ssd_gate_step": "quamba.kernels.mamba2_step:ssd_gate_step",
    "rms_linear": "quamba.kernels.mamba2_step:rms_linear",
    "qssd_gate_step": "quamba.kernels.mamba2_step:qssd_gate_step",
    "qin_proj_conv_step": "quamba.kernels.qin_proj_step:qin_proj_conv_step",
    "rms_hadamard_quant": "quamba.kernels.hadamard:rms_hadamard_quant",
    "linear_add_norm": "quamba.kernels.gemv:linear_add_norm",
}

_backend = os.environ.get("QUAMBA_BACKEND", "auto")


def set_backend(name: str) -> None:
    """Choose ``auto`` (Triton on CUDA tensors when available), ``torch`` (always reference) or ``triton``."""
    global _backend
    if name not in BACKENDS:
        raise InvalidArgumentError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Temporarily run with another backend."""
    old = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _load(target: str) -> Callable:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def kernel_for(name: str, x: torch.Tensor) -> Callable | None:
    """The Triton implementation of ``name`` to use for tensor ``x``, or None for the reference."""
    if _backend == "torch" or name not in TRITON_KERNELS:
        return None
    if not x.is_cuda and not (_backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    if not triton_available():
        return None
    return _load(TRITON_KERNELS[name])


def dispatched(name: str, reference: Callable) -> Callable:
    """Wrap ``reference`` so that calls go to the registered kernel when one applies."""

    @functools.wraps(reference)
    def op(*args, **kwargs):
        impl = kernel_for(name, args[0])
        return (impl or reference)(*args, **kwargs)

    op.reference = reference  # type: ignore[attr-defined]
    return op
