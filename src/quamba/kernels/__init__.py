"""Triton kernels; each module holds kernels whose plain-torch references live in quamba.ops.

They are reached through quamba.ops (dispatch.TRITON_KERNELS), not imported by the models directly.
"""
