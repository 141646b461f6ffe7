"""Accuracy report: WikiText-2 perplexity of each model in floating point and under every W8A8 recipe.

For every model the floating-point checkpoint is reloaded per method, quantized in place with the
recipe (calibrated on the same seeded samples), and scored with the WikiText-2 protocol
(``quamba.evaluation.perplexity``). The result is a markdown file (default ``ACCURACY.md`` at the
repository root) with one row per model and method, the change against the floating-point model,
the exact command and every setting; ``--json`` also prints the results as one JSON object.

    python benchmarks/accuracy_report.py                       # full report (a GPU is advised)
    python benchmarks/accuracy_report.py --max-tokens 65536 --num-samples 64 --out /tmp/acc.md
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_MODELS = [SHARED / "models" / "mamba1-small", SHARED / "models" / "mamba2-small"]
DEFAULT_PPL = SHARED / "data" / "wikitext-2-raw" / "test.txt"
DEFAULT_CALIB = SHARED / "data" / "calib" / "enwiki-2014-calib.jsonl"


def recipe_names() -> list[str]:
    from quamba.quantization import RECIPES

    return list(RECIPES)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=[str(m) for m in DEFAULT_MODELS], metavar="DIR",
                   help="floating-point model directories (default: the shared mamba1-small and mamba2-small)")
    p.add_argument("--methods", default=None,
                   help="comma list: the float baseline (fp32/fp16/bf16, same as --dtype) and recipe names "
                        "(default: the baseline and every recipe)")
    p.add_argument("--ppl", default=str(DEFAULT_PPL), metavar="FILE", help="evaluation text (WikiText-2 test)")
    p.add_argument("--calib", default=str(DEFAULT_CALIB), metavar="FILE", help="calibration text or .jsonl")
    p.add_argument("--num-samples", type=int, default=512, help="calibration windows (default 512)")
    p.add_argument("--calib-seqlen", type=int, default=512, help="calibration window length (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration window offsets (default 0)")
    p.add_argument("--percentile", type=float, default=None,
                   help="percentile for the recipes' percentile observers (default: the recipe default)")
    p.add_argument("--h2t", action="store_true",
                   help="also quantize the embedding and the LM head (as the authors' eval.sh does)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length (default 2048)")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="perplexity windows per forward (default 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="float dtype of the baseline and of the quantized models' float parts (default fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=str(ROOT / "ACCURACY.md"), help="markdown file to write (default ACCURACY.md)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON object on stdout")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[str]:
    """Validate everything that can be checked before hours of work; returns the method list."""
    from quamba.errors import InvalidArgumentError

    for name, low in (("num_samples", 1), ("calib_seqlen", 2), ("seqlen", 2), ("batch_size", 1)):
        if getattr(args, name) < low:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be >= {low}")
    if args.max_tokens is not None and args.max_tokens < args.seqlen:
        raise InvalidArgumentError(f"--max-tokens {args.max_tokens} is less than one window of {args.seqlen}")
    if args.threads is not None and args.threads < 1:
        raise InvalidArgumentError("--threads must be >= 1")
    if args.percentile is not None and not 0.0 < args.percentile <= 1.0:
        raise InvalidArgumentError("--percentile must be in (0, 1]")
    for m in args.models:
        if not (Path(m) / "config.json").is_file():
            raise InvalidArgumentError(f"model directory {m} has no config.json")
    for what, f in (("--ppl", args.ppl), ("--calib", args.calib)):
        if not Path(f).is_file():
            raise InvalidArgumentError(f"{what} file {f} does not exist")
    if args.methods is None:
        return [args.dtype] + recipe_names()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = [args.dtype] + recipe_names()
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise InvalidArgumentError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
    return methods


def recipe_config(name: str, args: argparse.Namespace):
    from quamba.quantization import RECIPES

    settings: dict[str, Any] = {}
    if args.percentile is not None:
        settings["percentile"] = args.percentile
    if args.h2t:
        settings.update(quantize_embedding=True, quantize_lm_head=True)
    return RECIPES[name](**settings)


def recipe_line(config: Any) -> str:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    name = d.pop("name", type(config).__name__)
    return f"  - {name}: " + ", ".join(f"{k}={v}" for k, v in d.items())


def evaluate_model(path: str, methods: list[str], args: argparse.Namespace, text: str,
                   device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Perplexity of every method on one model; also returns the per-model facts (tokens, samples)."""
    from quamba import api
    from quamba.errors import QuambaError
    from quamba.evaluation import perplexity, tokenize_stream
    from quamba.loading import load_tokenizer

    name = Path(path).name
    tok = load_tokenizer(path)
    ids = tokenize_stream(tok, text)
    samples = None
    if any(m != args.dtype for m in methods):
        from quamba.quantization.calib_data import load_calibration_samples

        t0 = time.perf_counter()
        samples = load_calibration_samples(args.calib, tok, args.num_samples, args.calib_seqlen, args.seed,
                                           show_progress=not args.no_progress)
        log(f"{name}: {len(samples)} calibration samples x {args.calib_seqlen} tokens "
            f"({time.perf_counter() - t0:.1f} s)")
    facts = {"model": name, "path": str(path), "stream_tokens": int(ids.numel())}
    rows = []
    for method in methods:
        row: dict[str, Any] = {"model": name, "method": method}
        try:
            t0 = time.perf_counter()
            model, _ = api.load(path, device, args.dtype)
            row["load_s"] = time.perf_counter() - t0
            if method != args.dtype:
                from quamba.quantization import quantize_

                config = recipe_config(method, args)
                row["recipe"] = config.to_dict() if hasattr(config, "to_dict") else vars(config)
                torch.manual_seed(args.seed)
                t0 = time.perf_counter()
                quantize_(model, config, samples, show_progress=not args.no_progress)
                row["quantize_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = perplexity(model, None, ids, seqlen=args.seqlen, batch_size=args.batch_size,
                             max_tokens=args.max_tokens, device=device, show_progress=not args.no_progress)
            row["eval_s"] = time.perf_counter() - t0
            row.update(ppl=res["ppl"], nll=res["nll"], windows=res["windows"], tokens=res["tokens"])
            facts.update(windows=res["windows"], tokens=res["tokens"])
        except QuambaError as e:
            row["error"] = f"{type(e).__name__}: {e}"
        finally:
            model = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        log(f"{name} {method}: " + (f"ppl {row['ppl']:.3f}" if "ppl" in row else row["error"])
            + "".join(f", {k[:-2]} {row[k]:.1f} s" for k in ("quantize_s", "eval_s") if k in row))
        rows.append(row)
    base = next((r for r in rows if r["method"] == args.dtype and "ppl" in r), None)
    for r in rows:
        if base is not None and "ppl" in r and math.isfinite(r["ppl"]) and math.isfinite(base["ppl"]):
            r["change_pct"] = 100.0 * (r["ppl"] / base["ppl"] - 1.0)
    return rows, facts


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + (" (with uncommitted changes)" if dirty else "")


def shown_path(p: str | Path) -> str:
    """A path relative to the repository root when it lies near it, as the reader would type it."""
    try:
        return os.path.relpath(Path(p).resolve(), ROOT)
    except ValueError:
        return str(p)


def fmt_ppl(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else str(x)


def render_markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    s = settings
    lines = [
        "# Accuracy report: WikiText-2 perplexity",
        "",
        f"Perplexity (lower is better) of each model in {s['dtype']} and after each W8A8 recipe; "
        f"\"change\" is relative to the {s['dtype']} model.",
        "",
        "| model | method | ppl | change vs " + s["dtype"] + " | quantize (s) | eval (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | failed | | | |")
            continue
        change = "baseline" if r["method"] == s["dtype"] else (f"{r['change_pct']:+.2f} %" if "change_pct" in r else "")
        q = f"{r['quantize_s']:.1f}" if "quantize_s" in r else ""
        lines.append(f"| {r['model']} | {r['method']} | {fmt_ppl(r['ppl'])} | {change} | {q} | {r['eval_s']:.1f} |")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Failures:", ""] + [f"- {r['model']} {r['method']}: {r['error']}" for r in errors]
    pct = s["percentile"]
    quantized = any(m != s["dtype"] for m in s["methods"])
    lines += [
        "",
        "## How it was produced",
        "",
        "```",
        s["command"],
        "```",
        "",
        "Settings:",
        "",
        f"- evaluation text: `{s['ppl_file']}` (WikiText-2 raw protocol: lines kept, blank lines emptied, rows "
        f"joined with \"\\n\\n\", tokenized once); non-overlapping windows of {s['seqlen']} tokens, remainder "
        f"dropped, batch {s['batch_size']}",
        "- tokens evaluated: " + "; ".join(
            f"{f['model']} {f.get('windows', 0)} windows = {f.get('tokens', 0)} of {f['stream_tokens']} tokens"
            for f in s["models"]) + (f" (--max-tokens {s['max_tokens']})" if s["max_tokens"] else " (whole test set)"),
        f"- calibration: `{s['calib_file']}`, {s['num_samples']} samples x {s['calib_seqlen']} tokens, seed {s['seed']}"
        + ("" if quantized else " (not used: no recipe selected)"),
        f"- percentile: {pct['value']} ({'set with --percentile' if pct['explicit'] else 'recipe default'}; used by "
        f"{', '.join(pct['used_by']) or 'no selected recipe'})" if quantized else "- percentile: not used",
        *(["- recipe settings:"] + s["recipe_lines"] if quantized else []),
        f"- float dtype {s['dtype']}, device {s['device']}" + (f", {s['threads']} CPU thread(s)" if s.get("threads") else ""),
        f"- quamba {s['revision']}, torch {s['torch']}, python {s['python']}, {s['date']}",
        f"- wall time {s['wall_s'] / 60:.1f} min",
        "",
    ]
    return "\n".join(lines)


def percentile_facts(methods: list[str], args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    used, value = [], args.percentile
    for m in methods:
        if m == dtype:
            continue
        cfg = recipe_config(m, args)
        value = getattr(cfg, "percentile", value) if value is None else value
        if "percentile" in (getattr(cfg, "ssm_input_observer", None), getattr(cfg, "state_observer", None)):
            used.append(m)
    return {"value": value, "explicit": args.percentile is not None, "used_by": used}


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    from quamba.errors import QuambaError
    from quamba.evaluation import load_ppl_text
    from quamba.loading import parse_device

    args = parse_args(argv)
    start = time.perf_counter()
    try:
        methods = check_args(args)
        device = parse_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        text = load_ppl_text(args.ppl)
        pct = percentile_facts(methods, args, args.dtype)
        rows, facts = [], []
        for path in args.models:
            r, f = evaluate_model(path, methods, args, text, device)
            rows += r
            facts.append(f)
    except QuambaError as e:
        print(f"accuracy_report: error: {e}", file=sys.stderr)
        return 2
    argv_shown = sys.argv[1:] if argv is None else argv
    settings = {
        "command": "python benchmarks/accuracy_report.py" + ("" if not argv_shown else " " + shlex.join(argv_shown)),
        "ppl_file": shown_path(args.ppl), "calib_file": shown_path(args.calib),
        "num_samples": args.num_samples, "calib_seqlen": args.calib_seqlen, "seed": args.seed,
        "seqlen": args.seqlen, "batch_size": args.batch_size, "max_tokens": args.max_tokens,
        "percentile": pct, "h2t": args.h2t,
        "recipe_lines": [recipe_line(recipe_config(m, args)) for m in methods if m != args.dtype],
        "dtype": args.dtype, "device": str(device), "threads": args.threads,
        "methods": methods, "models": facts, "revision": git_revision(), "torch": torch.__version__,
        "python": platform.python_version(), "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "wall_s": time.perf_counter() - start,
    }
    out = Path(args.out)
    write_atomic(out, render_markdown(rows, settings))
    log(f"wrote {out}")
    if args.json:
        print(json.dumps(_finite({"settings": settings, "results": rows}), default=_json_default, allow_nan=False))
    return 1 if any("error" in r for r in rows) else 0


def _json_default(x: Any) -> Any:
    if isinstance(x, (torch.dtype, torch.device, Path)):
        return str(x)
    raise TypeError(f"cannot serialise {type(x).__name__}")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
