"""W8A8 Mamba2 mixer, the per-tensor ("v1") variant of spec §3.2.

int8 norm output -> in_proj with one weight scale and one output scale per segment z|x|B|C|dt
(per-channel vectors) -> int8 causal conv + SiLU over x|B|C (per-segment scales) -> int8 x, B, C ->
SSD on int8 x, dt, B, C (fp32 math, int8 end state) -> float y -> gated RMSNorm with the int8 gate z
-> [Hadamard] + int8 -> out_proj -> float. Conv and SSM caches are int8; A_log and D are per-tensor
int8; dt_bias and the gated-norm weight stay fp32.
"""
from __future__ import annotations

import torch

from .. import ops
from ..config import MambaConfig
from ..models.cache import LayerState
from ..models.mixers import Mamba2Mixer, fused_decode, fused_in_proj
from .base import QModule, fake_quant, quantize_per_segment, quantize_per_tensor, segment_vector
from .linear import HadamardLinear, W8A8Linear

Tensor = torch.Tensor


class QMamba2Mixer(QModule):
    """Quantized Mamba2 mixer. ``forward(h, state)``: ``h`` int8 (static) or float (dynamic act)."""

    def __init__(self, cfg: MambaConfig, *, act: str = "static", hadamard_out: bool = True, fake: bool = False,
                 out_dtype: torch.dtype = torch.float16):
        super().__init__()
        self.cfg = cfg
        self.fake, self.out_dtype = fake, out_dtype
        di, h, cd, k = cfg.d_inner, cfg.nheads, cfg.conv_dim, cfg.d_conv
        common = dict(fake=fake, out_dtype=out_dtype)
        self.in_proj = W8A8Linear(cfg.d_model, cfg.in_proj_dim, cfg.proj_bias, act=act, output="channel",
                                  per_channel_weight=True, **common)
        self.register_buffer("conv_weight", torch.zeros(cd, k, dtype=torch.int8))
        self.add_scale("conv_weight_scale", (cd,))
        self.register_buffer("conv_bias", torch.zeros(cd, dtype=torch.int8) if cfg.conv_bias else None)
        self.add_scale("conv_bias_scale", (cd,))
        self.add_scale("conv_out_scale", (cd,))
        self.register_buffer("dt_bias", torch.zeros(h, dtype=torch.float32))
        self.register_buffer("A_log", torch.zeros(h, dtype=torch.int8))
        self.add_scale("A_log_scale")
        self.register_buffer("D", torch.zeros(h, dtype=torch.int8))
        self.add_scale("D_scale")
        self.register_buffer("norm_weight", torch.ones(di, dtype=torch.float32))
        self.norm_eps = cfg.norm_eps
        self.group_size = di // cfg.ngroups
        self.add_scale("ssm_state_scale")
        self.out_proj = W8A8Linear(di, cfg.d_model, cfg.proj_bias, act=act, hadamard_input=hadamard_out, **common)
        self._seg: dict[str, float] = {}

    @property
    def in_proj_segments(self) -> list[int]:
        c = self.cfg
        return [c.d_inner, c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state, c.nheads]

    @property
    def conv_segments(self) -> list[int]:
        c = self.cfg
        return [c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state]

    @classmethod
    def from_float(cls, mixer: Mamba2Mixer, scales: dict[str, float], *, act: str = "static", fake: bool = False,
                   out_dtype: torch.dtype = torch.float16) -> "QMamba2Mixer":
        """Quantize a float mixer with calibrated scales (keys: ``in_proj:input``, ``z``, ``x_conv_in``,
        ``B_conv_in``, ``C_conv_in``, ``dt``, ``x_conv_out``, ``B_conv_out``, ``C_conv_out``,
        ``ssm_state``, ``out_proj:input``)."""
        cfg = mixer.cfg
        dev = mixer.A_log.device
        had = isinstance(mixer.out_proj, HadamardLinear)
        mod = cls(cfg, act=act, hadamard_out=had, fake=fake, out_dtype=out_dtype).to(dev)
        common = dict(fake=fake, out_dtype=out_dtype)
        static = act == "static"
        out_vec = segment_vector([scales[k] for k in ("z", "x_conv_in", "B_conv_in", "C_conv_in", "dt")],
                                 mod.in_proj_segments, dev)
        mod.in_proj = W8A8Linear.from_float(mixer.in_proj, input_scale=scales["in_proj:input"] if static else None,
                                            output_scale=out_vec, segments=mod.in_proj_segments, act=act, **common)
        mod.out_proj = W8A8Linear.from_float(mixer.out_proj, input_scale=scales["out_proj:input"] if static else None,
                                             act=act, hadamard_input=had, **common)
        q, s = quantize_per_segment(mixer.conv1d.weight[:, 0].float(), mod.conv_segments)
        mod.conv_weight.copy_(q)
        mod.set_scale("conv_weight_scale", s)
        if mixer.conv1d.bias is not None:
            q, s = quantize_per_segment(mixer.conv1d.bias.float(), mod.conv_segments)
            mod.conv_bias.copy_(q)
            mod.set_scale("conv_bias_scale", s)
        mod.set_scale("conv_out_scale", segment_vector([scales[k] for k in ("x_conv_out", "B_conv_out", "C_conv_out")],
                                                       mod.conv_segments, dev))
        for name in ("A_log", "D"):
            q, s = quantize_per_tensor(getattr(mixer, name).float())
            getattr(mod, name).copy_(q)
            mod.set_scale(f"{name}_scale", s)
        with torch.no_grad():
            mod.dt_bias.copy_(mixer.dt_bias.float())
            mod.norm_weight.copy_(mixer.norm.weight.float())
        mod.set_scale("ssm_state_scale", scales["ssm_state"])
        return mod

    def refresh_scales(self) -> None:
        super().refresh_scales()
        if self.conv_out_scale.device.type == "meta":
            return
        c = self.cfg
        gn = c.ngroups * c.d_state
        seg = self.in_proj.output_scale
        self._seg = dict(z=float(seg[0]), dt=float(seg[-1]), x=float(self.conv_out_scale[0]),
                         B=float(self.conv_out_scale[c.d_inner]), C=float(self.conv_out_scale[c.d_inner + gn]))

    def allocate_state(self, batch: int, device, dtype=None) -> LayerState:
        c = self.cfg
        return LayerState(conv=torch.zeros(batch, c.conv_dim, c.d_conv, device=device, dtype=torch.int8),
                          ssm=torch.zeros(batch, c.nheads, c.headdim, c.d_state, device=device, dtype=torch.int8),
                          work=(torch.zeros(batch, c.ngroups, device=device, dtype=torch.float32),))

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.cfg
        return zxbcdt.split([c.d_inner, c.conv_dim, c.nheads], dim=-1)

    def _split_xbc(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return xbc.split(self.conv_segments, dim=-1)

    def _conv_in_scale(self) -> Tensor:
        c = self.cfg
        return self.in_proj.output_scale[c.d_inner:c.d_inner + c.conv_dim]

    def _A_D(self) -> tuple[Tensor, Tensor]:
        """fp32 ``A`` and ``D`` from their int8 storage (computed once, then cached)."""
        return self.derived("A_D", lambda: (-torch.exp(ops.dequantize(self.A_log, self.scale("A_log_scale"))),
                                            ops.dequantize(self.D, self.scale("D_scale"))), self.A_log, self.D)

    def _fuses_decode(self, h: Tensor, state: LayerState | None) -> bool:
        return (state is not None and h.shape[1] == 1 and bool(state.work) and fused_decode()
                and self.out_proj.hadamard_input and self.out_proj.act == "static")

    def _decode_fused(self, h: Tensor, state: LayerState) -> Tensor:
        """One token in four launches instead of six (five with ``QUAMBA_FUSED_IN_PROJ=0``): in_proj with the
        conv update (``ops.qin_proj_conv_step``, which zeroes ``state.work[0]``), the SSD update + gate in one
        kernel (``ops.qssd_gate_step``, sums of squares into ``state.work[0]``), the norm finished inside the
        Hadamard quantization of out_proj's input (``ops.rms_hadamard_quant``), and out_proj."""
        c, s = self.cfg, self._seg
        b = h.shape[0]
        ss = state.work[0]
        conv = (self.conv_weight, self.conv_weight_scale, self.conv_bias, self.conv_bias_scale, self.conv_out_scale)
        if h.dtype == torch.int8 and fused_in_proj():
            lin = self.in_proj
            z, xbc_o, dt = self._split(ops.qin_proj_conv_step(
                h[:, 0], lin.scale("input_scale"), lin.weight, lin.scale("weight_scale"), lin.bias,
                lin.scale("output_scale"), state.conv, *conv, c.d_inner, zero=ss))
        else:
            z, xbc, dt = self._split(self.in_proj(h)[:, 0])
            xbc_o = ops.qcausal_conv1d_update(xbc, state.conv, self._conv_in_scale(), *conv, zero=ss)
        x, B, C = self._split_xbc(xbc_o)
        A, D = self._A_D()
        gw = ops.qssd_gate_step(state.ssm, self.scale("ssm_state_scale"), x.reshape(b, c.nheads, c.headdim), s["x"],
                                dt, s["dt"], A, B.reshape(b, c.ngroups, c.d_state), s["B"],
                                C.reshape(b, c.ngroups, c.d_state), s["C"], D, self.dt_bias, c.dt_limit, z, s["z"],
                                self.norm_weight, self.group_size, ss, self.out_dtype)
        xq = ops.rms_hadamard_quant(gw, ss, self.group_size, self.norm_eps, self.out_proj.scale("input_scale"))
        return self.out_proj(xq).unsqueeze(1)

    def forward(self, h: Tensor, state: LayerState | None = None) -> Tensor:
        if self.fake:
            return self._forward_fake(h, state)
        if self._fuses_decode(h, state):
            return self._decode_fused(h, state)
        c, s = self.cfg, self._seg
        b, L = h.shape[:2]
        z, xbc, dt = self._split(self.in_proj(h))
        s_h = self.scale("ssm_state_scale")
        A, D = self._A_D()
        conv = (self.conv_weight, self.conv_weight_scale, self.conv_bias, self.conv_bias_scale, self.conv_out_scale)
        if state is not None and L == 1:
            w, ws, bq, bs, os_ = conv
            xbc_o = ops.qcausal_conv1d_update(xbc[:, 0], state.conv, self._conv_in_scale(), w, ws, bq, bs, os_)
            x, B, C = self._split_xbc(xbc_o)
            y = ops.qssd_state_update(state.ssm, s_h, x.reshape(b, c.nheads, c.headdim), s["x"], dt[:, 0], s["dt"], A,
                                      B.reshape(b, c.ngroups, c.d_state), s["B"], C.reshape(b, c.ngroups, c.d_state),
                                      s["C"], D, self.dt_bias, dt_limit=c.dt_limit, out_dtype=self.out_dtype)
            y = y.reshape(b, 1, c.d_inner)
        else:
            xbc_o = ops.qcausal_conv1d(xbc, self._conv_in_scale(), *conv,
                                       initial_state=state.conv if state is not None else None,
                                       update_state=state is not None)
            x, B, C = self._split_xbc(xbc_o)
            y, last = ops.qssd_chunked(x.reshape(b, L, c.nheads, c.headdim), s["x"], dt, s["dt"], A,
                                       B.reshape(b, L, c.ngroups, c.d_state), s["B"],
                                       C.reshape(b, L, c.ngroups, c.d_state), s["C"], c.chunk_size, D, self.dt_bias,
                                       s_h, dt_limit=c.dt_limit,
                                       initial_state=state.ssm if state is not None else None,
                                       out_dtype=self.out_dtype)
            if state is not None:
                state.ssm.copy_(last)
            y = y.reshape(b, L, c.d_inner)
        y = ops.qgated_rms_norm(y, z, s["z"], self.norm_weight, self.norm_eps, self.group_size,
                                out_dtype=self.out_dtype)
        return self.out_proj(y)

    def _forward_fake(self, h: Tensor, state: LayerState | None) -> Tensor:
        """The same quantization points simulated in float, through the floating-point ops."""
        c = self.cfg
        b, L = h.shape[:2]
        z, xbc, dt = self._split(self.in_proj(h))
        s_in, s_out = self._conv_in_scale(), self.conv_out_scale
        s_h = self.scale("ssm_state_scale")
        A, D = self._A_D()
        w = ops.dequantize(self.conv_weight, self.conv_weight_scale.unsqueeze(1))
        bias = ops.dequantize(self.conv_bias, self.conv_bias_scale) if self.conv_bias is not None else None
        if state is not None and L == 1:
            conv = ops.dequantize(state.conv, s_in.unsqueeze(1))
            xbc_o = fake_quant(ops.causal_conv1d_update(xbc[:, 0], conv, w, bias, silu=True), s_out)
            state.conv.copy_(ops.quantize(conv, s_in.unsqueeze(1)))
            x, B, C = self._split_xbc(xbc_o)
            ssm = ops.dequantize(state.ssm, s_h)
            y = ops.ssd_state_update(ssm, x.reshape(b, c.nheads, c.headdim), dt[:, 0], A,
                                     B.reshape(b, c.ngroups, c.d_state), C.reshape(b, c.ngroups, c.d_state), D,
                                     dt_bias=self.dt_bias, dt_softplus=True, dt_limit=c.dt_limit)
            state.ssm.copy_(ops.quantize(ssm, s_h))
            y = y.reshape(b, 1, c.d_inner)
        else:
            conv = ops.dequantize(state.conv, s_in.unsqueeze(1)) if state is not None else None
            xbc_o = fake_quant(ops.causal_conv1d(xbc, w, bias, silu=True, initial_state=conv), s_out)
            x, B, C = self._split_xbc(xbc_o)
            y, last = ops.ssd_chunked(x.reshape(b, L, c.nheads, c.headdim), dt, A,
                                      B.reshape(b, L, c.ngroups, c.d_state), C.reshape(b, L, c.ngroups, c.d_state),
                                      c.chunk_size, D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=c.dt_limit,
                                      initial_state=ops.dequantize(state.ssm, s_h) if state is not None else None)
            if state is not None:
                st = ops.conv_state_from_inputs(xbc, c.d_conv, conv)
                state.conv.copy_(ops.quantize(st, s_in.unsqueeze(1)))
                state.ssm.copy_(ops.quantize(last, s_h))
            y = y.reshape(b, L, c.d_inner)
        y = ops.gated_rms_norm(y.to(self.out_dtype).float(), z, self.norm_weight, self.norm_eps, self.group_size)
        return self.out_proj(y.to(self.out_dtype))
