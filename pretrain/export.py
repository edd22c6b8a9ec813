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
``pretrain.inference.loading.load_for_inference`` or as ``train.init_from`` of a run at any layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from pretrain.config import ConfigError
from pretrain.parallel.consolidate import export_checkpoint


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
