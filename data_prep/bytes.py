"""Shard a corpus into byte-level WebDataset tars with a manifest.

    python -m data_prep.bytes --stdlib --skip empty --shard-bytes 1MiB --output data/stdlib
    python -m data_prep.bytes corpus/ dumps/*.jsonl.zst --include '*.txt' --exclude .git --output data/c
    python -m data_prep.bytes enwik8 --doc-bytes 64K --split contiguous --val-fraction 0.05 --output d
    python -m data_prep.bytes dumps/ --output data/big --tasks 64 --task 3   # one task of a job array

Inputs are files and directories (recursive; ``--include`` / ``--exclude`` globs). Symbolic links
to files are followed (the document id is the link's path); links to directories are not (no
loops), and they and dangling links are left out with one warning line per kind (a count and an
example). The same file reached through two inputs (``dir`` and ``dir/a.txt``) is an error, and
so is an ``--output`` that is an input directory or lies inside one. One document per line for
``.jsonl``, ``.jsonl.gz`` and ``.jsonl.zst`` (the ``--text-field`` string, stored as UTF-8), one
per row for ``.parquet`` (the ``--text-field`` column, string or binary); ``.gz`` and ``.zst``
files are decompressed; every other file (text, code, images, audio, anything) is one document
of raw bytes, unless ``--media`` converts images and audio (below). Everything is read
as a stream in constant memory (``data_prep/readers.py``). ``--doc-bytes N`` cuts raw and
decompressed files into documents of about N bytes: a document ends after the last newline
within N bytes (a line longer than N is cut at N) and is named ``<file id>@<offset>``. A document
larger than ``--max-sample-bytes`` is stored as numbered chunks.

Splits (``--split``): ``hash`` (default) sends each document to train / val / test by a hash of its
id: the path relative to its input for a file, ``--id-field`` or else the sha256 of the text for a
JSONL or Parquet record, so the split never depends on workers, tasks or where a record sits in a
dump. ``contiguous`` (the enwik8 convention): over the inputs concatenated in sorted id order, the
last val_fraction + test_fraction of the bytes become val, then test, in order (files are cut at
those points, and with ``--doc-bytes`` documents too).

Output: ``{split}-{index:06d}.tar`` shards of about ``--shard-bytes`` (each worker process writes
its own), and ``manifest.json`` (per split document and byte counts; per shard bytes, samples and
sha256; sources; options; bad-input counts), written last and atomically. Re-running with the
same inputs and options is a no-op; an interrupted run leaves no manifest, and running it again
finishes the job.

A job array (``--tasks N --task I``, I defaulting to $SLURM_ARRAY_TASK_ID; submit with
``--array=0-(N-1)``): the work is cut into the same list of pieces in every task and balanced by
bytes; task I prepares its share into ``{split}-tIIII-{index:06d}.tar`` and then writes
``parts/part-IIIII-of-NNNNN.json`` atomically. The last task to finish merges the parts into
``manifest.json`` (``python -m data_prep.merge DIR`` does the same by hand). Running the array
again redoes only the tasks without a finished part. The merged dataset holds the same documents
per split as a one-task run.

Images and audio (``--media``, see ``data_prep/media.py``): by default (``auto``) a set of inputs
that are all images (.png/.jpg/.jpeg) becomes one document per image of ``--image-size`` squared
x 3 raw RGB bytes (``--image-fit``, ``--pixel-order raster`` or ``blocks:B``), and a set of
inputs that are all .wav files one document per file of mono samples (``--audio-format``
``mulaw8`` or ``pcm16``; every file at one sample rate, by default that of the first file in id
order). A mix of images, audio and other files is an error in ``auto`` mode; ``--media none``
stores every file's bytes as they are (compressed files are still decompressed). What the bytes
are is recorded in the manifest under ``"media"``.

Bad input (an unreadable, truncated or vanished file, an empty file, a malformed JSONL line, a
missing text field or column, invalid UTF-8 in JSON text, an image or WAV file that cannot be
decoded) is fatal with one line naming the file and line (or Parquet row), unless ``--skip KIND``
(or ``--skip all``) is given: then each is warned about and counted in the manifest. Sizes accept
suffixes K, M, G (powers of 1024; ``KiB``, ``MB`` etc. are the same). The result is one JSON
object on stdout per task; progress and warnings go to stderr. A run that would give no train
documents (every document hashed to val/test, or every input skipped) fails without a manifest,
and a failed run leaves none of its shards behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import queue
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from data_prep.media import (
    AUDIO_FORMATS,
    IMAGE_FITS,
    MediaError,
    MediaSpec,
    media_kind_of,
    parse_pixel_order,
)
from data_prep.merge import (
    MergeError,
    build_manifest,
    collect_parts,
    finished_part,
    part_path,
    try_merge,
    write_part,
)
from data_prep.plan import plan_pieces, reference_sample_rate, share
from data_prep.readers import Bad, Doc, Piece, ReadOptions, ReadStats, read_piece
from data_prep.shards import (
    MANIFEST,
    MAX_CHUNKS,
    SPLITS,
    SplitWriter,
    finished_manifest,
    remove_stale,
    split_payload,
)
from data_prep.sources import (
    STDLIB_EXCLUDE,
    InputFile,
    collect_inputs,
    id_bytes,
    output_overlap,
    split_of,
    stdlib_dir,
)

BAD_KINDS = ("unreadable", "empty", "malformed_json", "missing_field", "invalid_utf8", "bad_image",
             "bad_audio")
MEDIA_KINDS = ("bad_image", "bad_audio")  # bad-input kinds that exist only for media inputs
MEDIA_MODES = ("auto", "none", "image", "audio")
MEDIA_OPTIONS = ("media", "image_size", "image_fit", "pixel_order", "audio_format", "audio_sample_rate")
SPLIT_RULES = ("hash", "contiguous")
LAYOUT = 2  # in the fingerprint: 2 = content-hash JSONL ids, decompressed .gz/.zst, piece plan
LOOK_AHEAD = 2  # pieces handed to each worker ahead of time (pieces are descriptions, not data)
MAX_EXAMPLES = 100  # bad-input messages kept in the manifest
MAX_WARNINGS = 20  # per kind, printed to stderr


class PrepError(RuntimeError):
    """Preparation failed; the message is one line naming the file (and line)."""


@dataclass(frozen=True)
class PrepOptions:
    """Everything that determines the output (recorded in the manifest)."""

    shard_bytes: int = 64 << 20
    max_sample_bytes: int = 16 << 20
    val_fraction: float = 0.05
    test_fraction: float = 0.0
    text_field: str = "text"
    id_field: Optional[str] = None
    order: str = "hash"  # 'hash': files in an order given by a hash of their id (mixes shards)
    max_bytes: Optional[int] = None
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    skip: Tuple[str, ...] = ()
    media: str = "auto"  # 'auto' (by extension), 'none' (raw bytes), 'image' or 'audio'
    image_size: int = 64
    image_fit: str = "crop"
    pixel_order: str = "raster"
    audio_format: str = "mulaw8"
    audio_sample_rate: Optional[int] = None  # None: every file at the rate of the first one
    doc_bytes: Optional[int] = None  # cut raw / decompressed files into documents of about this size
    split: str = "hash"  # 'hash' (by document id) or 'contiguous' (the last bytes are val, then test)
    piece_bytes: int = 16 << 20  # large files are cut into pieces of work of about this size

    def check(self) -> None:
        for name in ("shard_bytes", "max_sample_bytes", "piece_bytes", "doc_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise PrepError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise PrepError(f"--val-fraction {self.val_fraction} and --test-fraction "
                            f"{self.test_fraction} must be >= 0 with a sum below 1")
        if self.order not in ("hash", "sorted"):
            raise PrepError(f"--order must be 'hash' or 'sorted', got {self.order!r}")
        if self.split not in SPLIT_RULES:
            raise PrepError(f"--split must be one of {', '.join(SPLIT_RULES)}, got {self.split!r}")
        bad = [k for k in self.skip if k not in BAD_KINDS]
        if bad:
            raise PrepError(f"--skip: unknown kind {bad[0]!r} (kinds: {', '.join(BAD_KINDS)}, all)")
        if self.media not in MEDIA_MODES:
            raise PrepError(f"--media must be one of {', '.join(MEDIA_MODES)}, got {self.media!r}")
        try:
            for kind in ("image", "audio"):
                self.media_spec(kind).check()
        except MediaError as err:
            raise PrepError(str(err)) from None

    def media_spec(self, kind: str) -> MediaSpec:
        """The :class:`MediaSpec` these options give for ``kind`` ('image' or 'audio')."""
        if kind == "image":
            return MediaSpec("image", image_size=self.image_size, image_fit=self.image_fit,
                             pixel_order=self.pixel_order, channels=3)
        return MediaSpec("audio", audio_format=self.audio_format, sample_rate=self.audio_sample_rate,
                         channels=1)

    def as_dict(self) -> Dict[str, Any]:
        """The options as the manifest records them (tuples as lists)."""
        return {**asdict(self), "include": list(self.include), "exclude": list(self.exclude),
                "skip": list(self.skip)}


def _media_without_doc_bytes(spec: MediaSpec, opts: PrepOptions) -> MediaSpec:
    """``--doc-bytes`` cuts raw files; a converted image or clip is one document (it was
    accepted, recorded and ignored): refused."""
    if opts.doc_bytes is not None:
        raise PrepError(f"--doc-bytes cuts raw files into documents; {spec.kind} files are converted, "
                        "one document each: drop --doc-bytes (or pass --media none to store the "
                        "files' bytes as they are)")
    return spec


def resolve_media(files: List[InputFile], opts: PrepOptions) -> Optional[MediaSpec]:
    """The media spec for these files (None: raw bytes). ``auto``: images if every file has an
    image extension, audio if every file is .wav, raw bytes if none is either; a mix is an error
    naming one file of each kind."""
    if opts.media in ("image", "audio"):
        return _media_without_doc_bytes(opts.media_spec(opts.media), opts)
    if opts.media == "none":
        return None
    example: Dict[str, str] = {}
    for f in files:
        example.setdefault(media_kind_of(f.path) or "other", f.path)
    if len(example) == 1 and "other" not in example:
        return _media_without_doc_bytes(opts.media_spec(next(iter(example))), opts)
    if len(example) > 1:
        names = {"image": "images", "audio": "audio", "other": "other files"}
        found = ", ".join(f"{names[k]} ({v})" for k, v in sorted(example.items()))
        raise PrepError(f"--media auto: the inputs mix {found}; pass --media none to store every file's "
                        "bytes as they are, or --include/--exclude to prepare one kind at a time")
    return None


# --------------------------------------------------------------------------------------
# Planning (every task of a job computes the same plan)
# --------------------------------------------------------------------------------------


def _order_key(f: InputFile) -> Any:
    return hashlib.sha256(b"order:" + id_bytes(f.doc_id)).digest()


def select_files(files: List[InputFile], opts: PrepOptions) -> List[InputFile]:
    """The files to prepare, in processing order: with ``max_bytes``, whole files in that order
    until their sizes add up to at least ``max_bytes`` (a file is never cut, so the last one may
    go past it, and one large file is prepared whole)."""
    if opts.order == "hash":
        files = sorted(files, key=_order_key)
    if opts.max_bytes is not None:
        out, total = [], 0
        for f in files:
            if total >= opts.max_bytes:
                break
            out.append(f)
            total += max(f.size, 0)
        files = out
    return files



def fingerprint(inputs: Sequence[Path], files: List[InputFile], opts: PrepOptions,
                media: Optional[MediaSpec] = None, tasks: int = 1) -> str:
    """Hash of everything the output depends on: options, input paths, every file's id/size/mtime,
    the media spec, the task count and the layout version. Without media, the media options do
    not change the output and are left out."""
    options = asdict(opts)
    head: Dict[str, Any] = {"inputs": [str(Path(p).resolve()) for p in inputs], "layout": LAYOUT,
                            "tasks": tasks}
    if media is None:
        options = {k: v for k, v in options.items() if k not in MEDIA_OPTIONS}
        options["skip"] = [k for k in opts.skip if k not in MEDIA_KINDS]
    else:
        head["media"] = asdict(media)
    h = hashlib.sha256()
    h.update(json.dumps({"options": options, **head}, sort_keys=True).encode())
    for f in files:
        h.update(f"{f.doc_id}\0{f.path}\0{f.size}\0{f.mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@dataclass
class Job:
    """What every task of a job computes alike: files, media, fingerprint, pieces, manifest head."""

    files: List[InputFile]
    media: Optional[MediaSpec]
    fingerprint: str
    pieces: List[Piece]
    head: Dict[str, Any]  # options, sources and media, as the manifest records them

    @property
    def input_bytes(self) -> int:
        return sum(max(f.size, 0) for f in self.files)


def plan_job(inputs: Sequence[Path], opts: PrepOptions, files: Optional[List[InputFile]] = None,
             tasks: int = 1) -> Job:
    """List, select and plan the inputs (see ``data_prep/plan.py``)."""
    if files is None:
        files = collect_inputs(inputs, opts.include, opts.exclude)
    files = select_files(files, opts)
    if not files:
        raise PrepError(f"no input files in {', '.join(map(str, inputs))} "
                        f"(include {list(opts.include) or 'all'}, exclude {list(opts.exclude)})")
    media = resolve_media(files, opts)
    if media is not None and media.kind == "audio" and media.sample_rate is None:
        media = replace(media, sample_rate=reference_sample_rate(files))
    kinds: Dict[str, int] = {}
    for f in files:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    head = {"options": opts.as_dict(),
            "sources": {"inputs": [str(Path(p).resolve()) for p in inputs], "files": len(files),
                        "bytes": sum(max(f.size, 0) for f in files), "file_kinds": kinds},
            "media": media.as_dict() if media is not None else None}
    return Job(files, media, fingerprint(inputs, files, opts, media, tasks), plan_pieces(files, opts, media),
               head)


# --------------------------------------------------------------------------------------
# Workers: read pieces and write their own shards
# --------------------------------------------------------------------------------------


def bad_line(bad: Bad) -> str:
    return f"{bad.where}: {bad.message}"


@dataclass
class PieceResult:
    """What a worker reports about one piece (the documents themselves went into its shards)."""

    index: int
    input_bytes: int
    docs: int = 0
    blank_lines: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (kind, "where: message")


class ShardWorker:
    """Reads pieces and writes their documents into its own shard sequence (one writer per split;
    worker ``w`` of ``workers`` takes shard indices w, w + workers, ...), hashing as it writes."""

    def __init__(self, out_dir: Path, opts: PrepOptions, media: Optional[MediaSpec], task: Optional[int],
                 worker: int = 0, workers: int = 1) -> None:
        self.opts = opts
        self.read_opts = ReadOptions(opts.text_field, opts.id_field, opts.max_sample_bytes, opts.doc_bytes,
                                     media)
        self.writers = {s: SplitWriter(out_dir, s, opts.shard_bytes, task=task, first_index=worker,
                                       index_step=workers) for s in SPLITS}

    def run(self, piece: Piece) -> PieceResult:
        """Read one piece and write its documents; bad input raises :class:`PrepError` unless
        skipped, and any other error becomes one naming the file it happened on."""
        try:
            return self._run(piece)
        except PrepError:
            raise
        except Exception as err:  # an environment error (disk full) or a bug: say where it was
            raise PrepError(f"while preparing {piece.path}: {type(err).__name__}: {err}") from err

    def _run(self, piece: Piece) -> PieceResult:
        res = PieceResult(piece.index, piece.end - piece.start)
        stats = ReadStats()
        partial: Optional[Tuple[str, int]] = None  # (id, chunks written) of a document being streamed
        for rec in read_piece(piece, self.read_opts, stats):
            if isinstance(rec, Bad):
                if partial is not None:
                    raise PrepError(f"{bad_line(rec)} after {partial[1]} chunks of {partial[0]!r} were "
                                    "written (cannot skip a partly written document)")
                if rec.kind not in self.opts.skip:
                    raise PrepError(f"{bad_line(rec)} (pass --skip {rec.kind} to skip such input)")
                res.skipped.append((rec.kind, bad_line(rec)))
                continue
            partial = self._write(piece, rec)
            res.docs += partial is None
        res.blank_lines = stats.blank_lines
        return res

    def _write(self, piece: Piece, doc: Doc) -> Optional[Tuple[str, int]]:
        """Write a document (or a part of one, at its offset); (id, chunks so far) while unfinished."""
        opts = self.opts
        doc_id = doc.doc_id if doc.doc_id is not None else hashlib.sha256(doc.data).hexdigest()
        w = self.writers[piece.split or split_of(doc_id, opts.val_fraction, opts.test_fraction)]
        chunks = max(1, -(-doc.total // opts.max_sample_bytes))
        if chunks > MAX_CHUNKS:  # checked before its first chunk is written
            raise PrepError(too_many_chunks(piece.path, doc_id, doc.total, opts.max_sample_bytes))
        first = doc.offset // opts.max_sample_bytes  # parts of a streamed document are whole chunks
        parts = split_payload(doc.data, opts.max_sample_bytes)
        for c, part in enumerate(parts):
            w.write_chunk(doc_id, first + c, chunks, part)
        if doc.offset + len(doc.data) < doc.total:
            return doc_id, first + len(parts)
        w.end_document()
        return None

    def close(self) -> List[Dict[str, Any]]:
        return [r.as_dict() for s in SPLITS for r in self.writers[s].close()]

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


def _worker_loop(args: Tuple[Any, ...], inbox: Any, outbox: Any) -> None:
    """A worker process: pieces from ``inbox`` until None, results and finally records to ``outbox``."""
    *make, w, workers = args
    worker = ShardWorker(*make, worker=w, workers=workers)
    try:
        while (piece := inbox.get()) is not None:
            outbox.put(("piece", w, worker.run(piece)))
        outbox.put(("done", w, worker.close()))
    except BaseException as err:
        worker.abort()
        outbox.put(("error", w, str(err) if isinstance(err, PrepError) else f"{type(err).__name__}: {err}"))


# --------------------------------------------------------------------------------------
# The main process of a task: hand out pieces, collect results, write the part
# --------------------------------------------------------------------------------------


class _Collector:
    """Counts what the workers report, warns about skipped input, moves the progress bar."""

    def __init__(self, bar: Any, warn: Any) -> None:
        self.bar, self.warn = bar, warn
        self.counts: Dict[str, int] = {k: 0 for k in BAD_KINDS}
        self.examples: List[str] = []
        self.docs = self.blank_lines = 0

    def take(self, res: PieceResult) -> None:
        self.docs += res.docs
        self.blank_lines += res.blank_lines
        for kind, line in res.skipped:
            line += f" [{kind}]"
            self.counts[kind] += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(line)
            if self.counts[kind] <= MAX_WARNINGS:
                self.warn(f"warning: skipped {line}")
            elif self.counts[kind] == MAX_WARNINGS + 1:
                self.warn(f"warning: further '{kind}' input is skipped silently here (counted in the "
                          "manifest)")
        self.bar.update(res.input_bytes)
        self.bar.set_postfix(docs=self.docs, refresh=False)


def _run_inline(pieces: List[Piece], make: Tuple[Any, ...], col: _Collector) -> List[Dict[str, Any]]:
    worker = ShardWorker(*make)
    try:
        for piece in pieces:
            col.take(worker.run(piece))
        return worker.close()
    except BaseException:
        worker.abort()
        raise


def _run_parallel(pieces: List[Piece], make: Tuple[Any, ...], workers: int, col: _Collector
                  ) -> List[Dict[str, Any]]:
    """Each worker gets a fixed share of the pieces (balanced by bytes), so its shards hold the
    same documents in the same order on every run with this worker count; the main process hands
    each worker its next piece as one finishes (at most LOOK_AHEAD waiting, so memory stays
    bounded) and only collects counts and shard records."""
    import gc

    import webdataset  # noqa: F401  # imported once here (it imports torch), not in every forked worker

    gc.freeze()  # forked workers' collections skip the inherited objects (no copy-on-write storms)

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    inboxes, outbox = [ctx.Queue() for _ in range(workers)], ctx.Queue()
    procs = [ctx.Process(target=_worker_loop, args=((*make, w, workers), inboxes[w], outbox), daemon=True)
             for w in range(workers)]
    todo = [iter(share_) for share_ in share(pieces, workers)]

    def hand_out(w: int) -> None:  # the next piece of worker w, or None: it stops after its last
        inboxes[w].put(next(todo[w], None))

    finished, records = 0, []
    try:
        for w, p in enumerate(procs):
            p.start()
            for _ in range(LOOK_AHEAD):
                hand_out(w)
        while finished < workers:
            try:
                kind, w, payload = outbox.get(timeout=1.0)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise PrepError(f"a worker process died (exit code {dead[0]}); run the same command "
                                    "again") from None
                continue
            if kind == "error":
                raise PrepError(payload)
            if kind == "done":
                records += payload
                finished += 1
            else:
                hand_out(w)
                col.take(payload)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    return records


def _run_task(job: Job, out_dir: Path, opts: PrepOptions, workers: int, progress: bool, task: int,
              tasks: int) -> Dict[str, Any]:
    """Prepare task ``task``'s share of the job; returns its part (written after its shards)."""
    from tqdm import tqdm

    tag = task if tasks > 1 else None
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the directory no longer names every shard
    part_path(out_dir, task, tasks).unlink(missing_ok=True)
    remove_stale(out_dir, task=tag)  # this task's shards and temporary files from an earlier try
    pieces = share(job.pieces, tasks)[task]
    task_bytes = sum(p.end - p.start for p in pieces)
    bar = tqdm(total=task_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               desc="prep" if tasks == 1 else f"prep {task}/{tasks}", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    col = _Collector(bar, lambda msg: tqdm.write(msg, file=sys.stderr))
    make = (out_dir, opts, job.media, tag)
    try:
        workers = max(1, min(workers, len(pieces)))
        records = (_run_inline(pieces, make, col) if workers == 1
                   else _run_parallel(pieces, make, workers, col))
        part = {"format": "megabyte-shards-part", "fingerprint": job.fingerprint, "task": task,
                "tasks": tasks, "job": job.head, "shards": sorted(records, key=lambda r: r["name"]),
                "pieces": len(pieces), "input_bytes": task_bytes, "docs": col.docs,
                "bad_input": {"counts": col.counts, "examples": col.examples},
                "blank_lines": col.blank_lines}
        if tasks == 1:  # the whole dataset: without train documents it is an error
            check_train(build_manifest([part]), opts)
    except BaseException:
        # No partial output: the workers have stopped; drop every shard and temporary file of
        # this task (a run starts by removing them anyway, so a rerun loses nothing).
        remove_stale(out_dir, task=tag)
        raise
    finally:
        bar.close()
    write_part(out_dir, part)
    return part


def prepare(inputs: Sequence[Path], out_dir: Path, opts: PrepOptions = PrepOptions(), workers: int = 1,
            progress: bool = True, files: Optional[List[InputFile]] = None, tasks: int = 1, task: int = 0
            ) -> Dict[str, Any]:
    """Prepare task ``task`` of ``tasks`` (all of it by default) of sharding ``inputs`` into
    ``out_dir``, merging the parts when it is the last to finish; returns a summary (see the
    module docstring). ``files`` (from :func:`collect_inputs`) may be passed to reuse a listing."""
    opts.check()
    if not 0 <= task < tasks:
        raise PrepError(f"--task {task} is not in 0..{tasks - 1} (--tasks {tasks})")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    check_output(inputs, out_dir)
    job = plan_job(inputs, opts, files, tasks)
    check_chunks(job, opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = finished_manifest(out_dir, job.fingerprint, "bytes")
    if existing is not None:
        check_train(existing, opts)
        return _summary(existing, out_dir, "unchanged", time.perf_counter() - t0, task=task, tasks=tasks)
    part = finished_part(out_dir, job.fingerprint, task, tasks)
    status = "unchanged"
    if part is None:
        part = _run_task(job, out_dir, opts, workers, progress, task, tasks)
        status = "written"
    try:  # every task has finished: the dataset must have train documents before it gets a manifest
        check_train(build_manifest(collect_parts(out_dir, tasks, job.fingerprint)), opts)
    except MergeError:
        pass  # other tasks are still running (or must run again): the last one checks
    manifest = try_merge(out_dir, tasks, job.fingerprint)
    merged = manifest is not None
    return _summary(manifest if merged else build_manifest([part]), out_dir, status,
                    time.perf_counter() - t0, part["input_bytes"] if status == "written" else None,
                    task=task, tasks=tasks, merged=merged)


def check_output(inputs: Sequence[Path], out_dir: Path) -> None:
    """``--output`` must not be an input directory or lie inside one: a run would read the shards
    of the one before as input (and clearing them would delete what it reads)."""
    inp = output_overlap(inputs, out_dir)
    if inp is not None:
        where = "is" if Path(out_dir).resolve() == Path(inp).resolve() else "is inside"
        raise PrepError(f"--output {out_dir} {where} the input directory {inp}: the output would be read "
                        "back as input; choose an output directory outside the inputs")


def too_many_chunks(path: str, doc_id: str, size: int, max_sample_bytes: int) -> str:
    """The error for a document that needs more than ``MAX_CHUNKS`` chunks."""
    need = -(-size // MAX_CHUNKS)
    return (f"{path}: document {doc_id!r} of {size} bytes needs {-(-size // max_sample_bytes)} chunks of "
            f"--max-sample-bytes {max_sample_bytes}, more than the {MAX_CHUNKS} a document may have; "
            f"raise --max-sample-bytes to at least {need}")


def check_chunks(job: Job, opts: PrepOptions) -> None:
    """Documents whose size the plan knows (raw files, ``--doc-bytes``) must fit in
    ``MAX_CHUNKS`` chunks: an error naming the first that does not, before anything is written.
    Other documents (decompressed, JSONL, Parquet, media) are checked as they are read."""
    limit = MAX_CHUNKS * opts.max_sample_bytes
    if opts.doc_bytes is not None:
        if opts.doc_bytes > limit:
            raise PrepError(f"--doc-bytes {opts.doc_bytes} needs more than {MAX_CHUNKS} chunks of "
                            f"--max-sample-bytes {opts.max_sample_bytes}; raise --max-sample-bytes to at "
                            f"least {-(-opts.doc_bytes // MAX_CHUNKS)}")
        return
    for p in job.pieces:
        if p.kind == "raw" and p.end - p.start > limit:
            doc_id = f"{p.doc_id}@{p.start}" if p.cut else p.doc_id
            raise PrepError(too_many_chunks(p.path, doc_id, p.end - p.start, opts.max_sample_bytes))


def check_train(manifest: Dict[str, Any], opts: PrepOptions) -> None:
    """A dataset without train documents is an error saying why (before its manifest is written)."""
    splits = manifest["splits"]
    if splits["train"]["docs"] > 0:
        return
    total = sum(v["docs"] for v in splits.values())
    if total == 0:
        bad = ", ".join(f"{n} {k}" for k, n in manifest["bad_input"]["counts"].items() if n)
        raise PrepError("no train documents: the inputs gave no documents at all"
                        + (f" (skipped as bad input: {bad})" if bad else ""))
    fix = ("add data or use --split contiguous" if opts.split == "hash"
           else "add data or lower --val-fraction / --test-fraction")
    raise PrepError(f"no train documents: all {total} documents went to val/test (--split {opts.split}, "
                    f"--val-fraction {opts.val_fraction}, --test-fraction {opts.test_fraction}); {fix}")


def _summary(manifest: Dict[str, Any], out_dir: Path, status: str, seconds: float,
             input_bytes: Optional[int] = None, task: int = 0, tasks: int = 1, merged: bool = True
             ) -> Dict[str, Any]:
    """The JSON result of a task: the merged dataset's counts, or this task's when not merged yet."""
    out = {"status": status, "output": str(out_dir), "manifest": str(out_dir / MANIFEST),
           "input_files": manifest["sources"]["files"], "input_bytes": manifest["sources"]["bytes"],
           "seconds": round(seconds, 3), "task": task, "tasks": tasks, "merged": merged,
           "splits": {s: {k: manifest["splits"][s][k] for k in ("docs", "bytes", "samples", "shards")}
                      for s in SPLITS if s in manifest["splits"]},  # train, val, test: as written
           "bad_input": manifest["bad_input"]["counts"], "media": manifest.get("media")}
    if input_bytes is not None:
        out["mb_per_s"] = round(input_bytes / 1e6 / max(seconds, 1e-9), 2)
    return out


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """'64MiB', '64M', '64MB', '1G', '4096' -> bytes (suffixes are powers of 1024)."""
    t = text.strip().upper().replace("IB", "").rstrip("B")
    mult = 1
    if t and t[-1] in "KMGT":
        mult = 1024 ** ("KMGT".index(t[-1]) + 1)
        t = t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 512K, 64MiB, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value * mult)


def add_prep_args(p: argparse.ArgumentParser) -> None:
    """The input and sharding options (shared with ``python -m data_prep.prepare``)."""
    p.add_argument("inputs", nargs="*", type=Path, help="files and directories to prepare")
    p.add_argument("--stdlib", action="store_true",
                   help="prepare Python's standard library source (*.py, no site-packages)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only files whose relative path or name matches (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip files whose relative path, name or a parent directory matches (repeatable)")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--id-field", default=None,
                   help="JSONL field / Parquet column holding a document id (default: the text's sha256)")
    p.add_argument("--shard-bytes", type=parse_size, default=64 << 20, help="target shard size (64MiB)")
    p.add_argument("--max-sample-bytes", type=parse_size, default=16 << 20,
                   help="larger documents are stored as numbered chunks of this size (16MiB)")
    p.add_argument("--doc-bytes", type=parse_size, default=None, metavar="N",
                   help="cut raw and decompressed files into documents of about N bytes, ending at the last "
                        "newline within N (a longer line is cut at N); ids <file id>@<offset>")
    p.add_argument("--split", choices=SPLIT_RULES, default="hash",
                   help="hash (default): each document by a hash of its id; contiguous: the last "
                        "val+test fraction of the bytes (inputs in sorted id order) are val, then test")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of documents (--split contiguous: of bytes) for val (0.05)")
    p.add_argument("--test-fraction", type=float, default=0.0, help="share for test (0)")
    p.add_argument("--piece-bytes", type=parse_size, default=16 << 20,
                   help="large files are cut into pieces of work of this size (16MiB; with --doc-bytes "
                        "it also fixes where documents may end, so it is part of the fingerprint)")
    p.add_argument("--order", choices=["hash", "sorted"], default="hash",
                   help="file order in the shards: by a hash of the id (mixes shards; default) or sorted")
    p.add_argument("--max-bytes", type=parse_size, default=None, metavar="N",
                   help="prepare only whole files, taken in --order until their sizes reach N (a file "
                        "is never cut: the last one may go past N, and one big file is prepared whole)")
    p.add_argument("--skip", action="append", default=[], metavar="KIND",
                   help=f"skip (warn and count) bad input of this kind: {', '.join(BAD_KINDS)}, or all")
    m = p.add_argument_group("images and audio (see data_prep/media.py)")
    m.add_argument("--media", choices=MEDIA_MODES, default="auto",
                   help="auto (default): images if every input is .png/.jpg/.jpeg, audio if every input "
                        "is .wav, else raw bytes (a mix is an error); none: every file's bytes as they are")
    m.add_argument("--image-size", type=int, default=64, metavar="S",
                   help="images become S x S x 3 RGB bytes (64: 12,288 bytes, the paper's ImageNet-64)")
    m.add_argument("--image-fit", choices=IMAGE_FITS, default="crop",
                   help="crop: centre square resized to S (default); resize: squashed to S x S; "
                        "pad: longer side to S, centred on black")
    m.add_argument("--pixel-order", default="raster", type=_pixel_order, metavar="{raster,blocks:B}",
                   help="raster: rows of RGB pixels (default); blocks:B: B x B pixel blocks in raster order, "
                        "pixels in a block in raster order (3*B*B bytes a block: blocks:2 = patch size 12)")
    m.add_argument("--audio-format", choices=AUDIO_FORMATS, default="mulaw8",
                   help="mulaw8: G.711 mu-law, 1 byte a sample (default); pcm16: signed 16-bit "
                        "little-endian. Channels are averaged to mono; no resampling")
    m.add_argument("--audio-sample-rate", type=int, default=None, metavar="HZ",
                   help="every WAV must have this rate (else bad_audio); default: the rate of the first file")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="worker processes (default: min(4, CPUs))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _pixel_order(text: str) -> str:
    try:
        parse_pixel_order(text)
    except MediaError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def inputs_and_options(args: argparse.Namespace) -> Tuple[List[Path], PrepOptions]:
    """Inputs and :class:`PrepOptions` from parsed :func:`add_prep_args` arguments."""
    skip = tuple(BAD_KINDS) if "all" in args.skip else tuple(dict.fromkeys(args.skip))
    include, exclude, inputs = tuple(args.include), tuple(args.exclude), list(args.inputs)
    if args.stdlib:
        if inputs:
            raise PrepError("give either --stdlib or input paths, not both")
        inputs = [stdlib_dir()]
        include = include or ("*.py",)
        exclude = exclude + tuple(e for e in STDLIB_EXCLUDE if e not in exclude)
    if not inputs:
        raise PrepError("no inputs: give files or directories, or --stdlib")
    opts = PrepOptions(shard_bytes=args.shard_bytes, max_sample_bytes=args.max_sample_bytes,
                       val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                       text_field=args.text_field, id_field=args.id_field, order=args.order,
                       max_bytes=args.max_bytes, include=include, exclude=exclude, skip=skip,
                       media=args.media, image_size=args.image_size, image_fit=args.image_fit,
                       pixel_order=args.pixel_order, audio_format=args.audio_format,
                       audio_sample_rate=args.audio_sample_rate, doc_bytes=args.doc_bytes,
                       split=args.split, piece_bytes=args.piece_bytes)
    opts.check()
    return inputs, opts


def task_index(task: Optional[int], tasks: int) -> int:
    """--task, else $SLURM_ARRAY_TASK_ID (a Slurm array of --array=0-(N-1)), else 0; checked."""
    if tasks < 1:
        raise PrepError(f"--tasks must be >= 1, got {tasks}")
    if task is None:
        env = os.environ.get("SLURM_ARRAY_TASK_ID")
        if env is None:
            task = 0
        elif not env.strip().isdigit():
            raise PrepError(f"SLURM_ARRAY_TASK_ID={env!r} is not a task index; pass --task I")
        else:
            task = int(env)
    if not 0 <= task < tasks:
        raise PrepError(f"task {task} is not in 0..{tasks - 1} (--tasks {tasks}; submit the array as "
                        f"--array=0-{tasks - 1})")
    return task


def describe(summary: Dict[str, Any]) -> str:
    if not summary.get("merged", True):
        return (f"{summary['status']}: task {summary['task']} of {summary['tasks']} in {summary['output']} "
                "(the last task to finish writes the manifest)")
    return f"{summary['status']}: {summary['output']}: " + ", ".join(
        f"{k} {v['docs']} docs / {v['bytes'] / 1e6:.1f} MB / {v['shards']} shards"
        for k, v in summary["splits"].items())


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.bytes", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="output directory (shards + manifest.json)")
    add_prep_args(p)
    j = p.add_argument_group("job arrays (see above)")
    j.add_argument("--tasks", type=int, default=1, metavar="N",
                   help="the job has N tasks (default 1: everything, one manifest at the end)")
    j.add_argument("--task", type=int, default=None, metavar="I",
                   help="this task's index, 0..N-1 (default: $SLURM_ARRAY_TASK_ID, else 0)")
    args = p.parse_args(argv)
    try:
        inputs, opts = inputs_and_options(args)
        task = task_index(args.task, args.tasks)
        summary = prepare(inputs, args.output, opts, workers=args.workers, progress=not args.no_progress,
                          tasks=args.tasks, task=task)
    except (PrepError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no manifest was written; run the same command again", file=sys.stderr)
        return 130
    print(describe(summary), file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
