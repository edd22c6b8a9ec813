"""Checks that must run inside a distributed job: ``torchrun ... tests/dist_checks.py KEY=VAL``.

Builds the real engine for the given config overrides and asserts that ZeRO-3 sharding and
tensor-parallel shapes are what they should be; exits non-zero with a message otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pretrain.config import CONFIG_DIR, load_config  # noqa: E402
from pretrain.parallel.engine import DeepSpeedTrainer  # noqa: E402


def main() -> None:
    cfg = load_config(CONFIG_DIR / "debug.yaml", sys.argv[1:])
    trainer = DeepSpeedTrainer(cfg)
    grid = trainer.grid
    # The distributed build (one parameter at a time, TP slice + ZeRO partition per rank) starts
    # from exactly the single process's initial weights, bit for bit.
    import torch

    from pretrain.model import build_model

    v = trainer.vocab
    if cfg.train.init_from:  # or from the weights named by init_from, read slice by slice
        from pretrain.checkpoints.consolidate import read_any

        start = read_any(Path(cfg.train.init_from))["model"]
    else:
        start = build_model(cfg.model, v.vocab_size, v.pad_id, v.bos_id,
                            seed=cfg.train.seed).state_dict()
    built = trainer.full_state()
    for name, value in start.items():
        assert torch.equal(built[name], value), f"{name}: distributed initial weights differ"
    report = {}
    for name, p in trainer.model.named_parameters():
        full_shape = tuple(p.ds_shape)  # this TP rank's (un-partitioned) shape
        local = p.ds_tensor.numel()  # what this rank actually stores
        report[name] = {"tp_shape": full_shape, "local": local,
                        "tp": bool(getattr(p, "tensor_model_parallel", False))}
        numel = 1
        for s in full_shape:
            numel *= s
        expect = -(-numel // grid.dp_size)  # ceil: ZeRO-3 pads the last partition
        assert local == expect, f"{name}: rank {grid.rank} holds {local}, expected {expect} of {numel}"
    D = cfg.model.global_model.dim
    qkv = report["global_model.blocks.0.attn.qkv.weight"]
    proj = report["global_model.blocks.0.attn.proj.weight"]
    fc1 = report["global_model.blocks.0.mlp.fc1.weight"]
    fc2 = report["global_model.blocks.0.mlp.fc2.weight"]
    tp = grid.tp_size
    assert qkv["tp_shape"] == (3 * D // tp, D) and qkv["tp"], qkv
    assert proj["tp_shape"] == (D, D // tp) and proj["tp"], proj
    assert fc1["tp_shape"] == (4 * D // tp, D) and fc1["tp"], fc1
    assert fc2["tp_shape"] == (D, 4 * D // tp) and fc2["tp"], fc2
    local_qkv = report["local_model.blocks.0.attn.qkv.weight"]
    Dl = cfg.model.local_model.dim
    assert local_qkv["tp_shape"] == (3 * Dl, Dl) and not local_qkv["tp"], local_qkv
    # The optimizer DeepSpeed built: torch's AdamW, fused (no JIT-compiled FusedAdam).
    inner = getattr(trainer.engine.optimizer, "optimizer", trainer.engine.optimizer)
    assert type(inner) is torch.optim.AdamW and inner.defaults["fused"], inner
    # Weight decay by role: the same parameter names as the plain single-process model.
    from pretrain.training.optim import decay_split

    plain = decay_split(build_model(cfg.model, v.vocab_size, v.pad_id, v.bos_id))
    assert decay_split(trainer.model) == plain, (decay_split(trainer.model), plain)
    assert "global_model.blocks.0.attn.qkv.weight" in plain[0]
    # Validation split over data-parallel ranks equals every rank scoring everything.
    from pretrain.inference.evaluation import evaluate_bytes

    text = trainer.val_text[:3000]  # several batches, not a multiple of the DP size
    trainer.val_text = text
    shared = trainer.evaluate()
    whole = evaluate_bytes(trainer.model, text, v, cfg.model.seq_len, "basic", cfg.model.patch_size,
                           batch_size=trainer.derived.micro_batch_size)
    assert shared["bytes"] == whole["bytes"] == len(text)
    rel = abs(shared["bpb"] - whole["bpb"]) / whole["bpb"]
    assert rel <= 1e-6, (shared, whole["bpb"])
    # Stop decisions are one answer on every rank: a time limit seen by the last rank only, a
    # signal seen by rank 0 only (a rank deciding alone would hang its peers in a collective).
    last = grid.rank == grid.world_size - 1
    assert trainer.stop_request(timed_out=last) == "max_minutes"
    assert trainer.stop_request(timed_out=False) is None
    trainer.signals.received = 10 if grid.rank == 0 else None
    assert trainer.stop_request(timed_out=last) == "signal"
    trainer.signals.received = None
    if grid.rank == 0:
        print(json.dumps({"ok": True, "grid": repr(grid), "params": len(report),
                          "decayed": plain[0], "val_bpb_shared": shared["bpb"],
                          "val_bpb_whole": whole["bpb"], "val_rel": rel}))
    # Leave together: a rank that exits while a peer's gloo threads still talk to it aborts
    # ("terminate called without an active exception").
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Every check passed and the group is gone. Skip the interpreter's teardown: objects that
    # DeepSpeed keeps alive (sub-groups, gloo threads) are destroyed there in no set order, and a
    # gloo thread destroyed while joinable aborts the process ("terminate called without an
    # active exception"), turning a passed check into a failed test now and then.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
