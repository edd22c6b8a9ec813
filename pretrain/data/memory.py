"""In-memory training data (``data.source=stdlib`` / ``files``, the quick start).

Real files are read into memory, split into train/validation by a hash of their path, and each
split concatenated into one stream; batches are windows whose start offsets depend only on
(seed, step, micro-batch), so a resumed run sees exactly the batches the uninterrupted run would
have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

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
