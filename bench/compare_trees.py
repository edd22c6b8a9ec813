"""Before/after: MEGABYTE's training step in two source trees, alternated in one run, one MFU peak.

``python bench/compare_trees.py BEFORE_TREE AFTER_TREE [--sizes tiny,small] [--seq-len 4096]``

e.g. ``git worktree add /tmp/before <commit>`` then ``python bench/compare_trees.py /tmp/before .``.
Each (tree, size) step is timed in a fresh subprocess that imports *that* tree's model and
optimizer (``pretrain.model.build_model``, ``pretrain.training.optim.build_optimizer``, the same
seed, batch 1, one warm-up step, the median of ``--repeats``); the trees alternate (before, after,
before, after: ``--rounds`` pairs) so that a machine whose speed drifts does not favour either, and
each tree's best round is kept. Each worker sets up host memory as its tree's trainer does on CPU
(``pretrain.runtime.host_memory`` where the tree has it). MFU divides the work actually done (this tree's
``executed_flops_per_byte``) by one peak: the larger of this run's matmul probe
(:func:`pretrain.runtime.perf.shared_peak`) and the best FLOP/s measured. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parent.parent


def step_seconds(tree: str, stacks: str, seq_len: int, repeats: int) -> Dict[str, Any]:
    """In this process, with ``tree`` first on the import path: the median training step of the
    MEGABYTE whose (dim, layers, heads) global and local stacks ``stacks`` gives as JSON."""
    sys.path.insert(0, tree)
    import importlib.util

    import torch
    import pretrain

    assert Path(pretrain.__file__).resolve().is_relative_to(Path(tree).resolve()), pretrain.__file__
    from pretrain.config import ModelConfig, OptimConfig, StackConfig
    from pretrain.model import build_model
    from pretrain.model.losses import lm_loss
    from pretrain.training.optim import build_optimizer

    if importlib.util.find_spec("pretrain.runtime.host_memory"):  # as this tree's trainer does
        importlib.import_module("pretrain.runtime.host_memory").reuse_freed_host_memory()
    g, loc = json.loads(stacks)
    cfg = ModelConfig(arch="megabyte", seq_len=seq_len, patch_size=8, dropout=0.0,
                      global_model=StackConfig(*g), local_model=StackConfig(*loc))
    torch.manual_seed(0)
    model = build_model(cfg, 259, 256, 257)
    opt = build_optimizer(model, OptimConfig(lr=1e-4))
    ids = torch.randint(0, 256, (1, seq_len), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        lm_loss(model(ids), ids).backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times),
            "optimizer": {k: opt.defaults.get(k) for k in ("fused", "foreach")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path, nargs="?", help="source tree of the 'before' code")
    ap.add_argument("after", type=Path, nargs="?", help="source tree of the 'after' code")
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per subprocess")
    ap.add_argument("--rounds", type=int, default=2, help="before/after pairs per size")
    ap.add_argument("--fast", action="store_true", help="tiny, T=256, 2 repeats, 1 round")
    ap.add_argument("--output", default=None)
    ap.add_argument("--worker", nargs=2, metavar=("TREE", "STACKS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fast:
        args.sizes, args.seq_len, args.repeats, args.rounds = "tiny", 256, 2, 1
    if args.worker:
        print(json.dumps(step_seconds(args.worker[0], args.worker[1], args.seq_len, args.repeats)))
        return
    if args.before is None or args.after is None:
        ap.error("give two source trees: BEFORE_TREE AFTER_TREE")
    # Only here, not at the top: a worker must import nothing of this tree before its own.
    from common import SIZES, emit, machine, model_config, table

    import torch

    from pretrain.model.flops import executed_flops_per_byte
    from pretrain.runtime.perf import shared_peak

    probe = shared_peak(torch.device("cpu"), torch.float32)
    trees = {"before": str(args.before.resolve()), "after": str(args.after.resolve())}
    sizes: Dict[str, Any] = {}
    for size in args.sizes.split(","):
        if size not in SIZES:
            ap.error(f"unknown size {size!r} (bench/common.py SIZES: {', '.join(SIZES)})")
        cfg = model_config("megabyte", size, args.seq_len)
        stacks = json.dumps([[s.dim, s.layers, s.heads] for s in (cfg.global_model, cfg.local_model)])
        work = executed_flops_per_byte(cfg, 256, training=True) * args.seq_len
        runs: Dict[str, list] = {"before": [], "after": []}
        optimizer = {}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                proc = subprocess.run([sys.executable, __file__, "--worker", tree, stacks,
                                       "--seq-len", str(args.seq_len), "--repeats",
                                       str(args.repeats)], cwd=ROOT, capture_output=True,
                                      text=True)
                if proc.returncode:
                    sys.exit(f"error: the {name} tree ({tree}) failed: "
                             + (proc.stderr.strip().splitlines() or ["?"])[-1])
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[name].append(r["seconds"])
                optimizer[name] = r["optimizer"]
        best = {k: min(v) for k, v in runs.items()}
        sizes[size] = {"seconds": runs, "best_seconds": best, "optimizer": optimizer,
                       "speedup": best["before"] / best["after"],
                       "achieved_flops": {k: work / v for k, v in best.items()}}
    peak = max([probe] + [f for s in sizes.values() for f in s["achieved_flops"].values()])
    for s in sizes.values():
        s["mfu"] = {k: f / peak for k, f in s["achieved_flops"].items()}
    rows = [[size, f"{s['best_seconds']['before']:.3f}", f"{s['best_seconds']['after']:.3f}",
             f"{s['speedup']:.3f}", f"{s['mfu']['before']:.1%}", f"{s['mfu']['after']:.1%}"]
            for size, s in sizes.items()]
    print(f"peak {peak / 1e9:.1f} GFLOP/s (probe {probe / 1e9:.1f})", file=sys.stderr)
    print(table(rows, ["size", "before s/step", "after s/step", "speed-up", "MFU before",
                       "MFU after"]), file=sys.stderr)
    emit({"benchmark": "compare_trees", "trees": trees, "seq_len": args.seq_len,
          "probe_flops": probe, "peak_flops": peak, "machine": machine(), "sizes": sizes},
         args.output)


if __name__ == "__main__":
    main()
