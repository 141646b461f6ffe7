"""Post-training quantization: recipes, calibration, rotation, smoothing, Hadamard, observers.

The public names are loaded lazily so that low-level modules (``hadamard``, ``observers``) can be
imported by ``quamba.qmodules`` without pulling in the recipes, which import ``quamba.qmodules``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "QuantRecipe": "recipes", "QuambaConfig": "recipes", "NaiveConfig": "recipes", "DynamicConfig": "recipes",
    "SmoothQuantConfig": "recipes", "RotationConfig": "recipes", "RECIPES": "recipes", "get_recipe": "recipes",
    "recipe_from_dict": "recipes", "quantize_": "recipes", "build_quantized_model": "recipes",
    "calibrate": "calibration", "rotate_model": "rotation", "smooth_model": "smoothquant",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
