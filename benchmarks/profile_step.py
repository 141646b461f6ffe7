"""Where the time goes: torch.profiler over one eager prefill and a few eager decode steps.

Prints, per phase, the kernels by total GPU time and the Python/aten ops by CPU time, plus the
event-timed wall time against the summed GPU kernel time (a large gap means launch-bound).
``--graph`` profiles replays of the CUDA-graph decode step instead: each kernel's time per step
(with ``QUAMBA_PDL=0`` the kernels do not overlap, so their sum against the step's time is the
cost of the gaps between them).
Usage: PYTHONPATH=src python benchmarks/profile_step.py --shape mamba-2.8b --precision w8a8 [--graph]
"""
from __future__ import annotations

import argparse

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from quamba.bench import cuda_time_ms
from quamba.cli.bench import build_model


def _table(prof, key: str, n: int) -> str:
    for k in (key, key.replace("cuda", "device")):
        try:
            return prof.key_averages().table(sort_by=k, row_limit=n, max_name_column_width=60)
        except Exception:
            continue
    return prof.key_averages().table(row_limit=n)


def gpu_total_us(prof) -> float:
    """Summed GPU time of the device-side events (kernels, memcpy, memset) of a torch.profiler run, in
    microseconds. CPU ops such as ``aten::mm`` also report the device time of their kernels as their own
    self time; counting them too would count cuBLAS GEMMs and copies twice."""
    tot = 0.0
    for e in prof.key_averages():
        if e.device_type == DeviceType.CUDA:
            tot += getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
    return tot


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mamba-2.8b")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=22)
    ap.add_argument("--graph", action="store_true", help="profile CUDA-graph decode replays")
    args = ap.parse_args()
    model = build_model(None, args.shape, args.precision)
    if args.graph:
        graph_steps(model, args)
        return
    vocab = model.config.tokenizer_vocab_size
    prompt = torch.randint(0, vocab, (1, args.prompt_len), device="cuda")
    cache = model.allocate_cache(1)
    tok = torch.randint(0, vocab, (1, 1), device="cuda")

    def prefill():
        cache.reset()
        return model(prompt, cache, last_only=True)

    def step():
        return model(tok, cache)

    with torch.inference_mode():
        t_pre = cuda_time_ms(prefill, 2, 5)
        t_step = cuda_time_ms(step, 3, 20)
        for name, fn, reps in (("prefill", prefill, 1), ("decode", step, 5)):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(reps):
                    fn()
                torch.cuda.synchronize()
            wall = t_pre if name == "prefill" else t_step
            gpu_ms = gpu_total_us(prof) / 1e3 / reps
            print(f"\n===== {args.shape} {args.precision} {name}: eager wall {wall:.3f} ms, "
                  f"summed GPU kernel time {gpu_ms:.3f} ms per call")
            print(_table(prof, "self_cuda_time_total", args.rows))
            print(_table(prof, "cpu_time_total", 12))
            if name == "prefill":
                print(layer_sequence(prof, model.config.n_layer // 2))


def layer_sequence(prof, layer: int) -> str:
    """The GPU kernels of one block of a prefill in launch order, each with its duration (the block
    starts at its norm kernel), so the GEMMs of one shape can be told apart."""
    kernels = sorted((e for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    starts = [i for i, e in enumerate(kernels) if "rms_norm" in e.name]
    if len(starts) <= layer + 1:
        return "(no block boundaries found)"
    lines = [f"block {layer} in launch order:"]
    for e in kernels[starts[layer]:starts[layer + 1]]:
        lines.append(f"  {e.time_range.elapsed_us():8.1f} us  {e.name[:90]}")
    return "\n".join(lines)


def graph_steps(model, args, reps: int = 20) -> None:
    """Kernel time per CUDA-graph decode step: name, launches per step, us per launch, us per step."""
    from quamba.graphs import GraphDecoder

    dec = GraphDecoder(model, 1)
    prompt = torch.randint(0, model.config.tokenizer_vocab_size, (1, 64), device="cuda")
    tok = torch.zeros(1, dtype=torch.long, device="cuda")
    dec.prefill(prompt)
    step_ms = cuda_time_ms(lambda: dec.step(tok), 5, 50)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            dec.step(tok)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
        if us > 0:
            rows.append((us / reps, e.count / reps, e.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"\n===== {args.shape} {args.precision} graph decode step: {step_ms * 1e3:.1f} us per step, "
          f"kernels {total:.1f} us summed, PDL={__import__('os').environ.get('QUAMBA_PDL', '1')}")
    for per_step, count, name in rows[:args.rows]:
        print(f"  {per_step:9.1f} us/step  {count:6.1f}/step  {per_step / count:7.2f} us  {name[:70]}")


if __name__ == "__main__":
    main()
