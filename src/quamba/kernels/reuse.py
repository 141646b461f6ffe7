"""Replaying a wrapper's launches without redoing its host work (eager prefill).

An eager prefill calls every layer's ops with the same shapes; each call checks its inputs, plans its
grid and builds 20-60 kernel arguments again, which made the prefill host-bound. A wrapper can instead
record the launches of one call (``launch_for_reuse``) together with the tensors that change from call
to call (its inputs, and the outputs and scratch it allocates) and keep them under a key that holds
everything else the launches depend on: the shapes, strides, dtypes, devices and alignments of those
tensors (``signature``), the addresses, shapes and dtypes of the long-lived ones (``fixed``: weights,
parameters, scale tensors) and every scalar.
A later call with the same key allocates new outputs and relaunches with only those pointers replaced.

The key holds the long-lived tensors by address, not by identity: a relaunch reads memory only through
the pointers of the tensors that the current call passes, so equal addresses are all it needs (a tensor
freed and another allocated at its address is read as the new one, exactly as a fresh launch would). A
recording is refused (the wrapper just keeps its normal path) when a pointer argument belongs to
neither group (a temporary copy made in the call) or two per-call tensors share an address (the slots
would be ambiguous). ``QUAMBA_REPLAY=0`` turns replays off (for A/B measurements).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from ..models.stamp import bump_module_epoch
from .launch import Relaunch, current_device_index, hooks_set, interpreting

Tensor = torch.Tensor

MAX_ENTRIES = 4096  # per table: all layers of a model at several prompt lengths (an entry is ~1 KB)
# The one switch, read by every wrapper at each call (off under the interpreter, where launches are not cached;
# tests switch it on with a stand-in launcher). QUAMBA_REPLAY=0 turns it off for a process (A/B runs).
ENABLED = os.environ.get("QUAMBA_REPLAY", "1") != "0" and not interpreting()


def signature(t: Tensor | None) -> tuple | None:
    """What a launch depends on in a per-call tensor: shape, strides, dtype, device and 16-byte alignment."""
    if t is None:
        return None
    return t.shape, t.stride(), t.dtype, t.get_device(), t.data_ptr() & 15


def fixed(t: Tensor | None) -> tuple | None:
    """A long-lived tensor in a key: its address, shape, strides and dtype."""
    if t is None:
        return None
    return t.data_ptr(), t.shape, t.stride(), t.dtype


def scalar_or_fixed(v):
    """A scale argument in a key: a number by value, a tensor by ``fixed``."""
    return fixed(v) if isinstance(v, Tensor) else v


class Replay:
    """The recorded launches of one call: ``run(inputs)`` allocates the outputs and relaunches."""

    __slots__ = ("launches", "allocs", "device")

    def __init__(self, launches: tuple, allocs: tuple, device: torch.device):
        self.launches = launches  # ((Relaunch, ((argument position, per-call tensor index), ...)), ...)
        self.allocs = allocs  # (shape, dtype) of each tensor the call allocates, in order
        self.device = device

    @property
    def device_index(self) -> int:
        return self.launches[0][0].device

    def run(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        made = [torch.empty(shape, dtype=dtype, device=self.device) for shape, dtype in self.allocs]
        ptrs = [t.data_ptr() for t in inputs] + [t.data_ptr() for t in made]
        for relaunch, slots in self.launches:
            args = list(relaunch.args)
            for pos, i in slots:
                args[pos] = ptrs[i]
            relaunch.fire(args)
        return made


def record(launches: Sequence[Relaunch | None], inputs: Sequence[Tensor], allocated: Sequence[Tensor],
           constants: Sequence[Tensor]) -> Replay | None:
    """The replay of a call that launched ``launches`` with per-call ``inputs`` and ``allocated`` tensors and
    long-lived ``constants`` (whose addresses the caller's key holds); None when it cannot be replayed."""
    if not launches or any(r is None for r in launches):
        return None
    tensors = list(inputs) + list(allocated)
    index = {t.data_ptr(): i for i, t in enumerate(tensors)}
    if len(index) != len(tensors):
        return None
    fixed = {c.data_ptr() for c in constants}
    recorded = []
    for r in launches:
        slots = []
        for pos in r.pointers:
            p = r.args[pos]
            if p in index:
                slots.append((pos, index[p]))
            elif p not in fixed:
                return None
        recorded.append((r, tuple(slots)))
    allocs = tuple((tuple(t.shape), t.dtype) for t in allocated)
    return Replay(tuple(recorded), allocs, tensors[0].device)


class ReplayTable(dict):
    """key -> ``Replay`` (or another replay with a ``device_index``); cleared when it reaches ``MAX_ENTRIES``
    (distinct prompt lengths)."""

    def __init__(self):
        super().__init__()
        _TABLES.append(self)

    def get_usable(self, key: tuple):
        """The replay under ``key``, unless launch hooks are installed (launches must then take Triton's path)
        or another device is current."""
        hit = self.get(key)
        if hit is None or hooks_set() or hit.device_index != current_device_index():
            return None
        return hit

    def keep(self, key: tuple, replay) -> None:
        if replay is None:
            return
        if len(self) >= MAX_ENTRIES:
            self.clear()
        self[key] = replay


_TABLES: list[ReplayTable] = []


def forget() -> None:
    """Drop every recorded replay, of ops and of blocks (after changing a launch setting that their keys do not
    hold, such as ``pdl.EAGER``)."""
    for table in _TABLES:
        table.clear()
    bump_module_epoch()
