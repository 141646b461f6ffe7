"""Int8 kernels on the GPU: int8_linear (decode GEMV / prefill GEMM), hadamard_quant, qembedding.

int8_linear is timed at the Mamba block shapes for M=1 (decode; weight GB/s) and M=1024 (prefill;
TOPS) against cuBLAS fp16 ``F.linear``, the fp16 decode GEMV of ``quamba.kernels.gemv``,
``torch._int_mm`` (int32 out, no epilogue; M > 16 only) and the plain-torch reference.
``--sweep`` also times alternative decode GEMV plans, to tune ``gemv_plan``.

Usage: PYTHONPATH=src python benchmarks/kernels_int8.py [--json [PATH]] [--sweep] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from quamba.kernels import int8_gemm as G
from quamba.kernels.hadamard import hadamard_quant
from quamba.kernels.qembedding import qembedding
from quamba.ops import qreference as Q

LINEAR_SHAPES = {  # name: (N, K)
    "m1-2.8b in_proj": (10240, 2560), "m1-2.8b x_proj": (192, 5120), "m1-2.8b dt_proj": (5120, 160),
    "m1-2.8b out_proj": (2560, 5120), "m2-2.7b in_proj": (10576, 2560), "m2-2.7b out_proj": (2560, 5120),
}
HADAMARD_SIZES = (2560, 5120, 8192)


def _ms(fn) -> float:
    return do_bench(fn, warmup=5, rep=25, return_mode="median")


def _maybe(fn) -> float | None:
    try:
        return _ms(fn)
    except Exception as e:  # a baseline that does not support the shape
        print(f"  (baseline skipped: {type(e).__name__}: {str(e).splitlines()[0][:80]})", file=sys.stderr)
        return None


def bench_linear(name: str, m: int, n: int, k: int, with_ref: bool) -> dict:
    dev = "cuda"
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=dev)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev)
    xs = torch.rand(m, device=dev) * 0.02
    ws = torch.rand(n, device=dev) * 0.01
    xh = torch.randn(m, k, device=dev, dtype=torch.float16)
    wh = torch.randn(n, k, device=dev, dtype=torch.float16)
    row = {"name": name, "M": m, "N": n, "K": k}
    row["int8_fp16out_ms"] = _ms(lambda: G.int8_linear(x, w, xs, ws))
    row["int8_int8out_ms"] = _ms(lambda: G.int8_linear(x, w, xs, ws, out_scale=0.05))
    row["fp16_cublas_ms"] = _ms(lambda: F.linear(xh, wh))
    if m <= 8:
        from quamba.kernels.gemv import gemv
        row["fp16_gemv_ms"] = _maybe(lambda: gemv(xh, wh))
    row["int_mm_ms"] = _maybe(lambda: torch._int_mm(x, w.t())) if m > 16 and k % 8 == 0 and n % 8 == 0 else None
    row["ref_ms"] = _ms(lambda: Q.int8_linear(x, w, xs, ws)) if with_ref else None
    t = row["int8_fp16out_ms"] / 1e3
    if m <= 8:
        row["int8_weight_GBps"] = n * k / t / 1e9
        fp16 = min(v for v in (row["fp16_cublas_ms"], row.get("fp16_gemv_ms")) if v)
        row["vs_best_fp16"] = row["int8_fp16out_ms"] / fp16
        row["plan"] = G.gemv_plan(n, k, G.num_sms(x.device))
    else:
        row["int8_TOPS"] = 2 * m * n * k / t / 1e12
        row["fp16_TFLOPS"] = 2 * m * n * k / (row["fp16_cublas_ms"] / 1e3) / 1e12
        row["vs_fp16"] = row["int8_fp16out_ms"] / row["fp16_cublas_ms"]
        cfg = G._TUNED.get(G.tune_key(m, n, k, x.device, False))
        row["config"] = str(cfg) if cfg is not None else None
    return row


def sweep_gemv(m: int, n: int, k: int) -> list[dict]:
    """Time every plan of a small grid for one decode shape (exact output checked once per plan)."""
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
    out = torch.empty(m, n, dtype=torch.float16, device="cuda")
    ep = G.epilogue_args(0.01, 0.01, None, None, m, n, out)
    ref = G.int8_linear(x, w, 0.01, 0.01)
    rows = []
    for bn, bk, stages in itertools.product((32, 64, 128), (128, 256, 512), (3, 4)):
        k_blocks = triton.cdiv(k, bk)
        for split in sorted({1, 2, 4, 8, 16, k_blocks}):
            if split > k_blocks:
                continue
            per = triton.cdiv(k_blocks, split)
            plan = (bn, bk, triton.cdiv(k_blocks, per), per * bk)
            try:
                G.launch_gemv(x, w, out, ep, plan, num_stages=stages)
                ok = torch.equal(out, ref)
                ms = _ms(lambda: G.launch_gemv(x, w, out, ep, plan, num_stages=stages))
            except Exception as e:
                print(f"  plan {plan} stages {stages}: {type(e).__name__}", file=sys.stderr)
                continue
            rows.append({"M": m, "N": n, "K": k, "plan": plan, "stages": stages, "ms": ms,
                         "GBps": n * k / (ms / 1e3) / 1e9, "exact": ok})
    rows.sort(key=lambda r: r["ms"])
    return rows


def bench_hadamard(n: int, m: int, dtype: torch.dtype, with_ref: bool) -> dict:
    x = torch.randn(m, n, device="cuda", dtype=dtype)
    scale = 0.05
    ms = _ms(lambda: hadamard_quant(x, scale))
    ref = Q.hadamard_quant(x, scale)
    got = hadamard_quant(x, scale)
    moved = m * n * (x.element_size() + 1)
    return {"n": n, "M": m, "dtype": str(dtype).replace("torch.", ""), "ms": ms, "GBps": moved / (ms / 1e3) / 1e9,
            "ref_ms": _ms(lambda: Q.hadamard_quant(x, scale)) if with_ref else None,
            "mismatch_frac": (got != ref).float().mean().item(), "max_diff": (got.int() - ref.int()).abs().max().item()}


def bench_qembedding(tokens: int, vocab: int = 50280, d: int = 2560) -> dict:
    w = torch.randint(-128, 128, (vocab, d), dtype=torch.int8, device="cuda")
    s = torch.rand(vocab, device="cuda")
    ids = torch.randint(0, vocab, (tokens,), device="cuda")
    ms = _ms(lambda: qembedding(ids, w, s))
    return {"tokens": tokens, "D": d, "ms": ms, "ref_ms": _ms(lambda: Q.qembedding(ids, w, s)),
            "GBps": tokens * d * 3 / (ms / 1e3) / 1e9}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[dict], cols: list[str]) -> str:
    cells = [cols] + [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(wd) for c, wd in zip(row, widths)) for row in cells)


def _summary(out: dict) -> str:
    """Per-block totals of the mamba-2.8b linears (int8, fp16 out) against the best fp16 baseline."""
    lines = ["summary (mamba-2.8b block linears: in_proj + x_proj + dt_proj + out_proj)"]
    for m in sorted({r["M"] for r in out["linear"]}):
        rows = [r for r in out["linear"] if r["M"] == m and r["name"].startswith("m1-")]
        if not rows:
            continue
        ours = sum(r["int8_fp16out_ms"] for r in rows)
        fp16 = sum(min(v for v in (r["fp16_cublas_ms"], r.get("fp16_gemv_ms")) if v) for r in rows)
        lines.append(f"  M={m}: int8 {ours * 1e3:.1f} us, best fp16 {fp16 * 1e3:.1f} us, ratio {ours / fp16:.2f}")
    for r in out["hadamard"]:
        if r["M"] == 1024 and r["n"] == 5120:
            lines.append(f"  hadamard_quant 1024x5120 {r['dtype']}: {r['ms'] * 1e3:.1f} us, {r['GBps']:.0f} GB/s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", nargs="?", const="-", default=None, help="write results as JSON (to PATH or stdout)")
    ap.add_argument("--sweep", action="store_true", help="also sweep decode GEMV plans (slow: many compiles)")
    ap.add_argument("--quick", action="store_true", help="skip the plain-torch reference timings")
    ap.add_argument("--ms", default="1,1024", help="token counts for int8_linear (<= 15 runs the decode GEMV)")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = {"device": torch.cuda.get_device_name(), "linear": [], "hadamard": [], "qembedding": [], "sweep": []}
    for m in (int(v) for v in args.ms.split(",")):
        for name, (n, k) in LINEAR_SHAPES.items():
            out["linear"].append(bench_linear(name, m, n, k, with_ref=not args.quick and m in (1, 1024)))
            print(f"  {name} M={m} done", file=sys.stderr, flush=True)
    dec = [r for r in out["linear"] if r["M"] <= 8]
    pre = [r for r in out["linear"] if r["M"] > 8]
    print(out["device"])
    print("int8_linear, decode (GB/s = int8 weight bytes / time; vs_best_fp16 = ours / min(cuBLAS, fp16 GEMV))")
    print(_table(dec, ["name", "M", "N", "K", "int8_fp16out_ms", "int8_int8out_ms", "fp16_cublas_ms", "fp16_gemv_ms",
                       "ref_ms", "int8_weight_GBps", "vs_best_fp16", "plan"]))
    print("int8_linear, prefill (TOPS = 2MNK / time)")
    print(_table(pre, ["name", "M", "N", "K", "int8_fp16out_ms", "int8_int8out_ms", "fp16_cublas_ms", "int_mm_ms",
                       "ref_ms", "int8_TOPS", "fp16_TFLOPS", "vs_fp16"]))
    for r in pre:
        print(f"  {r['name']}: {r['config']}")
    for n in HADAMARD_SIZES:
        for m in (1, 1024):
            for dt in (torch.float16, torch.float32):
                out["hadamard"].append(bench_hadamard(n, m, dt, with_ref=not args.quick))
    print("hadamard_quant (GB/s = input + int8 output bytes / time)")
    print(_table(out["hadamard"], ["n", "M", "dtype", "ms", "GBps", "ref_ms", "mismatch_frac", "max_diff"]))
    out["qembedding"] = [bench_qembedding(t) for t in (1, 1024)]
    print("qembedding (vocab 50280 x 2560)")
    print(_table(out["qembedding"], ["tokens", "D", "ms", "ref_ms", "GBps"]))
    if args.sweep:
        for m in (1, 4):
            for n, k in sorted(set(LINEAR_SHAPES.values())):
                rows = sweep_gemv(m, n, k)
                out["sweep"].extend(rows)
                print(f"sweep M={m} N={n} K={k}: default plan {G.gemv_plan(n, k, G.num_sms(torch.device('cuda')))}")
                print(_table(rows[:5], ["plan", "stages", "ms", "GBps", "exact"]))
    print(_summary(out))
    if args.json:
        text = json.dumps(out, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)


if __name__ == "__main__":
    main()
