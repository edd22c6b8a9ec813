"""CPU training step with glibc's default allocator settings vs freed memory kept for reuse.

``python bench/bench_host_memory.py [--points megabyte:1024,megabyte:65536,transformer:1024]
[--size tiny] [--batch-bytes 65536] [--steps 3] [--rounds 3] [--fast] [--output FILE]``

``train.host_memory_reuse`` (on by default) raises glibc's mmap and trim thresholds so a step's
large activations reuse the previous step's freed memory instead of fresh, page-faulting mmaps
(:mod:`pretrain.runtime.host_memory`). The setting is process-wide and one-way, so each setting
runs in its own process; the two processes of a round run back to back, their order alternating
between rounds, and the speed-up is the median over rounds of the ratio within a round (this
machine's speed drifts by tens of percent over minutes, which a ratio of neighbours cancels).
Each process reports the median step time of ``--steps`` steps after one warm-up and its peak
resident set (the cost of the setting). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Dict, List, Tuple

from common import (HOST_MEMORY_REUSE, emit, machine, make_model, model_config, peak_memory_gb,
                    table, timed, training_step)

import torch  # noqa: E402


def worker(arch: str, size: str, seq_len: int, batch: int, steps: int) -> None:
    """One setting's process: print the step time and peak resident set as JSON."""
    device = torch.device("cpu")
    model = make_model(model_config(arch, size, seq_len), device, torch.float32)
    ids = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    t = timed(training_step(model, ids), device, 1, steps, float("inf"))
    print(json.dumps({"seconds": t["seconds"], "peak_rss_gb": peak_memory_gb(device),
                      "reuse": HOST_MEMORY_REUSE}))


def run_setting(point: Tuple[str, int, int], size: str, steps: int, reuse: bool) -> Dict[str, Any]:
    arch, seq_len, batch = point
    env = dict(os.environ, BENCH_HOST_MEMORY_REUSE="1" if reuse else "0")
    out = subprocess.run([sys.executable, __file__, "--worker", arch, size, str(seq_len), str(batch),
                          str(steps)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_host_memory: worker {arch} T={seq_len} failed:\n{out.stderr[-2000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if got["reuse"] is not reuse:  # e.g. not glibc: there is nothing to compare
        raise SystemExit(f"bench_host_memory: the setting could not be {'applied' if reuse else 'left off'}")
    return got


def measure_point(point: Tuple[str, int, int], size: str, steps: int, rounds: int) -> Dict[str, Any]:
    """Alternating rounds of both settings at one point; ratios within rounds."""
    runs: Dict[bool, List[Dict[str, Any]]] = {False: [], True: []}
    ratios = []
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        got = {reuse: run_setting(point, size, steps, reuse) for reuse in order}
        for reuse in order:
            runs[reuse].append(got[reuse])
        ratios.append(got[False]["seconds"] / got[True]["seconds"])
    arch, seq_len, batch = point
    return {"arch": arch, "seq_len": seq_len, "batch": batch,
            "seconds_default": [x["seconds"] for x in runs[False]],
            "seconds_reuse": [x["seconds"] for x in runs[True]],
            "speedup_per_round": ratios, "speedup": statistics.median(ratios),
            "peak_rss_gb_default": max(x["peak_rss_gb"] for x in runs[False]),
            "peak_rss_gb_reuse": max(x["peak_rss_gb"] for x in runs[True])}


def parse_points(text: str, batch_bytes: int) -> List[Tuple[str, int, int]]:
    points = []
    for item in text.split(","):
        arch, _, t = item.partition(":")
        if arch not in ("megabyte", "transformer") or not t.isdigit():
            raise SystemExit(f"bench_host_memory: bad point {item!r} (want ARCH:SEQ_LEN)")
        points.append((arch, int(t), max(1, batch_bytes // int(t))))
    return points


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        arch, size, seq_len, batch, steps = sys.argv[2:7]
        return worker(arch, size, int(seq_len), int(batch), int(steps))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", default="megabyte:1024,megabyte:16384,megabyte:65536,transformer:1024",
                    help="comma-separated ARCH:SEQ_LEN")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch-bytes", type=int, default=65536, help="bytes per step (batch = this / T)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=3, help="process pairs per point")
    ap.add_argument("--fast", action="store_true", help="MEGABYTE at T=256, 8 KiB steps, 1 step, 2 rounds")
    ap.add_argument("--output", default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.fast:
        args.points, args.batch_bytes, args.steps, args.rounds = "megabyte:256", 8192, 1, 2
    results = []
    for point in parse_points(args.points, args.batch_bytes):
        results.append(measure_point(point, args.size, args.steps, args.rounds))
        r = results[-1]
        print(f"{r['arch']} T={r['seq_len']}: speed-up {r['speedup']:.3f} "
              f"(rounds {', '.join(f'{x:.3f}' for x in r['speedup_per_round'])})", file=sys.stderr)
    rows = [(r["arch"], r["seq_len"], r["batch"], f"{statistics.median(r['seconds_default']):.3f}",
             f"{statistics.median(r['seconds_reuse']):.3f}", f"{r['speedup']:.3f}",
             f"{r['peak_rss_gb_default']:.2f}", f"{r['peak_rss_gb_reuse']:.2f}") for r in results]
    print(table(rows, ["model", "T", "batch", "s/step default", "s/step reuse", "speed-up",
                       "peak RSS GB default", "peak RSS GB reuse"]), file=sys.stderr)
    emit({"benchmark": "host_memory", "size": args.size, "steps": args.steps, "rounds": args.rounds,
          "machine": machine(), "points": results}, args.output)


if __name__ == "__main__":
    main()
