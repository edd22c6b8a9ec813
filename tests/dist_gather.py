"""Inside a distributed job: ``torchrun ... tests/dist_gather.py OUT KEY=VAL ...``.

Trains ``configs/debug.yaml`` with the given overrides (the engine writes its final checkpoint),
then gathers the full weights *in the running job* (ZeRO-3 un-partitioned, TP shards joined
over the TP group: ``DeepSpeedTrainer.full_state``) and saves them from rank 0 to OUT, the
reference the offline consolidation must reproduce bit for bit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from pretrain.config import CONFIG_DIR, load_config  # noqa: E402
from pretrain.parallel.engine import DeepSpeedTrainer  # noqa: E402


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    trainer = DeepSpeedTrainer(load_config(CONFIG_DIR / "debug.yaml", overrides))
    trainer.train()
    weights = trainer.full_state()
    if trainer.is_main:
        torch.save(weights, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Skip interpreter teardown (see tests/dist_checks.py: leftover gloo threads can abort it).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
