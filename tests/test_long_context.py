"""Long contexts on CPU: the 64K preset's context and patch size with a tiny width trains a few
steps with activation checkpointing on both levels and is evaluated; the hierarchical generation
cache equals the full forward pass at 64K; activation checkpointing changes no number."""

from __future__ import annotations

import json

import pytest
import torch

from data_prep.vocab import ByteVocab
from pretrain.config import CONFIG_DIR, StackConfig, derive, load_config
from pretrain.model import build_model
from pretrain.training.memory import apply_activation_checkpointing
from pretrain.training.trainer import Trainer
from tests.conftest import tiny_model_config

TINY_WIDTH = ["model.global_model.dim=128", "model.global_model.layers=1",
              "model.global_model.heads=2", "model.local_model.dim=32",
              "model.local_model.layers=1", "model.local_model.heads=2"]


def test_long_presets_load():
    for name, T, P in (("long_64k", 65536, 16), ("long_1m", 1 << 20, 32)):
        cfg = load_config(CONFIG_DIR / f"{name}.yaml")
        assert (cfg.model.seq_len, cfg.model.patch_size) == (T, P)
        assert cfg.parallel.checkpoint_global and cfg.parallel.checkpoint_local


@pytest.mark.slow
def test_64k_context_trains_with_checkpointing_on_both_levels_and_evaluates(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(CONFIG_DIR / "long_64k.yaml", [
        f"run_dir={run}", *TINY_WIDTH, "train.device=cpu", "train.dtype=fp32",
        "parallel.engine=simple", "train.max_steps=3", "train.eval_interval=0",
        "optim.warmup_steps=1", "optim.lr=3e-3", "data.val_bytes=131072", "data.max_bytes=4000000",
        "checkpoint.interval=0", "logging.tensorboard=false", "logging.log_interval=1",
        "logging.progress_bar=false", "train.sample_bytes=0"])
    trainer = Trainer(cfg, derive(cfg))
    calls = {"global": 0, "local": 0}
    for level in calls:  # count the recomputed blocks: checkpointing is really on
        stack = getattr(trainer.model, f"{level}_model")
        assert stack.checkpoint_fn is not None

        def counting(block, x, _fn=stack.checkpoint_fn, _level=level, **kw):
            calls[_level] += 1
            return _fn(block, x, **kw)

        stack.checkpoint_fn = counting
    result = trainer.train()
    assert calls == {"global": 3, "local": 3}  # one block per level, one micro-batch per step
    hist = json.loads((run / "history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert hist[-1]["loss"] < hist[0]["loss"]  # it learns something in three 64K steps
    assert result["val_bytes"] > 65536 and 0 < result["val_bpb"] < 8.5  # more than one 64K window


def test_generation_cache_equals_the_full_forward_at_64k():
    cfg = tiny_model_config(seq_len=65536, patch_size=16, global_model=StackConfig(64, 1, 2))
    torch.manual_seed(0)
    vocab = ByteVocab()
    model = build_model(cfg, vocab.vocab_size, vocab.pad_id, vocab.bos_id).eval()
    ids = torch.randint(0, 256, (1, 65536))
    prompt = 65536 - 40  # a prompt that fills almost the whole context, then 39 cached steps
    with torch.no_grad():
        full = model(ids)  # (1, T, V): full[:, t] predicts ids[:, t]
        state = model.new_decode_state(1, ids.device)
        worst = (model.next_logits(state, ids[:, :prompt]) - full[:, prompt]).abs().max().item()
        for t in range(prompt, ids.shape[1] - 1):
            logits = model.next_logits(state, ids[:, t:t + 1])
            worst = max(worst, (logits - full[:, t + 1]).abs().max().item())
    assert worst <= 1e-4


def test_activation_checkpointing_changes_no_number():
    """Loss and every gradient are the same with both levels recomputed (single process)."""
    vocab = ByteVocab()
    ids = torch.randint(0, 256, (2, 64))
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_model_config(), vocab.vocab_size, vocab.pad_id, vocab.bos_id)
        cfg = load_config(None, [f"parallel.checkpoint_global={on}", f"parallel.checkpoint_local={on}"])
        apply_activation_checkpointing(model, cfg.parallel)
        assert (model.local_model.checkpoint_fn is not None) == on
        logits = model.train()(ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-6)
