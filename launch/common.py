"""What the Slurm and local launchers share: loading a run's config, the files a launch leaves in
``<run_dir>/launch/``, and the command each training process runs under torchrun.

A launched run reads exactly one file: ``<run_dir>/launch/config.yaml``, the validated config with
an absolute ``run_dir``. No ``key=value`` text travels through a shell script; the job only
needs paths, which the renderers quote.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from data_prep.atomic import atomic_write_text
from launch.slurm_config import validate_slurm
from pretrain.checkpoints import store
from pretrain.config import REPO_ROOT, Config, ConfigError, derive, load_config, slurm_procs_per_node, to_yaml
from pretrain.runtime.processes import EXIT_REQUEUE, STOP_REASON, read_stop_reason

LAUNCH_DIR = "launch"
"""Subdirectory of the run directory with the launch files (config, job script, requeue count)."""


def launch_dir(run_dir: os.PathLike | str) -> Path:
    return Path(run_dir) / LAUNCH_DIR


def launched_config_path(run_dir: os.PathLike | str) -> Path:
    """The one config file a launched run trains from."""
    return launch_dir(run_dir) / "config.yaml"


def load_run_config(config: Optional[os.PathLike | str], overrides: Sequence[str]) -> Config:
    """Load and validate a config, then make ``run_dir`` absolute (jobs may start elsewhere)."""
    cfg = load_config(config, overrides)
    validate_slurm(cfg)
    cfg.run_dir = os.path.abspath(os.path.expanduser(cfg.run_dir))
    return cfg


def world_size(cfg: Config, nodes: int, procs_per_node: int) -> int:
    """Check that the layout fits the config (TP divides the world, the batch divides evenly)."""
    world = nodes * procs_per_node
    derive(cfg, world_size=world)  # raises ConfigError naming the key
    return world


def check_resume_layout(cfg: Config, world: int) -> None:
    """A run that will resume must resume at the layout that wrote its checkpoint: refuse a
    launch with another process count before any process starts (the engine checks again)."""
    if not cfg.checkpoint.resume:
        return
    ckpt = store.pointed(Path(cfg.run_dir) / "checkpoints")
    if ckpt is None:
        return
    writers = store.rank_file_count(ckpt)
    # A single-process checkpoint (state.pt, no rank files; a run trained locally by
    # pretrain.compare, say) is left to the engine, which refuses it in one line when it starts.
    if writers and writers != world:
        raise ConfigError(f"resume error: {store.resume_layout_error(ckpt, writers, world)}")


def procs_per_node(cfg: Config) -> int:
    """Training processes per node of a Slurm job (``slurm.procs_per_node``, else one per GPU)."""
    return slurm_procs_per_node(cfg)


def save_run_config(cfg: Config) -> Path:
    """Write ``<run_dir>/launch/config.yaml`` (atomically)."""
    path = launched_config_path(cfg.run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, to_yaml(cfg))


def worker_command(python: str, expect_world_size: int, config_path: str,
                   allow_loopback_master: bool = False) -> List[str]:
    """What torchrun starts in every process: the checks of :mod:`launch.worker`, then training."""
    cmd = [python, "-m", "launch.worker", "--expect-world-size", str(expect_world_size)]
    if allow_loopback_master:
        cmd.append("--allow-loopback-master")
    return cmd + ["--", "--config", config_path]


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_environment() -> Dict[str, str]:
    """The environment for training processes: this repository importable, one OpenMP thread
    per process unless the caller chose otherwise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def fail(message: str, code: int = 2) -> int:
    """Print one ``error:`` line on stderr and return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


__all__ = ["ConfigError", "EXIT_REQUEUE", "LAUNCH_DIR", "STOP_REASON", "check_resume_layout", "fail",
           "job_environment", "launch_dir", "launched_config_path", "load_run_config", "procs_per_node",
           "read_json", "read_stop_reason", "save_run_config", "world_size", "worker_command"]
