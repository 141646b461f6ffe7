"""Activation calibration: observers fed by forward hooks at every quantization point.

Nothing is stored but the observers' running statistics. Each calibration sample runs through the
floating-point model with a fresh inference cache, so the SSM state at the end of the prompt can
be observed. Quantization points (spec §4.2, Appendix B):

- Mamba1: ``in_proj:input`` (norm output), ``in_proj:output`` (x and z), ``x_proj:input`` (conv
  output = SSM input u), ``x_proj:output`` (dt, B, C), ``dt_proj:output`` (pre-bias),
  ``ssm_state``, ``out_proj:input`` (after the online Hadamard when the model is rotated).
- Mamba2: ``in_proj:input``, in_proj segments ``z``, ``x_conv_in``, ``B_conv_in``, ``C_conv_in``,
  ``dt``; conv outputs ``x_conv_out`` (SSM input), ``B_conv_out``, ``C_conv_out``; ``ssm_state``;
  ``out_proj:input``.
- model: ``lm_head:input``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import ops
from ..errors import CalibrationError, InvalidArgumentError
from ..qmodules.linear import HadamardLinear
from .hadamard import hadamard_transform
from .observers import Observer, make_observer

Tensor = torch.Tensor

MAMBA1_POINTS = ("in_proj:input", "in_proj:output", "x_proj:input", "x_proj:output", "dt_proj:output",
                 "ssm_state", "out_proj:input")
MAMBA2_POINTS = ("in_proj:input", "z", "x_conv_in", "B_conv_in", "C_conv_in", "dt", "x_conv_out", "B_conv_out",
                 "C_conv_out", "ssm_state", "out_proj:input")
SSM_INPUT = {"mamba1": "x_proj:input", "mamba2": "x_conv_out"}


class Site(NamedTuple):
    """A quantization point: block index (None for model-level points) and point name."""

    layer: int | None
    point: str

    def label(self) -> str:
        return self.point if self.layer is None else f"layer {self.layer} {self.point}"


def block_points(arch: str) -> tuple[str, ...]:
    return MAMBA1_POINTS if arch == "mamba1" else MAMBA2_POINTS


def check_samples(samples, vocab_size: int) -> list[Tensor]:
    """Validate calibration token ids: a non-empty list of 2-D integer tensors inside the vocabulary."""
    if samples is None or len(samples) == 0:
        raise CalibrationError("no calibration samples: static int8 scales need calibration data")
    out = []
    for i, s in enumerate(samples):
        if not isinstance(s, Tensor) or s.is_floating_point() or s.is_complex() or s.dtype == torch.bool:
            raise InvalidArgumentError(f"calibration sample {i} is not an integer token-id tensor")
        s = s.unsqueeze(0) if s.dim() == 1 else s
        if s.dim() != 2 or s.numel() == 0:
            raise CalibrationError(f"calibration sample {i} has shape {tuple(s.shape)}; expected [batch, seqlen]")
        if int(s.min()) < 0 or int(s.max()) >= vocab_size:
            raise CalibrationError(f"calibration sample {i} has token ids outside the vocabulary [0, {vocab_size})")
        out.append(s.long())
    return out


class _Probe:
    """Forward hooks that route the tensors at requested sites into their observers."""

    def __init__(self, model: nn.Module, observers: dict[Site, Observer]):
        self.model, self.obs = model, observers
        self.handles: list = []
        arch = model.config.arch
        for i, blk in enumerate(model.backbone.layers):
            m = blk.mixer
            self._pre(m.in_proj, Site(i, "in_proj:input"))
            self._pre(m.out_proj, Site(i, "out_proj:input"), rotated=isinstance(m.out_proj, HadamardLinear))
            if arch == "mamba1":
                self.handles.append(m.in_proj.register_forward_hook(self._m1_in_proj(i)))
                self._pre(m.x_proj, Site(i, "x_proj:input"))
                self.handles.append(m.x_proj.register_forward_hook(self._m1_x_proj(i, m)))
            else:
                self.handles.append(m.in_proj.register_forward_hook(self._m2_in_proj(i, m)))
        self._pre(model.lm_head, Site(None, "lm_head:input"))

    def wants(self, site: Site) -> bool:
        return site in self.obs

    def update(self, site: Site, x: Tensor) -> None:
        if site in self.obs:
            self.obs[site].update(x.detach().float())

    def _pre(self, module: nn.Module, site: Site, rotated: bool = False) -> None:
        if not self.wants(site):
            return

        def hook(_mod, args):
            x = args[0]
            self.update(site, hadamard_transform(x.float()) if rotated else x)

        self.handles.append(module.register_forward_pre_hook(hook))

    def _m1_in_proj(self, i: int) -> Callable:
        def hook(_mod, _args, out):
            self.update(Site(i, "in_proj:output"), out)
        return hook

    def _m1_x_proj(self, i: int, mixer: nn.Module) -> Callable:
        def hook(_mod, _args, out):
            self.update(Site(i, "x_proj:output"), out)
            site = Site(i, "dt_proj:output")
            if self.wants(site):
                dt = out[..., :mixer.cfg.dt_rank].float() @ mixer.dt_proj.weight.float().t()
                self.update(site, dt)
        return hook

    def _m2_in_proj(self, i: int, mixer: nn.Module) -> Callable:
        def hook(_mod, _args, out):
            z, xbc, dt = mixer.split_in_proj(out)
            x, B, C = mixer.split_xbc(xbc)
            for name, t in (("z", z), ("x_conv_in", x), ("B_conv_in", B), ("C_conv_in", C), ("dt", dt)):
                self.update(Site(i, name), t)
            outs = [Site(i, n) for n in ("x_conv_out", "B_conv_out", "C_conv_out")]
            if any(self.wants(s) for s in outs):
                conv = ops.causal_conv1d(xbc.float(), mixer.conv1d.weight[:, 0].float(),
                                         None if mixer.conv1d.bias is None else mixer.conv1d.bias.float(), silu=True)
                for site, t in zip(outs, mixer.split_xbc(conv)):
                    self.update(site, t)
        return hook

    def observe_states(self, cache) -> None:
        for i, st in enumerate(cache.layers):
            self.update(Site(i, "ssm_state"), st.ssm)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


@torch.no_grad()
def collect(model: nn.Module, samples: list[Tensor], observers: dict[Site, Observer | str], *,
            show_progress: bool = True, desc: str = "calibration") -> dict[Site, Observer]:
    """Run every sample through ``model`` (fresh cache each) and feed the observers; returns them.

    ``observers`` maps sites to observers or to observer kinds for ``make_observer``.
    NaN/Inf activations raise ``CalibrationError`` (from the observers).
    """
    obs = {site: (make_observer(o, name=site.label()) if isinstance(o, str) else o) for site, o in observers.items()}
    samples = check_samples(samples, model.config.vocab_size)
    dev = next(model.parameters()).device
    probe = _Probe(model, obs)
    try:
        for ids in tqdm(samples, desc=desc, disable=not show_progress, unit="sample"):
            ids = ids.to(dev)
            cache = model.allocate_cache(ids.shape[0])
            logits = model(ids, cache)
            if not bool(torch.isfinite(logits).all()):
                raise CalibrationError("the model produced NaN/Inf logits on the calibration data")
            probe.observe_states(cache)
    finally:
        probe.remove()
    return obs


def calibration_observers(model: nn.Module, ssm_input: str, state: str, percentile: float,
                          state_percentile: float, lm_head: bool) -> dict[Site, Observer]:
    """Observers of the v1 recipe: ``ssm_input`` / ``state`` kinds ("percentile" or "absmax") for the
    SSM input x and the SSM state, absmax everywhere else."""
    arch = model.config.arch
    obs: dict[Site, Observer] = {}
    for i in range(len(model.backbone.layers)):
        for p in block_points(arch):
            site = Site(i, p)
            if p == SSM_INPUT[arch]:
                kind, kw = ssm_input, {"p": percentile}
            elif p == "ssm_state":
                kind, kw = state, {"p": state_percentile}
            else:
                kind, kw = "absmax", {}
            obs[site] = make_observer(kind, name=site.label(), **(kw if kind == "percentile" else {}))
    if lm_head:
        obs[Site(None, "lm_head:input")] = make_observer("absmax", name="lm_head:input")
    return obs


def calibrate(model: nn.Module, samples: list[Tensor], *, ssm_input: str = "percentile", state: str = "percentile",
              percentile: float = 0.9995, state_percentile: float | None = None, lm_head: bool = False,
              show_progress: bool = True) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Static per-tensor scales: ``([per-block {point: scale}], {model point: scale})``."""
    sp = percentile if state_percentile is None else state_percentile
    obs = collect(model, samples, calibration_observers(model, ssm_input, state, percentile, sp, lm_head),
                  show_progress=show_progress)
    blocks: list[dict[str, float]] = [{} for _ in model.backbone.layers]
    top: dict[str, float] = {}
    for site, o in obs.items():
        (top if site.layer is None else blocks[site.layer])[site.point] = float(o.scale(127))
    return blocks, top
