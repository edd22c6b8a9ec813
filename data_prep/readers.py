"""Input formats of data preparation, streamed in constant memory.

One interface: :func:`read_piece` takes a :class:`Piece` (a byte range of one input file, planned
by ``data_prep.bytes``) and yields :class:`Doc` records (a document, or a part of a large one) and
:class:`Bad` records (bad input: kind, where, message). Nothing holds a whole file in memory:

* raw files (anything that is not one of the kinds below): the range's bytes as one document,
  read in blocks of ``max_sample_bytes``, or cut into documents of about ``doc_bytes`` at line
  boundaries (a document ends after the last newline within ``doc_bytes``; a line longer than
  that is cut at ``doc_bytes``);
* ``.gz`` / ``.zst`` (not JSONL): decompressed as a stream, then as raw files (a whole file is one
  piece: compressed streams cannot be entered in the middle);
* ``.jsonl`` (byte ranges: a range owns the lines that start in it), ``.jsonl.gz``,
  ``.jsonl.zst``: one document per line, the ``text_field`` string as UTF-8;
* ``.parquet``: the ``text_field`` column (string or binary) read in batches; a range owns the
  row groups whose first byte lies in it;
* images and audio (``media``): one document per file, converted by ``data_prep.media``.

A document's id is the ``id_field`` value when one is given, else None for JSONL and Parquet (the
writer names it by a hash of its bytes, so its split does not depend on where it sits), the
file's id for a raw file, or ``<file id>@<offset>`` for a raw file cut into several documents.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Union

from data_prep.media import MediaError, MediaSpec, audio_to_bytes, image_to_bytes

SCAN_BYTES = 1 << 16  # block size when looking for a line start
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Piece:
    """A unit of work: the byte range [start, end) of one input file.

    Soft range edges are moved to the next line start (raw files cut with ``doc_bytes``, JSONL),
    but never past the hard edges ``lo`` / ``hi`` around the range (the file's ends, or a
    contiguous split's boundary), so neighbouring ranges meet exactly.
    """

    index: int  # position in the plan
    file_index: int
    path: str
    doc_id: str  # the file's document id
    kind: str  # see data_prep.sources.file_kind, or 'image' / 'audio'
    size: int  # the file's size when listed (-1: vanished)
    start: int
    end: int
    lo: int
    hi: int
    split: Optional[str] = None  # contiguous split: this range's split (None: by hash of the id)
    cut: bool = False  # raw: documents are named <file id>@<offset>

    @property
    def first(self) -> bool:
        """The piece that reports file-level problems (unreadable, changed, empty)."""
        return self.start == 0

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end >= self.size


@dataclass(frozen=True)
class ReadOptions:
    """What readers need from the preparation options."""

    text_field: str = "text"
    id_field: Optional[str] = None
    max_sample_bytes: int = 16 << 20
    doc_bytes: Optional[int] = None
    media: Optional[MediaSpec] = None


@dataclass
class Doc:
    """A document, or the part of a large one at ``offset`` of its ``size`` bytes."""

    doc_id: Optional[str]
    data: bytes
    offset: int = 0
    size: int = -1  # -1: len(data) (the whole document)

    @property
    def total(self) -> int:
        return len(self.data) if self.size < 0 else self.size


@dataclass
class Bad:
    """Bad input: its kind (see ``data_prep.bytes.BAD_KINDS``), where (file, file:line or
    file:row N) and what is wrong."""

    kind: str
    where: str
    message: str


@dataclass
class ReadStats:
    """Counts a reader keeps besides its records."""

    blank_lines: int = 0
    records: int = 0  # documents and problems found (a JSONL range with none is empty)
    sample_rate: Optional[int] = None


Record = Union[Doc, Bad]


def read_piece(piece: Piece, opts: ReadOptions, stats: ReadStats) -> Iterator[Record]:
    """Every document and bad-input report of ``piece``, streamed (see the module docstring)."""
    if piece.size == 0:
        yield Bad("empty", piece.path, "empty file")
        return
    if piece.size < 0:
        if piece.first:
            yield Bad("unreadable", piece.path, "vanished before it could be read")
        return
    readers = {"raw": _read_raw, "gz": _read_compressed, "zst": _read_compressed, "jsonl": _read_jsonl,
               "jsonl.gz": _read_jsonl, "jsonl.zst": _read_jsonl, "parquet": _read_parquet,
               "image": _read_media, "audio": _read_media}
    try:
        for rec in readers[piece.kind](piece, opts, stats):
            stats.records += 1
            yield rec
    except _Unreadable as err:
        if piece.first or err.mid_file:
            stats.records += 1
            yield Bad("unreadable", err.where or piece.path, f"cannot read: {err.message}")


class _Unreadable(Exception):
    """Reading stopped: ``where`` and ``message`` say why; ``mid_file``: after a good start."""

    def __init__(self, message: str, where: str = "", mid_file: bool = False) -> None:
        super().__init__(message)
        self.message, self.where, self.mid_file = message, where, mid_file


def _errtext(err: BaseException) -> str:
    return str(getattr(err, "strerror", None) or err or type(err).__name__)


def _open_checked(piece: Piece) -> Any:
    """Open the file, checking it still has the size it was listed with."""
    try:
        f = open(piece.path, "rb")
    except OSError as err:
        raise _Unreadable(_errtext(err)) from None
    size = os.fstat(f.fileno()).st_size
    if size != piece.size:
        f.close()
        raise _Unreadable(f"changed while being prepared ({piece.size} bytes when listed, {size} now)")
    return f


# --------------------------------------------------------------------------------------
# Raw and compressed raw files
# --------------------------------------------------------------------------------------


def line_start(f: Any, pos: int, lo: int, hi: int) -> int:
    """The first line start at or after ``pos`` within [lo, hi] (``hi`` when there is none):
    ``lo`` itself, or a position just after a newline."""
    if pos <= lo:
        return lo
    if pos >= hi:
        return hi
    f.seek(pos - 1)
    at = pos - 1
    while at < hi:
        block = f.read(min(SCAN_BYTES, hi - at))
        if not block:
            return hi
        i = block.find(b"\n")
        if i >= 0:
            return min(at + i + 1, hi)
        at += len(block)
    return hi


def _read_raw(piece: Piece, opts: ReadOptions, stats: ReadStats) -> Iterator[Record]:
    with _open_checked(piece) as f:
        if opts.doc_bytes is None:
            doc_id = f"{piece.doc_id}@{piece.start}" if piece.cut else piece.doc_id
            f.seek(piece.start)
            n = piece.end - piece.start  # read in whole chunks: each block is a part as it is
            yield from _stream_document(_blocks(f, n, piece.path, opts.max_sample_bytes), doc_id, n,
                                        opts.max_sample_bytes)
            return
        start = line_start(f, piece.start, piece.lo, piece.hi)
        end = line_start(f, piece.end, piece.lo, piece.hi)
        f.seek(start)
        yield from cut_documents(_blocks(f, end - start, piece.path), opts.doc_bytes, start,
                                 piece.doc_id, piece.cut)


def _blocks(f: Any, n: int, path: str, block: int = 1 << 20) -> Iterator[bytes]:
    """``n`` bytes of ``f`` in blocks; a short read is unreadable input."""
    left = n
    while left > 0:
        try:
            data = f.read(min(block, left))
        except OSError as err:
            raise _Unreadable(_errtext(err), path, mid_file=left < n) from None
        if not data:
            raise _Unreadable(f"changed while being read (expected {n} bytes, got {n - left})", path,
                              mid_file=left < n)
        left -= len(data)
        yield data


def _stream_document(blocks: Iterator[bytes], doc_id: str, size: int, part_bytes: int) -> Iterator[Doc]:
    """One document of ``size`` bytes as parts of ``part_bytes`` (the writer's chunk size)."""
    buf = bytearray()
    offset = 0
    for data in blocks:
        if not buf and len(data) == part_bytes:  # no copy
            yield Doc(doc_id, data, offset, size)
            offset += part_bytes
            continue
        buf += data
        while len(buf) >= part_bytes:
            yield Doc(doc_id, bytes(buf[:part_bytes]), offset, size)
            offset += part_bytes
            del buf[:part_bytes]
    if buf or size == 0:
        yield Doc(doc_id, bytes(buf), offset, size)


def cut_documents(blocks: Iterator[bytes], doc_bytes: int, base: int, file_id: str,
                  by_offset: bool) -> Iterator[Doc]:
    """Cut a stream into documents of at most ``doc_bytes``, each ending after its last newline
    (or at ``doc_bytes`` when it has none), named ``<file id>@<offset>`` (offsets from ``base``).
    Unless ``by_offset``, a stream that turns out to be one document keeps the file's id."""
    buf = bytearray()
    pos = base
    pending: Optional[Doc] = None  # held back until we know whether the stream is one document
    for data in blocks:
        buf += data
        while len(buf) > doc_bytes:
            i = buf.rfind(b"\n", 0, doc_bytes)
            n = i + 1 if i >= 0 else doc_bytes
            if pending is not None:
                yield pending
            pending = Doc(f"{file_id}@{pos}", bytes(buf[:n]))
            pos += n
            del buf[:n]
    if pending is None and not by_offset:  # never cut: one document with the file's id
        if buf:
            yield Doc(file_id, bytes(buf))
        return
    if pending is not None:
        yield pending
    if buf:
        yield Doc(f"{file_id}@{pos}", bytes(buf))


def _decompressed(f: Any, kind: str) -> Any:
    """A reader of the decompressed bytes of ``f`` (gzip, or zstd after :func:`check_zstd_frames`)."""
    if kind.endswith("zst"):
        import zstandard

        check_zstd_frames(f)
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True))
    return gzip.GzipFile(fileobj=f, mode="rb")


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # skippable frames: 0x184D2A50 .. 0x184D2A5F


def check_zstd_frames(f: Any) -> None:
    """Raise :class:`_Unreadable` unless ``f`` (an open ``.zst`` file) is a sequence of whole
    zstd frames. zstandard's stream reader ends quietly where a cut-off file ends (a truncated
    download would lose its end without a word; gzip raises), so this walks the frame and block
    headers (RFC 8878: a 3-byte read per block of up to 128 KiB, nothing decompressed)."""
    fd = f.fileno()
    size = os.fstat(fd).st_size
    pos = 0
    while pos < size:
        head = os.pread(fd, 8, pos)
        magic = int.from_bytes(head[:4], "little")
        if len(head) >= 4 and magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
            end = pos + 8 + int.from_bytes(head[4:8], "little") if len(head) == 8 else size + 1
        elif len(head) >= 4 and magic != _ZSTD_MAGIC:
            raise _Unreadable(f"not zstd data at byte {pos} (no frame starts there)")
        else:
            end = _zstd_frame_end(fd, pos, size)
        if end > size:
            raise _Unreadable(f"compressed file ended inside a zstd frame (the frame at byte {pos} "
                              f"needs more than the file's {size} bytes: truncated?)")
        pos = end


def _zstd_frame_end(fd: int, pos: int, size: int) -> int:
    """Where the zstd frame starting at ``pos`` ends (past ``size``: it is cut off)."""
    fhd = os.pread(fd, 1, pos + 4)
    if not fhd:
        return size + 1
    d = fhd[0]
    single, checksum = d >> 5 & 1, d >> 2 & 1
    pos += 5 + (1 - single) + (0, 1, 2, 4)[d & 3] + (single, 2, 4, 8)[d >> 6]
    while True:  # blocks: a 3-byte header (last flag, type, size), then the block's content
        head = os.pread(fd, 3, pos)
        if len(head) < 3:
            return size + 1
        h = int.from_bytes(head, "little")
        pos += 3 + (1 if h >> 1 & 3 == 1 else h >> 3)  # an RLE block stores one byte
        if h & 1 or pos > size:
            return pos + 4 * checksum


try:  # a corrupt .zst raises zstandard's own error type
    from zstandard import ZstdError as _ZstdError
except ImportError:  # pragma: no cover - zstandard is in requirements.txt
    _ZstdError = OSError  # type: ignore[misc,assignment]

_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, ValueError, _ZstdError)


def _read_stream(f: Any, path: str, block: int = 1 << 20) -> Iterator[bytes]:
    n = 0
    while True:
        try:
            data = f.read(block)
        except _DECOMPRESS_ERRORS as err:
            raise _Unreadable(f"{_errtext(err)} (after {n} decompressed bytes)", path,
                              mid_file=n > 0) from None
        if not data:
            return
        n += len(data)
        yield data


def _read_compressed(piece: Piece, opts: ReadOptions, stats: ReadStats) -> Iterator[Record]:
    """A compressed raw file: its decompressed bytes as one document (two passes: the size first,
    so chunks are numbered without holding the document), or cut with ``doc_bytes``."""
    if opts.doc_bytes is not None:
        with _open_checked(piece) as f, _decompressed(f, piece.kind) as z:
            yield from _nonempty(cut_documents(_read_stream(z, piece.path), opts.doc_bytes, 0,
                                               piece.doc_id, False), piece)
        return
    with _open_checked(piece) as f, _decompressed(f, piece.kind) as z:
        size = sum(len(b) for b in _read_stream(z, piece.path))
    if size == 0:
        yield Bad("empty", piece.path, "empty after decompression")
        return
    with _open_checked(piece) as f, _decompressed(f, piece.kind) as z:
        yield from _stream_document(_read_stream(z, piece.path), piece.doc_id, size, opts.max_sample_bytes)


def _nonempty(docs: Iterator[Doc], piece: Piece) -> Iterator[Record]:
    any_doc = False
    for d in docs:
        any_doc = True
        yield d
    if not any_doc:
        yield Bad("empty", piece.path, "empty after decompression")


# --------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------


def parse_json_line(line: bytes, opts: ReadOptions) -> Union[Doc, Bad, None]:
    """A JSONL line -> Doc (id None unless ``id_field``), Bad (``where`` left empty) or None for a
    blank line."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except UnicodeDecodeError as err:
        return Bad("invalid_utf8", "", f"invalid UTF-8 at byte {err.start} of the line")
    except ValueError as err:
        return Bad("malformed_json", "", f"malformed JSON: {err}")
    if not isinstance(obj, dict):
        return Bad("malformed_json", "", f"not a JSON object but {type(obj).__name__}")
    doc_id = obj.get(opts.id_field) if opts.id_field else None
    return text_document(obj.get(opts.text_field, _MISSING), doc_id, opts)


_MISSING = object()


def text_document(text: Any, doc_id: Any, opts: ReadOptions) -> Union[Doc, Bad]:
    """The document of one record's text value (str, or bytes from a binary Parquet column)."""
    name = opts.text_field
    if text is _MISSING or text is None:
        return Bad("missing_field", "", f"no field {name!r}")
    if isinstance(text, str):
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError as err:
            return Bad("invalid_utf8", "", f"field {name!r} is not valid UTF-8 (lone surrogate "
                                           f"{text[err.start]!r} at character {err.start})")
    elif isinstance(text, (bytes, bytearray)):
        payload = bytes(text)
    else:
        return Bad("missing_field", "", f"field {name!r} is {type(text).__name__}, not a string")
    if opts.id_field is not None and doc_id is None:
        return Bad("missing_field", "", f"no id field {opts.id_field!r}")
    if not payload:
        return Bad("empty", "", f"empty document (field {name!r} is empty)")
    return Doc(None if doc_id is None else str(doc_id), payload)


def _read_jsonl(piece: Piece, opts: ReadOptions, stats: ReadStats) -> Iterator[Record]:
    with _open_checked(piece) as f:
        if piece.kind == "jsonl":
            start = line_start(f, piece.start, 0, piece.size)
            end = line_start(f, piece.end, 0, piece.size)
            f.seek(start)
            lines: Any = _range_lines(f, end - start, piece.path)
            first_line = _LineBase(piece.path, start)
        else:
            lines = _stream_lines(_decompressed(f, piece.kind), piece.path)
            first_line = _LineBase(piece.path, 0)
        n = 0
        for n, line in enumerate(lines, 1):
            rec = parse_json_line(line, opts)
            if rec is None:
                stats.blank_lines += 1
            elif isinstance(rec, Bad):
                yield Bad(rec.kind, f"{piece.path}:{first_line.get() + n}", rec.message)
            else:
                yield rec
        if piece.whole and stats.records == 0:
            yield Bad("empty", piece.path, "no documents (only blank lines)")


class _LineBase:
    """The number of lines before ``start``, counted only when an error needs it."""

    def __init__(self, path: str, start: int) -> None:
        self.path, self.start, self.value = path, start, None if start else 0

    def get(self) -> int:
        if self.value is None:
            with open(self.path, "rb") as f:
                self.value = sum(b.count(b"\n") for b in _blocks(f, self.start, self.path))
        return self.value


def _range_lines(f: Any, n: int, path: str) -> Iterator[bytes]:
    left = n
    while left > 0:
        try:
            line = f.readline()
        except OSError as err:
            raise _Unreadable(_errtext(err), path, mid_file=True) from None
        if not line:
            return
        left -= len(line)
        yield line


def _stream_lines(z: Any, path: str) -> Iterator[bytes]:
    n = 0
    with z:
        while True:
            try:
                line = z.readline()
            except _DECOMPRESS_ERRORS as err:
                raise _Unreadable(_errtext(err), f"{path}:{n + 1}", mid_file=n > 0) from None
            if not line:
                return
            n += 1
            yield line


# --------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------


def _row_group_start(rg: Any) -> int:
    col = rg.column(0)
    if col.has_dictionary_page and col.dictionary_page_offset:
        return int(col.dictionary_page_offset)
    return int(col.data_page_offset)


def _read_parquet(piece: Piece, opts: ReadOptions, stats: ReadStats) -> Iterator[Record]:
    import pyarrow.parquet as pq

    with _open_checked(piece) as f:
        try:
            pf = pq.ParquetFile(f)
            meta = pf.metadata
            names = pf.schema_arrow.names
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise _Unreadable(f"not a readable Parquet file: {_errtext(err)}") from None
        missing = [c for c in (opts.text_field, opts.id_field) if c is not None and c not in names]
        if missing:
            if piece.first:
                yield Bad("missing_field", piece.path,
                          f"no column {missing[0]!r} (columns: {', '.join(names)})")
            return
        columns = [opts.text_field] + ([opts.id_field] if opts.id_field else [])
        row = 0
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            if piece.start <= _row_group_start(rg) < piece.end:
                yield from _parquet_rows(pf, i, columns, opts, piece.path, row)
            row += rg.num_rows


def _parquet_rows(pf: Any, group: int, columns: List[str], opts: ReadOptions, path: str, row: int
                  ) -> Iterator[Record]:
    try:
        batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns)
        for batch in batches:
            texts = batch.column(0).to_pylist()
            ids: List[Any] = batch.column(1).to_pylist() if opts.id_field else [None] * len(texts)
            for text, doc_id in zip(texts, ids):
                row += 1
                rec = text_document(text, doc_id, opts)
                yield rec if isinstance(rec, Doc) else Bad(rec.kind, f"{path}:row {row}", rec.message)
    except (OSError, ValueError) as err:
        raise _Unreadable(_errtext(err), f"{path}:row {row + 1}", mid_file=True) from None
    except Exception as err:  # pyarrow's own error types
        raise _Unreadable(f"{type(err).__name__}: {err}", f"{path}:row {row + 1}", mid_file=True) from None


# --------------------------------------------------------------------------------------
# Images and audio
# --------------------------------------------------------------------------------------


def _read_media(piece: Piece, opts: ReadOptions, stats: ReadStats) -> Iterator[Record]:
    media = opts.media
    assert media is not None
    with _open_checked(piece) as f:
        data = b"".join(_blocks(f, piece.size, piece.path))
    try:
        if media.kind == "image":
            payload = image_to_bytes(data, media)
        else:
            payload, stats.sample_rate = audio_to_bytes(data, media)
    except MediaError as err:
        yield Bad(f"bad_{media.kind}", piece.path, str(err))
        return
    yield Doc(piece.doc_id, payload)
