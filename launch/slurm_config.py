"""Checks of the config's ``slurm`` section (the launcher's job: training ignores the section).

Values that reach ``#SBATCH`` lines are validated; the rest is shell-quoted by the launcher;
nothing may contain a newline or other control character (:func:`printable`).
"""

from __future__ import annotations

import re
from typing import Optional

from pretrain.config import Config, ConfigError


def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"config error: {key}: {problem}")


# Options that ``python -m launch.slurm`` writes itself; ``slurm.extra_directives`` may not repeat them.
SLURM_OWNED_OPTIONS = frozenset({
    "nodes", "ntasks", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "mem", "time",
    "partition", "account", "qos", "job-name", "output", "error", "open-mode", "signal",
    "requeue", "no-requeue", "array", "chdir", "dependency"})
_SLURM_NAME = re.compile(r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*")
_SLURM_TIME = re.compile(r"(\d+-\d{1,2}(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE)")
_SLURM_DIRECTIVE = re.compile(r"--([a-z][a-z0-9-]*)(=.+)?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE = re.compile(r"[A-Za-z0-9_.+/@:=-]+")


def printable(text: str) -> bool:
    """No control characters (a newline would end an ``#SBATCH`` line or a comment)."""
    return not any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def slurm_time_seconds(text: str) -> Optional[int]:
    """Seconds in a Slurm time limit (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``)."""
    if not text or text in ("UNLIMITED", "INFINITE") or set(text) <= set("0:-"):
        return None  # 0 (in any spelling): no limit, as sbatch reads it
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        parts += [0] * (3 - len(parts))  # D-H, D-H:M, D-H:M:S
        return int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    if len(parts) == 1:
        return parts[0] * 60  # minutes
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]  # minutes:seconds
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def validate_slurm(cfg: Config) -> None:
    """Check the ``slurm`` section: values that reach ``#SBATCH`` lines are validated, the rest
    is shell-quoted by the launcher; nothing may contain a newline or other control character."""
    s = cfg.slurm
    _check(s.nodes > 0, "slurm.nodes", f"must be positive, got {s.nodes}")
    _check(s.gpus_per_node >= 0, "slurm.gpus_per_node", f"must be >= 0, got {s.gpus_per_node}")
    _check(s.procs_per_node >= 0, "slurm.procs_per_node", f"must be >= 0, got {s.procs_per_node}")
    if s.gpus_per_node and s.procs_per_node:
        _check(s.procs_per_node <= s.gpus_per_node, "slurm.procs_per_node",
               f"{s.procs_per_node} processes for {s.gpus_per_node} GPUs per node")
    _check(s.cpus_per_task >= 0, "slurm.cpus_per_task", f"must be >= 0, got {s.cpus_per_task}")
    _check(not s.mem or re.fullmatch(r"\d+[KMGT]?", s.mem) is not None, "slurm.mem",
           f"must be a size like 480G or 0, got {s.mem!r}")
    _check(not s.time or _SLURM_TIME.fullmatch(s.time) is not None, "slurm.time",
           f"must be minutes, HH:MM:SS or D-HH:MM:SS, got {s.time!r}")
    for key in ("partition", "account", "qos"):
        value = getattr(s, key)
        _check(not value or _SLURM_NAME.fullmatch(value) is not None, f"slurm.{key}",
               f"must be a name (letters, digits, _ . + -; comma-separated), got {value!r}")
    _check(bool(s.job_name) and len(s.job_name) <= 200 and printable(s.job_name), "slurm.job_name",
           f"must be 1-200 printable characters without newlines, got {s.job_name!r}")
    for key in ("output_dir", "activate", "python", "container_image"):
        value = getattr(s, key)
        _check(printable(value), f"slurm.{key}", f"must not contain newlines or control "
               f"characters, got {value!r}")
    _check("\\" not in s.output_dir, "slurm.output_dir",
           "must not contain a backslash (sbatch reads it as an escape)")
    _check(0 <= s.signal_seconds <= 65535, "slurm.signal_seconds",
           f"must be in [0, 65535], got {s.signal_seconds}")
    limit = slurm_time_seconds(s.time)
    if limit is not None and s.signal_seconds:
        _check(s.signal_seconds < limit, "slurm.signal_seconds",
               f"{s.signal_seconds} s is not shorter than slurm.time={s.time}")
    _check(s.max_requeues >= 0, "slurm.max_requeues", f"must be >= 0, got {s.max_requeues}")
    for name, value in s.env.items():
        _check(_ENV_NAME.fullmatch(str(name)) is not None, f"slurm.env.{name}",
               "not a valid environment variable name")
        _check("\0" not in str(value), f"slurm.env.{name}", "must not contain a NUL byte")
    for i, module in enumerate(s.modules):
        _check(_MODULE.fullmatch(module) is not None, f"slurm.modules[{i}]",
               f"not a module name, got {module!r}")
    for i, mount in enumerate(s.container_mounts):
        _check(bool(mount) and printable(mount) and "," not in mount, f"slurm.container_mounts[{i}]",
               f"must be SRC[:DST[:FLAGS]] without commas or newlines, got {mount!r}")
    for i, line in enumerate(s.extra_directives):
        match = _SLURM_DIRECTIVE.fullmatch(line) if printable(line) else None
        _check(match is not None, f"slurm.extra_directives[{i}]",
               f"must be one sbatch option like --constraint=h100, got {line!r}")
        assert match is not None
        name = match.group(1)
        # sbatch takes any unambiguous prefix of an option (--out is --output, --arr --array)
        owned = sorted(o for o in SLURM_OWNED_OPTIONS if o.startswith(name))
        spelled = f"--{name}" + (f" (--{owned[0]})" if owned and owned[0] != name else "")
        _check(not owned, f"slurm.extra_directives[{i}]",
               f"{spelled} is set by the launcher; use the slurm section's own field")
        _check(not (s.mem and name.startswith("mem-per")), f"slurm.extra_directives[{i}]",
               f"--{name} cannot go with slurm.mem={s.mem} (sbatch refuses both); set slurm.mem=''")
        value = (match.group(2) or "=")[1:]
        _check(value[:1] not in ("'", '"'), f"slurm.extra_directives[{i}]",
               f"write the value unquoted (the launcher quotes it), got {line!r}")
        _check("\\" not in line, f"slurm.extra_directives[{i}]",
               "must not contain a backslash (sbatch reads it as an escape)")
    _check(s.master_port == 0 or 1024 <= s.master_port <= 65535, "slurm.master_port",
           f"must be 0 or in [1024, 65535], got {s.master_port}")

