"""One command for a GPU: MFU, training throughput vs context and generation speed, in bf16.

``python bench/gpu_bench.py [--minutes 8] [--output bench/results/gpu.json]``   (one H100/H200)
``python bench/gpu_bench.py --smoke``                                        (small, any device)

Runs, most important first, each as a subprocess under its own time limit: bench_mfu.py (a
1B-parameter global model, T=8192, batch 8, eager), the trainer itself (``pretrain.train`` on the
debug config: bf16 autocast, fused AdamW, evaluation), bench_throughput.py (MEGABYTE vs byte
Transformer, contexts 1K..64K), bench_mfu.py compiled, bench_generation.py (8192 bytes), the
DeepSpeed engine in one process (``launch.local --nproc 1``: DeepSpeed's torch AdamW, no CUDA
compiler needed), bench_throughput.py for MEGABYTE alone at 256K and 1M bytes, then
bench_throughput.py compiled. The whole stays inside ``--minutes``: a part starts only when its
minimum time is left, and runs for at most its share or what is left, whichever is less (a part
cut short is recorded as ``timeout``). The JSON file is rewritten (atomically) after every part,
so a session that is cut off keeps what finished. Every training step uses the trainer's
optimizer (fused AdamW on GPU: ``"optimizer": "AdamW fused"``); attention goes through SDPA, so the
flash kernel is used on GPU. ``--smoke`` runs the same parts small, the MFU one through the
compiled path (``aot_eager``: no C compiler or GPU needed), so the script and both paths are
checked on any machine (tests/test_bench.py).

For a lent GPU machine without this project's packages, ``scripts/gpu_check.sh`` installs the
carried wheels and runs this script; ``python bench/gpu_table.py`` turns the JSON into the README's
table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class Part(NamedTuple):
    """One measurement: ``command`` (argv after the Python executable), the seconds it is
    planned to take at most (``share``) and the least worth starting it with (``minimum``);
    ``run_dir`` for a training run (its ``results.json`` is read back), None for a benchmark
    (its JSON is the last line of its stdout)."""

    name: str
    command: List[str]
    share: float
    minimum: float
    run_dir: Optional[Path] = None


def bench(script: str, *args: str) -> List[str]:
    return [str(HERE / script), *args]


def train_part(name: str, run_dir: Path, device: str, steps: int, share: float, minimum: float,
               deepspeed: bool = False) -> Part:
    """The trainer on the debug config (bf16 autocast on a GPU): the single-process loop, or
    with ``deepspeed`` the DeepSpeed engine in one process started by ``launch.local``."""
    overrides = [f"run_dir={run_dir}", f"train.device={device}", f"train.max_steps={steps}",
                 "logging.tensorboard=false", f"train.dtype={'bf16' if device == 'cuda' else 'fp32'}"]
    config = ["--config", str(ROOT / "configs" / "debug.yaml")]
    command = (["-m", "launch.local", *config, "--nproc", "1", *overrides] if deepspeed
               else ["-m", "pretrain.train", *config, *overrides])
    return Part(name, command, share, minimum, run_dir)


def plan(smoke: bool, device: str, run_dir: Path) -> List[Part]:
    """The parts in order of importance (the first ones run even on a short budget)."""
    if smoke:
        return [Part("mfu", bench("bench_mfu.py", "--fast", "--compile", "--backend", "aot_eager"),
                     300, 1),
                train_part("train", run_dir / "simple", device, 20, 300, 1),
                Part("throughput", bench("bench_throughput.py", "--fast", "--contexts", "128"), 300, 1),
                Part("generation", bench("bench_generation.py", "--fast", "--bytes", "64"), 300, 1),
                train_part("train_deepspeed", run_dir / "deepspeed", device, 10, 300, 1, True)]
    cuda = ["--device", "cuda"]
    mfu = ["--sizes", "large", "--seq-len", "8192", "--batch", "8", "--repeats", "3",
           "--budget", "20", "--pairs", "3"]
    contexts = ["--size", "small", "--contexts", "1024,4096,16384,65536", "--budget", "10",
                "--repeats", "2", "--point-timeout", "60"]
    return [Part("mfu", bench("bench_mfu.py", *cuda, *mfu), 100, 45),
            train_part("train", run_dir / "simple", "cuda", 300, 45, 30),
            Part("throughput", bench("bench_throughput.py", *cuda, *contexts), 110, 60),
            Part("mfu_compiled", bench("bench_mfu.py", *cuda, *mfu, "--compile"), 120, 60),
            Part("generation", bench("bench_generation.py", *cuda, "--size", "small", "--bytes",
                                     "8192"), 45, 30),
            train_part("train_deepspeed", run_dir / "deepspeed", "cuda", 100, 60, 40, True),
            Part("long_context", bench("bench_throughput.py", *cuda, "--size", "small",
                                       "--contexts", "262144,1048576", "--batch-bytes", "1048576",
                                       "--megabyte-only", "--budget", "10", "--repeats", "2",
                                       "--point-timeout", "45"), 60, 40),
            Part("throughput_compiled", bench("bench_throughput.py", *cuda, *contexts, "--compile"),
                 150, 90)]


def run_part(part: Part, timeout: float) -> Dict[str, Any]:
    """Run one part; its JSON (the last stdout line of a benchmark) or, for the trainer, the
    tail of its log, with ``status`` and ``seconds``."""
    cmd = [sys.executable, *part.command]
    print(f"running {part.name} (at most {timeout:.0f} s): " + " ".join(cmd), file=sys.stderr)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    # Its own process group, so a timeout also stops what it started (torchrun's workers).
    proc = subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()  # what it said before it was stopped
        return {"part": part.name, "status": "timeout", "seconds": time.perf_counter() - t0,
                "stderr_tail": stderr[-3000:]}
    seconds = time.perf_counter() - t0
    sys.stderr.write(stderr[-4000:])
    if proc.returncode:
        return {"part": part.name, "status": f"failed ({proc.returncode})", "seconds": seconds,
                "stderr_tail": stderr[-3000:]}
    if part.run_dir is not None:  # the trainer: its results.json and the end of its log
        results = part.run_dir / "results.json"
        return {"part": part.name, "status": "ok", "seconds": seconds,
                "train_results": json.loads(results.read_text()) if results.is_file() else None,
                "log_tail": (stdout + stderr)[-3000:]}
    try:
        out = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"part": part.name, "status": "failed (no JSON on stdout)", "seconds": seconds,
                "stdout_tail": stdout[-3000:], "stderr_tail": stderr[-3000:]}
    return {"part": part.name, "status": "ok", "seconds": seconds, **out}


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run_all(parts: Sequence[Part], budget: float, output: Path, header: Dict[str, Any]) -> Dict[str, Any]:
    """Run ``parts`` in order within ``budget`` seconds, rewriting ``output`` after each."""
    start = time.perf_counter()
    results: Dict[str, Any] = {**header, "runs": []}
    for part in parts:
        left = budget - (time.perf_counter() - start)
        if left < part.minimum:
            results["runs"].append({"part": part.name, "status": "skipped (time budget)",
                                    "seconds": 0.0})
        else:
            results["runs"].append(run_part(part, min(part.share, left)))
        write_json(output, results)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device there is")
    ap.add_argument("--minutes", type=float, default=8.0,
                    help="time budget of the whole run (parts that no longer fit are skipped)")
    ap.add_argument("--output", default=str(HERE / "results" / "gpu.json"))
    ap.add_argument("--run-dir", default=None,
                    help="where the trainer part writes its run (default: a temporary folder)")
    args = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        run_dir = Path(args.run_dir or Path(tmp) / "train")
        header = {"smoke": args.smoke, "minutes": args.minutes, "torch": torch.__version__,
                  "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}
        results = run_all(plan(args.smoke, device, run_dir), args.minutes * 60,
                          Path(args.output), header)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
