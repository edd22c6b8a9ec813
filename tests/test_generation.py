"""Cached generation equals the uncached forward pass at every step, for every model."""

from __future__ import annotations

import json

import pytest
import torch

from data_prep.vocab import ByteVocab, SentencePieceVocab
from pretrain.inference.generation import Sampling, generate, sample_next, uncached_next_logits
from pretrain.model import build_model
from tests.conftest import tiny_model_config

VOCAB = ByteVocab()
VARIANTS = {
    "megabyte": tiny_model_config(),
    "megabyte_cross_patch": tiny_model_config(cross_patch_window=3),
    "megabyte_conv": tiny_model_config(conv_encoder=True),
    "megabyte_both": tiny_model_config(cross_patch_window=4, conv_encoder=True),
    "megabyte_default_init": tiny_model_config(init="ln_gain"),  # the default, issue 12's fix
    "transformer_bytes": tiny_model_config("transformer"),
    "transformer_window": tiny_model_config("transformer", attention_window=6),
}


def make(cfg, vocab_size=VOCAB.vocab_size, pad=VOCAB.pad_id, bos=VOCAB.bos_id):
    torch.manual_seed(0)
    return build_model(cfg, vocab_size, pad, bos).eval()


def check_cache(model, ids: torch.Tensor, prompt_len: int) -> float:
    """Prefill ``prompt_len`` ids, then feed the rest one at a time; compare every step."""
    full = model(ids)  # (B, L, V); full[:, t] predicts ids[:, t]
    state = model.new_decode_state(ids.shape[0], ids.device)
    worst = 0.0
    logits = model.next_logits(state, ids[:, :prompt_len])
    worst = max(worst, (logits - full[:, prompt_len]).abs().max().item())
    for t in range(prompt_len, ids.shape[1] - 1):
        logits = model.next_logits(state, ids[:, t:t + 1])
        worst = max(worst, (logits - full[:, t + 1]).abs().max().item())
    return worst


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("prompt_len", [0, 1, 3, 4, 9, 16, 30])  # P=4: most are not multiples
def test_cached_logits_equal_uncached(name, prompt_len):
    model = make(VARIANTS[name])
    ids = torch.randint(0, 256, (2, 41))
    assert check_cache(model, ids, prompt_len) <= 1e-4


def test_cache_fills_the_whole_context_and_stops():
    model = make(tiny_model_config(seq_len=16))
    ids = torch.randint(0, 256, (1, 16))
    assert check_cache(model, ids, 5) <= 1e-4
    state = model.new_decode_state(1, ids.device)
    with pytest.raises(ValueError, match="context full"):
        model.next_logits(state, ids)


def test_subword_baseline_cache(sp_model, real_text):
    vocab = SentencePieceVocab(sp_model)
    model = make(tiny_model_config("transformer"), vocab.vocab_size, vocab.pad_id, vocab.bos_id)
    ids = torch.tensor(vocab.encode(real_text[:2000])[:40]).view(1, -1)
    assert check_cache(model, ids, 7) <= 1e-4


def test_hierarchical_cache_does_one_global_step_per_patch():
    model = make(tiny_model_config())
    out = generate(model, [[1, 2, 3]], max_new=40, sampling=Sampling(temperature=0))
    assert len(out["outputs"][0]) == 40
    state = model.new_decode_state(1, torch.device("cpu"))
    model.next_logits(state, torch.tensor([[1, 2, 3]]))
    for i in range(40):
        model.next_logits(state, torch.tensor([[i]]))
    # 44 positions (0..43) with P=4 -> patches 0..10 -> 11 global steps; one local step per byte.
    assert state.stats == {"global_steps": 11, "local_steps": 44}


def test_greedy_generation_matches_uncached_argmax():
    model = make(tiny_model_config(cross_patch_window=2))
    prompt = [10, 20, 30, 40, 50]
    out = generate(model, [prompt], max_new=20, sampling=Sampling(temperature=0))["outputs"][0]
    ids = list(prompt)
    for _ in range(20):
        nxt = int(uncached_next_logits(model, torch.tensor([ids]))[0].argmax())
        ids.append(nxt)
    assert out == ids[len(prompt):]


def test_batch_of_prompts_of_different_lengths():
    model = make(tiny_model_config())
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [7, 7, 7]]
    batch = generate(model, prompts, max_new=12, sampling=Sampling(temperature=0))["outputs"]
    alone = [generate(model, [p], max_new=12, sampling=Sampling(temperature=0))["outputs"][0]
             for p in prompts]
    assert batch == alone


def test_sampling_filters():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, Sampling(1.0, top_k=2), gen)) for _ in range(200)}
    assert picks == {0, 1}
    # top_p: p(0)=0.70, p(1)=0.26 -> 0.9 keeps both, 0.5 keeps only the first.
    picks = {int(sample_next(logits, Sampling(1.0, top_p=0.5), gen)) for _ in range(200)}
    assert picks == {0}
    picks = {int(sample_next(logits, Sampling(1.0, top_p=0.9), gen)) for _ in range(300)}
    assert picks == {0, 1}
    assert int(sample_next(logits, Sampling(0.0), gen, banned=[0])) == 1
    with pytest.raises(ValueError):
        Sampling(top_p=0.0)


def test_eos_stops_and_prompt_too_long_is_refused():
    model = make(tiny_model_config())
    # Declare the greedy choice after the prompt to be EOS: generation must stop right there.
    first = int(uncached_next_logits(model, torch.tensor([[1, 2]])).argmax())
    out = generate(model, [[1, 2]], max_new=5, sampling=Sampling(temperature=0), eos_id=first)
    assert out["outputs"][0] == [first]
    with pytest.raises(ValueError, match="model context"):
        generate(model, [list(range(64))], max_new=1)


def test_max_new_must_be_positive_and_limits_say_what_the_context_left():
    model = make(tiny_model_config())  # seq_len 64
    with pytest.raises(ValueError, match="max_new must be at least 1"):
        generate(model, [[1, 2]], max_new=-3)
    out = generate(model, [list(range(60)), [1, 2]], max_new=100, sampling=Sampling(temperature=0))
    assert out["limits"] == [4, 62]
    assert [len(o) for o in out["outputs"]] == [4, 62]


def test_generate_command_says_it_stopped_at_the_context_and_json_holds_the_prompt(tmp_path, capsys):
    """A 60-byte prompt on a seq_len=64 model with --max-new 100: 4 bytes, and stderr says the
    context stopped it; --json gives the prompts and the continuations apart, as documented;
    --max-new -3 is refused."""
    from pretrain.generate import main
    from tests.test_evaluation import run_command, save_tiny_run

    run = save_tiny_run(tmp_path / "run")
    prompt = "x" * 60
    argv = ["--checkpoint", run, "--prompt", prompt, "--max-new", "100", "--temperature", "0"]
    code, out, err = run_command(main, argv, capsys)
    assert code == 0, err[-3000:]
    assert "stopped at the model's context (64 ids, prompt included): generated 4 of 100" in err
    assert out.startswith(prompt)
    code, out, err = run_command(main, [*argv, "--json"], capsys)
    assert code == 0, err[-3000:]
    got = json.loads(out)
    assert got["prompts"] == [prompt] and got["bytes"] == 4
    assert len(got["outputs"][0].encode("utf-8", "backslashreplace")) >= 4
    assert "stopped at the model's context" in err
    code, out, err = run_command(main, ["--checkpoint", run, "--max-new", "-3"], capsys)
    assert code == 2 and "--max-new must be a positive number of ids, got -3" in err
    code, out, err = run_command(main, ["--checkpoint", run, "--prompt", "ab", "--max-new", "5"],
                                 capsys)
    assert code == 0 and "stopped at" not in err
