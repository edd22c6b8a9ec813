"""In-memory training data for single-process runs: a byte (or token) stream and random windows.

The quick start reads real files (Python's standard library source by default), splits
documents into train/validation by a hash of their path, and concatenates each split into one
stream. Batches are windows whose start offsets depend only on (seed, step, micro-batch), so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from data_prep.sources import list_files, read_documents, split_of, stdlib_dir, stdlib_files
from pretrain.config import DataConfig


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
    """Random windows of ``seq_len`` ids from one stream, deterministic in (seed, step, micro)."""

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        if len(stream) < seq_len:
            raise ValueError(f"stream of {len(stream)} ids is shorter than seq_len={seq_len}")
        self.stream = torch.from_numpy(stream.astype(np.int64))
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed

    def batch(self, step: int, micro: int = 0, rank: int = 0) -> torch.Tensor:
        """(batch_size, seq_len) ids for this step / micro-batch / data-parallel rank."""
        rng = np.random.default_rng([self.seed, step, micro, rank])
        starts = rng.integers(0, len(self.stream) - self.seq_len + 1, size=self.batch_size)
        idx = torch.from_numpy(starts)[:, None] + torch.arange(self.seq_len)[None, :]
        return self.stream[idx]
