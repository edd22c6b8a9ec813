"""The DeepSpeed engine on CPU with gloo, in several processes, against single-process runs.

Parity is checked on loss *and* gradient norm: ZeRO-3 + TP mistakes diverge silently.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from pretrain.config import CONFIG_DIR, derive, load_config
from pretrain.training.trainer import Trainer
from tests.conftest import ROOT

STEPS = 6
BASE = ["logging.log_interval=1", "parallel.zero3_persistence_threshold=0", "train.eval_interval=0",
        f"train.max_steps={STEPS}", "checkpoint.interval=0"]


def env() -> Dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
         "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                str(ROOT / ".cache" / "torch_extensions"))}
    e.pop("PRETRAIN_FAULT_NAN_STEP", None)
    return e


def torchrun(nproc: int, *args: str, extra_env=None, timeout=600, check=True,
             module: str = "pretrain.train") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}"]
    cmd += ["-m", module, *args] if not module.endswith(".py") else [module, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env={**env(), **(extra_env or {})}, text=True,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def history(run_dir: Path) -> List[dict]:
    return json.loads((run_dir / "history.json").read_text())


def reference(tmp: Path, config: str, *overrides: str) -> List[dict]:
    """The single-process PyTorch loop: same seed, same global batch, same optimizer settings."""
    cfg = load_config(CONFIG_DIR / config, [f"run_dir={tmp}", "logging.tensorboard=false",
                                           *BASE, *overrides])
    Trainer(cfg, derive(cfg)).train()
    return history(tmp)


def assert_parity(ref: List[dict], got: List[dict], loss_rel=1e-5, norm_rel=1e-4) -> Dict[str, float]:
    assert [h["step"] for h in ref] == [h["step"] for h in got]
    worst = {"loss": 0.0, "grad_norm": 0.0}
    for a, b in zip(ref, got):
        for key in worst:
            worst[key] = max(worst[key], abs(a[key] - b[key]) / abs(a[key]))
    assert worst["loss"] <= loss_rel, (worst, ref, got)
    assert worst["grad_norm"] <= norm_rel, (worst, ref, got)
    print(f"parity: max relative difference loss {worst['loss']:.2e}, grad norm "
          f"{worst['grad_norm']:.2e}")
    return worst


@pytest.fixture(scope="module")
def megabyte_reference(tmp_path_factory) -> List[dict]:
    return reference(tmp_path_factory.mktemp("ref") / "run", "debug.yaml")


LAYOUTS = [  # (processes, tensor parallel, micro-batch per rank): global batch 8 in every case
    (2, 2, 8),  # TP=2 x DP=1
    (2, 1, 4),  # TP=1 x DP=2
    (4, 2, 4),  # TP=2 x DP=2
]


@pytest.mark.parametrize("nproc,tp,micro", LAYOUTS, ids=["tp2xdp1", "tp1xdp2", "tp2xdp2"])
def test_megabyte_zero3_parity(tmp_path, megabyte_reference, nproc, tp, micro):
    run = tmp_path / "run"
    torchrun(nproc, "--config", "configs/debug.yaml", f"run_dir={run}", *BASE,
             f"parallel.tensor_parallel={tp}", f"train.micro_batch_size={micro}",
             "parallel.zero_stage=3")
    assert_parity(megabyte_reference, history(run))


VARIANTS = {  # (processes, TP, micro-batch, extra overrides)
    "zero0_dp2": (2, 1, 4, ["parallel.zero_stage=0"]),
    "zero1_dp2": (2, 1, 4, ["parallel.zero_stage=1"]),
    "zero2_dp2": (2, 1, 4, ["parallel.zero_stage=2"]),
    "zero3_tp2_activation_checkpointing": (2, 2, 8, ["parallel.checkpoint_global=true",
                                                     "parallel.checkpoint_local=true"]),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_zero_stages_and_activation_checkpointing_parity(tmp_path, megabyte_reference, name):
    nproc, tp, micro, extra = VARIANTS[name]
    run = tmp_path / "run"
    torchrun(nproc, "--config", "configs/debug.yaml", f"run_dir={run}", *BASE,
             f"parallel.tensor_parallel={tp}", f"train.micro_batch_size={micro}", *extra)
    assert_parity(megabyte_reference, history(run))


def test_byte_transformer_parity_tp2(tmp_path):
    ref = reference(tmp_path / "ref", "debug_transformer.yaml")
    run = tmp_path / "run"
    torchrun(2, "--config", "configs/debug_transformer.yaml", f"run_dir={run}", *BASE,
             "parallel.tensor_parallel=2")
    assert_parity(ref, history(run))


def test_windowed_byte_transformer_parity_tp2(tmp_path):
    """The sliding-window baseline (window 16 of a 64-byte context) through the DeepSpeed engine
    with TP=2 splitting its heads matches the single-process loop: the window lives in the
    attention both paths call."""
    window = "model.attention_window=16"
    ref = reference(tmp_path / "ref", "debug_transformer.yaml", window)
    run = tmp_path / "run"
    torchrun(2, "--config", "configs/debug_transformer.yaml", f"run_dir={run}", *BASE, window,
             "parallel.tensor_parallel=2")
    assert_parity(ref, history(run))
    full = reference(tmp_path / "full", "debug_transformer.yaml")
    assert full[-1]["loss"] != ref[-1]["loss"]  # the window is really applied


def test_subword_transformer_parity_dp2(tmp_path, sp_model):
    tok = f"model.tokenizer={sp_model}"
    ref = reference(tmp_path / "ref", "debug_subword.yaml", tok)
    run = tmp_path / "run"
    torchrun(2, "--config", "configs/debug_subword.yaml", f"run_dir={run}", *BASE, tok,
             "train.micro_batch_size=4")
    assert_parity(ref, history(run))


@pytest.mark.parametrize("nproc,tp", [(1, 1), (2, 2), (2, 1), (4, 2)],
                         ids=["tp1xdp1", "tp2xdp1", "tp1xdp2", "tp2xdp2"])
def test_zero3_shards_are_real_and_decay_is_by_role(nproc, tp):
    """ZeRO-3 partitions and TP shapes are real, and the decayed parameters are exactly the
    single-process model's at every layout (checked inside each rank by tests/dist_checks.py)."""
    from pretrain.model import build_model
    from pretrain.training.optim import decay_split

    proc = torchrun(nproc, f"parallel.tensor_parallel={tp}", "parallel.zero3_persistence_threshold=0",
                    module=str(ROOT / "tests" / "dist_checks.py"))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"]
    cfg = load_config(CONFIG_DIR / "debug.yaml")
    decayed, _ = decay_split(build_model(cfg.model, 259, 256, 257))
    assert out["decayed"] == decayed
    # Every weight matrix of both stacks and the global-to-local projection, nothing else.
    assert {n.rsplit(".", 2)[-2] for n in decayed} == {"qkv", "proj", "fc1", "fc2", "global_to_local"}


@pytest.fixture(scope="module")
def tp2dp2_run(tmp_path_factory):
    """8 steps at TP=2 x DP=2 with dropout, checkpoints every 4 steps, TensorBoard, samples."""
    run = tmp_path_factory.mktemp("full") / "run"
    args = ["--config", "configs/debug.yaml", f"run_dir={run}", "logging.log_interval=1",
            "parallel.tensor_parallel=2", "train.micro_batch_size=4", "train.max_steps=8",
            "checkpoint.interval=4", "checkpoint.keep_last=5", "model.dropout=0.1",
            "train.eval_interval=4", "train.sample_bytes=8"]
    proc = torchrun(4, *args)
    return run, args, proc


def test_resume_is_bit_for_bit(tmp_path, tp2dp2_run):
    run, args, _ = tp2dp2_run
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step_00000004", part / "checkpoints" / "step_00000004")
    (part / "checkpoints" / "latest").write_text("step_00000004\n")
    torchrun(4, *[a for a in args if not a.startswith("run_dir=")], f"run_dir={part}")
    full, resumed = history(run), history(part)
    assert [h["step"] for h in resumed] == [5, 6, 7, 8]
    for a, b in zip(full[4:], resumed):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)


def test_checkpoint_layout_and_latest(tp2dp2_run):
    run, _, _ = tp2dp2_run
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000008"
    for tag in ("step_00000004", "step_00000008"):
        assert sorted(p.name for p in (ckpts / tag).glob("rank_*.pt")) == [
            f"rank_{r:05d}.pt" for r in range(4)]
    assert not list(ckpts.rglob("*.tmp"))


def test_tensorboard_scalars(tp2dp2_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = tp2dp2_run
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    want = {"train/loss", "train/bpb", "train/lr", "train/grad_norm", "train/bytes_per_s",
            "train/model_tflops", "train/mfu", "train/memory_gb", "val/bpb"}
    assert want <= scalars, want - scalars
    assert len(acc.Scalars("train/loss")) == 8
    assert acc.Tags()["tensors"], "generated text samples are logged"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 only


def test_export_matches_distributed_model_and_reshards_to_tp1(tmp_path, tp2dp2_run):
    from pretrain.inference.evaluation import evaluate_bytes
    from pretrain.inference.loading import load_for_inference

    run, args, _ = tp2dp2_run
    out = tmp_path / "model.safetensors"
    proc = subprocess.run([sys.executable, "-m", "pretrain.export", "--checkpoint", str(run),
                           "--output", str(out)], cwd=ROOT, env=env(), text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 8 and summary["source_layout"]["tensor_parallel"] == 2
    cfg, model, vocab = load_for_inference(out)
    # Full, unsharded shapes in the plain single-process model.
    D = cfg.model.global_model.dim
    assert model.global_model.blocks[0].attn.qkv.weight.shape == (3 * D, D)
    from pretrain.data import build_data

    val = build_data(cfg, vocab, 1).val_text
    bpb = evaluate_bytes(model, val, vocab, cfg.model.seq_len, "basic", cfg.model.patch_size,
                         batch_size=cfg.train.micro_batch_size)["bpb"]
    distributed = json.loads((run / "results.json").read_text())["val_bpb"]
    assert bpb == pytest.approx(distributed, rel=1e-5)

    # Restart from the export at TP=1 x DP=1: the first step's loss continues the TP=2 run's.
    cont = tmp_path / "cont"
    more = [a for a in args if not a.startswith(("run_dir=", "train.max_steps=",
                                                 "parallel.tensor_parallel=",
                                                 "train.micro_batch_size="))]
    torchrun(1, *more, f"run_dir={cont}", "train.max_steps=9", "train.micro_batch_size=8",
             f"train.init_from={out}", "train.init_continue=true", "model.dropout=0.0")
    torchrun(4, *[a for a in args if not a.startswith(("run_dir=", "train.max_steps="))],
             f"run_dir={run}", "train.max_steps=9", "model.dropout=0.0")
    first = history(cont)[0]
    assert first["step"] == 9
    assert first["loss"] == pytest.approx(history(run)[-1]["loss"], rel=1e-5)


@pytest.mark.parametrize("stage", [3, 0])  # ZeRO skips by itself; stage 0 is our own check
def test_nan_step_is_skipped_and_counted(tmp_path, stage):
    run = tmp_path / "run"
    proc = torchrun(2, "--config", "configs/debug.yaml", f"run_dir={run}", *BASE,
                    f"parallel.zero_stage={stage}", extra_env={"PRETRAIN_FAULT_NAN_STEP": "2"})
    result = json.loads((run / "results.json").read_text())
    assert result["steps"] == STEPS and result["skipped_steps"] == 1
    assert "update skipped" in proc.stderr
    hist = {h["step"]: h for h in history(run)}
    # The skipped update did not advance the LR schedule: step 3 runs at the LR step 3 would have.
    ref_cfg = load_config(CONFIG_DIR / "debug.yaml").optim
    from pretrain.training.optim import lr_at

    assert hist[3]["lr"] == pytest.approx(lr_at(2, ref_cfg, STEPS))
    if stage == 3:
        return
    # A zero tolerance aborts with exit code 3 and leaves no checkpoint of the bad step.
    bad = tmp_path / "abort"
    proc = torchrun(2, "--config", "configs/debug.yaml", f"run_dir={bad}", *BASE,
                    "train.max_skipped_in_a_row=0", extra_env={"PRETRAIN_FAULT_NAN_STEP": "2"},
                    check=False)
    assert proc.returncode != 0 and "exitcode  : 3" in proc.stderr
    assert not (bad / "checkpoints" / "latest").exists()
    assert (bad / "stop_reason").read_text() == "diverged\n"  # launchers do not requeue it


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{path.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {text!r}")


def test_signal_to_one_rank_checkpoints_all_and_exits_for_requeue(tmp_path):
    import psutil

    run = tmp_path / "run"
    log_path = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pretrain.train", "--config", "configs/debug.yaml", f"run_dir={run}",
           "train.max_steps=100000", "logging.log_interval=1", "checkpoint.interval=0",
           "train.eval_interval=0"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(log_path, "step 3/", proc)
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if "pretrain.train" in " ".join(c.cmdline())]
            assert len(workers) == 2
            os.kill(workers[1].pid, signal.SIGUSR1)  # only one rank gets the signal
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert "exitcode  : 75" in text, text[-3000:]
    result = json.loads((run / "results.json").read_text())
    assert result["stop_reason"] == "signal" and 3 <= result["steps"] < 100000
    tag = (run / "checkpoints" / "latest").read_text().strip()
    assert tag == f"step_{result['steps']:08d}"
    assert sorted(p.name for p in (run / "checkpoints" / tag).glob("rank_*.pt")) == [
        "rank_00000.pt", "rank_00001.pt"]


def test_single_process_deepspeed_sigterm_exit_code(tmp_path):
    run = tmp_path / "run"
    log_path = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "pretrain.train", "--config", "configs/debug.yaml",
           f"run_dir={run}", "train.max_steps=100000", "parallel.engine=deepspeed",
           "logging.log_interval=1", "train.eval_interval=0", "checkpoint.interval=0"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT)
        _wait_for(log_path, "step 2/", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 75
    assert (run / "checkpoints" / "latest").is_file()



def test_deepspeed_launcher_runs_the_same_entry_point(tmp_path):
    run = tmp_path / "run"
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
           str(_free_port()), "--module", "pretrain.train", "--config", "configs/debug.yaml",
           f"run_dir={run}", *BASE]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / "results.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == STEPS
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after <= before, f"left in /dev/shm: {after - before}"


def _free_port() -> int:
    from pretrain.parallel.grid import free_port

    return free_port()


def test_ranks_that_see_different_checkpoints_stop_with_one_message(tmp_path):
    """A run directory on node-local disks: rank 1 sees a checkpoint, rank 0 none. The run must
    stop with one message naming both ranks and paths, not resume one rank and start the other."""
    base = tmp_path / "local"
    first = base / "1"
    torchrun(1, "--config", "configs/debug.yaml", f"run_dir={first}", *BASE, "train.max_steps=2",
             "parallel.engine=deepspeed", "checkpoint.interval=1")
    assert (first / "checkpoints" / "latest").is_file()
    # ${oc.env:RANK}: each rank reads its own directory, as on nodes without a shared file system.
    proc = torchrun(2, "--config", "configs/debug.yaml", f"run_dir={base}/${{oc.env:RANK}}", *BASE,
                    "train.max_steps=4", "train.micro_batch_size=4", check=False, timeout=300)
    assert proc.returncode == 1 or proc.returncode == 2, proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines() if "ranks disagree on what to resume" in x)
    assert "rank 0 on" in line and f"{base}/0/checkpoints/latest -> no checkpoint" in line
    assert f"{base}/1/checkpoints/latest -> step_00000002" in line
    assert not (base / "0" / "results.json").exists()  # nothing trained from scratch ...
    assert json.loads((first / "results.json").read_text())["steps"] == 2  # ... nor resumed


def test_tp2_rank_does_at_most_055_of_a_tp1_rank_s_training_flops():
    """The local model is split over the TP group (not repeated by every TP peer): FLOPs of one
    training step counted by torch inside each rank, on a model whose local stack does ~63% of
    the counted work (replicated, a TP=2 rank would do ~0.81 of TP=1)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tp_flops.py"), "--tp", "1,2",
                           "model.seq_len=128"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    tp2 = result["layouts"]["tp2"]
    assert len({r["flops"] for r in tp2["ranks"]}) == 1  # both ranks do the same work
    assert result["local_share"] > 0.5
    assert tp2["ratio"] <= 0.55, result


def test_results_report_the_full_model_s_parameters(tp2dp2_run):
    """results.json counts the whole model (TP shards summed, replicated parameters once), as one
    process and the export do, not the parameters one TP rank holds."""
    from pretrain.model import build_model, count_params

    run, _, _ = tp2dp2_run
    cfg = load_config(CONFIG_DIR / "debug.yaml")
    full = count_params(build_model(cfg.model, 259, 256, 257))
    assert json.loads((run / "results.json").read_text())["parameters"] == full
