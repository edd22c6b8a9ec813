"""Data pipeline throughput, side by side in one run: prep, our loader, stock webdataset.

    python bench/bench_data.py                 # Python's stdlib (~31 MB), seq_len 8192
    python bench/bench_data.py --input DIR     # any directory of files
    python bench/bench_data.py --fast          # a few MB, seconds (used by the tests)

Measures, on the same shards:

* prep MB/s: ``data_prep.bytes`` from scratch (input bytes per second) with 1 and with 2 worker
  processes, alternating ``--repeats`` times, best of each; ``prep_workers_ratio`` is their
  ratio (target >= 1.6 on 2 free cores), ``prep_cpu_seconds`` the CPU time of the main process
  and of the workers in the best run of each;
* stock webdataset MB/s: ``webdataset.WebDataset(train shards)`` iterated in this process,
  summing the payload sizes (raw read rate: no decoding, no tensors);
* loader MB/s: ``ShardLoader.next_batch()`` over the same train shards in this process
  (packing documents with EOS ids into (micro_batch, seq_len) int64 tensors, crc32-checked),
  and the same with ``--workers`` DataLoader workers;
* a training step's consumption: bytes/s of a MEGABYTE training step (quickstart model on this
  CPU), to show how far the loader is from being the bottleneck.

The stock and loader reads alternate ``--repeats`` times over warm page cache; each rate is the
best of its repeats and ``loader_vs_stock`` is their ratio (also the median of per-round
ratios). One JSON object goes to stdout, a table to stderr.

    python bench/bench_data.py --prep-memory 1G   # peak RSS of prep on generated JSONL and Parquet

``--prep-memory SIZE`` instead generates a JSONL file and a Parquet file of about SIZE each in
``--work-dir`` (default: a temp dir; deleted afterwards) and prepares each in a subprocess, with 1
and 2 workers, reporting the peak RSS (``ru_maxrss``) of the largest process and the MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_RATIO = 0.8
TARGET_PREP_WORKERS_RATIO = 1.6
RECORD_CHARS = 8000  # generated records for --prep-memory (real documents are KBs, not bytes)


def stock_read(urls: List[str]) -> int:
    """Stock webdataset: iterate every sample of the shards, count payload bytes."""
    import webdataset as wds

    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        n += len(sample["bin"])
    return n


def loader_read(dataset: Any, seq_len: int, micro_batch: int, workers: int, n_bytes: int) -> float:
    """Seconds for our loader to deliver about ``n_bytes`` (after one warm-up batch)."""
    from pretrain.data.shard_loader import ShardLoader

    loader = ShardLoader([dataset], [1.0], seq_len, micro_batch, seed=1, eos=258, pad=256,
                         vocab_size=259, num_workers=workers)
    loader.next_batch()  # start workers / open the first shard
    batches = max(1, n_bytes // (seq_len * micro_batch))
    t0 = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    dt = time.perf_counter() - t0
    loader.close()
    return batches * seq_len * micro_batch * loader.bytes_per_unit / dt


def cpu_seconds() -> Dict[str, float]:
    """User + system CPU seconds of this process and of its finished child processes."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"main": own.ru_utime + own.ru_stime, "workers": kids.ru_utime + kids.ru_stime}


def timed(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def train_step_rate(fast: bool) -> Dict[str, Any]:
    """Bytes per second a single-process training step consumes (MEGABYTE preset, this CPU)."""
    import torch

    from pretrain.config import CONFIG_DIR, load_config
    from pretrain.model.losses import lm_loss
    from pretrain.model import build_model
    from pretrain.training.optim import build_optimizer

    name = "debug.yaml" if fast else "quickstart.yaml"
    cfg = load_config(CONFIG_DIR / name)
    torch.manual_seed(0)
    model = build_model(cfg.model, 259, 256, 257)
    opt = build_optimizer(model, cfg.optim)
    x = torch.randint(0, 256, (cfg.train.micro_batch_size, cfg.model.seq_len))
    steps, times = 3, []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        lm_loss(model(x), x).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times[1:])
    return {"preset": name, "bytes_per_step": x.numel(), "seconds_per_step": round(sec, 4),
            "bytes_per_s": round(x.numel() / sec, 1)}


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, default=None, help="corpus directory (default: Python's stdlib)")
    p.add_argument("--work-dir", type=Path, default=None, help="where to write shards (default: a temp dir)")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--shard-bytes", default="4MiB")
    p.add_argument("--workers", type=int, default=None, dest="workers_given",
                   help="loader DataLoader workers and the prep run the reads use (default 2); with "
                        "--prep-memory: only this worker count (default: 1 and 2)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fast", action="store_true", help="a few MB of input, 2 repeats (for tests)")
    p.add_argument("--prep-memory", default=None, metavar="SIZE",
                   help="measure prep's peak memory on generated JSONL and Parquet files of SIZE (e.g. 1G)")
    args = p.parse_args(argv)
    args.workers = 2 if args.workers_given is None else args.workers_given
    return args



def measure(args: argparse.Namespace) -> Dict[str, Any]:
    """Prepare the corpus, then read it with stock webdataset and the loader, alternating."""
    from data_prep.bytes import PrepOptions, parse_size, prepare
    from data_prep.sources import STDLIB_EXCLUDE, stdlib_dir
    from pretrain.data.shard_loader import open_dataset

    if args.input is None:
        inputs, include, exclude, corpus = [stdlib_dir()], ("*.py",), STDLIB_EXCLUDE, "python-stdlib"
    else:
        inputs, include, exclude, corpus = [args.input], (), (), str(args.input)
    max_bytes = 3_000_000 if args.fast else None
    repeats = 2 if args.fast else args.repeats
    seq_len = min(args.seq_len, 1024) if args.fast else args.seq_len
    shard_bytes = parse_size("256KiB" if args.fast else args.shard_bytes)
    opts = PrepOptions(shard_bytes=shard_bytes, include=include, exclude=exclude, max_bytes=max_bytes,
                       skip=("empty",))

    work = Path(tempfile.mkdtemp(prefix="bench_data_")) if args.work_dir is None else args.work_dir
    out_dir = work / "shards"
    try:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        prep_rate: Dict[int, float] = {}
        prep_cpu: Dict[int, Dict[str, float]] = {}
        for _ in range(repeats):  # the same input with 1 and 2 workers, alternating; best of each
            for w in (1, 2):
                shutil.rmtree(out_dir, ignore_errors=True)
                cpu0 = cpu_seconds()
                t0 = time.perf_counter()
                summary = prepare(inputs, out_dir, opts, workers=w, progress=False)
                rate = summary["input_bytes"] / (time.perf_counter() - t0)
                if rate > prep_rate.get(w, 0.0):
                    prep_rate[w] = rate
                    prep_cpu[w] = {k: round(v - cpu0[k], 2) for k, v in cpu_seconds().items()}
        if args.workers not in prep_rate:
            shutil.rmtree(out_dir)
            t0 = time.perf_counter()
            summary = prepare(inputs, out_dir, opts, workers=args.workers, progress=False)
            prep_rate[args.workers] = summary["input_bytes"] / (time.perf_counter() - t0)
        prep_s = summary["input_bytes"] / prep_rate[args.workers]
        ds = open_dataset(out_dir)
        urls = [s.path for s in ds.shards]
        stock_read(urls)  # warm the page cache
        stock, ours, ratios = [], [], []
        for _ in range(repeats):  # alternate, so both see the same machine load
            s = timed(lambda: stock_read(urls))
            o = loader_read(ds, seq_len, args.micro_batch, 0, ds.bytes)
            stock.append(s)
            ours.append(o)
            ratios.append(o / s)
        ours_w = [loader_read(ds, seq_len, args.micro_batch, args.workers, ds.bytes)
                  for _ in range(max(1, repeats // 2))]
        step = train_step_rate(args.fast)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    return {"summary": summary, "ds": ds, "prep_s": prep_s, "prep_rate": prep_rate, "prep_cpu": prep_cpu,
            "stock": stock,
            "ours": ours, "ours_w": ours_w, "ratios": ratios, "step": step, "corpus": corpus,
            "seq_len": seq_len, "repeats": repeats}


def generate_inputs(work: Path, size: int) -> Dict[str, Path]:
    """A JSONL file of about ``size`` bytes and a Parquet file of about ``size`` bytes of text
    (real stdlib text, each record made unique by its number), written in bounded memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.sources import stdlib_files

    text = b"".join(p.read_bytes() for p in stdlib_files()[:200]).decode("utf-8", "replace")
    pieces = [text[i:i + RECORD_CHARS] for i in range(0, len(text) - RECORD_CHARS, 997)]
    jsonl, parquet = work / "gen.jsonl", work / "gen.parquet"
    with open(jsonl, "w", encoding="utf-8") as f:
        n = 0
        while f.tell() < size:
            f.write("".join(json.dumps({"text": f"{n + k} {pieces[(n + k) % len(pieces)]}"}) + "\n"
                            for k in range(1000)))
            n += 1000
    rows, n, text_bytes = 6000, 0, 0
    with pq.ParquetWriter(parquet, pa.schema([("text", pa.string())])) as w:
        while text_bytes < size:  # SIZE of text (the file is smaller: compressed), ~50 MB a row group
            texts = [f"{n + k} {pieces[(n + k) % len(pieces)]}" for k in range(rows)]
            w.write_table(pa.table({"text": texts}), row_group_size=rows)
            text_bytes += sum(len(t) for t in texts)
            n += rows
    return {"jsonl": jsonl, "parquet": parquet}


def peak_rss_of(cmd: List[str]) -> Dict[str, Any]:
    """Run ``cmd`` under a fresh Python that reports ``ru_maxrss`` of its children (the prep main
    process and, through it, its workers: the largest single process)."""
    probe = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE); "
             "print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t, "
             "'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
             "'result': r.stdout.decode().strip().splitlines()[-1:] }))")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return json.loads(out.stdout)


def measure_prep_memory(size_text: str, work_dir: Optional[Path], worker_counts: List[int]
                        ) -> Dict[str, Any]:
    """Peak RSS and MB/s of ``data_prep.bytes`` on generated JSONL and Parquet inputs of a size."""
    from data_prep.bytes import parse_size

    work = Path(tempfile.mkdtemp(prefix="prep_memory_", dir=work_dir))
    result: Dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                          "load_avg_1min": round(os.getloadavg()[0], 2)}}
    try:
        files = generate_inputs(work, parse_size(size_text))
        for name, path in files.items():
            for workers in worker_counts:
                out = work / f"out_{name}_{workers}"
                r = peak_rss_of([sys.executable, "-m", "data_prep.bytes", str(path), "--output", str(out),
                                 "--workers", str(workers), "--no-progress"])
                if r["rc"] != 0:
                    raise RuntimeError(f"prep of {path} failed: {r}")
                size = path.stat().st_size
                result[f"{name}_{workers}w"] = {
                    "input_mb": round(size / 1e6, 1), "peak_rss_mb": round(r["peak_rss_mb"], 1),
                    "seconds": round(r["seconds"], 1), "mb_per_s": round(size / 1e6 / r["seconds"], 2),
                    "docs": json.loads(r["result"][0])["splits"]["train"]["docs"] if r["result"] else None}
                shutil.rmtree(out)
                print(f"{name:<8} {workers} worker(s): {result[f'{name}_{workers}w']}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.prep_memory:
        counts = [1, 2] if args.workers_given is None else [args.workers_given]
        print(json.dumps(measure_prep_memory(args.prep_memory, args.work_dir, counts)))
        return 0
    m = measure(args)
    summary, ds, prep_s, step = m["summary"], m["ds"], m["prep_s"], m["step"]
    stock, ours, ours_w, ratios = m["stock"], m["ours"], m["ours_w"], m["ratios"]
    corpus, seq_len, repeats = m["corpus"], m["seq_len"], m["repeats"]
    best_stock, best_ours, best_w = max(stock), max(ours), max(ours_w)
    result = {
        "corpus": corpus, "input_files": summary["input_files"], "input_bytes": summary["input_bytes"],
        "train_bytes": ds.bytes, "train_shards": len(ds.shards), "seq_len": seq_len,
        "micro_batch": args.micro_batch, "workers": args.workers, "repeats": repeats,
        "prep_seconds": round(prep_s, 3), "prep_mb_per_s": round(summary["input_bytes"] / prep_s / 1e6, 2),
        "prep_1_worker_mb_per_s": round(m["prep_rate"][1] / 1e6, 2),
        "prep_2_workers_mb_per_s": round(m["prep_rate"][2] / 1e6, 2),
        "prep_workers_ratio": round(m["prep_rate"][2] / m["prep_rate"][1], 3),
        "prep_workers_target": TARGET_PREP_WORKERS_RATIO,
        # CPU seconds of this (main) process and of its worker processes in each prep run: with
        # 2 workers the main process should do little, so free cores would give the speed-up.
        "prep_cpu_seconds": {f"{w}_workers": c for w, c in m["prep_cpu"].items()},
        "stock_webdataset_mb_per_s": round(best_stock / 1e6, 2),
        "loader_mb_per_s": round(best_ours / 1e6, 2),
        "loader_workers_mb_per_s": round(best_w / 1e6, 2),
        "loader_vs_stock": round(best_ours / best_stock, 3),
        "loader_vs_stock_median_round": round(statistics.median(ratios), 3),
        "target_ratio": TARGET_RATIO, "meets_target": best_ours / best_stock >= TARGET_RATIO,
        "all_rounds_mb_per_s": {"stock": [round(x / 1e6, 1) for x in stock],
                                "loader": [round(x / 1e6, 1) for x in ours],
                                "loader_workers": [round(x / 1e6, 1) for x in ours_w]},
        "train_step": step,
        "loader_over_train_step": round(best_ours / step["bytes_per_s"], 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1min": round(os.getloadavg()[0], 2)},
    }
    rows = [("prep (data_prep.bytes, 1 worker)", result["prep_1_worker_mb_per_s"]),
            ("prep (data_prep.bytes, 2 workers)", result["prep_2_workers_mb_per_s"]),
            ("stock webdataset read", result["stock_webdataset_mb_per_s"]),
            ("loader (in process)", result["loader_mb_per_s"]),
            (f"loader ({args.workers} workers)", result["loader_workers_mb_per_s"]),
            ("training step consumes", round(step["bytes_per_s"] / 1e6, 4))]
    print("\n".join(f"{name:<34} {mbs:>10} MB/s" for name, mbs in rows), file=sys.stderr)
    print(f"prep 2 workers / 1 worker = {result['prep_workers_ratio']} (target >= "
          f"{TARGET_PREP_WORKERS_RATIO} on 2 free cores)", file=sys.stderr)
    print(f"loader / stock = {result['loader_vs_stock']} (target >= {TARGET_RATIO}); "
          f"loader / training step = {result['loader_over_train_step']}x", file=sys.stderr)
    print(json.dumps(result))
    return 0




if __name__ == "__main__":
    sys.exit(main())
