"""Submit training to Slurm: ``python -m launch.slurm --config FILE [--dry-run] [key=value ...]``.

Renders an sbatch script from the validated config (its ``slurm`` section gives nodes, GPUs,
time limit, partition, ...), saves it and the resolved config in ``<run_dir>/launch/``, submits
it with ``sbatch`` and prints one JSON object (job id, script, log). ``--dry-run`` prints the
script instead and writes nothing. ``--sweep FILE`` submits a job array of several configs, after
a data-preparation job when their data is missing (see ``launch/sweep.py``).

The job: one task per node runs torchrun; the nodes meet in a c10d rendezvous on the first node
of the allocation (``scontrol show hostnames``); a multi-node job whose first node resolves to a
loopback address fails at once instead of hanging. ``--signal=USR1@slurm.signal_seconds`` asks
for a warning before the time limit; on it (or ``scancel --signal=USR1 JOB``) training
checkpoints, the job requeues itself (``scontrol requeue``, at most ``slurm.max_requeues`` times)
and resumes from ``<run_dir>/checkpoints/latest``. A finished run is never requeued.

Safety: config values reach the script only as shell-quoted words in a block of assignments at
its top, or as ``#SBATCH`` values that were validated (no newlines) and quoted the way sbatch
parses them; the script body is static (``launch/sbatch/*.sh``). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from data_prep.atomic import atomic_write_text
from launch.common import (
    EXIT_REQUEUE,
    check_resume_layout,
    fail,
    launch_dir,
    launched_config_path,
    load_run_config,
    procs_per_node,
    save_run_config,
    world_size,
)
from launch.slurm_config import printable
from launch.sweep import LoadedRun, PrepareStep, Sweep, load_runs, load_sweep, step_output
from pretrain.config import (
    REPO_ROOT,
    Config,
    ConfigError,
    SlurmConfig,
    as_dict,
    to_yaml,
)

SCRIPTS = Path(__file__).resolve().parent / "sbatch"


# --------------------------------------------------------------------------------------------
# Quoting
# --------------------------------------------------------------------------------------------


def _no_control(value: str, key: str) -> str:
    if not printable(value):
        raise ConfigError(f"config error: {key}: {value!r} contains a newline or control character "
                          "and cannot go into a job script directive")
    return value


def directive_value(value: str, key: str) -> str:
    """A value for an ``#SBATCH`` line: one line, quoted so that sbatch's parser (which honours
    single and double quotes and backslash escapes) reads it back unchanged."""
    _no_control(value, key)
    if "\\" in value:
        raise ConfigError(f"config error: {key}: {value!r} contains a backslash, which sbatch "
                          "reads as an escape in #SBATCH lines")
    return shlex.quote(value)


def output_pattern(directory: str, name: str, key: str) -> str:
    """``--output`` value: literal ``%`` doubled (sbatch expands ``%j``, ``%x``, ...)."""
    return directive_value(os.path.join(directory.replace("%", "%%"), name), key)


def words(values: Sequence[str]) -> str:
    """A bash array literal body: every element shell-quoted."""
    return " ".join(shlex.quote(v) for v in values)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def directives(s: SlurmConfig, job_name: str, output: str, *, nodes: int, gpus: bool = True,
               cpus: Optional[int] = None, array: Optional[str] = None,
               preemptible: bool = True) -> List[str]:
    """The ``#SBATCH`` lines; ``output`` is already a quoted directive value."""
    lines = [f"--job-name={directive_value(job_name, 'slurm.job_name')}",
             f"--nodes={nodes}", "--ntasks-per-node=1"]
    cpus = s.cpus_per_task if cpus is None else cpus
    if cpus:
        lines.append(f"--cpus-per-task={cpus}")
    if gpus and s.gpus_per_node:
        lines.append(f"--gpus-per-node={s.gpus_per_node}")
    if s.mem:
        lines.append(f"--mem={s.mem}")
    if s.time:
        lines.append(f"--time={s.time}")
    for key in ("partition", "account", "qos"):
        if getattr(s, key):
            lines.append(f"--{key}={getattr(s, key)}")
    lines += [f"--output={output}", "--open-mode=append"]
    if preemptible:
        if s.signal_seconds:
            lines.append(f"--signal=USR1@{s.signal_seconds}")
        lines.append("--requeue")
    if array:
        lines.append(f"--array={array}")
    for i, line in enumerate(s.extra_directives):  # validated: --name or --name=value
        name, eq, value = line.partition("=")
        lines.append(name + (eq + directive_value(value, f"slurm.extra_directives[{i}]") if eq else ""))
    return ["#SBATCH " + line for line in lines]


def environment_values(s: SlurmConfig, python: str) -> List[str]:
    """Assignments read by ``launch/sbatch/common.sh``."""
    return [
        f"WORKDIR={shlex.quote(os.getcwd())}",
        f"REPO={shlex.quote(str(REPO_ROOT))}",
        f"PYTHON={shlex.quote(python)}",
        f"MODULES=({words(s.modules)})",
        f"ACTIVATE={shlex.quote(s.activate)}",
        f"ENV_VARS=({words([f'{k}={v}' for k, v in s.env.items()])})",
    ]


def job_python(s: SlurmConfig) -> str:
    if s.python:
        return s.python
    return "python" if s.container_image else sys.executable


def _script(shebang: str, sbatch: List[str], about: List[str], values: List[str],
            bodies: Sequence[str]) -> str:
    parts = [shebang, *sbatch, "#", *("# " + line if line else "#" for line in about), "",
             "# ---- values from the validated config (every one shell-quoted) " + "-" * 30,
             *values, ""]
    text = "\n".join(parts) + "\n"
    for body in bodies:
        text += "\n" + (SCRIPTS / body).read_text()
    return text


def check_devices(cfg: Config) -> None:
    """GPUs asked from Slurm and the training device must agree (checked at submission only:
    the same config may well train on the CPU elsewhere)."""
    gpus, device = cfg.slurm.gpus_per_node, cfg.train.device
    if gpus and device == "cpu":
        raise ConfigError(f"config error: slurm.gpus_per_node: {gpus} GPUs per node but "
                          "train.device=cpu")
    if not gpus and device == "cuda":
        raise ConfigError("config error: train.device: cuda needs slurm.gpus_per_node > 0 in a "
                          "Slurm job")


def render_training(runs: Sequence[Config], *, output_dir: str, job_name: str,
                    max_parallel: int = 0) -> str:
    """The sbatch script for one run, or a job array of several runs sharing ``runs[0].slurm``."""
    s = runs[0].slurm
    nproc = procs_per_node(runs[0])
    world = 0
    for cfg in runs:
        check_devices(cfg)
        world = world_size(cfg, s.nodes, nproc)
        check_resume_layout(cfg, world)
    array = None
    if len(runs) > 1:
        array = f"0-{len(runs) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    log_name = "slurm-%A_%a.out" if array else "slurm-%j.out"
    where = "slurm.output_dir" if s.output_dir else "run_dir"  # the logs' default: <run_dir>/launch
    sbatch = directives(s, job_name, output_pattern(output_dir, log_name, where),
                        nodes=s.nodes, array=array)
    about = ["MEGABYTE training job rendered by `python -m launch.slurm` (launch/slurm.py).",
             "Resubmit it as it was with `sbatch <this file>`: training resumes from the run's",
             "latest checkpoint. Each run trains from <run dir>/launch/config.yaml."]
    srun_extra: List[str] = []
    if s.container_image:
        srun_extra += [f"--container-image={s.container_image}", f"--container-workdir={os.getcwd()}"]
        if s.container_mounts:
            srun_extra.append("--container-mounts=" + ",".join(s.container_mounts))
    values = [
        f"RUN_DIRS=({words([cfg.run_dir for cfg in runs])})",
        *environment_values(s, job_python(s)),
        f"NPROC_PER_NODE={nproc}",
        f"WORLD_SIZE={world}",
        f"MAX_REQUEUES={s.max_requeues}",
        f"MASTER_PORT={s.master_port}",
        f"SHUTDOWN_SECONDS={max(30, s.signal_seconds)}",
        f"ALLOW_LOOPBACK_MASTER={int(s.allow_loopback_master)}",
        f"SRUN_EXTRA=({words(srun_extra)})",
    ]
    shebang = "#!/bin/bash -l" if s.modules else "#!/bin/bash"  # login shell: `module` exists
    return _script(shebang, sbatch, about, values, ["common.sh", "train.sh"])


def render_prepare(steps: Sequence[PrepareStep], s: SlurmConfig, *, output_dir: str, job_name: str,
                   cpus: int, array: int = 0, log_name: str = "prepare-%j.out") -> str:
    """The sbatch script of a sweep's data preparation (one node, no GPUs, not requeued).

    ``array`` > 0 makes it a job array of that many tasks, each running the same steps (a
    ``data_prep.bytes --tasks N`` step takes its share from ``SLURM_ARRAY_TASK_ID``)."""
    sbatch = directives(s, job_name, output_pattern(output_dir, log_name, "sweep output_dir"),
                        nodes=1, gpus=False, cpus=cpus, preemptible=False,
                        array=f"0-{array - 1}" if array else None)
    about = ["Data preparation rendered by `python -m launch.slurm --sweep` (launch/slurm.py);",
             "the jobs after it wait for it (afterok)."]
    flat: List[str] = []
    for step in steps:
        flat += [str(1 + len(step.args)), step.module, *step.args]
    values = [*environment_values(s, job_python(s)), f"STEPS=({words(flat)})"]
    shebang = "#!/bin/bash -l" if s.modules else "#!/bin/bash"
    return _script(shebang, sbatch, about, values, ["common.sh", "prepare.sh"])


@dataclasses.dataclass
class PrepJob:
    """One preparation job of a submission (they run one after another, each ``afterok``)."""

    name: str
    file: str  # script file name in the submission's output directory
    script: str
    log_name: str  # Slurm output pattern (%j = job id; %A_%a = array job id and task)
    array: int = 0  # number of array tasks; 0 = a plain job

    def log(self, output_dir: str, job_id: str) -> str:
        return os.path.join(output_dir, self.log_name.replace("%j", job_id).replace("%A", job_id))


def prepare_jobs(steps: Sequence[PrepareStep], s: SlurmConfig, *, output_dir: str, job_name: str,
                 cpus: int) -> List[PrepJob]:
    """Pending steps as jobs: each step with ``tasks`` > 1 becomes an array job plus a merge job
    (first, in order); the other steps one job after them (they may read what the arrays made)."""
    jobs: List[PrepJob] = []
    for i, step in enumerate(st for st in steps if st.tasks > 1):
        task_cpus = step.cpus or cpus
        shard = PrepareStep(step.module, [*step.args, "--tasks", str(step.tasks),
                                          "--workers", str(task_cpus)], step.creates)
        name = f"{job_name}-prepare{i}"
        jobs.append(PrepJob(name, f"prepare-array{i}.sbatch", render_prepare(
            [shard], s, output_dir=output_dir, job_name=name, cpus=task_cpus, array=step.tasks,
            log_name=f"prepare-array{i}-%A_%a.out"), f"prepare-array{i}-%A_%a.out", step.tasks))
        merge = PrepareStep("data_prep.merge", [str(step_output(step))], step.creates)
        jobs.append(PrepJob(name + "-merge", f"prepare-merge{i}.sbatch", render_prepare(
            [merge], s, output_dir=output_dir, job_name=name + "-merge", cpus=1,
            log_name=f"prepare-merge{i}-%j.out"), f"prepare-merge{i}-%j.out"))
    plain = [st for st in steps if st.tasks <= 1]
    if plain:
        jobs.append(PrepJob(job_name + "-prepare", "prepare.sbatch", render_prepare(
            plain, s, output_dir=output_dir, job_name=job_name + "-prepare", cpus=cpus),
            "prepare-%j.out"))
    return jobs


# --------------------------------------------------------------------------------------------
# Planning and submitting
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Submission:
    """What one invocation submits: an optional preparation job, then the training job."""

    runs: List[LoadedRun]
    output_dir: str
    job_name: str
    script: str
    prepare: List[PrepareStep] = dataclasses.field(default_factory=list)
    prep_jobs: List[PrepJob] = dataclasses.field(default_factory=list)
    run_scripts: List[str] = dataclasses.field(default_factory=list)
    """Of an array: each run's own one-run script (``<run_dir>/launch/job.sbatch``)."""

    @property
    def prepare_script(self) -> Optional[str]:
        """The script of the plain preparation job (steps without ``tasks``), if any."""
        return next((j.script for j in self.prep_jobs if j.file == "prepare.sbatch"), None)

    @property
    def script_path(self) -> Path:
        if len(self.runs) == 1:
            return launch_dir(self.runs[0].cfg.run_dir) / "job.sbatch"
        return Path(self.output_dir) / "array.sbatch"


def _same_slurm(runs: Sequence[LoadedRun]) -> None:
    first = as_dict(runs[0].cfg)["slurm"]
    for run in runs[1:]:
        other = as_dict(run.cfg)["slurm"]
        for key in first:
            if key not in ("job_name", "output_dir") and other[key] != first[key]:
                raise ConfigError(
                    f"sweep error: {run.origin}: slurm.{key}={other[key]!r} differs from "
                    f"{runs[0].origin}'s {first[key]!r}; the tasks of an array share one set of "
                    "resources")


def plan_single(config: Optional[str], overrides: Sequence[str]) -> Submission:
    cfg = load_run_config(config, overrides)
    run = LoadedRun(cfg, str(config))
    output_dir = os.path.abspath(cfg.slurm.output_dir or str(launch_dir(cfg.run_dir)))
    script = render_training([cfg], output_dir=output_dir, job_name=cfg.slurm.job_name)
    return Submission([run], output_dir, cfg.slurm.job_name, script)


def plan_sweep(path: str, overrides: Sequence[str]) -> Submission:
    sweep: Sweep = load_sweep(path)
    runs, pending = load_runs(sweep, overrides)
    first = runs[0].cfg if runs else None
    if first is None:  # preparation only: the default config's slurm section, with overrides
        first = load_run_config(None, [*sweep.overrides, *overrides])
    if len(runs) > 1:
        _same_slurm(runs)
    job_name = sweep.job_name or first.slurm.job_name
    if sweep.output_dir or first.slurm.output_dir:
        output_dir = os.path.abspath(sweep.output_dir or first.slurm.output_dir)
    elif runs:
        output_dir = os.path.join(os.path.commonpath([r.cfg.run_dir for r in runs]), "launch")
    else:
        output_dir = os.path.abspath("launch")
    script = render_training([r.cfg for r in runs], output_dir=output_dir, job_name=job_name,
                             max_parallel=sweep.max_parallel) if runs else ""
    # Each run keeps a script of its own that resubmits it alone (not the whole array).
    own = [render_training([r.cfg], output_dir=str(launch_dir(r.cfg.run_dir)), job_name=job_name)
           for r in runs] if len(runs) > 1 else []
    jobs = prepare_jobs(pending, first.slurm, output_dir=output_dir, job_name=job_name,
                        cpus=sweep.prepare_cpus)
    return Submission(runs, output_dir, job_name, script, pending, jobs, own)


def sbatch(script: Path, dependency: Optional[str] = None) -> str:
    """Submit with sbatch (no shell involved); returns the job id."""
    cmd = ["sbatch", "--parsable"]
    if dependency:
        cmd += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
    cmd.append(str(script))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise RuntimeError("sbatch not found: is this a Slurm login node? (python -m launch.local "
                           "runs the same config on this machine)") from None
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";", 1)[0]


def write_files(plan: Submission) -> None:
    """Save what the jobs read and what reproduces them: configs, scripts (0755)."""
    Path(plan.output_dir).mkdir(parents=True, exist_ok=True)
    for run, own in zip(plan.runs, plan.run_scripts or [None] * len(plan.runs)):
        save_run_config(run.cfg)
        if own is not None:  # each run of an array keeps a script that resubmits it alone
            _write_script(launch_dir(run.cfg.run_dir) / "job.sbatch", own)
    if plan.runs:
        _write_script(plan.script_path, plan.script)
    for job in plan.prep_jobs:
        _write_script(Path(plan.output_dir) / job.file, job.script)


def _write_script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    path.chmod(0o755)


def submit_preparation(plan: Submission, result: Dict[str, object]) -> Optional[str]:
    """Submit the preparation jobs as a chain (each ``afterok`` the one before); record them in
    ``result`` (``prepare_job_id`` / ``prepare_log``: the last one, which training waits for)."""
    prepare_id: Optional[str] = None
    records = []
    for job in plan.prep_jobs:
        path = Path(plan.output_dir) / job.file
        prepare_id = sbatch(path, dependency=prepare_id)
        records.append({"name": job.name, "job_id": prepare_id, "script": str(path),
                        "log": job.log(plan.output_dir, prepare_id), "array_size": job.array or None})
        what = f"array job {prepare_id} ({job.array} tasks)" if job.array else f"job {prepare_id}"
        print(f"submitted data preparation {job.name} as {what}", file=sys.stderr)
    if records:
        result.update(prepare_job_id=prepare_id, prepare_script=records[-1]["script"],
                      prepare_log=records[-1]["log"], prepare_jobs=records)
    return prepare_id


def check_saved_configs(plan: Submission) -> None:
    """Refuse to replace a run directory's saved config with a different one: a job of that run
    still queued reads ``<run_dir>/launch/config.yaml`` when it starts, and would train the new
    config (``--replace`` allows it). The same config again (a resubmission) is fine."""
    for run in plan.runs:
        path = launched_config_path(run.cfg.run_dir)
        try:
            old = path.read_text()
        except FileNotFoundError:
            continue
        if old != to_yaml(run.cfg):
            raise ConfigError(f"config error: {path} holds another config for this run directory; "
                              "a job of it still queued would train the new one. Use another "
                              "run_dir, or --replace to overwrite it")


def _saved_configs(plan: Submission) -> Dict[Path, Optional[str]]:
    """Each run's saved launch config as it is now (None: none yet)."""
    saved: Dict[Path, Optional[str]] = {}
    for run in plan.runs:
        path = launched_config_path(run.cfg.run_dir)
        saved[path] = path.read_text() if path.is_file() else None
    return saved


def _restore_configs(saved: Dict[Path, Optional[str]]) -> None:
    """Put the saved launch configs back after a failed ``sbatch``: nothing was queued with the
    new ones, so a corrected resubmission must not be refused as "another config"."""
    for path, text in saved.items():
        if text is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_text(path, text)


def submit(plan: Submission, replace: bool = False) -> Dict[str, object]:
    if not replace:
        check_saved_configs(plan)
    saved = _saved_configs(plan)
    write_files(plan)
    result: Dict[str, object] = {"job_id": None, "script": None, "log": None,
                                 "run_dirs": [r.cfg.run_dir for r in plan.runs]}
    try:
        prepare_id = submit_preparation(plan, result)
        job_id = sbatch(plan.script_path, dependency=prepare_id) if plan.runs else ""
    except (RuntimeError, OSError):
        _restore_configs(saved)
        raise
    if plan.runs:
        array = len(plan.runs) > 1
        log = os.path.join(plan.output_dir, f"slurm-{job_id}_%a.out" if array else f"slurm-{job_id}.out")
        result.update(job_id=job_id, script=str(plan.script_path), log=log,
                      array_size=len(plan.runs) if array else None)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        for i, run in enumerate(plan.runs):
            record = {"time": stamp, "job_id": f"{job_id}_{i}" if array else job_id,
                      "script": str(plan.script_path), "log": log.replace("%a", str(i)),
                      "after": prepare_id}
            with open(launch_dir(run.cfg.run_dir) / "submissions.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        print(f"submitted {'array ' if array else ''}job {job_id}: {len(plan.runs)} run(s), log "
              f"{log}", file=sys.stderr)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.slurm", description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  python -m launch.slurm --config configs/arxiv_megabyte.yaml slurm.nodes=4 \\\n"
               "      slurm.gpus_per_node=8 slurm.time=2-00:00:00 slurm.partition=gpu\n"
               "  python -m launch.slurm --config configs/debug.yaml --dry-run slurm.nodes=2\n"
               "  python -m launch.slurm --sweep configs/sweeps/debug_matched.yaml\n\n"
               "exit codes: 0 submitted (or printed); 1 sbatch failed; 2 bad config or sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--config", help="YAML config of the run (default: configs/quickstart.yaml)")
    what.add_argument("--sweep", help="sweep file: a job array of several configs (launch/sweep.py)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the script(s) on stdout; write and submit nothing")
    parser.add_argument("--replace", action="store_true",
                        help="overwrite a run directory's saved launch config when it differs "
                             "(a job of that run still queued would train the new config)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. slurm.nodes=4 train.max_steps=1000")
    args = parser.parse_args(argv)
    try:
        plan = plan_sweep(args.sweep, args.overrides) if args.sweep else plan_single(
            args.config, args.overrides)
    except ConfigError as err:
        return fail(str(err))
    if args.dry_run:
        for job in plan.prep_jobs:
            sys.stdout.write(f"# ======== {job.file} ========\n{job.script}\n")
        if plan.prep_jobs and plan.script:
            sys.stdout.write("# ======== training job (after the preparation jobs above) ========\n")
        sys.stdout.write(plan.script)
        return 0
    try:
        result = submit(plan, args.replace)
    except ConfigError as err:
        return fail(str(err))
    except (RuntimeError, OSError) as err:
        return fail(str(err), 1)
    print(json.dumps(result))
    return 0


__all__ = ["EXIT_REQUEUE", "PrepJob", "Submission", "directive_value", "main", "plan_single",
           "plan_sweep", "prepare_jobs", "render_prepare", "render_training", "submit"]

if __name__ == "__main__":
    sys.exit(main())
