"""Calibration samples: token windows cut from a text file, a JSONL file or a hub dataset.

Documents are joined with ``"\\n\\n"`` into one token stream and ``num_samples`` windows of
``seqlen`` tokens are taken at seeded random offsets, non-overlapping whenever the stream is long
enough. Every problem with the data is a ``CalibrationError`` with one sentence saying what is wrong.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import CalibrationError

SEPARATOR = "\n\n"
PIECE_CHARS = 1 << 18
HUB_TOKEN_FACTOR = 2
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_TEXT_SUFFIXES = {"", ".txt", ".text", ".md"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(f"calibration file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CalibrationError(f"calibration file {path} cannot be read: {e.strerror or e}") from None


def _jsonl_documents(path: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise CalibrationError(f"{path} line {lineno} is not valid JSON") from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise CalibrationError(f"{path} line {lineno} has no string \"text\" field")
        docs.append(text)
    return docs


def _file_text(path: Path) -> str:
    if not path.is_file():
        raise CalibrationError(f"calibration data {path} is not a file")
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        text = SEPARATOR.join(_jsonl_documents(path))
    elif suffix in _TEXT_SUFFIXES:
        text = _read_text(path)
    else:
        raise CalibrationError(f"calibration file {path} has an unsupported type {suffix!r}: use .txt or .jsonl")
    if not text.strip():
        raise CalibrationError(f"calibration file {path} contains no text")
    return text


def _pieces(text: str, size: int | None = None) -> Iterator[str]:
    """Cut ``text`` before a newline that follows a non-space, a boundary byte-level BPE never merges across."""
    size = size or PIECE_CHARS
    start = 0
    while len(text) - start > size:
        cut = start + size
        while cut > start and not (text[cut] == "\n" and not text[cut - 1].isspace()):
            cut -= 1
        if cut == start:
            cut = start + size
            while cut < len(text) and not (text[cut] == "\n" and not text[cut - 1].isspace()):
                cut += 1
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    except TypeError:
        return list(tokenizer(text)["input_ids"])


def _tokenize_text(text: str, tokenizer, show_progress: bool) -> list[int]:
    ids: list[int] = []
    with tqdm(total=len(text), unit="char", unit_scale=True, desc="tokenizing calibration text",
              disable=not show_progress) as bar:
        for piece in _pieces(text):
            ids.extend(_encode(tokenizer, piece))
            bar.update(len(piece))
    return ids


def _looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and Path(source).suffix.lower() not in _JSONL_SUFFIXES | {".txt", ".json"}


def _hub_documents(dataset_id: str) -> Iterable[str]:
    try:
        import datasets
    except ImportError:
        raise CalibrationError(f"{dataset_id!r} is not an existing file; loading it as a Hugging Face dataset "
                               "needs `pip install datasets` and network access") from None
    try:
        stream = datasets.load_dataset(dataset_id, split="train", streaming=True)
    except Exception as e:
        raise CalibrationError(f"hub dataset {dataset_id!r} could not be loaded: {type(e).__name__}: {e}") from None
    for row in stream:
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise CalibrationError(f"hub dataset {dataset_id!r} has rows without a string \"text\" field")
        yield text


def _tokenize_hub(dataset_id: str, tokenizer, budget: int, show_progress: bool) -> list[int]:
    """Stream documents until ``budget`` tokens (a margin over what the windows need) are collected."""
    ids: list[int] = []
    first = True
    with tqdm(total=budget, unit="tok", unit_scale=True, desc=f"tokenizing {dataset_id}",
              disable=not show_progress) as bar:
        try:
            for doc in _hub_documents(dataset_id):
                new = _encode(tokenizer, doc if first else SEPARATOR + doc)
                first = False
                ids.extend(new)
                bar.update(min(len(new), max(budget - bar.n, 0)))
                if len(ids) >= budget:
                    break
        except CalibrationError:
            raise
        except Exception as e:
            raise CalibrationError(f"reading hub dataset {dataset_id!r} failed: {type(e).__name__}: {e}") from None
    if first:
        raise CalibrationError(f"hub dataset {dataset_id!r} has no rows in its train split")
    return ids


def _window_starts(total: int, num_samples: int, seqlen: int, gen: torch.Generator) -> list[int]:
    """Random starts; disjoint windows (uniform over arrangements) when ``total`` leaves room for them."""
    slack = total - num_samples * seqlen
    if slack >= 0:
        shifts = torch.sort(torch.randint(0, slack + 1, (num_samples,), generator=gen)).values
        starts = shifts + torch.arange(num_samples) * seqlen
        starts = starts[torch.randperm(num_samples, generator=gen)]
    else:
        starts = torch.randint(0, total - seqlen + 1, (num_samples,), generator=gen)
    return starts.tolist()


def _check_counts(num_samples: int, seqlen: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise CalibrationError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise CalibrationError(f"seqlen must be an integer of at least 2, got {seqlen!r}")


def load_calibration_samples(source: str | os.PathLike, tokenizer, num_samples: int = 512, seqlen: int = 512,
                             seed: int = 0, show_progress: bool = True) -> list[torch.LongTensor]:
    """``num_samples`` token windows ``[1, seqlen]`` (int64) from ``source``.

    ``source``: a ``.txt`` file (the whole file), a ``.jsonl`` file (one object with a ``"text"``
    field per line, blank lines skipped) or, when it is not an existing path, a hub dataset id read
    with ``datasets`` (train split, streamed). Offsets come from ``torch.Generator`` seeded with
    ``seed``; windows overlap only when the stream is too short for disjoint ones.
    """
    _check_counts(num_samples, seqlen)
    if isinstance(source, str) and not os.path.exists(source) and _looks_like_hub_id(source):
        budget = HUB_TOKEN_FACTOR * num_samples * seqlen
        ids = _tokenize_hub(source, tokenizer, budget, show_progress)
        where = f"hub dataset {source!r}"
    else:
        path = Path(source)
        if not path.exists():
            raise CalibrationError(f"calibration file {path} does not exist")
        ids = _tokenize_text(_file_text(path), tokenizer, show_progress)
        where = f"calibration data {path}"
    if len(ids) < seqlen:
        raise CalibrationError(f"{where} has {len(ids)} tokens, fewer than the {seqlen} one sample of "
                               f"seqlen {seqlen} needs")
    stream = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    return [stream[s:s + seqlen].clone().unsqueeze(0) for s in _window_starts(len(ids), num_samples, seqlen, gen)]
