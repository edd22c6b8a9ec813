"""Planning a preparation job: the deterministic list of pieces and each task's share.

Every task of a job (``python -m data_prep.bytes --tasks N --task I``) computes the same plan
from the file listing and the options alone (no file is read, so a file that is unreadable for
one run cannot change the plan; audio reads WAV headers for the reference sample rate): whole
files, large raw and JSONL files cut into byte ranges of
``piece_bytes`` (aligned to line starts by the reader), Parquet files cut into byte ranges that
own the row groups starting in them. Pieces are then balanced by bytes over the tasks (largest
first to the lightest task), so task I's share never depends on how other tasks fared.

``--split contiguous``: over the inputs concatenated in sorted id order, the last
(val_fraction + test_fraction) of the bytes are val, then test. Raw files are cut exactly at
those boundaries (hard edges); JSONL and Parquet ranges meet there at the next line / row-group
start; a file read whole (compressed, images, audio) goes by where it starts.
"""

from __future__ import annotations

import heapq
import wave
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

from data_prep.media import MediaSpec
from data_prep.readers import Piece
from data_prep.sources import InputFile


class PlanOptions(Protocol):
    """What planning reads of ``data_prep.bytes.PrepOptions`` (not imported: bytes imports us)."""

    val_fraction: float
    test_fraction: float
    split: str
    piece_bytes: int
    doc_bytes: Optional[int]


RANGED = ("raw", "jsonl", "parquet")  # kinds whose files can be cut into byte ranges


def split_boundaries(files: Sequence[InputFile], opts: PlanOptions) -> Dict[str, List[int]]:
    """``--split contiguous``: each file's id -> offsets in it where the split changes (val
    starts, test starts), over the concatenation of the files in sorted id order."""
    total = sum(max(f.size, 0) for f in files)
    val_at = round(total * (1 - opts.val_fraction - opts.test_fraction))
    test_at = round(total * (1 - opts.test_fraction))
    out: Dict[str, List[int]] = {}
    offset = 0
    for f in sorted(files, key=lambda f: f.doc_id):
        size = max(f.size, 0)
        out[f.doc_id] = [b - offset for b in (val_at, test_at) if offset < b < offset + size]
        offset += size
    return out


def _contiguous_split(pos: int, val_at: int, test_at: int) -> str:
    return "train" if pos < val_at else "val" if pos < test_at else "test"


def plan_pieces(files: Sequence[InputFile], opts: PlanOptions, media: Optional[MediaSpec] = None
                ) -> List[Piece]:
    """The job's pieces, in processing order (the order of ``files``)."""
    contiguous = opts.split == "contiguous"
    bounds = split_boundaries(files, opts) if contiguous else {}
    starts: Dict[str, int] = {}
    total = 0
    for f in sorted(files, key=lambda f: f.doc_id):
        starts[f.doc_id] = total
        total += max(f.size, 0)
    val_at = round(total * (1 - opts.val_fraction - opts.test_fraction))
    test_at = round(total * (1 - opts.test_fraction))
    pieces: List[Piece] = []
    for i, f in enumerate(files):
        kind = media.kind if media is not None else f.kind
        for start, end, lo, hi, cut in _ranges(f, kind, opts, bounds.get(f.doc_id, [])):
            split = _contiguous_split(starts[f.doc_id] + start, val_at, test_at) if contiguous else None
            pieces.append(Piece(len(pieces), i, f.path, f.doc_id, kind, f.size, start, end, lo, hi,
                                split, cut))
    return pieces


def _ranges(f: InputFile, kind: str, opts: PlanOptions, bounds: List[int]
            ) -> List[Tuple[int, int, int, int, bool]]:
    """(start, end, lo, hi, cut) of each piece of one file (see :class:`Piece`)."""
    size = max(f.size, 0)
    if kind not in RANGED or size == 0:
        return [(0, size, 0, size, False)]
    step = opts.piece_bytes
    if kind == "raw":
        if opts.doc_bytes is None:  # one document per range between hard edges
            step = size
        else:  # pieces much longer than a document, so few documents end at a piece edge
            step = max(step, 4 * opts.doc_bytes)
    hard = [0, size] + (bounds if kind == "raw" else [])
    edges = sorted(set(hard) | set(range(0, size, step)) | set(bounds))
    cut = kind == "raw" and (len(edges) > 2 or (opts.doc_bytes is not None and size > opts.doc_bytes))
    out = []
    for a, b in zip(edges, edges[1:]):
        lo = max(h for h in hard if h <= a)
        hi = min(h for h in hard if h >= b)
        out.append((a, b, lo, hi, cut))
    return out


def share(pieces: Sequence[Piece], tasks: int) -> List[List[Piece]]:
    """Pieces per task, balanced by bytes: largest first to the task with the fewest bytes so far
    (ties to the lower task), each task's pieces in plan order."""
    heap = [(0, t) for t in range(tasks)]
    out: List[List[Piece]] = [[] for _ in range(tasks)]
    for p in sorted(pieces, key=lambda p: (-(p.end - p.start), p.index)):
        load, t = heapq.heappop(heap)
        out[t].append(p)
        heapq.heappush(heap, (load + max(p.end - p.start, 1), t))
    return [sorted(o, key=lambda p: p.index) for o in out]


def reference_sample_rate(files: Sequence[InputFile]) -> Optional[int]:
    """The sample rate of the first readable WAV file in id order: every task and worker checks
    audio against this one rate (None: no file has a readable header)."""
    for f in sorted(files, key=lambda f: f.doc_id):
        try:
            with wave.open(f.path, "rb") as wf:
                return int(wf.getframerate())
        except (wave.Error, EOFError, OSError, ValueError):
            continue
    return None
