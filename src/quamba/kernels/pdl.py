"""Programmatic dependent launch (PDL, Hopper and newer) for the decode and prefill kernels.

A decode step is a chain of short kernels; between two of them the GPU normally drains the first
grid, then launches, ramps up and starts loading for the second. Launched with PDL, the next grid's
programs start as soon as every program of the current one has begun (``launch_dependents``), fill
the SMs that its last wave leaves idle, load what does not depend on the previous kernel and block in
``wait`` until the previous grid has finished and its writes are visible. Every kernel launched this
way calls ``pdl_sync`` before its first read of an activation or its first write, so the chain keeps
stream order for every tensor that the kernels share. Since a grid passes its own ``wait`` only
after the grid before it has finished, a kernel may read before ``pdl_sync`` anything written two or
more launches back: weights, and the conv and SSM states that only the kernel itself wrote, in the
previous decode step.

The prefill kernels (GEMM, scans, SSD, conv, norms, Hadamard) call ``pdl_sync`` first thing, so they can
launch with PDL eagerly as well: once the block replays keep the GPU fed, an eager prefill is a queue of
~640 launches, and PDL overlaps each one's launch and ramp with the tail of the one before.

``pdl_args(t, eager)`` gives the launch keywords: PDL on devices of compute capability >= 9 when Triton
has the grid-dependency intrinsics, under graph capture (the decode step) and, for ``eager`` kernels,
outside one (unless ``QUAMBA_PDL_EAGER=0``); off under the interpreter, on the CPU and when the
environment sets ``QUAMBA_PDL=0``. The fused decode kernels read states before their ``pdl_sync`` and
launch with PDL only under capture, where the launches around them are known.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # Triton without grid-dependency control
    gdc_launch_dependents = gdc_wait = None

_OFF = {"USE_PDL": False}
_ON = {"USE_PDL": True, "launch_pdl": True}


@triton.jit
def pdl_sync(USE_PDL: tl.constexpr):
    """Wait for the previous grid (its writes visible), then let the next grid's programs launch."""
    if USE_PDL:
        gdc_wait()
        gdc_launch_dependents()


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


# Eager launches with PDL too (``QUAMBA_PDL_EAGER=0``: only under capture). Read at each launch; the replays keep
# the setting they were recorded with (``reuse.forget`` drops them).
EAGER = os.environ.get("QUAMBA_PDL_EAGER", "1") != "0"


def pdl_enabled(device: torch.device, eager: bool = False) -> bool:
    """Whether kernels on ``device`` launch with PDL: under capture, and eagerly too for ``eager`` kernels (those
    that call ``pdl_sync`` before any other access)."""
    if device.type != "cuda" or gdc_wait is None or not (eager and EAGER or torch.cuda.is_current_stream_capturing()):
        return False
    if os.environ.get("QUAMBA_PDL", "1") == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def pdl_args(t: torch.Tensor, eager: bool = False) -> dict:
    """Launch keywords for a PDL-aware kernel whose tensors live where ``t`` does (``eager``: see ``pdl_enabled``)."""
    return _ON if pdl_enabled(t.device, eager) else _OFF
