"""Launchers without a cluster: the ``slurm`` config section, rendering (golden file, hostile
values run through bash against stub Slurm commands), requeue logic, sweeps, and
``python -m launch.local`` end to end. The real-cluster tests are in test_launch_slurm.py."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from launch import slurm
from launch.common import EXIT_REQUEUE, load_run_config
from launch.slurm_config import slurm_time_seconds
from launch.sweep import load_sweep
from launch.worker import check_world
from pretrain.config import CONFIG_DIR, ConfigError, load_config
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden"
TINY = ["train.max_steps=40", "parallel.zero_stage=3", "parallel.zero3_persistence_threshold=0",
        "logging.log_interval=5"]


# ---------------------------------------------------------------------------- config section

SLURM_ERRORS = [
    (["slurm.nodes=0"], "slurm.nodes: must be positive"),
    (["slurm.partition=gpu;rm"], "slurm.partition: must be a name"),
    (["slurm.account=a b"], "slurm.account: must be a name"),
    (["slurm.time=soon"], "slurm.time: must be minutes"),
    (["slurm.time=10", "slurm.signal_seconds=600"], "slurm.signal_seconds: 600 s is not shorter"),
    (["slurm.mem=4GB"], "slurm.mem: must be a size"),
    (["slurm.env.2X=1"], "slurm.env.2X: not a valid environment variable name"),
    (["slurm.modules=[cuda;ls]"], "slurm.modules[0]: not a module name"),
    (["slurm.extra_directives=[--nodes=3]"], "--nodes is set by the launcher"),
    (["slurm.extra_directives=[constraint=h100]"], "slurm.extra_directives[0]: must be one sbatch"),
    (["slurm.gpus_per_node=8", "train.device=auto", "slurm.procs_per_node=9"],
     "slurm.procs_per_node: 9 processes for 8 GPUs"),
    (["slurm.master_port=80"], "slurm.master_port: must be 0 or in [1024, 65535]"),
    (['slurm.container_mounts=["/a:/b,ro"]'], "slurm.container_mounts[0]: must be SRC"),
    # sbatch takes unambiguous prefixes: --out is --output, --arr is --array
    (["slurm.extra_directives=[--out=/tmp/x]"], "--out (--output) is set by the launcher"),
    (["slurm.extra_directives=[--arr=0-9]"], "--arr (--array) is set by the launcher"),
    (["slurm.extra_directives=[--no-req]"], "--no-req (--no-requeue) is set by the launcher"),
    (["slurm.mem=4G", "slurm.extra_directives=[--mem-per-cpu=1G]"],
     "--mem-per-cpu cannot go with slurm.mem=4G"),
    (["slurm.extra_directives=['--comment=\"q\"']"], "write the value unquoted"),
]


@pytest.mark.parametrize("overrides,expected", SLURM_ERRORS, ids=[e[1][:32] for e in SLURM_ERRORS])
def test_slurm_section_errors_are_one_line_naming_the_key(overrides, expected):
    load_config(CONFIG_DIR / "debug.yaml", overrides)  # training ignores the section ...
    with pytest.raises(ConfigError) as info:  # ... the launcher refuses it
        load_run_config(CONFIG_DIR / "debug.yaml", overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["job_name", "output_dir", "python", "activate"])
def test_newlines_in_slurm_values_are_refused(tmp_path, key):
    bad = tmp_path / "bad.yaml"  # YAML double quotes turn \n into a real newline
    bad.write_text(f'slurm:\n  {key}: "x\\ntouch PWNED"\n')
    with pytest.raises(ConfigError, match=f"slurm.{key}: .*newline"):
        load_run_config(bad, [])


def test_slurm_time_parsing():
    assert [slurm_time_seconds(t) for t in ("90", "1:30", "01:00:00", "2-00:00:00", "1-02", "")] == [
        5400, 90, 3600, 172800, 93600, None]
    assert slurm_time_seconds("0") is None  # sbatch: no limit
    load_run_config(CONFIG_DIR / "debug.yaml", ["slurm.time=0"])  # not "signal not shorter"


def test_a_time_limit_typed_as_hours_reaches_sbatch_as_typed():
    plan = slurm.plan_single(str(CONFIG_DIR / "debug.yaml"), ["slurm.time=4:00:00"])
    assert "#SBATCH --time=4:00:00\n" in plan.script  # not --time=14400 (10 days)


def test_extra_directive_values_are_quoted_for_sbatch():
    plan = slurm.plan_single(str(CONFIG_DIR / "debug.yaml"), [
        "slurm.extra_directives=[--comment=two words, '--comment=run #1', --exclusive, --gres=gpu:8]"])
    for line in ("--comment='two words'", "--comment='run #1'", "--exclusive", "--gres=gpu:8"):
        assert f"#SBATCH {line}\n" in plan.script


# ---------------------------------------------------------------------------- golden dry run

GOLDEN_ARGS = ["--config", "configs/arxiv_megabyte.yaml", "--dry-run", "run_dir=/scratch/megabyte/arxiv",
               "slurm.nodes=4", "slurm.gpus_per_node=8", "slurm.cpus_per_task=96", "slurm.mem=0",
               "slurm.time=2-00:00:00", "slurm.partition=gpu", "slurm.account=llm", "slurm.qos=high",
               "slurm.job_name=arxiv-megabyte", "slurm.python=/shared/venv/bin/python",
               "slurm.env.NCCL_DEBUG=WARN", "slurm.extra_directives=[--exclusive,--constraint=h100]"]


def test_dry_run_4_nodes_8_gpus_matches_golden(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert slurm.main(GOLDEN_ARGS) == 0
    text = capsys.readouterr().out.replace(shlex.quote(str(ROOT)), "<repo>")
    golden = GOLDEN / "slurm_arxiv_4x8.sbatch"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), "rendered script changed; UPDATE_GOLDEN=1 rewrites the golden file"
    for directive in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=96",
                      "--time=2-00:00:00", "--partition=gpu", "--account=llm", "--qos=high",
                      "--output=/scratch/megabyte/arxiv/launch/slurm-%j.out", "--open-mode=append",
                      "--signal=USR1@300", "--requeue", "--exclusive", "--constraint=h100"):
        assert f"#SBATCH {directive}\n" in text
    assert "NPROC_PER_NODE=8\nWORLD_SIZE=32\n" in text
    assert not (Path("/scratch/megabyte/arxiv") / "launch").exists()  # a dry run writes nothing


def test_devices_must_match_the_gpus_asked_for():
    cfg = str(CONFIG_DIR / "debug.yaml")
    load_config(cfg, ["slurm.gpus_per_node=8"])  # fine to train it elsewhere on the CPU
    load_config(cfg, ["train.device=cuda"])
    with pytest.raises(ConfigError, match="slurm.gpus_per_node: 8 GPUs per node but train.device=cpu"):
        slurm.plan_single(cfg, ["slurm.gpus_per_node=8"])
    with pytest.raises(ConfigError, match="train.device: cuda needs slurm.gpus_per_node > 0"):
        slurm.plan_single(cfg, ["train.device=cuda"])


def test_layout_must_fit_the_world():
    with pytest.raises(ConfigError, match="parallel.tensor_parallel: 4 does not divide the world size 6"):
        slurm.plan_single(str(CONFIG_DIR / "debug.yaml"),
                          ["slurm.nodes=3", "slurm.procs_per_node=2", "parallel.tensor_parallel=4"])


# ---------------------------------------------------------------------------- hostile values

MARK = "PWNED"
HOSTILE = f"x $(touch {MARK}_a) `touch {MARK}_b` 'sq' \"dq\" ; touch {MARK}_c | & # %j $HOME"


def stub_slurm(bin_dir: Path, stop_reason: str = "max_steps", python_rc: int = 0) -> Dict[str, Path]:
    """Fake srun/scontrol/getent/python that record what they were given; python plays torchrun
    and writes ``stop_reason`` into the run directory taken from ``--config``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    rec = {name: bin_dir / f"{name}.calls" for name in ("srun", "scontrol", "python")}
    scripts = {
        "scontrol": f"""#!/bin/bash
printf '%s\\n' "$*" >> {shlex.quote(str(rec['scontrol']))}
if [[ $1 == show && $2 == hostnames ]]; then printf 'node1\\nnode2\\n'; fi
""",
        "getent": """#!/bin/bash
[[ $2 == node1 ]] && echo "10.0.0.1       STREAM node1"
""",
        # Run the per-node command once, as node1, like a one-node srun would.
        "srun": f"""#!/bin/bash
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> {shlex.quote(str(rec['srun']))}
while [[ $1 == -* ]]; do shift; done
SLURM_NODEID=0 SLURMD_NODENAME=node1 exec "$@"
""",
        "python": f"""#!/usr/bin/env python3
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
config = Path(args[args.index("--config") + 1])
with open({str(rec['python'])!r}, "a") as f:
    f.write(json.dumps({{"argv": args, "env": dict(os.environ), "cwd": os.getcwd()}}) + "\\n")
if {stop_reason!r}:
    (config.parent.parent / "stop_reason").write_text({stop_reason!r} + "\\n")
sys.exit({python_rc})
""",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return rec


def run_job_script(script: Path, bin_dir: Path, cwd: Path,
                   job_id: str = "4242") -> subprocess.CompletedProcess:
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(cwd), "SLURM_JOB_ID": job_id,
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_CPUS_PER_TASK": "3"}
    return subprocess.run(["bash", str(script)], cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=60)


def no_injection(*roots: Path) -> None:
    hits = [p for root in roots for p in root.rglob(f"*{MARK}_*") if MARK + "_" in p.name
            and p.name.startswith(MARK)]
    assert not hits, f"an injected command ran: {hits}"


@pytest.fixture
def hostile_plan(tmp_path, monkeypatch):
    """A job whose job name, run directory, env values, python path and module arguments are
    hostile, rendered and saved like a real submission (from a workdir that is hostile too)."""
    workdir = tmp_path / f"work {MARK}_dir $(touch {MARK}_w)"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    run_dir = tmp_path / f"runs {HOSTILE}"
    cfg = tmp_path / "hostile.yaml"  # YAML, not overrides: dotlist values end at " #"
    cfg.write_text((CONFIG_DIR / "debug.yaml").read_text().replace("run_dir: runs/debug\n", "")
                   + f"run_dir: {json.dumps(str(run_dir))}\nslurm:\n" + "".join(
        f"  {k}: {json.dumps(v)}\n" for k, v in {
            "job_name": HOSTILE, "nodes": 2, "allow_loopback_master": True,
            "python": str(tmp_path / "bin" / "python"),
            "env": {"EVIL": HOSTILE + "\ntouch PWNED_newline\n", "QUOTES": "'\"\\`$"},
        }.items()))
    plan = slurm.plan_single(str(cfg), [])
    slurm.write_files(plan)
    return plan, workdir, run_dir


def test_hostile_values_are_quoted_and_run_nothing(tmp_path, hostile_plan):
    plan, workdir, run_dir = hostile_plan
    script = plan.script_path
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # The only lines with config text: #SBATCH directives and the quoted assignment block.
    header = script.read_text().split("# ---- launch/sbatch/common.sh", 1)[0]
    assert "#SBATCH --job-name=" + shlex.quote(HOSTILE) + "\n" in header
    rec = stub_slurm(tmp_path / "bin")
    proc = run_job_script(script, tmp_path / "bin", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "training finished (max_steps); not requeued" in proc.stderr
    no_injection(tmp_path)
    calls = [json.loads(line) for line in rec["python"].read_text().splitlines()]
    assert len(calls) == 1
    argv, env = calls[0]["argv"], calls[0]["env"]
    assert calls[0]["cwd"] == str(workdir)
    assert argv[:2] == ["-m", "torch.distributed.run"]
    assert argv[-2:] == ["--config", str(run_dir / "launch" / "config.yaml")]
    assert "--rdzv-endpoint=10.0.0.1:" + str(15000 + 4242 % 15000) in argv
    assert "--rdzv-conf=is_host=1" in argv and "--nnodes=2" in argv
    assert argv[argv.index("-m", 2):argv.index("--", 2)] == [
        "-m", "launch.worker", "--expect-world-size", "2", "--allow-loopback-master"]
    assert env["EVIL"] == HOSTILE + "\ntouch PWNED_newline\n"
    assert env["QUOTES"] == "'\"\\`$"
    assert env["PYTHONPATH"].split(":")[0] == str(ROOT)
    assert env["OMP_NUM_THREADS"] == "3"  # the task's 3 CPUs for its one process
    srun = json.loads(rec["srun"].read_text().splitlines()[0])
    assert "--cpus-per-task=3" in srun and "--ntasks-per-node=1" in srun
    saved = load_config(run_dir / "launch" / "config.yaml")
    assert saved.slurm.job_name == HOSTILE and saved.run_dir == str(run_dir)


def test_requeue_on_signal_with_a_cap(tmp_path, hostile_plan):
    plan, _, run_dir = hostile_plan
    rec = stub_slurm(tmp_path / "bin", stop_reason="signal")
    max_requeues = load_config(run_dir / "launch" / "config.yaml").slurm.max_requeues
    for n in range(1, max_requeues + 1):
        proc = run_job_script(plan.script_path, tmp_path / "bin", tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"requeueing (requeue {n} of at most {max_requeues})" in proc.stderr
    assert rec["scontrol"].read_text().count("requeue 4242\n") == max_requeues
    assert (run_dir / "launch" / "requeues").read_text() == f"4242 {max_requeues}\n"
    proc = run_job_script(plan.script_path, tmp_path / "bin", tmp_path)
    assert proc.returncode == EXIT_REQUEUE and "not requeueing" in proc.stderr
    # A new submission (another job id) starts counting again.
    proc = run_job_script(plan.script_path, tmp_path / "bin", tmp_path, job_id="5000")
    assert proc.returncode == 0 and "requeue 1 of" in proc.stderr
    no_injection(tmp_path)


FAKE_TORCHRUN = r"""#!/usr/bin/env python3
# Plays torchrun (started with SIGUSR1 ignored) and one training process that ignores SIGUSR1
# for its first 1.5 s, as a real one does while it starts, then checkpoints when it gets one.
import os, subprocess, sys
from pathlib import Path
args = sys.argv[1:]
run_dir = Path(args[args.index("--config") + 1]).parent.parent
WORKER = '''
import signal, sys, time
from pathlib import Path
time.sleep(1.5)
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
deadline = time.monotonic() + 15
while not got and time.monotonic() < deadline:
    time.sleep(0.05)
Path(sys.argv[1], "stop_reason").write_text("signal\\n" if got else "max_steps\\n")
'''
Path(run_dir, "torchrun.pid").write_text(str(os.getpid()))
sys.exit(subprocess.call([sys.executable, "-c", WORKER, str(run_dir)]))
"""


def test_stop_signal_reaches_training_processes_that_were_still_starting(tmp_path, hostile_plan):
    """SIGUSR1 to a node's task while its training process still ignores it: the task delivers
    it once the process catches it (SigCgt), and the job requeues."""
    plan, _, run_dir = hostile_plan
    stub_slurm(tmp_path / "bin")
    (tmp_path / "bin" / "python").write_text(FAKE_TORCHRUN)
    srun = tmp_path / "bin" / "srun"  # remember the node task's pid (srun execs it)
    task_pid = tmp_path / "task.pid"
    srun.write_text(srun.read_text().replace(
        "while [[", f"echo $$ > {shlex.quote(str(task_pid))}\nwhile [[", 1))
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2"}
    job = subprocess.Popen(["bash", str(plan.script_path)], cwd=tmp_path, env=env, text=True,
                           stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not (run_dir / "torchrun.pid").exists():  # the task's trap is set before torchrun starts
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(int(task_pid.read_text()), signal.SIGUSR1)
    _, err = job.communicate(timeout=30)
    assert job.returncode == 0, err
    assert "SIGUSR1; asking the training processes to checkpoint and stop" in err
    assert (run_dir / "stop_reason").read_text() == "signal\n"
    assert "requeueing (requeue 1 of at most" in err


def test_failure_without_stop_reason_is_not_requeued(tmp_path, hostile_plan):
    plan, _, run_dir = hostile_plan
    (run_dir / "stop_reason").write_text("signal\n")  # stale, from an earlier run
    rec = stub_slurm(tmp_path / "bin", stop_reason="", python_rc=1)
    proc = run_job_script(plan.script_path, tmp_path / "bin", tmp_path)
    assert proc.returncode == 1
    assert "training failed" in proc.stderr and "not requeued" in proc.stderr
    assert "requeue" not in rec["scontrol"].read_text()


def test_a_diverged_run_is_not_requeued_and_exits_3(tmp_path, hostile_plan):
    """Training that aborted on non-finite steps (``stop_reason`` ``diverged``) would replay the
    same batches if requeued: the job script and the local launcher both end it with exit 3."""
    from launch.local import exit_code

    plan, _, run_dir = hostile_plan
    rec = stub_slurm(tmp_path / "bin", stop_reason="diverged", python_rc=1)
    proc = run_job_script(plan.script_path, tmp_path / "bin", tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "training diverged" in proc.stderr and "not requeued" in proc.stderr
    assert "requeue" not in rec["scontrol"].read_text()
    assert exit_code({"stop_reason": "diverged", "torchrun_exit_code": 1}) == 3


def test_loopback_master_fails_without_the_escape_hatch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = slurm.plan_single(str(CONFIG_DIR / "debug.yaml"), [
        f"run_dir={tmp_path / 'run'}", "slurm.nodes=2", f"slurm.python={tmp_path / 'bin' / 'python'}"])
    slurm.write_files(plan)
    stub_slurm(tmp_path / "bin")
    (tmp_path / "bin" / "getent").write_text("#!/bin/bash\necho '127.0.1.1 STREAM node1'\n")
    proc = run_job_script(plan.script_path, tmp_path / "bin", tmp_path)
    assert proc.returncode == 1
    assert "resolves to the loopback address 127.0.1.1 in a 2-node job" in proc.stderr
    assert not (tmp_path / "bin" / "python.calls").exists()  # failed before starting anything


def test_worker_refuses_wrong_world_and_loopback_master():
    base = {"WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2", "GROUP_RANK": "1", "MASTER_ADDR": "localhost"}
    assert "expected 4" in check_world(base, 4, False)
    assert "loopback" in check_world(base, 2, False)
    assert check_world(base, 2, True) is None
    assert check_world({**base, "GROUP_RANK": "0"}, 2, False) is None  # the master's own node
    assert check_world({**base, "MASTER_ADDR": "192.0.2.1"}, 2, False) is None


EARLY_SIGNAL = """
import os, signal, sys, time
from launch.worker import keep_early_stop_signal
keep_early_stop_signal(poll_seconds=0.05)
if sys.argv[1] == "early":
    os.kill(os.getpid(), signal.SIGUSR1)  # during start-up: only remembered
    time.sleep(0.3)
got = []
signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))  # training's handler
deadline = time.monotonic() + 2
while not got and time.monotonic() < deadline:
    time.sleep(0.05)
print(got)
"""


@pytest.mark.parametrize("when,expected", [("early", "[10]"), ("none", "[]")])
def test_worker_redelivers_a_stop_signal_from_start_up(when, expected):
    proc = subprocess.run([sys.executable, "-c", EARLY_SIGNAL, when], cwd=ROOT, text=True,
                          capture_output=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
    assert ("delivering it again" in proc.stderr) == (when == "early")


# ---------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_plans(path, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    plan = slurm.plan_sweep(str(path), [])
    assert plan.script.count("#SBATCH --array=0-") == 1
    assert subprocess.run(["bash", "-n"], input=plan.script, text=True).returncode == 0
    if plan.prepare_script:
        assert subprocess.run(["bash", "-n"], input=plan.prepare_script, text=True).returncode == 0


def write_sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(body)
    return path


def two_run_sweep(tmp_path: Path, second: str, *second_overrides: str) -> Path:
    """A sweep of configs/debug.yaml (run_dir a) and configs/SECOND (run_dir b, more overrides)."""
    extra = "".join(f", {o}" for o in second_overrides)
    return write_sweep(tmp_path, f"""
runs:
  - config: {CONFIG_DIR / 'debug.yaml'}
    overrides: [run_dir={tmp_path / 'a'}]
  - config: {CONFIG_DIR / second}
    overrides: [run_dir={tmp_path / 'b'}{extra}]
""")


def test_sweep_defers_checks_only_for_files_a_prepare_step_creates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tok = tmp_path / "tok.model"
    sweep = write_sweep(tmp_path, f"""
runs:
  - config: {CONFIG_DIR / 'debug.yaml'}
    overrides: [run_dir={tmp_path / 'a'}]
  - config: {CONFIG_DIR / 'debug_subword.yaml'}
    overrides: [run_dir={tmp_path / 'b'}, model.tokenizer={tok}]
prepare:
  - module: data_prep.tokenizer
    args: [--output, {tmp_path / 'tok'}, --vocab-size, "300", "$(touch {MARK}_arg)"]
    creates: {tok}
""")
    plan = slurm.plan_sweep(str(sweep), [])
    assert [r.deferred is not None for r in plan.runs] == [False, True]
    assert "#SBATCH --array=0-1\n" in plan.script
    assert plan.prepare_script and "STEPS=(6 data_prep.tokenizer" in plan.prepare_script
    tok.write_text("x")  # prepared already: no preparation job, nothing deferred
    plan = slurm.plan_sweep(str(sweep), [])
    assert plan.prepare_script is None
    with pytest.raises(ConfigError, match="model.tokenizer: file not found"):
        slurm.plan_sweep(str(sweep), [f"model.tokenizer={tmp_path / 'other.model'}"])


def test_prepare_script_runs_steps_as_plain_words(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, f"""
prepare:
  - module: data_prep.tokenizer
    args: ["$(touch {MARK}_1)", "a b", "`touch {MARK}_2`"]
    creates: {tmp_path / 'never'}
  - module: data_prep.bytes
    args: []
    creates: {tmp_path / 'never2'}
""")
    plan = slurm.plan_sweep(str(sweep), [f"slurm.python={tmp_path / 'bin' / 'python'}"])
    assert not plan.runs and plan.prepare_script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "python").write_text("#!/usr/bin/env python3\nimport json, sys\n"
                                    f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    (bin_dir / "python").chmod(0o755)
    script = tmp_path / "prepare.sbatch"
    script.write_text(plan.prepare_script)
    proc = run_job_script(script, bin_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in calls.read_text().splitlines()] == [
        ["-m", "data_prep.tokenizer", f"$(touch {MARK}_1)", "a b", f"`touch {MARK}_2`"],
        ["-m", "data_prep.bytes"]]
    no_injection(tmp_path)


@pytest.mark.parametrize("body,expected", [
    ("runs: []\n", "no runs and no prepare steps"),
    ("runs:\n  - overrides: []\n", "runs[0].config: required"),
    ("runz: []\n", "runz"),
    ("prepare:\n  - module: 'os; rm'\n    creates: x\n", "prepare[0].module: must be a Python module"),
    ("prepare:\n  - module: data_prep.tokenizer\n    tasks: 4\n    creates: x\n",
     "prepare[0].tasks: a job array needs module data_prep.bytes"),
    ("prepare:\n  - module: data_prep.bytes\n    tasks: 4\n    args: [c]\n    creates: x\n",
     "prepare[0].args: a job array needs --output DIR"),
    ("prepare:\n  - module: data_prep.bytes\n    tasks: 2\n    args: [--output=o, --task, '1']\n"
     "    creates: x\n", "--tasks / --task / --workers are set by the array"),
    ("prepare:\n  - module: data_prep.bytes\n    tasks: 0\n    creates: x\n",
     "prepare[0].tasks: must be >= 1"),
    ("- a\n", "must hold a mapping at the top level, not a list"),
    ("runs:\n  config: x\n", "runs: must be a list"),
    ("runs:\n  - config: x\n    overrides: a=1\n", "runs[0].overrides: must be a list"),
    ("job_name: " + "j" * 201 + "\nruns:\n  - config: x\n", "job_name: must be at most 200"),
])
def test_sweep_file_errors(tmp_path, body, expected):
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path, body))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_prepare_step_with_tasks_is_an_array_then_a_merge_then_the_rest(tmp_path, monkeypatch):
    """Job chain: data_prep.bytes as a 3-task array (each task --tasks 3, its index from
    SLURM_ARRAY_TASK_ID), a merge job of its output, then the plain steps, then training."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "data"
    sweep = write_sweep(tmp_path, f"""
prepare:
  - module: data_prep.tokenizer
    args: [--dataset, {out}]
    creates: {tmp_path / 'tok.model'}
  - module: data_prep.bytes
    tasks: 3
    cpus: 2
    args: [corpus, --output, {out}]
    creates: {out / 'manifest.json'}
""")
    plan = slurm.plan_sweep(str(sweep), [])
    assert [j.file for j in plan.prep_jobs] == ["prepare-array0.sbatch", "prepare-merge0.sbatch",
                                                 "prepare.sbatch"]
    array, merge, plain = (j.script for j in plan.prep_jobs)
    assert "#SBATCH --array=0-2\n" in array and "#SBATCH --cpus-per-task=2\n" in array
    assert f"STEPS=(8 data_prep.bytes corpus --output {out} --tasks 3 --workers 2)" in array
    assert "--array" not in merge and f"STEPS=(2 data_prep.merge {out})" in merge
    assert "data_prep.tokenizer" in plain and "data_prep.bytes" not in plain
    for script in (array, merge, plain):
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    calls = []
    monkeypatch.setattr(slurm, "sbatch", lambda path, dependency=None: calls.append(
        (Path(path).name, dependency)) or str(100 + len(calls)))
    result = slurm.submit(plan)
    assert calls == [("prepare-array0.sbatch", None), ("prepare-merge0.sbatch", "101"),
                     ("prepare.sbatch", "102")]
    assert result["prepare_job_id"] == "103"
    assert result["prepare_jobs"][0]["log"] == str(tmp_path / "launch" / "prepare-array0-101_%a.out")
    (out / "manifest.json").parent.mkdir()
    (out / "manifest.json").write_text("{}")  # prepared: only the tokenizer step is left
    assert [j.file for j in slurm.plan_sweep(str(sweep), []).prep_jobs] == ["prepare.sbatch"]


def test_array_tasks_must_share_resources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = two_run_sweep(tmp_path, "debug.yaml", "slurm.nodes=2")
    with pytest.raises(ConfigError, match="slurm.nodes=2 differs"):
        slurm.plan_sweep(str(sweep), [])
    with pytest.raises(ConfigError, match="share run_dir"):
        slurm.plan_sweep(str(sweep), [f"run_dir={tmp_path / 'same'}"])


# ---------------------------------------------------------------------------- launch.local


def launcher_env() -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                   str(ROOT / ".cache" / "torch_extensions"))}


def local_cmd(run_dir: Path, *extra: str) -> List[str]:
    return [sys.executable, "-m", "launch.local", "--config", "configs/debug.yaml", "--nproc", "2",
            f"run_dir={run_dir}", *TINY, *extra]


def test_local_dry_run():
    proc = subprocess.run(local_cmd(Path("/tmp/never"), "--dry-run"), cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cmd = json.loads(proc.stdout)["command"]
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "--max-restarts=0"]
    assert cmd[-2:] == ["--config", "/tmp/never/launch/config.yaml"]


@pytest.mark.slow
def test_local_stop_on_signal_then_resume(tmp_path):
    """Two processes on this machine: SIGUSR1 to the launcher checkpoints and exits 75; the same
    command again resumes and finishes."""
    run_dir = tmp_path / "run"
    err = (tmp_path / "log").open("w+")
    proc = subprocess.Popen(local_cmd(run_dir), cwd=ROOT, env=launcher_env(), text=True,
                            stdout=subprocess.PIPE, stderr=err)
    deadline = time.monotonic() + 120
    while "step 5/40" not in Path(err.name).read_text():
        assert proc.poll() is None and time.monotonic() < deadline, Path(err.name).read_text()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    log = Path(err.name).read_text()
    assert proc.returncode == EXIT_REQUEUE, log[-3000:]
    first = json.loads(out)
    assert first["stop_reason"] == "signal" and 5 <= first["results"]["steps"] < 40
    again = subprocess.run(local_cmd(run_dir), cwd=ROOT, env=launcher_env(), text=True,
                           capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads(again.stdout)
    assert result["stop_reason"] == "max_steps" and result["results"]["steps"] == 40
    assert f"resumed from {run_dir}/checkpoints/step_{first['results']['steps']:08d}" in again.stderr
    assert "[launch] rank 1 of 2" in again.stderr
    assert (run_dir / "launch" / "config.yaml").is_file()


def test_a_preparation_only_sweep_checks_the_slurm_section_and_takes_its_overrides(
        tmp_path, monkeypatch):
    """Without runs, the preparation job's resources come from the default config: validated
    like any other (a newline in a directive used to reach the script) and with the sweep's
    own overrides (they used to be dropped)."""
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, f"""
overrides: [slurm.partition=cpuq, slurm.time=2:00:00]
prepare:
  - module: data_prep.tokenizer
    args: []
    creates: {tmp_path / 'never'}
""")
    plan = slurm.plan_sweep(str(sweep), [])
    assert "#SBATCH --partition=cpuq\n" in plan.prepare_script
    assert "#SBATCH --time=2:00:00\n" in plan.prepare_script
    for bad, key in (('slurm.partition="gpu\\ntouch PWNED"', "slurm.partition"),
                     ("slurm.nodes=0", "slurm.nodes"), ("slurm.mem=lots", "slurm.mem")):
        with pytest.raises(ConfigError, match=key):
            slurm.plan_sweep(str(sweep), [bad])


def test_a_wrong_key_or_type_in_a_deferred_run_is_one_line(tmp_path, monkeypatch):
    """A run whose data a prepare step makes is checked later, but a typo is not about the
    data: it is refused at once, in one line (it used to be an omegaconf traceback)."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "corpus"
    for override, expected in ((f"data.datasets={data}", "data.datasets"),
                               (f"data.dataset=[{data}]", "data.dataset: unknown key")):
        sweep = write_sweep(tmp_path, f"""
runs:
  - config: {CONFIG_DIR / 'debug.yaml'}
    overrides: [data.source=shards, "{override}", run_dir={tmp_path / 'a'}]
prepare:
  - module: data_prep.bytes
    args: [--output, {data}]
    creates: {data / 'manifest.json'}
""")
        with pytest.raises(ConfigError) as info:
            slurm.plan_sweep(str(sweep), [])
        assert expected in str(info.value) and str(info.value).startswith("runs[0]")
        assert "\n" not in str(info.value)


def test_each_run_of_an_array_keeps_a_script_that_resubmits_it_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = two_run_sweep(tmp_path, "debug_transformer.yaml")
    plan = slurm.plan_sweep(str(sweep), [])
    slurm.write_files(plan)
    assert "#SBATCH --array=0-1\n" in plan.script_path.read_text()
    for name in ("a", "b"):
        own = (tmp_path / name / "launch" / "job.sbatch").read_text()
        assert "--array" not in own and f"RUN_DIRS=({tmp_path / name})" in own
        assert subprocess.run(["bash", "-n"], input=own, text=True).returncode == 0


def test_another_config_for_a_submitted_run_dir_is_refused(tmp_path, monkeypatch):
    """A queued job reads <run_dir>/launch/config.yaml when it starts: a second submission with
    another config must not silently replace it (the same config again is a resubmission)."""
    monkeypatch.chdir(tmp_path)
    submitted: List[Path] = []
    monkeypatch.setattr(slurm, "sbatch", lambda path, dependency=None: submitted.append(path) or "7")
    run_dir = tmp_path / "run"
    args = ["--config", str(CONFIG_DIR / "debug.yaml"), f"run_dir={run_dir}"]
    assert slurm.main(args + ["train.max_steps=100"]) == 0
    assert slurm.main(args + ["train.max_steps=100"]) == 0  # the same: a resubmission
    saved = (run_dir / "launch" / "config.yaml").read_text()
    assert slurm.main(args + ["train.max_steps=5"]) == 2
    assert (run_dir / "launch" / "config.yaml").read_text() == saved and len(submitted) == 2
    assert slurm.main(args + ["train.max_steps=5", "--replace"]) == 0
    assert "max_steps: 5\n" in (run_dir / "launch" / "config.yaml").read_text()


def test_launch_files_are_readable_by_others(tmp_path, monkeypatch):
    """The atomic writer used mkstemp's 0600: a shared run directory's config (and datasets'
    manifests) could not be read by the other users of a cluster. Now: 0666 less the umask."""
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        plan = slurm.plan_single(str(CONFIG_DIR / "debug.yaml"), [f"run_dir={tmp_path / 'r'}"])
        slurm.write_files(plan)
    finally:
        os.umask(old)
    assert (tmp_path / "r" / "launch" / "config.yaml").stat().st_mode & 0o777 == 0o644
    assert plan.script_path.stat().st_mode & 0o777 == 0o755


def fake_checkpoint(run_dir: Path, ranks: int) -> Path:
    ckpt = run_dir / "checkpoints" / "step_00000004"
    ckpt.mkdir(parents=True)
    for r in range(ranks):
        (ckpt / f"rank_{r:05d}.pt").write_bytes(b"")
    (run_dir / "checkpoints" / "latest").write_text("step_00000004\n")
    return ckpt


def test_resuming_at_another_process_count_is_refused_before_starting(tmp_path):
    """It used to start torchrun and end in DeepSpeed's ZeRORuntimeException traceback."""
    run_dir = tmp_path / "run"
    fake_checkpoint(run_dir, 2)
    proc = subprocess.run([sys.executable, "-m", "launch.local", "--config", "configs/debug.yaml",
                           "--nproc", "1", f"run_dir={run_dir}"], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: resume error: checkpoint ") and "2 processes" in proc.stderr
    assert "this run has 1" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (run_dir / "launch").exists()  # nothing started, nothing written
    with pytest.raises(ConfigError, match="written by 2 processes"):  # and at submission to Slurm
        slurm.plan_single(str(CONFIG_DIR / "debug.yaml"), [f"run_dir={run_dir}"])
    slurm.plan_single(str(CONFIG_DIR / "debug.yaml"), [f"run_dir={run_dir}", "slurm.nodes=2"])


def test_a_single_process_checkpoint_is_left_to_the_engine(tmp_path):
    """pretrain.compare may submit a run it trained here (state.pt) to Slurm: the launchers let
    it through and the engine names the layout in one line when it starts."""
    from launch.common import check_resume_layout
    from pretrain.checkpoints import store

    run_dir = tmp_path / "run"
    ckpt = fake_checkpoint(run_dir, 0)
    (ckpt / "state.pt").write_bytes(b"")
    check_resume_layout(load_run_config(CONFIG_DIR / "debug.yaml", [f"run_dir={run_dir}"]), 1)
    assert "written by a single-process run (state.pt); this run has 1" in (
        store.resume_layout_error(ckpt, 0, 1))


def test_local_run_dir_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "launch.local", "--config", "configs/debug.yaml",
                           "--nproc", "1", f"run_dir={tmp_path / 'afile' / 'run'}"], cwd=ROOT,
                          env=launcher_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: run_dir: cannot write")
    assert proc.stderr.count("\n") == 1


EARLY_WORKER = """
import signal, sys, time
from pathlib import Path
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
time.sleep(1.0)
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
deadline = time.monotonic() + 10
while not got and time.monotonic() < deadline:
    time.sleep(0.05)
Path(sys.argv[1]).write_text("stopped" if got else "ran on")
"""
EARLY_PARENT = f"""
import subprocess, sys, time
time.sleep(1.0)  # plays torchrun: no workers at first, then workers that ignore SIGUSR1 a while
procs = [subprocess.Popen([sys.executable, "-c", {EARLY_WORKER!r}, f"{{sys.argv[1]}}/{{i}}"])
         for i in range(2)]
sys.exit(max(p.wait() for p in procs))
"""


def test_a_stop_asked_for_while_workers_start_is_delivered_once_they_catch_it(tmp_path):
    """Ctrl-C right after launch (no workers yet, then workers still ignoring SIGUSR1) used to be
    acknowledged and lost: training ran to the end. Now it stays pending until all catch it."""
    from launch.local import StopForwarder

    proc = subprocess.Popen([sys.executable, "-c", EARLY_PARENT, str(tmp_path)])
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    try:
        stopper = StopForwarder(proc, nproc=2)
        stopper.handle(signal.SIGINT, None)  # before any worker exists
        while True:
            try:
                proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                stopper.poll()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert [(tmp_path / str(i)).read_text() for i in range(2)] == ["stopped", "stopped"]
    assert not stopper.pending


def test_local_exit_codes():
    from launch.local import exit_code

    assert exit_code({"killed": True, "torchrun_exit_code": -9}) == 130
    assert exit_code({"stop_reason": None, "torchrun_exit_code": -9}) == 137
    assert exit_code({"stop_reason": None, "torchrun_exit_code": 1}) == 1
    assert exit_code({"stop_reason": "signal", "torchrun_exit_code": 0}) == EXIT_REQUEUE


def test_a_failed_sbatch_puts_the_saved_config_back(tmp_path, monkeypatch):
    """sbatch refused the job (a wrong partition, say): nothing is queued with the new config,
    so it must not stay behind and make the corrected resubmission "another config"."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    args = ["--config", str(CONFIG_DIR / "debug.yaml"), f"run_dir={run_dir}"]

    def refuse(path, dependency=None):
        raise RuntimeError("sbatch: error: invalid partition specified: gpux")

    monkeypatch.setattr(slurm, "sbatch", refuse)
    assert slurm.main(args + ["slurm.partition=gpux"]) == 1
    assert not (run_dir / "launch" / "config.yaml").exists()
    monkeypatch.setattr(slurm, "sbatch", lambda path, dependency=None: "8")
    assert slurm.main(args + ["slurm.partition=gpu"]) == 0  # the corrected one goes through
    saved = (run_dir / "launch" / "config.yaml").read_text()
    monkeypatch.setattr(slurm, "sbatch", refuse)
    assert slurm.main(args + ["slurm.partition=gpu", "train.max_steps=7", "--replace"]) == 1
    assert (run_dir / "launch" / "config.yaml").read_text() == saved  # the queued job's, kept
