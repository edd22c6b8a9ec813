"""Parity that can see weight decay: 60 steps past warmup, decay 0.1 at a learning rate where it
visibly changes the weights, single process vs TP=2 x DP=2 ZeRO-3 and TP=1 x DP=2 ZeRO-2.

The short parity tests in ``test_engine.py`` run 6 steps inside the warmup, where a parameter
group that lost its decay changes nothing measurable; the original bug (TP layers replaced
``nn.Linear``, so the global model's matrices got no decay under DeepSpeed) passed them. Here
the loss and the clipped gradient norm must agree to 1e-4 relative at every step and the final
consolidated weights to 1e-4 (norm of the difference relative to each tensor's norm).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.config import CONFIG_DIR, derive, load_config
from pretrain.training.trainer import Trainer
from tests.conftest import ROOT
from tests.test_engine import assert_parity, env, history, torchrun

STEPS = 60
LONG = ["logging.log_interval=1", "parallel.zero3_persistence_threshold=0", "train.eval_interval=0",
        f"train.max_steps={STEPS}", "checkpoint.interval=0", "optim.warmup_steps=5",
        "optim.lr=0.002", "optim.weight_decay=0.1", "model.dropout=0.0",
        # The paper's init: with the default ln_gain (global output scaled by 0.05) some weights get
        # gradients near the fp32 noise floor, where Adam's normalized update is ~lr with a sign set
        # by rounding; the final weights then differ by ~4e-3 of their largest value between the
        # torch loop and DeepSpeed (the same 4.2e-3 at TP2xDP2 and TP1xDP2, so not sharding) while
        # loss (5e-7) and grad norm (6e-6) still agree. This test is about the engine's parity.
        "model.init=paper"]
LAYOUTS = {  # name: (processes, tensor parallel, micro-batch per rank, ZeRO stage); global batch 8
    "tp2xdp2_zero3": (4, 2, 4, 3),
    "tp1xdp2_zero2": (2, 1, 4, 2),
}


def final_weights(run_dir: Path, distributed: bool) -> dict:
    if not distributed:
        from pretrain.checkpoints import store

        return store.load(store.latest(run_dir / "checkpoints"))["model"]
    out = run_dir / "export.safetensors"
    proc = subprocess.run([sys.executable, "-m", "pretrain.export", "--checkpoint", str(run_dir),
                           "--output", str(out)], cwd=ROOT, env=env(), text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from pretrain.checkpoints.exports import read_export

    return read_export(out)["model"]


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("long_ref") / "run"
    cfg = load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={run}", "logging.tensorboard=false",
                                                  "parallel.engine=simple", "train.micro_batch_size=8",
                                                  *LONG])
    Trainer(cfg, derive(cfg)).train()
    return history(run), final_weights(run, distributed=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_long_parity_with_weight_decay(tmp_path, long_reference, name):
    ref_hist, ref_weights = long_reference
    nproc, tp, micro, stage = LAYOUTS[name]
    run = tmp_path / "run"
    torchrun(nproc, "--config", "configs/debug.yaml", f"run_dir={run}", *LONG,
             f"parallel.tensor_parallel={tp}", f"train.micro_batch_size={micro}",
             f"parallel.zero_stage={stage}")
    got = history(run)
    assert len(got) == STEPS
    worst = assert_parity(ref_hist, got, loss_rel=1e-4, norm_rel=1e-4)
    weights = final_weights(run, distributed=True)
    assert set(weights) == set(ref_weights)
    # Per tensor, the norm of the difference relative to the tensor's norm. Not the largest entry:
    # a ReLU unit whose pre-activation sits at zero flips on fp32 roundoff (thread count, reduction
    # order), and its few weights then end ~2e-4 of the tensor's largest value apart although the
    # engine is right (seen at TP1xDP2: 32 entries of local_model.blocks.1.mlp.fc1.weight). A group
    # that lost its decay is off by ~1e-2 in this norm (every weight shrinks ~1% less).
    rel = {k: float((weights[k] - ref_weights[k]).norm() / ref_weights[k].norm().clamp_min(1e-12))
           for k in ref_weights}
    entry = {k: float((weights[k] - ref_weights[k]).abs().max() / ref_weights[k].abs().max().clamp_min(1e-12))
             for k in ref_weights}
    print(json.dumps({"layout": name, "loss_rel": worst["loss"], "grad_norm_rel": worst["grad_norm"],
                      "weights_rel_norm": max(rel.values()), "weights_rel_entry": max(entry.values())}))
    assert max(rel.values()) <= 1e-4, sorted(rel.items(), key=lambda kv: -kv[1])[:5]


def test_decay_changes_the_weights_visibly_at_these_settings(long_reference):
    """The test above is only meaningful if decay matters here: the decayed matrices must have
    shrunk by far more than the 1e-4 tolerance relative to their undecayed update."""
    _, weights = long_reference
    cfg = load_config(CONFIG_DIR / "debug.yaml", LONG)
    shrink = 1 - (1 - cfg.optim.lr * cfg.optim.weight_decay) ** (STEPS - cfg.optim.warmup_steps)
    assert shrink > 50 * 1e-4  # decay alone moves every decayed weight by > 0.5% of itself
    assert all(torch.isfinite(w).all() for w in weights.values())
