"""Quantized modules with int8 storage; all arithmetic goes through ``quamba.ops``."""
from .base import QModule, fake_quant
from .embedding import QEmbedding
from .linear import HadamardLinear, W8A8Linear
from .mamba1 import QMamba1Mixer
from .mamba2 import QMamba2Mixer
from .norm import QRMSNorm

__all__ = ["QModule", "fake_quant", "QEmbedding", "HadamardLinear", "W8A8Linear", "QMamba1Mixer", "QMamba2Mixer",
           "QRMSNorm"]
