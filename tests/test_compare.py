"""The compute-matched comparison: matched configs, and the report on a small prepared corpus."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.comparison.matching import SIZES, match_transformer, megabyte_model
from pretrain.comparison.report import bytes_per_word, compressor_bpb
from pretrain.model import flops_per_byte
from tests.conftest import ROOT


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("bytes_per_token", [1.0, 2.5, 3.7])
def test_matched_configs_within_five_percent(size, bytes_per_token):
    mb = megabyte_model(size)
    target = flops_per_byte(mb, 259, training=True)
    vocab = "bytes" if bytes_per_token == 1.0 else "sentencepiece"
    vsize = 259 if vocab == "bytes" else 8003
    ctx = 1024 if vocab == "bytes" else int(1024 / bytes_per_token)
    tf = match_transformer(target, ctx, vocab, None, vsize, bytes_per_token, 2 * mb.global_model.dim)
    got = flops_per_byte(tf, vsize, bytes_per_token, training=True)
    assert abs(got - target) / target <= 0.05, (size, got, target, tf.global_model)


def test_reference_compressors_and_words():
    data = (b"the quick brown fox jumps over the lazy dog " * 200)
    refs = compressor_bpb(data)
    assert 0 < refs["gzip -9"] < 1 and 0 < refs["xz -6"] < 1  # very repetitive text
    assert bytes_per_word(data) == pytest.approx(len(data) / 1800)
    assert bytes_per_word(bytes(range(256)) * 4) is None  # not UTF-8
    assert bytes_per_word(b"x" * 100 + b" " + b"y" * 100) is None  # not word-like


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    corpus = out / "corpus"
    corpus.mkdir()
    stdlib = Path(os.__file__).parent
    for name in ("textwrap.py", "argparse.py", "codecs.py", "csv.py", "string.py", "shlex.py",
                 "glob.py", "fnmatch.py", "difflib.py", "pprint.py", "random.py", "calendar.py",
                 "locale.py", "gettext.py", "heapq.py", "bisect.py", "copy.py", "enum.py",
                 "dataclasses.py", "typing.py", "json/decoder.py", "json/encoder.py"):
        (corpus / name.replace("/", "_")).write_bytes((stdlib / name).read_bytes())
    cmd = [sys.executable, "-m", "pretrain.compare", str(corpus), "--out", str(out / "cmp"),
           "--budget-bytes", "16384", "--vocab-size", "1000", "--eval-bytes", "3000",
           "--val-fraction", "0.25",
           "--set", "train.eval_interval=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    second = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    return out / "cmp", json.loads(first.stdout.strip().splitlines()[-1]), second


def test_report_and_plots(compared):
    out, summary, _ = compared
    report = (out / "report.md").read_text()
    for name in ("megabyte", "transformer_bytes", "transformer_subword", "gzip -9", "xz -6"):
        assert f"| {name} |" in report
    for png in summary["plots"]:
        data = Path(png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    flops = [m["train_flops_per_byte"] for m in summary["models"].values()]
    assert max(flops) / min(flops) <= 1.05 * 1.05


def test_numbers_equal_the_evaluate_command(compared):
    out, summary, _ = compared
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, model in summary["models"].items():
        proc = subprocess.run([sys.executable, "-m", "pretrain.evaluate", "--checkpoint",
                               model["run_dir"], "--files", str(out / "heldout.bin"), "--modes",
                               ",".join(model["eval"])], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout)["results"]
        for mode, r in model["eval"].items():
            assert got[mode]["bpb"] == pytest.approx(r["bpb"], rel=1e-9), (name, mode)
            assert got[mode]["bytes"] == summary["heldout_bytes"]


def test_readme_evaluate_and_generate_commands_on_a_compare_run(compared):
    """The README's commands on ``OUT/runs/NAME`` (a run trained on shards): evaluate scores the
    run's own validation split without --files (the same bytes compare held out), generate runs."""
    out, summary, _ = compared
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = out / "runs" / "megabyte"
    assert summary["models"]["megabyte"]["run_dir"] == str(run)
    proc = subprocess.run([sys.executable, "-m", "pretrain.evaluate", "--checkpoint", str(run),
                           "--modes", "basic,strided", "--max-bytes", str(summary["heldout_bytes"])],
                          cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["source"] == "held-out split of data.source=shards"
    for mode in ("basic", "strided"):
        assert got["results"][mode]["bpb"] == pytest.approx(
            summary["models"]["megabyte"]["eval"][mode]["bpb"], rel=1e-9)
    proc = subprocess.run([sys.executable, "-m", "pretrain.generate", "--checkpoint", str(run),
                           "--prompt", "def main(", "--max-new", "300", "--temperature", "0.8",
                           "--top-p", "0.95"], cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("def main(") and "generated " in proc.stderr


def test_rerun_skips_finished_runs(compared):
    _, _, second = compared
    assert second.stderr.count("finished earlier") == 3
    assert not re.search(r": training \(\d+ steps\)", second.stderr)


def test_slurm_job_array_dry_run(compared, tmp_path):
    out, _, _ = compared
    cmd = [sys.executable, "-m", "pretrain.compare", "--data", str(out / "data"), "--out",
           str(tmp_path / "cmp"), "--budget-bytes", "16384", "--slurm-dry-run",
           "--set", "slurm.cpus_per_task=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["submitted"] is False
    assert "#SBATCH --array=0-2" in result["launch"]
    for name in ("megabyte", "transformer_bytes", "transformer_subword"):
        assert (tmp_path / "cmp" / "configs" / f"{name}.yaml").is_file()


def compare_again(out: Path, tmp_path: Path, budget: str, *extra: str):
    """``pretrain.compare`` on the prepared data of ``compared`` into ``tmp_path/cmp``; the
    finished process and its JSON summary."""
    cmd = [sys.executable, "-m", "pretrain.compare", "--data", str(out / "data"), "--out",
           str(tmp_path / "cmp"), "--budget-bytes", budget, "--eval-bytes", "3000", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def test_compare_on_two_processes_ends_with_the_report_and_the_same_numbers(compared, tmp_path):
    """``--nproc 2``: every model trains under torchrun (the DeepSpeed engine, DP=2), is read back
    from its DeepSpeed checkpoint and reported; the numbers are the one-process run's (the same
    global batches, split over two data-parallel ranks)."""
    out, summary, _ = compared
    _, two = compare_again(out, tmp_path, "16384", "--nproc", "2", "--set", "train.eval_interval=1")
    report = (tmp_path / "cmp" / "report.md").read_text()
    for name in ("megabyte", "transformer_bytes", "transformer_subword"):
        assert f"| {name} |" in report
        ckpt = Path(two["models"][name]["run_dir"]) / "checkpoints"
        assert list(ckpt.glob("step_*/rank_00001.pt")), f"{name} did not train on 2 ranks"
        for mode, r in summary["models"][name]["eval"].items():
            got = two["models"][name]["eval"][mode]["bpb"]
            assert got == pytest.approx(r["bpb"], rel=1e-4), (name, mode, got, r["bpb"])


def test_a_run_stopped_by_a_time_limit_is_resumed_to_its_budget(compared, tmp_path):
    """Budgets are budgets: compare's runs carry no wall-clock limit; with one forced on
    (train.max_minutes tiny) every run stops early, is resumed until it reaches its step budget,
    and the report still compares models that saw the same bytes."""
    out, summary, _ = compared
    proc, got = compare_again(out, tmp_path, "32768", "--set", "train.max_minutes=0.02",
                              "--set", "checkpoint.interval=2")
    assert "(max_minutes); resuming" in proc.stderr, proc.stderr[-3000:]
    steps = {name: m["training"]["steps"] for name, m in got["models"].items()}
    assert len(set(steps.values())) == 1 and min(steps.values()) == 8, steps
    for name in got["models"]:
        cfg = (tmp_path / "cmp" / "configs" / f"{name}.yaml").read_text()
        assert "max_minutes: 0.02" in cfg  # the user's limit is kept; it only pauses the run
    # Without --set, the planned runs have no time limit at all.
    plain = (out / "configs" / "megabyte.yaml").read_text()
    assert "max_minutes: 0.0" in plain
