"""The README's GPU tables from the JSON of ``bench/gpu_bench.py``.

``python bench/gpu_table.py [bench/results/gpu.json]``

Prints Markdown: one line per part (status and seconds), then MFU (eager and compiled), training
throughput vs context (MEGABYTE vs byte Transformer, the measured ratio against the ratio of the
work actually done: ``efficiency_causal``), the long contexts, cached generation and the trainer's
own last logged step. A part that did not finish shows its status instead of numbers.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Dict, List

from common import table

HERE = Path(__file__).resolve().parent


def mfu_rows(runs: Dict[str, Dict[str, Any]]) -> List[List[Any]]:
    rows = []
    for part in ("mfu", "mfu_compiled"):
        run = runs.get(part)
        if not run or run["status"] != "ok":
            continue
        for r in run["results"]:
            rows.append([part, r["size"], f"{r['params'] / 1e6:.0f}M", r["seq_len"], r["batch"],
                         f"{r['bytes_per_s']:,.0f}", f"{r['mfu']:.1%}", f"{r['mfu_paired']:.1%}",
                         f"{r['mfu_paper_count']:.1%}", f"{run['peak_flops'] / 1e12:.3g}"])
    return rows


def throughput_rows(run: Dict[str, Any]) -> List[List[Any]]:
    rows = []
    for p in run["points"]:
        m, t = p.get("megabyte") or {}, p.get("transformer") or {}
        speed = [f"{x['bytes_per_s']:,.0f}" if x.get("status") == "ok" else x.get("status", "-")
                 for x in (m, t)]
        rows.append([f"{p['seq_len']:,}", *speed,
                     *(f"{p[k]:.2f}" if p.get(k) is not None else "-"
                       for k in ("measured_ratio", "executed_flops_ratio", "efficiency_causal"))])
    return rows


def last_step(log: str) -> Dict[str, str]:
    """The fields of the trainer's last ``step N/M | key value | ...`` log line."""
    lines = [line for line in log.splitlines() if re.match(r"step \d+/\d+ \|", line)]
    if not lines:
        return {}
    fields = [f.strip().split(" ", 1) for f in lines[-1].split("|")[1:]]
    return {f[0]: f[1] for f in fields if len(f) == 2}


def render(data: Dict[str, Any]) -> str:
    """All the tables of one gpu_bench JSON, as Markdown."""
    runs = {r["part"]: r for r in data["runs"]}
    out = [f"{data.get('device', '?')}, torch {data.get('torch', '?')}, budget "
           f"{data.get('minutes', '?')} min", "",
           table([[r["part"], r["status"], f"{r['seconds']:.0f}"] for r in data["runs"]],
                 ["part", "status", "seconds"])]
    mfu = mfu_rows(runs)
    if mfu:
        out += ["", table(mfu, ["run", "size", "params", "T", "batch", "bytes/s",
                                           "MFU (work done)", "paired MFU", "MFU (paper count)",
                                           "peak TFLOP/s"])]
    for part in ("throughput", "throughput_compiled", "long_context"):
        if runs.get(part, {}).get("status") == "ok":
            out += ["", f"{part}:", table(throughput_rows(runs[part]), [
                "T (bytes)", "MEGABYTE bytes/s", "Transformer bytes/s", "measured ratio",
                "executed FLOPs ratio", "efficiency_causal"])]
    gen = runs.get("generation", {})
    if gen.get("status") == "ok":
        out += ["", table([[gen["bytes"], f"{gen['megabyte_cached']['bytes_per_s']:,.0f}",
                            f"{gen['megabyte_uncached']['bytes_per_s']:,.1f}",
                            f"{gen['transformer_cached']['bytes_per_s']:,.0f}",
                            f"{gen['cache_speedup']:.1f}", f"{gen['megabyte_vs_transformer']:.2f}"]],
                          ["bytes", "MEGABYTE cached B/s", "uncached B/s", "Transformer cached B/s",
                           "cached / uncached", "MEGABYTE / Transformer"])]
    trained = [[part, runs[part]["train_results"]["steps"], f"{runs[part]['train_results']['val_bpb']:.3f}",
                *(last_step(runs[part]["log_tail"]).get(k, "-") for k in ("bytes_per_s", "mfu"))]
               for part in ("train", "train_deepspeed")
               if runs.get(part, {}).get("status") == "ok" and runs[part].get("train_results")]
    if trained:
        out += ["", table(trained, ["trainer", "steps", "val bpb", "bytes/s (last log)", "MFU (last log)"])]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", default=str(HERE / "results" / "gpu.json"))
    args = ap.parse_args()
    path = Path(args.json)
    if not path.is_file():
        raise SystemExit(f"gpu_table: {path} does not exist (bench/gpu_bench.py writes it)")
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
