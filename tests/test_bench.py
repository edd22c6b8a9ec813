"""Every benchmark script runs in its fast mode; its JSON fields agree with each other and
with the formulas they come from (ratios, MFU, FLOP shares, parameter counts)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Optional

import pytest

from data_prep.vocab import ByteVocab
from pretrain.model import flops_per_byte
from pretrain.model.flops import executed_flops_per_byte
from tests.conftest import ROOT

VOCAB = ByteVocab()


def run_bench(*args: str, timeout: int = 600, threads: Optional[int] = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, text=True, capture_output=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_common():
    """bench/common.py (the benchmark size classes), loaded without putting bench/ on sys.path."""
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def non_block_params(cfg) -> int:
    """Parameters outside the transformer stacks, by hand: embeddings, positions, pads, w_GL."""
    V, T = VOCAB.vocab_size, cfg.seq_len
    if cfg.arch == "transformer":
        return V * cfg.global_model.dim + T * cfg.global_model.dim  # tied head adds nothing
    D, D_L = cfg.global_model.dim, cfg.local_model.dim
    D_G = D // cfg.patch_size
    return V * D_G + T * D_G + D + D_G * D_L + V * D_L + D_L


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return a == pytest.approx(b, rel=rel)


def test_bench_throughput_fast():
    out = run_bench("bench/bench_throughput.py", "--fast")
    assert out["benchmark"] == "throughput" and [p["seq_len"] for p in out["points"]] == [128, 512]
    common = bench_common()
    assert out["batch_bytes"] == 512  # the largest context
    for point in out["points"]:
        T = point["seq_len"]
        for arch in ("megabyte", "transformer"):
            r = point[arch]
            cfg = common.model_config(arch, out["size"], T)
            assert r["status"] == "ok" and r["arch"] == arch and r["seq_len"] == T
            assert r["batch"] == max(1, out["batch_bytes"] // T)
            assert r["seconds_per_step"] > 0 and r["peak_memory_gb"] > 0
            # bytes/s is the bytes of one step over the median step time.
            assert close(r["bytes_per_s"], r["batch"] * T / r["seconds_per_step"]), r
            assert r["train_flops_per_byte"] == flops_per_byte(cfg, 256, training=True)
            assert r["executed_train_flops_per_byte"] == executed_flops_per_byte(cfg, 256, training=True)
            assert r["params"] - r["block_params"] == non_block_params(cfg), r
        mb, tf = point["megabyte"], point["transformer"]
        assert close(point["measured_ratio"], mb["bytes_per_s"] / tf["bytes_per_s"])
        assert close(point["flops_ratio"], tf["train_flops_per_byte"] / mb["train_flops_per_byte"])
        assert close(point["efficiency"], point["measured_ratio"] / point["flops_ratio"])
        # efficiency_causal: the same measured ratio over the ratio of the work actually done.
        assert close(point["executed_flops_ratio"], tf["executed_train_flops_per_byte"]
                     / mb["executed_train_flops_per_byte"])
        assert close(point["efficiency_causal"], point["measured_ratio"] / point["executed_flops_ratio"])
        # Fewer FLOPs per byte for MEGABYTE, and its advantage grows with the context.
        assert point["flops_ratio"] > 1
    short, long = out["points"]
    assert long["flops_ratio"] > short["flops_ratio"]
    for arch in ("megabyte", "transformer"):
        # Block parameters do not depend on the context; only the position tables grow.
        assert short[arch]["block_params"] == long[arch]["block_params"]
    # Equal parameters in the transformer blocks (within 5%).
    mb, tf = short["megabyte"], short["transformer"]
    assert abs(mb["block_params"] - tf["block_params"]) / mb["block_params"] < 0.05


def check_mfu_output(out: dict) -> None:
    """bench_mfu's JSON: MFU = work-done FLOP/s over one shared peak, which is the matmul probe
    raised to the best FLOP/s achieved in the run, so no MFU exceeds 1."""
    peak = out["peak_flops"]
    assert 0 < out["peak_probe_flops"] <= peak
    r = out["results"][0]
    cfg = bench_common().model_config("megabyte", r["size"], r["seq_len"])
    fpb = executed_flops_per_byte(cfg, 256, training=True)
    assert r["train_flops_per_byte"] == flops_per_byte(cfg, 256, training=True) > fpb
    n_bytes = r["batch"] * r["seq_len"]
    assert close(r["bytes_per_s"], n_bytes / r["seconds_per_step"])
    assert close(r["mfu"], fpb * r["bytes_per_s"] / peak)
    assert close(r["mfu_paper_count"], r["train_flops_per_byte"] * r["bytes_per_s"] / peak)
    achieved = [r["achieved_flops"], r["global"]["achieved_flops"], r["local"]["achieved_flops"]]
    assert peak == max([out["peak_probe_flops"], *achieved])
    for level in ("global", "local"):
        x = r[level]
        assert close(x["mfu"], x["share_of_flops"] * fpb * n_bytes / x["seconds"] / peak), level
    assert all(0 < m <= 1 for m in (r["mfu"], r["global"]["mfu"], r["local"]["mfu"]))
    # Paired MFU: one probe before each timed step, the median of the pairs' ratios (each <= 1).
    assert len(r["probes"]) == len(r["mfu_per_pair"]) > 0
    assert all(0 < m <= 1 for m in r["mfu_per_pair"])
    assert close(r["mfu_paired"], statistics.median(r["mfu_per_pair"]))
    # The level shares by hand (3x forward, causal attention at its mean key count), and with
    # the rest of the step (w_GL projection and tied output head) they add up to the whole.
    P, K = cfg.patch_size, cfg.seq_len // cfg.patch_size
    g, loc = cfg.global_model, cfg.local_model
    D_G = g.dim // P

    def layer(dim: int, keys: float) -> float:
        return 2 * ((4 + 2 * cfg.mlp_ratio) * dim * dim + 2 * dim * keys)

    global_share = 3 * g.layers * layer(g.dim, (K + 1) / 2) / P / fpb
    local_share = 3 * loc.layers * layer(loc.dim, (P + 1) / 2) / fpb
    rest_share = 3 * (2 * D_G * loc.dim + 2 * loc.dim * 256) / fpb
    assert close(r["global"]["share_of_flops"], global_share)
    assert close(r["local"]["share_of_flops"], local_share)
    assert close(r["global"]["share_of_flops"] + r["local"]["share_of_flops"] + rest_share, 1.0)
    assert r["local"]["share_of_flops"] > r["global"]["share_of_flops"]  # local dominates


def test_bench_mfu_fast():
    out = run_bench("bench/bench_mfu.py", "--fast")
    assert [r["size"] for r in out["results"]] == ["tiny"] and out["compile"] is None
    assert out["optimizer"] == "AdamW fused"  # the trainer's AdamW
    assert out["peak_source"].startswith("peak ") and (
        "(fp32 matmul, measured)" in out["peak_source"] or "above the matmul probe" in out["peak_source"])
    check_mfu_output(out)


def test_bench_generation_fast():
    # One thread and the best of 3 runs (--fast): byte-by-byte decoding of a tiny model is
    # thousands of tiny ops, and two threads per process beside the other xdist worker on a
    # 2-core CI machine made one single run read a cache speed-up of 0.78 (usually ~3).
    out = run_bench("bench/bench_generation.py", "--fast", "--bytes", "128", threads=1)
    n = out["bytes"]
    assert n == 128 and out["repeats"] == 3
    for key in ("megabyte_cached", "megabyte_uncached", "transformer_cached"):
        r = out[key]
        assert r["bytes"] == n - 1  # a 1-byte prompt, then n - 1 generated bytes
        assert close(r["bytes_per_s"], r["bytes"] / r["seconds"]), key
    unc = out["megabyte_uncached"]
    assert unc["mode"] == "full" and unc["measured_steps"] == n - 1  # --fast times every length
    mb, tf = out["megabyte_cached"], out["transformer_cached"]
    # Speed-up of the cache = uncached time / cached time for the same bytes.
    assert close(out["cache_speedup"], unc["seconds"] / mb["seconds"])
    assert close(out["megabyte_vs_transformer"], tf["seconds"] / mb["seconds"])
    # One full forward pass per byte (O(n^2)) is slower than the hierarchical cache.
    assert out["cache_speedup"] > 1
    common = bench_common()
    for arch in ("megabyte", "transformer"):
        cfg = common.model_config(arch, out["size"], n)
        assert out[f"{arch}_params"] - out[f"{arch}_block_params"] == non_block_params(cfg), arch


def test_bench_compile_fast():
    """Eager and compiled steps alternate; the speed-up is eager / compiled of the medians."""
    out = run_bench("bench/bench_compile.py", "--fast")
    assert out["backend"] == "aot_eager" and len(out["results"]) == 1
    r = out["results"][0]
    assert r["arch"] == "megabyte" and r["rounds"] == 2
    assert len(r["eager_times"]) == len(r["compiled_times"]) == 2
    assert close(r["eager_seconds"], sorted(r["eager_times"])[1] / 2 + sorted(r["eager_times"])[0] / 2)
    assert close(r["speedup"], r["eager_seconds"] / r["compiled_seconds"])
    assert r["compile_seconds"] > 0  # the compiled model's first step traced and compiled


def test_compare_trees_fast():
    """Two trees (here the same one twice) alternate; speed-up and MFU follow from the times."""
    out = run_bench("bench/compare_trees.py", str(ROOT), str(ROOT), "--fast")
    s = out["sizes"]["tiny"]
    assert len(s["seconds"]["before"]) == len(s["seconds"]["after"]) == 1
    assert close(s["speedup"], s["best_seconds"]["before"] / s["best_seconds"]["after"])
    assert s["optimizer"]["after"]["fused"] is True
    assert 0 < s["mfu"]["after"] <= 1 and out["peak_flops"] >= out["probe_flops"]


def test_bench_host_memory_fast():
    """Each setting in its own processes, alternated; the speed-up is the median of the rounds'
    default / reuse ratios (the driver checks that each worker ran with the setting it was given)."""
    out = run_bench("bench/bench_host_memory.py", "--fast")
    assert out["machine"]["host_memory_reuse"] is True  # the driver runs as the trainer does
    (p,) = out["points"]
    assert (p["arch"], p["seq_len"], p["batch"]) == ("megabyte", 256, 32)
    ratios = [d / r for d, r in zip(p["seconds_default"], p["seconds_reuse"])]
    assert len(ratios) == 2 and all(close(a, b) for a, b in zip(ratios, p["speedup_per_round"]))
    assert close(p["speedup"], sum(ratios) / 2)
    assert p["peak_rss_gb_default"] > 0 and p["peak_rss_gb_reuse"] > 0


def test_bench_window_alternates_both_paths():
    """Banded and masked steps of the windowed Transformer alternate; the banded path is taken
    only once the context spans three windows; the speed-up is masked / banded of the medians."""
    out = run_bench("bench/bench_window.py", "--contexts", "96,144", "--window", "48",
                    "--pairs", "2", "--batch-bytes", "256")
    short, long = out["results"]
    assert (short["banded_path"], long["banded_path"]) == (False, True)
    for r in (short, long):
        assert len(r["times"]["banded"]) == len(r["times"]["masked"]) == 2
        assert close(r["speedup"], r["masked_seconds"] / r["banded_seconds"])
    assert long["batch"] == 1


@pytest.mark.parametrize("script", ["bench_throughput.py", "bench_mfu.py", "bench_generation.py",
                                    "bench_compile.py", "compare_trees.py", "gpu_bench.py",
                                    "gpu_table.py", "profile_step.py",
                                    "build_memory.py", "bench_host_memory.py",
                                    "bench_window.py"])
def test_bench_help(script):
    proc = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT, text=True,
                          capture_output=True)
    assert proc.returncode == 0 and "usage" in proc.stdout


def test_profile_replay_times_every_op_group_of_a_real_step():
    """profile_step --replay: one row per op group (matmuls by shape), the optimizer's in-place
    update among them, and the rows' sum against the measured step."""
    proc = subprocess.run([sys.executable, "bench/profile_step.py", "--sizes", "tiny", "--seq-len",
                           "256", "--steps", "2", "--replay", "--top", "100"], cwd=ROOT, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| aten.")]
    assert any(r.startswith("| aten.mm.default [256, 128] [128, 512] |") for r in rows), rows
    assert any("_fused_adamw_" in r for r in rows)
    total = re.search(r"\| all (\d+) op groups \| (\d+) \| ([\d.]+) \|", proc.stdout)
    assert total and int(total.group(1)) == len(rows)
    step_ms = float(re.search(r"eager: ([\d.]+) ms per step", proc.stdout).group(1))
    rest = float(re.search(r"\| not in any op \| \| (-?[\d.]+) \|", proc.stdout).group(1))
    assert abs(float(total.group(3)) + rest - step_ms) < 0.2


def test_gpu_script_smoke_on_cpu(tmp_path):
    """Every part of the GPU run, small: the benchmarks (MFU through the compiled path) and the
    trainer both ways (single-process loop, DeepSpeed engine under launch.local)."""
    out = run_bench("bench/gpu_bench.py", "--smoke", "--output", str(tmp_path / "gpu.json"),
                    "--run-dir", str(tmp_path / "train"))
    runs = {r["part"]: r for r in out["runs"]}
    assert list(runs) == ["mfu", "train", "throughput", "generation", "train_deepspeed"]
    assert all(r["status"] == "ok" for r in runs.values()), runs
    assert [runs[p]["benchmark"] for p in ("mfu", "throughput", "generation")] == [
        "mfu", "throughput", "generation"]
    assert runs["mfu"]["compile"] == "aot_eager"  # the smoke's MFU run takes the compiled path
    check_mfu_output(runs["mfu"])
    assert runs["train"]["train_results"]["steps"] == 20
    assert runs["train_deepspeed"]["train_results"]["steps"] == 10
    assert runs["train_deepspeed"]["train_results"]["world_size"] == 1
    assert json.loads((tmp_path / "gpu.json").read_text()) == out
    tables = subprocess.run([sys.executable, "bench/gpu_table.py", str(tmp_path / "gpu.json")],
                            cwd=ROOT, text=True, capture_output=True, check=True).stdout
    assert "| mfu | tiny | 2M | 512 | 1 |" in tables  # the README's tables from that JSON
    assert "| train_deepspeed | 10 |" in tables and "| 128 |" in tables


def test_gpu_script_keeps_to_its_time_budget_and_writes_after_every_part(tmp_path):
    """A part runs for at most what is left of the budget (then ``timeout``), a part whose
    minimum no longer fits is skipped, and the JSON on disk holds every part finished so far."""
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu_bench.py")
    gpu_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_bench)
    output = tmp_path / "gpu.json"
    probe = ("import json, pathlib; p = pathlib.Path({!r}); "
             "print(json.dumps({{'on_disk': len(json.loads(p.read_text())['runs']) if p.exists() else 0}}))")
    parts = [gpu_bench.Part("first", ["-c", probe.format(str(output))], 30, 1),
             gpu_bench.Part("second", ["-c", probe.format(str(output))], 30, 1),
             gpu_bench.Part("slow", ["-c", SLEEPS_WITH_A_CHILD.format(pid_file=str(tmp_path / "pid"))],
                            30, 1),
             gpu_bench.Part("late", ["-c", "print('{}')"], 30, 5)]
    mute = gpu_bench.run_part(gpu_bench.Part("mute", ["-c", "print('no json')"], 30, 1), 30)
    assert mute["status"] == "failed (no JSON on stdout)" and "no json" in mute["stdout_tail"]
    out = gpu_bench.run_all(parts, 8.0, output, {"smoke": True})
    seen = [(r["part"], r["status"]) for r in out["runs"]]
    assert seen == [("first", "ok"), ("second", "ok"), ("slow", "timeout"),
                    ("late", "skipped (time budget)")], seen
    assert [r.get("on_disk") for r in out["runs"][:2]] == [0, 1]
    assert out["runs"][2]["seconds"] < 8.0
    assert "started a child" in out["runs"][2]["stderr_tail"]  # what it said before it was stopped
    assert json.loads(output.read_text()) == out
    child = int((tmp_path / "pid").read_text())  # what the timed-out part started is gone too
    time.sleep(0.5)
    assert process_state(child) in (None, "Z"), process_state(child)  # gone, or dead unreaped


def process_state(pid: int) -> Optional[str]:
    """The state letter of process ``pid`` (R, S, Z, ...), None when there is no such process."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


# A part that starts a child (as launch.local starts torchrun) and sleeps.
SLEEPS_WITH_A_CHILD = """
import pathlib, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
pathlib.Path({pid_file!r}).write_text(str(child.pid))
print("started a child", file=sys.stderr, flush=True)
time.sleep(120)
"""


def test_distributed_build_keeps_no_whole_model_per_rank(tmp_path):
    """bench.build_memory on 4 CPU ranks, TP=2 x DP=2 ZeRO-3, a 0.41 GB model: the old build
    (whole reference model + clone on every rank) adds about 2 model copies per rank; the new one
    about its quarter share plus a fixed overhead. Measured at 1 GB (README): 0.37 x vs 2.0 x."""
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, "-m", "bench.build_memory", "--dim", "1024", "--layers",
                           "8", "--json", str(out)], cwd=ROOT, text=True, capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    size, worst = r["model_bytes"], r["worst_extra"]
    assert size > 0.4e9
    assert worst["old"] >= 1.8 * size, r["worst_extra"]
    assert worst["new"] <= 0.6 * size, r["worst_extra"]
    assert r["ratio_new_old"] == pytest.approx(worst["new"] / worst["old"])
    assert r["ratio_new_old"] <= 0.3
    # Each rank holds its ZeRO-3 share: 1/4 of the global stack (TP x DP), 1/2 of the rest (the
    # local model and embeddings are replicated over TP, partitioned over DP).
    for rank in r["ranks"]["new"]:
        assert size / 4 <= rank["held_bytes"] <= 0.3 * size, rank
