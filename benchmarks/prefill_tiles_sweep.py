"""GPU-time sweep of the small W8A8 prefill kernels of a Mamba1 block: dt_proj, x_proj and the int8 conv.

At 1024 prompt tokens of mamba-2.8b these run 10-18 us each, a few times their memory floor. Each candidate
(GEMM tile, stages, warps, K split; conv tile and warps) runs 16 times back to back in a CUDA graph (no host
time), on the inputs the block gives it (dt_proj reads a strided view of x_proj's output, the conv the x half
of in_proj's output); its output is checked equal to the library's before it is timed.
Usage: PYTHONPATH=src python benchmarks/prefill_tiles_sweep.py [--tokens 1024] [--only gemm,conv] [--json PATH]
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch

from quamba.kernels import int8_gemm as G
from quamba.kernels import qconv1d as Q
from quamba.kernels.launch import cdiv
from quamba.kernels.timing import graph_call_ms

DEV = "cuda"
D_MODEL, D_INNER, DT_RANK, D_STATE = 2560, 5120, 160, 16


def gemm_candidates(k: int, n: int) -> list[dict]:
    out = []
    if n <= 256:  # x_proj: few output tiles, K split
        for bm, bn, split in itertools.product((32, 64, 128), (64, 256), (1, 2, 4, 8, 16)):
            out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, GROUP_M=8, num_stages=4, num_warps=4, SPLIT_K=split))
        return out
    for bm, bn, bk, (stages, warps) in itertools.product((64, 128), (64, 128, 256), (32, 64, 128),
                                                         ((3, 4), (4, 8))):
        out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_stages=stages, num_warps=warps, SPLIT_K=1))
    return out


def time_candidates(kernel: str, library: str, run, out: torch.Tensor, candidates) -> list[dict]:
    """Rows for ``run(None)`` (the library's choice, named ``library``) and for ``run(c)`` per candidate: GPU time in
    a graph, and whether ``out`` (zeroed before each run) equals the library's result."""
    run(None)
    want = out.clone()
    rows = [dict(kernel=kernel, config="library " + library, us=graph_call_ms(lambda: run(None)) * 1e3)]
    for c in candidates:
        try:
            out.fill_(0)
            run(c)
            exact = bool(torch.equal(out, want))
            us = graph_call_ms(lambda c=c: run(c)) * 1e3
        except Exception as e:  # noqa: BLE001  (a tile the compiler rejects: report it, go on)
            rows.append(dict(kernel=kernel, config=str(c), error=type(e).__name__))
            continue
        rows.append(dict(kernel=kernel, config=str(c), us=us, exact=exact))
    return rows


def sweep_gemm(name: str, x: torch.Tensor, w: torch.Tensor) -> list[dict]:
    m, n = x.shape[0], w.shape[0]
    out = torch.empty(m, n, dtype=torch.int8, device=DEV)
    ep = G.epilogue_args(0.02, 0.01, None, 0.5, m, n, out)

    def run(cfg):
        return G.launch_gemm(x, w, out, ep) if cfg is None else G._run_gemm(x, w, out, ep, cfg)

    G.launch_gemm(x, w, out, ep)
    tuned = G._TUNED[G.tune_key(m, n, x.shape[1], x.device, True)]
    return time_candidates(name, str(tuned), run, out, gemm_candidates(x.shape[1], n))


def sweep_conv(L: int) -> list[dict]:
    xz = torch.randint(-128, 128, (1, L, 2 * D_INNER), dtype=torch.int8, device=DEV)
    x = xz[:, :, :D_INNER]
    w = torch.randint(-128, 128, (D_INNER, 4), dtype=torch.int8, device=DEV)
    b = torch.randint(-128, 128, (D_INNER,), dtype=torch.int8, device=DEV)
    state = torch.randint(-128, 128, (1, D_INNER, 4), dtype=torch.int8, device=DEV)
    scales = Q._scales(D_INNER, 0.05, 0.01, b, 0.02, 0.03)
    y = torch.empty(1, L, D_INNER, dtype=torch.int8, device=DEV)
    tiles = [(bl, bd, warps) for bl, bd, warps in itertools.product((8, 16, 32, 64), (64, 128, 256, 512), (1, 2, 4, 8))
             if 4 <= bl * bd / (32 * warps) <= 128 and cdiv(L, bl) * cdiv(D_INNER, bd) >= 132]
    return time_candidates("qconv", str(Q.qconv_tile(L, D_INNER)),
                           lambda tile: Q.launch_qconv(x, y, scales, w, b, state, False, tile), y, tiles)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--only", default="gemm,conv")
    ap.add_argument("--json", help="write the rows to this path")
    args = ap.parse_args()
    torch.manual_seed(0)
    L = args.tokens
    rows = []
    parts = args.only.split(",")
    if "gemm" in parts:
        dbc = torch.randint(-128, 128, (L, DT_RANK + 2 * D_STATE), dtype=torch.int8, device=DEV)
        rows += sweep_gemm("dt_proj", dbc[:, :DT_RANK],
                           torch.randint(-128, 128, (D_INNER, DT_RANK), dtype=torch.int8, device=DEV))
        rows += sweep_gemm("x_proj", torch.randint(-128, 128, (L, D_INNER), dtype=torch.int8, device=DEV),
                           torch.randint(-128, 128, (DT_RANK + 2 * D_STATE, D_INNER), dtype=torch.int8, device=DEV))
    if "conv" in parts:
        rows += sweep_conv(L)
    print(f"{torch.cuda.get_device_name()}  tokens={L}")
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        mine = [r for r in rows if r["kernel"] == kernel]
        ok = sorted((r for r in mine if "us" in r), key=lambda r: r["us"])
        lib = next(r for r in mine if r["config"].startswith("library"))
        print(f"{kernel}: library {lib['us']:.2f} us ({lib['config']}); {len(mine) - len(ok)} failed")
        for r in ok[:8]:
            print(f"   {r['us']:7.2f} us  exact={r.get('exact')}  {r['config']}")
        bad = [r for r in ok if r.get("exact") is False]
        if bad:
            print(f"   NOT EXACT: {len(bad)} configs, e.g. {bad[0]['config']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
