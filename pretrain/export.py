"""Export a checkpoint as one full-precision safetensors file (TP-aware, ZeRO-aware).

``python -m pretrain.export --checkpoint RUN_DIR [--output FILE]``

Works on single-process checkpoints directly. For a DeepSpeed ZeRO / tensor-parallel
checkpoint it relaunches itself with ``torchrun`` at the checkpoint's layout (the number of
processes and TP degree it was written with), loads the checkpoint through DeepSpeed, gathers
every parameter (un-partitioning ZeRO-3, concatenating TP shards along their partition
dimension) and writes the file from rank 0. DeepSpeed's own exporters are not used: on ZeRO-3 +
manual TP they refuse or silently write rank 0's shards only.

The file holds the plain single-process parameter names (``pretrain.model``), the resolved
config in its metadata (and as ``FILE.yaml`` beside it), and loads with
``pretrain.loading.load_for_inference`` or as ``train.init_from`` of a run at any layout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from pretrain.config import ConfigError, atomic_write_text, config_from_dict, to_yaml


def write_export(path: Path, weights: Dict[str, torch.Tensor], config: Dict[str, Any],
                 meta: Optional[Dict[str, Any]] = None) -> Path:
    """Atomically write fp32 ``weights`` + config metadata to ``path`` (and ``path``.yaml)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in weights.items()}
    metadata = {"format": "pretrain-export-v1", "config": json.dumps(config),
                "meta": json.dumps(meta or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    atomic_write_text(path.with_name(path.name + ".yaml"), to_yaml(config_from_dict(config)))
    return path


def read_export(path: Path) -> Dict[str, Any]:
    """``{"model": {name: tensor}, "config": dict, "meta": dict}`` from an export file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"export file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors export: {err}") from None
    if metadata.get("format") != "pretrain-export-v1":
        raise ValueError(f"{path} is not an export of this project (no pretrain-export-v1 metadata)")
    return {"model": weights, "config": json.loads(metadata["config"]),
            "meta": json.loads(metadata.get("meta", "{}"))}


def _ds_client_state(ckpt: Path) -> Dict[str, Any]:
    files = sorted(ckpt.glob("*mp_rank_00_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{ckpt} has no DeepSpeed model states")
    state = torch.load(files[0], map_location="cpu", weights_only=False)
    return state


def export_checkpoint(run_or_ckpt: Path, output: Path) -> Dict[str, Any]:
    """Export; returns a summary dict. Relaunches under torchrun for DeepSpeed checkpoints."""
    from pretrain import checkpoint

    path = Path(run_or_ckpt)
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    single = path / "state.pt" if (path / "state.pt").is_file() else None
    if single is None and (ckpt_dir / checkpoint.LATEST).is_file():
        target = ckpt_dir / (ckpt_dir / checkpoint.LATEST).read_text().strip()
        if (target / "state.pt").is_file():
            single = target / "state.pt"
        elif not target.is_dir():
            raise FileNotFoundError(f"{ckpt_dir / checkpoint.LATEST} points at missing {target}")
        else:
            return _export_deepspeed(ckpt_dir, target, output)
    if single is None:
        raise FileNotFoundError(f"no checkpoint found at {path}")
    state = checkpoint.load(single)
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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={world}", "-m", "pretrain.export", "--checkpoint",
           str(ckpt_dir.parent), "--output", str(output)]
    print(f"relaunching at the checkpoint's layout: {' '.join(cmd)}", file=sys.stderr)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed export failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _export_inside(ckpt_dir: Path, client: Dict[str, Any], output: Path) -> Dict[str, Any]:
    import torch.distributed as dist

    from pretrain.engine import DeepSpeedTrainer

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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.export",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="run directory (uses checkpoints/latest) or checkpoint directory")
    parser.add_argument("--output", type=Path, default=None,
                        help="output file (default: RUN_DIR/export/model.safetensors)")
    args = parser.parse_args(argv)
    run_dir = args.checkpoint
    if run_dir.name.startswith("step_") or run_dir.name == "checkpoints":
        run_dir = run_dir.parent if run_dir.name == "checkpoints" else run_dir.parent.parent
    output = args.output or run_dir / "export" / "model.safetensors"
    try:
        summary = export_checkpoint(args.checkpoint, output)
    except (ConfigError, OSError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
