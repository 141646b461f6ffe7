"""Kernel launches with less host time than ``kernel[grid](...)``: the compiled kernel is cached.

An eager prefill issues hundreds of short kernels, and Triton's generic launch path (binding the
arguments, building a specialization string, looking up the compiled kernel) costs 30-50 us of
Python per launch with the 20-30 arguments our kernels take; on the H200 that made the prefill
host-bound. ``launch`` keys the compiled kernel on exactly what Triton specializes a launch on:

- constexpr arguments and compile options (``num_warps``, ``launch_pdl``, ...) by value;
- tensors by dtype and the data pointer's offset from 16-byte alignment;
- ints by ``== 1``, ``% 16 == 0`` and the 32-bit range; bools and None by value; floats by type;

Each pattern of a launch (kernel, positional argument types, keyword names) gets one generated
function that returns the key and the kernel's full argument list without a per-argument Python
call, and a hit launches through the compiled kernel's own launcher. A miss
(or anything unusual: the interpreter, launch hooks, an autotuner) goes through
``kernel[grid](...)``, which compiles and caches as usual. Results cannot differ from the generic
path: the same compiled binary runs with the same arguments.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

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
_slots: dict[tuple, Callable | None] = {}
_enabled = not _INTERPRET and _raw_stream is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (read once: it must be set before Triton loads)."""
    return _INTERPRET


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints (``triton.cdiv`` is a constexpr function, ~2 us per host call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1), without Triton's constexpr-function overhead."""
    return 1 << (int(n) - 1).bit_length() if n > 1 else 1


def current_stream(device: torch.device) -> int:
    """The raw handle of ``device``'s current CUDA stream (0 for a CPU device)."""
    if device.type != "cuda" or _raw_stream is None:
        return 0
    return _raw_stream(device.index if device.index is not None else _current_device())


# An int's specialization (== 1, % 16 == 0, 32-bit range) as one expression: ``a >> 31`` is 0 for
# 0 <= a < 2**31, -1 for -2**31 <= a < 0 and something else outside the int32 range (finer than
# Triton's i64/u64 split, which is safe: a finer key can only miss).
_INT_CLASS = "(({a} == 1) + 2 * ({a} & 15 == 0) + 4 * ({a} >> 31))"


def _part(a: str, t: type, const: bool) -> str | None:
    """The key expression of one argument named ``a`` of type ``t`` (None: it adds nothing)."""
    if t is _Tensor or t is _Parameter:
        return f"{a}.dtype, {a}.data_ptr() & 15"
    if t is int and not const:
        return _INT_CLASS.format(a=a)
    if t is float and not const:
        return None
    return a


def _make_slot(kernel, n: int, types: tuple[type, ...], kw: tuple[str, ...]) -> Callable | None:
    """For launches of ``kernel`` with ``n`` positional arguments of ``types`` and keywords ``kw``, one
    generated function ``(args, kwargs) -> (key, all kernel arguments in order)``; None when the pattern
    is not for the cache: the keywords must be the constexpr parameters past the positional ones (keyed by
    value) and compile options."""
    names = [p.name for p in kernel.params]
    consts = [p.is_constexpr for p in kernel.params]
    if n > len(names) or any(not c or name not in kw for name, c in zip(names[n:], consts[n:])):
        return None
    if any(k in names[:n] for k in kw):
        return None
    pos = [f"a{i}" for i in range(n)]
    kws = [f"k{i}" for i in range(len(names) - n)]
    parts = [_part(a, t, c) for a, t, c in zip(pos, types, consts)]
    options = sorted(k for k in kw if k not in names)
    body = [f"    {''.join(a + ', ' for a in pos)}= a"] if n else []
    body += [f"    {k} = kw[{name!r}]" for k, name in zip(kws, names[n:])]
    key = [p for p in parts if p is not None] + kws + [f"kw[{o!r}]" for o in options]
    body.append(f"    return ({''.join(k + ', ' for k in key)}), ({''.join(f + ', ' for f in pos + kws)})")
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


def _hooks_set() -> bool:
    """Whether a launch hook is installed (Triton keeps them in ``HookChain`` objects, empty by default)."""
    if _knobs is None:
        return False
    hooks = (_knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook)
    return any(h is not None and getattr(h, "calls", True) for h in hooks)


def launch(kernel, grid: Sequence[int], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)`` for a ``triton.jit`` kernel, through the compiled-kernel cache."""
    global _enabled
    if not _enabled or type(kernel) is not JITFunction:
        kernel[grid](*args, **kwargs)
        return
    types = tuple(map(type, args))
    slot = (id(kernel), types, tuple(kwargs))
    go = _slots.get(slot, _MISSING)
    if go is _MISSING:
        go = _slots[slot] = _make_slot(kernel, len(args), types, slot[2])
    if go is None:
        kernel[grid](*args, **kwargs)
        return
    made = go(args, kwargs)
    device = _current_device()
    key = (go, device, made[0])
    hit = _compiled.get(key)
    if hit is None or _hooks_set():
        compiled = kernel[grid](*args, **kwargs)
        try:
            _compiled[key] = (compiled.run, compiled.function, compiled.packed_metadata)
        except AttributeError:
            _enabled = False
        return
    run, function, packed = hit
    g = tuple(grid)
    run(g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1, _raw_stream(device), function, packed,
        None, None, None, *made[1])


_MISSING = object()
