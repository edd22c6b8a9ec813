"""Profile one MEGABYTE training step on CPU: the top ops by self CPU time.

``python bench/profile_step.py [--sizes tiny,small] [--seq-len 4096] [--steps 3] [--top 20]``

For each size class (``bench/common.py``) it builds the model, takes two warm-up steps (forward,
backward, the trainer's AdamW), then profiles ``--steps`` steps with ``torch.profiler`` and prints the table
of the ``--top`` ops by self CPU time to stdout, with the mean step time measured outside the
profiler. ``--compile`` profiles the torch.compile'd model instead.

``--replay`` measures without the profiler, which on this project's CPU machine inflates
elementwise ops (``threshold_backward`` 11-14 ms per call under it, ~0.7 ms alone): it records
every aten op of one real step with its arguments (``TorchDispatchMode``), then times each op
group (by name; matmuls and attention also by shape) replayed by itself, ``--steps`` times, the
median. Ops that write into their inputs (the optimizer's) replay on copies. The rows add up to
less than the step: the rest is dispatch and autograd work between ops and the cold caches a
real step meets (``not in any op``).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any, Callable, Dict, List, Tuple

from common import make_model, model_config, timed, training_step

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

CPU = torch.device("cpu")
Call = Tuple[Any, tuple, dict]  # (aten op, args, kwargs)
# Ops whose cost depends on their shapes enough to be listed per shape.
BY_SHAPE = ("mm", "bmm", "addmm", "baddbmm", "attention")


class Recorder(TorchDispatchMode):
    """Every aten op run under it, with its arguments (kept alive for the replay)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[Call] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def op_key(func: Any, args: tuple) -> str:
    """``aten.add.Tensor``, or with the input shapes for matmuls and attention."""
    name = str(func)
    if any(k in name for k in BY_SHAPE):
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)][:3]
        name += " " + " ".join(str(list(x)) for x in shapes)
    return name


def _copied(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return type(value)(v.clone() for v in value)
    return value


def replay_times(step: Callable[[], None], repeats: int) -> Dict[str, Tuple[int, float]]:
    """op key -> (calls per step, seconds per step), each group replayed alone (median)."""
    recorder = Recorder()
    with recorder:
        step()
    groups: Dict[str, List[Call]] = defaultdict(list)
    for func, args, kwargs in recorder.calls:
        if str(func).startswith("profiler."):  # the optimizer's record_function markers
            continue
        if func._schema.is_mutable:  # writes into an input (optimizer state, grads): copies
            args, kwargs = tuple(_copied(a) for a in args), {k: _copied(v) for k, v in kwargs.items()}
        groups[op_key(func, args)].append((func, args, kwargs))
    times = {}
    for key, calls in groups.items():
        def run(calls: List[Call] = calls) -> None:
            for func, args, kwargs in calls:
                func(*args, **kwargs)
        times[key] = (len(calls), timed(run, CPU, 1, repeats, float("inf"))["seconds"])
    return times


def replay_size(size: str, seq_len: int, batch: int, steps: int, top: int) -> None:
    """Print the replayed per-op table of one size class (eager) against its measured step."""
    step = warm_step(size, seq_len, batch, False)
    step_s = timed(step, CPU, 0, steps, float("inf"))["seconds"]
    times = replay_times(step, steps)
    rows = sorted(times.items(), key=lambda kv: -kv[1][1])
    print(f"## {size} MEGABYTE, T={seq_len}, batch {batch}, eager: {step_s * 1e3:.1f} ms per step "
          f"(median of {steps}); each op group replayed alone")
    print("| op | calls | ms per step | share of the step |\n|---|---|---|---|")
    for key, (n, t) in rows[:top]:
        print(f"| {key} | {n} | {t * 1e3:.2f} | {t / step_s:.1%} |")
    total = sum(t for _, t in times.values())
    print(f"| all {len(times)} op groups | {sum(n for n, _ in times.values())} | {total * 1e3:.1f} | "
          f"{total / step_s:.1%} |")
    print(f"| not in any op | | {(step_s - total) * 1e3:.1f} | {(step_s - total) / step_s:.1%} |")


def warm_step(size: str, seq_len: int, batch: int, compiled: bool) -> Callable[[], None]:
    """The trainer's training step of one size class, after two warm-up steps."""
    cfg = model_config("megabyte", size, seq_len)
    model = make_model(cfg, CPU, torch.float32)
    ids = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    step = training_step(model, ids, "inductor" if compiled else None)  # the trainer's AdamW
    for _ in range(2):
        step()
    return step


def profile_size(size: str, seq_len: int, batch: int, steps: int, top: int, compiled: bool) -> None:
    """Print the profile table and the mean step time of one size class."""
    step = warm_step(size, seq_len, batch, compiled)
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
    ap.add_argument("--replay", action="store_true",
                    help="no profiler: time each op group of a recorded step replayed alone")
    args = ap.parse_args()
    if args.replay and args.compile:
        ap.error("--replay measures the eager step (compiled kernels are not aten ops)")
    for size in args.sizes.split(","):
        if args.replay:
            replay_size(size, args.seq_len, args.batch, args.steps, args.top)
        else:
            profile_size(size, args.seq_len, args.batch, args.steps, args.top, args.compile)


if __name__ == "__main__":
    main()
