"""Ops the models call; each dispatches to a Triton kernel or to its plain-torch reference."""
from . import fused_reference, qreference, reference
from .dispatch import backend, dispatched, get_backend, set_backend

# floating point
linear = dispatched("linear", reference.linear)
rms_norm = reference.rms_norm
add_rms_norm = dispatched("add_rms_norm", reference.add_rms_norm)
gated_rms_norm = dispatched("gated_rms_norm", reference.gated_rms_norm)
causal_conv1d = dispatched("causal_conv1d", reference.causal_conv1d)
causal_conv1d_update = dispatched("causal_conv1d_update", reference.causal_conv1d_update)
selective_scan = dispatched("selective_scan", reference.selective_scan)
selective_state_update = dispatched("selective_state_update", reference.selective_state_update)
ssd_chunked = dispatched("ssd_chunked", reference.ssd_chunked)
ssd_state_update = dispatched("ssd_state_update", reference.ssd_state_update)
conv_state_from_inputs = reference.conv_state_from_inputs

# int8 (W8A8)
quantize = qreference.quantize
dequantize = qreference.dequantize
per_token_quantize = qreference.per_token_quantize
int8_linear = dispatched("int8_linear", qreference.int8_linear)
qadd_rms_norm = dispatched("qadd_rms_norm", qreference.qadd_rms_norm)
qgated_rms_norm = dispatched("qgated_rms_norm", qreference.qgated_rms_norm)
qcausal_conv1d = dispatched("qcausal_conv1d", qreference.qcausal_conv1d)
qcausal_conv1d_update = dispatched("qcausal_conv1d_update", qreference.qcausal_conv1d_update)
qselective_scan = dispatched("qselective_scan", qreference.qselective_scan)
qselective_state_update = dispatched("qselective_state_update", qreference.qselective_state_update)
qssd_chunked = dispatched("qssd_chunked", qreference.qssd_chunked)
qssd_state_update = dispatched("qssd_state_update", qreference.qssd_state_update)
hadamard_quant = dispatched("hadamard_quant", qreference.hadamard_quant)
qembedding = dispatched("qembedding", qreference.qembedding)

# fused Mamba1 decode step (two launches per layer)
conv_xproj_step = dispatched("conv_xproj_step", fused_reference.conv_xproj_step)
dtproj_state_step = dispatched("dtproj_state_step", fused_reference.dtproj_state_step)
qconv_xproj_step = dispatched("qconv_xproj_step", fused_reference.qconv_xproj_step)
qdtproj_state_step = dispatched("qdtproj_state_step", fused_reference.qdtproj_state_step)

# fused Mamba2 decode step (three launches per layer; W8A8: the SSD update + gate and the norm + Hadamard)
in_proj_conv_step = dispatched("in_proj_conv_step", fused_reference.in_proj_conv_step)
ssd_gate_step = dispatched("ssd_gate_step", fused_reference.ssd_gate_step)
rms_linear = dispatched("rms_linear", fused_reference.rms_linear)
qssd_gate_step = dispatched("qssd_gate_step", fused_reference.qssd_gate_step)
rms_hadamard_quant = dispatched("rms_hadamard_quant", fused_reference.rms_hadamard_quant)

# W8A8 decode of either architecture: int8 in_proj with the int8 conv update (Mamba1: and x_proj's products)
qin_proj_conv_step = dispatched("qin_proj_conv_step", fused_reference.qin_proj_conv_step)

# block pre-norm folded into the GEMVs around it (decode, either architecture)
linear_add_norm = dispatched("linear_add_norm", fused_reference.linear_add_norm)
