"""``quamba eval``: text and JSON output agree with the library call; bad input is one line, exit 2."""
from __future__ import annotations

import json
import re

import pytest

from quamba.cli.main import main

from conftest import WIKITEXT_TEST


@pytest.fixture(scope="module")
def wiki_head(tmp_path_factory, shared_dir):
    """The first lines of the WikiText-2 test file (about 1.5k tokens), in its own folder."""
    d = tmp_path_factory.mktemp("data") / "wikitext-2-raw"
    d.mkdir()
    with open(WIKITEXT_TEST, encoding="utf-8") as f:
        lines = [next(f) for _ in range(30)]
    p = d / "test.txt"
    p.write_text("".join(lines), encoding="utf-8")
    return p


def run_eval(capsys, *args):
    code = main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_and_json_output(capsys, mamba2_small_dir, wiki_head):
    from quamba import api
    from quamba.evaluation import load_ppl_text, perplexity

    common = (mamba2_small_dir, "--ppl", wiki_head, "--seqlen", 384, "--max-tokens", 1000, "--device", "cpu",
              "--no-progress")
    code, out, err = run_eval(capsys, *common, "--json", "--batch-size", 2)
    assert code == 0, err
    res = json.loads(out)
    assert (res["windows"], res["seqlen"], res["tokens"], res["stream_tokens"]) == (2, 384, 768, 1000)
    assert res["dtype"] == "float32" and res["device"] == "cpu" and res["dataset"] == "wikitext-2"

    model, tok = api.load(mamba2_small_dir, "cpu", "fp32")
    want = perplexity(model, tok, load_ppl_text(wiki_head), seqlen=384, max_tokens=1000, show_progress=False)
    assert res["ppl"] == pytest.approx(want["ppl"], rel=1e-5)

    code, out, err = run_eval(capsys, *common)
    assert code == 0, err
    m = re.fullmatch(r"wikitext-2 ppl (\S+) \(2 windows x 384 tokens\)\n", out)
    assert m, out
    assert float(m.group(1)) == pytest.approx(want["ppl"], abs=0.006)


@pytest.mark.parametrize("extra, message", [
    (["--seqlen", "1"], "--seqlen must be >= 2"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--seqlen", "100000"], "fewer than one window of 100000"),
    (["--device", "tpu"], "device"),
    (["--dtype", "int3"], "invalid choice"),
])
def test_bad_arguments(capsys, mamba2_small_dir, wiki_head, extra, message):
    code, out, err = run_eval(capsys, mamba2_small_dir, "--ppl", wiki_head, "--no-progress", *extra)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_missing_inputs(capsys, tmp_path, mamba2_small_dir, wiki_head):
    code, out, err = run_eval(capsys, mamba2_small_dir, "--ppl", tmp_path / "none.txt")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_eval(capsys, tmp_path / "no-model", "--ppl", wiki_head)
    assert code == 2 and "no-model" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_eval(capsys, mamba2_small_dir)
    assert code == 2 and "--ppl" in err and len(err.strip().splitlines()) == 1
