"""Sweep files: several runs submitted as one Slurm job array, after optional data preparation.

A sweep file names the runs (a config plus overrides each) and the preparation steps their data
needs. Steps whose output exists are skipped; the others run as one preparation job that the
array depends on (``afterok``), so the array starts only on prepared data. Example
(``configs/sweeps/debug_matched.yaml``)::

    job_name: debug-matched
    overrides: [train.max_steps=200]                 # every run, before its own overrides
    runs:
      - config: configs/debug.yaml
        overrides: [run_dir=runs/sweeps/debug_matched/megabyte]
      - config: configs/debug_subword.yaml
        overrides: [run_dir=runs/sweeps/debug_matched/subword,
                    model.tokenizer=runs/sweeps/debug_matched/tokenizer.model]
    prepare:
      - module: data_prep.tokenizer
        args: [--output, runs/sweeps/debug_matched/tokenizer, --vocab-size, "2000"]
        creates: runs/sweeps/debug_matched/tokenizer.model

A run whose config refers to a ``creates`` path that does not exist yet cannot be fully validated
at submission; its remaining checks run when the job starts (``pretrain.train`` exits 2 with the
one-line error if one fails). Relative paths are relative to the submission directory, as for
configs.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from launch.common import load_run_config
from launch.slurm_config import printable, validate_slurm
from pretrain.config import Config, ConfigError, load_config
from pretrain.config.loading import read_yaml_mapping

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass
class PrepareStep:
    """One data-preparation command, run as ``python -m MODULE ARGS...`` in the submission directory."""

    module: str = ""
    """Python module to run, e.g. ``data_prep.bytes`` or ``data_prep.tokenizer``."""
    args: List[str] = field(default_factory=list)
    """Its arguments (each passed as one word; nothing is interpreted by a shell)."""
    creates: str = ""
    """The file the step writes last (a dataset's ``manifest.json``, a tokenizer's ``.model``);
    the step is skipped when it exists."""
    tasks: int = 1
    """``data_prep.bytes`` only: run the step as a job array of this many tasks (each prepares
    its share, ``--tasks N`` with the task from ``SLURM_ARRAY_TASK_ID``), then a merge job
    (``python -m data_prep.merge OUTPUT``) that the following jobs wait for. Steps with tasks
    run before the other steps, in order."""
    cpus: int = 0
    """CPUs of each array task (``--cpus-per-task``; also passed as ``--workers``); 0 = the
    sweep's ``prepare_cpus``."""


@dataclass
class SweepRun:
    """One run of the array."""

    config: str = ""
    """Config file of the run."""
    overrides: List[str] = field(default_factory=list)
    """``key=value`` overrides of this run (after the sweep's ``overrides``)."""


@dataclass
class Sweep:
    """A sweep file."""

    job_name: str = ""
    """Name of the array job (``-prepare`` is appended for the preparation job); empty = the first
    run's ``slurm.job_name``."""
    output_dir: str = ""
    """Directory of the array script and the logs (``slurm-<array id>_<index>.out``); empty =
    ``launch`` beside the run directories (in their common parent)."""
    overrides: List[str] = field(default_factory=list)
    """``key=value`` overrides applied to every run first."""
    runs: List[SweepRun] = field(default_factory=list)
    """The runs, one array task each (all share the first run's ``slurm`` resources)."""
    prepare: List[PrepareStep] = field(default_factory=list)
    """Data preparation, run before the array when some ``creates`` path is missing."""
    prepare_cpus: int = 1
    """CPUs of the preparation job."""
    max_parallel: int = 0
    """Most array tasks running at once (``--array=0-N%M``); 0 = no limit."""


@dataclass
class LoadedRun:
    cfg: Config
    origin: str
    """``runs[i] (FILE)`` for messages."""
    deferred: Optional[str] = None
    """The validation error left for the job to re-check once the data is prepared."""


def load_sweep(path: os.PathLike | str) -> Sweep:
    """Read and check a sweep file (unknown keys and wrong types are one-line ConfigErrors)."""
    raw = read_yaml_mapping(Path(path), "sweep")
    _check_lists(raw, str(path))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Sweep), raw)
        sweep: Sweep = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "<root>"
        msg = str(getattr(err, "msg", None) or err).splitlines()[0]
        raise ConfigError(f"sweep error ({path}): {key}: {msg}") from None
    check_sweep(sweep, str(path))
    return sweep


def _check_lists(raw: DictConfig, origin: str) -> None:
    """Name the key when a list field holds something else (omegaconf's merge error does not)."""
    def want(node: object, key: str, kind: type) -> None:
        if node is not None and not isinstance(node, kind):
            what = "a list" if kind is ListConfig else "a mapping"
            raise ConfigError(f"sweep error ({origin}): {key}: must be {what}")

    for key in ("overrides", "runs", "prepare"):
        want(raw.get(key), key, ListConfig)
    for section, inner in (("runs", "overrides"), ("prepare", "args")):
        for i, item in enumerate(raw.get(section) or []):
            want(item, f"{section}[{i}]", DictConfig)
            want(item.get(inner), f"{section}[{i}].{inner}", ListConfig)


def check_sweep(sweep: Sweep, origin: str) -> None:
    def check(cond: bool, key: str, problem: str) -> None:
        if not cond:
            raise ConfigError(f"sweep error ({origin}): {key}: {problem}")

    check(bool(sweep.runs) or bool(sweep.prepare), "runs", "no runs and no prepare steps")
    check(len(sweep.job_name) <= 200 and printable(sweep.job_name), "job_name",
          f"must be at most 200 printable characters without newlines, got {sweep.job_name!r}")
    for i, run in enumerate(sweep.runs):
        check(bool(run.config), f"runs[{i}].config", "required")
    for i, step in enumerate(sweep.prepare):
        check(_MODULE_NAME.fullmatch(step.module) is not None, f"prepare[{i}].module",
              f"must be a Python module name, got {step.module!r}")
        check(step.tasks >= 1, f"prepare[{i}].tasks", f"must be >= 1, got {step.tasks}")
        check(step.cpus >= 0, f"prepare[{i}].cpus", f"must be >= 0, got {step.cpus}")
        if step.tasks > 1:
            check(step.module == "data_prep.bytes", f"prepare[{i}].tasks",
                  f"a job array needs module data_prep.bytes, got {step.module!r}")
            check(step_output(step) is not None, f"prepare[{i}].args", "a job array needs --output DIR")
            check(not any(a.split("=")[0] in ("--tasks", "--task", "--workers") for a in step.args),
                  f"prepare[{i}].args", "--tasks / --task / --workers are set by the array (tasks:, cpus:)")
        check(bool(step.creates), f"prepare[{i}].creates", "required (the file the step writes last)")
        for j, arg in enumerate(step.args):
            check("\0" not in arg, f"prepare[{i}].args[{j}]", "must not contain a NUL byte")
    check(sweep.prepare_cpus > 0, "prepare_cpus", f"must be positive, got {sweep.prepare_cpus}")
    check(sweep.max_parallel >= 0, "max_parallel", f"must be >= 0, got {sweep.max_parallel}")


def step_output(step: PrepareStep) -> Optional[str]:
    """The ``--output`` argument of a step (``--output DIR`` or ``--output=DIR``), if any."""
    for j, arg in enumerate(step.args):
        if arg == "--output" and j + 1 < len(step.args):
            return step.args[j + 1]
        if arg.startswith("--output="):
            return arg.split("=", 1)[1]
    return None


def pending_steps(sweep: Sweep) -> List[PrepareStep]:
    """Preparation steps whose output does not exist yet (relative paths: from the cwd)."""
    return [step for step in sweep.prepare if not Path(step.creates).exists()]


def _mentions(message: str, steps: Sequence[PrepareStep]) -> bool:
    """Does a validation error name the output of one of these steps (or its dataset directory)?"""
    for step in steps:
        candidates = {step.creates, os.path.abspath(step.creates)}
        if os.path.basename(step.creates) == "manifest.json":
            candidates |= {os.path.dirname(c) for c in candidates}
        if any(c and c in message for c in candidates):
            return True
    return False


def _merge_unvalidated(config: str, overrides: Sequence[str]) -> Config:
    """The config tree with keys and types checked but cross-field validation left to the job."""
    cfg = load_config(config, overrides, check=False)
    cfg.run_dir = os.path.abspath(os.path.expanduser(cfg.run_dir))
    validate_slurm(cfg)
    return cfg


def load_runs(sweep: Sweep, cli_overrides: Sequence[str]) -> Tuple[List[LoadedRun], List[PrepareStep]]:
    """Validate every run (deferring only checks of files that pending steps will create)."""
    pending = pending_steps(sweep)
    runs: List[LoadedRun] = []
    for i, run in enumerate(sweep.runs):
        overrides = [*sweep.overrides, *run.overrides, *cli_overrides]
        origin = f"runs[{i}] ({run.config})"
        try:
            runs.append(LoadedRun(load_run_config(run.config, overrides), origin))
        except ConfigError as err:
            if not _mentions(str(err), pending):
                raise ConfigError(f"{origin}: {err}") from None
            try:
                cfg = _merge_unvalidated(run.config, overrides)
            except ConfigError as bad:  # a wrong key or type is not about the pending data
                raise ConfigError(f"{origin}: {bad}") from None
            runs.append(LoadedRun(cfg, origin, str(err)))
            print(f"note: {origin}: checked again when the job starts, after data preparation: "
                  f"{err}", file=sys.stderr)
    seen = {}
    for run in runs:
        other = seen.setdefault(run.cfg.run_dir, run.origin)
        if other != run.origin:
            raise ConfigError(f"sweep error: {run.origin} and {other} share run_dir {run.cfg.run_dir}")
    return runs, pending
