"""Single-process checkpoints: one directory per step, an atomic ``latest`` pointer, keep-last-k.

A checkpoint directory is written under a temporary name and renamed into place, and the
``latest`` pointer is replaced atomically afterwards, so a reader never sees a half-written
checkpoint or a pointer to one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from data_prep.atomic import atomic_write_text

LATEST = "latest"


class CheckpointError(ValueError):
    """A checkpoint file or ``latest`` pointer that cannot be used (one line naming the file)."""


def save(ckpt_dir: Path, step: int, state: Dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` as ``step_{step:08d}/state.pt``, point ``latest`` at it, prune old ones."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = step_name(step)
    final = ckpt_dir / name
    tmp = ckpt_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    point_latest(ckpt_dir, name)
    prune(ckpt_dir, keep_last, name)
    return final


def step_name(step: int) -> str:
    """The directory name of the checkpoint taken after update ``step``."""
    return f"step_{step:08d}"


def point_latest(ckpt_dir: Path, name: str) -> None:
    """Atomically make ``latest`` name the checkpoint directory ``name``."""
    atomic_write_text(ckpt_dir / LATEST, name + "\n")


def prune(ckpt_dir: Path, keep_last: int, current: str) -> None:
    """Remove all but the newest ``keep_last`` checkpoint directories (never ``current``)."""
    kept = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in kept[:-keep_last]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def latest(ckpt_dir: Path) -> Optional[Path]:
    """The checkpoint directory ``latest`` points at, or None. An empty, unreadable or dangling
    pointer is a :class:`CheckpointError`."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read checkpoint pointer {pointer}: {err}") from None
    if not name:
        raise CheckpointError(f"checkpoint pointer {pointer} is empty (it should name a step_* "
                              "directory); fix or delete it")
    target = ckpt_dir / name
    if not (target / "state.pt").is_file():
        raise CheckpointError(f"checkpoint pointer {pointer} names {target}, which has no "
                              "state.pt; point it at an existing checkpoint or delete it")
    return target


def pointed(ckpt_dir: Path) -> Optional[Path]:
    """The directory ``latest`` names (single-process or distributed checkpoint), or None."""
    pointer = ckpt_dir / LATEST
    return ckpt_dir / pointer.read_text().strip() if pointer.is_file() else None


def rank_file_count(ckpt: Path) -> int:
    """How many processes wrote a checkpoint of the distributed engine (its ``rank_XXXXX.pt``
    files); 0 for a single-process checkpoint (``state.pt``) or a missing directory."""
    return sum(1 for _ in Path(ckpt).glob("rank_*.pt"))


def resume_layout_error(ckpt: Path, writers: int, world: int) -> str:
    """Why a checkpoint written by ``writers`` processes (0: one plain process) cannot resume
    in a ``world``-process run, and what to do instead."""
    by = f"{writers} processes" if writers else "a single-process run (state.pt)"
    return (f"checkpoint {ckpt} was written by {by}; this run has {world}: resume with the same "
            "number of processes and tensor_parallel, or export it (python -m pretrain.export) "
            "and start a new run with train.init_from=...")


def load(path: Path) -> Dict[str, Any]:
    """Load a checkpoint directory (or its ``state.pt``) on the CPU; a file that cannot be read
    or is not a checkpoint (truncated, garbage) is a :class:`CheckpointError` naming it."""
    path = Path(path)
    file = path / "state.pt" if path.is_dir() else path
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling garbage can raise almost anything; none is recoverable
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise CheckpointError(f"cannot load checkpoint {file}: {first} (truncated or not a "
                              "checkpoint; point checkpoints/latest at an earlier one)") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{file} is not a training checkpoint (no {', '.join(missing)})")
    return state


CHECKPOINT_KEYS = ("model", "optimizer", "step", "bytes_seen", "config")
"""What every single-process ``state.pt`` holds (see ``Trainer.state_dict``)."""
