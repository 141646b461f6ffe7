"""Identity stamps of tensors, for caches of values derived from parameters (``A = -exp(A_log)``)."""
from __future__ import annotations

import torch


def tensor_stamp(t: torch.Tensor) -> tuple:
    """``(address, dtype, device, version)``: changes when the tensor is replaced or modified in place.

    Inference tensors (made under ``torch.inference_mode``) track no version; an in-place change of
    one is not seen, as inference mode already forbids such changes outside of it.
    """
    return t.data_ptr(), t.dtype, t.device, -1 if t.is_inference() else t._version
