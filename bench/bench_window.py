"""Sliding-window attention of the windowed byte Transformer: block by block vs under a mask.

``python bench/bench_window.py [--contexts 512,2048,4096] [--window 256] [--pairs 5]``

The windowed byte Transformer (``model.attention_window``; ``transformer_window`` in
``pretrain.compare``) computes its attention block by block once the context spans two windows
(:func:`pretrain.model.layers.banded_window_attention`: L x 2W scores) rather than as one
attention under the window mask (L x L scores). This times a training step (forward, loss,
backward, the trainer's AdamW) of the same model both ways, alternated step by step on the same
batch, and prints the median seconds and their ratio per context. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any, Dict, List

from common import emit, machine, make_model, model_config, sync, table, training_step

import torch  # noqa: E402

from pretrain.model import layers  # noqa: E402

BANDED = layers.banded_window


def masked_only(seq_len: int, window: int) -> bool:
    """Stand-in for :func:`layers.banded_window` that keeps every sequence on the mask path."""
    return False


def measure(T: int, window: int, batch_bytes: int, size: str, pairs: int,
            device: torch.device) -> Dict[str, Any]:
    """Median step seconds of both paths at context ``T``, alternated on one model and batch."""
    cfg = dataclasses.replace(model_config("transformer", size, T), attention_window=window)
    model = make_model(cfg, device, torch.float32)
    ids = torch.randint(0, 256, (max(1, batch_bytes // T), T), device=device)
    step = training_step(model, ids)
    times: Dict[str, List[float]] = {"banded": [], "masked": []}
    for i in range(pairs + 1):  # the first pair warms both paths up
        for name, rule in (("banded", BANDED), ("masked", masked_only)):
            layers.banded_window = rule
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            if i:
                times[name].append(time.perf_counter() - t0)
    layers.banded_window = BANDED
    banded, masked = (statistics.median(times[k]) for k in ("banded", "masked"))
    return {"seq_len": T, "window": window, "batch": ids.shape[0], "banded_path": BANDED(T, window),
            "banded_seconds": banded, "masked_seconds": masked, "speedup": masked / banded,
            "times": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="512,2048,4096", help="comma-separated contexts T")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--size", default="tiny", help="benchmark size class of the Transformer")
    ap.add_argument("--batch-bytes", type=int, default=8192, help="bytes per step (batch = this / T)")
    ap.add_argument("--pairs", type=int, default=5, help="timed (banded, masked) step pairs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    results = [measure(int(t), args.window, args.batch_bytes, args.size, args.pairs, device)
               for t in args.contexts.split(",")]
    rows = [[r["seq_len"], r["window"], r["batch"], f"{r['masked_seconds']:.3f}",
             f"{r['banded_seconds']:.3f}", f"{r['speedup']:.2f}x"] for r in results]
    print(table(rows, ["T", "W", "batch", "masked s/step", "banded s/step", "speed-up"]),
          file=sys.stderr)
    emit({"benchmark": "window", "device": args.device, "size": args.size,
          "machine": machine(), "results": results}, args.output)


if __name__ == "__main__":
    main()
