"""One command for a GPU: training throughput vs context, MFU and generation speed, in bf16.

``python bench/gpu_bench.py [--output bench/results/gpu.json]``     (about 15 minutes on an H100/H200)
``python bench/gpu_bench.py --smoke``                                (small and short, any device)

Runs bench_throughput.py (MEGABYTE vs byte Transformer, contexts 1K..64K, eager and compiled,
plus MEGABYTE alone at 256K and 1M bytes), bench_mfu.py (a 1B-parameter global model, eager and
compiled) and bench_generation.py (8192 bytes) as subprocesses and writes their JSON into one
file. Every training step uses the trainer's optimizer (fused AdamW on GPU: its JSON says
``"optimizer": "AdamW fused"``); attention goes through SDPA, so the flash kernel is used on GPU.
``--smoke`` runs the same scripts small, the MFU one through the compiled path (``aot_eager``:
no C compiler or GPU needed), so the script and both paths are checked on any machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, args, timeout: float) -> dict:
    cmd = [sys.executable, str(HERE / script), *args]
    print("running: " + " ".join(cmd), file=sys.stderr)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": timeout}
    if proc.returncode:
        return {"status": f"failed ({proc.returncode})", "seconds": time.perf_counter() - t0}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device there is")
    ap.add_argument("--output", default=str(HERE / "results" / "gpu.json"))
    args = ap.parse_args()
    if args.smoke:
        plan = [("bench_throughput.py", ["--fast", "--contexts", "128"], 300),
                ("bench_mfu.py", ["--fast", "--compile", "--backend", "aot_eager"], 300),
                ("bench_generation.py", ["--fast", "--bytes", "64"], 300)]
    else:
        plan = [
            ("bench_throughput.py", ["--device", "cuda", "--size", "small", "--contexts",
                                     "1024,4096,16384,65536", "--budget", "30"], 200),
            ("bench_throughput.py", ["--device", "cuda", "--size", "small", "--contexts",
                                     "1024,4096,16384,65536", "--budget", "30", "--compile"], 400),
            ("bench_throughput.py", ["--device", "cuda", "--size", "small", "--contexts",
                                     "262144,1048576", "--batch-bytes", "1048576", "--budget",
                                     "30"], 120),
            ("bench_mfu.py", ["--device", "cuda", "--sizes", "large", "--seq-len", "8192",
                              "--batch", "8"], 120),
            ("bench_mfu.py", ["--device", "cuda", "--sizes", "large", "--seq-len", "8192",
                              "--batch", "8", "--compile"], 300),
            ("bench_generation.py", ["--device", "cuda", "--size", "small", "--bytes", "8192"], 60),
        ]
    results = {"smoke": args.smoke, "runs": [run(s, a, t) for s, a, t in plan]}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
