"""Train MEGABYTE or a baseline: ``python -m pretrain.train [--config FILE] [key=value ...]``.

Without arguments it runs the quick start: a tiny MEGABYTE on Python's standard library source,
on the CPU, for a few minutes, then prints validation bits per byte. Logs and progress go to
stderr; the final result is one JSON object on stdout (also saved as ``<run_dir>/results.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from pretrain.config import ConfigError, add_config_args, derive, load_config


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.train", description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  python -m pretrain.train                              # quick start\n"
               "  python -m pretrain.train --config configs/debug.yaml train.max_steps=50\n"
               "  python -m pretrain.train model.cross_patch_window=4 run_dir=runs/xpatch",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        derived = derive(cfg, world_size=1)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.parallel.tensor_parallel != 1:
        print("error: parallel.tensor_parallel > 1 needs the distributed engine (several "
              "processes); this single-process trainer supports tensor_parallel=1",
              file=sys.stderr)
        return 2
    from pretrain.trainer import Trainer

    result = Trainer(cfg, derived).train()
    print(json.dumps(result))
    print(f"done: {result['steps']} steps in {result['seconds'] / 60:.1f} min; validation "
          f"{result['val_bpb']:.3f} bits per byte on {result['val_bytes']} held-out bytes "
          f"(uniform guessing: 8.0); outputs in {result['run_dir']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
