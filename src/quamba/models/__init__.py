"""Floating-point Mamba1/Mamba2 models."""
from .cache import InferenceCache, LayerState
from .lm import MambaLM, init_random_weights
from .mixers import GatedRMSNorm, Mamba1Mixer, Mamba2Mixer, RMSNorm

__all__ = ["InferenceCache", "LayerState", "MambaLM", "init_random_weights", "Mamba1Mixer", "Mamba2Mixer",
           "RMSNorm", "GatedRMSNorm"]
