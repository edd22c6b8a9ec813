"""Per-rank training FLOPs of one step at tensor_parallel=1 and 2, counted inside each rank.

    python bench/tp_flops.py                  # the default model: local stack ~70% of the FLOPs
    python bench/tp_flops.py --tp 1,2,4 model.local_model.layers=4

Each layout runs under torchrun (gloo, CPU): the real DeepSpeed engine (ZeRO-3) is built, one
step is taken to warm up, and the next ``train_step`` runs inside ``torch.utils.flop_counter.
FlopCounterMode`` on every rank (matmuls, attention, convolutions: what torch counts). The
default model has the paper's local/global split (the arXiv model spends 453 of 645 MFLOP per
byte, 70%, in the local model): at TP=1 the local model's share of the counted FLOPs is printed.
With the local model split over the TP group by patch sequences
(:func:`pretrain.parallel.tensor_parallel.split_local_model`) a TP=2 rank should do at most 0.55
of a TP=1 rank's work; with the local model replicated it would do about 0.65.

One JSON object goes to stdout: per layout the FLOPs of each rank, the most any rank did, and
``ratio`` = that most over the TP=1 figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Global: P=8, D=256 (D_G=32), 2 layers; local: D_L=128, 2 layers: the local stack does ~2/3 of
# the block FLOPs per byte, close to the paper's 70%.
MODEL = ["model.seq_len=256", "model.patch_size=8", "model.global_model.dim=256",
         "model.global_model.layers=2", "model.global_model.heads=4", "model.local_model.dim=128",
         "model.local_model.layers=2", "model.local_model.heads=4", "train.micro_batch_size=4",
         "parallel.zero_stage=3", "logging.tensorboard=false", "checkpoint.interval=0",
         "train.max_steps=4", "optim.warmup_steps=1", "data.val_bytes=2048"]


def rank_main(overrides: List[str]) -> None:
    """Inside a torchrun job: count one training step's FLOPs on this rank."""
    import torch.distributed as dist
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.config import CONFIG_DIR, load_config
    from pretrain.parallel.engine import DeepSpeedTrainer

    trainer = DeepSpeedTrainer(load_config(CONFIG_DIR / "debug.yaml", overrides))
    trainer.train_step()  # warm-up: lazy allocations, ZeRO-3 parameter fetch tracing
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    total = counter.get_total_flops()
    by_module = counter.get_flop_counts()
    # Module names carry the wrappers' prefixes (e.g. "DeepSpeedEngine.module.local_model").
    local_keys = [k for k in by_module if k.endswith(".local_model")]
    local = sum(by_module[min(local_keys, key=len)].values()) if local_keys else 0
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank(), "flops": total, "local_flops": local})
    if dist.get_rank() == 0:
        print("TP_FLOPS " + json.dumps(gathered), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def run_layout(tp: int, overrides: List[str], timeout: float) -> List[Dict[str, Any]]:
    from pretrain.runtime.processes import torchrun_command

    cmd = torchrun_command(tp, "bench.tp_flops", ["--rank-mode", *MODEL, *overrides,
                                                 f"parallel.tensor_parallel={tp}"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("TP_FLOPS "):
            return json.loads(line[len("TP_FLOPS "):])
    raise RuntimeError(f"tp={tp} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", default="1,2", help="TP sizes to count, comma-separated (default 1,2)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per layout")
    p.add_argument("--output", help="also write the JSON here")
    p.add_argument("--rank-mode", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_args()
    if args.rank_mode:
        rank_main(args.overrides)
        return
    sizes = [int(t) for t in args.tp.split(",")]
    layouts: Dict[str, Any] = {}
    for tp in sizes:
        ranks = run_layout(tp, args.overrides, args.timeout)
        layouts[f"tp{tp}"] = {"ranks": ranks, "max_flops": max(r["flops"] for r in ranks)}
    base = layouts[f"tp{sizes[0]}"]
    for name, lay in layouts.items():
        lay["ratio"] = round(lay["max_flops"] / base["max_flops"], 4)
        print(f"{name}: {lay['max_flops'] / 1e9:.3f} GFLOP per rank per step, "
              f"{lay['ratio']:.3f} of tp{sizes[0]}", file=sys.stderr)
    first = base["ranks"][0]
    share = first["local_flops"] / first["flops"]
    result = {"model": MODEL + args.overrides, "layouts": layouts, "local_share": round(share, 4)}
    if sizes[0] == 1:  # what a TP rank would do with the local model replicated (the old way)
        result["replicated_estimate"] = {f"tp{t}": round(share + (1 - share) / t, 4) for t in sizes}
        print(f"local model share at tp1 {share:.3f}; with it replicated tp ranks would do "
              f"{result['replicated_estimate']}", file=sys.stderr)
    print(json.dumps(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
