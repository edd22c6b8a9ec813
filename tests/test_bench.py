"""Every benchmark script runs in its fast mode and its JSON has every field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_bench(*args: str, timeout: int = 600) -> dict:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, text=True, capture_output=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_throughput_fast():
    out = run_bench("bench/bench_throughput.py", "--fast")
    assert out["benchmark"] == "throughput" and [p["seq_len"] for p in out["points"]] == [128, 512]
    for point in out["points"]:
        for arch in ("megabyte", "transformer"):
            r = point[arch]
            assert r["status"] == "ok"
            for key in ("bytes_per_s", "seconds_per_step", "params", "block_params",
                        "peak_memory_gb", "train_flops_per_byte"):
                assert r[key] > 0, key
        for key in ("measured_ratio", "flops_ratio", "efficiency"):
            assert point[key] > 0
    # Equal parameters in the transformer blocks (within 5%).
    mb, tf = out["points"][0]["megabyte"], out["points"][0]["transformer"]
    assert abs(mb["block_params"] - tf["block_params"]) / mb["block_params"] < 0.05


def test_bench_mfu_fast():
    out = run_bench("bench/bench_mfu.py", "--fast")
    assert out["peak_flops"] > 0 and out["results"]
    r = out["results"][0]
    for key in ("mfu", "bytes_per_s", "seconds_per_step"):
        assert r[key] > 0
    for level in ("global", "local"):
        assert 0 < r[level]["share_of_flops"] < 1 and r[level]["mfu"] > 0
    assert r["global"]["share_of_flops"] + r["local"]["share_of_flops"] < 1


def test_bench_generation_fast():
    out = run_bench("bench/bench_generation.py", "--fast", "--bytes", "128")
    for key in ("megabyte_cached", "megabyte_uncached", "transformer_cached"):
        assert out[key]["bytes"] == 127 and out[key]["bytes_per_s"] > 0
    assert out["cache_speedup"] > 0 and out["megabyte_vs_transformer"] > 0


@pytest.mark.parametrize("script", ["bench_throughput.py", "bench_mfu.py", "bench_generation.py",
                                    "gpu_bench.py"])
def test_bench_help(script):
    proc = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT, text=True,
                          capture_output=True)
    assert proc.returncode == 0 and "usage" in proc.stdout


def test_gpu_script_smoke_on_cpu(tmp_path):
    out = run_bench("bench/gpu_bench.py", "--smoke", "--output", str(tmp_path / "gpu.json"))
    assert [r.get("benchmark") for r in out["runs"]] == ["throughput", "mfu", "generation"]
    assert json.loads((tmp_path / "gpu.json").read_text())["smoke"] is True
