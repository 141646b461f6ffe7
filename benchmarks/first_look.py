"""First GPU look: copy bandwidth, our model on the plain-torch path, transformers' fp16 baseline.

Usage: PYTHONPATH=src python benchmarks/first_look.py [--shapes mamba-2.8b,mamba2-2.7b] [--json]
"""
from __future__ import annotations

import argparse
import json

import torch

from quamba import ops
from quamba.bench import bench_ours, bench_transformers, copy_bandwidth, cuda_time_ms, format_table
from quamba.config import shape_config
from quamba.models import MambaLM, init_random_weights


def gemv_floor(cfg, bw: float) -> dict:
    """Time of the block linears alone at M=1 (cuBLAS fp16), against their weight bytes / bandwidth."""
    x = torch.randn(1, cfg.d_model, device="cuda", dtype=torch.float16)
    xi = torch.randn(1, cfg.d_inner, device="cuda", dtype=torch.float16)
    w_in = torch.randn(cfg.in_proj_dim, cfg.d_model, device="cuda", dtype=torch.float16)
    w_out = torch.randn(cfg.d_model, cfg.d_inner, device="cuda", dtype=torch.float16)
    t_in = cuda_time_ms(lambda: torch.nn.functional.linear(x, w_in), 5, 50)
    t_out = cuda_time_ms(lambda: torch.nn.functional.linear(xi, w_out), 5, 50)
    b = (w_in.numel() + w_out.numel()) * 2
    return {"in_proj_ms": t_in, "out_proj_ms": t_out, "bytes": b, "floor_ms": b / bw * 1e3,
            "achieved_GBps": b / ((t_in + t_out) / 1e3) / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="mamba-2.8b,mamba2-2.7b")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}  copy bandwidth {bw/1e9:.0f} GB/s", flush=True)
    out = {"bandwidth_GBps": bw / 1e9, "shapes": {}}
    for shape in args.shapes.split(","):
        cfg = shape_config(shape)
        res = {"gemv": gemv_floor(cfg, bw)}
        print(shape, res["gemv"], flush=True)
        with torch.device("cuda"):
            m = MambaLM(cfg).to(torch.float16)
        init_random_weights(m)
        m.eval()
        results = []
        with ops.backend("torch"):
            results.append(bench_ours(m, "fp16-torchref", 1, args.prompt_len, args.gen_len, repeats=3, bandwidth=bw))
        print(format_table(results), flush=True)
        del m
        torch.cuda.empty_cache()
        results.append(bench_transformers(cfg, 1, args.prompt_len, args.gen_len, repeats=2))
        print(format_table(results), flush=True)
        res["results"] = [r.to_dict() for r in results]
        out["shapes"][shape] = res
    if args.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
