"""Compiled vs eager training step, measured side by side: the two alternate step by step.

``python bench/bench_compile.py [--device cpu|cuda] [--sizes tiny,small] [--archs megabyte,transformer]
[--seq-len 4096] [--batch 1] [--rounds 6] [--backend inductor]``

For each (architecture, size) it builds two copies of the same model (same initial weights),
compiles one (``train.compile``'s path: :func:`pretrain.runtime.compile.compile_model`), takes one
untimed step with each (the compiled one compiles there: ``compile_seconds``), then alternates
one eager step and one compiled step ``--rounds`` times and reports each one's median. Alternating
is the point: on a shared machine whose speed drifts by tens of percent over minutes, two runs
measured one after the other compare the machine, not the code. Each step is the trainer's
(forward, loss, backward, fused AdamW). One JSON object on stdout; ``speedup`` = eager seconds /
compiled seconds (above 1: compiling helps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Dict

from common import emit, machine, make_model, model_config, sync, table, training_step

import torch  # noqa: E402


def measure(arch: str, size: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Median eager and compiled step seconds of one model, alternating step by step."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cfg = model_config(arch, size, args.seq_len)
    ids = torch.randint(0, 256, (args.batch, args.seq_len), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    steps = {"eager": training_step(make_model(cfg, device, dtype), ids),
             "compiled": training_step(make_model(cfg, device, dtype), ids, args.backend)}
    first: Dict[str, float] = {}
    for name, step in steps.items():  # warm-up; the compiled model compiles here
        t0 = time.perf_counter()
        step()
        sync(device)
        first[name] = time.perf_counter() - t0
    times: Dict[str, list] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    eager, compiled = (statistics.median(times[n]) for n in ("eager", "compiled"))
    return {"arch": arch, "size": size, "seq_len": args.seq_len, "batch": args.batch,
            "eager_seconds": eager, "compiled_seconds": compiled, "speedup": eager / compiled,
            "compile_seconds": first["compiled"] - first["eager"], "rounds": args.rounds,
            "eager_times": times["eager"], "compiled_times": times["compiled"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp32 or bf16 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--sizes", default="tiny,small", help="comma-separated size classes")
    ap.add_argument("--archs", default="megabyte,transformer", help="comma-separated")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6, help="eager/compiled step pairs timed")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend")
    ap.add_argument("--fast", action="store_true", help="tiny MEGABYTE, T=256, aot_eager, 2 rounds")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.fast:
        args.sizes, args.archs, args.seq_len, args.rounds = "tiny", "megabyte", 256, 2
        args.backend = "aot_eager"  # no C compiler needed
    results = [measure(arch, size, args) for size in args.sizes.split(",")
               for arch in args.archs.split(",")]
    rows = [[r["arch"], r["size"], r["seq_len"], f"{r['eager_seconds']:.3f}",
             f"{r['compiled_seconds']:.3f}", f"{r['speedup']:.2f}", f"{r['compile_seconds']:.1f}"]
            for r in results]
    print(table(rows, ["model", "size", "T", "eager s/step", "compiled s/step",
                       "speedup (eager/compiled)", "compile s"]), file=sys.stderr)
    emit({"benchmark": "compile", "device": args.device, "dtype": args.dtype,
          "backend": args.backend, "machine": machine(), "results": results}, args.output)


if __name__ == "__main__":
    main()
