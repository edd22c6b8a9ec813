"""Check a prepared dataset against its manifest before a long run reads it.

    python -m data_prep.verify data/stdlib
    python -m data_prep.verify https://host/datasets/web-v2 --workers 8

For every shard the manifest lists (all splits, in manifest order; names come from the manifest,
never from a directory listing): it exists, has the recorded size, its sha256 matches, it reads
as a tar of well-formed samples (every payload's crc32 checked against its key), and it holds the
recorded numbers of samples and documents. DIR may be a local directory or any location the
training loader reads (``file://``, ``http(s)://``, ``pipe:COMMAND``, ``s3://`` / ``gs://``
through fsspec; see :mod:`data_prep.remote`). A shard that cannot be read to its end (a timeout,
a broken connection, a failing command) is reported as that, with the bytes that did arrive.

Exit status: 0 when every shard is good (one summary line on stdout); 1 at the first bad shard
in manifest order (one line on stderr naming it and what is wrong; later shards are not
checked); 2 when the manifest is missing or invalid (one line naming the file and the field).
Progress (bytes checked) goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Dict, List, Optional, Tuple

from data_prep.remote import Location, RemoteError, join, open_stream, size_of
from data_prep.shards import (
    SPLITS,
    ManifestError,
    ShardError,
    iter_shard_raw,
    parse_key,
    read_manifest,
)

# --------------------------------------------------------------------------------------
# Checking shards
# --------------------------------------------------------------------------------------


@dataclass
class ShardCheck:
    """The outcome for one shard: ``problems`` is empty when it matches the manifest."""

    name: str
    location: str
    problems: List[str]
    bytes_read: int = 0


class _HashingReader:
    """Passes reads through while computing sha256 and size (and moving a progress bar); keeps
    the first error of the location itself (timeout, broken connection, failing command)."""

    def __init__(self, f: BinaryIO, bar: Any) -> None:
        self.f, self.bar, self.sha, self.size = f, bar, hashlib.sha256(), 0
        self.error: Optional[str] = None  # its message as raised (webdataset appends to it later)

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.f.read(n)
        except RemoteError as err:
            self.error = self.error or str(err)
            raise
        self.sha.update(data)
        self.size += len(data)
        if self.bar is not None:
            self.bar.update(len(data))
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def check_shard(directory: Location, rec: Dict[str, Any], kind: str, bar: Any = None) -> ShardCheck:
    """Check one shard against its manifest record (see the module docstring)."""
    out = ShardCheck(str(rec.get("name")), str(directory), [])
    try:
        loc = out.location = join(directory, rec["name"])
        size = size_of(loc)  # local only: a cheap first check before reading
        stream = open_stream(loc)
    except FileNotFoundError:
        out.problems.append("missing (listed in the manifest)")
        return out
    except RemoteError as err:
        out.problems.append(f"cannot open: {str(err).removeprefix(out.location + ': ')}")
        return out
    except OSError as err:
        out.problems.append(f"cannot open: {err.strerror or err}")
        return out
    if size is not None and size != rec["file_bytes"]:
        out.problems.append(f"{size} bytes but the manifest says {rec['file_bytes']} (truncated or replaced)")
        stream.close()
        return out
    with stream:
        reader = _HashingReader(stream, bar)
        samples, docs, tar_problem = _read_tar(loc, kind, reader)
    out.bytes_read = reader.size
    if reader.error is not None:  # the location failed: size and sha256 are unknown, not wrong
        out.problems.append(tar_problem or f"cannot read: {reader.error.removeprefix(loc + ': ')}")
        return out
    if reader.size != rec["file_bytes"]:
        out.problems.append(f"{reader.size} bytes but the manifest says {rec['file_bytes']} "
                            "(truncated or replaced)")
    elif reader.sha.hexdigest() != rec["sha256"]:
        out.problems.append(f"sha256 {reader.sha.hexdigest()[:16]}... but the manifest says "
                            f"{rec['sha256'][:16]}... (content changed)")
    if tar_problem:
        out.problems.append(tar_problem)
    elif samples != rec["samples"]:
        out.problems.append(f"{samples} samples but the manifest says {rec['samples']}")
    elif docs != rec["docs"]:
        out.problems.append(f"{docs} documents but the manifest says {rec['docs']}")
    return out


def _read_tar(loc: str, kind: str, reader: _HashingReader) -> Tuple[int, int, str]:
    """(samples, documents, what is wrong with the tar or "") of the shard ``reader`` reads, read
    to its end (the end-of-archive blocks count for size and sha256). A failure of the location
    itself is left in ``reader.error``; when it came first, the tar problem is "" (it is the
    location's failure seen through the tar reader)."""
    samples = docs = 0
    try:
        for _, key, _, _ in iter_shard_raw(loc, kind, verify=True, stream=reader):  # type: ignore[arg-type]
            chunk, chunks, _ = parse_key(key)
            samples += 1
            docs += chunk + 1 == chunks
        reader.drain()
    except ShardError as err:
        if reader.error is not None:
            return samples, docs, ""
        problem = str(err).removeprefix(f"shard {loc}: ")
        try:
            reader.drain()  # a remote shard's size is known only at its end
        except OSError:
            pass  # in reader.error: the size stays unknown, the tar problem is the finding
        return samples, docs, problem
    except RemoteError:
        pass  # in reader.error
    return samples, docs, ""


def verify(directory: Location, workers: int = 1, progress: bool = True,
           manifest: Optional[Dict[str, Any]] = None) -> Optional[ShardCheck]:
    """The first bad shard in manifest order, or None when all are good. Raises
    :class:`ManifestError` when the manifest cannot be read or is malformed. ``workers`` shards
    are checked at once (threads: reading and hashing release the GIL); the answer does not
    depend on it."""
    from tqdm import tqdm

    manifest = manifest or read_manifest(directory)
    records = manifest["shards"]
    bar = tqdm(total=sum(r["file_bytes"] for r in records), unit="B", unit_scale=True,
               desc=f"verify {directory}", disable=not progress, file=sys.stderr)
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for check in pool.map(lambda r: check_shard(directory, r, manifest["kind"], bar), records):
                if check.problems:
                    pool.shutdown(wait=False, cancel_futures=True)
                    return check
    finally:
        bar.close()
    return None


def summary(directory: Location, manifest: Dict[str, Any], seconds: float) -> str:
    """The one-line report of a dataset whose every shard is good."""
    records = manifest["shards"]
    splits = {s: sum(r["split"] == s for r in records) for s in SPLITS}  # train, val, test
    size = sum(r["file_bytes"] for r in records)
    return (f"ok: {directory}: {len(records)} shards ("
            + ", ".join(f"{k} {v}" for k, v in splits.items() if v)
            + f"), {sum(r['samples'] for r in records)} samples, {size / 1e6:.1f} MB: sizes, sha256, "
            f"tar members, crc32 and sample counts match the manifest ({seconds:.1f} s)")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.verify", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DIR", help="dataset directory, URL or pipe:COMMAND prefix")
    p.add_argument("--workers", type=int, default=1,
                   help="shards checked at once (threads; default 1). More helps on remote storage")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        manifest = read_manifest(args.dataset)
        bad = verify(args.dataset, args.workers, not args.no_progress, manifest)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if bad is not None:
        print(f"error: shard {bad.name} ({bad.location}): {'; '.join(bad.problems)}", file=sys.stderr)
        return 1
    print(summary(args.dataset, manifest, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
