"""``quamba generate`` and ``quamba info``, and the one-line errors every bad input must produce."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from quamba.cli.main import main
from quamba.config import MambaConfig
from quamba.generation import generate
from quamba.loading import NEOX_TOKENIZER, load_model, load_tokenizer
from quamba.models import MambaLM, init_random_weights

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("quamba") and ": error: " in lines[0]
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


# ---- generate ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mamba1-small", "mamba2-small"])
def test_generate_greedy_prints_prompt_and_continuation(name, shared_dir, capsys):
    path = shared_dir / "models" / name
    rc, out, err = run_cli(capsys, "generate", path, "--prompt", "The history of", "--max-new-tokens", "6",
                           "--temperature", "0", "--device", "cpu")
    assert rc == 0, err
    model, tok = load_model(path, dtype="fp32"), load_tokenizer(path)
    want = generate(model, tok, ["The history of"], 6, temperature=0)[0]
    assert out == "The history of" + want + "\n"
    rc, out2, _ = run_cli(capsys, "generate", path, "--prompt", "The history of", "--max-new-tokens", "6",
                          "--temperature", "0", "--no-stream")
    assert rc == 0 and out2 == out


def test_generate_batch_and_seed(shared_dir, capsys):
    path = shared_dir / "models" / "mamba1-small"
    argv = ["generate", path, "--prompt", "The city", "--prompt", "In 1990 the band released", "--seed", "7",
            "--max-new-tokens", "5", "--temperature", "0.9", "--top-k", "50", "--top-p", "0.95",
            "--repetition-penalty", "1.2", "--dtype", "fp32"]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, err
    assert "=== prompt 1 ===\nThe city" in out and "=== prompt 2 ===\nIn 1990 the band released" in out
    assert run_cli(capsys, *argv)[1] == out


# ---- info --------------------------------------------------------------------------------

def test_info_json(shared_dir, capsys):
    rc, out, err = run_cli(capsys, "info", shared_dir / "models" / "mamba2-small", "--json")
    assert rc == 0, err
    info = json.loads(out)
    model = load_model(shared_dir / "models" / "mamba2-small")
    assert info["architecture"] == "mamba2" and info["layout"] == "transformers"
    assert (info["d_model"], info["n_layer"], info["d_inner"], info["d_state"]) == (384, 12, 768, 128)
    assert (info["nheads"], info["headdim"], info["ngroups"]) == (12, 64, 1)
    assert info["vocab_size"] == 8192 and info["tokenizer_vocab_size"] == 8192
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["dtype"] == "float16" and info["quantized"] is False
    assert info["weight_files"] == ["model.safetensors"]


def test_info_text_state_spaces_layout(shared_dir, tmp_path, capsys):
    """A state-spaces checkpoint (padded vocab) with a tokenizer of its own."""
    d = tmp_path / "ss"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(d_model=64, n_layer=2, vocab_size=8190, ssm_cfg={},
                                                   pad_vocab_size_multiple=8, tie_embeddings=True)))
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v
          for k, v in _random_state_dict("mamba1", 64, 2, 8192).items()}
    torch.save(sd, d / "pytorch_model.bin")
    for f in TOKENIZER_FILES:
        shutil.copy(shared_dir / "models" / "mamba1-small" / f, d / f)
    rc, out, err = run_cli(capsys, "info", d)
    assert rc == 0, err
    fields = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert fields["architecture"].strip() == "mamba1" and fields["layout"].strip() == "state-spaces"
    assert fields["vocab_size"].strip() == "8192" and fields["tokenizer_vocab_size"].strip() == "8190"
    assert fields["dt_rank"].strip() == "4"
    rc, out, err = run_cli(capsys, "generate", d, "--prompt", "Hello", "--max-new-tokens", "3", "--seed", "1")
    assert rc == 0 and out.startswith("Hello"), err


def _random_state_dict(arch: str, d_model: int, n_layer: int, vocab: int, **kw) -> dict[str, torch.Tensor]:
    m = MambaLM(MambaConfig(arch=arch, d_model=d_model, n_layer=n_layer, vocab_size=vocab, **kw))
    init_random_weights(m, seed=int(torch.randint(0, 2**31 - 1, ())))
    return {k: v.detach().clone() for k, v in m.state_dict().items() if k != "lm_head.weight"}


# ---- bad input -----------------------------------------------------------------------------

@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    """A valid transformers-layout Mamba2 checkpoint with random weights (no tokenizer)."""
    d = tmp_path / "tiny"
    d.mkdir()
    cfg = dict(model_type="mamba2", hidden_size=32, num_hidden_layers=2, vocab_size=50, state_size=8, head_dim=16,
               num_heads=4, n_groups=1, chunk_size=8)
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(_random_state_dict("mamba2", 32, 2, 50, d_state=8, headdim=16, chunk_size=8),
              str(d / "model.safetensors"))
    assert load_model(d).config.nheads == 4
    return d


def _set_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize("command", ["generate", "info"])
def test_nonexistent_path(command, tmp_path, capsys):
    extra = ["--prompt", "hi"] if command == "generate" else []
    rc, out, err = run_cli(capsys, command, tmp_path / "no" / "such", *extra)
    assert_one_line_error(rc, err, "does not exist")
    assert out == ""


@pytest.mark.parametrize("command", ["generate", "info"])
def test_directory_without_config(command, tmp_path, capsys):
    extra = ["--prompt", "hi"] if command == "generate" else []
    assert_one_line_error(*run_cli(capsys, command, tmp_path, *extra)[::2], "no config.json")


def test_unsupported_model_type(tiny_dir, capsys):
    _set_config(tiny_dir, model_type="gpt2")
    assert_one_line_error(*run_cli(capsys, "info", tiny_dir)[::2], "unsupported model_type 'gpt2'")


def test_shapes_do_not_match_config(tiny_dir, capsys):
    _set_config(tiny_dir, hidden_size=48)
    rc, _, err = run_cli(capsys, "generate", tiny_dir, "--prompt", "hi")
    assert_one_line_error(rc, err, "does not match its config", "shape mismatch")


def test_truncated_safetensors(tiny_dir, capsys):
    f = tiny_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert_one_line_error(*run_cli(capsys, "info", tiny_dir)[::2], "model.safetensors")
    f.write_bytes(b"\x00" * 3)
    assert_one_line_error(*run_cli(capsys, "generate", tiny_dir, "--prompt", "x")[::2], "safetensors")


def test_missing_tokenizer_names_neox(tmp_path, capsys):
    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache(NEOX_TOKENIZER, "tokenizer.json"), str):
        pytest.skip("the GPT-NeoX tokenizer is in the local hub cache")
    d = tmp_path / "ss"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(d_model=32, n_layer=2, vocab_size=50, ssm_cfg={})))
    torch.save({k.replace("backbone.embeddings.", "backbone.embedding."): v
                for k, v in _random_state_dict("mamba1", 32, 2, 50).items()}, d / "pytorch_model.bin")
    assert_one_line_error(*run_cli(capsys, "generate", d, "--prompt", "x")[::2], NEOX_TOKENIZER)


@pytest.mark.parametrize("args, needle", [
    (["--prompt", ""], "empty prompt"),
    (["--prompt", "ok", "--prompt", ""], "prompt 1 is empty"),
    (["--prompt", "hi", "--device", "tpu"], "unknown device 'tpu'"),
    (["--prompt", "hi", "--device", "cuda:99"], "cuda:99"),
    (["--prompt", "hi", "--temperature", "-1"], "temperature"),
    (["--prompt", "hi", "--top-p", "0"], "top_p"),
    (["--prompt", "hi", "--max-new-tokens", "-3"], "--max-new-tokens"),
    (["--prompt", "hi", "--dtype", "int4"], "invalid choice: 'int4'"),
    (["--prompt", "hi", "--top-k", "many"], "invalid int value: 'many'"),
    (["--max-new-tokens", "3"], "required: --prompt"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_generate_arguments(args, needle, tmp_path, capsys):
    """Checked before any model is read: the path need not even exist."""
    rc, out, err = run_cli(capsys, "generate", tmp_path / "unused", *args)
    assert_one_line_error(rc, err, needle)
    assert out == ""


def test_unknown_command_and_help(capsys):
    assert_one_line_error(*run_cli(capsys, "frobnicate")[::2], "invalid choice: 'frobnicate'")
    rc, out, _ = run_cli(capsys, "generate", "--help")
    assert rc == 0 and "--max-new-tokens" in out


def test_real_process_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "quamba.cli.main", "generate", str(tmp_path / "missing"),
                           "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "does not exist")
    assert proc.stdout == ""


def test_real_process_generate(shared_dir):
    exe = shutil.which("quamba")
    cmd = [exe] if exe else [sys.executable, "-m", "quamba.cli.main"]
    proc = subprocess.run(cmd + ["generate", str(shared_dir / "models" / "mamba2-small"), "--prompt", "The war",
                                 "--max-new-tokens", "4", "--seed", "0", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("The war") and len(proc.stdout) > len("The war\n")
