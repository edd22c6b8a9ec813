"""The batch-source interface and :func:`build_data`, which picks the source ``data.source``
names for one data-parallel rank (the in-memory sampler or the shard loader)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Protocol, Tuple

import numpy as np
import torch

from data_prep.shards import ManifestError, ShardError, sha256_file
from data_prep.vocab import Vocab
from pretrain.config import Config, ConfigError
from pretrain.data.memory import WindowSampler, load_corpus
from pretrain.data.shard_loader import Dataset, ShardLoader, once_per_job, open_dataset, read_val_text


class BatchSource(Protocol):
    """What a trainer needs from training data (in-memory sampler or shard loader)."""

    def next_batch(self) -> torch.Tensor: ...  # (micro_batch, seq_len) int64 ids

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


@dataclass
class TrainData:
    """Training batches, held-out text for validation, and stream statistics."""

    train: BatchSource
    val_text: bytes
    bytes_per_unit: float  # bytes per id of the training stream (1.0 for byte models)
    description: str


def build_data(cfg: Config, vocab: Vocab, micro_batch_size: int, dp_rank: int = 0,
               dp_size: int = 1) -> TrainData:
    """The batch source and validation text named by ``cfg.data`` for one data-parallel rank.

    ``dp_rank``/``dp_size`` are the data-parallel coordinates (tensor-parallel peers pass the same
    values and get identical batches); environment variables such as RANK are never read.
    """
    if cfg.data.source == "shards":
        return build_shard_data(cfg, vocab, micro_batch_size, dp_rank, dp_size)
    corpus = load_corpus(cfg.data)
    stream = np.asarray(vocab.encode(corpus.train), dtype=np.int32)
    sampler = WindowSampler(stream, cfg.model.seq_len, micro_batch_size, cfg.train.seed,
                            dp_rank, dp_size)
    desc = (f"corpus {corpus.root}: {corpus.documents[0]} train docs "
            f"({len(corpus.train) / 1e6:.1f} MB), {corpus.documents[1]} val docs")
    return TrainData(sampler, corpus.val[:cfg.data.val_bytes], len(corpus.train) / len(stream), desc)


def open_datasets(cfg: Config, vocab: Vocab) -> List[Dataset]:
    """The configured datasets, checked against the vocabulary (byte shards for ``bytes``; token
    shards made with the same tokenizer file for ``sentencepiece``).

    In a distributed job rank 0 reads the manifests (and stats the shards) and sends the result,
    or the error, to the other ranks (:func:`once_per_job`): every rank must call this."""
    return once_per_job(lambda: _open_datasets(cfg, vocab))


def _open_datasets(cfg: Config, vocab: Vocab) -> List[Dataset]:
    out = []
    for i, path in enumerate(cfg.data.datasets):
        key = f"data.datasets[{i}]"
        try:
            ds = open_dataset(path)
        except (ManifestError, ShardError, OSError) as err:
            raise ConfigError(f"config error: {key}: {err}") from None
        if vocab.kind == "bytes" and ds.kind != "bytes":
            raise ConfigError(f"config error: {key}: {path} holds {ds.kind} shards but model.vocab=bytes "
                              "needs byte shards (python -m data_prep.bytes)")
        if vocab.kind == "sentencepiece":
            if ds.kind != "tokens":
                raise ConfigError(
                    f"config error: {key}: {path} holds byte shards but model.vocab=sentencepiece needs "
                    f"token shards: python -m data_prep.tokenizer --model {cfg.model.tokenizer} "
                    f"--dataset {path} --tokens-output DIR")
            want = ds.manifest["tokenizer"]["sha256"]
            if sha256_file(Path(str(cfg.model.tokenizer))) != want:
                raise ConfigError(f"config error: {key}: {path} was tokenized with "
                                  f"{ds.manifest['tokenizer']['path']}, not with model.tokenizer="
                                  f"{cfg.model.tokenizer} (sha256 differs)")
        out.append(ds)
    return out


def build_shard_data(cfg: Config, vocab: Vocab, micro_batch_size: int, dp_rank: int = 0,
                     dp_size: int = 1) -> TrainData:
    """``data.source=shards``: the deterministic, resumable shard loader plus held-out text."""
    d = cfg.data

    def read() -> Tuple[List[Dataset], bytes]:
        datasets = _open_datasets(cfg, vocab)
        return datasets, read_val_text(datasets, _weights(cfg, datasets), d.val_bytes, vocab)

    # Rank 0 reads manifests and validation text; the other ranks get them (one message).
    datasets, val = once_per_job(read)
    weights = _weights(cfg, datasets)
    loader = ShardLoader(datasets, weights, cfg.model.seq_len, micro_batch_size, cfg.train.seed,
                         vocab.eos_id, vocab.pad_id, vocab.vocab_size, dp_rank, dp_size, d.lanes,
                         d.num_workers, d.skip_bad_shards)
    return TrainData(loader, val, loader.bytes_per_unit, loader.describe())


def _weights(cfg: Config, datasets: List[Dataset]) -> List[float]:
    return list(cfg.data.weights) or [1.0] * len(datasets)


def validation_text(cfg: Config, vocab: Vocab, n_bytes: int) -> bytes:
    """The first ``n_bytes`` held-out bytes of the run's data, whatever ``data.source`` is (the
    same bytes its periodic validation scores when ``n_bytes = data.val_bytes``), without
    building the training stream."""
    if cfg.data.source == "shards":
        datasets = open_datasets(cfg, vocab)
        return read_val_text(datasets, _weights(cfg, datasets), n_bytes, vocab)
    return load_corpus(cfg.data).val[:n_bytes]
