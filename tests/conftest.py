"""Shared test fixtures. ``SHARED`` is the one place tests find ../shared (models and data)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton: kernels run on CPU tensors
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED = Path(os.environ.get("QUAMBA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MAMBA1_SMALL = SHARED / "models" / "mamba1-small"
MAMBA2_SMALL = SHARED / "models" / "mamba2-small"
WIKITEXT_TEST = SHARED / "data" / "wikitext-2-raw" / "test.txt"
CALIB_JSONL = SHARED / "data" / "calib" / "enwiki-2014-calib.jsonl"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def mamba1_small_dir(shared_dir) -> Path:
    return MAMBA1_SMALL


@pytest.fixture(scope="session")
def mamba2_small_dir(shared_dir) -> Path:
    return MAMBA2_SMALL


@pytest.fixture
def seed():
    """A fresh seed per test run so inputs differ between runs; printed on failure."""
    s = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(s)
    return s


@pytest.fixture
def poisoned(monkeypatch):
    """Every ``torch.empty`` starts as NaN (float) or random bytes (int8) so unwritten outputs fail."""
    empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype == torch.int8:
            t.copy_(torch.randint(-128, 128, t.shape, dtype=torch.int8))
        return t

    monkeypatch.setattr(torch, "empty", poisoned_empty)
