"""``python -m launch.slurm`` against a real Slurm cluster: slurmctld, two slurmd "nodes" and
munged on this machine, started by scripts/slurm_cluster.sh for this session and stopped at its
end (also on failure). Needs root (CI runs as root; the script installs slurm-wlm and munge
with apt-get when they are missing).

Jobs: a 2-node x 1-process ZeRO-3 run of the tiny MEGABYTE (one world of size 2), the same run
preempted with ``scancel --signal=USR1`` (checkpoint, requeue, resume, identical result), a
2-node job that must fail fast on a loopback master address, a job array of two configs
after a data-preparation job, with hostile names and paths throughout, and ``python -m
pretrain.compare --slurm`` end to end: it submits the four runs, waits for them and reports (a
rerun submits nothing); a failed array ends it with exit 2 naming the runs. The waiting logic
itself is also tested without a cluster (fake job states), first in this file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
# Tiny MEGABYTE, 2 nodes x 1 process, ZeRO-3 with every parameter partitioned; single-host cluster.
TWO_NODE = ["slurm.nodes=2", "slurm.cpus_per_task=1", "slurm.allow_loopback_master=true",
            "slurm.time=00:10:00", "slurm.signal_seconds=60", "train.max_steps=40",
            "parallel.zero_stage=3", "parallel.zero3_persistence_threshold=0",
            "logging.log_interval=5", "checkpoint.keep_last=3"]


@dataclass
class Cluster:
    dir: Path
    env: Dict[str, str]
    start_seconds: float

    def run(self, *cmd: str, check: bool = True, timeout: float = 60,
            cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, cwd=cwd or ROOT, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def submit(self, *args: str, cwd: Optional[Path] = None) -> dict:
        proc = self.run(sys.executable, "-m", "launch.slurm", *args, cwd=cwd)
        return json.loads(proc.stdout)

    def job_states(self, job_id: str) -> List[Dict[str, str]]:
        """One dict per job (per array task) from ``scontrol show job -o``."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def wait(self, job_id: str, timeout: float = 240, count: int = 1) -> List[Dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.job_states(job_id)
            if len(jobs) >= count and all(j.get("JobState") in TERMINAL for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)
                logs = {j.get("StdOut", "") for j in jobs} - {""}
                tails = "\n".join(f"--- {p} (last 6000 chars):\n{read_log(p)[-6000:]}" for p in logs)
                raise AssertionError(f"job {job_id} did not finish in {timeout} s: "
                                     f"{[(j.get('JobState'), j.get('Restarts')) for j in jobs]}\n{tails}")
            time.sleep(0.5)


def _terminal(request) -> None:
    return request.config.pluginmanager.get_plugin("terminalreporter")


@pytest.fixture(scope="session")
def cluster(request) -> Cluster:
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root (daemons run as root; node names in /etc/hosts)")
    # munge's socket path must fit in 108 bytes: keep the cluster directory short.
    cluster_dir = Path(tempfile.mkdtemp(prefix="mbs-", dir="/tmp"))
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "start", str(cluster_dir)], text=True,
                          capture_output=True, timeout=900)
    seconds = time.monotonic() - t0
    env = {**os.environ, "SLURM_CONF": str(cluster_dir / "slurm.conf"), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                  str(ROOT / ".cache" / "torch_extensions"))}
    try:
        if proc.returncode != 0:
            pytest.fail(f"slurm_cluster.sh start failed ({proc.returncode}):\n{proc.stderr}")
        reporter = _terminal(request)
        if reporter is not None:
            reporter.write_line(f"\n[slurm] cluster up in {seconds:.1f} s "
                                f"({proc.stderr.strip().splitlines()[-1]})")
        yield Cluster(cluster_dir, env, seconds)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(cluster_dir)], text=True,
                       capture_output=True, timeout=300)
        if request.session.testsfailed:
            print(f"slurm cluster logs kept in {cluster_dir}/log", file=sys.stderr)
        else:
            shutil.rmtree(cluster_dir, ignore_errors=True)


def read_log(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def wait_for_text(path: str | Path, text: str, cluster: Cluster, job_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in read_log(path):
        states = {j.get("JobState") for j in cluster.job_states(job_id)}
        if states & TERMINAL or time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in {path} (job {states}):\n"
                                 f"{read_log(path)[-4000:]}")
        time.sleep(0.2)


def history(run_dir: Path) -> List[dict]:
    return json.loads((run_dir / "history.json").read_text())


@pytest.fixture(scope="module")
def two_node_runs(cluster, tmp_path_factory):
    """The uninterrupted run and the preempted run of the same config, submitted together (both
    fit the cluster at once); the second gets SIGUSR1 through Slurm after its 5th step."""
    base = tmp_path_factory.mktemp("two_node")
    ref_dir, pre_dir = base / "reference", base / "preempted"
    t0 = time.monotonic()
    ref = cluster.submit("--config", "configs/debug.yaml", f"run_dir={ref_dir}", *TWO_NODE)
    pre = cluster.submit("--config", "configs/debug.yaml", f"run_dir={pre_dir}", *TWO_NODE)
    wait_for_text(pre["log"], "step 5/40", cluster, pre["job_id"])
    signalled = time.monotonic() - t0
    cluster.run("scancel", "--signal=USR1", pre["job_id"])
    ref_jobs = cluster.wait(ref["job_id"])
    pre_jobs = cluster.wait(pre["job_id"])
    print(f"two-node jobs: signal after {signalled:.1f} s, both done after "
          f"{time.monotonic() - t0:.1f} s")
    return {"reference": (ref, ref_dir, ref_jobs[0]), "preempted": (pre, pre_dir, pre_jobs[0])}


def test_two_node_zero3_job_is_one_world(two_node_runs):
    submitted, run_dir, job = two_node_runs["reference"]
    log = read_log(submitted["log"])
    assert job["JobState"] == "COMPLETED", log[-4000:]
    assert job["NodeList"] == "node[1-2]" and job["NumNodes"] == "2"
    # Every process reports its rank: ranks 0 and 1 of one world of size 2, one per node.
    seen = set(re.findall(r"\[launch\] rank (\d) of 2 on (node\d)", log))
    assert {rank for rank, _ in seen} == {"0", "1"}, log[-4000:]
    assert {node for _, node in seen} == {"node1", "node2"}, log[-4000:]
    assert "2 node(s) x 1 process(es) = world size 2" in log
    assert "ParallelGrid(rank=0/2, tp=0/1, dp=0/2) | ZeRO-3" in log
    assert "training finished (max_steps); not requeued" in log
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["steps"], results["world_size"], results["stop_reason"]) == (40, 2, "max_steps")
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000040"
    assert sorted(p.name for p in (ckpts / "step_00000040").glob("rank_*.pt")) == [
        "rank_00000.pt", "rank_00001.pt"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # Resubmittable as it was: the script and the resolved config are in the run directory.
    assert (run_dir / "launch" / "job.sbatch").read_text().startswith("#!/bin/bash\n#SBATCH ")
    assert Path(submitted["script"]) == run_dir / "launch" / "job.sbatch"
    from pretrain.config import load_config

    assert load_config(run_dir / "launch" / "config.yaml").run_dir == str(run_dir)
    assert not (run_dir / "launch" / "requeues").exists()


def test_preempted_job_checkpoints_requeues_resumes_and_matches(two_node_runs, cluster):
    submitted, run_dir, job = two_node_runs["preempted"]
    _, ref_dir, _ = two_node_runs["reference"]
    log = read_log(submitted["log"])
    assert job["JobState"] == "COMPLETED", log[-4000:]
    assert job["Restarts"] == "1", job
    stopped = re.search(r"stopping at step (\d+): stop signal received; checkpoint saved", log)
    assert stopped, log[-4000:]
    step = int(stopped.group(1))
    assert 5 <= step < 40
    assert (run_dir / "checkpoints" / f"step_{step:08d}").is_dir()
    assert "requeueing (requeue 1 of at most 20)" in log
    assert "Slurm restart count 1" in log  # the log was appended to (--open-mode=append)
    assert f"resumed from {run_dir}/checkpoints/step_{step:08d} at step {step}" in log
    assert (run_dir / "launch" / "requeues").read_text() == f"{submitted['job_id']} 1\n"
    assert log.count("training finished (max_steps); not requeued") == 1
    # Same final step count and loss as the uninterrupted run (resume is exact).
    ref, got = json.loads((ref_dir / "results.json").read_text()), json.loads(
        (run_dir / "results.json").read_text())
    assert got["steps"] == ref["steps"] == 40
    assert got["train_loss"] == ref["train_loss"] and got["val_bpb"] == ref["val_bpb"]
    last, ref_last = history(run_dir)[-1], history(ref_dir)[-1]
    assert (last["step"], last["loss"], last["grad_norm"]) == (
        40, ref_last["loss"], ref_last["grad_norm"])


def test_multi_node_job_on_a_loopback_master_fails_loudly(cluster, tmp_path):
    run_dir = tmp_path / "run"
    sub = cluster.submit("--config", "configs/debug.yaml", f"run_dir={run_dir}",
                         *[o for o in TWO_NODE if not o.startswith("slurm.allow_loopback")])
    (job,) = cluster.wait(sub["job_id"], timeout=60)
    log = read_log(sub["log"])
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "1:0", (job, log)
    assert "the first node node1 resolves to the loopback address 127.0.0.1 in a 2-node job" in log
    assert "torchrun" not in log  # failed before starting anything
    assert not (run_dir / "checkpoints").exists()


def test_time_limit_warning_checkpoints_and_the_requeue_cap_holds(cluster, tmp_path):
    """``--signal=USR1@25`` with a one-minute limit: Slurm warns the job, training checkpoints;
    with ``slurm.max_requeues=0`` the job ends with 75 instead of requeueing (and never hits the
    time limit). slurmctld checks time limits every 30 s and sends the warning at the first
    check within warning + 30 s of the end: here 5-35 s after the start. That may be before
    training has started, which the job handles (the signal is kept until it can be caught);
    only a warning due before the job step exists at all (its first second) would be lost."""
    run_dir = tmp_path / "run"
    sub = cluster.submit("--config", "configs/debug.yaml", f"run_dir={run_dir}", "slurm.cpus_per_task=1",
                         "slurm.time=1", "slurm.signal_seconds=25", "slurm.max_requeues=0",
                         "train.max_steps=100000", "logging.log_interval=100")
    assert "#SBATCH --signal=USR1@25\n" in Path(sub["script"]).read_text()
    (job,) = cluster.wait(sub["job_id"], timeout=120)
    log = read_log(sub["log"])
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("FAILED", "75:0", "0"), log[-3000:]
    assert "SIGUSR1; asking the training processes to checkpoint and stop" in log
    assert "not requeueing: this job has been requeued 0 time(s), slurm.max_requeues=0" in log
    results = json.loads((run_dir / "results.json").read_text())
    assert results["stop_reason"] == "signal" and 0 < results["steps"] < 100000
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{results['steps']:08d}"


def test_failed_preparation_cancels_the_array(cluster, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""runs:
  - config: {ROOT / 'configs' / 'debug.yaml'}
    overrides: [run_dir={tmp_path / 'a'}]
  - config: {ROOT / 'configs' / 'debug.yaml'}
    overrides: [run_dir={tmp_path / 'b'}]
prepare:
  - module: launch.no_such_module
    creates: {tmp_path / 'never'}
""")
    sub = cluster.submit("--sweep", str(sweep), "slurm.cpus_per_task=1")
    (prep,) = cluster.wait(sub["prepare_job_id"], timeout=60)
    assert prep["JobState"] == "FAILED"
    assert "preparation step 'python -m launch.no_such_module' failed" in read_log(sub["prepare_log"])
    tasks = cluster.wait(sub["job_id"], timeout=60)
    assert {t["JobState"] for t in tasks} == {"CANCELLED"}, tasks
    assert not (tmp_path / "a" / "stop_reason").exists()


MARK = "PWNED"
HOSTILE = f"a b $(touch {MARK}_1) `touch {MARK}_2` 'q' \"dq\" ;touch {MARK}_3 #"


def test_job_array_of_two_configs_after_data_preparation(cluster, tmp_path):
    """MEGABYTE and the subword Transformer as a 2-task array; the subword run's tokenizer is
    trained first by a preparation job the array depends on. Job name, run directories, the
    submission directory and an environment value are hostile: nothing of them may execute."""
    work = tmp_path / f"work $(touch {MARK}_w) 'x'"
    work.mkdir()
    root = tmp_path / f"sweep {HOSTILE}"
    tok = root / "tokenizer"
    base = "\n".join(f"  - {json.dumps(o)}" for o in [
        "train.max_steps=12", "logging.log_interval=4", "train.micro_batch_size=4",
        "slurm.cpus_per_task=1", "slurm.time=00:10:00", "slurm.signal_seconds=60",
        "slurm.env.OMP_NUM_THREADS=1"])
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""job_name: {json.dumps(HOSTILE)}
overrides:
{base}
runs:
  - config: {json.dumps(str(ROOT / 'configs' / 'debug.yaml'))}
    overrides: []
  - config: {json.dumps(str(ROOT / 'configs' / 'debug_subword.yaml'))}
    overrides: []
prepare:
  - module: data_prep.tokenizer
    args: [--output, {json.dumps(str(tok))}, --vocab-size, "600", --max-bytes, "500000",
           --no-progress]
    creates: {json.dumps(str(tok) + '.model')}
""")
    # Run dirs and the tokenizer path contain " #", which ends a dotlist value: give them in YAML.
    for name, arch in (("megabyte", "debug.yaml"), ("subword", "debug_subword.yaml")):
        cfg = tmp_path / f"{name}.yaml"
        text = (ROOT / "configs" / arch).read_text()
        text = re.sub(r"^run_dir: .*$", f"run_dir: {json.dumps(str(root / name))}", text, flags=re.M)
        text = re.sub(r"^  tokenizer: .*$", f"  tokenizer: {json.dumps(str(tok) + '.model')}", text,
                      flags=re.M)
        text += f"slurm:\n  env: {{EVIL: {json.dumps(HOSTILE + chr(10) + 'touch PWNED_nl')}}}\n"
        cfg.write_text(text)
    sweep.write_text(sweep.read_text().replace(json.dumps(str(ROOT / "configs" / "debug.yaml")),
                                               json.dumps(str(tmp_path / "megabyte.yaml")))
                     .replace(json.dumps(str(ROOT / "configs" / "debug_subword.yaml")),
                              json.dumps(str(tmp_path / "subword.yaml"))))
    sub = cluster.submit("--sweep", str(sweep), cwd=work)
    assert sub["array_size"] == 2 and sub["prepare_job_id"]
    (prep,) = cluster.wait(sub["prepare_job_id"], timeout=120)
    assert prep["JobState"] == "COMPLETED", read_log(sub["prepare_log"])
    tasks = cluster.wait(sub["job_id"], count=2, timeout=240)
    logs = {i: read_log(sub["log"].replace("%a", str(i))) for i in (0, 1)}
    assert [t["JobState"] for t in tasks] == ["COMPLETED", "COMPLETED"], logs
    for i, name in enumerate(("megabyte", "subword")):
        run_dir = root / name
        result = json.loads((run_dir / "results.json").read_text())
        assert result["steps"] == 12 and result["stop_reason"] == "max_steps", logs[i]
        assert (run_dir / "launch" / "job.sbatch").is_file()
        assert "training finished (max_steps)" in logs[i]
    # sbatch read the quoted #SBATCH --job-name back unchanged.
    shown = cluster.run("scontrol", "show", "job", sub["job_id"]).stdout
    assert shown.count(f"JobName={HOSTILE}\n") == 2, shown
    hits = [p for d in (tmp_path, work, cluster.dir, ROOT) for p in
            (d.rglob(f"{MARK}_*") if d != ROOT else d.glob(f"{MARK}_*"))]
    assert not hits, f"an injected command ran: {hits}"


def test_data_prep_as_a_four_task_array_equals_one_task_and_a_rerun_redoes_only_the_failed_task(
        cluster, tmp_path):
    """A sweep's data_prep.bytes step with ``tasks: 4``: a 4-task array, then a merge job. Task 2
    is made to fail (a directory where its part manifest goes: its disk write fails), so the
    merge job never runs and no manifest exists; submitting again redoes task 2 only, and the
    merged dataset has the same documents per split as a one-task run."""
    from data_prep.merge import split_digests
    from data_prep.sources import stdlib_files

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in stdlib_files()[:120]:
        shutil.copy(f, corpus / f"{len(list(corpus.iterdir())):03d}_{f.name}")
    (corpus / "book.txt").write_bytes(b"".join(f.read_bytes() for f in stdlib_files()[120:160]))
    args = ["--shard-bytes", "256K", "--val-fraction", "0.1", "--doc-bytes", "64K", "--no-progress"]
    ref, out = tmp_path / "one_task", tmp_path / "array"
    cluster.run(sys.executable, "-m", "data_prep.bytes", str(corpus), "--output", str(ref), *args,
                timeout=300)
    sweep = tmp_path / "prep.yaml"
    sweep.write_text(f"""job_name: prep-array
output_dir: {json.dumps(str(tmp_path / 'launch'))}
prepare:
  - module: data_prep.bytes
    tasks: 4
    cpus: 1
    args: {json.dumps([str(corpus), "--output", str(out), *args])}
    creates: {json.dumps(str(out / 'manifest.json'))}
""")
    blocker = out / "parts" / "part-00002-of-00004.json"
    blocker.mkdir(parents=True)
    sub = cluster.submit("--sweep", str(sweep), "slurm.time=00:10:00")
    array = sub["prepare_jobs"][0]
    tasks = cluster.wait(array["job_id"], count=4, timeout=240)
    states = {int(t["ArrayTaskId"]): t["JobState"] for t in tasks}
    logs = {i: read_log(array["log"].replace("%a", str(i))) for i in range(4)}
    assert states == {0: "COMPLETED", 1: "COMPLETED", 2: "FAILED", 3: "COMPLETED"}, logs
    assert "part-00002-of-00004.json" in logs[2], logs[2]
    (merge,) = cluster.wait(sub["prepare_job_id"], timeout=120)
    assert merge["JobState"] != "COMPLETED" and not (out / "manifest.json").exists()
    blocker.rmdir()
    sub = cluster.submit("--sweep", str(sweep), "slurm.time=00:10:00")
    array = sub["prepare_jobs"][0]
    tasks = cluster.wait(array["job_id"], count=4, timeout=240)
    logs = {i: read_log(array["log"].replace("%a", str(i))) for i in range(4)}
    assert {t["JobState"] for t in tasks} == {"COMPLETED"}, logs
    (merge,) = cluster.wait(sub["prepare_job_id"], timeout=120)
    assert merge["JobState"] == "COMPLETED", read_log(sub["prepare_log"])
    status = {i: json.loads([ln for ln in logs[i].splitlines() if ln.startswith("{")][-1])["status"]
              for i in range(4)}
    assert status == {0: "unchanged", 1: "unchanged", 2: "written", 3: "unchanged"}, status
    assert split_digests(out) == split_digests(ref)
    assert json.loads((out / "manifest.json").read_text())["splits"]["val"]["docs"] > 0


# --------------------------------------------------------------------------------------------
# pretrain.compare --slurm: waiting for the job array (no cluster: fake job states)
# --------------------------------------------------------------------------------------------

SCONTROL = """JobId=12 ArrayJobId=12 ArrayTaskId=1-2%3 JobName=compare JobState=PENDING Reason=None
JobId=13 ArrayJobId=12 ArrayTaskId=0 JobName=a JobState=RUNNING Reason=None Dependency=(null)
"""


def test_parse_job_states():
    from pretrain.comparison.runs import parse_sacct, parse_scontrol, task_indices

    assert task_indices("0-2%1") == [0, 1, 2] and task_indices("[1,4-5]") == [1, 4, 5]
    assert parse_scontrol(SCONTROL) == {0: "RUNNING", 1: "PENDING", 2: "PENDING"}
    assert parse_scontrol("JobId=7 JobName=x JobState=COMPLETED Reason=None\n") == {None: "COMPLETED"}
    assert parse_sacct("12_0|COMPLETED\n12_[1-2]|PENDING\n") == {0: "COMPLETED", 1: "PENDING",
                                                                 2: "PENDING"}
    assert parse_sacct("7|CANCELLED by 0\n") == {None: "CANCELLED"}


def _fake_plans(tmp_path: Path, names=("megabyte", "transformer_bytes", "transformer_subword")):
    from pretrain.comparison.matching import MatchedRun
    from pretrain.config import load_config

    return [MatchedRun(n, load_config(None, [f"run_dir={tmp_path / n}", "train.max_steps=3"]), 1.0, 1)
            for n in names]


def _finish(plan) -> None:
    Path(plan.cfg.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(plan.cfg.run_dir) / "results.json").write_text(json.dumps({"steps": 3}))


def _fake_query(sequence: List[Dict[Optional[int], str]]):
    """A job-state query that returns the next states of ``sequence`` on every poll (then the
    last one); the list of job ids asked for is its ``asked`` attribute."""
    def query(job_id: str) -> Optional[Dict[Optional[int], str]]:
        query.asked.append(job_id)
        return sequence[min(len(query.asked) - 1, len(sequence) - 1)]
    query.asked = []
    return query


def test_compare_waits_then_names_the_failed_run(tmp_path, capsys):
    from pretrain.comparison import runs

    plans = _fake_plans(tmp_path)
    record = runs.record_job(tmp_path, plans, {"job_id": "12", "array_size": 3,
                                               "log": str(tmp_path / "slurm-12_%a.out")})
    assert json.loads((tmp_path / "slurm_job.json").read_text()) == record
    states = [{i: "PENDING" for i in range(3)}] * 3 + [
        {0: "RUNNING", 1: "PENDING", 2: "PENDING"}, {0: "RUNNING", 1: "RUNNING", 2: "PENDING"},
        {0: "COMPLETED", 1: "FAILED", 2: "RUNNING"}, {0: "COMPLETED", 1: "FAILED", 2: "COMPLETED"}]
    query, sleeps = _fake_query(states), []
    assert runs.job_active(tmp_path, query) == record  # a rerun now would wait, not submit
    _finish(plans[0])
    _finish(plans[2])
    with pytest.raises(RuntimeError) as err:
        runs.wait_slurm(record, plans, _fake_query(states), sleeps.append)
    msg = str(err.value)
    assert "\n" not in msg and "Slurm job 12" in msg, msg
    assert f"transformer_bytes FAILED (log {tmp_path / 'slurm-12_1.out'})" in msg, msg
    assert "megabyte" not in msg and "transformer_subword" not in msg, msg
    assert len(sleeps) == len(states) - 1 and all(1 <= s <= 30 for s in sleeps)
    lines = [line for line in capsys.readouterr().err.splitlines() if "Slurm job 12" in line]
    assert len(lines) == 5, lines  # one line per change of state, not one per poll
    assert lines[0].endswith("pending megabyte, transformer_bytes, transformer_subword")
    assert lines[1].endswith("running megabyte; pending transformer_bytes, transformer_subword")
    assert lines[-1].endswith("completed megabyte, transformer_subword; failed transformer_bytes")
    # Every task ended: a rerun submits again (the unfinished run resumes from its checkpoint).
    assert runs.job_active(tmp_path, _fake_query(states[-1:])) is None


def test_compare_names_a_diverged_task_and_does_not_resubmit_it(tmp_path):
    """A task whose training diverged (``stop_reason`` ``diverged``) is named as diverged, and
    the next submission leaves it out unless retried; an ordinary failure is resubmitted."""
    from pretrain.comparison import runs

    plans = _fake_plans(tmp_path)
    record = runs.record_job(tmp_path, plans, {"job_id": "13", "array_size": 3,
                                               "log": str(tmp_path / "slurm-13_%a.out")})
    _finish(plans[0])
    for plan in plans[1:]:
        Path(plan.cfg.run_dir).mkdir(parents=True)
    (Path(plans[1].cfg.run_dir) / "stop_reason").write_text("diverged\n")
    ended = {"13": {0: "COMPLETED", 1: "FAILED", 2: "FAILED"}}
    with pytest.raises(RuntimeError) as err:
        runs.wait_slurm(record, plans, ended.get, lambda s: None)
    msg = str(err.value)
    assert "transformer_bytes diverged (too many non-finite steps in a row" in msg, msg
    assert f"transformer_subword FAILED (log {tmp_path / 'slurm-13_2.out'})" in msg, msg
    assert [runs.to_train(p, retry_diverged=False) for p in plans] == [False, False, True]
    assert [runs.to_train(p, retry_diverged=True) for p in plans] == [False, True, True]
    with pytest.raises(RuntimeError, match="transformer_bytes: diverged in an earlier attempt"):
        runs.train(plans[1], tmp_path, 1)  # refused before starting anything


def test_compare_wait_success_unfinished_and_interrupt(tmp_path):
    from pretrain.comparison import runs

    plans = _fake_plans(tmp_path, ("megabyte",))
    record = runs.record_job(tmp_path, plans, {"job_id": "7", "array_size": None, "prepare_job_id":
                                               "6", "prepare_log": "p.out", "log": "slurm-7.out"})
    assert [(t.name, t.job_id, t.index) for t in runs.slurm_tasks(record)] == [
        ("data preparation", "6", None), ("megabyte", "7", None)]
    done = {"6": {None: "COMPLETED"}, "7": {None: "COMPLETED"}}
    with pytest.raises(RuntimeError, match=r"megabyte ended without finishing its 3 steps "
                                           r"\(log slurm-7.out\)"):
        runs.wait_slurm(record, plans, done.get, lambda s: None)
    _finish(plans[0])
    runs.wait_slurm(record, plans, done.get, lambda s: None)
    # Forgotten by Slurm (after MinJobAge, no accounting): judged by the run's results.
    runs.wait_slurm(record, plans, lambda job: None, lambda s: None)
    running = {"6": {None: "COMPLETED"}, "7": {None: "RUNNING"}}

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(runs.WaitInterrupted, match="Slurm job 7 keeps running .*run the same "
                                                   "command again"):
        runs.wait_slurm(record, plans, running.get, ctrl_c)


# --------------------------------------------------------------------------------------------
# pretrain.compare --slurm on the real cluster
# --------------------------------------------------------------------------------------------

COMPARE_FILES = ("textwrap.py", "argparse.py", "codecs.py", "csv.py", "string.py", "shlex.py",
                 "glob.py", "fnmatch.py", "difflib.py", "pprint.py", "random.py", "calendar.py",
                 "heapq.py", "bisect.py", "copy.py", "enum.py", "dataclasses.py", "typing.py")


@pytest.fixture(scope="module")
def compare_data(tmp_path_factory) -> Path:
    """A small prepared corpus (stdlib modules, as in tests/test_compare.py), prepared exactly
    as ``pretrain.compare`` prepares one."""
    import argparse

    from pretrain.comparison.runs import prepare_data

    base = tmp_path_factory.mktemp("compare_data")
    corpus = base / "corpus"
    corpus.mkdir()
    stdlib = Path(os.__file__).parent
    for name in COMPARE_FILES:
        (corpus / name).write_bytes((stdlib / name).read_bytes())
    args = argparse.Namespace(data=None, corpus=[corpus], vocab_size=1000,
                              max_corpus_bytes=16_000_000, val_fraction=0.25)
    data_dir, _, subword = prepare_data(args, base)
    assert subword
    return data_dir


def compare_cmd(data: Path, out: Path, *extra: str) -> List[str]:
    """``pretrain.compare --slurm`` at the smallest budget (two steps per model)."""
    sets = ["slurm.cpus_per_task=1", "slurm.time=00:10:00", "slurm.signal_seconds=60",
            "slurm.env.OMP_NUM_THREADS=1", "data.val_bytes=8192", *extra]
    return [sys.executable, "-m", "pretrain.compare", "--slurm", "--data", str(data), "--out",
            str(out), "--budget-bytes", "8192", "--eval-bytes", "2000",
            *[arg for s in sets for arg in ("--set", s)]]


@pytest.fixture(scope="module")
def compare_on_slurm(cluster, compare_data, tmp_path_factory):
    """The same ``pretrain.compare --slurm`` command twice: it submits, waits and reports; the
    second run finds the finished runs."""
    out = tmp_path_factory.mktemp("compare_slurm") / "cmp"
    cmd = compare_cmd(compare_data, out)
    t0 = time.monotonic()
    first = cluster.run(*cmd, check=False, timeout=900)
    seconds = time.monotonic() - t0
    assert first.returncode == 0, first.stderr[-6000:]
    record = (out / "slurm_job.json").read_text()
    second = cluster.run(*cmd, check=False, timeout=600)
    assert second.returncode == 0, second.stderr[-6000:]
    print(f"compare --slurm: {seconds:.1f} s, rerun {time.monotonic() - t0 - seconds:.1f} s")
    return out, first, second, record


def test_compare_on_slurm_waits_and_reports(compare_on_slurm):
    import math

    out, first, _, record = compare_on_slurm
    names = ("megabyte", "transformer_bytes", "transformer_window", "transformer_subword")
    job = json.loads(record)
    assert [r["name"] for r in job["runs"]] == list(names) and job["array"] is True
    assert "submitting 4 runs" in first.stderr
    assert f"Slurm job {job['job_id']}" in first.stderr and "completed megabyte" in first.stderr
    rows = [line.split("|")[1:-1] for line in (out / "report.md").read_text().splitlines()
            if line.startswith("| ")]
    head = [c.strip() for c in rows[0]]
    cols = [i for i, c in enumerate(head) if c.startswith("bpb ")]
    table = {r[0].strip(): [c.strip() for c in r] for r in rows[1:]}
    for name in names:
        bpb = [float(table[name][i]) for i in cols if table[name][i] != "n/a"]
        assert len(bpb) == (3 if name == "megabyte" else 2), table[name]
        assert all(math.isfinite(b) and 0 < b < 16 for b in bpb), table[name]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert set(summary["models"]) == set(names)
    for model in summary["models"].values():
        assert model["training"]["steps"] == 2, model["training"]
        assert model["eval"]["basic"]["bytes"] == summary["heldout_bytes"]
        assert all(math.isfinite(r["bpb"]) for r in model["eval"].values())
    assert Path(summary["report"]) == out / "report.md"


def test_compare_on_slurm_rerun_submits_nothing(compare_on_slurm):
    out, first, second, record = compare_on_slurm
    assert second.stderr.count("finished earlier") == 4, second.stderr[-3000:]
    assert "[compare] submitting" not in second.stderr and "Slurm job" not in second.stderr
    assert (out / "slurm_job.json").read_text() == record
    a, b = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (first, second))
    assert {n: m["eval"] for n, m in a["models"].items()} == {
        n: m["eval"] for n, m in b["models"].items()}
    assert a["references"] == b["references"]


def test_compare_on_slurm_failed_array_exits_2_naming_the_runs(cluster, compare_data, tmp_path):
    """Every task fails at once (the job cannot source its environment): exit 2, one line
    naming each run and its log; nothing is evaluated."""
    out = tmp_path / "cmp"
    proc = cluster.run(*compare_cmd(compare_data, out, "slurm.activate=/nonexistent/activate"),
                       check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-4000:]
    job = json.loads((out / "slurm_job.json").read_text())
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: Slurm job {job['job_id']}: "), error
    for i, run in enumerate(job["runs"]):
        log = out / "launch" / f"slurm-{job['job_id']}_{i}.out"
        assert run["log"] == str(log)
        assert f"{run['name']} FAILED (log {log})" in error, error
        assert "could not source /nonexistent/activate" in read_log(log)
    assert not (out / "report.md").exists() and not (out / "eval").exists()


def test_compare_on_slurm_rerun_waits_for_the_queued_job_and_ctrl_c_leaves_it(cluster, compare_data,
                                                                             tmp_path):
    """A held array (``sbatch --hold``: it stays pending): ``--no-wait`` submits it; a rerun
    finds it queued and submits nothing; Ctrl-C while waiting leaves it queued (exit 130); once
    it is cancelled, the waiting command ends with exit 2 naming the cancelled runs."""
    import signal
    import threading

    out = tmp_path / "cmp"
    cmd = compare_cmd(compare_data, out, "slurm.extra_directives=[--hold]")
    first = cluster.run(*cmd, "--no-wait", check=False, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    sub = json.loads(first.stdout.strip().splitlines()[-1])
    job = sub["job"]["job_id"]
    assert sub["submitted"] is True and "run the same command again" in first.stderr
    try:
        again = cluster.run(*cmd, "--no-wait", check=False, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout.strip().splitlines()[-1]) == {"submitted": False,
                                                                     "job": sub["job"]}
        assert "[compare] submitting" not in again.stderr
        assert f"Slurm job {job} (submitted " in again.stderr and "still queued" in again.stderr

        def wait_then(action) -> subprocess.CompletedProcess:
            """Run the waiting command; once it reports the pending job, call ``action``."""
            # SIGINT as in a terminal: a suite started in the background (``cmd &`` in a
            # non-interactive shell) passes SIG_IGN down to every child, and a Python started
            # with SIGINT ignored keeps ignoring it (the command then never sees the Ctrl-C).
            proc = subprocess.Popen(cmd, env=cluster.env, cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            # A generous limit for start-up (imports, reading the data under a loaded CI
            # machine), then 120 s for the command to react to the action.
            killer = threading.Timer(600, proc.kill)
            killer.start()
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if f"Slurm job {job} (" in line and "pending megabyte" in line:
                    action(proc)
                    break
            killer.cancel()
            try:
                stdout, rest = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, rest = proc.communicate()
                rest += "\n[test] still running 120 s after the action: killed"
            return subprocess.CompletedProcess(cmd, proc.returncode, stdout, "".join(seen) + rest)

        stopped = wait_then(lambda proc: proc.send_signal(signal.SIGINT))
        assert stopped.returncode == 130, stopped.stderr[-3000:]
        assert f"Slurm job {job} keeps running" in stopped.stderr
        assert "[compare] submitting" not in stopped.stderr and "Traceback" not in stopped.stderr
        states = {t["JobState"] for t in cluster.job_states(job)}
        assert states == {"PENDING"}, states
        cancelled = wait_then(lambda proc: cluster.run("scancel", job))
        assert cancelled.returncode == 2, cancelled.stderr[-3000:]
        (error,) = [line for line in cancelled.stderr.splitlines() if line.startswith("error:")]
        for i, name in enumerate(("megabyte", "transformer_bytes", "transformer_window",
                                  "transformer_subword")):
            assert f"{name} CANCELLED (log {out / 'launch' / f'slurm-{job}_{i}.out'})" in error
    finally:
        cluster.run("scancel", job, check=False)
