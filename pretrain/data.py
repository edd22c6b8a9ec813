"""Training data: the batch-source interface and the sources behind ``data.source``.

``stdlib`` / ``files`` (the quick start): real files read into memory, split into
train/validation by a hash of their path, each split concatenated into one stream; batches are
windows whose start offsets depend only on (seed, step, micro-batch), so a resumed run sees
exactly the batches the uninterrupted run would have seen.

``shards``: prepared datasets (``python -m data_prep.bytes``, or token shards from
``python -m data_prep.tokenizer``) streamed by :class:`pretrain.loader.ShardLoader`: documents
packed into sequences with EOS separators, split by data-parallel rank and DataLoader worker,
resumable at the exact next sequence (also at another data-parallel size).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Protocol, Tuple

import numpy as np
import torch

from data_prep.sources import list_files, read_documents, split_of, stdlib_dir, stdlib_files
from pretrain.config import Config, DataConfig
from pretrain.vocab import Vocab

if TYPE_CHECKING:
    from pretrain.loader import Dataset


@dataclass
class Corpus:
    """Train and validation byte streams plus where they came from."""

    train: bytes
    val: bytes
    root: str
    documents: Tuple[int, int]  # (train, val) document counts


def load_corpus(cfg: DataConfig) -> Corpus:
    """Read the corpus named by ``cfg`` and split it by document."""
    if cfg.source == "stdlib":
        root = Path(cfg.path) if cfg.path else stdlib_dir()
        files = stdlib_files() if not cfg.path else list_files(root, "*.py")
    else:
        root = Path(str(cfg.path))
        files = list_files(root)
    if not files:
        raise FileNotFoundError(f"no input files under {root}")
    train, val = bytearray(), bytearray()
    counts = [0, 0]
    for doc_id, data in read_documents(root, files, cfg.max_bytes):
        if split_of(doc_id, cfg.val_fraction) == "val":
            val += data
            counts[1] += 1
        else:
            train += data
            counts[0] += 1
    if not val or not train:
        raise ValueError(f"corpus under {root} too small to split (train {len(train)} bytes, "
                         f"val {len(val)} bytes); raise data.max_bytes or data.val_fraction")
    return Corpus(bytes(train), bytes(val), str(root), (counts[0], counts[1]))


class WindowSampler:
    """Random windows of ``seq_len`` ids from one in-memory stream.

    Implements the batch-source interface every trainer uses: ``next_batch()``,
    ``state_dict()``, ``load_state_dict()``. Window starts depend only on (seed, draw index,
    data-parallel rank), so restoring the draw index resumes the exact sequence of batches.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int,
                 dp_rank: int = 0, dp_size: int = 1) -> None:
        if len(stream) < seq_len:
            raise ValueError(f"stream of {len(stream)} ids is shorter than seq_len={seq_len}")
        self.stream = torch.from_numpy(stream.astype(np.int64))
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.draws = 0  # micro-batches handed out so far (per rank)

    def next_batch(self) -> torch.Tensor:
        """(batch_size, seq_len) ids for the next micro-batch of this data-parallel rank.

        Each draw defines a *global* micro-batch of batch_size * dp_size windows and this rank
        takes its slice, so the global batch does not depend on the data-parallel layout (a
        DP=2 run sees exactly what a DP=1 run with twice the micro-batch sees).
        """
        rng = np.random.default_rng([self.seed, self.draws])
        self.draws += 1
        starts = rng.integers(0, len(self.stream) - self.seq_len + 1,
                              size=self.batch_size * self.dp_size)
        starts = starts[self.dp_rank * self.batch_size:(self.dp_rank + 1) * self.batch_size]
        idx = torch.from_numpy(starts)[:, None] + torch.arange(self.seq_len)[None, :]
        return self.stream[idx]

    def state_dict(self) -> Dict[str, int]:
        return {"draws": self.draws}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.draws = int(state["draws"])


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
    shards made with the same tokenizer file for ``sentencepiece``)."""
    from data_prep.shards import ManifestError, ShardError, sha256_file
    from pretrain.config import ConfigError
    from pretrain.loader import open_dataset

    out = []
    for i, path in enumerate(cfg.data.datasets):
        key = f"data.datasets[{i}]"
        try:
            ds = open_dataset(path)
        except (ManifestError, ShardError) as err:
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
    from pretrain.loader import ShardLoader, read_val_text

    d = cfg.data
    datasets = open_datasets(cfg, vocab)
    weights = list(d.weights) or [1.0] * len(datasets)
    loader = ShardLoader(datasets, weights, cfg.model.seq_len, micro_batch_size, cfg.train.seed,
                         vocab.eos_id, vocab.pad_id, vocab.vocab_size, dp_rank, dp_size, d.lanes,
                         d.num_workers, d.skip_bad_shards)
    val = read_val_text(datasets, weights, d.val_bytes, vocab)
    return TrainData(loader, val, loader.bytes_per_unit, loader.describe())
