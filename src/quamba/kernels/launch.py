"""Kernel launches with less host time than ``kernel[grid](...)``: the compiled kernel is cached.

An eager prefill issues hundreds of short kernels, and Triton's generic launch path (binding the
arguments, building a specialization string, looking up the compiled kernel) costs 30-50 us of
Python per launch with the 20-30 arguments our kernels take; on the H200 that made the prefill
host-bound. ``launch`` keys the compiled kernel on exactly what Triton specializes a launch on:

- constexpr arguments and compile options (``num_warps``, ``launch_pdl``, ...) by value;
- tensors by dtype, the data pointer's offset from 16-byte alignment and whether they are on a GPU;
- ints by ``== 1``, ``% 16 == 0`` and the 32-bit range; bools and None by value; floats by type;

Each pattern of a launch (kernel, positional argument types, keyword names) gets one generated
function that returns the key and the kernel's full argument list without a per-argument Python
call, and a hit launches through the compiled kernel's own launcher. Tensors reach that launcher as
their data pointers (ints): given a tensor, Triton's C launcher calls its ``data_ptr`` method and asks
the driver (``cuPointerGetAttribute``) whether the pointer is device memory, for every pointer of every
launch. That check is kept where it matters: a tensor off the GPU changes the key, so its launch misses
and takes the generic path, which raises Triton's own error. A miss
(or anything unusual: the interpreter, launch hooks, an autotuner) goes through
``kernel[grid](...)``, which compiles and caches as usual. Results cannot differ from the generic
path: the same compiled binary runs with the same arguments.
"""
from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Sequence

import torch
from triton.runtime.jit import JITFunction

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_Tensor, _Parameter = torch.Tensor, torch.nn.Parameter

try:
    from triton import knobs as _knobs
except ImportError:  # older Triton: no launch hooks to honour
    _knobs = None

try:
    _raw_stream = torch._C._cuda_getCurrentRawStream
    _current_device = torch._C._cuda_getDevice
except AttributeError:  # a CPU-only torch
    _raw_stream = _current_device = None

_compiled: dict[tuple, tuple] = {}
# launch pattern -> (its generated key function, positions of its tensor arguments), or None: not cached
_slots: dict[tuple, tuple[Callable, tuple[int, ...]] | None] = {}
_enabled = not _INTERPRET and _raw_stream is not None
# While a block's launches are recorded for replay (``block_replay``): the events of the call in order. A
# replayable launch adds ``("fire", Relaunch, args)``; a launch that cannot be replayed adds ``("fail", why)``.
recording: list | None = None


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (read once: it must be set before Triton loads)."""
    return _INTERPRET


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints (``triton.cdiv`` is a constexpr function, ~2 us per host call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1), without Triton's constexpr-function overhead."""
    return 1 << (int(n) - 1).bit_length() if n > 1 else 1


def current_device_index() -> int:
    """The index of the current CUDA device (relaunches must fire from the device they were compiled on)."""
    return _current_device()


def current_stream(device: torch.device) -> int:
    """The raw handle of ``device``'s current CUDA stream (0 for a CPU device)."""
    if device.type != "cuda" or _raw_stream is None:
        return 0
    return _raw_stream(device.index if device.index is not None else _current_device())


# An int's specialization (== 1, % 16 == 0, 32-bit range) as one expression: ``a >> 31`` is 0 for
# 0 <= a < 2**31, -1 for -2**31 <= a < 0 and something else outside the int32 range (finer than
# Triton's i64/u64 split, which is safe: a finer key can only miss).
_INT_CLASS = "(({a} == 1) + 2 * ({a} & 15 == 0) + 4 * ({a} >> 31))"


def _is_tensor(t: type) -> bool:
    return t is _Tensor or t is _Parameter


def _part(a: str, t: type, const: bool, ptr: str | None = None) -> str | None:
    """The key expression of one argument named ``a`` of type ``t`` (None: it adds nothing); ``ptr`` names
    a tensor's data pointer when it is already computed."""
    if _is_tensor(t):
        return f"{a}.dtype, {ptr or a + '.data_ptr()'} & 15, {a}.is_cuda"
    if t is int and not const:
        return _INT_CLASS.format(a=a)
    if t is float and not const:
        return None
    return a


def _make_slot(kernel, n: int, types: tuple[type, ...], kw: tuple[str, ...]) -> Callable | None:
    """For launches of ``kernel`` with ``n`` positional arguments of ``types`` and keywords ``kw``, one
    generated function ``(args, kwargs) -> (key, all kernel arguments in order, tensors as data pointers)``;
    None when the pattern is not for the cache: the keywords must be the constexpr parameters past the
    positional ones (keyed by value) and compile options."""
    names = [p.name for p in kernel.params]
    consts = [p.is_constexpr for p in kernel.params]
    if n > len(names) or any(not c or name not in kw for name, c in zip(names[n:], consts[n:])):
        return None
    if any(k in names[:n] for k in kw):
        return None
    pos = [f"a{i}" for i in range(n)]
    ptrs = [f"p{i}" if _is_tensor(t) else None for i, t in enumerate(types)]
    kws = [f"k{i}" for i in range(len(names) - n)]
    parts = [_part(a, t, c, p) for a, t, c, p in zip(pos, types, consts, ptrs)]
    options = sorted(k for k in kw if k not in names)
    body = [f"    {''.join(a + ', ' for a in pos)}= a"] if n else []
    body += [f"    {p} = {a}.data_ptr()" for a, p in zip(pos, ptrs) if p]
    body += [f"    {k} = kw[{name!r}]" for k, name in zip(kws, names[n:])]
    key = [p for p in parts if p is not None] + kws + [f"kw[{o!r}]" for o in options]
    launched = [p or a for a, p in zip(pos, ptrs)] + kws
    body.append(f"    return ({''.join(k + ', ' for k in key)}), ({''.join(f + ', ' for f in launched)})")
    scope: dict[str, Any] = {}
    exec("def go(a, kw):\n" + "\n".join(body) + "\n", scope)
    return scope["go"]


def _key(args: Sequence[Any], is_const: Sequence[bool]) -> tuple:
    """Per argument, what Triton's specialization depends on (finer is safe: a miss only costs the
    generic path), behind the tuple of the arguments' types."""
    types = tuple(map(type, args))
    parts = [_part(f"a[{i}]", t, c) for i, (t, c) in enumerate(zip(types, is_const))]
    scope = {"a": list(args)}
    return types, eval(f"({''.join(p + ', ' for p in parts if p is not None)})", scope)


def spec_key(value: Any, constexpr: bool = False) -> tuple:
    """``_key`` of one argument (for tests and diagnostics)."""
    return _key([value], [constexpr])


def hooks_set() -> bool:
    """Whether a launch hook is installed (Triton keeps them in ``HookChain`` objects, empty by default)."""
    if _knobs is None:
        return False
    hooks = (_knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook)
    return any(h is not None and getattr(h, "calls", True) for h in hooks)


class Relaunch(NamedTuple):
    """A launch from the cache kept for reuse: the compiled kernel's launcher, the 3-D grid and the full
    argument list with tensors as data pointers. ``fire(args)`` launches it with ``args`` (this list with
    other pointers put in) on the device's current stream."""

    run: Callable
    function: Any
    packed: Any
    grid: tuple[int, int, int]
    args: tuple
    device: int
    pointers: tuple[int, ...]  # positions in ``args`` that hold tensors' data pointers

    def fire(self, args: Sequence[Any]) -> None:
        if recording is not None:
            recording.append(("fire", self, tuple(args)))
        g = self.grid
        self.run(g[0], g[1], g[2], _raw_stream(self.device), self.function, self.packed, None, None, None, *args)


def launch(kernel, grid: Sequence[int], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)`` for a ``triton.jit`` kernel, through the compiled-kernel cache."""
    if recording is not None:
        recording.append(("fail", f"{getattr(kernel, '__name__', kernel)} launched without a replay"))
    found = _resolve(kernel, grid, args, kwargs)
    if found is not None:
        (run, function, packed), full, device, _ = found
        g = tuple(grid)
        run(g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1, _raw_stream(device), function, packed,
            None, None, None, *full)


def launch_for_reuse(kernel, grid: Sequence[int], *args: Any, **kwargs: Any) -> Relaunch | None:
    """``launch``, also returning the launch for reuse (None when it did not go through the cache: the
    interpreter, launch hooks, an uncacheable pattern, a first launch). A caller that fires it again with
    other pointers must keep what the key covers unchanged: dtypes, devices, 16-byte alignment and the
    int classes of the arguments; and must not fire it while ``hooks_set()``."""
    found = _resolve(kernel, grid, args, kwargs)
    if found is None:
        if recording is not None:
            recording.append(("fail", f"{getattr(kernel, '__name__', kernel)} took Triton's own launch path"))
        return None
    (run, function, packed), full, device, pointers = found
    g = tuple(grid)
    relaunch = Relaunch(run, function, packed, (g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1),
                        full, device, pointers)
    relaunch.fire(full)
    return relaunch


def _resolve(kernel, grid: Sequence[int], args: tuple, kwargs: dict) -> tuple | None:
    """The cached compiled kernel of this launch, its full argument list, the device and the positions of
    the tensor arguments; or None after launching through Triton's own path (a miss, which compiles and
    fills the cache, or a bypass)."""
    global _enabled
    if not _enabled or type(kernel) is not JITFunction:
        kernel[grid](*args, **kwargs)
        return None
    types = tuple(map(type, args))
    slot = (id(kernel), types, tuple(kwargs))
    entry = _slots.get(slot, _MISSING)
    if entry is _MISSING:
        go = _make_slot(kernel, len(args), types, slot[2])
        entry = _slots[slot] = None if go is None else (go, tuple(i for i, t in enumerate(types) if _is_tensor(t)))
    if entry is None:
        kernel[grid](*args, **kwargs)
        return None
    go, pointers = entry
    made = go(args, kwargs)
    device = _current_device()
    key = (go, device, made[0])
    hit = _compiled.get(key)
    if hit is None or hooks_set():
        compiled = kernel[grid](*args, **kwargs)
        try:
            _compiled[key] = (compiled.run, compiled.function, compiled.packed_metadata)
        except AttributeError:
            _enabled = False
        return None
    return hit, made[1], device, pointers


_MISSING = object()
