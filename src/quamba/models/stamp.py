"""Identity stamps of tensors, for caches of values derived from parameters (``A = -exp(A_log)``)."""
from __future__ import annotations

import torch


def tensor_stamp(t: torch.Tensor) -> tuple:
    """``(address, dtype, device, version)``: changes when the tensor is replaced or modified in place.

    Inference tensors (made under ``torch.inference_mode``) track no version; an in-place change of
    one is not seen, as inference mode already forbids such changes outside of it.
    """
    return t.data_ptr(), t.dtype, t.device, -1 if t.is_inference() else t._version


_epoch = [0]


def module_epoch() -> int:
    """A counter that moves whenever a module's structure or settings may have changed: a parameter, buffer
    or submodule registered or assigned anywhere, a quantized module's attribute or scale set, every replay
    dropped (``kernels.reuse.forget``). Replays of whole blocks (``kernels.block_replay``) are keyed on it."""
    return _epoch[0]


def bump_module_epoch(*_args) -> None:
    """Invalidate what is keyed on ``module_epoch`` (e.g. after editing a module's tensors through ``.data``)."""
    _epoch[0] += 1


_reg = torch.nn.modules.module
_reg.register_module_parameter_registration_hook(bump_module_epoch)
_reg.register_module_buffer_registration_hook(bump_module_epoch)
_reg.register_module_module_registration_hook(bump_module_epoch)
