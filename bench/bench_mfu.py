"""Model FLOPs utilization of MEGABYTE's training step, overall and per level.

``python bench/bench_mfu.py [--device cpu|cuda] [--sizes tiny,small] [--seq-len 4096]``

MFU = (training FLOPs per byte from the paper's formulas) x (bytes per second) / peak. The peak
is measured in the same run on CPU (best of several large fp32 matmuls with the same threads) and
is the device's dense bf16 peak on GPU. The global and local models are also timed on their own
(forward + backward of each stack on inputs of the shapes the full model feeds them), because the
local model dominates FLOPs. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict

from common import emit, machine, make_model, model_config, params, table, timed

import torch  # noqa: E402

from pretrain.model.losses import lm_loss  # noqa: E402
from pretrain.model import flops_per_byte  # noqa: E402
from pretrain.runtime.perf import cpu_matmul_peak, gpu_peak_flops  # noqa: E402


def stack_flops(dim: int, layers: int, context: int, mlp_ratio: int) -> float:
    """Training FLOPs per position of a stack (3x forward; the paper's per-layer formula)."""
    return 3 * layers * 2 * ((4 + 2 * mlp_ratio) * dim * dim + 2 * dim * context)


def measure(size: str, seq_len: int, batch: int, device: torch.device, dtype: torch.dtype,
            peak: float, repeats: int, budget: float) -> Dict[str, Any]:
    cfg = model_config("megabyte", size, seq_len)
    model = make_model(cfg, device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (batch, seq_len), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        lm_loss(model(ids), ids).backward()
        opt.step()

    full = timed(step, device, 1, repeats, budget)["seconds"]
    total_flops = flops_per_byte(cfg, 256, training=True) * batch * seq_len
    P, K = cfg.patch_size, seq_len // cfg.patch_size
    g, loc = cfg.global_model, cfg.local_model
    g_in = torch.randn(batch, K, g.dim, device=device, dtype=dtype, requires_grad=True)
    l_in = torch.randn(batch * K, P, loc.dim, device=device, dtype=dtype, requires_grad=True)

    def run_global() -> None:
        model.global_model(g_in).float().square().mean().backward()

    def run_local() -> None:
        model.local_model(l_in).float().square().mean().backward()

    t_global = timed(run_global, device, 1, repeats, budget)["seconds"]
    t_local = timed(run_local, device, 1, repeats, budget)["seconds"]
    global_flops = stack_flops(g.dim, g.layers, K, cfg.mlp_ratio) * batch * K
    local_flops = stack_flops(loc.dim, loc.layers, P, cfg.mlp_ratio) * batch * K * P
    return {"size": size, "seq_len": seq_len, "batch": batch, "params": params(model),
            "seconds_per_step": full, "bytes_per_s": batch * seq_len / full,
            "mfu": total_flops / full / peak,
            "global": {"share_of_flops": global_flops / total_flops, "seconds": t_global,
                       "mfu": global_flops / t_global / peak},
            "local": {"share_of_flops": local_flops / total_flops, "seconds": t_local,
                      "mfu": local_flops / t_local / peak}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp32 or bf16 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--sizes", default=None, help="comma-separated size classes")
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per measurement")
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
        sizes, seq_len, batch, args.repeats, args.budget = ["tiny"], 512, 1, 2, 10.0
    if cuda:
        peak = gpu_peak_flops(torch.cuda.get_device_name(device)) or 0.0
        peak_source = "table (dense bf16)"
        if not peak:
            sys.exit(f"unknown GPU {torch.cuda.get_device_name(device)}: add its peak to "
                     "pretrain/perf.py")
    else:
        peak = max(cpu_matmul_peak(2048, 5, dtype) for _ in range(2))
        peak_source = "measured: best 2048^3 matmul, same threads"
    rows, results = [], []
    for size in sizes:
        r = measure(size, seq_len, batch, device, dtype, peak, args.repeats, args.budget)
        results.append(r)
        rows.append([size, f"{r['params'] / 1e6:.1f}M", seq_len, f"{r['bytes_per_s']:.0f}",
                     f"{r['mfu']:.1%}", f"{r['global']['mfu']:.1%} ({r['global']['share_of_flops']:.0%})",
                     f"{r['local']['mfu']:.1%} ({r['local']['share_of_flops']:.0%})"])
    print(f"peak {peak / 1e12:.3f} TFLOP/s ({peak_source})", file=sys.stderr)
    print(table(rows, ["size", "params", "T", "bytes/s", "MFU", "global MFU (FLOP share)",
                       "local MFU (FLOP share)"]), file=sys.stderr)
    emit({"benchmark": "mfu", "device": args.device, "dtype": str(dtype).replace("torch.", ""),
          "peak_flops": peak, "peak_source": peak_source, "machine": machine(),
          "results": results}, args.output)


if __name__ == "__main__":
    main()
