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
    assert list(again["splits"]) == list(summary["splits"]) == ["train", "val", "test"]


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


# --------------------------------------------------------------------------------------
# The whitespace marker, the lossless check's message, malformed manifests, the CLI's options
# --------------------------------------------------------------------------------------

DIGITS = "".join(f"{i}\n" for i in range(1, 3000)).encode()  # a training sample without a space


def test_a_sample_without_a_space_still_gives_lossless_token_shards(byte_dataset, tmp_path):
    """'▁' is always in the vocabulary: otherwise a space is encoded like a literal '▁' (its three
    byte pieces) and decodes as one."""
    train_sentencepiece([DIGITS], tmp_path / "digits", vocab_size=300)
    vocab = SentencePieceVocab(tmp_path / "digits.model")
    assert vocab.sp.piece_to_id("\u2581") != vocab.sp.unk_id()
    data = "a b \u2581 c\n".encode()
    assert vocab.decode(vocab.encode(data)) == data
    out = tmp_path / "tokens"
    tokenize_dataset(byte_dataset, tmp_path / "digits.model", out, progress=False)  # checks every doc
    source = dict(iter_documents(byte_dataset, "val"))
    for doc_id, payload in iter_documents(out, "val"):
        assert vocab.decode(np.frombuffer(payload, dtype="<u2").tolist()) == source[doc_id]


def test_the_lossless_check_names_a_missing_whitespace_marker(byte_dataset, tmp_path):
    """A model trained without '▁' (as data_prep.tokenizer did before it kept it): the error says
    so instead of asking whether the model was trained by data_prep.tokenizer."""
    import sentencepiece as spm

    from data_prep.tokenizer import TokenizeError

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(DIGITS.decode().split()), model_prefix=str(tmp_path / "old"), vocab_size=300,
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, split_digits=True, character_coverage=1.0, unk_id=0, bos_id=-1,
        eos_id=-1, pad_id=-1, hard_vocab_limit=False, minloglevel=2)
    with pytest.raises(TokenizeError) as info:
        tokenize_dataset(byte_dataset, tmp_path / "old.model", tmp_path / "tokens", progress=False)
    msg = str(info.value)
    assert "the model has no '\u2581' piece" in msg and "was it trained by" not in msg and "\n" not in msg
    assert not (tmp_path / "tokens" / "manifest.json").exists()


def test_vocab_size_too_small_for_the_sample_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size 0 is too small: at least 258"):
        train_sentencepiece([DIGITS], tmp_path / "t", vocab_size=0)
    # 10 digits and the marker: 256 byte pieces + <unk> + 11 characters = 268 pieces at least
    with pytest.raises(ValueError, match=r"its 11 distinct characters need at least 268$"):
        train_sentencepiece([DIGITS], tmp_path / "t", vocab_size=267)
    train_sentencepiece([DIGITS], tmp_path / "t", vocab_size=268)  # exactly enough


def _cli(capsys, *args: str) -> tuple:
    from data_prep.tokenizer import main

    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_tokenizer_cli_on_a_malformed_manifest_is_one_line_exit_2(byte_dataset, sp_model, tmp_path, capsys):
    import shutil

    for edit, problem in [(lambda r: r.pop("sha256"), "missing field 'sha256'"),
                          (lambda r: r.update(name="../x.tar"), "field 'name' is '../x.tar', not a shard")]:
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(byte_dataset, bad)
        manifest = json.loads((bad / "manifest.json").read_text())
        edit(manifest["shards"][0])
        (bad / "manifest.json").write_text(json.dumps(manifest))
        code, out, err = _cli(capsys, "--model", str(sp_model), "--dataset", str(bad), "--tokens-output",
                              str(tmp_path / "tokens"), "--no-progress")
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith(f"error: {bad / 'manifest.json'}: shards[0]") and problem in err, err


def test_tokenizer_cli_options_are_checked_up_front(byte_dataset, tmp_path, capsys):
    base = ["--output", str(tmp_path / "tok"), "--dataset", str(byte_dataset), "--no-progress"]
    code, _, err = _cli(capsys, *base, "--max-bytes", "-5")
    assert code == 2 and "argument --max-bytes: size must be positive: '-5'" in err
    code, _, err = _cli(capsys, *base, "--vocab-size", "0")
    assert code == 2 and "argument --vocab-size: must be at least 258 (256 byte pieces" in err
    assert "INTERNAL" not in err and not (tmp_path / "tok.model").exists()


def test_tokenizer_cli_rerun_with_the_same_inputs_is_a_noop(byte_dataset, tmp_path, capsys):
    """Sizes like every data_prep option (--max-bytes 20K); a file:// dataset location; re-running
    with the same inputs and options trains nothing; other options train again."""
    args = ["--output", str(tmp_path / "tok"), "--dataset", f"file://{byte_dataset}", "--vocab-size", "400",
            "--max-bytes", "20K", "--no-progress"]
    code, out, err = _cli(capsys, *args)
    first = json.loads(out)
    assert code == 0 and first["status"] == "written" and first["sample_bytes"] == 20 * 1024, err
    model = tmp_path / "tok.model"
    stamp = model.stat().st_mtime_ns
    code, out, _ = _cli(capsys, *args)
    assert code == 0 and json.loads(out)["status"] == "unchanged" and model.stat().st_mtime_ns == stamp
    code, out, _ = _cli(capsys, *args[:-2], "30K", "--no-progress")
    assert code == 0 and json.loads(out)["status"] == "written"
    model.write_bytes(model.read_bytes()[:-1] + b"x")  # a model that is not the recorded one
    code, out, _ = _cli(capsys, *args[:-2], "30K", "--no-progress")
    assert code == 0 and json.loads(out)["status"] == "written"
