"""Fused Mamba1 decode step (2 launches) against the unfused sequence of existing kernels (4 launches),
fp16 and W8A8, inside CUDA graphs at mamba-2.8b shapes, batch 1.

The graph replays ``--layers`` layer steps, each with its own weights and states (more bytes than
the L2 holds, so weights come from HBM as in a real decode step); times are per layer. Rows:
- ``unfused``: conv update -> x_proj GEMV -> dt_proj GEMV -> selective state update (what the mixers
  run today), and each of those kernels alone;
- ``fused``: conv_xproj_step (with its zero-initialised accumulator) -> dtproj_state_step, each
  alone, and the accumulator memset alone;
- a plan sweep (BLOCK_D x num_warps) of both fused kernels: the best is what the plan functions in
  ``quamba.kernels.mamba1_step`` should return on this GPU;
- the plain-torch reference pair (eager, one layer) for scale.
``bytes`` is what a layer step must move (weights, states read and written, activations).

Usage: PYTHONPATH=src python benchmarks/kernels_mamba1_step.py [--shape mamba-2.8b] [--batch 1]
       [--layers 64] [--no-sweep] [--json]
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

import torch
import triton.testing

from quamba.config import shape_config
from quamba.kernels import conv1d, gemv, int8_gemm, mamba1_step, qconv1d, state_update
from quamba.kernels._small_common import per_tensor_scale_arg, scale_arg
from quamba.ops import fused_reference as FR
from quamba.kernels.timing import graph_replay_ms

DEV = "cuda"
F16 = torch.float16
SWEEP_FIRST = [(16, 2), (16, 4), (32, 4), (32, 8), (64, 4), (64, 8)]
SWEEP_SECOND = [(16, 2), (16, 4), (32, 2), (32, 4), (64, 4), (64, 8)]


def rnd(*shape, dtype=F16, scale=1.0):
    return (torch.randn(*shape, device=DEV) * scale).to(dtype)


def q8(*shape):
    return torch.randint(-128, 128, shape, device=DEV, dtype=torch.int8)


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def graph_us(calls: list[Callable], per: int, reps: int = 9) -> float:
    """Median time of one replay of a graph of ``calls``, divided by ``per`` (layers)."""
    return graph_replay_ms(calls, reps) * 1e3 / per


class FpLayer:
    """One fp16 layer's decode-step tensors (weights, states, activations, outputs)."""

    def __init__(self, bsz: int, d: int, k: int, r: int, n: int):
        self.x, self.z = rnd(bsz, d), rnd(bsz, d)
        self.conv, self.ssm = rnd(bsz, d, k), torch.randn(bsz, d, n, device=DEV) * 0.1
        self.cw, self.cb = rnd(d, k, scale=0.5), rnd(d)
        self.xw, self.dtw = rnd(r + 2 * n, d, scale=d ** -0.5), rnd(d, r, scale=r ** -0.5)
        self.dtb, self.A, self.D = torch.randn(d, device=DEV) - 2, -torch.rand(d, n, device=DEV) - 0.1, \
            torch.randn(d, device=DEV)
        self.r, self.n = r, n
        self.u = torch.empty(bsz, d, device=DEV, dtype=F16)
        self.dbc = torch.zeros(bsz, r + 2 * n, device=DEV)
        self.y = torch.empty(bsz, d, device=DEV, dtype=F16)

    def bytes(self) -> int:
        return nbytes(self.x, self.z, self.conv, self.conv, self.ssm, self.ssm, self.cw, self.cb, self.xw, self.dtw,
                      self.dtb, self.A, self.D, self.y)

    def unfused(self) -> list[Callable]:
        r, n = self.r, self.n
        hold = {}

        def conv():
            hold["u"] = conv1d.causal_conv1d_update(self.x, self.conv, self.cw, self.cb, True)

        def xproj():
            hold["dbc"] = gemv.linear(hold["u"], self.xw)

        def dtproj():
            hold["dt"] = gemv.linear(hold["dbc"][:, :r], self.dtw)

        def ssu():
            d = hold["dbc"]
            state_update.selective_state_update(self.ssm, hold["u"], hold["dt"], self.A, d[:, r:r + n],
                                                d[:, r + n:], self.D, self.z, self.dtb, True)
        return [conv, xproj, dtproj, ssu]

    def fused(self) -> list[Callable]:
        hold = {}

        def first():
            hold["u"], hold["dbc"] = mamba1_step.conv_xproj_step(self.x, self.conv, self.cw, self.cb, self.xw)

        def second():
            mamba1_step.dtproj_state_step(self.ssm, hold["u"], hold["dbc"], self.dtw, self.dtb, self.A, self.D, self.z)
        return [first, second]

    def plan_first(self, bd: int, w: int) -> Callable:
        def call():
            self.dbc.zero_()
            mamba1_step.launch_conv_xproj(self.x, self.conv, self.cw, self.cb, self.xw, self.u, self.dbc,
                                          (mamba1_step._NO_SCALE,) * 4, bd, w)
        return call

    def plan_second(self, bd: int, w: int) -> Callable:
        return lambda: mamba1_step.launch_dtproj_state(self.ssm, self.u, self.dbc, self.dtw, self.dtb, self.A,
                                                       self.D, self.z, self.y, (mamba1_step._NO_SCALE,) * 7, bd, w)

    def memset(self) -> Callable:
        return self.dbc.zero_

    def reference(self) -> Callable:
        conv, ssm = self.conv.clone(), self.ssm.clone()

        def call():
            u, dbc = FR.conv_xproj_step(self.x, conv, self.cw, self.cb, self.xw)
            FR.dtproj_state_step(ssm, u, dbc, self.dtw, self.dtb, self.A, self.D, self.z)
        return call


class QLayer:
    """One W8A8 layer's decode-step tensors; the scales of ``QMamba1Mixer`` as Python floats."""

    S = dict(xz=0.02, cw=0.01, cb=0.05, u=0.03, xw=2e-4, bc=0.03, dtw=0.004, dt=0.03, h=0.05)

    def __init__(self, bsz: int, d: int, k: int, r: int, n: int):
        self.x, self.z = q8(bsz, d), q8(bsz, d)
        self.conv, self.ssm = q8(bsz, d, k), q8(bsz, d, n)
        self.cw, self.cb = q8(d, k), q8(d)
        self.xw, self.dtw = q8(r + 2 * n, d), q8(d, r)
        self.dtb, self.A, self.D = torch.randn(d, device=DEV) - 2, -torch.rand(d, n, device=DEV) - 0.1, \
            torch.randn(d, device=DEV)
        self.r, self.n = r, n
        self.u = torch.empty(bsz, d, device=DEV, dtype=torch.int8)
        self.acc = torch.zeros(bsz, r + 2 * n, device=DEV, dtype=torch.int32)
        self.y = torch.empty(bsz, d, device=DEV, dtype=F16)

    def bytes(self) -> int:
        return nbytes(self.x, self.z, self.conv, self.conv, self.ssm, self.ssm, self.cw, self.cb, self.xw, self.dtw,
                      self.dtb, self.A, self.D, self.y)

    def conv_args(self) -> tuple:
        s = self.S
        return (s["xz"], self.cw, s["cw"], self.cb, s["cb"], s["u"])

    def state_args(self, u, acc) -> tuple:
        s = self.S
        return (s["h"], u, s["u"], acc, s["xw"], s["bc"], self.dtw, s["dtw"], s["dt"], self.A, self.D, self.z,
                s["xz"], self.dtb)

    def unfused(self) -> list[Callable]:
        r, n, s = self.r, self.n, self.S
        hold = {}

        def conv():
            hold["u"] = qconv1d.qcausal_conv1d_update(self.x, self.conv, *self.conv_args())

        def xproj():
            hold["dbc"] = int8_gemm.int8_linear(hold["u"], self.xw, s["u"], s["xw"], None, out_scale=s["bc"])

        def dtproj():
            hold["dt"] = int8_gemm.int8_linear(hold["dbc"][:, :r], self.dtw, s["bc"], s["dtw"], None, out_scale=s["dt"])

        def ssu():
            d = hold["dbc"]
            state_update.qselective_state_update(self.ssm, s["h"], hold["u"], s["u"], hold["dt"], s["dt"], self.A,
                                                 d[:, r:r + n], s["bc"], d[:, r + n:], s["bc"], self.D, self.z,
                                                 s["xz"], self.dtb)
        return [conv, xproj, dtproj, ssu]

    def fused(self) -> list[Callable]:
        hold = {}

        def first():
            hold["u"], hold["acc"] = mamba1_step.qconv_xproj_step(self.x, self.conv, *self.conv_args(), self.xw)

        def second():
            mamba1_step.qdtproj_state_step(self.ssm, *self.state_args(hold["u"], hold["acc"]))
        return [first, second]

    def plan_first(self, bd: int, w: int) -> Callable:
        d = self.x.shape[1]
        c = self.conv_args()
        scales = (scale_arg(c[0], d, "x"), scale_arg(c[2], d, "w"), scale_arg(c[4], d, "b"), scale_arg(c[5], d, "u"))

        def call():
            self.acc.zero_()
            mamba1_step.launch_conv_xproj(self.x, self.conv, self.cw, self.cb, self.xw, self.u, self.acc, scales,
                                          bd, w)
        return call

    def plan_second(self, bd: int, w: int) -> Callable:
        s = self.S
        scales = tuple(per_tensor_scale_arg(v, "s") for v in (s["h"], s["u"], s["xw"], s["bc"], s["dtw"], s["dt"],
                                                               s["xz"]))
        return lambda: mamba1_step.launch_dtproj_state(self.ssm, self.u, self.acc, self.dtw, self.dtb, self.A,
                                                       self.D, self.z, self.y, scales, bd, w)

    def memset(self) -> Callable:
        return self.acc.zero_

    def reference(self) -> Callable:
        conv, ssm = self.conv.clone(), self.ssm.clone()

        def call():
            u, acc = FR.qconv_xproj_step(self.x, conv, *self.conv_args(), self.xw)
            FR.qdtproj_state_step(ssm, *self.state_args(u, acc))
        return call


def measure(kind: str, layers: list, sweep: bool) -> list[dict]:
    per = len(layers)
    lb = layers[0].bytes()
    rows = []

    def add(name: str, launches: int, us: float, moved: int | None = None):
        rows.append(dict(precision=kind, variant=name, launches=launches, us_per_layer=us,
                         bytes_per_layer=moved if moved is not None else lb,
                         GBps=(moved if moved is not None else lb) / (us * 1e-6) / 1e9))
        print(f"{kind:5s} {name:34s} {launches:3d} {us:9.2f} us/layer {rows[-1]['GBps']:8.0f} GB/s", flush=True)

    unfused = [layer.unfused() for layer in layers]
    fused = [layer.fused() for layer in layers]
    add("unfused (4 kernels)", 4, graph_us([c for fs in unfused for c in fs], per))
    for i, name in enumerate(("  conv update", "  x_proj GEMV", "  dt_proj GEMV", "  state update")):
        add(name, 1, graph_us([c for fs in unfused for c in fs[: i + 1]], per)
            - (graph_us([c for fs in unfused for c in fs[:i]], per) if i else 0.0), None)
    add("fused (memset + 2 kernels)", 3, graph_us([c for fs in fused for c in fs], per))
    add("  accumulator memset", 1, graph_us([layer.memset() for layer in layers], per), 0)
    if sweep:
        best1 = min(((graph_us([layer.plan_first(bd, w) for layer in layers], per), bd, w) for bd, w in SWEEP_FIRST))
        best2 = min(((graph_us([layer.plan_second(bd, w) for layer in layers], per), bd, w) for bd, w in SWEEP_SECOND))
        add(f"  conv_xproj best plan {best1[1:]} (+memset)", 2, best1[0])
        add(f"  dtproj_state best plan {best2[1:]}", 1, best2[0])
    ref = layers[0].reference()
    ref()
    add("plain-torch reference pair (eager)", 0,
        triton.testing.do_bench(ref, warmup=10, rep=50, return_mode="median") * 1e3)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="mamba-2.8b")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", type=int, default=64, help="layer copies in the graph (defeat the L2)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the plan sweep of the fused kernels")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels_mamba1_step.py needs a CUDA GPU")
    cfg = shape_config(args.shape)
    dims = (args.batch, cfg.d_inner, cfg.d_conv, cfg.dt_rank, cfg.d_state)
    print(torch.cuda.get_device_name(), args.shape, "batch", args.batch, "d_inner, d_conv, dt_rank, d_state =",
          dims[1:], flush=True)
    rows = []
    for kind, cls in (("fp16", FpLayer), ("w8a8", QLayer)):
        layers = [cls(*dims) for _ in range(args.layers)]
        rows += measure(kind, layers, not args.no_sweep)
        del layers
        torch.cuda.empty_cache()
    if args.json:
        print(json.dumps(dict(shape=args.shape, batch=args.batch, layers=args.layers, results=rows)))


if __name__ == "__main__":
    main()
