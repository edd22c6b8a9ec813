"""Bits per byte in basic, sliding and strided modes: every byte scored exactly once."""

from __future__ import annotations

import math

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
