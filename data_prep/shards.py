"""The on-disk format shared by data preparation (writes) and the training loader (reads).

A prepared dataset is one directory::

    manifest.json          written last and atomically; names every shard with its sha256
    train-000000.tar ...   WebDataset shards (plain tar: stock ``tar`` and ``webdataset`` read them)
    val-000000.tar ...
    test-000000.tar ...

Each sample is one document, or one chunk of a document larger than ``max_sample_bytes``. It has
two members: ``<key>.bin`` (the document's bytes) or, in token datasets, ``<key>.ids`` (piece ids,
little-endian ``uint16``/``uint32``), plus ``<key>.json`` with ``doc`` (the document id), ``chunk``
and ``chunks`` (so a chunked document can be rebuilt), ``crc32`` of the payload and, for token
data, ``bytes`` (exact UTF-8 byte count of the chunk's text). Keys are ``<doc index:010d>_<chunk:05d>``
(no dots, as webdataset splits member names at the first dot). A document never spans two shards,
so every shard is self-contained and shards can be read in any order.

Shards are written to a hidden temporary file, fsynced and renamed (``os.replace``), so a shard
name either does not exist or holds a complete shard. The manifest is removed when a run starts
and written only after every shard is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple

from data_prep.atomic import atomic_write_bytes  # the project's one atomic writer; re-exported
from data_prep.remote import Location, RemoteError, is_remote, join, open_stream
from data_prep.sources import storable_id

FORMAT = "megabyte-shards"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
# ``train-000012.tar``; a prep job of several tasks (``--tasks``) names its shards by task too,
# ``train-t0003-000012.tar``, so tasks never collide (no dots: webdataset splits names at dots).
SHARD_RE = re.compile(r"^(?P<split>train|val|test)-(?:t(?P<task>\d{4,})-)?(?P<index>\d{6})\.tar$")
PAYLOAD_EXT = {"bytes": "bin", "tokens": "ids"}


class ShardError(RuntimeError):
    """A shard that cannot be read as written: corrupt, truncated or missing (message names it)."""


class ManifestError(ValueError):
    """A dataset directory without a usable manifest (message names the directory)."""


def shard_name(split: str, index: int, task: Optional[int] = None) -> str:
    """``{split}-{index:06d}.tar``, or ``{split}-t{task:04d}-{index:06d}.tar`` for one task of a job."""
    return f"{split}-{index:06d}.tar" if task is None else f"{split}-t{task:04d}-{index:06d}.tar"


def parse_shard_name(name: str) -> Optional[Tuple[str, Optional[int], int]]:
    """(split, task or None, index) of a shard name of ours; None for any other name."""
    m = SHARD_RE.match(name)
    if m is None:
        return None
    task = m.group("task")
    return m.group("split"), None if task is None else int(task), int(m.group("index"))


MAX_CHUNKS = 99_999


def sample_key(doc_index: int, chunk: int, chunks: int, crc: int) -> str:
    """``<doc index>_<chunk>_<chunks>_<crc32 hex>``: what the loader needs, without parsing JSON."""
    if chunks > MAX_CHUNKS:
        raise ValueError(f"a document of {chunks} chunks exceeds {MAX_CHUNKS}; raise --max-sample-bytes")
    return f"{doc_index:010d}_{chunk:05d}_{chunks:05d}_{crc:08x}"


def parse_key(key: str) -> Tuple[int, int, int]:
    """(chunk, chunks, crc32) from a sample key."""
    _, chunk, chunks, crc = key.split("_")
    return int(chunk), int(chunks), int(crc, 16)


def meta_bytes(meta: Dict[str, Any]) -> bytes:
    """Deterministic JSON for a sample's ``.json`` member, valid UTF-8: a document id that is not
    (a file name with undecodable bytes, a JSON id with a lone surrogate) is stored with those
    bytes written as ``\\xNN`` (:func:`~data_prep.sources.storable_id`)."""
    doc = meta.get("doc")
    if isinstance(doc, str) and storable_id(doc) is not doc:
        meta = {**meta, "doc": storable_id(doc)}
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(bufsize)
            if not block:
                return h.hexdigest()
            h.update(block)

def write_manifest(out_dir: Path, manifest: Dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    atomic_write_bytes(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return path


def read_manifest(directory: Location) -> Dict[str, Any]:
    """The manifest of a prepared dataset, checked for format, version and structure
    (:func:`check_manifest`: a malformed one is one :class:`ManifestError` naming the field, so
    no reader meets a KeyError). ``directory`` may be
    a local directory or a remote location (URL, ``pipe:``; see :mod:`data_prep.remote`)."""
    path = join(directory, MANIFEST)
    if not is_remote(directory) and not Path(directory).is_dir():
        raise ManifestError(f"{directory}: not a directory")
    try:
        with open_stream(path) as f:
            raw = f.read()
    except FileNotFoundError:
        raise ManifestError(f"{directory}: no {MANIFEST} (not a prepared dataset, or its preparation "
                            "did not finish; run python -m data_prep.bytes)") from None
    except RemoteError as err:
        raise ManifestError(f"{err} (no readable {MANIFEST}: not a prepared dataset?)") from None
    except OSError as err:
        raise ManifestError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ManifestError(f"{path}: version {manifest.get('version')} is not supported "
                            f"(this code reads version {VERSION})")
    return check_manifest(manifest, path)  # its structure too: a KeyError nowhere downstream


SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RECORD_COUNTS = ("samples", "docs", "bytes", "tokens", "file_bytes")
TOKEN_DTYPES = ("uint16", "uint32")




def _field_problem(rec: Dict[str, Any], key: str) -> Optional[str]:
    """What is wrong with field ``key`` of a shard record (None: well-formed)."""
    if key not in rec:
        return f"missing field {key!r}"
    value = rec[key]
    if key == "sha256":
        ok = isinstance(value, str) and SHA256_RE.match(value) is not None
        return None if ok else f"field 'sha256' is {value!r}, not 64 lowercase hex digits"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"field {key!r} is {value!r}, not a count (an integer >= 0)"
    return None


def shard_record_problem(rec: Any) -> Optional[str]:
    """What is wrong with one shard record of a manifest or a part (None: well-formed): a shard
    name of ours (a plain ``{split}-NNNNNN.tar`` name, never a path), its split, its counts and
    its sha256."""
    if not isinstance(rec, dict):
        return f"is {type(rec).__name__}, not an object"
    name = rec.get("name")
    if "name" not in rec:
        return "missing field 'name'"
    parsed = parse_shard_name(name) if isinstance(name, str) else None
    if parsed is None:
        return (f"field 'name' is {name!r}, not a shard name (split-NNNNNN.tar or "
                "split-tNNNN-NNNNNN.tar, no directories)")
    if "split" not in rec:
        return "missing field 'split'"
    if rec["split"] != parsed[0]:
        return f"field 'split' is {rec['split']!r} but the name says {parsed[0]!r}"
    for key in RECORD_COUNTS + ("sha256",):
        problem = _field_problem(rec, key)
        if problem:
            return problem
    return None


def shard_records_problem(records: Any, field: str = "shards") -> Optional[str]:
    """What is wrong with a list of shard records (None: a list of well-formed, distinct records)."""
    if not isinstance(records, list):
        return f"field {field!r} is {type(records).__name__}, not a list"
    seen = set()
    for i, rec in enumerate(records):
        problem = shard_record_problem(rec)
        named = isinstance(rec, dict) and isinstance(rec.get("name"), str) and parse_shard_name(rec["name"])
        label = f"{field}[{i}]" + (f" ({rec['name']})" if named else "")
        if problem:
            return f"{label}: {problem}"
        if rec["name"] in seen:
            return f"{label}: named twice"
        seen.add(rec["name"])
    return None


def manifest_problem(manifest: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the structure of a dataset manifest of this format and version:
    ``kind``, ``dtype`` of token data, ``fingerprint`` and every shard record (see
    :func:`shard_record_problem`). None when every reader can rely on it."""
    if "kind" not in manifest:
        return "missing field 'kind'"
    if manifest["kind"] not in PAYLOAD_EXT:
        return f"field 'kind' is {manifest['kind']!r}, not one of {', '.join(PAYLOAD_EXT)}"
    if manifest["kind"] == "tokens" and manifest.get("dtype") not in TOKEN_DTYPES:
        return (f"field 'dtype' is {manifest.get('dtype')!r}, not one of {', '.join(TOKEN_DTYPES)}"
                if "dtype" in manifest else "missing field 'dtype'")
    if not isinstance(manifest.get("fingerprint"), str):
        return ("missing field 'fingerprint'" if "fingerprint" not in manifest
                else f"field 'fingerprint' is {manifest['fingerprint']!r}, not a string")
    if "shards" not in manifest:
        return "missing field 'shards'"
    return shard_records_problem(manifest["shards"])


def check_manifest(manifest: Dict[str, Any], where: Location,
                   hint: str = "damaged manifest: prepare the dataset again") -> Dict[str, Any]:
    """``manifest`` if its structure is sound (one check for every reader), else
    :class:`ManifestError` naming ``where`` (the manifest's location) and the missing or bad
    field, then ``hint``."""
    problem = manifest_problem(manifest)
    if problem:
        raise ManifestError(f"{where}: {problem} ({hint})")
    return manifest




def finished_manifest(out_dir: Path, fingerprint: str, kind: str) -> Optional[Dict[str, Any]]:
    """The manifest in ``out_dir`` if it was made from the same inputs and options
    (``fingerprint``), holds ``kind`` shards, and every shard it names is present with its
    recorded size; else None (the output must be written again)."""
    if not (out_dir / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(out_dir)
    except ValueError:
        return None
    if manifest.get("fingerprint") != fingerprint or manifest.get("kind") != kind:
        return None
    for rec in manifest["shards"]:
        path = out_dir / rec["name"]
        if not path.is_file() or path.stat().st_size != rec["file_bytes"]:
            return None
    return manifest


def start_rewrite(out_dir: Path) -> None:
    """Before writing a dataset again: remove its manifest first (so the directory never names a
    missing or partial shard), then the temporary files an interrupted run left; shards stay
    until the new manifest is written and :func:`remove_stale` drops those it does not name."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    remove_stale(out_dir, keep=tuple(p.name for p in out_dir.iterdir()))


def shard_records(manifest: Dict[str, Any], split: str) -> List[Dict[str, Any]]:
    """The manifest's records of the shards of ``split``, in name order."""
    return [s for s in manifest["shards"] if s["split"] == split]


_ALL = object()


def remove_stale(out_dir: Path, keep: Tuple[str, ...] = (), task: Any = _ALL,
                 manifest_temps: bool = True) -> List[str]:
    """Delete leftover temporary files, and shard files of ours not named in ``keep``.

    ``task`` (an int, or None for shards named without a task) limits this to the shards and
    temporary shard files of one task of a job; ``manifest_temps=False`` leaves temporary
    manifest files alone (another process may be writing the same manifest at the same time).
    Files that vanish meanwhile are fine: two processes may clean up at once.
    """
    removed = []
    for path in Path(out_dir).iterdir():
        name = path.name
        is_tmp = name.startswith(".") and name.endswith(".tmp")
        parsed = parse_shard_name(name[1:].split(".tar.", 1)[0] + ".tar" if is_tmp else name)
        if task is not _ALL and (parsed is None or parsed[1] != task):
            continue
        ours_tmp = is_tmp and (parsed is not None or (manifest_temps and name.startswith(f".{MANIFEST}.")))
        if ours_tmp or (not is_tmp and parsed is not None and name not in keep):
            path.unlink(missing_ok=True)
            removed.append(name)
    return removed


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


class _HashingFile(io.RawIOBase):
    """A write-only file that also computes sha256 and the size of what passed through."""

    def __init__(self, f: Any) -> None:
        super().__init__()
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:  # type: ignore[override]
        self.f.write(b)
        self.sha.update(b)
        self.size += len(b)
        return len(b)


@dataclass
class ShardRecord:
    """What the manifest says about one shard."""

    name: str
    split: str
    samples: int = 0
    docs: int = 0
    bytes: int = 0
    tokens: int = 0
    file_bytes: int = 0
    sha256: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SplitWriter:
    """Writes one split's documents into ``{split}-{index:06d}.tar`` shards of about ``target_bytes``.

    A shard is closed only at a document boundary once it holds ``target_bytes`` of payload, so a
    document never spans shards. Uses webdataset's ``TarWriter`` with a fixed mtime, so the same
    documents always give byte-identical shards.
    """

    out_dir: Path
    split: str
    target_bytes: int
    kind: str = "bytes"
    first_index: int = 0
    task: Optional[int] = None  # a job's task: shards named by task (see shard_name)
    index_step: int = 1  # parallel writers of one task take interleaved indices
    records: List[ShardRecord] = field(default_factory=list)
    doc_index: int = 0

    def __post_init__(self) -> None:
        self.ext = PAYLOAD_EXT[self.kind]
        self._index = self.first_index
        self._tar: Any = None
        self._file: Any = None
        self._hashing: Optional[_HashingFile] = None
        self._tmp: Optional[Path] = None
        self._rec: Optional[ShardRecord] = None
        self._payload = 0

    def _open(self) -> None:
        import webdataset as wds

        name = shard_name(self.split, self._index, self.task)
        self._tmp = self.out_dir / f".{name}.tmp"
        self._file = open(self._tmp, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = wds.TarWriter(self._hashing, encoder=False, mtime=0)  # int: no pax header
        self._rec = ShardRecord(name, self.split)
        self._payload = 0

    def write_chunk(self, doc_id: str, chunk: int, chunks: int, payload: bytes,
                    extra: Optional[Dict[str, Any]] = None, tokens: Optional[int] = None) -> None:
        """Add chunk ``chunk`` of ``chunks`` of the current document (call :meth:`end_document` after
        the last one)."""
        if self._tar is None:
            self._open()
        crc = zlib.crc32(payload)
        meta = {"doc": doc_id, "chunk": chunk, "chunks": chunks, "crc32": crc}
        if extra:
            meta.update(extra)
        self._tar.write({"__key__": sample_key(self.doc_index, chunk, chunks, crc), self.ext: payload,
                         "json": meta_bytes(meta)})
        rec = self._rec
        assert rec is not None
        rec.samples += 1
        rec.tokens += len(payload) if tokens is None else tokens
        self._payload += len(payload)
        if self.kind == "bytes":
            rec.bytes += len(payload)

    def end_document(self, doc_bytes: Optional[int] = None) -> None:
        """Finish the current document; roll over to a new shard once the target size is reached."""
        rec = self._rec
        assert rec is not None, "end_document() without write_chunk()"
        rec.docs += 1
        if doc_bytes is not None:
            rec.bytes += doc_bytes
        self.doc_index += 1
        if self._payload >= self.target_bytes:
            self._close()

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        rec, hashing = self._rec, self._hashing
        assert rec is not None and hashing is not None and self._tmp is not None
        rec.file_bytes, rec.sha256 = hashing.size, hashing.sha.hexdigest()
        os.replace(self._tmp, self.out_dir / rec.name)
        self.records.append(rec)
        self._tar = self._file = self._hashing = self._rec = self._tmp = None
        self._index += self.index_step

    def close(self) -> List[ShardRecord]:
        self._close()
        return self.records

    def abort(self) -> None:
        """Drop the shard being written (its temporary file)."""
        if self._tar is not None:
            try:
                self._tar.close()  # or tarfile's finalizer writes into the closed file later
            except Exception:
                pass
        if self._file is not None:
            self._file.close()
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tar = self._file = self._hashing = self._rec = self._tmp = None


def split_payload(payload: bytes, max_sample_bytes: int, itemsize: int = 1) -> List[bytes]:
    """Cut ``payload`` into chunks of at most ``max_sample_bytes`` (whole items of ``itemsize``)."""
    step = max(itemsize, max_sample_bytes - max_sample_bytes % itemsize)
    if not payload:
        return [payload]
    return [payload[i:i + step] for i in range(0, len(payload), step)]


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One sample read back from a shard."""

    key: str
    index: int  # position in the shard (0-based)
    meta: Dict[str, Any]
    payload: bytes


def iter_shard_raw(path: Location, kind: str = "bytes", verify: bool = True, payload_only: bool = False,
                   stream: Optional[BinaryIO] = None) -> Iterator[Tuple[int, str, bytes, bytes]]:
    """(index, key, payload, JSON metadata bytes) of every sample of one shard, in stored order.

    Reads with webdataset's tar iterator (``webdataset.tariterators.tar_file_iterator``, the reader
    inside ``webdataset.WebDataset``), used directly because the caller picks shards itself, keyed
    on the data-parallel rank (webdataset's splitters read RANK/WORLD_SIZE from the environment).
    The payload's crc32 is checked against the key. Any problem (unreadable file, damaged tar
    header, truncated or missing member, crc32 mismatch) raises :class:`ShardError` naming the shard
    and the sample. ``payload_only`` (the training loader's fast path, which needs only what the
    key holds) skips the ``.json`` members without reading them and yields ``b""`` for them.

    ``path`` may be remote (:func:`data_prep.remote.open_stream` opens it; the tar is read as a
    stream, so the checks are the same); an opener error (HTTP status, failing command) is a
    :class:`ShardError` naming the location. ``stream``: read this open file instead of opening
    ``path`` (the caller closes it; ``data_prep.verify`` passes a hashing reader).
    """
    from webdataset.tariterators import tar_file_iterator

    ext = "." + PAYLOAD_EXT[kind]
    index, key, payload = 0, "", None
    select = (lambda name: name.endswith(ext)) if payload_only else None
    try:
        with (open_stream(path) if stream is None else contextlib.nullcontext(stream)) as f:
            for member in tar_file_iterator(f, skip_meta=None, select_files=select):
                fname = member["fname"]
                cut = fname.find(".")
                this_key, suffix = fname[:cut], fname[cut:]
                if suffix == ext:
                    if payload_only:
                        key, payload = this_key, member["data"]
                        if verify and zlib.crc32(payload) != _key_crc(path, index, key):
                            raise ShardError(f"shard {path}: sample {index} ({key}): crc32 mismatch "
                                             "(corrupt data)")
                        yield index, key, payload, b""
                        index, payload = index + 1, None
                        continue
                    if payload is not None:
                        raise ShardError(f"shard {path}: sample {index} ({key}): missing member .json")
                    key, payload = this_key, member["data"]
                    if verify and zlib.crc32(payload) != _key_crc(path, index, key):
                        raise ShardError(f"shard {path}: sample {index} ({key}): crc32 mismatch "
                                         "(corrupt data)")
                    continue
                if suffix != ".json":
                    raise ShardError(f"shard {path}: sample {index} ({this_key}): unexpected member {fname}")
                if payload is None or this_key != key:
                    raise ShardError(f"shard {path}: sample {index} ({this_key}): missing member {ext}")
                yield index, key, payload, member["data"]
                index, payload = index + 1, None
            if payload is not None:
                raise ShardError(f"shard {path}: sample {index} ({key}): missing member .json (truncated)")
    except ShardError:
        raise
    except RemoteError as err:  # the message names the location (webdataset may append " @ file")
        raise ShardError(f"shard {str(err).split(' @ ')[0]}") from None
    except FileNotFoundError:
        raise ShardError(f"shard {path}: listed in the manifest but missing") from None
    except Exception as err:  # tarfile / IO errors come in many types
        after = f"after sample {index - 1}" if index else "before the first sample"
        msg = str(err).split(" @ ")[0] or type(err).__name__
        raise ShardError(f"shard {path}: corrupt or truncated at sample {index} ({after}): "
                         f"{type(err).__name__}: {msg}") from None


def _key_crc(path: Location, index: int, key: str) -> int:
    try:
        return int(key[key.rindex("_") + 1:], 16)
    except ValueError:
        raise ShardError(f"shard {path}: sample {index} ({key}): key without a crc32") from None


def iter_shard(path: Location, kind: str = "bytes", verify: bool = True) -> Iterator[Sample]:
    """Samples of one shard with parsed metadata (see :func:`iter_shard_raw`)."""
    for index, key, payload, meta_json in iter_shard_raw(path, kind, verify):
        try:
            meta = json.loads(meta_json)
            chunk, chunks, crc = parse_key(key)
            ok = (meta["chunk"], meta["chunks"], meta["crc32"]) == (chunk, chunks, crc)
        except (ValueError, KeyError, TypeError) as err:
            raise ShardError(f"shard {path}: sample {index} ({key}): bad metadata: {err}") from None
        if not ok:
            raise ShardError(f"shard {path}: sample {index} ({key}): metadata does not match the key")
        yield Sample(key, index, meta, payload)


def iter_shard_documents(path: Location, kind: str = "bytes", samples: Optional[int] = None,
                         verify: bool = True) -> Iterator[Tuple[str, bytes, Dict[str, Any]]]:
    """(document id, payload, metadata of the first chunk) of every document of one shard, chunked
    documents rebuilt; ``samples`` (the manifest's count) is checked at the end."""
    parts: List[bytes] = []
    first: Dict[str, Any] = {}
    n = 0
    for sample in iter_shard(path, kind, verify):
        n += 1
        m = sample.meta
        if m["chunk"] != len(parts):
            raise ShardError(f"shard {path}: sample {sample.index} ({sample.key}): chunk {m['chunk']} "
                             f"of document {m['doc']!r} out of order (expected {len(parts)})")
        if not parts:
            first = m
        parts.append(sample.payload)
        if m["chunk"] == m["chunks"] - 1:
            yield m["doc"], b"".join(parts), first
            parts = []
    if parts:
        raise ShardError(f"shard {path}: ends inside chunked document {first.get('doc')!r} (truncated)")
    if samples is not None and n != samples:
        raise ShardError(f"shard {path}: {n} samples read but the manifest lists {samples} "
                         "(truncated or replaced shard)")


def iter_documents(directory: Location, split: str, manifest: Optional[Dict[str, Any]] = None,
                   verify: bool = True) -> Iterator[Tuple[str, bytes]]:
    """(document id, payload) of every document of ``split`` in stored order (shards in manifest
    order, the order they were written in), chunked documents rebuilt, sample counts checked.
    ``directory`` may be remote (see :mod:`data_prep.remote`)."""
    manifest = manifest or read_manifest(directory)
    for rec in shard_records(manifest, split):
        for doc_id, payload, _ in iter_shard_documents(join(directory, rec["name"]), manifest["kind"],
                                                       rec["samples"], verify):
            yield doc_id, payload
