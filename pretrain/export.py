"""Export any checkpoint as one full-precision safetensors file, offline, in one process.

``python -m pretrain.export --checkpoint RUN_DIR [--output FILE]``

Reads the files of a single-process checkpoint, or of a DeepSpeed checkpoint of any TP x DP
layout and ZeRO stage 0-3, on any machine: no process group, no launcher, not the layout it was
trained at, no training data (``pretrain.checkpoints.consolidate``: ZeRO partitions joined from
the fp32 master copies, TP shards concatenated along their partition dimension). Peak memory is
about one fp32 copy of the model. DeepSpeed's own exporters are not used: on ZeRO-3 + manual TP
they refuse or write rank 0's shards only.

The file holds the plain single-process parameter names (``pretrain.model``), the resolved
config in its metadata (and as ``FILE.yaml`` beside it), and loads with ``pretrain.evaluate`` /
``pretrain.generate`` or as ``train.init_from`` of a run at any layout. (Those also take the run
directory itself: a DeepSpeed checkpoint is consolidated on first use into
``consolidated.safetensors`` beside it and reused while the checkpoint is unchanged.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from pretrain.checkpoints.consolidate import export_checkpoint
from pretrain.checkpoints.exports import check_export_path
from pretrain.config import ConfigError


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
        check_export_path(output)  # before the checkpoint is read
        summary = export_checkpoint(args.checkpoint, output)
    except (ConfigError, OSError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
