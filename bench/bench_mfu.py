"""Model FLOPs utilization of MEGABYTE's training step, overall and per level.

``python bench/bench_mfu.py [--device cpu|cuda] [--sizes tiny,small] [--seq-len 4096] [--compile]``

MFU = (training FLOPs per byte of the work actually done, ``executed_flops_per_byte``: causal
attention at its real key counts) x (bytes per second) / peak; the paper's count is reported
beside it. The peak is the one the trainer uses (:func:`pretrain.runtime.perf.shared_peak`: the
best square matmul in the run's dtype, measured once in this process) raised to the best FLOP/s
any measurement of this run achieved, so no MFU can exceed 1 (:class:`MFUMeter`). On a machine
whose speed drifts (this project's shared CI machine: tens of percent within a minute) a peak
probed once meets steps timed at other speeds, so ``mfu_paired`` probes the same peak again right
before each of ``--pairs`` steps and reports the median of the per-pair ratios. The global and
local models are also timed on their own (forward + backward of each stack on inputs of the shapes
the full model feeds them), because the local model dominates FLOPs. ``--compile`` compiles the
model (and the stacks timed alone) with torch.compile first. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable, Dict

from common import (emit, machine, make_model, model_config, OPTIMIZER, params, sync, table, timed,
                    training_step)

import torch  # noqa: E402

from pretrain.model.flops import flops_breakdown  # noqa: E402
from pretrain.runtime.compile import compile_model  # noqa: E402
from pretrain.runtime.perf import (MFUMeter, dtype_name, gpu_peak_flops, matmul_peak,  # noqa: E402
                                   shared_peak)


def paired_mfu(step: Callable[[], None], device: torch.device, dtype: torch.dtype,
               work_per_step: float, pairs: int) -> Dict[str, Any]:
    """MFU with the peak probed right before each timed step (the trainer's probe,
    :func:`matmul_peak`), so a machine whose speed drifts meets each step with the peak of the
    same moment: per pair achieved / max(probe, achieved), and the median over ``pairs``."""
    ratios, probes = [], []
    for _ in range(pairs):
        probes.append(matmul_peak(device, dtype))
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        achieved = work_per_step / (time.perf_counter() - t0)
        ratios.append(achieved / max(probes[-1], achieved))
    return {"mfu_paired": statistics.median(ratios), "mfu_per_pair": ratios, "probes": probes}


def measure(size: str, seq_len: int, batch: int, device: torch.device, dtype: torch.dtype,
            repeats: int, budget: float, backend: str, pairs: int) -> Dict[str, Any]:
    """Seconds and achieved FLOP/s (work done) of the full step and of each stack alone."""
    cfg = model_config("megabyte", size, seq_len)
    model = make_model(cfg, device, dtype)
    ids = torch.randint(0, 256, (batch, seq_len), device=device)
    step = training_step(model, ids, backend or None)
    full = timed(step, device, 1, repeats, budget)
    n_bytes = batch * seq_len
    work = flops_breakdown(cfg, 256, training=True, count="executed")
    work_per_byte = sum(work.values())
    paired = paired_mfu(step, device, dtype, work_per_byte * n_bytes, pairs)
    paper = flops_breakdown(cfg, 256, training=True, count="paper")
    P, K = cfg.patch_size, seq_len // cfg.patch_size
    g, loc = cfg.global_model, cfg.local_model
    g_in = torch.randn(batch, K, g.dim, device=device, dtype=dtype, requires_grad=True)
    l_in = torch.randn(batch * K, P, loc.dim, device=device, dtype=dtype, requires_grad=True)
    levels = {}
    for level, stack, x in (("global", model.global_model, g_in), ("local", model.local_model, l_in)):
        if backend:
            compile_model(stack, device, backend)
        def run_stack(stack: torch.nn.Module = stack, x: torch.Tensor = x) -> None:
            stack(x).float().square().mean().backward()

        t = timed(run_stack, device, 1, repeats, budget)["seconds"]
        levels[level] = {"share_of_flops": work[level] / work_per_byte, "seconds": t,
                         "achieved_flops": work[level] * n_bytes / t}
    return {"size": size, "seq_len": seq_len, "batch": batch, "params": params(model),
            "seconds_per_step": full["seconds"], "first_step_seconds": full["first_seconds"],
            "bytes_per_s": n_bytes / full["seconds"],
            "train_flops_per_byte": sum(paper.values()),
            "executed_train_flops_per_byte": work_per_byte,
            "achieved_flops": work_per_byte * n_bytes / full["seconds"], **paired, **levels}


def add_mfu(results: list, meter: MFUMeter) -> None:
    """MFU of every measurement against the meter's final peak (raised by all of them first)."""
    for r in results:
        for x in (r, r["global"], r["local"]):
            meter.observe(x["achieved_flops"])
    for r in results:
        for x in (r, r["global"], r["local"]):
            x["mfu"] = x["achieved_flops"] / meter.peak
        r["mfu_paper_count"] = r["train_flops_per_byte"] * r["bytes_per_s"] / meter.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp32 or bf16 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--sizes", default=None, help="comma-separated size classes")
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per measurement")
    ap.add_argument("--pairs", type=int, default=10, help="probe + step pairs of the paired MFU")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model first")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend with --compile")
    ap.add_argument("--fast", action="store_true", help="tiny model, short context")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if (args.dtype or ("bf16" if cuda else "fp32")) == "bf16" else torch.float32
    sizes = (args.sizes or ("large" if cuda else "tiny,small")).split(",")
    seq_len = args.seq_len or (8192 if cuda else 4096)
    batch = args.batch or (8 if cuda else 1)
    if args.fast:
        sizes, seq_len, batch, args.repeats, args.budget, args.pairs = ["tiny"], 512, 1, 2, 10.0, 3
    probe = shared_peak(device, dtype)  # before the models: the same probe the trainer runs
    meter = MFUMeter(probe, dtype)
    backend = args.backend if args.compile else ""
    results = [measure(s, seq_len, batch, device, dtype, args.repeats, args.budget, backend,
                       args.pairs) for s in sizes]
    add_mfu(results, meter)
    rows = [[r["size"], f"{r['params'] / 1e6:.1f}M", seq_len, f"{r['bytes_per_s']:.0f}",
             f"{r['mfu']:.1%}", f"{r['mfu_paired']:.1%}", f"{r['mfu_paper_count']:.1%}",
             f"{r['global']['mfu']:.1%} ({r['global']['share_of_flops']:.0%})",
             f"{r['local']['mfu']:.1%} ({r['local']['share_of_flops']:.0%})"] for r in results]
    print(f"{meter.describe()}; probe {probe / 1e9:.1f} GFLOP/s; "
          f"{'compiled (' + backend + ')' if backend else 'eager'}", file=sys.stderr)
    print(table(rows, ["size", "params", "T", "bytes/s", "MFU (work done)", "paired MFU",
                       "MFU (paper count)",
                       "global MFU (FLOP share)", "local MFU (FLOP share)"]), file=sys.stderr)
    emit({"benchmark": "mfu", "device": args.device, "dtype": dtype_name(dtype),
          "compile": backend or None, "optimizer": OPTIMIZER,
          "peak_flops": meter.peak, "peak_probe_flops": probe, "peak_source": meter.describe(),
          "datasheet_peak_flops": gpu_peak_flops(torch.cuda.get_device_name(device)) if cuda else None,
          "machine": machine(), "results": results}, args.output)


if __name__ == "__main__":
    main()
