"""GPU time of a launch sequence, measured from a CUDA graph (tuners, sweeps, kernel benchmarks).

Timing eager calls (``triton.testing.do_bench``) measures the host whenever a kernel's launch costs more host
time than the kernel runs: a 5 us GEMM behind 20 us of Python launch path times as 20 us, and a tuner then
picks among configs at random. Captured into a graph, the calls run back to back with no host in between,
which is also how a decode step runs.
"""
from __future__ import annotations

import statistics
from typing import Callable

import torch

_STREAMS: dict[int, torch.cuda.Stream] = {}


def graph_replay_ms(calls: list[Callable[[], object]], reps: int = 9, warmup_calls: int | None = None) -> float:
    """Median time of one replay of a CUDA graph that holds ``calls`` in order, in ms.

    The first ``warmup_calls`` calls (all by default) run once eagerly first (compilation, autotuning), on the
    stream the graph is then captured on, so what a launcher keeps per stream (split-K tile counters) is made
    outside the capture. Not callable under a capture.
    """
    dev = torch.cuda.current_device()
    stream = _STREAMS.get(dev)
    if stream is None:
        stream = _STREAMS[dev] = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for c in calls[:warmup_calls]:
            c()
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for c in calls:
            c()
    times = []
    with torch.cuda.stream(stream):
        graph.replay()
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    torch.cuda.current_stream().wait_stream(stream)
    return statistics.median(times)


def graph_call_ms(fn: Callable[[], object], calls: int = 16) -> float:
    """GPU time of one call of ``fn`` (ms): ``calls`` of them back to back in one graph (one eager warm-up)."""
    return graph_replay_ms([fn] * calls, reps=5, warmup_calls=1) / calls
