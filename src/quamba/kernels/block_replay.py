"""Replaying a whole block's prefill: one host call fires the launches of all its ops.

The op replays (``reuse``) still run each op's Python: the module's forward, the dispatcher, the op's key
and its allocations, ~20-70 us of host time per op, ~10 ops per layer. An eager prefill of a ~2.7B model
was host-bound for it. A block whose GPU work is all replayed launches (the W8A8 blocks) can be recorded
once as the sequence of those launches and replayed as one list:

- recording runs the block normally under a ``TorchDispatchMode`` that notes every allocation
  (``empty``) and ``copy_``, and refuses any other torch op that is not a view; ``launch.recording`` notes
  every fired replay launch with its pointer arguments, and refuses launches that are not replays;
- each pointer is resolved to a block input, a tensor allocated in the call (with a byte offset) or,
  failing both, a long-lived tensor (a weight, a scale), kept by address as the op replays keep it;
- the allocations become one workspace whose regions are reused once a tensor is dead (first fit over
  the tensors' lifetimes in the call), apart from the block's outputs, allocated on their own;
- a replay allocates the workspace and the outputs, puts the pointers in and fires the launches.

The key holds the inputs' signatures (``reuse.signature``), the device, its current stream, the dispatch
backend and ``module_epoch`` (parameters, buffers or submodules registered or assigned, a quantized
module's attributes or scales set); a replay also checks that the block's parameters and buffers have the
addresses and versions they had when recorded. A block is recorded from its second call with a key (the
first call of an op compiles, tunes and records the op's own replay); one that cannot be recorded is tried
``MAX_TRIES`` times, then runs normally. Launch hooks (profilers) turn the replays off, as for the op replays;
``QUAMBA_BLOCK_REPLAY=0`` (or ``ENABLED = False``) turns block replays off and leaves the op replays on.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import launch as L
from . import reuse
from ..models.stamp import module_epoch, tensor_stamp
from ..ops.dispatch import get_backend

Tensor = torch.Tensor
aten = torch.ops.aten

ENABLED = os.environ.get("QUAMBA_BLOCK_REPLAY", "1") != "0"  # read at each call; off also when reuse.ENABLED is
MAX_TRIES = 3
ALIGN = 512  # the caching allocator's block alignment: a region keeps every alignment a launch was keyed on
_EMPTY = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.new_empty.default}
_VIEWS_TOO = {aten._unsafe_view.default, aten.detach.default, aten.lift_fresh.default}


class _Refused(Exception):
    pass


class _Watch(TorchDispatchMode):
    """Runs the ops of a recorded call, adding allocations and copies to ``events``; refuses other ops."""

    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _EMPTY:
            self.events.append(("alloc", out))
        elif func is aten.copy_.default:
            self.events.append(("copy", args[0], args[1]))
        elif not (func.is_view or func in _VIEWS_TOO):
            self.events.append(("fail", f"torch op {func}"))
        return out


def _span(t: Tensor) -> int:
    """Bytes from a tensor's first element to the end of its last."""
    if t.numel() == 0:
        return 0
    return (sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1) * t.element_size()


class BlockReplay:
    """The launches (and copies) of one recorded block call; ``run(inputs)`` returns the block's outputs.

    Pointer sources: ``inputs`` (indices ``0..n-1``), the workspace (``n``), then the outputs.
    """

    __slots__ = ("steps", "workspace", "outs", "results", "checks", "device", "device_index")

    def __init__(self, steps, workspace, outs, results, checks, device):
        self.steps = steps  # ("fire", Relaunch, ((arg position, source, offset), ...)) | ("copy", dst, src, bytes)
        self.workspace = workspace  # bytes
        self.outs = outs  # (shape, dtype) of each output allocation
        self.results = results  # per returned value: ("in", i) | ("out", j) | ("none",)
        self.checks = checks  # ((tensor, tensor_stamp), ...): the block's parameters and buffers
        self.device = device
        self.device_index = L.current_device_index()  # the launches fire on the device current when recorded

    def current(self) -> bool:
        """Whether the block's parameters and buffers still have the addresses and versions recorded."""
        return all(tensor_stamp(t) == stamp for t, stamp in self.checks)

    def run(self, inputs: Sequence[Tensor | None]) -> list[Tensor | None]:
        dev = self.device
        ws = torch.empty(self.workspace, dtype=torch.uint8, device=dev) if self.workspace else None
        outs = [torch.empty(shape, dtype=dtype, device=dev) for shape, dtype in self.outs]
        base = [0 if t is None else t.data_ptr() for t in inputs]
        base.append(0 if ws is None else ws.data_ptr())
        base += [t.data_ptr() for t in outs]
        for step in self.steps:
            if step[0] == "fire":
                relaunch, slots = step[1], step[2]
                args = list(relaunch.args)
                for pos, src, off in slots:
                    args[pos] = base[src] + off
                relaunch.fire(args)
            else:
                _, dst, src, nbytes = step
                _bytes(dst, inputs, ws, outs, nbytes).copy_(_bytes(src, inputs, ws, outs, nbytes))
        res = []
        for r in self.results:
            res.append(None if r[0] == "none" else inputs[r[1]] if r[0] == "in" else outs[r[1]])
        return res


def _bytes(ref: tuple, inputs, ws, outs, nbytes: int) -> Tensor:
    src, off = ref
    n = len(inputs)
    t = inputs[src] if src < n else ws if src == n else outs[src - n - 1]
    return t.view(-1).view(torch.uint8)[off:off + nbytes]


class _Build:
    """Turns the events of a recorded call into a ``BlockReplay`` (raises ``_Refused`` when it cannot)."""

    def __init__(self, inputs: Sequence[Tensor | None], events: list, results: Sequence):
        self.inputs = inputs
        self.n = len(inputs)
        self.allocs: list[Tensor] = []  # every tensor allocated in the call, in order
        self.alloc_at: list[int] = []
        self.last_use: dict[int, int] = {}
        self.events = events
        self.results = results

    def locate(self, p: int, step: int, required: bool) -> tuple[int, int] | None:
        """``(source, offset)`` of address ``p``: an input (by index) or an allocation (``n + 1 + k``, resolved
        to the workspace later); None for an address in neither (a long-lived tensor)."""
        for i, t in enumerate(self.inputs):
            if t is not None and t.data_ptr() <= p < t.data_ptr() + max(_span(t), 1):
                return i, p - t.data_ptr()
        for k in range(len(self.allocs) - 1, -1, -1):
            a = self.allocs[k]
            if a.data_ptr() <= p < a.data_ptr() + max(a.untyped_storage().nbytes(), 1):
                self.last_use[k] = step
                return self.n + 1 + k, p - a.data_ptr()
        if required:
            raise _Refused("a copied tensor is neither an input nor allocated in the call")
        return None

    def build(self, device: torch.device, checks: tuple) -> BlockReplay:
        steps = []
        for step, ev in enumerate(self.events):
            kind = ev[0]
            if kind == "fail":
                raise _Refused(ev[1])
            if kind == "alloc":
                self.allocs.append(ev[1])
                self.alloc_at.append(step)
            elif kind == "fire":
                relaunch, args = ev[1], ev[2]
                slots = []
                for pos in relaunch.pointers:
                    where = self.locate(args[pos], step, False)
                    if where is not None:
                        slots.append((pos, *where))
                steps.append(["fire", relaunch, slots])
            else:
                dst, src = ev[1], ev[2]
                if not (dst.dtype == src.dtype and dst.shape == src.shape and dst.is_contiguous()
                        and src.is_contiguous()):
                    raise _Refused("a copy between tensors of different layouts")
                steps.append(["copy", self.locate(dst.data_ptr(), step, True),
                              self.locate(src.data_ptr(), step, True), dst.numel() * dst.element_size()])
        results, outs, out_of = self._results(len(self.events))
        offsets, size = self._pack(out_of)

        def source(src: int, off: int) -> tuple[int, int]:
            if src <= self.n:
                return src, off
            k = src - self.n - 1
            if k in out_of:
                return self.n + 1 + out_of[k], off
            return self.n, offsets[k] + off

        final = []
        for st in steps:
            if st[0] == "fire":
                final.append(("fire", st[1], tuple((pos, *source(src, off)) for pos, src, off in st[2])))
            else:
                final.append(("copy", source(*st[1]), source(*st[2]), st[3]))
        return BlockReplay(tuple(final), size, tuple(outs), tuple(results), checks, device)

    def _results(self, end: int):
        """The returned tensors: inputs returned as they are, or whole allocations (allocated on their own)."""
        results, outs, out_of = [], [], {}
        for r in self.results:
            if r is None:
                results.append(("none",))
                continue
            ins = [i for i, t in enumerate(self.inputs) if t is r]
            if ins:
                results.append(("in", ins[0]))
                continue
            where = self.locate(r.data_ptr(), end, False)
            k = None if where is None else where[0] - self.n - 1
            if (k is None or k < 0 or where[1] != 0 or not r.is_contiguous()
                    or r.numel() * r.element_size() != self.allocs[k].untyped_storage().nbytes()):
                raise _Refused("a block output is not a whole tensor allocated in the call")
            out_of[k] = len(outs)
            outs.append((tuple(r.shape), r.dtype))
            results.append(("out", out_of[k]))
        return results, outs, out_of

    def _pack(self, skip: dict) -> tuple[dict[int, int], int]:
        """Workspace offsets of the used allocations (not ``skip``): first fit, a region free again after the
        last step that uses its tensor."""
        live: list[tuple[int, int, int]] = []  # (offset, bytes, last use)
        offsets, size = {}, 0
        for k, a in enumerate(self.allocs):
            if k in skip or k not in self.last_use:
                continue
            start, nbytes = self.alloc_at[k], -(-max(a.untyped_storage().nbytes(), 1) // ALIGN) * ALIGN
            live = sorted((o, b, e) for o, b, e in live if e >= start)
            at = 0
            for o, b, _ in live:
                if at + nbytes <= o:
                    break
                at = max(at, o + b)
            offsets[k] = at
            live.append((at, nbytes, self.last_use[k]))
            size = max(size, at + nbytes)
        return offsets, size


def _record(module: torch.nn.Module, inputs: Sequence[Tensor | None], call: Callable, device: torch.device):
    """Runs ``call()`` while recording; returns its results and the replay (None when refused)."""
    events: list = []
    checks = tuple((t, tensor_stamp(t)) for t in (*module.parameters(), *module.buffers()))
    L.recording = events
    try:
        with _Watch(events):
            results = call()
    finally:
        L.recording = None
    flat = list(results) if isinstance(results, tuple) else [results]
    try:
        replay = _Build(inputs, events, flat).build(device, checks)
    except _Refused:
        replay = None
    return results, replay


def run_block(module: torch.nn.Module, inputs: Sequence[Tensor | None], call: Callable):
    """``call()`` (the block's forward on ``inputs``, the tensors that change between calls), replayed when an
    earlier call with the same key was recorded. ``call`` returns a tensor or a tuple of tensors / None."""
    x = inputs[0]
    if not (ENABLED and reuse.ENABLED) or L.hooks_set():
        return call()
    device = x.device
    key = (tuple(map(reuse.signature, inputs)), L.current_stream(device), get_backend(), module_epoch())
    table = module.__dict__.setdefault("_block_replays", {})
    hit = table.get(key)
    if isinstance(hit, BlockReplay):
        if hit.device_index == L.current_device_index() and hit.current():
            res = hit.run(inputs)
            return tuple(res) if len(res) != 1 else res[0]
        hit = 0
    if hit is None or hit >= MAX_TRIES:
        if hit is None:
            _keep(table, key, 0)
        return call()
    results, replay = _record(module, inputs, call, device)
    _keep(table, key, replay if replay is not None else hit + 1)
    return results


def _keep(table: dict, key: tuple, value) -> None:
    """A table entry: a ``BlockReplay``, or how many recordings were tried (0: seen once, not yet tried)."""
    if key not in table and len(table) >= reuse.MAX_ENTRIES:
        table.clear()
    table[key] = value
