"""Launches the small W8A8 prefill kernels of a mamba-2.8b block once each (after a warm-up), for a profiler.

Usage: ncu --section SpeedOfLight --section WarpStateStats -k regex:'qconv|hadamard' \
       python benchmarks/prefill_kernels_once.py [--tokens 1024]
"""
from __future__ import annotations

import argparse

import torch

from quamba.kernels import hadamard as H
from quamba.kernels import qconv1d as Q

DEV = "cuda"
D_INNER = 5120


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024)
    L = ap.parse_args().tokens
    xz = torch.randint(-128, 128, (1, L, 2 * D_INNER), dtype=torch.int8, device=DEV)
    w = torch.randint(-128, 128, (D_INNER, 4), dtype=torch.int8, device=DEV)
    b = torch.randint(-128, 128, (D_INNER,), dtype=torch.int8, device=DEV)
    state = torch.randint(-128, 128, (1, D_INNER, 4), dtype=torch.int8, device=DEV)
    y = torch.randn(L, D_INNER, dtype=torch.float16, device=DEV)
    scale = torch.tensor(0.05, device=DEV)
    for _ in range(2):
        Q.qcausal_conv1d(xz[:, :, :D_INNER], 0.05, w, 0.01, b, 0.02, 0.03, state, True)
        H.hadamard_quant(y, scale)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
