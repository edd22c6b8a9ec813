"""Finding real documents on this machine: Python's standard library source, or any directory.

Used by the quick start (which streams bytes straight from these files) and by data
preparation. Files are taken in sorted order so a run is reproducible on every machine with
the same Python.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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


def id_bytes(doc_id: str) -> bytes:
    """The bytes of a document id: UTF-8, with the undecodable bytes of a file name (which
    ``os.walk`` gives as lone surrogates, ``surrogateescape``) as they were, and any other lone
    surrogate (from a JSON id such as ``"\\ud800"``) as its 3-byte form."""
    try:
        return doc_id.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return doc_id.encode("utf-8", "surrogatepass")


def storable_id(doc_id: str) -> str:
    """``doc_id`` as valid UTF-8 text for a shard's metadata: unchanged when it is valid already,
    else with each byte that is not valid UTF-8 written as ``\\xNN`` (the split stays that of
    the original id: :func:`split_of` hashes :func:`id_bytes`)."""
    try:
        doc_id.encode("utf-8")
        return doc_id
    except UnicodeEncodeError:
        return id_bytes(doc_id).decode("utf-8", "backslashreplace")


def split_of(doc_id: str, val_fraction: float, test_fraction: float = 0.0) -> str:
    """Deterministic split of a document by a hash of its id: 'train', 'val' or 'test'."""
    h = int.from_bytes(hashlib.sha256(id_bytes(doc_id)).digest()[:8], "big")
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


# Directory entries collect_inputs does not take, by kind: what the warning calls them.
NOT_TAKEN = {
    "dir_link": "symbolic links to directories (not followed)",
    "dangling_link": "dangling symbolic links (missing target, or a loop)",
    "special": "entries that are not regular files (FIFOs, sockets, devices)",
}


def collect_inputs(inputs: Sequence[Path], include: Sequence[str] = (), exclude: Sequence[str] = (),
                   warn: Optional[Callable[[str], None]] = None) -> List[InputFile]:
    """Every input file, recursing into directories, filtered by globs, sorted by document id.

    ``include`` globs (any of them must match the relative path or the file name; none = all
    files) and ``exclude`` globs (matching the relative path, the file name or a parent directory
    name) apply to files found inside directories; files named explicitly are always taken.
    Document ids are paths relative to the input directory (a file's own name for a file input);
    with several inputs they are prefixed by the input's name (for ``.`` or ``..``, the name of
    the directory it resolves to). Symbolic links to regular files are followed (the id is the
    link's path); links to directories are not (so there are no loops), and they, dangling links
    and non-regular files are left out with one ``warn`` line per kind (count and an example;
    default: printed to stderr). A missing input, a duplicate document id, or one file reached
    through two inputs (``dir`` and ``dir/a.txt``, ``.`` and ``..``) is an error naming them.
    """
    found: Dict[str, InputFile] = {}
    reached: Dict[str, Tuple[int, str]] = {}  # real path of a file -> (input number, its id)
    not_taken: Dict[str, List[Any]] = {}  # kind -> [count, example]
    prefix_inputs = len(inputs) > 1
    for number, inp in enumerate(map(Path, inputs)):
        if inp.is_dir():
            name = input_name(inp)
            for full, rel, st, real in _walk(inp, include, exclude, not_taken):
                doc_id = f"{name}/{rel}" if prefix_inputs else rel
                _add(found, reached, inputs, number, full, doc_id, st, real)
        elif inp.is_file():
            _add(found, reached, inputs, number, inp, inp.name, inp.stat(), os.path.realpath(inp))
        else:
            raise FileNotFoundError(f"input not found: {inp}")
    _report_not_taken(not_taken, warn)
    return [found[k] for k in sorted(found)]


def input_name(inp: Path) -> str:
    """The name that prefixes an input directory's document ids: its own name, or for ``.``,
    ``..`` and the like the name of the directory it resolves to."""
    name = inp.name
    if name in ("", ".", ".."):
        name = inp.resolve().name or "root"
    return name


def _walk(root: Path, include: Sequence[str], exclude: Sequence[str], not_taken: Dict[str, List[Any]]
          ) -> Iterator[Tuple[Path, str, os.stat_result, str]]:
    """(path, posix path relative to ``root``, stat of the file or of a link's target, real path)
    of every regular file under ``root`` that the globs take; entries left out are counted in
    ``not_taken``."""
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: links to dirs not entered
        real_dir = os.path.realpath(dirpath)  # once per directory (a file's own links resolved below)
        # Excluded directory names are pruned here (their files would be excluded anyway).
        dirnames[:] = sorted(d for d in dirnames if not (exclude and any(
            fnmatch.fnmatchcase(d, pat) for pat in exclude)))
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                _note(not_taken, "dir_link", Path(dirpath) / d)
        for name in sorted(filenames):  # sorted: the warnings name the same example every time
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if include and not _matches(rel, include, False):
                continue
            if exclude and _matches(rel, exclude, True):
                continue
            try:
                st = full.lstat()
                real = os.path.join(real_dir, name)
                if stat.S_ISLNK(st.st_mode):
                    st, real = full.stat(), os.path.realpath(full)  # the target's
            except OSError:  # a dangling link, a link loop, or a file gone since the listing
                if full.is_symlink():
                    _note(not_taken, "dangling_link", full)
                continue
            if stat.S_ISREG(st.st_mode):
                yield full, rel, st, real
            else:
                _note(not_taken, "special", full)


def _note(not_taken: Dict[str, List[Any]], kind: str, path: Path) -> None:
    entry = not_taken.setdefault(kind, [0, path])
    entry[0] += 1


def _report_not_taken(not_taken: Dict[str, List[Any]], warn: Optional[Callable[[str], None]]) -> None:
    """One warning line per kind of entry left out of the inputs."""
    for kind, (count, example) in sorted(not_taken.items()):
        line = f"warning: left out {NOT_TAKEN[kind]}: {count} (e.g. {example})"
        if warn is not None:
            warn(line)
        else:
            print(line, file=sys.stderr)


def _add(found: Dict[str, InputFile], reached: Dict[str, Tuple[int, str]], inputs: Sequence[Path],
         number: int, path: Path, doc_id: str, st: os.stat_result, real: str) -> None:
    """Take one file (``real``: its path with every link resolved); the same file reached through
    two inputs, or two files with one id, is an error naming both."""
    if real in reached and reached[real][0] != number:
        first, first_id = reached[real]
        raise ValueError(f"inputs overlap: {path} is reached through input {str(inputs[number])!r} "
                         f"(argument {number + 1}) and input {str(inputs[first])!r} (argument "
                         f"{first + 1}, as {first_id!r}); give each file once")
    reached.setdefault(real, (number, doc_id))
    if doc_id in found:
        raise ValueError(f"duplicate document id {doc_id!r}: {found[doc_id].path} and {path} "
                         "(give the inputs distinct names)")
    found[doc_id] = InputFile(str(path), doc_id, file_kind(path.name), st.st_size, st.st_mtime_ns)


def output_overlap(inputs: Sequence[Path], output: Path) -> Optional[Path]:
    """The input directory that ``output`` is, or lies inside (after resolving links), if any:
    preparing there would read the output back as input on the next run."""
    out = Path(os.path.realpath(output))
    for inp in map(Path, inputs):
        if inp.is_dir():
            real = Path(os.path.realpath(inp))
            if out == real or real in out.parents:
                return inp
    return None
