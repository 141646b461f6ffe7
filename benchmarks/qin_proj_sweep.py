"""GPU-time sweep of the W8A8 decode in_proj with the conv update fused (``qin_proj_conv_step``), real shapes.

Per shape (batch 1): the two launches it replaces (the int8 in_proj GEMV, then the conv update, or Mamba1's
conv + x_proj kernel), the library's plan, and tile candidates (prefetch, BLOCK_N, BLOCK_K bytes, warps). Each
runs 16 times back to back in a CUDA graph (set QUAMBA_PDL=0 to time launches that do not overlap); each
candidate's output, conv state and x_proj accumulator are first checked equal to the library plan's.
Usage: PYTHONPATH=src python benchmarks/qin_proj_sweep.py [--shapes mamba-2.8b,mamba2-2.7b] [--json PATH]
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch

from quamba.config import SHAPES, MambaConfig
from quamba.kernels import qin_proj_step as K
from quamba.kernels.timing import graph_call_ms

DEV = "cuda"


def q8(*s):
    return torch.randint(-128, 128, s, dtype=torch.int8, device=DEV)


def operands(shape: str) -> dict:
    cfg = MambaConfig(**SHAPES[shape])
    n, k = cfg.in_proj_dim, cfg.d_model
    pos = lambda *s: torch.rand(*s, device=DEV) * 0.02 + 0.005  # noqa: E731
    c = cfg.conv_dim
    if cfg.arch == "mamba1":
        return dict(h_q=q8(1, k), h_scale=0.01, weight=q8(n, k), w_scale=0.004, bias=None, out_scale=0.3,
                    conv_state=q8(1, c, cfg.d_conv), conv_w=q8(c, cfg.d_conv), conv_w_scale=0.01, conv_b=q8(c),
                    conv_b_scale=0.02, conv_out_scale=0.03, start=0, zero=None,
                    xproj_w=q8(cfg.dt_rank + 2 * cfg.d_state, c),
                    acc=torch.zeros(1, cfg.dt_rank + 2 * cfg.d_state, dtype=torch.int32, device=DEV))
    return dict(h_q=q8(1, k), h_scale=0.01, weight=q8(n, k), w_scale=pos(n), bias=None, out_scale=pos(n) * 20,
                conv_state=q8(1, c, cfg.d_conv), conv_w=q8(c, cfg.d_conv), conv_w_scale=pos(c), conv_b=q8(c),
                conv_b_scale=pos(c), conv_out_scale=pos(c), start=cfg.d_inner,
                zero=torch.zeros(1, cfg.ngroups, device=DEV), xproj_w=None, acc=None)


def candidates() -> list[tuple[bool, int, int, int]]:
    return [(pf, bn, bk, w) for pf, bn, bk, w in itertools.product((True, False), (4, 8, 16, 32), (512, 1024), (2, 4, 8))
            if bn * bk // 4 >= 32 * w]


def sweep(shape: str) -> list[dict]:
    a = operands(shape)
    mutable = [t for t in (a["conv_state"], a["acc"]) if t is not None]
    snap = [t.clone() for t in mutable]

    def restore():
        for t, s in zip(mutable, snap):
            t.copy_(s)

    restore()
    want = K.qin_proj_conv_step(**a)
    want_mut = [t.clone() for t in mutable]
    lib = K.qin_proj_plan(a["weight"].shape[0], a["weight"].shape[1], 1, a["xproj_w"] is not None)
    rows = [dict(shape=shape, config="two launches", us=graph_call_ms(lambda: K.two_launches(**a)) * 1e3),
            dict(shape=shape, config=f"library {lib}", us=graph_call_ms(lambda: K.qin_proj_conv_step(**a)) * 1e3)]
    for cfg in candidates():
        try:
            restore()
            got = K.qin_proj_conv_step(**a, tiles=cfg)
            exact = bool(torch.equal(got, want)) and all(torch.equal(t, w) for t, w in zip(mutable, want_mut))
            us = graph_call_ms(lambda cfg=cfg: K.qin_proj_conv_step(**a, tiles=cfg)) * 1e3
        except Exception as e:  # noqa: BLE001  (a tile the compiler rejects: report it, go on)
            rows.append(dict(shape=shape, config=str(cfg), error=type(e).__name__))
            continue
        rows.append(dict(shape=shape, config=str(cfg), us=us, exact=exact))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="mamba-2.8b,mamba2-2.7b")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = []
    for shape in args.shapes.split(","):
        rows = sweep(shape)
        out += rows
        timed = sorted((r for r in rows if "us" in r), key=lambda r: r["us"])
        print(f"== {shape}")
        for r in rows[:2] + [r for r in timed if r not in rows[:2]][:10]:
            print(f"  {r['config']:<34} {r['us']:7.2f} us  {'' if r.get('exact', True) else 'NOT EXACT'}")
        bad = [r for r in rows if r.get("exact") is False or "error" in r]
        print(f"  {len(rows) - 2} candidates, {len(bad)} not exact or failed", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
