"""Text generation for Mamba LMs: batched prefill into one cache, then one-token decode steps.

Mamba has no attention mask, so prompts of different lengths cannot share a padded prefill. Each
prompt is prefilled alone into a batch-1 cache; the per-layer states are then stacked into one batch
cache and the whole batch decodes one token per step. Two levels:

- ``generate_ids`` works on token ids (and returns, on request, the logits each token was chosen from);
- ``generate`` works on strings through a tokenizer and can stream text as it is produced.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import InvalidArgumentError

Tensor = torch.Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the logits.

    ``temperature == 0`` or ``greedy`` takes the arg-max. ``top_k == 0`` and ``top_p == 1`` disable
    those filters; ``repetition_penalty`` follows the CTRL definition (positive logits of tokens
    already in the sequence are divided by it, negative ones multiplied).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise InvalidArgumentError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidArgumentError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise InvalidArgumentError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


@dataclass
class GenerationResult:
    """New tokens per row (EOS excluded) and, when asked for, the processed logits ``[B, V]`` of each step."""

    tokens: list[list[int]]
    logits: list[Tensor] | None = None


def _state_fields(state) -> dict:
    if dataclasses.is_dataclass(state):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return dict(vars(state))


def _stack_states(states: list, batch_sizes: list[int]):
    """Concatenate the batch rows of one layer's states; tensors without a batch dim must agree."""
    out = copy.copy(states[0])
    for name, first in _state_fields(states[0]).items():
        if isinstance(first, tuple):  # per-row decode scratch (LayerState.work)
            setattr(out, name, tuple(torch.cat([getattr(s, name)[j] for s in states]) for j in range(len(first))))
            continue
        if not isinstance(first, Tensor):
            continue
        values = [getattr(s, name) for s in states]
        batched = all(v.dim() >= 2 and v.shape[0] == b for v, b in zip(values, batch_sizes))
        if batched:
            setattr(out, name, torch.cat(values, dim=0))
        elif not all(torch.equal(v, first) for v in values[1:]):
            raise ValueError(f"cache field {name!r} has no batch dimension and differs between caches")
    return out


def stack_caches(caches: Sequence):
    """One cache holding the rows of ``caches`` in order (states of any dtype, int8 included)."""
    if not caches:
        raise ValueError("no caches to stack")
    sizes = [c.batch_size for c in caches]
    out = copy.copy(caches[0])
    out.layers = [_stack_states([c.layers[i] for c in caches], sizes) for i in range(len(caches[0].layers))]
    out.batch_size = sum(sizes)
    out.seqlen_offset = max(c.seqlen_offset for c in caches)
    return out


def _model_device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    for t in model.state_dict().values():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def prefill(model, prompt_ids: Sequence[Sequence[int]]):
    """Prefill each prompt alone and stack the states: returns ``(cache, last_logits [B, V] fp32)``."""
    device = _model_device(model)
    caches, last = [], []
    for ids in prompt_ids:
        cache = model.allocate_cache(1)
        x = torch.as_tensor(list(ids), dtype=torch.long, device=device)[None]
        last.append(model(x, cache, last_only=True)[:, -1].float())
        caches.append(cache)
    return stack_caches(caches), torch.cat(last, dim=0)


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL penalty on the tokens marked in ``seen [B, V]`` (bool)."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row (ties with the k-th included), -inf elsewhere."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the most probable tokens until their mass reaches ``p`` (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: Tensor, sampling: SamplingConfig, vocab_limit: int | None = None,
                   seen: Tensor | None = None) -> Tensor:
    """Padded-vocab mask, repetition penalty, then (unless greedy) temperature, top-k and top-p."""
    logits = logits.float()
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits = logits.clone()
        logits[..., vocab_limit:] = float("-inf")
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, sampling.repetition_penalty)
    if sampling.is_greedy:
        return logits
    logits = logits / sampling.temperature
    logits = top_k_filter(logits, sampling.top_k)
    return top_p_filter(logits, sampling.top_p)


def choose_tokens(logits: Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """The next token of each row from processed logits ``[B, V]``: arg-max or a multinomial draw."""
    if sampling.is_greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _check_prompt_ids(prompt_ids: Sequence[Sequence[int]], vocab_limit: int) -> list[list[int]]:
    rows = [[int(t) for t in ids] for ids in prompt_ids]
    if not rows:
        raise InvalidArgumentError("no prompts given")
    for i, ids in enumerate(rows):
        if not ids:
            raise InvalidArgumentError(f"prompt {i} is empty")
        if min(ids) < 0 or max(ids) >= vocab_limit:
            raise InvalidArgumentError(f"prompt {i} has token ids outside [0, {vocab_limit})")
    return rows


@torch.no_grad()
def generate_ids(model, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                 sampling: SamplingConfig = SamplingConfig(), *, seed: int | None = None,
                 eos_token_id: int | None = None,
                 on_step: Callable[[list[int | None]], None] | None = None,
                 return_logits: bool = False) -> GenerationResult:
    """Continue each prompt (a list of token ids) by up to ``max_new_tokens`` tokens.

    Rows that produce ``eos_token_id`` stop (the EOS is not returned) while the others go on.
    ``on_step`` gets, after every step, the new token of each row (None for finished rows).
    """
    if max_new_tokens < 0:
        raise InvalidArgumentError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    cfg = model.config
    vocab_limit = cfg.tokenizer_vocab_size or cfg.vocab_size
    rows = _check_prompt_ids(prompt_ids, vocab_limit)
    out: list[list[int]] = [[] for _ in rows]
    kept: list[Tensor] | None = [] if return_logits else None
    if max_new_tokens == 0:
        return GenerationResult(out, kept)

    cache, logits = prefill(model, rows)
    device = logits.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    seen = None
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros(len(rows), logits.shape[-1], dtype=torch.bool, device=device)
        for i, ids in enumerate(rows):
            seen[i, ids] = True
    active = torch.ones(len(rows), dtype=torch.bool, device=device)
    filler = eos_token_id if eos_token_id is not None else 0

    for step in range(max_new_tokens):
        scores = process_logits(logits, sampling, vocab_limit, seen)
        nxt = choose_tokens(scores, sampling, generator)
        if kept is not None:
            kept.append(scores.cpu())
        nxt = torch.where(active, nxt, torch.full_like(nxt, filler))
        if seen is not None:
            seen[torch.arange(len(rows), device=device), nxt] |= active
        now_active = active.tolist()
        tokens = nxt.tolist()
        step_tokens: list[int | None] = []
        for i, (tok, on) in enumerate(zip(tokens, now_active)):
            if on and tok == eos_token_id:
                on = False
                active[i] = False
            elif on:
                out[i].append(tok)
            step_tokens.append(tok if on else None)
        if on_step is not None:
            on_step(step_tokens)
        if step == max_new_tokens - 1 or not bool(active.any()):
            break
        logits = model(nxt[:, None], cache)[:, -1].float()
    return GenerationResult(out, kept)


class TextStream:
    """Incremental detokenizer: ``push(token)`` returns the text that token completes.

    Text is held back while it ends inside a multi-byte character (decoded as U+FFFD).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.text()
        if text.endswith("\ufffd"):
            return ""
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece

    def flush(self) -> str:
        text = self.text()
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Prompts as a list; raises InvalidArgumentError for an empty list or an empty prompt."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InvalidArgumentError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidArgumentError(f"prompt {i} is not a string")
        if not p:
            raise InvalidArgumentError("empty prompt" if len(prompts) == 1 else f"prompt {i} is empty")
    return prompts


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
             stop_at_eos: bool = True, streamer: Callable[[int, str], None] | None = None,
             greedy: bool = False) -> list[str]:
    """The continuation (prompt not included) of each prompt, as text.

    ``streamer(row, text)`` is called with each piece of text as soon as it is decoded.
    """
    prompts = check_prompts(prompts)
    sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty, greedy)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    for i, row in enumerate(ids):
        if not row:
            raise InvalidArgumentError(f"prompt {i} has no tokens")
    eos = None
    if stop_at_eos:
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            eos = model.config.eos_token_id
    streams = [TextStream(tokenizer) for _ in prompts]

    def on_step(tokens: list[int | None]) -> None:
        for i, tok in enumerate(tokens):
            if tok is not None:
                piece = streams[i].push(tok)
                if piece and streamer is not None:
                    streamer(i, piece)

    generate_ids(model, ids, max_new_tokens, sampling, seed=seed, eos_token_id=eos, on_step=on_step)
    for i, s in enumerate(streams):
        piece = s.flush()
        if piece and streamer is not None:
            streamer(i, piece)
    return [s.text() for s in streams]
