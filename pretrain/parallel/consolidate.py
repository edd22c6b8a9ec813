"""Consolidation: a checkpoint of any run -> one export file (TP-aware, ZeRO-aware).

Single-process checkpoints are converted directly. For a DeepSpeed ZeRO / tensor-parallel
checkpoint the command relaunches itself with ``torchrun`` at the checkpoint's layout (the number
of processes and TP degree it was written with), loads the checkpoint through DeepSpeed, gathers
every parameter (un-partitioning ZeRO-3, concatenating TP shards along their partition
dimension) and writes the file from rank 0. DeepSpeed's own exporters are not used: on ZeRO-3 +
manual TP they refuse or silently write rank 0's shards only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import torch

from pretrain.checkpoints import store
from pretrain.checkpoints.exports import write_export
from pretrain.config import config_from_dict
from pretrain.runtime.processes import torchrun_command


def _ds_client_state(ckpt: Path) -> Dict[str, Any]:
    files = sorted(ckpt.glob("*mp_rank_00_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{ckpt} has no DeepSpeed model states")
    state = torch.load(files[0], map_location="cpu", weights_only=False)
    return state


def export_checkpoint(run_or_ckpt: Path, output: Path) -> Dict[str, Any]:
    """Export; returns a summary dict. Relaunches under torchrun for DeepSpeed checkpoints."""
    path = Path(run_or_ckpt)
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    single = path / "state.pt" if (path / "state.pt").is_file() else None
    if single is None and (ckpt_dir / store.LATEST).is_file():
        target = ckpt_dir / (ckpt_dir / store.LATEST).read_text().strip()
        if (target / "state.pt").is_file():
            single = target / "state.pt"
        elif not target.is_dir():
            raise FileNotFoundError(f"{ckpt_dir / store.LATEST} points at missing {target}")
        else:
            return _export_deepspeed(ckpt_dir, target, output)
    if single is None:
        raise FileNotFoundError(f"no checkpoint found at {path}")
    state = store.load(single)
    write_export(output, state["model"], state["config"], {
        "step": state["step"], "bytes_seen": state["bytes_seen"], "data": state.get("data", {}),
        "source": str(single.parent), "world_size": 1, "tensor_parallel": 1})
    return {"output": str(output), "step": state["step"], "tensors": len(state["model"]),
            "parameters": sum(v.numel() for v in state["model"].values())}


def _export_deepspeed(ckpt_dir: Path, target: Path, output: Path) -> Dict[str, Any]:
    client = _ds_client_state(target)
    world = int(client["world_size"])
    if "RANK" in os.environ:  # already inside the distributed job
        return _export_inside(ckpt_dir, client, output)
    cmd = torchrun_command(world, "pretrain.export",
                           ["--checkpoint", str(ckpt_dir.parent), "--output", str(output)])
    print(f"relaunching at the checkpoint's layout: {' '.join(cmd)}", file=sys.stderr)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed export failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _export_inside(ckpt_dir: Path, client: Dict[str, Any], output: Path) -> Dict[str, Any]:
    import torch.distributed as dist

    from pretrain.parallel.engine import DeepSpeedTrainer

    overrides = [f"run_dir={ckpt_dir.parent}", "logging.tensorboard=false",
                 "checkpoint.resume=true", "train.init_from=null"]
    cfg = config_from_dict(client["config"], overrides)
    trainer = DeepSpeedTrainer(cfg)
    trainer.maybe_resume()
    weights = trainer.full_state()
    summary = {"output": str(output), "step": trainer.step, "tensors": len(weights),
               "parameters": sum(v.numel() for v in weights.values()),
               "source_layout": {"world_size": trainer.world_size,
                                 "tensor_parallel": trainer.grid.tp_size,
                                 "zero_stage": cfg.parallel.zero_stage}}
    if trainer.is_main:
        cfg_dict = dict(client["config"])
        write_export(output, weights, cfg_dict, {
            "step": trainer.step, "bytes_seen": trainer.bytes_seen,
            "data": trainer.train_data.state_dict(), **summary["source_layout"]})
    dist.barrier()
    return summary
