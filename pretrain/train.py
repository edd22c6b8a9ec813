"""Train MEGABYTE or a baseline: ``python -m pretrain.train [--config FILE] [key=value ...]``.

Without arguments it runs the quick start: a tiny MEGABYTE on Python's standard library source,
on the CPU, for a few minutes, then prints validation bits per byte. Logs and progress go to
stderr; the final result is one JSON object on stdout (also saved as ``<run_dir>/results.json``).

Started by torchrun (or the deepspeed launcher) it runs the DeepSpeed engine: ZeRO stage
``parallel.zero_stage`` with ``parallel.tensor_parallel``-way TP of the global model, gloo on
CPU and nccl on GPU. It resumes from ``<run_dir>/checkpoints/latest`` automatically.

Exit codes: 0 done; 2 bad config or input (one ``error:`` line naming the key or file: found
before the first step, e.g. a missing corpus, an unreadable tokenizer, checkpoint or
``train.init_from``, weights of another model shape); 3 aborted after too many non-finite steps in a row
(the last good checkpoint is kept; ``<run_dir>/stop_reason`` says ``diverged``); 75 stopped by
SIGTERM/SIGUSR1 after saving a checkpoint (requeue the job and it resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from pretrain.config import ConfigError, add_config_args, derive, load_config


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.train", description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  python -m pretrain.train                              # quick start\n"
               "  python -m pretrain.train --config configs/debug.yaml train.max_steps=50\n"
               "  python -m pretrain.train model.cross_patch_window=4 run_dir=runs/xpatch\n"
               "  torchrun --nproc_per_node 4 -m pretrain.train --config configs/debug.yaml \\\n"
               "      parallel.tensor_parallel=2 parallel.zero_stage=3   # TP=2 x DP=2, ZeRO-3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    # The deepspeed launcher passes --local_rank; the LOCAL_RANK environment variable is used.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        derived = derive(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from pretrain.parallel.grid import launched_distributed

    engine = cfg.parallel.engine
    if engine == "auto":
        engine = "deepspeed" if launched_distributed() else "simple"
    if engine == "simple" and cfg.parallel.tensor_parallel != 1:
        print("error: parallel.tensor_parallel > 1 needs parallel.engine=deepspeed (start the "
              "processes with torchrun or launch.local)", file=sys.stderr)
        return 2
    from pretrain.checkpoints.store import CheckpointError
    from pretrain.runtime.compile import CompileUnavailable
    from pretrain.runtime.device import DeviceUnavailable
    from pretrain.runtime.processes import EXIT_ABORT, EXIT_REQUEUE
    from pretrain.training.inputs import InputError
    from pretrain.training.trainer import ResumeError, Trainer, TrainingAborted

    try:
        if engine == "deepspeed":
            from pretrain.parallel.engine import run_distributed

            result = run_distributed(cfg)
        else:
            result = Trainer(cfg, derived).train()
    except TrainingAborted as err:
        print(f"error: training aborted: {err}", file=sys.stderr)
        return EXIT_ABORT
    except (ConfigError, ResumeError, InputError, CheckpointError, DeviceUnavailable,
            CompileUnavailable) as err:  # set-up errors only: a training step raises none of these
        print(f"error: {err}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(json.dumps(result))
        print(f"done: {result['steps']} steps in {result['seconds'] / 60:.1f} min; validation "
              f"{result['val_bpb']:.3f} bits per byte on {result['val_bytes']} held-out bytes "
              f"(uniform guessing: 8.0); outputs in {result['run_dir']}", file=sys.stderr)
    if result.get("stop_reason") == "signal":
        return EXIT_REQUEUE
    return 0


if __name__ == "__main__":
    sys.exit(main())
