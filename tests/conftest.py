"""Shared fixtures: tiny model configs, real text from the stdlib, a real SentencePiece model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# scripts/test.sh runs two xdist workers on the CI machine's two cores: each worker, and every
# process a test starts without an OMP_NUM_THREADS of its own, gets one OpenMP thread. With one per
# core, a worker's parallel regions wait for a thread the other worker keeps off its core:
# tests/test_init.py's 150 training steps took 40 s with 2 threads and 22 s with 1 beside one busy
# process (12 s alone), and 365 s in a suite run with a third process busy.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from data_prep.sources import stdlib_dir  # noqa: E402
from pretrain.config import ModelConfig, StackConfig  # noqa: E402


def tiny_model_config(arch: str = "megabyte", **kw) -> ModelConfig:
    """A model small enough for exhaustive checks (P=4 so several patches fit in 37 bytes)."""
    # init="paper": full-size random weights on every path (the default model.init shrinks the
    # global->local term, which would weaken structural checks such as cached-vs-uncached logits).
    base = dict(arch=arch, seq_len=64, patch_size=4, global_model=StackConfig(32, 2, 2),
                local_model=StackConfig(16, 2, 2), dropout=0.0, init_std=0.2, init="paper")
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="session")
def real_text() -> bytes:
    """About 200 KB of real Python source with non-ASCII bytes in it."""
    parts = [(stdlib_dir() / name).read_bytes() for name in
             ("textwrap.py", "argparse.py", "codecs.py", "html/entities.py")]
    return b"".join(parts)


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory, real_text) -> Path:
    """A real SentencePiece BPE model trained on stdlib text (byte_fallback, identity norm)."""
    from data_prep.tokenizer import train_sentencepiece

    prefix = tmp_path_factory.mktemp("sp") / "tok"
    train_sentencepiece([real_text], prefix, vocab_size=400, model_type="bpe")
    return Path(f"{prefix}.model")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def byte_dataset(tmp_path_factory, real_text) -> Path:
    """A small real byte dataset (``data_prep.bytes``) for configs that train on shards."""
    from data_prep.bytes import PrepOptions, prepare

    src = tmp_path_factory.mktemp("bytes_src")
    for i in range(8):
        (src / f"doc{i}.txt").write_bytes(real_text[i * 20_000:(i + 1) * 20_000])
    out = tmp_path_factory.mktemp("bytes_ds")
    prepare([src], out, PrepOptions(val_fraction=0.3), progress=False)
    return out
