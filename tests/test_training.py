"""Single-process training: learns on real text, resumes exactly, saves what it should."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from data_prep.vocab import ByteVocab
from pretrain.config import CONFIG_DIR, derive, load_config
from pretrain.data import load_corpus
from pretrain.inference.evaluation import evaluate_bytes
from pretrain.inference.loading import load_for_inference
from pretrain.model import build_model
from pretrain.runtime.rng import seed_everything
from pretrain.training.optim import lr_at
from pretrain.training.trainer import Trainer
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, text=True,
                          capture_output=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def make_trainer(tmp_path, name, *overrides):
    cfg = load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={tmp_path / name}",
                                                 "logging.tensorboard=false", *overrides])
    return Trainer(cfg, derive(cfg))


def test_tiny_megabyte_lowers_held_out_loss(tmp_path):
    trainer = make_trainer(tmp_path, "learn", "train.max_steps=80")
    before = trainer.evaluate()["bpb"]
    result = trainer.train()
    assert before > 7.0  # untrained: about uniform over 256 values (8 bits)
    assert result["val_bpb"] < before - 2.0, (before, result["val_bpb"])


def test_subword_baseline_trains_and_reports_bits_per_byte(tmp_path, sp_model):
    cfg = load_config(CONFIG_DIR / "debug_subword.yaml", [
        f"run_dir={tmp_path / 'sub'}", f"model.tokenizer={sp_model}", "train.max_steps=40",
        "logging.tensorboard=false"])
    trainer = Trainer(cfg, derive(cfg))
    assert trainer.bytes_per_unit > 1.5  # subword tokens cover several bytes
    before = trainer.evaluate()["bpb"]
    result = trainer.train()
    assert result["val_bpb"] < before


def test_resume_continues_bit_for_bit(tmp_path):
    common = ["train.max_steps=8", "checkpoint.interval=4", "checkpoint.keep_last=5",
              "logging.log_interval=1", "model.dropout=0.1"]  # dropout: RNG state must resume
    full = make_trainer(tmp_path, "full", *common)
    full.train()
    full_hist = json.loads((tmp_path / "full" / "history.json").read_text())
    # An interrupted run: only the step-4 checkpoint exists when it is restarted.
    part = tmp_path / "part" / "checkpoints"
    part.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000004", part / "step_00000004")
    (part / "latest").write_text("step_00000004\n")
    resumed = make_trainer(tmp_path, "part", *common)
    resumed.train()
    part_hist = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["step"] for h in part_hist] == [5, 6, 7, 8]
    for a, b in zip(full_hist[4:], part_hist):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)


def test_schedule_warmup_then_decay():
    cfg = load_config(CONFIG_DIR / "debug.yaml").optim
    lrs = [lr_at(s, cfg, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert lrs[cfg.warmup_steps - 1] == pytest.approx(cfg.lr)
    assert all(a >= b for a, b in zip(lrs[cfg.warmup_steps:], lrs[cfg.warmup_steps + 1:]))
    assert lrs[-1] < cfg.lr * 0.05


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("pretrain.train", "--config", "configs/debug.yaml", f"run_dir={run_dir}",
                   "train.max_steps=30", "train.sample_bytes=16")
    return run_dir, proc


def test_train_cli_outputs(trained_run):
    run_dir, proc = trained_run
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 30
    assert (run_dir / "config.yaml").is_file() and (run_dir / "results.json").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000030"
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/bpb", "train/lr", "train/grad_norm", "val/bpb"} <= tags
    assert "validation" in proc.stderr


# 30 steps on the debug config go from 8.00 bits per byte untrained (uniform over 259 ids would
# be log2(259) = 8.02) to about 5.6 on the held-out bytes; 3 steps only reach about 7.9.
TRAINED_MARGIN_BPB = 1.5


def test_train_cli_beats_the_untrained_model_on_the_same_held_out_bytes(trained_run):
    """The reported val_bpb is the trained model's on the held-out bytes, and it is at least
    TRAINED_MARGIN_BPB below the same config's untrained model (same seed, step 0) on those bytes."""
    run_dir, proc = trained_run
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cfg, trained, vocab = load_for_inference(run_dir)
    val = load_corpus(cfg.data).val[:cfg.data.val_bytes]
    assert len(val) == result["val_bytes"] == cfg.data.val_bytes
    patch = cfg.model.patch_size

    def bpb(model) -> float:
        return evaluate_bytes(model, val, ByteVocab(), cfg.model.seq_len, "basic", patch)["bpb"]

    seed_everything(cfg.train.seed)  # the trainer's step-0 weights
    untrained = build_model(cfg.model, vocab.vocab_size, vocab.pad_id, vocab.bos_id).eval()
    before, after = bpb(untrained), bpb(trained)
    assert after == pytest.approx(result["val_bpb"], abs=1e-3), (after, result["val_bpb"])
    assert before > 7.5, before  # untrained: about uniform over the vocabulary
    assert after < before - TRAINED_MARGIN_BPB, (before, after)


def test_train_cli_config_error_is_one_line():
    proc = run_cli("pretrain.train", "model.seq_len=100", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "model.seq_len" in proc.stderr and proc.stdout == ""


def test_generate_cli(trained_run):
    run_dir, _ = trained_run
    proc = run_cli("pretrain.generate", "--checkpoint", str(run_dir), "--prompt", "def ",
                   "--prompt", "import os\n", "--max-new", "20", "--json")
    out = json.loads(proc.stdout)
    assert len(out["outputs"]) == 2 and out["bytes"] > 0 and out["bytes_per_s"] > 0
    text = run_cli("pretrain.generate", "--checkpoint", str(run_dir), "--prompt", "class ",
                   "--max-new", "10")
    assert text.stdout.startswith("class ") and "bytes/s" in text.stderr


def test_evaluate_cli(trained_run):
    run_dir, _ = trained_run
    proc = run_cli("pretrain.evaluate", "--checkpoint", str(run_dir), "--modes",
                   "basic,sliding,strided,sliding_strided", "--max-bytes", "3000")
    out = json.loads(proc.stdout)
    assert set(out["results"]) == {"basic", "sliding", "strided", "sliding_strided"}
    for r in out["results"].values():
        assert r["bytes"] == 3000 and 0 < r["bpb"] < 9
    bad = run_cli("pretrain.evaluate", "--checkpoint", str(run_dir / "nope"), check=False)
    assert bad.returncode == 2 and "no checkpoint found" in bad.stderr
    # --compile: the compiled forward scores the same bits per byte (aot_eager: no C compiler).
    compiled = run_cli("pretrain.evaluate", "--checkpoint", str(run_dir), "--max-bytes", "3000",
                       "--compile", "aot_eager")
    got = json.loads(compiled.stdout)
    assert got["compile"] == "aot_eager"
    assert got["results"]["basic"]["bpb"] == pytest.approx(out["results"]["basic"]["bpb"], rel=1e-6)


@pytest.mark.parametrize("module", ["pretrain.train", "pretrain.generate", "pretrain.evaluate",
                                    "data_prep.tokenizer"])
def test_help(module):
    proc = run_cli(module, "--help")
    assert "usage:" in proc.stdout


def test_fused_adamw_is_the_same_update_and_the_engine_needs_no_compiler():
    """The single-process AdamW runs ``fused`` (CPU and GPU): 5 updates equal the plain
    per-parameter loop's; the DeepSpeed config asks for torch's AdamW (no JIT-built FusedAdam, so
    a GPU node without nvcc trains) unless parallel.deepspeed_fused_adam."""
    import torch

    from pretrain.parallel.engine import deepspeed_config
    from pretrain.training.optim import build_optimizer, param_groups

    cfg = load_config(CONFIG_DIR / "debug.yaml", ["optim.weight_decay=0.1"])
    results = []
    for fused in (True, False):
        model = build_model(cfg.model, 259, 256, 257, seed=1)
        opt = build_optimizer(model, cfg.optim) if fused else torch.optim.AdamW(
            param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, foreach=False)
        assert bool(opt.defaults["fused"]) is fused
        ids = torch.randint(0, 256, (4, cfg.model.seq_len), generator=torch.Generator().manual_seed(0))
        for _ in range(5):
            opt.zero_grad()
            model(ids).float().logsumexp(-1).mean().backward()
            opt.step()
        results.append(model.state_dict())
    for name, value in results[0].items():
        assert torch.allclose(value, results[1][name], rtol=0, atol=1e-6), name
    derived = derive(cfg)
    for device in ("cpu", "cuda"):
        params = deepspeed_config(cfg, derived, torch.device(device))["optimizer"]["params"]
        assert params["torch_adam"] is True and params["fused"] is True, params
    fused = load_config(CONFIG_DIR / "debug.yaml", ["parallel.deepspeed_fused_adam=true"])
    assert deepspeed_config(fused, derive(fused), torch.device("cuda"))["optimizer"]["params"][
        "torch_adam"] is False


# ------------------------------------------------------------------ stop signals, set-up errors

FAST = ["logging.log_interval=1", "train.eval_interval=0"]


def test_sigterm_checkpoints_writes_stop_reason_exits_75_and_resumes(tmp_path):
    """SIGTERM to a single-process run: checkpoint at the next step boundary, stop_reason
    ``signal``, exit 75 (requeue); running the same command again resumes from that checkpoint."""
    import signal
    import time

    run = tmp_path / "run"
    log_path = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "pretrain.train", "--config", "configs/debug.yaml",
           f"run_dir={run}", "train.max_steps=100000", "checkpoint.interval=0", *FAST]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": "1"}, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while "step 2/" not in log_path.read_text() and time.time() < deadline:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 75, log_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    assert (run / "stop_reason").read_text() == "signal\n"
    steps = json.loads((run / "results.json").read_text())["steps"]
    assert 2 <= steps < 100000
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
    cfg = load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={run}", f"train.max_steps={steps + 2}",
                                                 "logging.tensorboard=false", *FAST])
    assert Trainer(cfg, derive(cfg)).train()["steps"] == steps + 2  # the same command resumes
    assert [h["step"] for h in json.loads((run / "history.json").read_text())][-3:] == [
        steps, steps + 1, steps + 2]


def _other_arch_export(tmp_path):
    """A safetensors export of a byte Transformer (not the debug MEGABYTE)."""
    from pretrain.checkpoints.exports import write_export
    from pretrain.config import as_dict

    cfg = load_config(CONFIG_DIR / "debug_transformer.yaml")
    model = build_model(cfg.model, 259, 256, 257)
    return write_export(tmp_path / "other.safetensors", model.state_dict(), as_dict(cfg), {"step": 0})


SETUP_CASES = {  # name: what the one line must contain
    "empty data dir": "no input files under",
    "tiny corpus": "too small to split",
    "bad tokenizer": "model.tokenizer:",
    "init_from garbage": "is not a readable safetensors export",
    "init_from empty dir": "no checkpoint found",
    "init_from other arch": "model.arch=transformer there, megabyte here",
}


def _setup_case(name: str, tmp_path) -> list:
    """The overrides of SETUP_CASES[name], with the bad input made under ``tmp_path``."""
    bad = tmp_path / "input"
    if name in ("empty data dir", "tiny corpus", "init_from empty dir"):
        bad.mkdir()
    if name == "tiny corpus":
        (bad / "a.txt").write_text("hello")
    if name in ("bad tokenizer", "init_from garbage"):
        bad.write_bytes(b"not what it should be " * 5)
    if name == "init_from other arch":
        bad = _other_arch_export(tmp_path)
    return {"empty data dir": ["data.source=files", f"data.path={bad}"],
            "tiny corpus": ["data.source=files", f"data.path={bad}"],
            "bad tokenizer": ["model.arch=transformer", "model.vocab=sentencepiece",
                              f"model.tokenizer={bad}"]}.get(name, [f"train.init_from={bad}"])


@pytest.mark.parametrize("name", list(SETUP_CASES))
def test_setup_input_errors_are_one_line_exit_2(tmp_path, name):
    """Bad inputs found while setting up (before the first step): one ``error:`` line naming the
    key or file, exit 2, no traceback."""
    proc = run_cli("pretrain.train", "--config", "configs/debug.yaml", f"run_dir={tmp_path / 'run'}",
                   "train.max_steps=2", "logging.tensorboard=false", *FAST,
                   *_setup_case(name, tmp_path), check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("error: ") and SETUP_CASES[name] in last, last


def test_cuda_device_without_a_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run_cli("pretrain.train", "--config", "configs/debug.yaml", "train.device=cuda",
                   "logging.tensorboard=false", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert "train.device=cuda" in proc.stderr


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """4 logged steps with checkpoints at 2 and 4, TensorBoard on."""
    run_dir = tmp_path_factory.mktemp("short") / "run"
    cfg = load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={run_dir}", "train.max_steps=4",
                                                 "checkpoint.interval=2", "checkpoint.keep_last=5",
                                                 *FAST])
    Trainer(cfg, derive(cfg)).train()
    return run_dir


def _copy_run(short_run, tmp_path, latest=None):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    if latest is not None:
        (run / "checkpoints" / "latest").write_text(latest)
    return run


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty latest", "dangling latest"])
def test_broken_checkpoint_is_one_line_naming_the_file(short_run, tmp_path, damage):
    run = _copy_run(short_run, tmp_path)
    state = run / "checkpoints" / "step_00000004" / "state.pt"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:2000])
    elif damage == "garbage":
        state.write_bytes(b"garbage\n")
    else:
        (run / "checkpoints" / "latest").write_text("" if damage == "empty latest" else "step_9\n")
    proc = run_cli("pretrain.train", "--config", "configs/debug.yaml", f"run_dir={run}",
                   "train.max_steps=6", *FAST, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    named = state if damage in ("truncated", "garbage") else run / "checkpoints" / "latest"
    assert last.startswith("error: ") and str(named) in last, last
    if damage == "garbage":  # evaluate reads the same checkpoint: also one line
        ev = run_cli("pretrain.evaluate", "--checkpoint", str(run), check=False)
        assert ev.returncode == 2 and "Traceback" not in ev.stderr and str(state) in ev.stderr


def test_resume_with_another_model_shape_names_it_and_keeps_config(short_run, tmp_path):
    from pretrain.training.inputs import InputError

    run = _copy_run(short_run, tmp_path)
    before = (run / "config.yaml").read_text()
    cfg = load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={run}", "train.max_steps=6",
                                                 "model.global_model.dim=128", *FAST])
    with pytest.raises(InputError, match=r"model\.global_model\.dim=64 there, 128 here"):
        Trainer(cfg, derive(cfg)).train()
    assert (run / "config.yaml").read_text() == before


def test_resume_from_an_earlier_checkpoint_leaves_no_duplicate_tensorboard_points(short_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _copy_run(short_run, tmp_path, latest="step_00000002\n")
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    cfg = load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={run}", "train.max_steps=4", *FAST])
    Trainer(cfg, derive(cfg)).train()
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


def test_resume_past_max_steps_warns(short_run, tmp_path):
    import logging

    from pretrain.runtime.logs import get_logger

    run = _copy_run(short_run, tmp_path)
    records = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    get_logger().addHandler(handler)
    try:
        cfg = load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={run}", "train.max_steps=2",
                                                     "logging.tensorboard=false", *FAST])
        result = Trainer(cfg, derive(cfg)).train()
    finally:
        get_logger().removeHandler(handler)
    assert result["steps"] == 4
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("step 4, beyond train.max_steps=2" in m for m in warned), warned
