"""Generation speed: MEGABYTE with its hierarchical KV cache, MEGABYTE without a cache (a full
forward pass per byte), and the byte Transformer with a KV cache at equal parameters.

``python bench/bench_generation.py [--device cpu|cuda] [--size small] [--bytes 8192]``

All three generate ``--bytes`` bytes greedily from a 1-byte prompt (context = ``--bytes``). The
uncached run is O(n^2); by default it is *measured* at ``--uncached-samples`` evenly spaced
lengths and its total time integrated from those measurements (``--uncached full`` runs all of
it). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict

from common import block_params, emit, machine, make_model, model_config, params, sync, table

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pretrain.inference.generation import Sampling, generate, uncached_next_logits  # noqa: E402


def cached(model: torch.nn.Module, n: int, device: torch.device, repeats: int) -> Dict[str, Any]:
    """Greedy generation of n - 1 bytes with the model's KV cache: the best of ``repeats`` runs
    after a 16-byte warm-up."""
    generate(model, [[65]], max_new=min(n - 1, 16), sampling=Sampling(temperature=0))
    runs = []
    for _ in range(repeats):
        sync(device)
        runs.append(generate(model, [[65]], max_new=n - 1, sampling=Sampling(temperature=0)))
        sync(device)
    out = min(runs, key=lambda r: r["seconds"])
    return {"bytes": len(out["outputs"][0]), "seconds": out["seconds"],
            "bytes_per_s": len(out["outputs"][0]) / out["seconds"]}


@torch.no_grad()
def uncached(model: torch.nn.Module, n: int, device: torch.device, mode: str,
             samples: int, repeats: int) -> Dict[str, Any]:
    """A full forward pass per byte: each length's time is the best of ``repeats`` calls."""
    model.eval()
    ids = torch.randint(0, 256, (1, n), device=device)
    lengths = list(range(1, n)) if mode == "full" else sorted(
        set(np.linspace(1, n - 1, samples).round().astype(int).tolist()))
    uncached_next_logits(model, ids[:, :1])  # warm up
    times = []
    for L in lengths:
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            uncached_next_logits(model, ids[:, :L])
            sync(device)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
    if mode == "full":
        total = sum(times)
    else:  # integrate the measured per-step times over every length 1..n-1
        total = float(np.interp(np.arange(1, n), lengths, times).sum())
    return {"bytes": n - 1, "seconds": total, "bytes_per_s": (n - 1) / total, "mode": mode,
            "measured_steps": len(lengths)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--size", default="small")
    ap.add_argument("--bytes", type=int, default=None, help="bytes to generate (default 8192)")
    ap.add_argument("--uncached", choices=["sampled", "full"], default="sampled")
    ap.add_argument("--uncached-samples", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each measurement, the best kept (cached runs; uncached lengths)")
    ap.add_argument("--fast", action="store_true",
                    help="tiny models, 256 bytes, full uncached, best of 3")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    if args.fast:
        args.size, args.uncached, args.repeats = "tiny", "full", 3
        args.bytes = args.bytes or 256
    args.bytes = args.bytes or 8192
    device = torch.device(args.device)
    dtype = torch.bfloat16 if (args.dtype or ("bf16" if device.type == "cuda" else "fp32")) == "bf16" \
        else torch.float32
    n = args.bytes
    mb = make_model(model_config("megabyte", args.size, n), device, dtype).eval()
    tf = make_model(model_config("transformer", args.size, n), device, dtype).eval()
    result: Dict[str, Any] = {
        "benchmark": "generation", "device": args.device, "dtype": str(dtype).replace("torch.", ""),
        "size": args.size, "bytes": n, "machine": machine(),
        "megabyte_params": params(mb), "megabyte_block_params": block_params(mb),
        "transformer_params": params(tf), "transformer_block_params": block_params(tf)}
    result["repeats"] = args.repeats
    result["megabyte_cached"] = cached(mb, n, device, args.repeats)
    result["transformer_cached"] = cached(tf, n, device, args.repeats)
    result["megabyte_uncached"] = uncached(mb, n, device, args.uncached, args.uncached_samples,
                                           args.repeats)
    result["cache_speedup"] = (result["megabyte_cached"]["bytes_per_s"]
                               / result["megabyte_uncached"]["bytes_per_s"])
    result["megabyte_vs_transformer"] = (result["megabyte_cached"]["bytes_per_s"]
                                         / result["transformer_cached"]["bytes_per_s"])
    rows = [["MEGABYTE, hierarchical cache", f"{result['megabyte_cached']['bytes_per_s']:.1f}"],
            [f"MEGABYTE, no cache ({args.uncached})",
             f"{result['megabyte_uncached']['bytes_per_s']:.2f}"],
            ["byte Transformer, KV cache", f"{result['transformer_cached']['bytes_per_s']:.1f}"]]
    print(table(rows, [f"{n} bytes, {args.size}", "bytes/s"]), file=sys.stderr)
    print(f"cache speedup {result['cache_speedup']:.1f}x; MEGABYTE / Transformer "
          f"{result['megabyte_vs_transformer']:.2f}x", file=sys.stderr)
    emit(result, args.output)


if __name__ == "__main__":
    main()
