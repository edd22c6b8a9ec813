"""The comparison's steps: prepare the corpus once, train every matched run (finished runs are
skipped, interrupted ones resume; ``--nproc`` under torchrun; or one Slurm job array), and score
each final checkpoint on the shared held-out bytes exactly as ``pretrain.evaluate --files`` does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from pretrain.comparison.matching import MatchedRun
from pretrain.config import atomic_write_bytes, atomic_write_text, load_config, to_yaml
from pretrain.runtime.processes import python_module_command


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def prepare_data(args: argparse.Namespace, out: Path) -> Path:
    """Prepare the corpus once (data_prep.prepare is itself a no-op when up to date)."""
    if args.data:
        return Path(args.data)
    data_dir = out / "data"
    cmd = [sys.executable, "-m", "data_prep.prepare", "--output", str(data_dir),
           "--vocab-size", str(args.vocab_size), "--skip", "empty", "--skip", "invalid_utf8",
           "--max-bytes", str(args.max_corpus_bytes), "--val-fraction", str(args.val_fraction),
           # Many small shards, so that the loader's lanes draw each batch from many streams.
           "--shard-bytes", "512KiB"]
    cmd += [str(p) for p in args.corpus] if args.corpus else ["--stdlib"]
    log(f"preparing data: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"data preparation failed (exit {proc.returncode})")
    return data_dir


def write_heldout(data_dir: Path, heldout: Path, n_bytes: int) -> bytes:
    """The first ``n_bytes`` of the byte dataset's validation split, as the training loop reads
    them, written to ``heldout`` (rewritten only when they changed); every model is scored on it."""
    from data_prep.vocab import ByteVocab
    from pretrain.data import validation_text

    cfg = load_config(None, ["data.source=shards", f"data.datasets=[{data_dir / 'bytes'}]",
                             f"data.val_bytes={n_bytes}"])
    text = validation_text(cfg, ByteVocab(), n_bytes)
    if not text:
        raise ValueError(f"the validation split of {data_dir / 'bytes'} is empty: raise "
                         "--val-fraction or use a larger corpus")
    if not heldout.is_file() or heldout.read_bytes() != text:
        atomic_write_bytes(heldout, text)
    return text


def write_config(plan: MatchedRun, out: Path) -> Path:
    cfg_path = out / "configs" / f"{plan.name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, to_yaml(plan.cfg))
    return cfg_path


def submit_slurm(plans: List[MatchedRun], out: Path, dry_run: bool, slurm: List[str]) -> Dict[str, Any]:
    """Submit the unfinished runs as one Slurm job array (``launch.slurm --sweep``)."""
    runs = [{"config": str(write_config(plan, out)), "overrides": []}
            for plan in plans if not finished(plan)]
    if not runs:
        return {"submitted": False, "reason": "every run has finished"}
    sweep = out / "sweep.yaml"
    atomic_write_text(sweep, json.dumps({"job_name": "compare", "output_dir": str(out / "launch"),
                                         "overrides": list(slurm), "runs": runs}, indent=2) + "\n")
    cmd = [sys.executable, "-m", "launch.slurm", "--sweep", str(sweep)] + (["--dry-run"] if dry_run
                                                                           else [])
    log(f"submitting {len(runs)} runs: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"launch.slurm failed (exit {proc.returncode})")
    return {"submitted": not dry_run, "sweep": str(sweep), "launch": proc.stdout.strip()}


def train(plan: MatchedRun, out: Path, nproc: int) -> Dict[str, Any]:
    """Train one model (skipped when its run already finished); returns its results.json."""
    run_dir = Path(plan.cfg.run_dir)
    results = run_dir / "results.json"
    if finished(plan):
        done = json.loads(results.read_text())
        log(f"{plan.name}: finished earlier ({done['steps']} steps), skipping")
        return done
    cfg_path = write_config(plan, out)
    cmd = python_module_command(nproc, "pretrain.train", ["--config", str(cfg_path)])
    log(f"{plan.name}: training ({plan.cfg.train.max_steps} steps): {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if proc.returncode:
        raise RuntimeError(f"{plan.name}: training failed (exit {proc.returncode}); rerun to resume")
    return json.loads(results.read_text())


def evaluate(plan: MatchedRun, heldout: Path, modes: List[str], out: Path) -> Dict[str, Any]:
    """Bits per byte of the run's final checkpoint on the held-out bytes, cached per step."""
    from pretrain.inference.evaluation import evaluate_bytes
    from pretrain.inference.loading import load_for_inference

    run_dir = Path(plan.cfg.run_dir)
    cache = out / "eval" / f"{plan.name}.json"
    step = json.loads((run_dir / "results.json").read_text())["steps"]
    if cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("step") == step and old.get("modes") == modes:
            return old
    cfg, model, vocab = load_for_inference(run_dir)
    text = heldout.read_bytes()
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
    record = {"name": plan.name, "step": step, "modes": modes, "results": results}
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
