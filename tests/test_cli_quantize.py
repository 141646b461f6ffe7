"""``quamba quantize``: a loadable quantized directory on success; one line, exit 2, nothing on disk on errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from quamba import api
from quamba.cli.main import main
from quamba.loading import load_model, load_tokenizer
from quamba.quantization import get_recipe, quantize_
from quamba.quantization.calib_data import load_calibration_samples

from conftest import CALIB_JSONL

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory, shared_dir):
    """A few calibration articles (a few thousand tokens)."""
    p = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    with open(CALIB_JSONL, encoding="utf-8") as f:
        p.write_text("".join(next(f) for _ in range(3)), encoding="utf-8")
    return p


def run(capsys, *args):
    code = main(["quantize", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, match: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quamba quantize: error:"), err
    assert "Traceback" not in err and match in lines[0], err


def test_quantize_saves_a_loadable_model(capsys, mamba2_small_dir, calib_file, tmp_path):
    out = tmp_path / "q"
    code, stdout, err = run(capsys, mamba2_small_dir, "--calib", calib_file, "--out", out, "--num-samples", 3,
                            "--seqlen", 48, "--percentile", 0.99999, "--seed", 5, "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert "quamba W8A8" in stdout and str(out) in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"]["name"] == "quamba" and cfg["recipe"]["percentile"] == 0.99999
    model, tok = api.load(out)
    # the same recipe applied in-process to the same calibration windows gives the same model
    tok0 = load_tokenizer(mamba2_small_dir)
    samples = load_calibration_samples(calib_file, tok0, num_samples=3, seqlen=48, seed=5, show_progress=False)
    ref = quantize_(load_model(mamba2_small_dir, dtype="fp32"), get_recipe("quamba", percentile=0.99999), samples,
                    show_progress=False)
    ids = torch.randint(5, 8000, (2, 30))
    assert torch.equal(model(ids), ref(ids))
    assert [p.name for p in tmp_path.iterdir()] == ["q"]


def test_non_empty_out_needs_overwrite(capsys, mamba2_small_dir, calib_file, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    common = (mamba2_small_dir, "--calib", calib_file, "--out", out, "--num-samples", 2, "--seqlen", 32,
              "--recipe", "naive", "--device", "cpu", "--no-progress")
    code, _, err = run(capsys, *common)
    assert_one_line_error(code, err, "not empty")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    code, _, err = run(capsys, *common, "--overwrite")
    assert code == 0, err
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["q"]


@pytest.mark.parametrize("flags, match", [
    (("--recipe", "gptq"), "unknown recipe 'gptq'"),
    (("--wbits", "4"), "W8A8"),
    (("--abits", "16"), "W8A8"),
    (("--percentile", "1.5"), "percentile"),
    (("--alpha", "0.3"), "--alpha"),
    (("--num-samples", "0"), "--num-samples"),
])
def test_bad_arguments(capsys, flags, match, tmp_path, calib_file):
    out = tmp_path / "q"
    code, _, err = run(capsys, "no/such-model-needed", "--calib", calib_file, "--out", out, *flags)
    assert_one_line_error(code, err, match)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("", "calib"),
    ('{"text": "Too short."}\n', "fewer than"),
])
def test_bad_calibration_data(capsys, mamba2_small_dir, content, match, tmp_path):
    calib = tmp_path / "calib.jsonl"
    if content is not None:
        calib.write_text(content)
    out = tmp_path / "q"
    code, _, err = run(capsys, mamba2_small_dir, "--calib", calib, "--out", out, "--seqlen", 64, "--device", "cpu",
                       "--no-progress")
    assert_one_line_error(code, err, match)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["calib.jsonl"] if content is not None else [])


def test_nan_during_calibration(capsys, mamba2_small_dir, calib_file, tmp_path):
    bad = tmp_path / "bad-model"
    shutil.copytree(mamba2_small_dir, bad)
    bad.chmod(0o755)
    sd = load_file(str(bad / "model.safetensors"))
    key = next(k for k in sd if k.endswith("layers.3.mixer.in_proj.weight"))
    sd[key][5, :] = float("nan")
    (bad / "model.safetensors").chmod(0o644)
    save_file(sd, str(bad / "model.safetensors"))
    out = tmp_path / "q"
    code, _, err = run(capsys, bad, "--calib", calib_file, "--out", out, "--num-samples", 2, "--seqlen", 32,
                       "--device", "cpu", "--no-progress")
    assert_one_line_error(code, err, "NaN")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-model"]
