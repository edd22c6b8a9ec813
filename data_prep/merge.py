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
run without that (or to check one). ``--digest`` reads every document before the manifest is
written: a shard that fails its checks (crc32, sample counts) leaves no manifest. Exit status 0:
merged; 2: parts missing, malformed or inconsistent, or a shard unreadable (one line naming the
file and what is wrong; no manifest written). One JSON object goes to stdout.
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
    ManifestError,
    ShardError,
    check_manifest,
    iter_documents,
    read_manifest,
    remove_stale,
    shard_records_problem,
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


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_bad_input(value: Any) -> bool:
    """``{"counts": {kind: count}, "examples": [...]}``, as a task writes it."""
    return (isinstance(value, dict) and isinstance(value.get("examples"), list)
            and isinstance(value.get("counts"), dict)
            and all(isinstance(k, str) and _is_count(c) for k, c in value["counts"].items()))


def part_problem(part: Dict[str, Any], task: int, tasks: int) -> Optional[str]:
    """What is wrong with the structure of task ``task``'s part (None: every field the merge
    reads is there and well-formed; shard records as :func:`~data_prep.shards.shard_record_problem`
    wants them)."""
    checks = {"fingerprint": (lambda v: isinstance(v, str), "a string"),
              "task": (lambda v: v == task, f"{task}, as the file name says"),
              "tasks": (lambda v: v == tasks, f"{tasks}, as the file name says"),
              "job": (lambda v: isinstance(v, dict), "an object"),
              "bad_input": (_is_bad_input, "an object of 'counts' and 'examples'"),
              "blank_lines": (_is_count, "a count (an integer >= 0)")}
    for key, (ok, want) in checks.items():
        if key not in part:
            return f"missing field {key!r}"
        if not ok(part[key]):
            return f"field {key!r} is {str(part[key])[:80]}, not {want}"
    if "shards" not in part:
        return "missing field 'shards'"
    return shard_records_problem(part["shards"])


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
    if part is None or part.get("fingerprint") != fingerprint or part_problem(part, task, tasks):
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
    for t, p in enumerate(parts):
        problem = part_problem(p, t, tasks)  # type: ignore[arg-type]
        if problem:
            raise MergeError(f"{part_path(out_dir, t, tasks)}: {problem} (a damaged part: run task {t} "
                             "again)")
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


def merged_manifest(out_dir: Path, tasks: Optional[int] = None,
                    fingerprint: Optional[str] = None) -> Dict[str, Any]:
    """The manifest the parts in ``out_dir`` give, checked (:func:`collect_parts`, then
    :func:`~data_prep.shards.check_manifest`, so two parts naming one shard are refused too);
    nothing is written."""
    out_dir = Path(out_dir)
    tasks = tasks or job_tasks(out_dir)
    manifest = build_manifest(collect_parts(out_dir, tasks, fingerprint))
    try:
        return check_manifest(manifest, out_dir / PARTS, "parts of different jobs: run the job again")
    except ManifestError as err:
        raise MergeError(str(err)) from None


def write_merged(out_dir: Path, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``manifest`` (from :func:`merged_manifest`) and drop what it makes stale."""
    out_dir = Path(out_dir)
    write_manifest(out_dir, manifest)
    # Shards of earlier jobs (other task counts, other inputs) are not named: drop them, but not a
    # temporary manifest, which a task merging at this same moment may be about to rename.
    remove_stale(out_dir, keep=tuple(r["name"] for r in manifest["shards"]), manifest_temps=False)
    for p in (out_dir / PARTS).glob("part-*.json"):
        m = PART_RE.match(p.name)
        if m and int(m.group(2)) != manifest["tasks"]:
            p.unlink(missing_ok=True)
    return manifest


def merge(out_dir: Path, tasks: Optional[int] = None, fingerprint: Optional[str] = None) -> Dict[str, Any]:
    """Merge the parts in ``out_dir`` into ``manifest.json``; returns the manifest."""
    return write_merged(out_dir, merged_manifest(out_dir, tasks, fingerprint))


def try_merge(out_dir: Path, tasks: int, fingerprint: str) -> Optional[Dict[str, Any]]:
    """Merge if every part of this job is finished (the last task to finish does it); else None."""
    try:
        return merge(out_dir, tasks, fingerprint)
    except MergeError:
        return None


def split_digests(directory: Path, manifest: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Per split: document count, bytes, and a digest of its documents that does not depend on
    their order (sha256 over the sorted sha256 of each document's id and bytes), so datasets made
    with different task or worker counts can be compared. ``manifest``: the dataset's (default:
    read from ``directory``)."""
    manifest = manifest or read_manifest(directory)
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
        manifest = merged_manifest(args.directory, args.tasks)
        # --digest reads every document first: a shard failing its checks leaves no manifest.
        digests = split_digests(args.directory, manifest) if args.digest else None
        write_merged(args.directory, manifest)
        out: Dict[str, Any] = {"status": "merged", "output": str(args.directory),
                               "manifest": str(args.directory / MANIFEST), "tasks": manifest["tasks"],
                               "splits": {s: {k: manifest["splits"][s][k]
                                              for k in ("docs", "bytes", "shards")} for s in SPLITS},
                               "bad_input": manifest["bad_input"]["counts"]}
        if digests is not None:
            out["digests"] = digests
    except (MergeError, ManifestError, ShardError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
