"""Perplexity: the WikiText-2 text protocol, windowing, the loss against a direct computation, bad input."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from quamba import MambaConfig, MambaLM
from quamba.models import init_random_weights
from quamba.errors import InvalidArgumentError, QuambaError
from quamba.evaluation import load_ppl_text, perplexity

from conftest import WIKITEXT_TEST


class CharTokenizer:
    """Maps each character to ``ord(c) % vocab``: enough to drive the string path of ``perplexity``."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def ids(self, text: str) -> list[int]:
        return [ord(c) % self.vocab for c in text]

    def __call__(self, text, return_tensors=None, **kw):
        return {"input_ids": torch.tensor([self.ids(text)])}


def tiny_model(arch: str, vocab: int) -> MambaLM:
    if arch == "mamba1":
        cfg = MambaConfig(arch="mamba1", d_model=20, n_layer=2, vocab_size=vocab, d_state=6)
    else:
        cfg = MambaConfig(arch="mamba2", d_model=12, n_layer=2, vocab_size=vocab, d_state=8, headdim=8,
                          chunk_size=8)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    return init_random_weights(MambaLM(cfg), seed=seed, std=0.3).float().eval()


def direct_ppl(model: MambaLM, ids: torch.Tensor, seqlen: int) -> float:
    nwin = ids.numel() // seqlen
    losses = []
    with torch.no_grad():
        for w in range(nwin):
            x = ids[w * seqlen:(w + 1) * seqlen].unsqueeze(0)
            logits = model(x)[0]
            losses.append(F.cross_entropy(logits[:-1].double(), x[0, 1:]).item())
    return math.exp(sum(losses) / nwin)


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_matches_direct_cross_entropy(arch):
    vocab = random.choice([37, 53, 61])
    model = tiny_model(arch, vocab)
    seqlen = random.choice([11, 13, 17])
    nwin = random.randint(3, 5)
    rem = random.randint(1, seqlen - 1)
    ids = torch.randint(0, vocab, (nwin * seqlen + rem,))
    want = direct_ppl(model, ids, seqlen)
    for bs in (1, 2, nwin + 1):
        got = perplexity(model, None, ids, seqlen=seqlen, batch_size=bs, show_progress=False)
        assert got["windows"] == nwin and got["tokens"] == nwin * seqlen and got["seqlen"] == seqlen
        assert got["stream_tokens"] == ids.numel()
        assert got["ppl"] == pytest.approx(want, rel=1e-6)
        assert got["nll"] == pytest.approx(math.log(want), rel=1e-6)
    assert math.isfinite(want) and want > 1.0


def test_string_path_tokenizes_once_and_drops_remainder():
    vocab = 47
    model = tiny_model("mamba2", vocab)
    tok = CharTokenizer(vocab)
    text = "".join(random.choice("abcdefghij klmnop\n") for _ in range(5 * 9 + 4))
    got = perplexity(model, tok, text, seqlen=9, batch_size=2, show_progress=False)
    ids = torch.tensor(tok.ids(text))
    assert got["windows"] == 5
    assert got["ppl"] == pytest.approx(direct_ppl(model, ids, 9), rel=1e-6)
    changed_tail = text[:45] + "zzzz"
    assert perplexity(model, tok, changed_tail, seqlen=9, batch_size=2, show_progress=False)["ppl"] == pytest.approx(got["ppl"], rel=1e-9)
    changed_head = ("q" if text[0] != "q" else "r") + text[1:]
    assert perplexity(model, tok, changed_head, seqlen=9, batch_size=2, show_progress=False)["ppl"] != pytest.approx(got["ppl"], rel=1e-9)


def test_max_tokens_limits_stream_before_windowing():
    vocab = 29
    model = tiny_model("mamba1", vocab)
    ids = torch.randint(0, vocab, (70,))
    got = perplexity(model, None, ids, seqlen=10, max_tokens=35, show_progress=False)
    assert (got["windows"], got["tokens"], got["stream_tokens"]) == (3, 30, 35)
    assert got["ppl"] == pytest.approx(direct_ppl(model, ids[:30], 10), rel=1e-6)
    assert perplexity(model, None, ids, seqlen=10, max_tokens=10, show_progress=False)["windows"] == 1


def test_wikitext_row_protocol(tmp_path):
    p = tmp_path / "test.txt"
    p.write_text(" = Title = \n \n\n Body line one .\n\t\n Last", encoding="utf-8")
    rows = [" = Title = \n", "", "", " Body line one .\n", "", " Last"]
    assert load_ppl_text(p) == "\n\n".join(rows)


def test_jsonl_texts(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text(json.dumps({"title": "a", "text": "first doc"}) + "\n\n"
                 + json.dumps({"text": "second\ndoc"}) + "\n", encoding="utf-8")
    assert load_ppl_text(p) == "first doc\n\nsecond\ndoc"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="line 2"):
        load_ppl_text(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"\n', encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="line 1"):
        load_ppl_text(broken)


def test_bad_text_files(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        load_ppl_text(tmp_path / "missing.txt")
    with pytest.raises(InvalidArgumentError, match="not a file"):
        load_ppl_text(tmp_path)
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="no text"):
        load_ppl_text(blank)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"ok\n\xff\xfe\x00")
    with pytest.raises(InvalidArgumentError, match="UTF-8"):
        load_ppl_text(binary)


def test_bad_arguments():
    vocab = 23
    model = tiny_model("mamba2", vocab)
    ids = torch.randint(0, vocab, (40,))
    with pytest.raises(InvalidArgumentError, match="39 tokens, fewer than one window of 40"):
        perplexity(model, None, ids[:39], seqlen=40, show_progress=False)
    with pytest.raises(InvalidArgumentError, match="max-tokens"):
        perplexity(model, None, ids, seqlen=20, max_tokens=19, show_progress=False)
    for kw in ({"seqlen": 1}, {"seqlen": 0}, {"batch_size": 0}, {"max_tokens": 0}, {"seqlen": 2.5}):
        with pytest.raises(InvalidArgumentError):
            perplexity(model, None, ids, show_progress=False, **{"seqlen": 8, **kw})
    with pytest.raises(QuambaError, match="empty"):
        perplexity(model, CharTokenizer(vocab), "  \n ", seqlen=4, show_progress=False)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core runner, two spinning OpenMP threads made this test 5x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_mamba1_small_on_wikitext(mamba1_small_dir, one_thread):
    from quamba import api

    model, tok = api.load(mamba1_small_dir, "cpu", "fp32")
    text = load_ppl_text(WIKITEXT_TEST)
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")
    res = perplexity(model, tok, text, seqlen=1024, max_tokens=4096, show_progress=False)
    assert (res["windows"], res["tokens"]) == (4, 4096)
    assert math.isfinite(res["ppl"])
    # measured 470 (fp32, CPU); a tiny model trained on ~6M Wikipedia tokens
    assert 150 < res["ppl"] < 1500
