"""SentencePiece for the subword baseline: train a lossless tokenizer, write token shards.

    python -m data_prep.tokenizer --output runs/tokenizer/stdlib --dataset data/stdlib \
        --vocab-size 8000 --tokens-output data/stdlib-sp8k
    python -m data_prep.tokenizer --model runs/tokenizer/stdlib.model --dataset data/other \
        --tokens-output data/other-sp8k

Training (``--output PREFIX``) reads the train split of a dataset prepared by
``python -m data_prep.bytes`` (``--dataset``), or a directory of files (``--input``; default:
Python's stdlib). Settings that make encode/decode an exact round trip of UTF-8 text:
``byte_fallback`` (any character outside the vocabulary becomes byte pieces), identity
normalization, no dummy prefix, no whitespace removal, and the whitespace marker ``▁`` always in
the vocabulary (a sample without a space would leave it out, and a space would then be encoded
as the byte pieces of a literal ``▁``). SentencePiece *silently skips* training
lines longer than ``max_sentence_length``; here long lines are split into pieces of at most that
many bytes (at character boundaries) and counted, never dropped. Training reads a capped,
shuffled sample (``input_sentence_size``) so memory stays bounded on large corpora.

``--tokens-output DIR`` then tokenizes every split of ``--dataset`` into token shards (one per
source shard; samples hold little-endian piece ids plus the exact byte count of their text)
with a manifest recording bytes per token per split. Every document is checked to decode back
to its exact bytes. Bytes that are not valid UTF-8 (a Latin-1 file in a UTF-8 corpus, binary
data) are encoded as their byte-fallback pieces, exactly and with the byte count unchanged; such
documents are counted in the manifest (``non_utf8``) and summarized in one line.
``--skip invalid_utf8`` leaves them out instead (counted). Re-running with the same inputs and
options is a no-op: training is skipped when ``PREFIX.json`` records the same fingerprint (the
dataset's manifest fingerprint and shard sha256s, or every input file's path, size and mtime,
plus the options) and ``PREFIX.model`` is the model it records; token shards likewise. Results
are one JSON object on stdout (``"status"``: ``written`` or ``unchanged``); progress and logs go
to stderr. Errors (bad options, a malformed manifest, a document that does not round-trip) are
one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from data_prep.remote import Location
from data_prep.vocab import SPACE_SYMBOL  # always kept in the vocabulary (see train_sentencepiece)

MAX_SENTENCE_BYTES = 4192  # SentencePiece's default max_sentence_length
META_PIECES = 257  # <unk> and the 256 byte-fallback pieces
MIN_VOCAB_SIZE = META_PIECES + 1  # ... and the whitespace marker
TRAINER_VERSION = 2  # recorded in PREFIX.json's fingerprint: 2 keeps the whitespace marker
TRAINING_SAMPLE_BYTES = 20_000_000  # default byte cap of the training sample of a dataset
READ_FACTOR = 8  # a shard is read at most this many times past the documents it gives the sample


@dataclass
class TokenizerStats:
    """What went into training: lines seen, long lines split, lines sampled."""

    lines: int = 0
    long_lines_split: int = 0
    pieces_from_long_lines: int = 0
    sampled: int = 0
    invalid_utf8_documents: int = 0


def split_long_line(line: str, max_bytes: int) -> List[str]:
    """Cut ``line`` into pieces of at most ``max_bytes`` UTF-8 bytes at character boundaries."""
    out, cur, size = [], [], 0
    for ch in line:
        n = len(ch.encode("utf-8"))
        if size + n > max_bytes and cur:
            out.append("".join(cur))
            cur, size = [], 0
        cur.append(ch)
        size += n
    if cur:
        out.append("".join(cur))
    return out


def training_lines(documents: Iterable[bytes], stats: TokenizerStats,
                   max_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Lines of the documents, long ones split (and counted). Non-UTF-8 documents are counted
    and decoded with replacement (the tokenizer only needs statistics from them)."""
    for doc in documents:
        try:
            text = doc.decode("utf-8")
        except UnicodeDecodeError:
            stats.invalid_utf8_documents += 1
            text = doc.decode("utf-8", errors="replace")
        for line in text.splitlines():
            if not line:
                continue
            stats.lines += 1
            if len(line.encode("utf-8")) > max_bytes:
                parts = split_long_line(line, max_bytes)
                stats.long_lines_split += 1
                stats.pieces_from_long_lines += len(parts)
                yield from parts
            else:
                yield line


def sample_train_documents(dataset: Any, max_bytes: int = TRAINING_SAMPLE_BYTES, seed: int = 0,
                           progress: bool = False) -> Iterator[bytes]:
    """About ``max_bytes`` of documents drawn across the WHOLE train split of a prepared dataset
    (``dataset``: a directory or any location :mod:`data_prep.remote` opens), not its first bytes.

    The rule, a pure function of the manifest and ``seed``:

    1. ``f = min(1, max_bytes / train bytes)``; ``n = max(1, round(f * D))`` documents are drawn,
       ``D`` being the split's document count (the manifest's per-shard ``docs``).
    2. Systematic sample over the split's documents in manifest order: document ``floor((j + u) *
       D / n)`` for ``j < n``, ``u`` uniform in [0, 1) from ``seed``. So every part of the split,
       first shard to last, is represented in proportion to its documents; with ``n >= `` the
       shard count every shard contributes.
    3. Within a shard given ``q`` documents, they are taken at a seeded stride (offset from
       ``seed`` and the shard's name) from its first ``min(docs, READ_FACTOR * q)`` documents, so
       the bytes read stay within about ``READ_FACTOR`` times the sample; and a shard stops once
       it gave its share of ``max_bytes`` (its bytes / train bytes), after at least one document.
       The sample thus stays under ``max_bytes`` plus one document per contributing shard.
    """
    import numpy as np
    from tqdm import tqdm

    from data_prep.remote import join
    from data_prep.shards import iter_shard_documents, read_manifest, shard_records

    manifest = read_manifest(dataset)
    recs = [r for r in shard_records(manifest, "train") if r["docs"] > 0]
    total_docs, total_bytes = sum(r["docs"] for r in recs), sum(r["bytes"] for r in recs)
    if not recs:
        return
    n = max(1, round(min(1.0, max_bytes / max(total_bytes, 1)) * total_docs))
    u = random.Random(f"sample:{seed}").random()
    drawn = np.floor((np.arange(n) + u) * (total_docs / n)).astype(np.int64)
    starts = np.cumsum([0] + [r["docs"] for r in recs])
    picks = np.bincount(np.searchsorted(starts, drawn, side="right") - 1, minlength=len(recs))
    bar = tqdm(total=int((picks > 0).sum()), desc="tokenizer sample: shards", unit="shard",
               disable=not progress, file=sys.stderr)
    for rec, q in zip(recs, picks.tolist()):
        if q == 0:
            continue
        window = min(rec["docs"], READ_FACTOR * q)
        offset = random.Random(f"sample:{seed}:{rec['name']}").random()
        chosen = {int((j + offset) * window / q) for j in range(q)}
        budget, given = max_bytes * rec["bytes"] / max(total_bytes, 1), 0
        docs = iter_shard_documents(join(dataset, rec["name"]), manifest["kind"], rec["samples"])
        last = max(chosen)
        for i, (_, payload, _) in enumerate(docs):
            if i not in chosen:
                if i > last:
                    break
                continue
            if given >= budget:  # its share given (the last document may cross it)
                break
            given += len(payload)
            yield payload
        docs.close()
        bar.update(1)
    bar.close()


def train_sentencepiece(documents: Iterable[bytes], output_prefix: Path, vocab_size: int = 8000,
                        model_type: str = "bpe", sample_lines: int = 2_000_000,
                        seed: int = 0) -> TokenizerStats:
    """Train ``{output_prefix}.model`` / ``.vocab`` on a shuffled sample of the documents' lines,
    with one SentencePiece thread per CPU (``os.cpu_count()``).

    ``documents`` are all used (lines reservoir-sampled down to ``sample_lines``); to train on a
    prepared dataset pass :func:`sample_train_documents`, which draws about a byte cap's worth
    across the whole train split (every shard contributes) instead of its first bytes. The
    whitespace marker ``▁`` is always in the vocabulary (``required_chars``), so a space encodes
    as ``▁`` even when the sample has none. A ``vocab_size`` too small for the 256 byte pieces,
    ``<unk>`` and every distinct character of the sample is a :class:`ValueError` saying so.
    """
    import sentencepiece as spm

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} is too small: at least {MIN_VOCAB_SIZE} (256 byte "
                         f"pieces, <unk> and {SPACE_SYMBOL!r})")
    stats = TokenizerStats()
    # Reservoir sample, so memory is bounded by sample_lines whatever the corpus size.
    rng = random.Random(seed)
    sample: List[str] = []
    for i, line in enumerate(training_lines(documents, stats)):
        if len(sample) < sample_lines:
            sample.append(line)
        else:
            j = rng.randint(0, i)
            if j < sample_lines:
                sample[j] = line
    stats.sampled = len(sample)
    if not sample:
        raise ValueError("no text lines to train the tokenizer on")
    # SentencePiece keeps every character (coverage 1.0; spaces are the marker; NUL is not kept).
    chars = len((set("".join(sample).replace(" ", SPACE_SYMBOL)) | {SPACE_SYMBOL}) - {"\x00"})
    if vocab_size < META_PIECES + chars:
        raise ValueError(f"vocab_size {vocab_size} is too small for this sample: 256 byte pieces, <unk> "
                         f"and its {chars} distinct characters need at least {META_PIECES + chars}")
    output_prefix = Path(output_prefix)
    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample), model_prefix=str(output_prefix), vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, max_sentence_length=MAX_SENTENCE_BYTES,
        input_sentence_size=sample_lines, shuffle_input_sentence=True, character_coverage=1.0,
        required_chars=SPACE_SYMBOL, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, hard_vocab_limit=False,
        num_threads=os.cpu_count() or 1, minloglevel=2)
    return stats


# --------------------------------------------------------------------------------------
# Token shards
# --------------------------------------------------------------------------------------


class TokenizeError(RuntimeError):
    """Tokenizing a dataset failed; the message names the shard and document."""


_VOCABS: Dict[str, Any] = {}


def _vocab(model_path: str) -> Any:
    from data_prep.vocab import SentencePieceVocab

    if model_path not in _VOCABS:
        _VOCABS[model_path] = SentencePieceVocab(model_path)
    return _VOCABS[model_path]


def _tokenize_shard(src: str, out_dir: str, name: str, split: str, first_index: int, model_path: str,
                    dtype: str, max_sample_bytes: int, skip_invalid: bool, samples: int
                    ) -> Tuple[Optional[Dict[str, Any]], List[str], int, List[str]]:
    """Tokenize one byte shard into a token shard of the same name (run in a worker process).

    Returns (shard record or None when no document was left, skipped-document messages, source
    bytes read, ids of the documents kept that are not valid UTF-8).
    """
    import numpy as np

    from data_prep.shards import SplitWriter, iter_shard_documents, parse_shard_name, split_payload

    vocab = _vocab(model_path)
    np_dtype = np.dtype("<u2") if dtype == "uint16" else np.dtype("<u4")
    task = parse_shard_name(name)[1]  # type: ignore[index]  # same name as the byte shard, task included
    writer = SplitWriter(Path(out_dir), split, target_bytes=1 << 62, kind="tokens", first_index=first_index,
                         task=task)
    skipped: List[str] = []
    non_utf8: List[str] = []
    read = 0
    try:
        for doc_id, payload, _ in iter_shard_documents(src, "bytes", samples):
            read += len(payload)
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError as err:
                if skip_invalid:
                    skipped.append(f"shard {src}: document {doc_id!r}: not valid UTF-8 at byte "
                                   f"{err.start}")
                    continue
                non_utf8.append(doc_id)  # its odd bytes become byte pieces (exact)
            ids = vocab.encode(payload)
            decoded = vocab.decode(ids)
            if decoded != payload:
                raise TokenizeError(f"shard {src}: document {doc_id!r}: tokenization is not lossless "
                                    f"with {model_path}: {vocab.round_trip_problem(payload, decoded)}")
            data = np.asarray(ids, dtype=np_dtype).tobytes()
            chunks = split_payload(data, max_sample_bytes, np_dtype.itemsize)
            for c, part in enumerate(chunks):
                writer.write_chunk(doc_id, c, len(chunks), part, extra={"doc_bytes": len(payload)},
                                   tokens=len(part) // np_dtype.itemsize)
            writer.end_document(doc_bytes=len(payload))
        records = writer.close()
    except BaseException:
        writer.abort()
        raise
    assert len(records) <= 1 and (not records or records[0].name == name), (records, name)
    return (records[0].as_dict() if records else None), skipped, read, non_utf8


def _tokenize_task(args: Tuple) -> Tuple[Optional[Dict[str, Any]], List[str], int, List[str]]:
    return _tokenize_shard(*args)


def dataset_identity(manifest: Dict[str, Any]) -> List[Any]:
    """What a dataset's derived outputs (a tokenizer, token shards) depend on: its manifest's
    fingerprint and every shard's sha256. Part of their fingerprints."""
    return [manifest["fingerprint"], [r["sha256"] for r in manifest["shards"]]]


def _max_sample_bytes(src: Dict[str, Any], dataset: Location) -> int:
    """The byte dataset's ``options.max_sample_bytes`` (token shards chunk alike)."""
    from data_prep.remote import join
    from data_prep.shards import MANIFEST, ManifestError

    options = src.get("options")
    value = options.get("max_sample_bytes") if isinstance(options, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ManifestError(f"{join(dataset, MANIFEST)}: field 'options.max_sample_bytes' is "
                            f"{value!r}, not a positive size (damaged manifest: prepare the dataset again)")
    return value


def tokenize_dataset(dataset: Location, model_path: Path, out_dir: Path, workers: int = 1,
                     skip_invalid_utf8: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Write token shards of every split of the byte dataset ``dataset`` (a directory or any
    location :mod:`data_prep.remote` reads) into ``out_dir``."""
    import time

    from data_prep.remote import is_remote, join
    from data_prep.shards import (
        FORMAT,
        VERSION,
        finished_manifest,
        parse_shard_name,
        read_manifest,
        remove_stale,
        sha256_file,
        start_rewrite,
        write_manifest,
    )
    from data_prep.vocab import SentencePieceVocab

    t0 = time.perf_counter()
    src = read_manifest(dataset)
    if src["kind"] != "bytes":
        raise TokenizeError(f"{dataset}: holds {src['kind']} shards; tokenize a byte dataset "
                            "(python -m data_prep.bytes)")
    model_path = Path(model_path).resolve()
    vocab = SentencePieceVocab(model_path)
    dtype = "uint16" if vocab.vocab_size <= 1 << 16 else "uint32"
    tok_sha = sha256_file(model_path)
    max_sample = _max_sample_bytes(src, dataset)
    options = {"skip": ["invalid_utf8"] if skip_invalid_utf8 else [], "dtype": dtype,
               "max_sample_bytes": max_sample}
    fp = hashlib.sha256(json.dumps([*dataset_identity(src), tok_sha, options],
                                   sort_keys=True).encode()).hexdigest()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = finished_manifest(out_dir, fp, "tokens")
    if old is not None:
        return _token_summary(old, out_dir, "unchanged", time.perf_counter() - t0)
    start_rewrite(out_dir)  # no manifest until every shard is in place

    tasks = [(join(dataset, rec["name"]), str(out_dir), rec["name"], rec["split"],
              parse_shard_name(rec["name"])[2], str(model_path), dtype, max_sample,  # type: ignore[index]
              skip_invalid_utf8, rec["samples"]) for rec in src["shards"]]  # names checked: ours
    records, skipped, non_utf8 = _run_tasks(tasks, workers, sum(r["bytes"] for r in src["shards"]),
                                            progress)
    if non_utf8:
        print(f"note: {len(non_utf8)} document(s) are not valid UTF-8 (e.g. {non_utf8[0]!r}); their "
              "invalid bytes are encoded as byte-fallback pieces, exactly", file=sys.stderr)
    manifest = {
        "format": FORMAT, "version": VERSION, "kind": "tokens", "created_by": "data_prep.tokenizer",
        "fingerprint": fp, "dtype": dtype, "options": options,
        "tokenizer": {"path": str(model_path), "sha256": tok_sha, "pieces": vocab.sp.get_piece_size(),
                      "vocab_size": vocab.vocab_size},
        "source": {"path": str(dataset) if is_remote(dataset) else str(Path(dataset).resolve()),
                   "fingerprint": src["fingerprint"]},
        "splits": _split_stats(records), "shards": records,
        "bad_input": {"counts": {"invalid_utf8": len(skipped)}, "examples": skipped[:100]},
        "non_utf8": {"documents": len(non_utf8), "examples": non_utf8[:100]},
    }
    write_manifest(out_dir, manifest)
    remove_stale(out_dir, keep=tuple(r["name"] for r in records))
    return _token_summary(manifest, out_dir, "written", time.perf_counter() - t0)


def _run_tasks(tasks: List[Tuple], workers: int, total_bytes: int, progress: bool
               ) -> Tuple[List[Dict[str, Any]], List[str], List[str]]:
    """Tokenize every shard (in a pool when ``workers`` > 1): shard records, skipped documents
    and the ids of kept documents that are not valid UTF-8."""
    import multiprocessing

    from tqdm import tqdm

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               desc="tokenize", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    records: List[Dict[str, Any]] = []
    skipped: List[str] = []
    non_utf8: List[str] = []

    def take(result: Tuple[Optional[Dict[str, Any]], List[str], int, List[str]]) -> None:
        rec, skip, read, odd = result
        non_utf8.extend(odd)
        if rec is not None:
            records.append(rec)
        for msg in skip:
            if len(skipped) < 20:
                tqdm.write(f"warning: skipped {msg}", file=sys.stderr)
            skipped.append(msg)
        bar.update(read)

    try:
        if workers <= 1:
            for t in tasks:
                take(_tokenize_task(t))
        else:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                              else "spawn")
            with ctx.Pool(workers) as pool:
                for result in pool.imap(_tokenize_task, tasks):
                    take(result)
    finally:
        bar.close()
    return records, skipped, non_utf8


def _split_stats(records: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Documents, bytes, tokens, samples, shards and bytes per token of each split."""
    from data_prep.shards import SPLITS

    splits = {}
    for s in SPLITS:
        recs = [r for r in records if r["split"] == s]
        n_bytes, n_tokens = sum(r["bytes"] for r in recs), sum(r["tokens"] for r in recs)
        splits[s] = {"docs": sum(r["docs"] for r in recs), "bytes": n_bytes, "tokens": n_tokens,
                     "samples": sum(r["samples"] for r in recs), "shards": len(recs),
                     "bytes_per_token": round(n_bytes / n_tokens, 6) if n_tokens else None}
    return splits


def _token_summary(manifest: Dict[str, Any], out_dir: Path, status: str, seconds: float) -> Dict[str, Any]:
    """The JSON result of :func:`tokenize_dataset`; splits in train, val, test order (a manifest
    read back has its keys sorted)."""
    from data_prep.shards import SPLITS

    splits = manifest["splits"]
    return {"status": status, "output": str(out_dir), "seconds": round(seconds, 3),
            "splits": {s: {k: splits[s][k] for k in ("docs", "bytes", "tokens", "shards", "bytes_per_token")}
                       for s in SPLITS if s in splits},
            "bad_input": manifest["bad_input"]["counts"],
            "non_utf8_documents": manifest.get("non_utf8", {}).get("documents", 0)}


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _count_at_least(least: int, what: str) -> Any:
    """An argparse type: an integer >= ``least`` (``what`` says why, in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least} ({what}), got {value}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    from data_prep.bytes import parse_size  # the size parser of every data_prep command

    parser = argparse.ArgumentParser(prog="python -m data_prep.tokenizer",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--output", type=Path,
                      help="train a tokenizer: writes PREFIX.model, PREFIX.vocab, PREFIX.json")
    what.add_argument("--model", type=Path, help="use this trained .model instead of training one")
    src = parser.add_mutually_exclusive_group()
    # A string, not a Path: a Path collapses the // of a URL (file://, http://, s3://).
    src.add_argument("--dataset", default=None,
                     help="a dataset prepared by python -m data_prep.bytes: a directory or a location "
                          "data_prep.remote reads (URL, pipe:COMMAND); trains on its train split")
    src.add_argument("--input", type=Path, default=None,
                     help="directory of text files to train on (default: Python's stdlib .py files)")
    parser.add_argument("--vocab-size", type=_count_at_least(MIN_VOCAB_SIZE, "256 byte pieces, <unk> "
                                                             f"and {SPACE_SYMBOL!r}"), default=8000)
    parser.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    parser.add_argument("--max-bytes", type=parse_size, default=TRAINING_SAMPLE_BYTES,
                        help="train on about this many corpus bytes, e.g. 20M (with --dataset: drawn "
                             "across the whole train split, every shard contributing; see "
                             "sample_train_documents)")
    parser.add_argument("--sample-lines", type=_count_at_least(1, "lines"), default=2_000_000,
                        help="train on a random sample of at most this many lines")
    parser.add_argument("--tokens-output", type=Path, default=None,
                        help="write token shards of every split of --dataset into this directory")
    parser.add_argument("--skip", action="append", default=[], choices=["invalid_utf8"],
                        help="leave out (warn and count) documents that are not valid UTF-8 "
                             "(default: encode their invalid bytes as byte-fallback pieces)")
    parser.add_argument("--workers", type=_count_at_least(1, "processes"),
                        default=min(4, os.cpu_count() or 1),
                        help="tokenizer processes for --tokens-output (default: min(4, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _training_source(args: argparse.Namespace) -> Tuple[List[Any], Dict[str, Any], Iterable[bytes]]:
    """(what the tokenizer depends on, what PREFIX.json says it was trained on, the documents: a
    generator, read only if iterated) for ``--dataset`` (:func:`dataset_identity`; documents
    drawn across the whole train split, not its first bytes) or the files of ``--input`` / the
    stdlib (each file's path, size and mtime)."""
    from data_prep.shards import read_manifest
    from data_prep.sources import list_files, read_documents, stdlib_dir, stdlib_files

    if args.dataset is not None:
        manifest = read_manifest(args.dataset)
        docs = sample_train_documents(args.dataset, args.max_bytes, progress=not args.no_progress)
        return (dataset_identity(manifest), {"trained_on": str(args.dataset),
                                             "source_fingerprint": manifest["fingerprint"]}, docs)
    root = args.input or stdlib_dir()
    files = list_files(root) if args.input else stdlib_files()
    identity = [str(root.resolve()), [[f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns]
                                      for f in files for st in [f.stat()]]]
    docs = (data for _, data in read_documents(root, files, args.max_bytes))
    return identity, {"trained_on": str(root)}, docs


def train_unless_unchanged(prefix: Path, identity: List[Any], source: Dict[str, Any],
                           docs: Iterable[bytes], vocab_size: int, model_type: str,
                           sample_lines: int, sample_bytes: int) -> Dict[str, Any]:
    """Train ``PREFIX.model`` on ``docs`` unless ``PREFIX.json`` records the same fingerprint
    (``identity``: what the sources are, the options, :data:`TRAINER_VERSION`) and
    ``PREFIX.model`` is the model it records: then nothing is done (``"status": "unchanged"``;
    ``docs`` is not read). What ``data_prep.tokenizer`` and ``data_prep.prepare`` both use."""
    from data_prep.atomic import atomic_write_bytes
    from data_prep.shards import sha256_file

    options = {"vocab_size": vocab_size, "model_type": model_type, "sample_lines": sample_lines,
               "sample_bytes": sample_bytes}
    fp = hashlib.sha256(json.dumps([TRAINER_VERSION, identity, options], sort_keys=True).encode()).hexdigest()
    model, record = Path(f"{prefix}.model"), Path(f"{prefix}.json")
    try:
        old = json.loads(record.read_text("utf-8"))
    except (OSError, ValueError):
        old = None
    if (isinstance(old, dict) and old.get("fingerprint") == fp and model.is_file()
            and old.get("model_sha256") == sha256_file(model)):
        return {**old, "status": "unchanged"}
    stats = train_sentencepiece(docs, Path(prefix), vocab_size, model_type, sample_lines)
    summary = {"model": str(model), **source, **options, "fingerprint": fp,
               "model_sha256": sha256_file(model), **asdict(stats)}
    atomic_write_bytes(record, (json.dumps(summary, indent=2) + "\n").encode())
    return {**summary, "status": "written"}


def train_cli(args: argparse.Namespace) -> Dict[str, Any]:
    """Train ``PREFIX.model`` as the command line says (:func:`train_unless_unchanged`)."""
    identity, source, docs = _training_source(args)
    return train_unless_unchanged(args.output, identity, source, docs, args.vocab_size,
                                  args.model_type, args.sample_lines, args.max_bytes)


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    from data_prep.shards import ManifestError, ShardError

    if args.tokens_output is not None and args.dataset is None:
        parser.error("--tokens-output needs --dataset")
    if args.model is not None and args.tokens_output is None:
        parser.error("--model is only useful with --dataset and --tokens-output")
    try:
        if args.output is not None:
            summary = train_cli(args)
            model = Path(summary["model"])
        else:
            model = args.model
            summary = {"model": str(model)}
        if args.tokens_output is not None:
            summary["tokens"] = tokenize_dataset(args.dataset, model, args.tokens_output, args.workers,
                                                 "invalid_utf8" in args.skip, not args.no_progress)
    except (OSError, ValueError, RuntimeError, ManifestError, ShardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
