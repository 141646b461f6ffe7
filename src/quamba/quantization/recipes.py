"""W8A8 recipes as config objects, and ``quantize_`` that applies one to a model in place.

Every recipe produces the same quantized modules (int8 weights, int8 activations between the
ops, int8 caches); they differ in how the model is prepared and how scales are chosen:

- ``quamba`` (Quamba v1, spec §2-§4): residual stream Hadamard-rotated offline, online Hadamard
  before out_proj, static per-tensor scales, percentile clipping of the SSM input x and of the SSM
  state, absmax everywhere else.
- ``naive``: static W8A8 with absmax scales everywhere, no rotation, no percentile.
- ``dynamic``: per-token dynamic int8 where a float tensor enters a linear layer (norm output ->
  in_proj, SSM output -> out_proj, final norm -> lm_head), computed on the fly. The tensors of the
  SSM path (conv in/out, x, dt, B, C, z and the inputs of x_proj/dt_proj, which are those same
  int8 tensors) keep static absmax scales: the int8 conv/scan ops take their scales up front and
  the cached conv/SSM states must keep one scale across calls.
- ``smoothquant``: SmoothQuant (α = 0.5) folded where exact (see ``smoothquant.py``), then naive.
- ``rotation``: the Quamba rotation with absmax instead of percentile (QuaRot-style baseline).

Only W8A8 exists for now; the W4 recipes of Quamba2 are a later addition.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import MambaConfig
from ..errors import InvalidArgumentError
from ..models import MambaLM
from ..qmodules import QEmbedding, QMamba1Mixer, QMamba2Mixer, QRMSNorm, W8A8Linear
from . import rotation, smoothquant
from .calibration import calibrate, check_samples

Tensor = torch.Tensor

OBSERVER_KINDS = ("absmax", "percentile")


@dataclass
class QuantRecipe:
    """Settings shared by every W8A8 recipe.

    ``percentile`` is the quantile kept by percentile observers (0.9995 default; 0.99999 suits
    small models); ``state_percentile`` defaults to ``percentile``. ``fake_quant`` simulates the
    quantization points in float instead of running the int8 ops.
    """

    name: ClassVar[str] = ""
    wbits: int = 8
    abits: int = 8
    percentile: float = 0.9995
    state_percentile: float | None = None
    rotate: bool = False
    fake_quant: bool = False
    quantize_embedding: bool = False
    quantize_lm_head: bool = False
    act: str = "static"
    ssm_input_observer: str = "absmax"
    state_observer: str = "absmax"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if (self.wbits, self.abits) != (8, 8):
            raise InvalidArgumentError(f"recipe {self.name!r} supports only W8A8 (wbits=8, abits=8), got "
                                       f"W{self.wbits}A{self.abits}; 4-bit (Quamba2) recipes are not implemented yet")
        for what, p in (("percentile", self.percentile), ("state_percentile", self.state_percentile)):
            if p is not None and not (isinstance(p, (int, float)) and 0.0 < p <= 1.0):
                raise InvalidArgumentError(f"{what} must be in (0, 1], got {p!r}")
        if self.act not in ("static", "dynamic"):
            raise InvalidArgumentError(f"act must be 'static' or 'dynamic', got {self.act!r}")
        for what, k in (("ssm_input_observer", self.ssm_input_observer), ("state_observer", self.state_observer)):
            if k not in OBSERVER_KINDS:
                raise InvalidArgumentError(f"{what} must be one of {', '.join(OBSERVER_KINDS)}, got {k!r}")

    @property
    def smooth_alpha(self) -> float | None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclass
class QuambaConfig(QuantRecipe):
    name: ClassVar[str] = "quamba"
    rotate: bool = True
    ssm_input_observer: str = "percentile"
    state_observer: str = "percentile"


@dataclass
class NaiveConfig(QuantRecipe):
    name: ClassVar[str] = "naive"


@dataclass
class DynamicConfig(QuantRecipe):
    name: ClassVar[str] = "dynamic"
    act: str = "dynamic"


@dataclass
class SmoothQuantConfig(QuantRecipe):
    name: ClassVar[str] = "smoothquant"
    alpha: float = 0.5

    def validate(self) -> None:
        super().validate()
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise InvalidArgumentError(f"smoothquant alpha must be in [0, 1], got {self.alpha!r}")

    @property
    def smooth_alpha(self) -> float | None:
        return float(self.alpha)


@dataclass
class RotationConfig(QuantRecipe):
    name: ClassVar[str] = "rotation"
    rotate: bool = True


RECIPES: dict[str, type[QuantRecipe]] = {c.name: c for c in (QuambaConfig, NaiveConfig, DynamicConfig,
                                                             SmoothQuantConfig, RotationConfig)}


def get_recipe(name: str, **settings: Any) -> QuantRecipe:
    """The config of recipe ``name`` with ``settings`` overriding its defaults."""
    if name not in RECIPES:
        raise InvalidArgumentError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    cls = RECIPES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(settings) - known)
    if bad:
        raise InvalidArgumentError(f"recipe {name!r} has no setting {', '.join(bad)}")
    return cls(**settings)


def recipe_from_dict(d: dict[str, Any]) -> QuantRecipe:
    """Inverse of ``QuantRecipe.to_dict``."""
    d = dict(d)
    return get_recipe(d.pop("name", None), **d)


def _float_dtype(model: MambaLM) -> torch.dtype:
    dt = model.backbone.embeddings.weight.dtype
    return dt if dt.is_floating_point else torch.float16


def _mixer_cls(cfg: MambaConfig):
    return QMamba1Mixer if cfg.arch == "mamba1" else QMamba2Mixer


@torch.no_grad()
def quantize_(model: MambaLM, config: QuantRecipe, calib_samples: list[Tensor] | None,
              show_progress: bool = True) -> MambaLM:
    """Quantize ``model`` in place with the recipe ``config``; returns it.

    Calibration runs in fp32 on the model's device over ``calib_samples`` (token-id tensors
    ``[batch, seqlen]``). Float parts that stay (embedding, final norm, unquantized lm_head) keep the
    model's dtype, which is also the dtype of the float outputs of the quantized ops. On error the
    model may be left partly transformed.
    """
    if not isinstance(config, QuantRecipe):
        raise InvalidArgumentError(f"expected a recipe config (one of {', '.join(RECIPES)}), "
                                   f"got {type(config).__name__}")
    config.validate()
    if getattr(model, "quant_config", None) is not None:
        raise InvalidArgumentError("the model is already quantized")
    cfg = model.config
    samples = check_samples(calib_samples, cfg.vocab_size)
    if config.rotate:
        rotation.check_rotatable(cfg)
    dtype = _float_dtype(model)
    model.float().eval()
    rotation.untie_lm_head(model)
    if config.rotate:
        rotation.rotate_model(model)
    if config.smooth_alpha is not None:
        smoothquant.smooth_model(model, samples, config.smooth_alpha, config.quantize_lm_head, show_progress)
    blocks, top = calibrate(model, samples, ssm_input=config.ssm_input_observer, state=config.state_observer,
                            percentile=config.percentile, state_percentile=config.state_percentile,
                            lm_head=config.quantize_lm_head, show_progress=show_progress)
    static = config.act == "static"
    fq = dict(fake=config.fake_quant)
    for blk, scales in zip(model.backbone.layers, blocks):
        blk.norm = QRMSNorm.from_float(blk.norm, scales["in_proj:input"] if static else None, **fq)
        blk.mixer = _mixer_cls(cfg).from_float(blk.mixer, scales, act=config.act, out_dtype=dtype, **fq)
    if config.quantize_embedding:
        model.backbone.embeddings = QEmbedding.from_float(model.backbone.embeddings, out_dtype=dtype)
    else:
        model.backbone.embeddings.to(dtype)
    model.backbone.norm_f.to(dtype)
    if config.quantize_lm_head:
        model.lm_head = W8A8Linear.from_float(model.lm_head, input_scale=top["lm_head:input"] if static else None,
                                              act=config.act, out_dtype=dtype, **fq)
    else:
        model.lm_head.to(dtype)
    model.quant_config = config
    model.quant_dtype = dtype
    return model


def build_quantized_model(cfg: MambaConfig, config: QuantRecipe, dtype: torch.dtype = torch.float16,
                          device: str | torch.device = "cpu") -> MambaLM:
    """The quantized skeleton ``quantize_`` produces for ``cfg`` and ``config`` (uninitialized
    tensors), ready for ``load_state_dict``."""
    cfg = dataclasses.replace(cfg, tie_embeddings=False)
    static = config.act == "static"
    fq = dict(fake=config.fake_quant)
    with torch.device("meta"):
        model = MambaLM(cfg)
        for blk in model.backbone.layers:
            blk.norm = QRMSNorm(cfg.d_model, cfg.norm_eps, cfg.residual_in_fp32,
                                output="int8" if static else "float", **fq)
            blk.mixer = _mixer_cls(cfg)(cfg, act=config.act, hadamard_out=config.rotate, out_dtype=dtype, **fq)
        if config.quantize_embedding:
            model.backbone.embeddings = QEmbedding(cfg.vocab_size, cfg.d_model, out_dtype=dtype)
        else:
            model.backbone.embeddings.to(dtype)
        model.backbone.norm_f.to(dtype)
        if config.quantize_lm_head:
            model.lm_head = W8A8Linear(cfg.d_model, cfg.vocab_size, act=config.act, out_dtype=dtype, **fq)
        else:
            model.lm_head.to(dtype)
    model.to_empty(device=device)
    model.quant_config = config
    model.quant_dtype = dtype
    return model

