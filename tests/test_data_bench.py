"""bench/bench_data.py runs in its fast mode and reports every field."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_data_fast_mode_reports_all_fields():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_data.py"), "--fast"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object on stdout
    out = json.loads(lines[0])
    for key in ("prep_mb_per_s", "stock_webdataset_mb_per_s", "loader_mb_per_s", "loader_workers_mb_per_s",
                "loader_vs_stock", "loader_vs_stock_median_round", "meets_target", "train_step",
                "loader_over_train_step", "input_bytes", "train_shards"):
        assert key in out, key
    assert out["prep_mb_per_s"] > 0 and out["stock_webdataset_mb_per_s"] > 0 and out["loader_mb_per_s"] > 0
    assert out["loader_over_train_step"] > 10  # the loader is far from being the bottleneck
    assert "loader / stock" in proc.stderr
