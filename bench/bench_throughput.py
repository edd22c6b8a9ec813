"""Training throughput vs context length: MEGABYTE vs the byte Transformer at equal parameters.

``python bench/bench_throughput.py [--device cpu|cuda] [--size small] [--contexts 1024,4096,...]
[--compile] [--warmup 1] [--point-timeout S]``

Every (model, context) point runs in its own subprocess (so a run out of memory or past its time
budget is reported as such, and the peak memory is that point's own), measuring the median time
of a full training step (forward, backward, AdamW) on ``--batch-bytes`` bytes. For each context it
prints bytes/s of both models, their ratio, and the ratio their FLOPs per byte predict; the
*efficiency* (measured ratio / predicted ratio) is how close MEGABYTE's implementation comes to
its FLOP advantage under the paper's count, which charges full (non-causal) attention;
*efficiency_causal* divides by the ratio of the work actually done instead (causal attention at
its real key counts, ``pretrain.model.flops.executed_flops_per_byte``), which is what the kernels
run. A point whose step outlasts ``--point-timeout`` is reported as a timeout; at long contexts
on CPU use ``--warmup 0 --repeats 1`` (one timed step). ``--compile`` compiles both models first
(compilation happens in the warm-up step, or in the only step with ``--warmup 0``: then the
reported time includes it, and ``first_step_seconds`` says so). ``--interleave`` runs both
models of a context in one process and alternates their steps (MEGABYTE, Transformer, MEGABYTE,
..., MEGABYTE last, so MEGABYTE's steps bracket the Transformer's): on a shared machine whose speed
drifts by tens of percent over minutes, points measured one after the other compare the machine
states, not the models (peak memory is then the pair's). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from common import (ROOT, block_params, emit, machine, make_model, model_config, OPTIMIZER,
                    params, peak_memory_gb, sync, table, timed, training_step)

import torch  # noqa: E402  (after common, which sets up the import path)

from pretrain.model.flops import executed_flops_per_byte, flops_per_byte  # noqa: E402

DEFAULT_CONTEXTS = {"cpu": [1024, 4096, 16384, 65536], "cuda": [1024, 4096, 16384, 65536, 262144,
                                                                 1048576]}


def point_record(cfg: Any, model: torch.nn.Module, batch: int, seconds: float, repeats: int,
                 first_seconds: Optional[float], args: argparse.Namespace) -> Dict[str, Any]:
    """The JSON of one measured (model, context) point: time, bytes/s and both FLOP counts."""
    return {"arch": cfg.arch, "seq_len": cfg.seq_len, "batch": batch, "params": params(model),
            "block_params": block_params(model),
            "seconds_per_step": seconds, "repeats": repeats,
            "first_step_seconds": first_seconds, "warmup": args.warmup,
            "bytes_per_s": batch * cfg.seq_len / seconds,
            "train_flops_per_byte": flops_per_byte(cfg, 256, training=True),
            "executed_train_flops_per_byte": executed_flops_per_byte(cfg, 256, training=True),
            "peak_memory_gb": peak_memory_gb(torch.device(args.device)), "status": "ok"}


def worker(arch: str, seq_len: int, args: argparse.Namespace) -> Dict[str, Any]:
    """One (model, context) point, in this process: the median training step."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cfg = model_config(arch, args.size, seq_len)
    model = make_model(cfg, device, dtype)
    batch = max(1, args.batch_bytes // seq_len)
    ids = torch.randint(0, 256, (batch, seq_len), device=device)
    step = training_step(model, ids, args.backend if args.compile else None)
    t = timed(step, device, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget)
    return point_record(cfg, model, batch, t["seconds"], t["repeats"], t["first_seconds"], args)


def pair_worker(seq_len: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Both models of one context in this process, their timed steps alternated (``--interleave``)."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    batch = max(1, args.batch_bytes // seq_len)
    ids = torch.randint(0, 256, (batch, seq_len), device=device)
    cfgs = {a: model_config(a, args.size, seq_len) for a in ("megabyte", "transformer")}
    models = {a: make_model(c, device, dtype) for a, c in cfgs.items()}
    steps = {a: training_step(m, ids, args.backend if args.compile else None)
             for a, m in models.items()}

    def once(arch: str) -> float:
        t0 = time.perf_counter()
        steps[arch]()
        sync(device)
        return time.perf_counter() - t0

    first = {a: [once(a) for _ in range(args.warmup)][:1] or [None] for a in steps}
    times: Dict[str, List[float]] = {"megabyte": [], "transformer": []}
    for arch in ["megabyte", "transformer"] * max(args.repeats, 1) + ["megabyte"]:
        times[arch].append(once(arch))
    out = {}
    for arch, t in times.items():  # upper median, as common.timed takes it
        out[arch] = {**point_record(cfgs[arch], models[arch], batch, sorted(t)[len(t) // 2],
                                    len(t), first[arch][0], args),
                     "step_seconds": t, "interleaved": True}
    return out


def run_point(args: argparse.Namespace, arch: str, seq_len: int) -> Dict[str, Any]:
    """One (model, context) point in a subprocess (``arch`` = ``pair``: both, interleaved)."""
    cmd = [sys.executable, __file__, "--worker", arch, str(seq_len), "--size", args.size,
           "--device", args.device, "--dtype", args.dtype, "--batch-bytes", str(args.batch_bytes),
           "--repeats", str(args.repeats), "--budget", str(args.budget), "--warmup",
           str(args.warmup)] + (["--compile", "--backend", args.backend] if args.compile else [])
    limit = args.point_timeout or (args.budget * 3 + 60) * (2 if arch == "pair" else 1)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=limit)
    except subprocess.TimeoutExpired:
        failed = {"status": "timeout",
                  "note": f"the point did not finish within {limit:.0f}s (--point-timeout)"}
    else:
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        oom = "out of memory" in proc.stderr.lower() or proc.returncode in (-9, 137)
        failed = {"status": "oom" if oom else "error",
                  "note": (proc.stderr.strip().splitlines() or ["?"])[-1][:200],
                  "seconds": time.perf_counter() - t0}
    if arch == "pair":
        return {a: {"arch": a, "seq_len": seq_len, **failed} for a in ("megabyte", "transformer")}
    return {"arch": arch, "seq_len": seq_len, **failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp32 or bf16 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--size", default="small", help="tiny, small or large")
    ap.add_argument("--contexts", default=None, help="comma-separated context lengths in bytes")
    ap.add_argument("--batch-bytes", type=int, default=None,
                    help="bytes per step (default: the largest context)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per point")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    ap.add_argument("--point-timeout", type=float, default=0.0,
                    help="seconds a point may take (default: 3 x budget + 60)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models first")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend with --compile")
    ap.add_argument("--megabyte-only", action="store_true",
                    help="measure MEGABYTE alone (contexts where the Transformer cannot keep up)")
    ap.add_argument("--interleave", action="store_true",
                    help="both models of a context in one process, steps alternated")
    ap.add_argument("--fast", action="store_true", help="tiny models, contexts 128 and 512")
    ap.add_argument("--output", default=None, help="also write the JSON here")
    ap.add_argument("--worker", nargs=2, metavar=("ARCH", "SEQ_LEN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.fast:
        args.size, args.repeats, args.budget = "tiny", 2, 10.0
        args.contexts = args.contexts or "128,512"
    contexts: List[int] = ([int(c) for c in args.contexts.split(",")] if args.contexts
                           else DEFAULT_CONTEXTS[args.device])
    args.batch_bytes = args.batch_bytes or max(contexts)
    if args.worker:
        arch, seq_len = args.worker[0], int(args.worker[1])
        result = pair_worker(seq_len, args) if arch == "pair" else worker(arch, seq_len, args)
        print(json.dumps(result))
        return
    points = []
    for seq_len in contexts:
        if args.interleave:
            pair = run_point(args, "pair", seq_len)
            mb, tf = pair["megabyte"], pair["transformer"]
        else:
            mb = run_point(args, "megabyte", seq_len)
            tf = (run_point(args, "transformer", seq_len) if not args.megabyte_only
                  else {"arch": "transformer", "seq_len": seq_len, "status": "not run"})
        point: Dict[str, Any] = {"seq_len": seq_len, "megabyte": mb, "transformer": tf}
        if mb["status"] == "ok" and tf["status"] == "ok":
            point["measured_ratio"] = mb["bytes_per_s"] / tf["bytes_per_s"]
            point["flops_ratio"] = tf["train_flops_per_byte"] / mb["train_flops_per_byte"]
            point["efficiency"] = point["measured_ratio"] / point["flops_ratio"]
            point["executed_flops_ratio"] = (tf["executed_train_flops_per_byte"]
                                             / mb["executed_train_flops_per_byte"])
            point["efficiency_causal"] = point["measured_ratio"] / point["executed_flops_ratio"]
        points.append(point)
        print(f"T={seq_len}: megabyte {mb.get('bytes_per_s', mb['status'])}, transformer "
              f"{tf.get('bytes_per_s', tf['status'])}", file=sys.stderr)
    rows = []
    for p in points:
        def cell(r: Dict[str, Any]) -> str:
            return f"{r['bytes_per_s']:.0f}" if r["status"] == "ok" else r["status"]

        rows.append([p["seq_len"], cell(p["megabyte"]), cell(p["transformer"]),
                     f"{p['measured_ratio']:.2f}" if "measured_ratio" in p else "-",
                     f"{p['flops_ratio']:.2f}" if "flops_ratio" in p else "-",
                     f"{p['efficiency']:.2f}" if "efficiency" in p else "-",
                     f"{p['executed_flops_ratio']:.2f}" if "efficiency" in p else "-",
                     f"{p['efficiency_causal']:.2f}" if "efficiency" in p else "-"])
    print(table(rows, ["T (bytes)", "MEGABYTE B/s", "Transformer B/s", "measured ratio",
                       "FLOPs ratio (paper)", "efficiency", "FLOPs ratio (work done)",
                       "efficiency_causal"]), file=sys.stderr)
    emit({"benchmark": "throughput", "device": args.device, "dtype": args.dtype, "size": args.size,
          "batch_bytes": args.batch_bytes, "compile": args.backend if args.compile else None,
          "optimizer": OPTIMIZER, "warmup": args.warmup,
          "interleave": args.interleave,
          "repeats": args.repeats, "machine": machine(), "points": points}, args.output)


if __name__ == "__main__":
    main()
