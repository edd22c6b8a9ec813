"""Peak resident memory per rank of the distributed model build: the old build vs the new.

``python -m bench.build_memory [--ranks 4] [--tp 2] [--zero 3] [--dim 2048] [--layers 5]``

Both builds run in this one invocation, one after the other, each as a fresh ``torchrun`` job
of ``--ranks`` CPU ranks (peak RSS is a per-process lifetime figure), on the same MEGABYTE
config (default: a global model of 5 x 2048-wide layers, ~1.03 GB of fp32 weights):

* ``old``: what every rank did before: build the whole fp32 reference model, clone its
  weights, then build its TP slice / ZeRO partition and copy the full tensors in;
* ``new``: :func:`pretrain.parallel.tensor_parallel.build_parallel_model` as it is: nothing for
  the whole model; each parameter's initial value is produced alone and each rank keeps its TP
  slice and ZeRO partition.

Per rank: the peak RSS (``ru_maxrss``) minus the RSS just before the build (torch, DeepSpeed
and the process group already loaded). Printed side by side with the ratio new / old and the
target (new extra <= half the model's fp32 size); JSON on stdout (``--json FILE`` too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def overrides(args: argparse.Namespace) -> List[str]:
    heads = max(1, args.dim // 128)
    return [f"model.global_model.dim={args.dim}", f"model.global_model.layers={args.layers}",
            f"model.global_model.heads={heads}", "model.local_model.dim=256",
            "model.local_model.layers=2", "model.local_model.heads=4", "model.seq_len=512",
            f"parallel.tensor_parallel={args.tp}", f"parallel.zero_stage={args.zero}",
            "train.micro_batch_size=1", "train.device=cpu", "logging.tensorboard=false"]


def worker(args: argparse.Namespace) -> None:
    """One rank: init, measure, build (old or new), measure, write this rank's JSON."""
    import torch

    from pretrain.checkpoints.consolidate import OpenWeights
    from pretrain.config import CONFIG_DIR, derive, load_config
    from pretrain.model import build_model
    from pretrain.parallel.engine import deepspeed_config
    from pretrain.parallel.grid import ParallelGrid, init_distributed
    from pretrain.parallel.tensor_parallel import build_parallel_model

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    cfg = load_config(CONFIG_DIR / "debug.yaml", overrides(args))
    init_distributed("cpu")
    import torch.distributed as dist

    grid = ParallelGrid(cfg.parallel.tensor_parallel)
    ds_config = deepspeed_config(cfg, derive(cfg, grid.world_size), torch.device("cpu"))
    warm_up(grid, ds_config)
    before = current_rss_bytes()
    weights = None
    if args.mode == "old":  # the previous build: the whole reference model, then a clone
        reference = build_model(cfg.model, 259, 256, 257, seed=cfg.train.seed)
        full = {k: v.detach().clone() for k, v in reference.named_parameters()}
        del reference
        weights = OpenWeights({}, {}, tensors=full)
    model = build_parallel_model(cfg, 259, 256, 257, grid, ds_config, weights)
    del weights
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
               for p in model.parameters()) * 4
    record = {"rank": grid.rank, "rss_before": before, "peak": peak, "extra": peak - before,
              "held_bytes": held}
    Path(args.out, f"{args.mode}_{grid.rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def warm_up(grid: Any, ds_config: Dict[str, Any]) -> None:
    """Pay the one-time costs before measuring (same for both builds): torch's meta-device
    kernels (~80 MB the first time a meta model is built), the truncated-normal kernels (~50 MB
    paged in on first use) and ZeRO-3's modules."""
    import deepspeed
    import torch

    from pretrain.model.init import initial_value

    initial_value("warm_up", torch.Size([4, 4]), ("normal", 0.02), 0)

    with torch.device("meta"):
        torch.nn.Embedding(4, 4)
        torch.nn.LayerNorm(4)
    with deepspeed.zero.Init(data_parallel_group=grid.dp_group, mpu=grid,
                             config_dict_or_path=ds_config):
        torch.nn.Linear(4, 4)


def model_bytes(args: argparse.Namespace) -> int:
    """fp32 bytes of the whole model (built on the meta device: no memory)."""
    import torch

    from pretrain.config import CONFIG_DIR, load_config
    from pretrain.model import build_model

    cfg = load_config(CONFIG_DIR / "debug.yaml", overrides(args))
    with torch.device("meta"):
        model = build_model(cfg.model, 259, 256, 257, seed=None)
    return sum(p.numel() for p in model.parameters()) * 4


def run_mode(args: argparse.Namespace, mode: str, out: Path) -> List[Dict[str, Any]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.ranks}", "-m", "bench.build_memory", "--worker", "--mode", mode,
           "--out", str(out), "--ranks", str(args.ranks), "--tp", str(args.tp), "--zero",
           str(args.zero), "--dim", str(args.dim), "--layers", str(args.layers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{mode} build failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return [json.loads(Path(out, f"{mode}_{r}.json").read_text()) for r in range(args.ranks)]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.build_memory",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--ranks", type=int, default=4, help="CPU ranks (default 4)")
    ap.add_argument("--tp", type=int, default=2, help="tensor-parallel degree (default 2)")
    ap.add_argument("--zero", type=int, default=3, help="ZeRO stage (default 3)")
    ap.add_argument("--dim", type=int, default=2048, help="global model width (default 2048)")
    ap.add_argument("--layers", type=int, default=5, help="global model layers (default 5)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["old", "new"], default="new", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    heads = max(1, args.dim // 128)  # as overrides() builds the model
    if args.tp < 1 or heads % args.tp or args.ranks % args.tp:
        ap.error(f"--tp {args.tp} must divide --ranks {args.ranks} and the {heads} head(s) that "
                 f"--dim {args.dim} gives (dim / 128)")
    if args.worker:
        worker(args)
        return 0
    size = model_bytes(args)
    with tempfile.TemporaryDirectory() as tmp:
        ranks = {mode: run_mode(args, mode, Path(tmp)) for mode in ("old", "new")}
    gb = 1e9
    worst = {m: max(r["extra"] for r in ranks[m]) for m in ranks}
    print(f"model: {size / gb:.3f} GB fp32; {args.ranks} ranks, TP={args.tp} x "
          f"DP={args.ranks // args.tp}, ZeRO-{args.zero}", file=sys.stderr)
    print("rank | old extra GB | new extra GB | new / old | new extra / model", file=sys.stderr)
    for old, new in zip(ranks["old"], ranks["new"]):
        print(f"{old['rank']:4d} | {old['extra'] / gb:12.3f} | {new['extra'] / gb:12.3f} | "
              f"{new['extra'] / old['extra']:9.3f} | {new['extra'] / size:.3f}", file=sys.stderr)
    result = {"model_bytes": size, "nproc": args.ranks, "tp": args.tp, "zero": args.zero,
              "ranks": ranks, "worst_extra": worst, "ratio_new_old": worst["new"] / worst["old"],
              "new_extra_over_model": worst["new"] / size,
              "target_met": worst["new"] <= 0.5 * size}
    print(f"worst rank: new / old = {result['ratio_new_old']:.3f}; new extra = "
          f"{result['new_extra_over_model']:.3f} x model (target <= 0.5: "
          f"{'met' if result['target_met'] else 'NOT met'})", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
