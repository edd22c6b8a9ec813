"""Parity and speed of the distributed engine's layouts, side by side in one run.

``python bench/bench_engine.py [--steps 6] [--config configs/debug.yaml] [--fast]``

Runs the single-process reference loop, then ZeRO-3 at TP=1 x DP=1, TP=2 x DP=1, TP=1 x DP=2
and TP=2 x DP=2 (CPU, gloo, torchrun) on the same global batch, and prints per layout the largest
relative difference from the reference in loss and in gradient norm and the median seconds per
step. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pretrain.runtime.processes import torchrun_command
LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (tensor parallel, data parallel)


def run(cmd, env):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/debug.yaml")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--global-batch", type=int, default=8, help="sequences per update")
    ap.add_argument("--fast", action="store_true", help="3 steps, layouts TP2xDP1 only")
    args = ap.parse_args()
    steps = 3 if args.fast else args.steps
    layouts = [(2, 1)] if args.fast else LAYOUTS
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    common = [f"train.max_steps={steps}", "logging.log_interval=1", "train.eval_interval=0",
              "checkpoint.interval=0", "logging.tensorboard=false",
              "parallel.zero3_persistence_threshold=0"]
    out = {"config": args.config, "steps": steps, "layouts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ref_dir = Path(tmp) / "ref"
        run([sys.executable, "-m", "pretrain.train", "--config", args.config, f"run_dir={ref_dir}",
             f"train.micro_batch_size={args.global_batch}", "parallel.engine=simple", *common], env)
        ref = json.loads((ref_dir / "history.json").read_text())
        out["reference_seconds_per_step"] = statistics.median(h["seconds_per_step"] for h in ref[1:])
        for tp, dp in layouts:
            run_dir = Path(tmp) / f"tp{tp}dp{dp}"
            run(torchrun_command(tp * dp, "pretrain.train", [
                "--config", args.config, f"run_dir={run_dir}", f"parallel.tensor_parallel={tp}",
                "parallel.zero_stage=3", f"train.micro_batch_size={args.global_batch // dp}",
                *common]), env)
            hist = json.loads((run_dir / "history.json").read_text())
            loss = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(ref, hist))
            norm = max(abs(a["grad_norm"] - b["grad_norm"]) / a["grad_norm"] for a, b in zip(ref, hist))
            out["layouts"][f"tp{tp}xdp{dp}"] = {
                "processes": tp * dp, "max_rel_loss_diff": loss, "max_rel_grad_norm_diff": norm,
                "seconds_per_step": statistics.median(h["seconds_per_step"] for h in hist[1:])}
            print(f"TP={tp} x DP={dp}: loss diff {loss:.2e}, grad-norm diff {norm:.2e}, "
                  f"{out['layouts'][f'tp{tp}xdp{dp}']['seconds_per_step']:.3f} s/step",
                  file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
