"""SentencePiece for the subword baseline: lossless round trip, long lines, token shards with exact
byte counts, and the loader on token data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.bytes import PrepOptions, prepare
from data_prep.shards import iter_documents, read_manifest
from data_prep.tokenizer import (
    MAX_SENTENCE_BYTES,
    TokenizerStats,
    tokenize_dataset,
    train_sentencepiece,
    training_lines,
)
from data_prep.vocab import SentencePieceVocab
from pretrain.config import CONFIG_DIR, load_config
from pretrain.data import build_data
from tests.conftest import ROOT
from tests.data_corpus import make_corpus

NOT_UTF8 = {"latin1.txt", "bin/blob.bin"}
CONTROL = "".join(chr(c) for c in range(32)) + "\x7f\x85\u2028\u2029"
TRICKY = [
    "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001f600 \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "x" * 20_000 + "\n",  # one line far beyond max_sentence_length
    ("def f():\n\treturn 'a\u00e9' * 3  # " + "\u00e9" * 5000 + "\n") * 3,
    f"control bytes: {CONTROL} end\r\n\r\n",
    "  leading and trailing spaces   \n\n\n   ",
    "the whitespace marker itself: \u2581 and \u2581\u2581 x\u2581",
    "\ufeffBOM and a combining accent e\u0301 and \ufffd and \U0010ffff",
]


def test_round_trip_is_lossless_on_real_text_and_hard_cases(sp_model, real_text):
    vocab = SentencePieceVocab(sp_model)
    for text in [real_text.decode("utf-8")] + TRICKY + ["".join(TRICKY)]:
        data = text.encode("utf-8")
        ids = vocab.encode(data)
        assert vocab.decode(ids) == data, repr(text[:60])
        assert max(ids) < vocab.pad_id  # special ids never come from text
        assert vocab.sp.decode(ids).encode("utf-8") == data  # the same as SentencePiece's decode


def test_any_bytes_round_trip_through_byte_fallback_pieces(sp_model, real_text):
    """Bytes that are not UTF-8 (Latin-1, binary, cut characters) become one byte piece each:
    exact, and text around them is still encoded as usual."""
    import random

    vocab = SentencePieceVocab(sp_model)
    rng = random.Random(0)
    text = real_text[:2000]
    cases = [b"\xff\xfe not utf-8", "caf\u00e9 latin-1\n".encode("latin-1"), bytes(range(256)),
             "\u4e2d".encode()[:2] + b" cut character", "\u2581".encode()[:2] + b"\xe2"]
    cases += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(50)]
    for odd in cases:
        for data in (odd, text + odd + text, odd + text):
            ids = vocab.encode(data)
            assert vocab.decode(ids) == data, data[:80]
            assert max(ids) < vocab.pad_id
    # A few odd bytes in text cost one piece each and leave the rest encoded as before.
    assert len(vocab.encode(text + b"\xb9" + text)) == 2 * len(vocab.encode(text)) + 1


def test_long_lines_are_split_and_counted_never_dropped():
    line = ("\u00e9" * 3000) + ("a" * 7000)  # 13000 UTF-8 bytes
    stats = TokenizerStats()
    out = list(training_lines([f"short\n{line}\nend\n".encode()], stats))
    assert stats.lines == 3 and stats.long_lines_split == 1 and stats.pieces_from_long_lines == len(out) - 2
    assert "".join(out[1:-1]) == line and all(len(p.encode()) <= MAX_SENTENCE_BYTES for p in out)


def test_training_reads_a_capped_shuffled_sample(tmp_path, real_text):
    stats = train_sentencepiece([real_text], tmp_path / "tok", vocab_size=400, sample_lines=500)
    assert stats.sampled == 500 < stats.lines
    assert (tmp_path / "tok.model").is_file()


@pytest.fixture(scope="module")
def byte_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, n_text=24)
    (root / "latin1.txt").write_bytes("caf\u00e9 in latin-1\n".encode("latin-1"))  # not UTF-8
    (root / "tricky.txt").write_bytes("".join(TRICKY).encode())
    out = tmp_path_factory.mktemp("bytes")
    prepare([root], out, PrepOptions(shard_bytes=20_000, max_sample_bytes=8192, val_fraction=0.25,
                                     order="sorted"), progress=False)
    return out


def test_token_shards_keep_exact_bytes_and_record_bytes_per_token(byte_dataset, sp_model, tmp_path):
    bad = NOT_UTF8
    # By default every document is kept: bytes that are not UTF-8 become byte-fallback pieces.
    kept = tmp_path / "all"
    summary = tokenize_dataset(byte_dataset, sp_model, kept, progress=False)
    assert summary["non_utf8_documents"] == 2 and summary["bad_input"]["invalid_utf8"] == 0
    assert set(read_manifest(kept)["non_utf8"]["examples"]) == set(bad)
    vocab = SentencePieceVocab(sp_model)
    for split in ("train", "val"):
        source = dict(iter_documents(byte_dataset, split))
        tokens = dict(iter_documents(kept, split))
        assert set(tokens) == set(source)
        for doc_id, payload in tokens.items():
            assert vocab.decode(np.frombuffer(payload, dtype="<u2").tolist()) == source[doc_id]
    out = tmp_path / "tokens"
    summary = tokenize_dataset(byte_dataset, sp_model, out, workers=2, skip_invalid_utf8=True, progress=False)
    manifest = read_manifest(out)
    assert manifest["kind"] == "tokens" and manifest["bad_input"]["counts"]["invalid_utf8"] == 2
    vocab = SentencePieceVocab(sp_model)
    for split in ("train", "val"):
        source = {k: v for k, v in iter_documents(byte_dataset, split) if k not in bad}
        tokens = dict(iter_documents(out, split))
        assert set(tokens) == set(source)
        n_tokens = 0
        for doc_id, payload in tokens.items():
            ids = np.frombuffer(payload, dtype="<u2")
            n_tokens += len(ids)
            assert vocab.decode(ids.tolist()) == source[doc_id]  # exact bytes of every document
        s = manifest["splits"][split]
        assert s["tokens"] == n_tokens and s["bytes"] == sum(map(len, source.values()))
        assert s["bytes_per_token"] == pytest.approx(s["bytes"] / n_tokens, rel=1e-5)
        assert summary["splits"][split]["bytes_per_token"] == s["bytes_per_token"] > 1.0
    again = tokenize_dataset(byte_dataset, sp_model, out, skip_invalid_utf8=True, progress=False)
    assert again["status"] == "unchanged"


def test_subword_loader_on_token_shards(byte_dataset, sp_model, tmp_path):
    out = tmp_path / "tokens"
    tokenize_dataset(byte_dataset, sp_model, out, skip_invalid_utf8=True, progress=False)
    cfg = load_config(CONFIG_DIR / "debug_subword.yaml", [
        f"model.tokenizer={sp_model}", "data.source=shards", f"data.datasets=[{out}]", "data.val_bytes=3000"])
    vocab = SentencePieceVocab(sp_model)
    data = build_data(cfg, vocab, 4)
    xs = torch.cat([data.train.next_batch() for _ in range(30)])
    assert xs.shape[1] == cfg.model.seq_len and int(xs.max()) < vocab.vocab_size
    assert (xs == vocab.eos_id).any()  # documents separated by EOS
    val = b"".join(p for k, p in iter_documents(byte_dataset, "val") if k not in NOT_UTF8)
    assert data.val_text == val[:3000]  # raw bytes: evaluation divides by exact bytes
    m = read_manifest(out)["splits"]["train"]
    assert data.bytes_per_unit == pytest.approx(m["bytes"] / (m["tokens"] + m["docs"]))


def test_tokenizer_cli_trains_on_a_dataset_and_writes_token_shards(byte_dataset, tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "data_prep.tokenizer", "--output", str(tmp_path / "tok"),
                        "--dataset", str(byte_dataset), "--vocab-size", "400", "--tokens-output",
                        str(tmp_path / "tokens"), "--skip", "invalid_utf8", "--workers", "1",
                        "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["trained_on"] == str(byte_dataset) and result["tokens"]["status"] == "written"
    assert result["tokens"]["bad_input"]["invalid_utf8"] == 2 and "latin1.txt" in r.stderr
