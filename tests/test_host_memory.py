"""CPU processes keep freed activation memory for the next step (train.host_memory_reuse)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from pretrain.config import CONFIG_DIR, derive, load_config
from tests.conftest import ROOT

# A step's worth of large activations: allocated, written, freed, eight times; prints the minor
# page faults of the last four rounds (glibc's heap takes a few rounds to settle: the steady state
# is what a training run lives in).
PROBE = """
import resource, sys, torch
from pretrain.runtime.host_memory import reuse_freed_host_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_host_memory()
faults = 0
for i in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    acts = [torch.ones(16 << 20) for _ in range(4)]  # 4 x 64 MiB, above glibc's mmap ceiling
    del acts
    faults += (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) if i >= 4 else 0
print(faults)
"""


def page_faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], cwd=ROOT, text=True,
                         capture_output=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_activations_are_reused_instead_of_page_faulted_again():
    """With glibc's defaults every 64 MiB tensor is a fresh mmap (~16K faults of 4 KiB pages,
    fewer with transparent huge pages); with the setting, rounds 5-8 reuse earlier rounds' memory."""
    default, reuse = page_faults("default"), page_faults("reuse")
    assert default > 1000, default
    assert reuse < default / 20, (reuse, default)


def test_the_trainer_applies_it_on_cpu_unless_switched_off(tmp_path, monkeypatch):
    import pretrain.runtime.host_memory as host_memory
    import pretrain.training.trainer as trainer_module

    calls = []
    monkeypatch.setattr(host_memory, "reuse_freed_host_memory", lambda: calls.append(1) or True)
    for flag, expected in (("true", 1), ("false", 0)):
        calls.clear()
        cfg = load_config(CONFIG_DIR / "debug.yaml", [
            f"run_dir={tmp_path / flag}", "logging.tensorboard=false", "train.device=cpu",
            f"train.host_memory_reuse={flag}"])
        trainer_module.Trainer(cfg, derive(cfg))
        assert len(calls) == expected, (flag, calls)
