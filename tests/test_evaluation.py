"""Bits per byte in basic, sliding and strided modes: every byte scored exactly once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.vocab import ByteVocab, SentencePieceVocab
from pretrain.inference.evaluation import evaluate_bytes, plan_windows, score_ids, window_plan_for
from pretrain.model import build_model
from pretrain.model.losses import bits_per_byte, token_nll, word_perplexity
from tests.conftest import tiny_model_config

VOCAB = ByteVocab()


def scored_positions(windows):
    return np.sort(np.concatenate([w.start + w.keep for w in windows]))


@pytest.mark.parametrize("n", [1, 3, 4, 7, 63, 64, 65, 200, 1000, 1027])
@pytest.mark.parametrize("mode", ["basic", "sliding", "strided", "sliding_strided"])
@pytest.mark.parametrize("seq_len,patch", [(64, 8), (32, 4), (16, 2)])
def test_every_position_scored_exactly_once(n, mode, seq_len, patch):
    windows = window_plan_for(mode, n, seq_len, patch)
    assert np.array_equal(scored_positions(windows), np.arange(n))
    for w in windows:
        assert w.length <= seq_len and w.start + w.length <= n
        assert (w.keep < w.length).all()


@pytest.mark.parametrize("stride", [8, 16, 24, 40, 64])
def test_sliding_gives_context_and_strided_keeps_first_half_of_patches(stride):
    n, T, P = 300, 64, 8
    sliding = plan_windows(n, T, stride)
    assert np.array_equal(scored_positions(sliding), np.arange(n))
    for w in sliding[1:]:
        assert w.keep.min() >= T - stride  # every scored byte has >= T - stride context
    strided = plan_windows(n, T, stride, patch_size=P)
    assert np.array_equal(scored_positions(strided), np.arange(n))
    for w in strided:
        assert (w.keep % P < P // 2).all()  # first half of each patch of *that* pass
    assert {w.start % P for w in strided} == {0, P // 2}  # two passes offset by P/2


def test_strided_needs_patches():
    with pytest.raises(ValueError, match="MEGABYTE"):
        window_plan_for("strided", 100, 64, None)
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        window_plan_for("fancy", 100, 64, 8)


def test_modes_agree_with_direct_scoring_and_differ_from_each_other(real_text):
    torch.manual_seed(0)
    cfg = tiny_model_config(seq_len=32, patch_size=4)
    model = build_model(cfg, VOCAB.vocab_size, VOCAB.pad_id, VOCAB.bos_id).eval()
    text = real_text[:700]
    basic = evaluate_bytes(model, text, VOCAB, 32, "basic", 4)
    # Basic mode by hand: independent windows of 32, every position scored.
    ids = torch.tensor(list(text))
    total = 0.0
    for s in range(0, len(ids), 32):
        chunk = ids[s:s + 32].view(1, -1)
        total += token_nll(model(chunk), chunk).double().sum().item()
    assert basic["bpb"] == pytest.approx(total / len(text) / math.log(2), rel=1e-6)
    results = {m: evaluate_bytes(model, text, VOCAB, 32, m, 4)["bpb"]
               for m in ("sliding", "strided", "sliding_strided")}
    assert len({round(v, 9) for v in results.values()} | {round(basic["bpb"], 9)}) == 4


def test_subword_bits_per_byte_divides_by_exact_utf8_bytes(sp_model):
    vocab = SentencePieceVocab(sp_model)
    torch.manual_seed(0)
    model = build_model(tiny_model_config("transformer", seq_len=32), vocab.vocab_size,
                        vocab.pad_id, vocab.bos_id).eval()
    text = ("naïve café — 日本語のテキスト, ελληνικά, emoji 🙂 and plain ascii.\n" * 6).encode()
    assert len(text) > len(text.decode())  # multi-byte UTF-8 in there
    out = evaluate_bytes(model, text, vocab, 32, "basic")
    ids = torch.tensor(vocab.encode(text))
    assert vocab.decode(ids.tolist()) == text
    nats = score_ids(model, ids, window_plan_for("basic", len(ids), 32, None))["nats"]
    assert out["bytes"] == len(text) and out["tokens"] == len(ids)
    assert out["bpb"] == pytest.approx(nats / (len(text) * math.log(2)), rel=1e-9)


def test_bits_per_byte_and_word_perplexity():
    assert bits_per_byte(8 * math.log(2) * 10, 10) == pytest.approx(8.0)
    # The paper's check: 0.8751 bpb at 5.9276 bytes per word is word perplexity 36.4.
    assert word_perplexity(0.8751, 41_289_101 / 6_965_511) == pytest.approx(36.4, abs=0.05)


# --- the evaluate command: a single-process run saved from an untrained debug model -----------


def save_tiny_run(run_dir, *overrides: str):
    """A run directory holding one single-process checkpoint (step 1) of the untrained
    ``configs/debug.yaml`` model (seq_len 64, patch 8) with ``overrides``: what training writes."""
    from data_prep.vocab import build_vocab
    from pretrain.checkpoints import store
    from pretrain.config import CONFIG_DIR, as_dict, load_config

    cfg = load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={run_dir}", *overrides])
    vocab = build_vocab(cfg.model.vocab, cfg.model.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab.vocab_size, vocab.pad_id, vocab.bos_id)
    state = {"model": model.state_dict(), "optimizer": {}, "config": as_dict(cfg), "step": 1,
             "bytes_seen": 0}
    store.save(Path(run_dir) / "checkpoints", 1, state, keep_last=1)
    return Path(run_dir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return save_tiny_run(tmp_path_factory.mktemp("evalcli") / "run")


def run_command(main, argv, capsys):
    """(exit code, stdout, stderr) of a command's ``main`` run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(code, err, message):
    assert code == 2 and "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], err[-3000:]


@pytest.mark.parametrize("options,message", [
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--max-bytes", "-5"], "--max-bytes must be a positive integer, got -5"),
    (["--stride", "-3", "--modes", "sliding"], "--stride must be a positive integer, got -3"),
    (["--stride", "12", "--modes", "sliding"], "stride 12 is not a multiple of the patch size 8"),
    (["--stride", "72", "--modes", "sliding"], "stride must be in (0, 64]"),
    (["--modes", ","], "--modes: no mode given"),
    (["--modes", "basic,fancy"], "--modes: unknown mode(s) fancy"),
])
def test_evaluate_rejects_bad_options_naming_them(tiny_run, tmp_path, capsys, options, message):
    from pretrain.evaluate import main

    (tmp_path / "a.txt").write_bytes(b"hello world\n" * 20)
    code, out, err = run_command(main, ["--checkpoint", tiny_run, "--files", tmp_path / "a.txt",
                                        *options], capsys)
    assert_one_error_line(code, err, message)
    assert out == ""


def test_evaluate_reports_the_stride_each_mode_used(tiny_run, tmp_path, capsys):
    from pretrain.evaluate import main

    (tmp_path / "a.txt").write_bytes(b"hello world\n" * 20)
    for stride, used in ((None, 32), (16, 16)):
        extra = ["--stride", stride] if stride else []
        code, out, err = run_command(main, ["--checkpoint", tiny_run, "--files", tmp_path / "a.txt",
                                            "--modes", "basic,sliding", *extra], capsys)
        assert code == 0, err[-3000:]
        got = json.loads(out)
        assert got["results"]["sliding"]["stride"] == used
        assert got["results"]["basic"]["stride"] == 64
        assert got["dtype"] == "fp32"


@pytest.mark.parametrize("options,message", [
    (["model.seq_len=128"], "do not fit the model: global_pos"),
    (["model.global_model.layers=3"], "the override(s) model.global_model.layers=3 change the model"),
    (["train.device=cuda"], "train.device=cuda but no CUDA device is available"),
    (["--compile", "bogus"], "no torch.compile backend named 'bogus'"),
])
def test_evaluate_load_errors_are_one_line(tiny_run, tmp_path, capsys, options, message):
    """A shape override, a device that is not here, an unknown compile backend: one ``error:``
    line naming the cause (exit 2), no traceback."""
    from pretrain.evaluate import main

    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    (tmp_path / "a.txt").write_bytes(b"hello world\n" * 20)
    code, _, err = run_command(main, ["--checkpoint", tiny_run, *options,
                                      "--files", tmp_path / "a.txt"], capsys)
    assert_one_error_line(code, err, message)


def test_evaluate_help_says_it_scores_in_fp32_whatever_the_run_trained_in():
    """A bf16 run's logged validation (bf16 autocast) differs from evaluate's fp32 score in about
    the 4th decimal: --help says so, and the JSON names the dtype (checked above)."""
    from pretrain.evaluate import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "always in fp32, whatever ``train.dtype``" in text
    assert "bf16 autocast" in text


def test_a_relative_tokenizer_is_found_from_any_working_directory(sp_model, tmp_path, monkeypatch,
                                                                   capsys):
    """A subword run saved ``model.tokenizer`` relative to where it was started (as the presets
    do): evaluate finds it from another working directory through the run's relative run_dir;
    where nothing tells, the error names the places tried and the override that fixes it."""
    import shutil

    from pretrain.evaluate import main

    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    (start / "tok").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(sp_model, start / "tok" / "sp.model")
    (tmp_path / "a.txt").write_bytes(b"def main():\n    return 1\n" * 10)
    monkeypatch.chdir(start)
    subword = ["model.arch=transformer", "model.vocab=sentencepiece", "model.tokenizer=tok/sp.model",
               "model.seq_len=32"]
    # Runs written today save the tokenizer's absolute path (pretrain.config.loading); these two
    # play runs written before that, whose config kept the path as typed.
    for run in (save_tiny_run("runs/sub", *subword), save_tiny_run(tmp_path / "abs", *subword)):
        ckpt = run / "checkpoints" / "step_00000001" / "state.pt"
        state = torch.load(ckpt, weights_only=False)
        assert state["config"]["model"]["tokenizer"] == str(start / "tok" / "sp.model")
        state["config"]["model"]["tokenizer"] = "tok/sp.model"
        torch.save(state, ckpt)
    monkeypatch.chdir(elsewhere)
    code, out, err = run_command(main, ["--checkpoint", start / "runs" / "sub",
                                        "--files", tmp_path / "a.txt"], capsys)
    assert code == 0, err[-3000:]
    assert json.loads(out)["arch"] == "transformer"
    code, _, err = run_command(main, ["--checkpoint", tmp_path / "abs",
                                      "--files", tmp_path / "a.txt"], capsys)
    assert_one_error_line(code, err, "the run saved the relative path tok/sp.model")
    assert "pass model.tokenizer=PATH" in err
    code, _, err = run_command(main, ["--checkpoint", tmp_path / "abs",
                                      f"model.tokenizer={start / 'tok' / 'sp.model'}",
                                      "--files", tmp_path / "a.txt"], capsys)
    assert code == 0, err[-3000:]
