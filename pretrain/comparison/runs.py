"""The comparison's steps: prepare the corpus once, train every matched run (finished runs are
skipped, interrupted ones resume, diverged ones are not retried unless asked; ``--nproc`` under
torchrun; or one Slurm job array, recorded in ``OUT/slurm_job.json`` and waited for), and score
each final checkpoint on the shared held-out bytes exactly as ``pretrain.evaluate --files`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pretrain.comparison.corpus import CorpusKind, corpus_kind
from pretrain.comparison.matching import MatchedRun
from pretrain.config import atomic_write_bytes, atomic_write_text, load_config, to_yaml
from pretrain.runtime.processes import (
    DIVERGED,
    EXIT_REQUEUE,
    STOP_REASON,
    python_module_command,
    read_stop_reason,
)

MAX_RESUMES = 50
"""Restarts of a run stopped short of its budget (a wall-clock limit, a stop signal)."""


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def prepare_data(args: argparse.Namespace, out: Path) -> Tuple[Path, CorpusKind, bool]:
    """Prepare the corpus once (data_prep.prepare is itself a no-op when up to date): byte shards
    first, then, only when they hold text (:mod:`pretrain.comparison.corpus`), the tokenizer and
    token shards. Returns (data directory, what the bytes are, whether the subword baseline
    runs), all known before any training."""
    if args.data:
        data_dir = Path(args.data)
        kind = corpus_kind(data_dir / "bytes")
        has_tokens = (data_dir / "tokens" / "manifest.json").is_file()
        log(f"corpus: {kind.describe(has_tokens)}")
        if kind.is_text and not has_tokens:
            log(f"(no {data_dir / 'tokens' / 'manifest.json'}; prepare token shards with "
                "python -m data_prep.prepare --vocab-size N)")
        return data_dir, kind, kind.is_text and has_tokens
    data_dir = out / "data"
    cmd = [sys.executable, "-m", "data_prep.prepare", "--output", str(data_dir),
           "--skip", "empty", "--skip", "invalid_utf8",
           "--max-bytes", str(args.max_corpus_bytes), "--val-fraction", str(args.val_fraction),
           # Many small shards, so that the loader's lanes draw each batch from many streams.
           "--shard-bytes", "512KiB"]
    cmd += [str(p) for p in args.corpus] if args.corpus else ["--stdlib"]
    cmd += one_file_options(args.corpus)
    _run_prep(cmd + ["--vocab-size", "0"])
    kind = corpus_kind(data_dir / "bytes")
    log(f"corpus: {kind.describe()}")
    if kind.is_text:
        _run_prep(cmd + ["--vocab-size", str(args.vocab_size)])
    return data_dir, kind, kind.is_text


ONE_FILE_DOC_BYTES = "64K"


def one_file_options(corpus: List[Path]) -> List[str]:
    """A corpus that is one file (an enwik8-style dump, a book, a log) would be one document: no
    validation split at all. It is cut into documents of about 64 KiB at line ends and split
    contiguously instead: the last ``--val-fraction`` of its bytes are the validation split (the
    enwik8 convention), the rest, in order, the training split."""
    if len(corpus) == 1 and Path(corpus[0]).is_file():
        log(f"one-file corpus: cut into ~{ONE_FILE_DOC_BYTES}B documents at line ends; the last "
            "--val-fraction of its bytes are held out (--split contiguous)")
        return ["--doc-bytes", ONE_FILE_DOC_BYTES, "--split", "contiguous"]
    return []


def _run_prep(cmd: List[str]) -> None:
    log(f"preparing data: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"data preparation failed (exit {proc.returncode})")


def write_heldout(data_dir: Path, heldout: Path, n_bytes: int, start: int = 0) -> bytes:
    """Bytes ``start`` to ``start + n_bytes`` of the byte dataset's validation split, as the
    training loop reads them, written to ``heldout`` (rewritten only when they changed): with
    ``start`` 0 the held-out bytes every model is scored on; after them, the LR sweep's
    selection bytes (never the same bytes)."""
    from data_prep.vocab import ByteVocab
    from pretrain.data import validation_text

    cfg = load_config(None, ["data.source=shards", f"data.datasets=[{data_dir / 'bytes'}]",
                             f"data.val_bytes={start + n_bytes}"])
    text = validation_text(cfg, ByteVocab(), start + n_bytes)[start:]
    if not text:
        raise ValueError(f"the validation split of {data_dir / 'bytes'} has no bytes after its "
                         f"first {start}: raise --val-fraction or use a larger corpus")
    if not heldout.is_file() or heldout.read_bytes() != text:
        atomic_write_bytes(heldout, text)
    return text


def write_config(plan: MatchedRun, out: Path) -> Path:
    cfg_path = out / "configs" / f"{plan.name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, to_yaml(plan.cfg))
    return cfg_path


def submit_slurm(plans: List[MatchedRun], out: Path, dry_run: bool, slurm: List[str],
                 retry_diverged: bool = False) -> Dict[str, Any]:
    """Submit the runs still to train (:func:`to_train`) as one Slurm job array
    (``launch.slurm --sweep``) and record the job in ``OUT/slurm_job.json`` (``job``);
    ``dry_run`` only renders the script (``launch``)."""
    todo = [plan for plan in plans if to_train(plan, retry_diverged)]
    for plan in plans:
        if plan not in todo and not finished(plan):  # diverged, left out
            log(f"{plan.name}: diverged in an earlier attempt; not submitted (--retry-diverged "
                "submits it)")
    runs = [{"config": str(write_config(plan, out)), "overrides": []} for plan in todo]
    if not runs:
        return {"submitted": False, "reason": "every run has finished or diverged"}
    sweep = out / "sweep.yaml"
    atomic_write_text(sweep, json.dumps({"job_name": "compare", "output_dir": str(out / "launch"),
                                         "overrides": list(slurm), "runs": runs}, indent=2) + "\n")
    # --replace: a run resubmitted here has no job left (the earlier one ended: this command
    # waited for it), so new --set values (say a longer slurm.time) may replace its saved config.
    cmd = [sys.executable, "-m", "launch.slurm", "--sweep", str(sweep), "--replace"] + (
        ["--dry-run"] if dry_run else [])
    log(f"submitting {len(runs)} runs: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"launch.slurm failed (exit {proc.returncode})")
    result: Dict[str, Any] = {"submitted": not dry_run, "sweep": str(sweep),
                              "launch": proc.stdout.strip()}
    if not dry_run:
        result["job"] = record_job(out, todo, json.loads(proc.stdout.strip().splitlines()[-1]))
    return result


# --------------------------------------------------------------------------------------------
# Waiting for the Slurm jobs
# --------------------------------------------------------------------------------------------

JOB_RECORD = "slurm_job.json"
# Job states after which a job (or array task) runs no more; anything else may still change
# (PENDING, RUNNING, COMPLETING, REQUEUED, SUSPENDED, ...). GONE: Slurm no longer knows the job.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "GONE"})
# Job id -> state per array task index (None: a job that is not an array); None when Slurm no
# longer knows the job.
Query = Callable[[str], Optional[Dict[Optional[int], str]]]


class WaitInterrupted(Exception):
    """Ctrl-C while waiting: the jobs keep running, the same command resumes."""


@dataclasses.dataclass
class SlurmTask:
    """One thing to wait for: a training run (an array task or a job) or the preparation job."""

    name: str
    job_id: str
    index: Optional[int]
    log: str


def record_job(out: Path, todo: List[MatchedRun], launched: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``OUT/slurm_job.json`` (atomically) from ``launch.slurm``'s JSON: the job ids and,
    in array order, each run's name and log; a rerun waits for this job instead of submitting."""
    log_pattern = str(launched["log"])
    record = {"job_id": str(launched["job_id"]), "array": bool(launched.get("array_size")),
              "prepare_job_id": launched.get("prepare_job_id"),
              "prepare_log": launched.get("prepare_log"),
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "runs": [{"name": plan.name, "run_dir": str(plan.cfg.run_dir),
                        "log": log_pattern.replace("%a", str(i))} for i, plan in enumerate(todo)]}
    atomic_write_text(out / JOB_RECORD, json.dumps(record, indent=2) + "\n")
    return record


def slurm_tasks(record: Dict[str, Any]) -> List[SlurmTask]:
    """What a recorded submission waits for: the preparation job (if any), then every run."""
    tasks = []
    if record.get("prepare_job_id"):
        tasks.append(SlurmTask("data preparation", str(record["prepare_job_id"]), None,
                               str(record.get("prepare_log"))))
    for i, run in enumerate(record["runs"]):
        tasks.append(SlurmTask(run["name"], str(record["job_id"]), i if record["array"] else None,
                               run["log"]))
    return tasks


def task_indices(text: str) -> List[int]:
    """Array task indices of ``scontrol``'s ``ArrayTaskId`` or ``sacct``'s ``JOB_[...]``:
    ``3``, ``0-2``, ``1,4-5``, ``0-7%2`` (a throttle), ``[1-2]``."""
    indices: List[int] = []
    for part in text.strip("[]").split("%", 1)[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            indices += list(range(int(lo), int(hi or lo) + 1)) if (hi or lo).isdigit() else []
    return indices


def parse_scontrol(text: str) -> Dict[Optional[int], str]:
    """States from ``scontrol show job -o`` (one line per job or array task, or one line for
    several tasks still pending together)."""
    states: Dict[Optional[int], str] = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobState" not in fields:
            continue
        if fields.get("ArrayTaskId"):
            states.update({i: fields["JobState"] for i in task_indices(fields["ArrayTaskId"])})
        else:
            states[None] = fields["JobState"]
    return states


def parse_sacct(text: str) -> Dict[Optional[int], str]:
    """States from ``sacct -X -n -P -o JobID,State`` (``12_0|COMPLETED``, ``12_[1-2]|PENDING``,
    ``13|CANCELLED by 0``)."""
    states: Dict[Optional[int], str] = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        if not state:
            continue
        state = state.split()[0]
        if "_" in job:
            states.update({i: state for i in task_indices(job.split("_", 1)[1])})
        else:
            states[None] = state
    return states


def slurm_states(job_id: str) -> Optional[Dict[Optional[int], str]]:
    """The job's states from ``scontrol show job -o``, else (a job the controller has already
    forgotten, after ``MinJobAge``) from ``sacct``; None when neither knows it. Any other
    scontrol failure (the controller unreachable) raises OSError."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                              text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        raise OSError(f"scontrol show job {job_id}: {err}") from None
    if proc.returncode == 0:
        return parse_scontrol(proc.stdout) or None
    if "invalid job id" not in proc.stderr.lower():
        raise OSError(f"scontrol show job {job_id} failed: {proc.stderr.strip()}")
    try:
        proc = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id],
                              capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return (parse_sacct(proc.stdout) or None) if proc.returncode == 0 else None


def poll(tasks: List[SlurmTask], query: Query) -> Dict[str, str]:
    """Each task's current state (one query per job id); GONE for a job Slurm forgot."""
    jobs = {job_id: query(job_id) for job_id in dict.fromkeys(t.job_id for t in tasks)}
    states = {}
    for t in tasks:
        known = jobs[t.job_id]
        states[t.name] = "GONE" if known is None else known.get(t.index, "GONE")
    return states


def describe(states: Dict[str, str]) -> str:
    """``running megabyte; pending transformer_bytes, transformer_subword``."""
    groups: Dict[str, List[str]] = {}
    for name, state in states.items():
        groups.setdefault("finished (no longer known to Slurm)" if state == "GONE" else
                          state.lower(), []).append(name)
    return "; ".join(f"{state} {', '.join(names)}" for state, names in groups.items())


def job_active(out: Path, query: Query = slurm_states) -> Optional[Dict[str, Any]]:
    """The recorded submission (``OUT/slurm_job.json``) while any of its jobs is still queued or
    running, else None (never submitted, or every job ended)."""
    path = out / JOB_RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    states = poll(slurm_tasks(record), query)
    return record if any(s not in ENDED for s in states.values()) else None


def wait_slurm(record: Dict[str, Any], plans: List[MatchedRun], query: Query = slurm_states,
               sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait until every job of the recorded submission ended, logging each change of state;
    then every run must have COMPLETED and finished its steps, else RuntimeError naming the
    failed runs and their logs. Ctrl-C raises :class:`WaitInterrupted` (the jobs keep running)."""
    tasks, job, t0 = slurm_tasks(record), record["job_id"], time.monotonic()
    shown, states = "", {}
    try:
        while not states or any(s not in ENDED for s in states.values()):
            if states:
                sleep(min(30.0, 1.0 + (time.monotonic() - t0) / 20))
            try:
                states = poll(tasks, query)
            except OSError as err:
                states = states or {t.name: "UNKNOWN" for t in tasks}
                line = f"cannot ask Slurm ({err}); retrying"
            else:
                line = describe(states)
            if line != shown:
                log(f"Slurm job {job} ({time.monotonic() - t0:.0f} s): {line}")
                shown = line
    except KeyboardInterrupt:
        raise WaitInterrupted(f"interrupted: Slurm job {job} keeps running (scancel {job} stops "
                              "it); run the same command again to resume waiting and report") \
            from None
    check_outcome(tasks, states, plans, job)


def check_outcome(tasks: List[SlurmTask], states: Dict[str, str], plans: List[MatchedRun],
                  job: str) -> None:
    """RuntimeError (one line) naming each run whose job did not complete, or that completed
    without finishing its planned steps, with its Slurm log."""
    by_name = {p.name: p for p in plans}
    bad = []
    for t in tasks:
        plan = by_name.get(t.name)
        if plan is not None and diverged(plan):
            bad.append(f"{t.name} diverged (too many non-finite steps in a row; not resubmitted "
                       f"unless --retry-diverged; log {t.log})")
        elif states[t.name] not in ("COMPLETED", "GONE"):
            bad.append(f"{t.name} {states[t.name]} (log {t.log})")
        elif plan is not None and not finished(plan):
            bad.append(f"{t.name} ended without finishing its {plan.cfg.train.max_steps} steps "
                       f"(log {t.log})")
    if bad:
        raise RuntimeError(f"Slurm job {job}: {'; '.join(bad)}; fix the cause and run the same "
                           "command again to resubmit (training resumes from checkpoints)")


def train(plan: MatchedRun, out: Path, nproc: int, retry_diverged: bool = False) -> Dict[str, Any]:
    """Train one model (skipped when its run already finished); returns its results.json.
    RuntimeError when it diverges, or diverged in an earlier attempt and ``retry_diverged`` is
    off (resuming would replay the same batches from the same checkpoint)."""
    run_dir = Path(plan.cfg.run_dir)
    results = run_dir / "results.json"
    if finished(plan):
        done = json.loads(results.read_text())
        log(f"{plan.name}: finished earlier ({done['steps']} steps), skipping")
        return done
    if diverged(plan) and not retry_diverged:
        raise RuntimeError(f"{plan.name}: diverged in an earlier attempt (too many non-finite "
                           f"steps in a row, {run_dir / STOP_REASON}); not trained again: "
                           "--retry-diverged resumes it from its last good checkpoint")
    (run_dir / STOP_REASON).unlink(missing_ok=True)  # this attempt writes its own
    cfg_path = write_config(plan, out)
    cmd = python_module_command(nproc, "pretrain.train", ["--config", str(cfg_path)])
    log(f"{plan.name}: training ({plan.cfg.train.max_steps} steps): {' '.join(cmd[1:])}")
    for attempt in range(1, MAX_RESUMES + 1):
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
        if proc.returncode and diverged(plan):  # exit 3, or torchrun's own code for it
            raise RuntimeError(f"{plan.name}: training diverged (too many non-finite steps in "
                               "a row); a rerun leaves it out unless --retry-diverged")
        if proc.returncode not in (0, EXIT_REQUEUE):
            raise RuntimeError(f"{plan.name}: training failed (exit {proc.returncode}); "
                               "rerun to resume")
        done = json.loads(results.read_text())
        if finished(plan):
            return done
        # Stopped before its budget (train.max_minutes, a stop signal): resume, never report a
        # model that saw fewer bytes as if the budgets were equal.
        log(f"{plan.name}: stopped at step {done['steps']} of {plan.cfg.train.max_steps} "
            f"({done.get('stop_reason')}); resuming ({attempt}/{MAX_RESUMES})")
    raise RuntimeError(f"{plan.name}: still short of its {plan.cfg.train.max_steps}-step budget "
                       f"after {MAX_RESUMES} resumes (stop_reason {done.get('stop_reason')}); "
                       "rerun to continue")


def evaluate(plan: MatchedRun, heldout: Path, modes: List[str], out: Path,
             cache_dir: str = "eval") -> Dict[str, Any]:
    """Bits per byte of the run's final checkpoint on the held-out bytes, cached in
    ``OUT/<cache_dir>/NAME.json`` (one cache directory per file of bytes scored) and reused only
    for the same step, modes and held-out bytes (their size and SHA-256: ``--eval-bytes`` or a
    new corpus rewrites the file, and then every model is scored again)."""
    from pretrain.inference.evaluation import evaluate_bytes
    from pretrain.inference.loading import load_for_inference

    run_dir = Path(plan.cfg.run_dir)
    cache = out / cache_dir / f"{plan.name}.json"
    step = json.loads((run_dir / "results.json").read_text())["steps"]
    text = heldout.read_bytes()
    scored = {"bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}
    if cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("step") == step and old.get("modes") == modes and old.get("heldout") == scored:
            return old
    cfg, model, vocab = load_for_inference(run_dir)
    patch = cfg.model.patch_size if cfg.model.arch == "megabyte" else None
    results: Dict[str, Any] = {}
    for mode in modes:
        if "strided" in mode and patch is None:
            continue
        t0 = time.perf_counter()
        r = evaluate_bytes(model, text, vocab, cfg.model.seq_len, mode, patch, None,
                           cfg.train.micro_batch_size, progress=True)
        r["seconds"] = time.perf_counter() - t0
        results[mode] = r
        log(f"{plan.name}: {mode} {r['bpb']:.4f} bits per byte")
    record = {"name": plan.name, "step": step, "modes": modes, "heldout": scored,
              "results": results}
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(record, indent=2) + "\n")
    return record


def finished(plan: MatchedRun) -> bool:
    """True when the run finished with exactly this config; a run directory trained with another
    config is an error (never silently reused or mixed)."""
    run_dir = Path(plan.cfg.run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file() and to_yaml(load_config(saved)) != to_yaml(plan.cfg):
        raise RuntimeError(f"{run_dir} holds a run with a different config (other data, size or "
                           "budget); choose another --out or delete that directory")
    results = run_dir / "results.json"
    return results.is_file() and json.loads(results.read_text()).get("steps") == \
        plan.cfg.train.max_steps


def diverged(plan: MatchedRun) -> bool:
    """True when the run's last attempt aborted after too many non-finite steps in a row (its
    ``stop_reason`` says ``diverged``; an attempt that finishes writes ``max_steps`` over it)."""
    return read_stop_reason(plan.cfg.run_dir) == DIVERGED


def to_train(plan: MatchedRun, retry_diverged: bool) -> bool:
    """Whether the run still needs training: not finished, and not diverged unless retried."""
    return not finished(plan) and (retry_diverged or not diverged(plan))
