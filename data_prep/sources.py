"""Finding real documents on this machine: Python's standard library source, or any directory.

Used by the quick start (which streams bytes straight from these files) and by data
preparation. Files are taken in sorted order so a run is reproducible on every machine with
the same Python.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

STDLIB_EXCLUDE = ("site-packages", "dist-packages", "__pycache__")


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
    return list_files(stdlib_dir(), "*.py", exclude_dirs=STDLIB_EXCLUDE)


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


# --------------------------------------------------------------------------------------
# Inputs of data preparation: files and directories with include/exclude globs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is, its document id, how to read it, and its size and mtime."""

    path: str
    doc_id: str
    kind: str  # how it is read: see file_kind
    size: int
    mtime_ns: int


def file_kind(name: str) -> str:
    """How a file is read, by its extension: 'jsonl', 'jsonl.gz', 'jsonl.zst' (one document per
    line), 'parquet' (one per row), 'gz' / 'zst' (decompressed bytes), else 'raw' (the file's bytes:
    text, code, images, audio, anything)."""
    low = name.lower()
    for ext in ("jsonl.gz", "jsonl.zst", "jsonl", "parquet", "gz", "zst"):
        if low.endswith("." + ext):
            return ext
    return "raw"


def _matches(rel: str, patterns: Sequence[str], dirs_too: bool) -> bool:
    """``rel`` (posix relative path) matches a glob by its whole path, its name, or (``dirs_too``)
    the name of one of its parent directories."""
    parts = rel.split("/")
    for pat in patterns:
        if fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(parts[-1], pat):
            return True
        if dirs_too and any(fnmatch.fnmatchcase(p, pat) for p in parts[:-1]):
            return True
    return False


def collect_inputs(inputs: Sequence[Path], include: Sequence[str] = (), exclude: Sequence[str] = ()
                   ) -> List[InputFile]:
    """Every input file, recursing into directories, filtered by globs, sorted by document id.

    ``include`` globs (any of them must match the relative path or the file name; none = all
    files) and ``exclude`` globs (matching the relative path, the file name or a parent directory
    name) apply to files found inside directories; files named explicitly are always taken.
    Document ids are paths relative to the input directory (a file's own name for a file input);
    with several inputs they are prefixed by the input's name. Symbolic links are not followed.
    A missing input or a duplicate document id is an error naming it.
    """
    found: dict = {}
    prefix_inputs = len(inputs) > 1
    for inp in inputs:
        inp = Path(inp)
        if inp.is_dir():
            for dirpath, dirnames, filenames in os.walk(inp):
                # Excluded directory names are pruned here (their files would be excluded anyway).
                dirnames[:] = sorted(d for d in dirnames if not (exclude and any(
                    fnmatch.fnmatchcase(d, pat) for pat in exclude)))
                for name in filenames:
                    full = Path(dirpath) / name
                    rel = full.relative_to(inp).as_posix()
                    if include and not _matches(rel, include, False):
                        continue
                    if exclude and _matches(rel, exclude, True):
                        continue
                    if full.is_symlink() or not full.is_file():
                        continue
                    _add(found, full, f"{inp.name}/{rel}" if prefix_inputs else rel)
        elif inp.is_file():
            _add(found, inp, inp.name)
        else:
            raise FileNotFoundError(f"input not found: {inp}")
    return [found[k] for k in sorted(found)]


def _add(found: dict, path: Path, doc_id: str) -> None:
    if doc_id in found:
        raise ValueError(f"duplicate document id {doc_id!r}: {found[doc_id].path} and {path} "
                         "(give the inputs distinct names)")
    try:
        st = path.stat()
    except OSError:  # vanished between listing and stat: reported (with its error) when read
        found[doc_id] = InputFile(str(path), doc_id, file_kind(path.name), -1, 0)
        return
    found[doc_id] = InputFile(str(path), doc_id, file_kind(path.name), st.st_size, st.st_mtime_ns)
