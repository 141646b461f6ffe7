"""W8A8 Mamba1 mixer (Quamba v1 data flow, spec §3.1).

int8 norm output -> in_proj (int8 x and z, one scale) -> int8 causal conv + SiLU (int8 u) ->
x_proj (int8 dt, B, C, one scale) -> dt_proj (int8 dt, pre-bias) -> selective scan on int8 inputs
(fp32 math, int8 end state) -> float y -> [Hadamard] + int8 -> out_proj -> float.
Conv and SSM caches are int8. A_log, D and the dt bias are stored as per-tensor int8.
"""
from __future__ import annotations

import torch

from .. import ops
from ..config import MambaConfig
from ..models.cache import LayerState
from ..models.mixers import Mamba1Mixer, decode_work, fused_in_proj
from .base import QModule, fake_quant, quantize_per_tensor
from .linear import HadamardLinear, W8A8Linear

Tensor = torch.Tensor


class QMamba1Mixer(QModule):
    """Quantized Mamba1 mixer. ``forward(h, state)``: ``h`` int8 (static) or float (dynamic act).

    ``act`` is the activation mode of the layers fed by floats (in_proj and out_proj); everything
    inside the SSM path uses static scales. ``hadamard_out`` puts the online Hadamard before
    out_proj (its weight must carry the inverse rotation).
    """

    def __init__(self, cfg: MambaConfig, *, act: str = "static", hadamard_out: bool = True, fake: bool = False,
                 out_dtype: torch.dtype = torch.float16):
        super().__init__()
        self.cfg = cfg
        self.fake, self.out_dtype = fake, out_dtype
        di, n, r, k = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        common = dict(fake=fake, out_dtype=out_dtype)
        self.in_proj = W8A8Linear(cfg.d_model, 2 * di, cfg.proj_bias, act=act, output="tensor", **common)
        self.register_buffer("conv_weight", torch.zeros(di, k, dtype=torch.int8))
        self.add_scale("conv_weight_scale")
        self.register_buffer("conv_bias", torch.zeros(di, dtype=torch.int8) if cfg.conv_bias else None)
        self.add_scale("conv_bias_scale")
        self.x_proj = W8A8Linear(di, r + 2 * n, act="static", output="tensor", **common)
        self.dt_proj = W8A8Linear(r, di, act="static", output="tensor", **common)
        self.register_buffer("A_log", torch.zeros(di, n, dtype=torch.int8))
        self.add_scale("A_log_scale")
        self.register_buffer("D", torch.zeros(di, dtype=torch.int8))
        self.add_scale("D_scale")
        self.register_buffer("dt_bias", torch.zeros(di, dtype=torch.int8))
        self.add_scale("dt_bias_scale")
        self.add_scale("ssm_state_scale")
        self.out_proj = W8A8Linear(di, cfg.d_model, cfg.proj_bias, act=act, hadamard_input=hadamard_out, **common)

    @classmethod
    def from_float(cls, mixer: Mamba1Mixer, scales: dict[str, float], *, act: str = "static", fake: bool = False,
                   out_dtype: torch.dtype = torch.float16) -> "QMamba1Mixer":
        """Quantize a float mixer with calibrated scales (keys: ``in_proj:input``, ``in_proj:output``,
        ``x_proj:input``, ``x_proj:output``, ``dt_proj:output``, ``ssm_state``, ``out_proj:input``)."""
        cfg = mixer.cfg
        had = isinstance(mixer.out_proj, HadamardLinear)
        mod = cls(cfg, act=act, hadamard_out=had, fake=fake, out_dtype=out_dtype).to(mixer.A_log.device)
        common = dict(fake=fake, out_dtype=out_dtype)
        static = act == "static"
        mod.in_proj = W8A8Linear.from_float(mixer.in_proj, input_scale=scales["in_proj:input"] if static else None,
                                            output_scale=scales["in_proj:output"], act=act, **common)
        mod.x_proj = W8A8Linear.from_float(mixer.x_proj, input_scale=scales["x_proj:input"],
                                           output_scale=scales["x_proj:output"], **common)
        mod.dt_proj = W8A8Linear.from_weight(mixer.dt_proj.weight, input_scale=scales["x_proj:output"],
                                             output_scale=scales["dt_proj:output"], **common)
        mod.out_proj = W8A8Linear.from_float(mixer.out_proj, input_scale=scales["out_proj:input"] if static else None,
                                             act=act, hadamard_input=had, **common)
        for name, t in (("conv_weight", mixer.conv1d.weight[:, 0]), ("conv_bias", mixer.conv1d.bias),
                        ("A_log", mixer.A_log), ("D", mixer.D), ("dt_bias", mixer.dt_proj.bias)):
            if t is None:
                continue
            q, s = quantize_per_tensor(t.float())
            getattr(mod, name).copy_(q)
            mod.set_scale(f"{name}_scale", s)
        mod.set_scale("ssm_state_scale", scales["ssm_state"])
        return mod

    def allocate_state(self, batch: int, device, dtype=None) -> LayerState:
        c = self.cfg
        return LayerState(conv=torch.zeros(batch, c.d_inner, c.d_conv, device=device, dtype=torch.int8),
                          ssm=torch.zeros(batch, c.d_inner, c.d_state, device=device, dtype=torch.int8),
                          work=decode_work(c, batch, device, torch.int32))

    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        """fp32 ``A``, ``D`` and dt bias from their int8 storage (computed once, then cached)."""
        def compute():
            A = -torch.exp(ops.dequantize(self.A_log, self.scale("A_log_scale")))
            return (A, ops.dequantize(self.D, self.scale("D_scale")),
                    ops.dequantize(self.dt_bias, self.scale("dt_bias_scale")))

        return self.derived("params", compute, self.A_log, self.D, self.dt_bias)

    def _conv_params(self) -> tuple[Tensor, float, Tensor | None, float]:
        return self.conv_weight, self.scale("conv_weight_scale"), self.conv_bias, self.scale("conv_bias_scale")

    def _dt_b_c(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_proj then dt_proj: int8 (or simulated) ``dt`` (pre-bias), ``B``, ``C``."""
        c = self.cfg
        dbc = self.x_proj(u, self.x_proj.scale("input_scale"))
        dt, B, C = dbc.split([c.dt_rank, c.d_state, c.d_state], dim=-1)
        return self.dt_proj(dt, self.x_proj.scale("output_scale")), B, C

    def forward(self, h: Tensor, state: LayerState | None = None) -> Tensor:
        if self.fake:
            return self._forward_fake(h, state)
        s_xz = self.in_proj.scale("output_scale")
        s_u = self.x_proj.scale("input_scale")
        s_bc = self.x_proj.scale("output_scale")
        s_dt = self.dt_proj.scale("output_scale")
        s_h = self.scale("ssm_state_scale")
        A, D, dt_bias = self._params()
        if state is not None and h.shape[1] == 1:
            acc, done = state.work
            if h.dtype == torch.int8 and acc is not None and fused_in_proj():
                lin = self.in_proj
                u, z = ops.qin_proj_conv_step(h[:, 0], lin.scale("input_scale"), lin.weight, lin.scale("weight_scale"),
                                              lin.bias, s_xz, state.conv, *self._conv_params(), s_u, 0,
                                              xproj_w=self.x_proj.weight, acc=acc).chunk(2, dim=-1)
            else:
                x, z = self.in_proj(h)[:, 0].chunk(2, dim=-1)
                u, acc = ops.qconv_xproj_step(x, state.conv, s_xz, *self._conv_params(), s_u, self.x_proj.weight, acc)
            y = ops.qdtproj_state_step(state.ssm, s_h, u, s_u, acc, self.x_proj.scale("weight_scale"), s_bc,
                                       self.dt_proj.weight, self.dt_proj.scale("weight_scale"), s_dt, A, D, z,
                                       s_xz, dt_bias, out_dtype=self.out_dtype, done=done)
            return self.out_proj(y).unsqueeze(1)
        x, z = self.in_proj(h).chunk(2, dim=-1)
        u = ops.qcausal_conv1d(x, s_xz, *self._conv_params(), s_u,
                               initial_state=state.conv if state is not None else None, update_state=state is not None)
        dt, B, C = self._dt_b_c(u)
        y, last = ops.qselective_scan(u, s_u, dt, s_dt, A, B, s_bc, C, s_bc, D, z, s_xz, dt_bias, s_h,
                                      initial_state=state.ssm if state is not None else None,
                                      out_dtype=self.out_dtype)
        if state is not None:
            state.ssm.copy_(last)
        return self.out_proj(y)

    def _forward_fake(self, h: Tensor, state: LayerState | None) -> Tensor:
        """The same quantization points simulated in float, through the floating-point ops."""
        x, z = self.in_proj(h).chunk(2, dim=-1)
        s_xz = self.in_proj.scale("output_scale")
        s_u = self.x_proj.scale("input_scale")
        s_h = self.scale("ssm_state_scale")
        A, D, dt_bias = self._params()
        w = ops.dequantize(self.conv_weight, self.scale("conv_weight_scale"))
        b = ops.dequantize(self.conv_bias, self.scale("conv_bias_scale")) if self.conv_bias is not None else None
        if state is not None and h.shape[1] == 1:
            conv = ops.dequantize(state.conv, s_xz)
            u = fake_quant(ops.causal_conv1d_update(x[:, 0], conv, w, b, silu=True), s_u)
            state.conv.copy_(ops.quantize(conv, s_xz))
            dt, B, C = self._dt_b_c(u)
            ssm = ops.dequantize(state.ssm, s_h)
            y = ops.selective_state_update(ssm, u, dt, A, B, C, D, z[:, 0], dt_bias=dt_bias, dt_softplus=True)
            state.ssm.copy_(ops.quantize(ssm, s_h))
            return self.out_proj(y.to(self.out_dtype)).unsqueeze(1)
        conv = ops.dequantize(state.conv, s_xz) if state is not None else None
        u = fake_quant(ops.causal_conv1d(x, w, b, silu=True, initial_state=conv), s_u)
        dt, B, C = self._dt_b_c(u)
        y, last = ops.selective_scan(u, dt, A, B, C, D, z, delta_bias=dt_bias, delta_softplus=True,
                                     initial_state=ops.dequantize(state.ssm, s_h) if state is not None else None)
        if state is not None:
            state.conv.copy_(ops.quantize(ops.conv_state_from_inputs(x, self.cfg.d_conv, conv), s_xz))
            state.ssm.copy_(ops.quantize(last, s_h))
        return self.out_proj(y.to(self.out_dtype))
