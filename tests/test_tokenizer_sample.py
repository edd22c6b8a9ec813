"""The tokenizer's training sample is drawn across the whole train split, deterministically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_prep.bytes import PrepOptions, prepare
from data_prep.shards import iter_shard_documents, read_manifest, shard_records
from data_prep.tokenizer import sample_train_documents, train_sentencepiece


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """~10 train shards of distinct documents."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(60):
        (root / f"d{i:02d}.txt").write_bytes(f"document number {i} says hello\n".encode() * (10 + i % 7))
    out = tmp_path_factory.mktemp("tok") / "ds"
    prepare([root], out, PrepOptions(shard_bytes=2000, val_fraction=0.1), progress=False)
    return out


def test_a_small_sample_spans_every_shard_first_to_last_and_is_deterministic(dataset):
    manifest = read_manifest(dataset)
    recs = shard_records(manifest, "train")
    by_shard = [{p for _, p, _ in iter_shard_documents(dataset / r["name"])} for r in recs]
    total = sum(r["bytes"] for r in recs)
    assert len(recs) >= 8
    cap = total // 4  # about a quarter: taken in stored order it would end well before the last shard
    sample = list(sample_train_documents(dataset, cap))
    assert sample == list(sample_train_documents(dataset, cap))  # deterministic
    assert set(sample) & by_shard[-1] and set(sample) & by_shard[0]
    assert all(set(sample) & docs for docs in by_shard)  # every shard contributes
    biggest = max(len(p) for docs in by_shard for p in docs)
    assert cap / 2 < sum(map(len, sample)) <= cap + len(recs) * biggest
    assert len(set(sample)) == len(sample)  # no document twice
    other = list(sample_train_documents(dataset, cap, seed=1))
    assert other != sample and all(set(other) & docs for docs in by_shard)  # the seed picks others
    assert sorted(sample_train_documents(dataset, 10 * total)) == sorted(p for d in by_shard for p in d)


def test_sentencepiece_trains_with_every_cpu(dataset, tmp_path, monkeypatch):
    import sentencepiece as spm

    seen = {}
    real = spm.SentencePieceTrainer.train

    def spy(**kw):
        seen.update(kw)
        return real(**kw)
    monkeypatch.setattr(spm.SentencePieceTrainer, "train", spy)
    stats = train_sentencepiece(sample_train_documents(dataset, 20_000), tmp_path / "tok", vocab_size=300)
    assert seen["num_threads"] == os.cpu_count() and stats.sampled > 0
    assert (tmp_path / "tok.model").is_file()
