"""Kernel launches with less host time than ``kernel[grid](...)``: the compiled kernel is cached.

An eager prefill issues hundreds of short kernels, and Triton's generic launch path (binding the
arguments, building a specialization string, looking up the compiled kernel) costs 30-50 us of
Python per launch with the 20-30 arguments our kernels take; on the H200 that made the prefill
host-bound. ``launch`` keys the compiled kernel on exactly what Triton specializes a launch on:

- constexpr arguments and compile options (``num_warps``, ``launch_pdl``, ...) by value;
- tensors by dtype and the data pointer's offset from 16-byte alignment;
- ints by ``% 16 == 0`` and the 32/64-bit range (small ints, which include the specialized 1, by
  value); bools and None by value; floats by type;

(each pattern of argument types gets its key as one generated expression, so a launch costs no
per-argument Python calls) and launches a hit through the compiled kernel's own launcher. A miss
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
_I32_MIN, _I32_MAX, _U64_MIN = -(2 ** 31), 2 ** 31 - 1, 2 ** 63

try:
    from triton import knobs as _knobs
except ImportError:  # older Triton: no launch hooks to honour
    _knobs = None

try:
    _raw_stream = torch._C._cuda_getCurrentRawStream
    _current_device = torch._C._cuda_getDevice
except AttributeError:  # a CPU-only torch
    _raw_stream = _current_device = None

_params: dict[int, tuple[tuple[str, ...], tuple[bool, ...], frozenset[str]]] = {}
_keyfns: dict[tuple, Callable[[Sequence[Any]], tuple]] = {}
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


def current_stream(device: torch.device) -> int:
    """The raw handle of ``device``'s current CUDA stream (0 for a CPU device)."""
    if device.type != "cuda" or _raw_stream is None:
        return 0
    return _raw_stream(device.index if device.index is not None else _current_device())


def _signature(kernel) -> tuple[tuple[str, ...], tuple[bool, ...], frozenset[str]]:
    sig = _params.get(id(kernel))
    if sig is None:
        names = tuple(p.name for p in kernel.params)
        sig = _params[id(kernel)] = (names, tuple(p.is_constexpr for p in kernel.params), frozenset(names))
    return sig


def _int_class(a: int) -> int:
    """Small ints by value; others by ``% 16 == 0`` and 32/64-bit range, coded 16..31 so the two never meet."""
    if -16 < a < 16:
        return a
    return 16 + (a & 15 == 0) + 2 * (a > _I32_MAX) + 4 * (a < _I32_MIN) + 8 * (a >= _U64_MIN)


def _key_fn(types: tuple[type, ...], is_const: Sequence[bool]) -> Callable[[Sequence[Any]], tuple]:
    """The key of an argument list whose types are ``types``, as one generated expression (no per-argument
    calls or branches at launch time). Tensors: dtype and pointer offset mod 16; constexprs, bools, None
    and other objects by value; ints by ``_int_class``; floats by type alone (the types are in the key)."""
    parts = []
    for i, (t, c) in enumerate(zip(types, is_const)):
        a = f"a[{i}]"
        if t is _Tensor or t is _Parameter:
            parts.append(f"{a}.dtype, {a}.data_ptr() & 15")
        elif t is int and not c:
            parts.append(f"({a} if -16 < {a} < 16 else _int_class({a}))")
        elif t is not float or c:
            parts.append(a)
    scope = {"_int_class": _int_class}
    exec(f"def key(a):\n    return ({''.join(p + ', ' for p in parts)})\n", scope)
    return scope["key"]


def _key(args: Sequence[Any], is_const: Sequence[bool], owner: Any = None) -> tuple:
    """Per argument, what Triton's specialization depends on (finer is safe: a miss only costs the
    generic path), behind the tuple of the arguments' types. ``owner`` (the kernel's id) names the
    ``is_const`` pattern the generated key function is cached under."""
    types = tuple(map(type, args))
    slot = (owner if owner is not None else tuple(is_const), types)
    fn = _keyfns.get(slot)
    if fn is None:
        fn = _keyfns[slot] = _key_fn(types, is_const)
    return types, fn(args)


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
    names, is_const, name_set = _signature(kernel)
    n = len(args)
    try:
        full = list(args) + [kwargs[name] for name in names[n:]]
    except KeyError:
        kernel[grid](*args, **kwargs)
        return
    options = ()
    if len(kwargs) > len(names) - n:
        options = tuple(sorted((k, kwargs[k]) for k in kwargs.keys() - name_set))
    device = _current_device()
    key = (id(kernel), device, options, _key(full, is_const, id(kernel)))
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
