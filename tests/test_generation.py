"""Generation: batched prefill + decode, logits processing, sampling, EOS handling and streaming."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from quamba.config import MambaConfig
from quamba.errors import InvalidArgumentError
from quamba.generation import (SamplingConfig, TextStream, apply_repetition_penalty, choose_tokens, generate,
                               generate_ids, process_logits, stack_caches, top_k_filter, top_p_filter)
from quamba.loading import load_model, load_tokenizer
from quamba.models import InferenceCache, LayerState, MambaLM, init_random_weights

CONFIGS = {
    "mamba1": dict(arch="mamba1", d_model=40, n_layer=2, vocab_size=96, tokenizer_vocab_size=90, d_state=6),
    "mamba2": dict(arch="mamba2", d_model=48, n_layer=2, vocab_size=96, tokenizer_vocab_size=90, d_state=8,
                   headdim=16, ngroups=3, chunk_size=8),
}


def random_model(arch: str) -> MambaLM:
    m = MambaLM(MambaConfig(**CONFIGS[arch]))
    return init_random_weights(m, seed=int(torch.randint(0, 2**31 - 1, ())), std=0.3).float().eval()


def random_prompts(lengths, vocab=90) -> list[list[int]]:
    return [torch.randint(0, vocab, (n,)).tolist() for n in lengths]


@pytest.fixture(scope="module")
def small_lm(shared_dir):
    path = shared_dir / "models" / "mamba1-small"
    return load_model(path, device="cpu", dtype="fp32"), load_tokenizer(path)


# ---- batched decode is exact ----------------------------------------------------------------

@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
@pytest.mark.parametrize("penalty", [1.0, 1.7])
def test_batch_steps_match_full_prefill(arch, penalty):
    """Each step's processed logits, for every row of a ragged batch, equal those of one full forward
    pass over that row's prompt + generated tokens; greedy picks their arg-max."""
    model = random_model(arch)
    prompts = random_prompts([5, 1, 12])
    sampling = SamplingConfig(greedy=True, repetition_penalty=penalty)
    res = generate_ids(model, prompts, 9, sampling, return_logits=True)
    assert [len(t) for t in res.tokens] == [9, 9, 9] and len(res.logits) == 9
    for r, (prompt, new) in enumerate(zip(prompts, res.tokens)):
        seq = torch.tensor(prompt + new)[None]
        with torch.no_grad():
            full = model(seq)[0, len(prompt) - 1:-1]
        for t in range(9):
            seen = torch.zeros(1, 96, dtype=torch.bool)
            seen[0, prompt + new[:t]] = True
            want = process_logits(full[t:t + 1], sampling, vocab_limit=90, seen=seen)
            got = res.logits[t][r:r + 1]
            finite = torch.isfinite(want)
            assert torch.equal(finite, torch.isfinite(got))
            err = (got[finite] - want[finite]).abs().max().item()
            assert err <= 1e-4 * want[finite].abs().max().item()
            assert got[0, new[t]] == got[0].max()


def test_top_k_one_equals_greedy():
    model = random_model("mamba2")
    prompts = random_prompts([3, 8])
    greedy = generate_ids(model, prompts, 7, SamplingConfig(temperature=0)).tokens
    top1 = generate_ids(model, prompts, 7, SamplingConfig(temperature=1.3, top_k=1), seed=5).tokens
    assert top1 == greedy


def test_seed_reproducible_and_sampling_varies():
    model = random_model("mamba1")
    prompts = random_prompts([4, 6, 2])
    s = SamplingConfig(temperature=2.0)
    a = generate_ids(model, prompts, 12, s, seed=11).tokens
    assert generate_ids(model, prompts, 12, s, seed=11).tokens == a
    others = [generate_ids(model, prompts, 12, s, seed=k).tokens for k in (12, 13)]
    assert any(o != a for o in others)


def test_padded_vocab_never_generated():
    model = random_model("mamba2")
    res = generate_ids(model, random_prompts([3, 5, 1]), 30, SamplingConfig(temperature=100.0))
    assert all(0 <= t < 90 for row in res.tokens for t in row)
    logits = torch.randn(4, 96)
    logits[:, 90:] = 1e4
    assert (choose_tokens(process_logits(logits, SamplingConfig(greedy=True), 90), SamplingConfig(greedy=True))
            < 90).all()


# ---- EOS ----------------------------------------------------------------------------------

def test_rows_stop_at_eos_others_continue():
    model = random_model("mamba1")
    prompts = random_prompts([6, 2, 9])
    free = generate_ids(model, prompts, 10, SamplingConfig(greedy=True)).tokens
    eos = next((free[0][t] for t in range(1, 10) if free[0][t] not in free[0][:t]), free[0][0])
    stop = free[0].index(eos)
    steps: list[list[int | None]] = []
    res = generate_ids(model, prompts, 10, SamplingConfig(greedy=True), eos_token_id=eos, on_step=steps.append)
    for row, got in zip(free, res.tokens):
        assert got == (row[:row.index(eos)] if eos in row else row)
    assert res.tokens[0] == free[0][:stop]
    assert all(s[0] is None for s in steps[stop:])
    assert [tok for s in steps for tok in [s[2]] if tok is not None] == res.tokens[2]


def test_all_rows_finished_stops_early():
    model = random_model("mamba2")
    prompts = random_prompts([4])
    free = generate_ids(model, prompts, 6, SamplingConfig(greedy=True)).tokens[0]
    steps = []
    generate_ids(model, prompts, 50, SamplingConfig(greedy=True), eos_token_id=free[0], on_step=steps.append)
    assert steps == [[None]]


# ---- logits processing --------------------------------------------------------------------

def test_repetition_penalty_ctrl_definition():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5, -1.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0, 0.5, -2.0]]))


def test_top_k_keeps_the_k_largest():
    logits = torch.randn(3, 53)
    out = top_k_filter(logits, 7)
    kept = torch.isfinite(out)
    assert (kept.sum(-1) == 7).all()
    assert torch.equal(kept, logits >= logits.topk(7, dim=-1).values[:, -1:])
    assert torch.equal(out[kept], logits[kept])


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_smallest_set_reaching_p(p):
    logits = 3 * torch.randn(5, 61)
    probs = torch.softmax(logits, dim=-1)
    kept = torch.isfinite(top_p_filter(logits, p))
    for row in range(5):
        k, pr = kept[row], probs[row]
        mass = pr[k].sum().item()
        assert k.any()
        assert mass >= p - 1e-6
        assert mass - pr[k].min().item() < p
        if (~k).any():
            assert pr[k].min() >= pr[~k].max()


def test_sampling_follows_tempered_softmax():
    torch.manual_seed(0)  # a frequency test: fixed seed so it cannot flake
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 5.0]).expand(20000, 5)
    s = SamplingConfig(temperature=2.0, top_k=4)
    draws = choose_tokens(process_logits(logits, s, vocab_limit=4), s)
    freq = torch.bincount(draws, minlength=5).float() / 20000
    want = torch.softmax(torch.tensor([2.0, 1.0, 0.0, -1.0]) / 2.0, dim=0)
    assert freq[4] == 0
    assert (freq[:4] - want).abs().max() < 0.015


# ---- cache stacking -----------------------------------------------------------------------

@dataclass
class QuantState:
    conv: torch.Tensor
    ssm: torch.Tensor
    scale: torch.Tensor


def test_stack_caches_int8_and_shared_fields():
    def one(b):
        return InferenceCache([QuantState(torch.randint(-128, 128, (b, 5, 4), dtype=torch.int8),
                                          torch.randint(-128, 128, (b, 3, 2, 7), dtype=torch.int8),
                                          torch.tensor([0.5, 0.25]))], b)
    caches = [one(1), one(2), one(1)]
    out = stack_caches(caches)
    assert out.batch_size == 4 and isinstance(out.layers[0], QuantState)
    assert out.layers[0].ssm.dtype == torch.int8
    assert torch.equal(out.layers[0].conv, torch.cat([c.layers[0].conv for c in caches]))
    assert torch.equal(out.layers[0].ssm[1:3], caches[1].layers[0].ssm)
    assert torch.equal(out.layers[0].scale, torch.tensor([0.5, 0.25]))
    caches[2].layers[0].scale[0] = 2.0
    with pytest.raises(ValueError):
        stack_caches(caches)


def test_stack_caches_float_layer_state():
    a = InferenceCache([LayerState(torch.randn(1, 6, 4), torch.randn(1, 6, 3))], 1)
    b = InferenceCache([LayerState(torch.randn(2, 6, 4), torch.randn(2, 6, 3))], 2)
    out = stack_caches([a, b])
    assert out.layers[0].conv.shape == (3, 6, 4)
    assert torch.equal(out.layers[0].ssm[0], a.layers[0].ssm[0])


# ---- bad arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5),
                                dict(repetition_penalty=0.0)])
def test_bad_sampling_arguments(kw):
    with pytest.raises(InvalidArgumentError):
        SamplingConfig(**kw)


def test_bad_generate_ids_arguments():
    model = random_model("mamba1")
    for prompts, n in [([], 3), ([[1, 2], []], 3), ([[1, 90]], 3), ([[1]], -1)]:
        with pytest.raises(InvalidArgumentError):
            generate_ids(model, prompts, n)
    assert generate_ids(model, [[1, 2], [3]], 0).tokens == [[], []]


def test_generate_rejects_empty_prompt(small_lm):
    model, tok = small_lm
    for prompts in ([""], ["fine", ""], []):
        with pytest.raises(InvalidArgumentError):
            generate(model, tok, prompts, 4)


# ---- text level ---------------------------------------------------------------------------

def test_generate_text_streams_what_it_returns(small_lm):
    model, tok = small_lm
    prompts = ["The history of", "In 1905, the city council of the", "A"]
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    texts = generate(model, tok, prompts, 12, temperature=0.8, top_p=0.9, seed=3,
                     streamer=lambda i, s: pieces[i].append(s))
    assert len(texts) == 3
    for i, text in enumerate(texts):
        assert "".join(pieces[i]) == text
        assert "\ufffd" not in "".join(pieces[i])
    assert any(any(c.isalpha() for c in t) for t in texts)
    assert generate(model, tok, prompts, 12, temperature=0.8, top_p=0.9, seed=3) == texts


def test_greedy_text_matches_single_prompt_runs(small_lm):
    model, tok = small_lm
    prompts = ["The river", "Paris is the capital and most populous city of"]
    batch = generate(model, tok, prompts, 8, temperature=0)
    assert batch == [generate(model, tok, [p], 8, greedy=True)[0] for p in prompts]


def test_text_stream_holds_back_partial_characters(small_lm):
    _, tok = small_lm
    text = "naïve café ✓ 日本 done"
    stream = TextStream(tok)
    pieces = [stream.push(t) for t in tok(text)["input_ids"]] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
