"""Single-process checkpoints: one directory per step, an atomic ``latest`` pointer, keep-last-k.

A checkpoint directory is written under a temporary name and renamed into place, and the
``latest`` pointer is replaced atomically afterwards, so a reader never sees a half-written
checkpoint or a pointer to one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from pretrain.config import atomic_write_text

LATEST = "latest"


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save(ckpt_dir: Path, step: int, state: Dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` as ``step_{step:08d}/state.pt``, point ``latest`` at it, prune old ones."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_dir / LATEST, name + "\n")
    kept = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in kept[:-keep_last]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(ckpt_dir: Path) -> Optional[Path]:
    """The checkpoint directory ``latest`` points at, or None. A dangling pointer is an error."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    target = ckpt_dir / pointer.read_text().strip()
    if not (target / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} points at {target}, which has no state.pt")
    return target


def load(path: Path) -> Dict[str, Any]:
    """Load a checkpoint directory (or its ``state.pt``) on the CPU."""
    path = Path(path)
    file = path / "state.pt" if path.is_dir() else path
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise RuntimeError(f"cannot load checkpoint {file}: {err}") from None
