import json
import sys
import types

import pytest
import torch

from conftest import CALIB_JSONL, MAMBA1_SMALL
from quamba.errors import CalibrationError
from quamba.quantization import calib_data
from quamba.quantization.calib_data import load_calibration_samples


class CharTokenizer:
    """One token per character: token counts and window contents are easy to predict."""

    def __call__(self, text, **kw):
        return {"input_ids": [ord(c) for c in text]}


def _decode(sample):
    return "".join(map(chr, sample[0].tolist()))


@pytest.fixture(scope="module")
def tokenizer(mamba1_small_dir):
    from quamba.loading import load_tokenizer

    return load_tokenizer(MAMBA1_SMALL)


@pytest.fixture(scope="module")
def calib_docs(shared_dir):
    with open(CALIB_JSONL, encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(40)]


@pytest.fixture
def jsonl_file(tmp_path, calib_docs):
    p = tmp_path / "calib.jsonl"
    lines = [json.dumps({"title": str(i), "text": t}) for i, t in enumerate(calib_docs)]
    lines.insert(5, "   ")
    p.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return p


def _positions(samples, ids):
    seqlen = samples[0].shape[1]
    windows = ids.unfold(0, seqlen, 1)
    out = []
    for s in samples:
        hits = (windows == s[0]).all(dim=1).nonzero().flatten().tolist()
        assert hits, "sample is not a window of the token stream"
        out.append(hits)
    return out


def test_jsonl_windows_from_the_joined_stream(jsonl_file, calib_docs, tokenizer):
    seqlen, n = 97, 23
    samples = load_calibration_samples(jsonl_file, tokenizer, num_samples=n, seqlen=seqlen, show_progress=False)
    assert len(samples) == n
    for s in samples:
        assert s.shape == (1, seqlen) and s.dtype == torch.long
    ids = torch.tensor(tokenizer("\n\n".join(calib_docs))["input_ids"])
    starts = sorted(min(h) for h in _positions(samples, ids))
    assert all(b - a >= seqlen for a, b in zip(starts, starts[1:])), "windows overlap although the stream is long"


def test_seed_determinism(jsonl_file, tokenizer):
    kw = dict(num_samples=9, seqlen=64, show_progress=False)
    a = load_calibration_samples(str(jsonl_file), tokenizer, seed=5, **kw)
    b = load_calibration_samples(str(jsonl_file), tokenizer, seed=5, **kw)
    c = load_calibration_samples(str(jsonl_file), tokenizer, seed=6, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_txt_whole_file_and_chunked_tokenization(tmp_path, calib_docs, tokenizer, monkeypatch):
    text = "\n".join(calib_docs[:6])
    p = tmp_path / "data.txt"
    p.write_text(text, encoding="utf-8")
    monkeypatch.setattr(calib_data, "PIECE_CHARS", 1500)
    assert len(list(calib_data._pieces(text))) > 5
    samples = load_calibration_samples(p, tokenizer, num_samples=4, seqlen=50, show_progress=False)
    _positions(samples, torch.tensor(tokenizer(text)["input_ids"]))
    ids = calib_data._tokenize_text(text, tokenizer, show_progress=False)
    assert ids == tokenizer(text)["input_ids"]


def test_short_stream_overlaps(tmp_path):
    p = tmp_path / "short.txt"
    text = "".join(chr(0x41 + i % 26) + chr(0x61 + i // 26) for i in range(150))
    p.write_text(text, encoding="utf-8")
    samples = load_calibration_samples(p, CharTokenizer(), num_samples=20, seqlen=40, seed=3, show_progress=False)
    assert len(samples) == 20
    for s in samples:
        assert s.shape == (1, 40)
        assert _decode(s) in text


def test_exactly_one_sample_of_tokens(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("abcdefghij", encoding="utf-8")
    samples = load_calibration_samples(p, CharTokenizer(), num_samples=3, seqlen=10, show_progress=False)
    assert [_decode(s) for s in samples] == ["abcdefghij"] * 3


def test_disjoint_windows_cover_stream_when_exact(tmp_path):
    p = tmp_path / "exact.txt"
    text = "".join(chr(0x100 + i) for i in range(60))
    p.write_text(text, encoding="utf-8")
    samples = load_calibration_samples(p, CharTokenizer(), num_samples=6, seqlen=10, seed=11, show_progress=False)
    assert sorted(_decode(s) for s in samples) == [text[i:i + 10] for i in range(0, 60, 10)]


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    p = tmp_path / "a.txt"
    p.write_text("x" * 300, encoding="utf-8")
    load_calibration_samples(p, CharTokenizer(), num_samples=2, seqlen=8, show_progress=False)
    assert capsys.readouterr().err == ""
    load_calibration_samples(p, CharTokenizer(), num_samples=2, seqlen=8, show_progress=True)
    assert "tokenizing" in capsys.readouterr().err


def _err(match, source, **kw):
    kw.setdefault("show_progress", False)
    with pytest.raises(CalibrationError, match=match):
        load_calibration_samples(source, CharTokenizer(), **kw)


def test_missing_and_unusable_files(tmp_path):
    _err("does not exist", tmp_path / "nope.jsonl")
    _err("does not exist", str(tmp_path / "nope.txt"))
    _err("not a file", tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    _err("unsupported", tmp_path / "x.csv")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    _err("UTF-8", tmp_path / "bin.txt")


def test_empty_files(tmp_path):
    (tmp_path / "e.txt").write_text(" \n\n\t", encoding="utf-8")
    _err("no text", tmp_path / "e.txt")
    (tmp_path / "e.jsonl").write_text("\n   \n", encoding="utf-8")
    _err("no text", tmp_path / "e.jsonl")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "  "}\n', encoding="utf-8")
    _err("no text", tmp_path / "blank.jsonl")


def test_bad_jsonl_lines(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "fine"}\n\n{"text": oops}\n', encoding="utf-8")
    _err("line 3 is not valid JSON", p)
    p.write_text('{"text": "fine"}\n{"title": "no text"}\n', encoding="utf-8")
    _err("line 2 has no", p)
    p.write_text('["text"]\n', encoding="utf-8")
    _err("line 1 has no", p)
    p.write_text('{"text": 5}\n', encoding="utf-8")
    _err("line 1 has no", p)


def test_too_few_tokens(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("abcdefg", encoding="utf-8")
    _err(r"has 7 tokens.*128", p, seqlen=128)


@pytest.mark.parametrize("kw", [dict(num_samples=0), dict(num_samples=-3), dict(seqlen=1), dict(seqlen=0),
                                dict(num_samples=2.5), dict(seqlen=True)])
def test_bad_counts(tmp_path, kw):
    p = tmp_path / "a.txt"
    p.write_text("x" * 100, encoding="utf-8")
    _err("num_samples" if "num_samples" in kw else "seqlen", p, **kw)


def test_hub_id_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    _err("pip install datasets", "someone/some-corpus")
    _err("pip install datasets", "wikitext")


def _fake_datasets(rows, calls):
    def load_dataset(name, split=None, streaming=False):
        calls.append((name, split, streaming))
        if name == "missing/ds":
            raise FileNotFoundError("no such dataset")

        def gen():
            for r in rows:
                calls.append("row")
                yield r
        return gen()

    return types.SimpleNamespace(load_dataset=load_dataset)


def test_hub_dataset_streams_until_enough_tokens(monkeypatch):
    rows = [{"text": chr(0x61 + i) * 50} for i in range(26)]
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(rows, calls))
    samples = load_calibration_samples("user/corpus", CharTokenizer(), num_samples=3, seqlen=40, show_progress=False)
    assert calls[0] == ("user/corpus", "train", True)
    consumed = calls.count("row")
    assert consumed < len(rows)
    stream = "\n\n".join(r["text"] for r in rows[:consumed])
    assert len(stream) >= 2 * 3 * 40
    for s in samples:
        assert s.shape == (1, 40) and _decode(s) in stream


def test_hub_dataset_errors(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets([{"content": "x"}], calls))
    _err("could not be loaded", "missing/ds")
    _err("\"text\" field", "user/corpus")
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets([], calls))
    _err("no rows", "user/empty")
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets([{"text": "short"}], calls))
    _err("has 5 tokens", "user/short", seqlen=16)
