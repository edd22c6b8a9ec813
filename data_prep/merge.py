"""Merge the parts of a preparation job into one ``manifest.json``.

    python -m data_prep.merge DIR              # after every task of the job has finished
    python -m data_prep.merge DIR --digest     # also print each split's document digest

Each task of ``python -m data_prep.bytes --tasks N --task I`` writes its own shards
(``{split}-tIIII-NNNNNN.tar``) and then, atomically, ``DIR/parts/part-IIIII-of-NNNNN.json``: the
job's fingerprint, the task's shard records, document and byte counts and bad-input counts. The
merge checks that all N parts exist with one fingerprint and every shard they name is present
with its recorded size, then writes ``DIR/manifest.json`` atomically (the schema the training
loader reads) and deletes shard files of ours that it does not name. Merging is deterministic
and idempotent: two tasks that finish at the same moment and both merge write the same bytes.
The last task of a job to finish merges by itself; this command is for a job whose tasks were
run without that (or to check one). Exit status 0: merged; 2: parts missing or inconsistent (one
line naming them). One JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from data_prep.atomic import atomic_write_bytes
from data_prep.shards import (
    FORMAT,
    MANIFEST,
    SPLITS,
    VERSION,
    iter_documents,
    read_manifest,
    remove_stale,
    write_manifest,
)

PARTS = "parts"
PART_FORMAT = "megabyte-shards-part"
PART_RE = re.compile(r"^part-(\d{5})-of-(\d{5})\.json$")
MAX_EXAMPLES = 100


class MergeError(RuntimeError):
    """The parts cannot be merged (yet); the message names what is missing or inconsistent."""


def part_path(out_dir: Path, task: int, tasks: int) -> Path:
    return Path(out_dir) / PARTS / f"part-{task:05d}-of-{tasks:05d}.json"


def write_part(out_dir: Path, part: Dict[str, Any]) -> Path:
    """Write one task's part atomically (after all its shards are in place)."""
    path = part_path(out_dir, part["task"], part["tasks"])
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, (json.dumps(part, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def read_part(out_dir: Path, task: int, tasks: int) -> Optional[Dict[str, Any]]:
    """A part as written, or None when it is missing or unreadable."""
    try:
        part = json.loads(part_path(out_dir, task, tasks).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return part if isinstance(part, dict) and part.get("format") == PART_FORMAT else None


def _shards_present(out_dir: Path, records: List[Dict[str, Any]]) -> Optional[str]:
    """None when every shard is there with its recorded size, else the first one that is not."""
    for rec in records:
        path = Path(out_dir) / rec["name"]
        if not path.is_file() or path.stat().st_size != rec["file_bytes"]:
            return rec["name"]
    return None


def finished_part(out_dir: Path, fingerprint: str, task: int, tasks: int) -> Optional[Dict[str, Any]]:
    """Task ``task``'s part if it belongs to this job (``fingerprint``) and its shards are all
    present; None: the task must run."""
    part = read_part(out_dir, task, tasks)
    if part is None or part.get("fingerprint") != fingerprint:
        return None
    return part if _shards_present(out_dir, part["shards"]) is None else None


def job_tasks(out_dir: Path) -> int:
    """The number of tasks of the job whose parts are in ``out_dir`` (one job only)."""
    found = {int(m.group(2)) for p in (Path(out_dir) / PARTS).glob("part-*.json")
             if (m := PART_RE.match(p.name))}
    if not found:
        raise MergeError(f"{out_dir}: no parts in {Path(out_dir) / PARTS} (run python -m data_prep.bytes "
                         "--tasks N --task I for every I first)")
    if len(found) > 1:
        raise MergeError(f"{out_dir}: parts of jobs of {sorted(found)} tasks; pass --tasks N")
    return found.pop()


def collect_parts(out_dir: Path, tasks: int, fingerprint: Optional[str] = None) -> List[Dict[str, Any]]:
    """All ``tasks`` parts of one job, checked; :class:`MergeError` names what is missing."""
    parts = [read_part(out_dir, t, tasks) for t in range(tasks)]
    missing = [t for t, p in enumerate(parts) if p is None]
    if missing:
        raise MergeError(f"{out_dir}: {len(missing)} of {tasks} parts missing (tasks "
                         f"{', '.join(map(str, missing[:20]))}{' ...' if len(missing) > 20 else ''}): "
                         "those tasks have not finished; run them again")
    want = fingerprint or parts[0]["fingerprint"]  # type: ignore[index]
    for t, p in enumerate(parts):
        assert p is not None
        if p["fingerprint"] != want:
            raise MergeError(f"{part_path(out_dir, t, tasks)}: from another job (other inputs or "
                             f"options): run task {t} again with the job's command")
        gone = _shards_present(out_dir, p["shards"])
        if gone is not None:
            raise MergeError(f"{Path(out_dir) / gone}: named by part {t} but missing or of another size; "
                             f"run task {t} again")
    return parts  # type: ignore[return-value]


def build_manifest(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The dataset manifest of a job's parts (deterministic: the same parts give the same bytes)."""
    records = sorted((r for p in parts for r in p["shards"]), key=lambda r: r["name"])
    splits = {}
    for s in SPLITS:
        recs = [r for r in records if r["split"] == s]
        n_bytes = sum(r["bytes"] for r in recs)
        splits[s] = {"docs": sum(r["docs"] for r in recs), "bytes": n_bytes, "tokens": n_bytes,
                     "samples": sum(r["samples"] for r in recs), "shards": len(recs),
                     "bytes_per_token": 1.0}
    counts: Dict[str, int] = {}
    for p in parts:
        for k, v in p["bad_input"]["counts"].items():
            counts[k] = counts.get(k, 0) + v
    examples = [e for p in parts for e in p["bad_input"]["examples"]][:MAX_EXAMPLES]
    job = parts[0]["job"]
    return {"format": FORMAT, "version": VERSION, "kind": "bytes", "created_by": "data_prep.bytes",
            "fingerprint": parts[0]["fingerprint"], "tasks": len(parts), **job, "splits": splits,
            "shards": records, "bad_input": {"counts": counts, "examples": examples},
            "blank_lines": sum(p["blank_lines"] for p in parts)}


def merge(out_dir: Path, tasks: Optional[int] = None, fingerprint: Optional[str] = None) -> Dict[str, Any]:
    """Merge the parts in ``out_dir`` into ``manifest.json``; returns the manifest."""
    out_dir = Path(out_dir)
    tasks = tasks or job_tasks(out_dir)
    manifest = build_manifest(collect_parts(out_dir, tasks, fingerprint))
    write_manifest(out_dir, manifest)
    # Shards of earlier jobs (other task counts, other inputs) are not named: drop them, but not a
    # temporary manifest, which a task merging at this same moment may be about to rename.
    remove_stale(out_dir, keep=tuple(r["name"] for r in manifest["shards"]), manifest_temps=False)
    for p in (out_dir / PARTS).glob("part-*.json"):
        m = PART_RE.match(p.name)
        if m and int(m.group(2)) != tasks:
            p.unlink(missing_ok=True)
    return manifest


def try_merge(out_dir: Path, tasks: int, fingerprint: str) -> Optional[Dict[str, Any]]:
    """Merge if every part of this job is finished (the last task to finish does it); else None."""
    try:
        return merge(out_dir, tasks, fingerprint)
    except MergeError:
        return None


def split_digests(directory: Path) -> Dict[str, Dict[str, Any]]:
    """Per split: document count, bytes, and a digest of its documents that does not depend on
    their order (sha256 over the sorted sha256 of each document's id and bytes), so datasets made
    with different task or worker counts can be compared."""
    manifest = read_manifest(directory)
    out = {}
    for s in SPLITS:
        hashes, n_bytes = [], 0
        for doc_id, payload in iter_documents(directory, s, manifest):
            key = doc_id.encode("utf-8", "surrogateescape") + b"\0"
            hashes.append(hashlib.sha256(key + payload).digest())
            n_bytes += len(payload)
        h = hashlib.sha256()
        for d in sorted(hashes):
            h.update(d)
        out[s] = {"docs": len(hashes), "bytes": n_bytes, "sha256": h.hexdigest()}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.merge", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", type=Path, help="the job's --output directory")
    p.add_argument("--tasks", type=int, default=None, help="the job's task count (default: from the parts)")
    p.add_argument("--digest", action="store_true",
                   help="also read every document and print each split's order-free digest")
    args = p.parse_args(argv)
    try:
        manifest = merge(args.directory, args.tasks)
        out: Dict[str, Any] = {"status": "merged", "output": str(args.directory),
                               "manifest": str(args.directory / MANIFEST), "tasks": manifest["tasks"],
                               "splits": {s: {k: v[k] for k in ("docs", "bytes", "shards")}
                                          for s, v in manifest["splits"].items()},
                               "bad_input": manifest["bad_input"]["counts"]}
        if args.digest:
            out["digests"] = split_digests(args.directory)
    except (MergeError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
