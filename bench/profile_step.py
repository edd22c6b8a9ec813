"""Profile one MEGABYTE training step on CPU: the top ops by self CPU time.

``python bench/profile_step.py [--sizes tiny,small] [--seq-len 4096] [--steps 3] [--top 20]``

For each size class (``bench/common.py``) it builds the model, takes two warm-up steps (forward,
backward, the trainer's AdamW), then profiles ``--steps`` steps with ``torch.profiler`` and prints the table
of the ``--top`` ops by self CPU time to stdout, with the mean step time measured outside the
profiler. ``--compile`` profiles the torch.compile'd model instead.
"""

from __future__ import annotations

import argparse
import time

from common import make_model, model_config, training_step

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def profile_size(size: str, seq_len: int, batch: int, steps: int, top: int, compiled: bool) -> None:
    """Print the profile table and the mean step time of one size class."""
    device = torch.device("cpu")
    cfg = model_config("megabyte", size, seq_len)
    model = make_model(cfg, device, torch.float32)
    ids = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    step = training_step(model, ids, "inductor" if compiled else None)  # the trainer's AdamW
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(f"## {size} MEGABYTE, T={seq_len}, batch {batch}, {'compiled' if compiled else 'eager'}: "
          f"{seconds:.3f} s per step (mean of {steps}, outside the profiler)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,small", help="comma-separated size classes")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="profiled (and timed) steps")
    ap.add_argument("--top", type=int, default=20, help="rows of the table")
    ap.add_argument("--compile", action="store_true", help="profile the compiled model")
    args = ap.parse_args()
    for size in args.sizes.split(","):
        profile_size(size, args.seq_len, args.batch, args.steps, args.top, args.compile)


if __name__ == "__main__":
    main()
