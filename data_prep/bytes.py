"""Shard a corpus into byte-level WebDataset tars with a manifest.

    python -m data_prep.bytes --stdlib --skip empty --shard-bytes 1MiB --output data/stdlib
    python -m data_prep.bytes corpus/ dumps/*.jsonl.gz --include '*.txt' --exclude .git --output data/c

Inputs are files and directories (recursive; ``--include`` / ``--exclude`` globs). ``.jsonl`` and
``.jsonl.gz`` files hold one document per line (the ``--text-field`` string, stored as UTF-8);
every other file (text, code, images, audio, anything) is one document of raw bytes, unless
``--media`` converts images and audio (below). Documents keep their boundaries; one larger than
``--max-sample-bytes`` is stored as numbered chunks.

Each document goes to train / val / test by a hash of its id (the path relative to its input, or
``file:line`` for JSONL), so the split never depends on worker count or input order. Output:
``{split}-{index:06d}.tar`` shards of about ``--shard-bytes`` and ``manifest.json`` (per split
document and byte counts; per shard bytes, samples and sha256; sources; options; bad-input
counts), written last and atomically. Re-running with the same inputs and options is a no-op;
an interrupted run leaves no manifest, and running it again writes identical shards.

Images and audio (``--media``, see ``data_prep/media.py``): by default (``auto``) a set of inputs
that are all images (.png/.jpg/.jpeg) becomes one document per image of ``--image-size`` squared
x 3 raw RGB bytes (``--image-fit``, ``--pixel-order raster`` or ``blocks:B``), and a set of
inputs that are all .wav files one document per file of mono samples (``--audio-format``
``mulaw8`` or ``pcm16``; every file at one sample rate). A mix of images, audio and other files
is an error in ``auto`` mode; ``--media none`` stores every file's bytes as they are. What the
bytes are is recorded in the manifest under ``"media"``.

Bad input (an unreadable or vanished file, an empty file, a malformed JSONL line, a missing text
field, invalid UTF-8 in JSON text, an image or WAV file that cannot be decoded) is fatal with one
line naming the file and line, unless ``--skip KIND`` (or ``--skip all``) is given: then each is
warned about and counted in the manifest. Sizes accept suffixes K, M, G (powers of 1024; ``KiB``,
``MB`` etc. are the same). The result is one JSON object on stdout; progress and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing
import os
import sys
import time
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from data_prep.media import (
    AUDIO_FORMATS,
    IMAGE_FITS,
    MediaError,
    MediaSpec,
    audio_to_bytes,
    image_to_bytes,
    media_kind_of,
    parse_pixel_order,
)
from data_prep.shards import (
    FORMAT,
    MANIFEST,
    SPLITS,
    VERSION,
    SplitWriter,
    finished_manifest,
    remove_stale,
    split_payload,
    start_rewrite,
    write_manifest,
)
from data_prep.sources import STDLIB_EXCLUDE, InputFile, collect_inputs, split_of, stdlib_dir

BAD_KINDS = ("unreadable", "empty", "malformed_json", "missing_field", "invalid_utf8", "bad_image",
             "bad_audio")
MEDIA_KINDS = ("bad_image", "bad_audio")  # bad-input kinds that exist only for media inputs
MEDIA_MODES = ("auto", "none", "image", "audio")
MEDIA_OPTIONS = ("media", "image_size", "image_fit", "pixel_order", "audio_format", "audio_sample_rate")
JSONL_TASK_BYTES = 16 << 20  # a large .jsonl file is read in ranges of about this size
BATCH_BYTES = 4 << 20  # tasks are sent to workers in batches of about this many input bytes
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

    def check(self) -> None:
        if self.shard_bytes <= 0:
            raise PrepError(f"--shard-bytes must be positive, got {self.shard_bytes}")
        if self.max_sample_bytes <= 0:
            raise PrepError(f"--max-sample-bytes must be positive, got {self.max_sample_bytes}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise PrepError(f"--val-fraction {self.val_fraction} and --test-fraction "
                            f"{self.test_fraction} must be >= 0 with a sum below 1")
        if self.order not in ("hash", "sorted"):
            raise PrepError(f"--order must be 'hash' or 'sorted', got {self.order!r}")
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


def resolve_media(files: List[InputFile], opts: PrepOptions) -> Optional[MediaSpec]:
    """The media spec for these files (None: raw bytes). ``auto``: images if every file has an
    image extension, audio if every file is .wav, raw bytes if none is either; a mix is an error
    naming one file of each kind."""
    if opts.media in ("image", "audio"):
        return opts.media_spec(opts.media)
    if opts.media == "none":
        return None
    example: Dict[str, str] = {}
    for f in files:
        example.setdefault(media_kind_of(f.path) or "other", f.path)
    if len(example) == 1 and "other" not in example:
        return opts.media_spec(next(iter(example)))
    if len(example) > 1:
        names = {"image": "images", "audio": "audio", "other": "other files"}
        found = ", ".join(f"{names[k]} ({v})" for k, v in sorted(example.items()))
        raise PrepError(f"--media auto: the inputs mix {found}; pass --media none to store every file's "
                        "bytes as they are, or --include/--exclude to prepare one kind at a time")
    return None

# --------------------------------------------------------------------------------------
# Work items, run in worker processes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A piece of reading: one chunk of a raw file, or a byte range of lines of a JSONL file."""

    file_index: int
    kind: str
    path: str
    start: int
    end: int
    size: int
    chunk: int = 0
    chunks: int = 1


@dataclass
class TaskResult:
    """Documents and problems found by one task, lines numbered from 1 within the task."""

    docs: List[Tuple[int, Optional[str], bytes]] = field(default_factory=list)
    bad: List[Tuple[str, int, str]] = field(default_factory=list)  # (kind, line or 0, message)
    lines: int = 0
    blank_lines: int = 0
    sample_rate: Optional[int] = None  # audio: the file's rate


def _read_raw(task: Task, res: TaskResult) -> None:
    try:
        with open(task.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != task.size:
                res.bad.append(("unreadable", 0, f"changed while being prepared ({task.size} bytes "
                                                 f"when listed, {size} now)"))
                return
            f.seek(task.start)
            data = f.read(task.end - task.start)
    except OSError as err:
        res.bad.append(("unreadable", 0, f"cannot read: {err.strerror or err}"))
        return
    if len(data) != task.end - task.start:
        res.bad.append(("unreadable", 0, f"changed while being read (expected {task.end - task.start} "
                                         f"bytes at offset {task.start}, got {len(data)})"))
        return
    res.docs.append((0, None, data))


def _read_media(task: Task, media: MediaSpec, res: TaskResult) -> None:
    """Read a whole image or WAV file and convert it (``data_prep.media``) to one document."""
    _read_raw(task, res)
    if res.bad:
        return
    data = res.docs.pop()[2]
    try:
        if media.kind == "image":
            res.docs.append((0, None, image_to_bytes(data, media)))
        else:
            payload, res.sample_rate = audio_to_bytes(data, media)
            res.docs.append((0, None, payload))
    except MediaError as err:
        res.bad.append((f"bad_{media.kind}", 0, str(err)))


def _parse_line(line: bytes, lineno: int, opts: PrepOptions, res: TaskResult) -> None:
    if not line.strip():
        res.blank_lines += 1
        return
    try:
        obj = json.loads(line)
    except UnicodeDecodeError as err:
        res.bad.append(("invalid_utf8", lineno, f"invalid UTF-8 at byte {err.start} of the line"))
        return
    except ValueError as err:
        res.bad.append(("malformed_json", lineno, f"malformed JSON: {err}"))
        return
    if not isinstance(obj, dict):
        res.bad.append(("malformed_json", lineno, f"not a JSON object but {type(obj).__name__}"))
        return
    field_ = opts.text_field
    if field_ not in obj:
        res.bad.append(("missing_field", lineno, f"no field {field_!r}"))
        return
    text = obj[field_]
    if not isinstance(text, str):
        res.bad.append(("missing_field", lineno, f"field {field_!r} is {type(text).__name__}, not a string"))
        return
    doc_id = None
    if opts.id_field is not None:
        if obj.get(opts.id_field) is None:
            res.bad.append(("missing_field", lineno, f"no id field {opts.id_field!r}"))
            return
        doc_id = str(obj[opts.id_field])
    try:
        payload = text.encode("utf-8")
    except UnicodeEncodeError as err:
        res.bad.append(("invalid_utf8", lineno, f"field {field_!r} is not valid UTF-8 (lone surrogate "
                                                f"{text[err.start]!r} at character {err.start})"))
        return
    if not payload:
        res.bad.append(("empty", lineno, f"empty document (field {field_!r} is empty)"))
        return
    res.docs.append((lineno, doc_id, payload))


def _read_jsonl(task: Task, opts: PrepOptions, res: TaskResult) -> None:
    try:
        if task.kind == "jsonl.gz":
            with gzip.open(task.path, "rb") as f:
                for line in f:
                    res.lines += 1
                    _parse_line(line, res.lines, opts, res)
            return
        with open(task.path, "rb") as f:
            # This range owns the lines that start inside [start, end).
            if task.start > 0:
                f.seek(task.start - 1)
                f.readline()
            pos = f.tell()
            while pos < task.end:
                line = f.readline()
                if not line:
                    break
                pos += len(line)
                res.lines += 1
                _parse_line(line, res.lines, opts, res)
    except (OSError, EOFError, zlib.error) as err:
        where = res.lines + 1
        res.bad.append(("unreadable", where, f"cannot read: {getattr(err, 'strerror', None) or err}"))


def run_batch(tasks: List[Task], opts: PrepOptions, media: Optional[MediaSpec] = None) -> List[TaskResult]:
    """Run a batch of tasks (in a worker process, or inline); ``media`` converts image/audio files."""
    out = []
    for task in tasks:
        res = TaskResult()
        if task.kind == "raw":
            _read_raw(task, res)
        elif task.kind in ("image", "audio"):
            assert media is not None
            _read_media(task, media, res)
        else:
            _read_jsonl(task, opts, res)
        out.append(res)
    return out


# --------------------------------------------------------------------------------------
# Planning and writing (main process)
# --------------------------------------------------------------------------------------


def _order_key(f: InputFile) -> Any:
    return hashlib.sha256(b"order:" + f.doc_id.encode("utf-8", "surrogateescape")).digest()


def select_files(files: List[InputFile], opts: PrepOptions) -> List[InputFile]:
    """The files to prepare, in processing order, up to ``max_bytes``."""
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


def make_tasks(files: List[InputFile], opts: PrepOptions, media: Optional[MediaSpec] = None) -> List[Task]:
    tasks: List[Task] = []
    for i, f in enumerate(files):
        if f.size <= 0:  # empty or vanished: reported by the main process, nothing to read
            continue
        if media is not None:  # the whole file, converted in the worker
            tasks.append(Task(i, media.kind, f.path, 0, f.size, f.size))
        elif f.kind == "raw":
            n = -(-f.size // opts.max_sample_bytes)
            for c in range(n):
                start = c * opts.max_sample_bytes
                tasks.append(Task(i, "raw", f.path, start, min(f.size, start + opts.max_sample_bytes),
                                  f.size, c, n))
        elif f.kind == "jsonl":
            for start in range(0, f.size, JSONL_TASK_BYTES):
                tasks.append(Task(i, "jsonl", f.path, start, min(f.size, start + JSONL_TASK_BYTES), f.size))
        else:
            tasks.append(Task(i, f.kind, f.path, 0, f.size, f.size))
    return tasks


def _batches(tasks: List[Task]) -> List[List[Task]]:
    out: List[List[Task]] = []
    cur: List[Task] = []
    size = 0
    for t in tasks:
        cur.append(t)
        size += t.end - t.start
        if size >= BATCH_BYTES or len(cur) >= 256:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


def fingerprint(inputs: Sequence[Path], files: List[InputFile], opts: PrepOptions,
                media: Optional[MediaSpec] = None) -> str:
    """Hash of everything the output depends on: options, input paths, every file's id/size/mtime,
    and the media spec. Without media, the media options do not change the output and are left
    out (so datasets prepared before they existed keep their fingerprint)."""
    options = asdict(opts)
    head: Dict[str, Any] = {"inputs": [str(Path(p).resolve()) for p in inputs]}
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


class _BadInputs:
    """Counts bad input; raises unless the kind is skipped."""

    def __init__(self, skip: Sequence[str], warn: Any) -> None:
        self.skip, self.warn = set(skip), warn
        self.counts: Dict[str, int] = {k: 0 for k in BAD_KINDS}
        self.examples: List[str] = []

    def report(self, kind: str, where: str, message: str) -> None:
        line = f"{where}: {message}"
        if kind not in self.skip:
            raise PrepError(f"{line} (pass --skip {kind} to skip such input)")
        line += f" [{kind}]"
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(line)
        if self.counts[kind] <= MAX_WARNINGS:
            self.warn(f"warning: skipped {line}")
        elif self.counts[kind] == MAX_WARNINGS + 1:
            self.warn(f"warning: further '{kind}' input is skipped silently here (counted in the manifest)")


def prepare(inputs: Sequence[Path], out_dir: Path, opts: PrepOptions = PrepOptions(), workers: int = 1,
            progress: bool = True, files: Optional[List[InputFile]] = None) -> Dict[str, Any]:
    """Shard ``inputs`` into ``out_dir``; return a summary (see the module docstring).

    ``files`` (from :func:`collect_inputs`) may be passed to reuse a listing.
    """
    from tqdm import tqdm

    opts.check()
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if files is None:
        files = collect_inputs(inputs, opts.include, opts.exclude)
    files = select_files(files, opts)
    if not files:
        raise PrepError(f"no input files in {', '.join(map(str, inputs))} "
                        f"(include {list(opts.include) or 'all'}, exclude {list(opts.exclude)})")
    media = resolve_media(files, opts)
    fp = fingerprint(inputs, files, opts, media)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = finished_manifest(out_dir, fp, "bytes")
    if existing is not None:
        return _summary(existing, out_dir, "unchanged", time.perf_counter() - t0)

    start_rewrite(out_dir)  # no manifest until every shard is in place
    total_bytes = sum(max(f.size, 0) for f in files)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="prep",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    bad = _BadInputs(opts.skip, lambda msg: tqdm.write(msg, file=sys.stderr))
    writers = {s: SplitWriter(out_dir, s, opts.shard_bytes) for s in SPLITS}
    state: Dict[str, Any] = {"docs": 0, "blank_lines": 0, "sample_rate": None}
    try:
        for f in files:  # file-level problems known before reading
            if f.size == 0:
                bad.report("empty", f.path, "empty file")
            elif f.size < 0:
                bad.report("unreadable", f.path, "vanished before it could be read")
        _run(files, make_tasks(files, opts, media), opts, workers, writers, bad, bar, state, media)
        records = [r for s in SPLITS for r in writers[s].close()]
    except BaseException:
        for w in writers.values():
            w.abort()
        bar.close()
        raise
    bar.close()
    if media is not None and media.kind == "audio":  # the rate every written file has
        media = MediaSpec(**{**asdict(media), "sample_rate": state["sample_rate"]})
    manifest = _manifest(inputs, files, opts, fp, records, bad, state["blank_lines"], media)
    write_manifest(out_dir, manifest)
    remove_stale(out_dir, keep=tuple(r.name for r in records))
    return _summary(manifest, out_dir, "written", time.perf_counter() - t0, total_bytes)


def _run(files: List[InputFile], tasks: List[Task], opts: PrepOptions, workers: int,
         writers: Dict[str, SplitWriter], bad: _BadInputs, bar: Any, state: Dict[str, Any],
         media: Optional[MediaSpec] = None) -> None:
    """Run the tasks (in order) and write their documents."""
    line_base = [0] * len(files)
    file_found = [0] * len(files)  # documents + problems seen per JSONL file
    skipped_file = -1  # a raw file whose first chunk failed: its later chunks are dropped with it
    batches = _batches(tasks)

    def handle(batch: List[Task], results: List[TaskResult]) -> None:
        nonlocal skipped_file
        for task, res in zip(batch, results):
            f = files[task.file_index]
            base = line_base[task.file_index]
            if task.kind in ("image", "audio"):
                _write_media(f, res, opts, writers, bad, state)
            elif task.kind == "raw":
                if task.file_index == skipped_file:
                    continue
                if res.bad:
                    kind, _, msg = res.bad[0]
                    if task.chunk > 0:
                        raise PrepError(f"{f.path}: {msg} after {task.chunk} of {task.chunks} chunks "
                                        "were written (cannot skip a partly written document)")
                    bad.report(kind, f.path, msg)
                    skipped_file = task.file_index
                    continue
                w = writers[split_of(f.doc_id, opts.val_fraction, opts.test_fraction)]
                w.write_chunk(f.doc_id, task.chunk, task.chunks, res.docs[0][2])
                if task.chunk == task.chunks - 1:
                    w.end_document()
                    state["docs"] += 1
            else:
                for kind, line, msg in res.bad:
                    bad.report(kind, f"{f.path}:{base + line}" if line else f.path, msg)
                for line, given_id, payload in res.docs:
                    doc_id = given_id if given_id is not None else f"{f.doc_id}:{base + line}"
                    w = writers[split_of(doc_id, opts.val_fraction, opts.test_fraction)]
                    chunks = split_payload(payload, opts.max_sample_bytes)
                    for c, part in enumerate(chunks):
                        w.write_chunk(doc_id, c, len(chunks), part)
                    w.end_document()
                    state["docs"] += 1
                line_base[task.file_index] += res.lines
                state["blank_lines"] += res.blank_lines
                file_found[task.file_index] += len(res.docs) + len(res.bad)
                if task.end >= task.size and not file_found[task.file_index]:
                    bad.report("empty", f.path, "no documents (only blank lines)")
            bar.update(task.end - task.start)
        bar.set_postfix(docs=state["docs"], refresh=False)

    if workers <= 1:
        for batch in batches:
            handle(batch, run_batch(batch, opts, media))
        return
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        it = iter(batches)

        def submit() -> None:
            batch = next(it, None)
            if batch is not None:
                pending.append((batch, pool.apply_async(run_batch, (batch, opts, media))))

        for _ in range(3 * workers):  # bounded look-ahead keeps memory bounded
            submit()
        while pending:
            batch, result = pending.popleft()
            results = result.get()
            submit()
            handle(batch, results)


def _write_media(f: InputFile, res: TaskResult, opts: PrepOptions, writers: Dict[str, SplitWriter],
                 bad: _BadInputs, state: Dict[str, Any]) -> None:
    """Write one converted image / audio file as one document (or report why it is bad)."""
    if res.bad:
        kind, _, msg = res.bad[0]
        bad.report(kind, f.path, msg)
        return
    if res.sample_rate is not None:
        if state["sample_rate"] is None:
            state["sample_rate"], state["rate_file"] = res.sample_rate, f.path
        elif res.sample_rate != state["sample_rate"]:
            bad.report("bad_audio", f.path, f"sample rate {res.sample_rate} Hz, but {state['rate_file']} "
                       f"has {state['sample_rate']} Hz (no resampling is done: convert the files, or "
                       "pass --audio-sample-rate)")
            return
    payload = res.docs[0][2]
    w = writers[split_of(f.doc_id, opts.val_fraction, opts.test_fraction)]
    chunks = split_payload(payload, opts.max_sample_bytes)
    for c, part in enumerate(chunks):
        w.write_chunk(f.doc_id, c, len(chunks), part)
    w.end_document()
    state["docs"] += 1


def _manifest(inputs: Sequence[Path], files: List[InputFile], opts: PrepOptions, fp: str,
              records: List[Any], bad: _BadInputs, blank_lines: int,
              media: Optional[MediaSpec] = None) -> Dict[str, Any]:
    splits = {}
    for s in SPLITS:
        recs = [r for r in records if r.split == s]
        n_bytes = sum(r.bytes for r in recs)
        splits[s] = {"docs": sum(r.docs for r in recs), "bytes": n_bytes, "tokens": n_bytes,
                     "samples": sum(r.samples for r in recs), "shards": len(recs),
                     "bytes_per_token": 1.0}
    kinds: Dict[str, int] = {}
    for f in files:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    return {
        "format": FORMAT, "version": VERSION, "kind": "bytes", "created_by": "data_prep.bytes",
        "fingerprint": fp,
        "options": {**asdict(opts), "include": list(opts.include), "exclude": list(opts.exclude),
                    "skip": list(opts.skip)},
        "sources": {"inputs": [str(Path(p).resolve()) for p in inputs], "files": len(files),
                    "bytes": sum(max(f.size, 0) for f in files), "file_kinds": kinds},
        "splits": splits,
        "shards": [r.as_dict() for r in records],
        "bad_input": {"counts": dict(bad.counts), "examples": bad.examples},
        "blank_lines": blank_lines,
        "media": media.as_dict() if media is not None else None,
    }


def _summary(manifest: Dict[str, Any], out_dir: Path, status: str, seconds: float,
             input_bytes: Optional[int] = None) -> Dict[str, Any]:
    out = {"status": status, "output": str(out_dir), "manifest": str(out_dir / MANIFEST),
           "input_files": manifest["sources"]["files"], "input_bytes": manifest["sources"]["bytes"],
           "seconds": round(seconds, 3),
           "splits": {s: {k: v[k] for k in ("docs", "bytes", "samples", "shards")}
                      for s, v in manifest["splits"].items()},
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
    p.add_argument("--id-field", default=None, help="JSONL field holding a document id (default: file:line)")
    p.add_argument("--shard-bytes", type=parse_size, default=64 << 20, help="target shard size (64MiB)")
    p.add_argument("--max-sample-bytes", type=parse_size, default=16 << 20,
                   help="larger documents are stored as numbered chunks of this size (16MiB)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of documents for val (0.05)")
    p.add_argument("--test-fraction", type=float, default=0.0, help="share of documents for test (0)")
    p.add_argument("--order", choices=["hash", "sorted"], default="hash",
                   help="file order in the shards: by a hash of the id (mixes shards; default) or sorted")
    p.add_argument("--max-bytes", type=parse_size, default=None, help="stop after this many input bytes")
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
                       audio_sample_rate=args.audio_sample_rate)
    opts.check()
    return inputs, opts


def describe(summary: Dict[str, Any]) -> str:
    return f"{summary['status']}: {summary['output']}: " + ", ".join(
        f"{k} {v['docs']} docs / {v['bytes'] / 1e6:.1f} MB / {v['shards']} shards"
        for k, v in summary["splits"].items())


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.bytes", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="output directory (shards + manifest.json)")
    add_prep_args(p)
    args = p.parse_args(argv)
    try:
        inputs, opts = inputs_and_options(args)
        summary = prepare(inputs, args.output, opts, workers=args.workers, progress=not args.no_progress)
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
