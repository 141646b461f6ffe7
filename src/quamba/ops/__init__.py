"""Ops the models call; each dispatches to a Triton kernel or to its plain-torch reference."""
from . import reference
from .dispatch import backend, dispatched, get_backend, set_backend

rms_norm = dispatched("rms_norm", reference.rms_norm)
add_rms_norm = dispatched("add_rms_norm", reference.add_rms_norm)
gated_rms_norm = dispatched("gated_rms_norm", reference.gated_rms_norm)
causal_conv1d = dispatched("causal_conv1d", reference.causal_conv1d)
causal_conv1d_update = dispatched("causal_conv1d_update", reference.causal_conv1d_update)
selective_scan = dispatched("selective_scan", reference.selective_scan)
selective_state_update = dispatched("selective_state_update", reference.selective_state_update)
ssd_chunked = dispatched("ssd_chunked", reference.ssd_chunked)
ssd_state_update = dispatched("ssd_state_update", reference.ssd_state_update)
conv_state_from_inputs = reference.conv_state_from_inputs

__all__ = [
    "reference", "backend", "get_backend", "set_backend", "rms_norm", "add_rms_norm", "gated_rms_norm",
    "causal_conv1d", "causal_conv1d_update", "selective_scan", "selective_state_update", "ssd_chunked",
    "ssd_state_update", "conv_state_from_inputs",
]
