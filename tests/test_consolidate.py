"""Offline consolidation of DeepSpeed checkpoints, and every consumer taking a DeepSpeed run.

The reference is the weights gathered *inside the running job* (``tests/dist_gather.py``); the
offline result (one process, no process group, no training data) must equal it bit for bit at
TP x DP layouts of every ZeRO stage, including one whose parameter sizes do not divide the
data-parallel size (ZeRO-3 pads the last partition).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.test_engine import env, torchrun

TRAIN = ["train.max_steps=6", "train.eval_interval=0", "checkpoint.interval=3",
         "logging.log_interval=3", "logging.tensorboard=false", "optim.weight_decay=0.1",
         "parallel.zero3_persistence_threshold=0"]
LAYOUTS = {  # name: (processes, tensor parallel, ZeRO stage, extra overrides)
    # D_G = 9: global_embed (259 x 9) and other sizes are odd, so ZeRO-3 partitions are padded.
    "tp2xdp2_zero3_odd": (4, 2, 3, ["model.global_model.dim=72"]),
    "tp1xdp2_zero2": (2, 1, 2, []),
    "tp2xdp2_zero1": (4, 2, 1, []),
    "tp2xdp1_zero0": (2, 2, 0, []),
}


def offline(*args: str) -> subprocess.CompletedProcess:
    """A command in a fresh single process with no distributed environment at all."""
    clean = {k: v for k, v in env().items()
             if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=clean, text=True,
                          capture_output=True, timeout=300)


@pytest.fixture(scope="module", params=list(LAYOUTS), ids=list(LAYOUTS))
def gathered_run(request, tmp_path_factory):
    nproc, tp, stage, extra = LAYOUTS[request.param]
    run = tmp_path_factory.mktemp(request.param) / "run"
    ref = run.parent / "in_job.pt"
    torchrun(nproc, str(ref), f"run_dir={run}", f"parallel.tensor_parallel={tp}",
             f"parallel.zero_stage={stage}", f"train.micro_batch_size={8 * tp // nproc}",
             *TRAIN, *extra, module=str(ROOT / "tests" / "dist_gather.py"))
    return run, torch.load(ref, weights_only=True), (nproc, tp, stage)


def test_offline_export_is_bit_identical_to_the_in_job_gather(gathered_run, tmp_path):
    from pretrain.checkpoints.exports import read_export

    run, in_job, (nproc, tp, stage) = gathered_run
    out = tmp_path / "model.safetensors"
    # The training data is gone: the export must not need it.
    proc = offline("pretrain.export", "--checkpoint", str(run), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["source_layout"] == {"world_size": nproc, "tensor_parallel": tp,
                                        "zero_stage": stage}
    got = read_export(out)["model"]
    assert set(got) == set(in_job)
    for name, tensor in in_job.items():
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), f"{name}: offline != in-job gather"


def test_offline_export_of_a_corrupt_checkpoint_names_the_file(gathered_run, tmp_path):
    import shutil

    run, _, (_, _, stage) = gathered_run
    broken = tmp_path / "run"
    shutil.copytree(run / "checkpoints", broken / "checkpoints")
    tag = (broken / "checkpoints" / "latest").read_text().strip()
    victim = sorted((broken / "checkpoints" / tag).glob("*optim_states.pt") if stage else
                    (broken / "checkpoints" / tag).glob("*model_states.pt"))[-1]
    victim.write_bytes(victim.read_bytes()[:100])
    proc = offline("pretrain.export", "--checkpoint", str(broken))
    assert proc.returncode == 2
    assert victim.name in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_evaluate_and_generate_take_the_deepspeed_run_and_cache_the_consolidation(gathered_run):
    from pretrain.checkpoints.consolidate import CACHE_NAME, read_checkpoint, resolve

    run, in_job, _ = gathered_run
    ckpt = resolve(run)
    cache = ckpt / CACHE_NAME
    cache.unlink(missing_ok=True)
    first = offline("pretrain.evaluate", "--checkpoint", str(run))
    assert first.returncode == 0, first.stderr[-3000:]
    bpb = json.loads(first.stdout.strip().splitlines()[-1])["results"]["basic"]["bpb"]
    # The run's own validation split, scored the same way as at the end of training.
    assert bpb == pytest.approx(json.loads((run / "results.json").read_text())["val_bpb"], rel=1e-5)
    assert cache.is_file() and not list(ckpt.glob(".*tmp"))
    stamp = cache.stat().st_mtime_ns
    gen = offline("pretrain.generate", "--checkpoint", str(run), "--prompt", "def ",
                  "--max-new", "16")
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert cache.stat().st_mtime_ns == stamp, "the cached consolidation is reused"
    # A changed checkpoint invalidates the cache.
    victim = sorted(ckpt.glob("rank_*.pt"))[0]
    time.sleep(0.01)
    os.utime(victim)
    again = offline("pretrain.evaluate", "--checkpoint", str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert cache.stat().st_mtime_ns != stamp
    weights = read_checkpoint(ckpt)["model"]
    assert all(torch.equal(weights[k], in_job[k]) for k in in_job)


def test_init_from_a_deepspeed_run_directory_starts_from_its_weights(gathered_run, tmp_path):
    """``train.init_from=RUN_DIR`` of a DeepSpeed run, in a single-process run: its weights and
    step (``train.init_continue``), without exporting first."""
    from pretrain.config import CONFIG_DIR, derive, load_config
    from pretrain.training.trainer import Trainer

    run, in_job, (_, tp, _) = gathered_run
    saved = load_config(run / "config.yaml")
    cfg = load_config(CONFIG_DIR / "debug.yaml", [
        f"run_dir={tmp_path / 'cont'}", f"train.init_from={run}", "train.init_continue=true",
        "logging.tensorboard=false", f"model.global_model.dim={saved.model.global_model.dim}"])
    trainer = Trainer(cfg, derive(cfg))
    assert trainer.step == 6
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], in_job[k]) for k in in_job)


def test_distributed_init_from_a_deepspeed_run_at_another_layout(gathered_run, tmp_path):
    """``train.init_from=RUN_DIR`` in a distributed run at another layout (TP=2 <-> TP=1, 4
    ranks, ZeRO-3): each rank reads its slices from the consolidated cache (rank 0 writes it once)
    and the gathered initial weights are the source run's, bit for bit."""
    run, in_job, (nproc, tp, stage) = gathered_run
    saved_dim = in_job["global_model.ln_out.weight"].shape[0]
    proc = torchrun(4, f"parallel.tensor_parallel={3 - tp}", "parallel.zero_stage=3",
                    f"train.init_from={run}", f"model.global_model.dim={saved_dim}",
                    "train.micro_batch_size=2", f"run_dir={tmp_path / 'new'}",
                    "logging.tensorboard=false", module=str(ROOT / "tests" / "dist_checks.py"))
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"]


@pytest.mark.parametrize("stage", [3, 0], ids=["zero3", "zero0"])
def test_bf16_runs_export_the_fp32_master_weights(stage, tmp_path):
    """Under bf16 the export holds DeepSpeed's fp32 master copies (``bf16_zero_pp_rank_*`` files
    for ZeRO-3; the bf16 optimizer's ``fp32_groups`` without ZeRO), not the bf16 parameters:
    rounded to bf16 they are exactly the parameters the running job gathers."""
    from pretrain.checkpoints.consolidate import read_checkpoint, resolve

    run, ref = tmp_path / "run", tmp_path / "in_job.pt"
    torchrun(2, str(ref), f"run_dir={run}", "parallel.tensor_parallel=2",
             f"parallel.zero_stage={stage}", "train.dtype=bf16", "train.micro_batch_size=8",
             *TRAIN, module=str(ROOT / "tests" / "dist_gather.py"))
    in_job = torch.load(ref, weights_only=True)
    got = read_checkpoint(resolve(run))["model"]
    assert set(got) == set(in_job)
    for name, value in in_job.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name].bfloat16().float(), value), name
    assert any(not torch.equal(got[n], in_job[n]) for n in in_job), "bf16 values, not the master"


def test_export_to_a_directory_is_one_error_line_and_a_failed_write_leaves_no_temp_file(
        tmp_path, capsys, monkeypatch):
    import safetensors.torch

    from pretrain.checkpoints.exports import write_export
    from pretrain.export import main
    from tests.test_evaluation import assert_one_error_line, run_command, save_tiny_run

    run = save_tiny_run(tmp_path / "run")
    target = tmp_path / "existing"
    target.mkdir()
    code, out, err = run_command(main, ["--checkpoint", run, "--output", target], capsys)
    assert_one_error_line(code, err, f"{target} is a directory: name the export file")
    assert list(target.iterdir()) == [] and out == ""

    def broken(tensors, filename, metadata=None):  # a write that fails half-way (disk full)
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="No space"):
        write_export(tmp_path / "out" / "model.safetensors", {"w": torch.zeros(2)}, {})
    assert list((tmp_path / "out").iterdir()) == []
