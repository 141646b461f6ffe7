"""Kernel launches with less host time than ``kernel[grid](...)``: the compiled kernel is cached.

An eager prefill issues hundreds of short kernels, and Triton's generic launch path (binding the
arguments, building a specialization string, looking up the compiled kernel) costs 30-50 us of
Python per launch with the 20-30 arguments our kernels take; on the H200 that made the prefill
host-bound. ``launch`` keys the compiled kernel on exactly what Triton specializes a launch on:

- constexpr arguments and compile options (``num_warps``, ``launch_pdl``, ...) by value;
- tensors by dtype and the data pointer's offset from 16-byte alignment;
- ints by ``% 16 == 0`` and the 32/64-bit range (small ints, which include the specialized 1, by
  value); bools and None by value; floats by type;

and launches a hit through the compiled kernel's own launcher. A miss (or anything unusual: the
interpreter, launch hooks, an autotuner) goes through ``kernel[grid](...)``, which compiles and
caches as usual. Results cannot differ from the generic path: the same compiled binary runs with
the same arguments.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from triton.runtime.jit import JITFunction

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_Tensor, _Parameter = torch.Tensor, torch.nn.Parameter
_I32_MIN, _I32_MAX, _U64_MIN = -(2 ** 31), 2 ** 31 - 1, 2 ** 63

try:
    from triton import knobs as _knobs
except ImportError:  # older Triton: no launch hooks to honour
    _knobs = None

try:
    _raw_stream = torch._C._cuda_getCurrentRawStream
except AttributeError:  # a CPU-only torch
    _raw_stream = None

_params: dict[int, tuple[tuple[str, ...], tuple[bool, ...]]] = {}
_compiled: dict[tuple, tuple] = {}
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


def _signature(kernel) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    sig = _params.get(id(kernel))
    if sig is None:
        sig = _params[id(kernel)] = (tuple(p.name for p in kernel.params), tuple(p.is_constexpr for p in kernel.params))
    return sig


def _key(args: Sequence[Any], is_const: Sequence[bool]) -> list:
    """Per argument, what Triton's specialization depends on (finer is safe: a miss only costs the
    generic path). Tensors: dtype and pointer offset mod 16; constexprs, bools, None and small ints
    by value; other ints by ``% 16 == 0`` and 32/64-bit range; floats by type."""
    key = []
    add = key.append
    for a, c in zip(args, is_const):
        t = type(a)
        if t is _Tensor or t is _Parameter:
            add(a.dtype)
            add(a.data_ptr() & 15)
        elif t is bool:
            add((bool, a))
        elif c or t is not int and t is not float:
            add(a)
        elif t is float:
            add(float)
        elif -16 < a < 16:
            add(a)
        else:
            add((a & 15 == 0) + 2 * (a > _I32_MAX) + 4 * (a < _I32_MIN) + 8 * (a >= _U64_MIN))
    return key


def spec_key(value: Any, constexpr: bool = False) -> tuple:
    """``_key`` of one argument (for tests and diagnostics)."""
    return tuple(_key([value], [constexpr]))


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
    names, is_const = _signature(kernel)
    n = len(args)
    try:
        full = list(args) + [kwargs[name] for name in names[n:]]
    except KeyError:
        kernel[grid](*args, **kwargs)
        return
    options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in names)) if len(kwargs) > len(names) - n else ()
    device = torch.cuda.current_device()
    key = (id(kernel), device, options, *_key(full, is_const))
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
        None, None, None, *full)
