"""Perplexity over a text corpus with the protocol the Quamba papers use for WikiText-2.

The whole test split is joined into one string, tokenized once, and cut into non-overlapping
windows of ``seqlen`` tokens (the remainder is dropped). Each window is scored on its own (no state
carried across windows): its loss is the mean cross-entropy of its ``seqlen - 1`` next-token
targets, and ``ppl = exp(mean of the window losses)``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError


def load_ppl_text(path: str | os.PathLike) -> str:
    """The evaluation text of ``path`` as one string.

    A plain text file follows the WikiText-2 raw protocol: every line keeps its line ending, lines
    that are only whitespace become empty rows, and the rows are joined with ``"\\n\\n"`` (this is
    what ``"\\n\\n".join(load_dataset("wikitext", "wikitext-2-raw-v1")["test"]["text"])`` produces).
    A ``.jsonl`` file holds one object per line with a ``"text"`` field; the texts are joined with
    ``"\\n\\n"``.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidArgumentError(f"perplexity text file {p} does not exist")
    if not p.is_file():
        raise InvalidArgumentError(f"perplexity text file {p} is not a file")
    try:
        with open(p, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        raise InvalidArgumentError(f"{p} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise InvalidArgumentError(f"{p} could not be read ({e.strerror})") from None
    rows = _jsonl_texts(p, lines) if p.suffix == ".jsonl" else [l if l.strip() else "" for l in lines]
    text = "\n\n".join(rows)
    if not text.strip():
        raise InvalidArgumentError(f"{p} holds no text")
    return text


def _jsonl_texts(p: Path, lines: list[str]) -> list[str]:
    texts = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(f"{p} line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise InvalidArgumentError(f"{p} line {i} has no string field \"text\"")
        texts.append(obj["text"])
    return texts


def tokenize_stream(tokenizer: Any, text: str) -> torch.Tensor:
    """All token ids of ``text`` as one 1-D ``int64`` tensor (tokenized in one call, as the protocol does)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError("perplexity text is empty")
    if tokenizer is None:
        raise InvalidArgumentError("a tokenizer is needed to evaluate perplexity on a string")
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]
    return ids.reshape(-1).to(torch.long)


def perplexity(model: torch.nn.Module, tokenizer: Any, text: str | torch.Tensor | Sequence[int],
               seqlen: int = 2048, batch_size: int = 1, max_tokens: int | None = None,
               device: str | torch.device | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Perplexity of ``model`` on ``text`` over non-overlapping windows of ``seqlen`` tokens.

    ``text`` is a string (tokenized once with ``tokenizer``) or an already tokenized id sequence.
    ``max_tokens`` keeps only the first tokens of the stream before windowing (quick runs). Windows
    go through ``model(input_ids) -> logits [B, L, V]`` in batches of ``batch_size``; the logits are
    not masked (a padded vocabulary's extra entries count in the softmax, as in the original code).

    Returns ``{"ppl", "nll", "windows", "tokens", "seqlen", "stream_tokens"}``: ``nll`` is the mean
    of the window losses (nats), ``tokens = windows * seqlen`` the tokens fed to the model and
    ``stream_tokens`` the length of the (possibly truncated) token stream.
    """
    _check_int("seqlen", seqlen, 2)
    _check_int("batch_size", batch_size, 1)
    if max_tokens is not None:
        _check_int("max_tokens", max_tokens, 1)
    if isinstance(text, str):
        ids = tokenize_stream(tokenizer, text)
    else:
        ids = torch.as_tensor(text, dtype=torch.long).reshape(-1)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    nwin = ids.numel() // seqlen
    if nwin == 0:
        limit = f" (after --max-tokens {max_tokens})" if max_tokens is not None else ""
        raise InvalidArgumentError(f"the text has {ids.numel()} tokens{limit}, fewer than one window of "
                                   f"{seqlen}; use a shorter seqlen or a longer text")
    dev = torch.device(device) if device is not None else _model_device(model)
    windows = ids[: nwin * seqlen].view(nwin, seqlen)
    losses = torch.empty(nwin, dtype=torch.float64)
    from tqdm.auto import tqdm

    with torch.inference_mode(), tqdm(total=nwin, desc="perplexity", unit="win", disable=not show_progress,
                                      leave=False) as bar:
        for s in range(0, nwin, batch_size):
            batch = windows[s: s + batch_size].to(dev)
            losses[s: s + batch.shape[0]] = window_losses(model(batch), batch).cpu()
            bar.update(batch.shape[0])
    nll = float(losses.mean())
    return {"ppl": _safe_exp(nll), "nll": nll, "windows": nwin, "tokens": nwin * seqlen, "seqlen": seqlen,
            "stream_tokens": int(ids.numel())}


def window_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-window mean next-token cross-entropy ``[B]`` (float64) of ``logits [B, L, V]`` on ``input_ids [B, L]``."""
    b, L, v = logits.shape
    if input_ids.shape != (b, L):
        raise InvalidArgumentError(f"model returned logits {tuple(logits.shape)} for input {tuple(input_ids.shape)}")
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), input_ids[:, 1:].reshape(-1), reduction="none")
    return ce.view(b, L - 1).double().mean(dim=1)


def _model_device(model: torch.nn.Module) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
