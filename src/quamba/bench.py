"""Latency and memory benchmark of generation on a CUDA GPU: ours (fp16 / W8A8) against transformers.

Time to first token (TTFT) is an eager prefill of the prompt; time per output token (TPOT) is one
CUDA-graph replay of the decode step; time to last token (TTLT) is prefill plus ``gen_len - 1``
greedy decode steps. Every figure is the median of repeated runs timed with CUDA events after
warm-up. The decode floor is the bytes one decode step must read (all weights but the embedding
table, plus the states read and written) over the measured device-to-device copy bandwidth.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .config import MambaConfig
from .graphs import GraphDecoder


@dataclass
class BenchResult:
    impl: str
    precision: str
    batch: int
    prompt_len: int
    gen_len: int
    ttft_ms: float
    tpot_ms: float
    ttlt_ms: float
    decode_tokens_per_s: float
    e2e_tokens_per_s: float
    peak_mem_gib: float
    model_size_gib: float
    decode_floor_ms: float | None = None
    floor_fraction: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def cuda_time_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``fn`` on the current stream, CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 2 << 30, device: str = "cuda") -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), warmup=3, repeats=20)
    return 2 * nbytes / (ms / 1e3)


def _unique_tensors(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen.setdefault(t.untyped_storage().data_ptr(), t)
    return seen


def model_nbytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, shared storages counted once."""
    return sum(t.untyped_storage().nbytes() for t in _unique_tensors(model).values())


def decode_read_bytes(model: torch.nn.Module, batch: int) -> int:
    """Bytes one decode step must move: every weight once (of an embedding table that is not also the
    LM head, only the looked-up rows) plus the cache read and written."""
    def ptrs(m: torch.nn.Module) -> set[int]:
        return {t.untyped_storage().data_ptr() for t in list(m.parameters()) + list(m.buffers())}

    emb_only = ptrs(model.backbone.embeddings) - ptrs(model.lm_head)
    total = 0
    for ptr, t in _unique_tensors(model).items():
        if ptr in emb_only and t.dim() >= 1 and t.shape[0] > 0:
            total += batch * (t.numel() // t.shape[0]) * t.element_size()
        else:
            total += t.untyped_storage().nbytes()
    return total + 2 * model.allocate_cache(batch).nbytes()


def bench_ours(model: torch.nn.Module, precision: str, batch: int, prompt_len: int, gen_len: int,
               repeats: int = 10, bandwidth: float | None = None) -> BenchResult:
    """TTFT, TPOT, TTLT, throughput and memory of our model (already on the GPU)."""
    dev = model.device
    vocab = model.config.tokenizer_vocab_size
    prompt = torch.randint(0, vocab, (batch, prompt_len), device=dev)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    dec = GraphDecoder(model, batch)

    ttft = cuda_time_ms(lambda: dec.prefill(prompt), warmup=2, repeats=repeats)

    dec.prefill(prompt)
    nxt = torch.randint(0, vocab, (batch,), device=dev)
    tpot = cuda_time_ms(lambda: dec.step(nxt), warmup=5, repeats=max(50, repeats * 10))

    def full() -> None:
        logits = dec.prefill(prompt)
        for _ in range(gen_len - 1):
            logits = dec.step(logits.argmax(-1))

    ttlt = cuda_time_ms(full, warmup=1, repeats=max(3, repeats // 3))
    peak = torch.cuda.max_memory_allocated() / 2**30
    floor = None
    if bandwidth:
        floor = decode_read_bytes(model, batch) / bandwidth * 1e3
    return BenchResult("quamba", precision, batch, prompt_len, gen_len, ttft, tpot, ttlt,
                       batch * 1e3 / tpot, batch * gen_len * 1e3 / ttlt, peak, model_nbytes(model) / 2**30,
                       floor, (floor / tpot) if floor else None)


def transformers_model(cfg: MambaConfig, dtype: torch.dtype = torch.float16, device: str = "cuda"):
    """transformers' own MambaForCausalLM / Mamba2ForCausalLM with random weights at ``cfg``'s shape."""
    import transformers as tf

    common = dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, vocab_size=cfg.vocab_size,
                  state_size=cfg.d_state, conv_kernel=cfg.d_conv, expand=cfg.expand, use_bias=cfg.proj_bias,
                  use_conv_bias=cfg.conv_bias, layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                  residual_in_fp32=cfg.residual_in_fp32, pad_token_id=0, eos_token_id=0, bos_token_id=0)
    if cfg.arch == "mamba1":
        hf_cfg = tf.MambaConfig(time_step_rank=cfg.dt_rank, intermediate_size=cfg.d_inner, **common)
        cls = tf.MambaForCausalLM
    else:
        hf_cfg = tf.Mamba2Config(num_heads=cfg.nheads, head_dim=cfg.headdim, n_groups=cfg.ngroups,
                                 chunk_size=cfg.chunk_size, **common)
        cls = tf.Mamba2ForCausalLM
    with torch.device(device):
        model = cls(hf_cfg).to(dtype)
    return model.eval()


@torch.inference_mode()
def bench_transformers(cfg: MambaConfig, batch: int, prompt_len: int, gen_len: int,
                       repeats: int = 2) -> BenchResult:
    """The same figures for transformers' implementation in fp16 (its own generate with cache)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    model = transformers_model(cfg)
    prompt = torch.randint(0, cfg.tokenizer_vocab_size, (batch, prompt_len), device="cuda")

    def gen(n: int):
        return lambda: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      pad_token_id=0)

    ttft = cuda_time_ms(gen(1), warmup=1, repeats=repeats)
    ttlt = cuda_time_ms(gen(gen_len), warmup=1, repeats=repeats)
    tpot = (ttlt - ttft) / max(gen_len - 1, 1)
    peak = torch.cuda.max_memory_allocated() / 2**30
    size = model_nbytes(model) / 2**30
    model = None  # noqa: F841 - free the GPU memory before the caller builds the next model
    torch.cuda.empty_cache()
    return BenchResult("transformers", "fp16", batch, prompt_len, gen_len, ttft, tpot, ttlt,
                       batch * 1e3 / tpot, batch * gen_len * 1e3 / ttlt, peak, size)


def format_table(results: list[BenchResult]) -> str:
    head = ("impl", "prec", "batch", "prompt", "gen", "TTFT ms", "TPOT ms", "TTLT ms", "dec tok/s", "e2e tok/s",
            "peak GiB", "size GiB", "floor ms", "floor/TPOT")
    rows = [head]
    for r in results:
        rows.append((r.impl, r.precision, str(r.batch), str(r.prompt_len), str(r.gen_len), f"{r.ttft_ms:.2f}",
                     f"{r.tpot_ms:.3f}", f"{r.ttlt_ms:.1f}", f"{r.decode_tokens_per_s:.1f}",
                     f"{r.e2e_tokens_per_s:.1f}", f"{r.peak_mem_gib:.2f}", f"{r.model_size_gib:.2f}",
                     f"{r.decode_floor_ms:.3f}" if r.decode_floor_ms else "-",
                     f"{r.floor_fraction:.2f}" if r.floor_fraction else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)
