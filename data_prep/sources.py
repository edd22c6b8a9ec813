"""Finding real documents on this machine: Python's standard library source, or any directory.

Used by the quick start (which streams bytes straight from these files) and by data
preparation. Files are taken in sorted order so a run is reproducible on every machine with
the same Python.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path
from typing import Iterator, List, Optional, Tuple


def stdlib_dir() -> Path:
    """The standard library directory of the running Python (present on every machine)."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(root: Path, pattern: str = "*", exclude_dirs: Tuple[str, ...] = ()) -> List[Path]:
    """Regular files under ``root`` matching ``pattern``, sorted, skipping ``exclude_dirs`` names."""
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    out = []
    for path in root.rglob(pattern):
        rel_parts = path.relative_to(root).parts[:-1]
        if any(part in exclude_dirs for part in rel_parts):
            continue
        if path.is_file() and not path.is_symlink():
            out.append(path)
    return sorted(out)


def stdlib_files() -> List[Path]:
    """Every ``.py`` file of the standard library, without installed third-party packages."""
    return list_files(stdlib_dir(), "*.py", exclude_dirs=("site-packages", "dist-packages",
                                                          "__pycache__"))


def split_of(doc_id: str, val_fraction: float, test_fraction: float = 0.0) -> str:
    """Deterministic split of a document by a hash of its id: 'train', 'val' or 'test'."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    u = h / 2**64
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def read_documents(root: Path, files: List[Path], max_bytes: Optional[int] = None
                   ) -> Iterator[Tuple[str, bytes]]:
    """(document id, bytes) for ``files`` in order, stopping once ``max_bytes`` were read.

    An unreadable file is an error naming the file, never a silent skip.
    """
    total = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise OSError(f"cannot read {path}: {err.strerror or err}") from None
        yield str(path.relative_to(root)), data
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            return
