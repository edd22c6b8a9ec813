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


LATIN1 = "# caf\u00e9 au lait (Latin-1)\n".encode("latin-1")


def test_text_share_is_measured_across_the_whole_train_split(tmp_path):
    """Text files first, random bytes after (stored order): a sample of the first bytes would
    call it text; the rule samples every shard and does not."""
    import random

    from data_prep.bytes import PrepOptions, prepare
    from data_prep.shards import iter_documents, read_manifest
    from pretrain.comparison.corpus import TEXT_SHARE_MIN, corpus_kind, text_share

    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(0)
    prose = Path(os.__file__).read_text()
    for i in range(40):
        (src / f"a{i:02d}.txt").write_text(f"# part {i}\n" + prose[i * 1000:(i + 1) * 1000])
        (src / f"b{i:02d}.bin").write_bytes(bytes(rng.randrange(256) for _ in range(1000)))
    out = tmp_path / "ds"
    prepare([src], out, PrepOptions(shard_bytes=20000, val_fraction=0.1, order="sorted"),
            progress=False)
    docs = [p for _, p in iter_documents(out, "train", read_manifest(out))]
    first = b"".join(docs)[:20000]
    assert docs[0].startswith(b"# part") and text_share(first) == 1.0  # the first bytes: text
    kind = corpus_kind(out, 20000)
    assert kind.text_share < TEXT_SHARE_MIN and not kind.is_text, kind
    assert 15000 < kind.sampled_bytes < 25000


def test_text_share_rule():
    """Text keeps the subword baseline (a few Latin-1 bytes included); audio-like and random
    bytes do not (pretrain.comparison.corpus)."""
    import math
    import random

    from pretrain.comparison.corpus import TEXT_SHARE_MIN, text_share

    prose = Path(os.__file__).read_bytes()
    assert text_share(prose) > 0.999
    assert text_share(prose + LATIN1 * 20) >= TEXT_SHARE_MIN
    rng = random.Random(0)
    assert text_share(bytes(rng.randrange(256) for _ in range(50_000))) < 0.6
    tone = bytes(int(128 + 100 * math.sin(i / 7) + rng.gauss(0, 3)) % 256 for i in range(50_000))
    assert text_share(tone) < TEXT_SHARE_MIN
    assert text_share(b"") == 1.0
    # The line states the final decision: text without token shards leaves the subword model out.
    from pretrain.comparison.corpus import CorpusKind

    kind = CorpusKind(0.999, 1000, 3)
    assert kind.describe().endswith("text: the subword baseline runs")
    no_tokens = kind.describe(has_tokens=False)
    assert "runs" not in no_tokens and no_tokens.endswith("left out: the prepared data has no "
                                                          "token shards")


@pytest.fixture(scope="session")
def compared(tmp_path_factory):
    """One compare run (and its rerun) on a small mixed corpus, built once per test session: the
    first xdist worker that needs it builds it under a file lock, the other reads its record."""
    from types import SimpleNamespace

    from filelock import FileLock

    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # the same in every worker of this run
    shared = (tmp_path_factory.getbasetemp().parent / f"compare-{run_id}" if run_id
              else tmp_path_factory.getbasetemp() / "compare-shared")
    shared.mkdir(parents=True, exist_ok=True)
    record = shared / "record.json"
    with FileLock(str(shared / "build.lock")):
        if not record.is_file():
            out, first, second = _run_compare_twice(shared)
            record.write_text(json.dumps({"out": str(out), "stdout": first.stdout,
                                          "second_stderr": second.stderr}))
    got = json.loads(record.read_text())
    summary = json.loads(got["stdout"].strip().splitlines()[-1])
    return Path(got["out"]), summary, SimpleNamespace(stderr=got["second_stderr"])


def _run_compare_twice(base: Path):
    out = base / "compare"
    corpus = out / "corpus"
    corpus.mkdir(parents=True)
    stdlib = Path(os.__file__).parent
    for name in ("textwrap.py", "argparse.py", "codecs.py", "csv.py", "string.py", "shlex.py",
                 "glob.py", "fnmatch.py", "difflib.py", "pprint.py", "random.py", "calendar.py",
                 "locale.py", "gettext.py", "heapq.py", "bisect.py", "copy.py", "enum.py",
                 "dataclasses.py", "typing.py", "json/decoder.py", "json/encoder.py"):
        # A mixed corpus: every file also holds a Latin-1 byte (not UTF-8). The subword baseline
        # still runs and scores those bytes through its byte-fallback pieces.
        (corpus / name.replace("/", "_")).write_bytes(LATIN1 + (stdlib / name).read_bytes())
    cmd = [sys.executable, "-m", "pretrain.compare", str(corpus), "--out", str(out / "cmp"),
           "--budget-bytes", "16384", "--vocab-size", "1000", "--eval-bytes", "3000",
           "--val-fraction", "0.25",
           "--set", "train.eval_interval=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    second = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    return out / "cmp", first, second


def test_report_and_plots(compared):
    out, summary, _ = compared
    report = (out / "report.md").read_text()
    for name in ("megabyte", "transformer_bytes", "transformer_window", "transformer_subword",
                 "gzip -9", "xz -6"):
        assert f"| {name} |" in report
    assert summary["subword"] and 0.99 < summary["text_share"] < 1.0  # the Latin-1 bytes
    assert "printable UTF-8 text; text: the subword baseline runs" in report
    assert "| bpb basic (1x) | bpb sliding (2x) | bpb strided (2x) |" in report
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
        assert LATIN1 in (out / "heldout.bin").read_bytes()  # odd bytes scored by every model
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
    assert second.stderr.count("finished earlier") == 4
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
    assert "#SBATCH --array=0-3" in result["launch"]
    for name in ("megabyte", "transformer_bytes", "transformer_window", "transformer_subword"):
        assert (tmp_path / "cmp" / "configs" / f"{name}.yaml").is_file()


def test_models_option_names_what_it_cannot_do(compared, tmp_path):
    out, _, _ = compared
    for models, message in (("megabyte,gpt", "--models: unknown model(s) gpt; choose from megabyte"),):
        proc = subprocess.run([sys.executable, "-m", "pretrain.compare", "--data", str(out / "data"),
                               "--out", str(tmp_path / "cmp"), "--models", models], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                              capture_output=True, timeout=300)
        assert proc.returncode == 2 and f"error: {message}" in proc.stderr, proc.stderr[-2000:]


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
    names = ("megabyte", "transformer_window", "transformer_subword")  # (time: not the full one)
    _, two = compare_again(out, tmp_path, "16384", "--nproc", "2", "--set", "train.eval_interval=1",
                           "--models", ",".join(names))
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| transformer_bytes |" not in report
    for name in names:
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
                              "--set", "checkpoint.interval=2",
                              "--models", "megabyte,transformer_window")
    assert "(max_minutes); resuming" in proc.stderr, proc.stderr[-3000:]
    steps = {name: m["training"]["steps"] for name, m in got["models"].items()}
    assert set(steps) == {"megabyte", "transformer_window"}
    assert len(set(steps.values())) == 1 and min(steps.values()) == 8, steps
    for name in got["models"]:
        cfg = (tmp_path / "cmp" / "configs" / f"{name}.yaml").read_text()
        assert "max_minutes: 0.02" in cfg  # the user's limit is kept; it only pauses the run
    # Without --set, the planned runs have no time limit at all.
    plain = (out / "configs" / "megabyte.yaml").read_text()
    assert "max_minutes: 0.0" in plain


def write_wav_clips(root: Path, n: int, seconds: float = 0.6, rate: int = 8000) -> None:
    """Synthesized speech-like clips: tones with a wobbling pitch and noise, 16-bit mono WAV."""
    import wave

    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(n):
        t = np.arange(int(seconds * rate)) / rate
        pitch = 180 + 60 * i + 40 * np.sin(2 * np.pi * 3 * t)
        signal = 0.5 * np.sin(2 * np.pi * np.cumsum(pitch) / rate) + 0.05 * rng.standard_normal(t.size)
        with wave.open(str(root / f"clip_{i:02d}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())


def test_compare_on_audio_leaves_the_subword_model_out_with_one_line(tmp_path):
    """A folder of WAV clips is not text: the comparison says so once, before training, trains
    no tokenizer, and reports MEGABYTE against the byte baselines."""
    corpus = tmp_path / "clips"
    corpus.mkdir()
    write_wav_clips(corpus, 24)
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "pretrain.compare", str(corpus), "--out", str(out),
           "--budget-bytes", "8192", "--eval-bytes", "3000", "--val-fraction", "0.25"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not summary["subword"] and summary["text_share"] < 0.9
    assert "transformer_subword" not in summary["models"]
    assert set(summary["models"]) == {"megabyte", "transformer_bytes", "transformer_window"}
    left_out = [line for line in proc.stderr.splitlines() if "subword baseline is left out" in line]
    assert len(left_out) == 1, proc.stderr[-3000:]
    assert "UTF-8" not in proc.stderr.replace(left_out[0], "")  # no per-document warnings
    first_training = proc.stderr.index(": training (")
    assert proc.stderr.index(left_out[0]) < first_training  # known before any training
    assert not (out / "data" / "tokenizer.model").exists() and not (out / "data" / "tokens").exists()
    report = (out / "report.md").read_text()
    assert "| megabyte |" in report and "| transformer_subword |" not in report
    assert "not text: the subword baseline is left out" in report
    assert "Audio: mulaw8 samples at 8000 Hz" in report  # the clips became mu-law samples (data_prep.media)
    for png in summary["plots"]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_on_images_reports_bits_per_dimension(tmp_path):
    """A folder of PNG drawings: raw 64 x 64 RGB pixels (data_prep.media), no subword model, and
    the report says that bits per byte are bits per dimension here."""
    from PIL import Image, ImageDraw

    corpus = tmp_path / "images"
    corpus.mkdir()
    for i in range(16):
        img = Image.new("RGB", (80, 64), (20 * i % 256, 90, 160))
        draw = ImageDraw.Draw(img)
        draw.ellipse((5 + i, 8, 50 + i, 40 + i), fill=(250, 200 - 8 * i, 30))
        draw.rectangle((40, 30 + i, 70, 60), outline=(0, 0, 0), width=3)
        img.save(corpus / f"drawing_{i:02d}.png")
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "pretrain.compare", str(corpus), "--out", str(out),
           "--budget-bytes", "8192", "--eval-bytes", "3000", "--val-fraction", "0.25",
           "--models", "megabyte,transformer_window"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not summary["subword"]
    assert set(summary["models"]) == {"megabyte", "transformer_window"}  # as --models asked
    report = (out / "report.md").read_text()
    assert "bits per byte are bits per dimension" in report
    assert all(f"| {name} |" in report for name in summary["models"])


def test_lr_sweep_and_budgets_end_to_end(compared, tmp_path):
    """``--lr-sweep`` + ``--budgets`` on two models, a few steps: the LR sweep is one Slurm array
    (dry run); each model's LR is the best on selection bytes that are not the held-out bytes;
    the chosen point doubles as the 0.25x budget run; the report has the grid, the budgets, the
    crossover statement, the convergence verdicts and ``bpb_vs_budget.png``."""
    out, _, _ = compared
    sweep_args = ("--models", "megabyte,transformer_bytes", "--lr-sweep", "1e-3,4e-3",
                  "--budgets", "0.25x,1x", "--modes", "basic")
    dry = subprocess.run([sys.executable, "-m", "pretrain.compare", "--data", str(out / "data"),
                          "--out", str(tmp_path / "dry"), "--budget-bytes", "16384", *sweep_args,
                          "--slurm-dry-run"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         text=True, capture_output=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "#SBATCH --array=0-3" in json.loads(dry.stdout.strip().splitlines()[-1])["launch"]
    # (data.val_bytes: the runs' own periodic validation kept short; it feeds the slopes only.)
    proc, got = compare_again(out, tmp_path, "16384", *sweep_args, "--set", "train.eval_interval=1",
                              "--set", "data.val_bytes=4096")
    # 2 models x 2 LRs at 4096 bytes, then 16384 bytes each; the 4096-byte budget is the sweep's.
    assert len(re.findall(r": training \(\d+ steps\)", proc.stderr)) == 6, proc.stderr[-3000:]
    grid, chosen = got["lr_sweep"]["grid"], got["lr_sweep"]["chosen"]
    cmp = tmp_path / "cmp"
    report = (cmp / "report.md").read_text()
    for name in ("megabyte", "transformer_bytes"):
        best = min(grid[name], key=lambda lr: (grid[name][lr], float(lr)))
        assert f"{chosen[name]:g}" == best
        assert f"**{grid[name][best]:.4f}**" in report
        curve = got["budgets"][name]
        assert [c["bytes"] for c in curve] == [4096, 16384]
        assert curve[0]["run"] == f"{name}-4096B-lr{best}"  # the sweep's point, reused
        # Scored again on the held-out bytes, not on the selection bytes the choice used.
        assert curve[0]["bpb"] != pytest.approx(grid[name][best], abs=1e-6)
        assert got["models"][name]["lr"] == chosen[name]
        assert got["convergence"]["trends"][name] in ("still improving", "flat", "getting worse")
    selection, heldout = (cmp / "selection.bin").read_bytes(), (cmp / "heldout.bin").read_bytes()
    assert len(selection) == len(heldout) == 3000 and selection != heldout
    assert got["crossovers"][0].startswith("megabyte vs transformer_bytes: ")
    for section in ("## Convergence", "## Learning rates", "## Budgets",
                    "a shorter budget is not a prefix of a longer run", "![bpb_vs_budget]"):
        assert section in report
    assert any(line.startswith("* At this budget megabyte is ") for line in report.splitlines())
    assert (cmp / "bpb_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_diverged_sweep_point_is_left_out_and_never_retrained(compared, tmp_path):
    """An LR of 1e30 diverges for real (the first update makes the activations overflow): the
    sweep leaves that point out of the choice and its run says ``diverged``; a rerun, here or as
    a Slurm array, neither trains nor submits it again; ``--retry-diverged`` does."""
    out, _, _ = compared
    args = ("--models", "megabyte", "--lr-sweep", "1e-3,1e30", "--modes", "basic",
            "--set", "train.max_skipped_in_a_row=0")
    first, got = compare_again(out, tmp_path, "32768", *args)
    assert got["lr_sweep"]["grid"]["megabyte"]["1e+30"] is None, first.stderr[-3000:]
    assert got["lr_sweep"]["grid"]["megabyte"]["0.001"] < 8
    assert got["lr_sweep"]["chosen"]["megabyte"] == 1e-3
    bad = tmp_path / "cmp" / "runs" / "megabyte-8192B-lr1e+30"
    assert (bad / "stop_reason").read_text().strip() == "diverged"
    assert "megabyte-8192B-lr1e+30: training diverged" in first.stderr
    again, _ = compare_again(out, tmp_path, "32768", *args, "--slurm-dry-run")
    assert ": training (" not in again.stderr and "submitting" not in again.stderr
    assert "megabyte-8192B-lr1e+30: diverged in an earlier attempt" in again.stderr
    retry, dry = compare_again(out, tmp_path, "32768", *args, "--slurm-dry-run",
                               "--retry-diverged")
    assert "submitting 1 runs" in retry.stderr and "#SBATCH --array" not in dry["launch"]
    submitted = json.loads(Path(dry["sweep"]).read_text())["runs"]
    assert [Path(r["config"]).stem for r in submitted] == ["megabyte-8192B-lr1e+30"]


def test_compare_on_one_file_holds_out_its_last_bytes(tmp_path):
    """A corpus that is one file (a book, an enwik8-style dump) goes through the comparison out of
    the box: cut into ~64 KiB documents at line ends, the last --val-fraction of its bytes held
    out (contiguous split), the subword model trained and scored like the others."""
    from data_prep.sources import stdlib_files

    book = tmp_path / "book.txt"
    book.write_bytes(b"".join(f.read_bytes() for f in stdlib_files()[:60])[:400_000])
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "pretrain.compare", str(book), "--out", str(out),
           "--budget-bytes", "8192", "--eval-bytes", "3000", "--vocab-size", "400",
           "--modes", "basic", "--models", "megabyte,transformer_subword"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "one-file corpus" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary["models"]) == {"megabyte", "transformer_subword"}
    manifest = json.loads((out / "data" / "bytes" / "manifest.json").read_text())
    splits = manifest["splits"]
    assert splits["train"]["docs"] > 1 and splits["val"]["docs"] >= 1
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == book.stat().st_size
    assert splits["val"]["bytes"] == pytest.approx(0.05 * book.stat().st_size, abs=1)
    tail = book.read_bytes()[-splits["val"]["bytes"]:]
    assert (out / "heldout.bin").read_bytes() == tail[:3000]  # the file's last bytes, in order
    report = (out / "report.md").read_text()
    assert "| megabyte |" in report and "| transformer_subword |" in report


def test_cached_scores_are_reused_only_for_the_same_heldout_bytes(tmp_path, monkeypatch):
    """A changed ``OUT/heldout.bin`` (another --eval-bytes) is scored again, never answered from
    the cache of the old bytes; the same bytes at the same step and modes are not rescored."""
    from types import SimpleNamespace

    import pretrain.inference.evaluation as evaluation
    import pretrain.inference.loading as loading
    from pretrain.comparison import runs

    run_dir = tmp_path / "runs" / "megabyte"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"steps": 4}))
    plan = SimpleNamespace(name="megabyte", cfg=SimpleNamespace(run_dir=str(run_dir)))
    cfg = SimpleNamespace(model=SimpleNamespace(arch="megabyte", patch_size=8, seq_len=64),
                          train=SimpleNamespace(micro_batch_size=2))
    loads = []
    monkeypatch.setattr(loading, "load_for_inference",
                        lambda path: loads.append(path) or (cfg, None, None))
    monkeypatch.setattr(evaluation, "evaluate_bytes",
                        lambda model, text, *a, **k: {"bpb": 1.0, "bytes": len(text)})
    heldout = tmp_path / "heldout.bin"
    heldout.write_bytes(b"a" * 4096)
    assert runs.evaluate(plan, heldout, ["basic"], tmp_path)["results"]["basic"]["bytes"] == 4096
    assert runs.evaluate(plan, heldout, ["basic"], tmp_path)["results"]["basic"]["bytes"] == 4096
    assert len(loads) == 1  # the same bytes: the cache answers
    heldout.write_bytes(b"a" * 2048)
    assert runs.evaluate(plan, heldout, ["basic"], tmp_path)["results"]["basic"]["bytes"] == 2048
    heldout.write_bytes(b"b" * 2048)  # same size, other bytes
    runs.evaluate(plan, heldout, ["basic"], tmp_path)
    assert len(loads) == 3


@pytest.mark.parametrize("options,message", [
    (["--modes", "basic,bogus"], "--modes: unknown mode(s) bogus; choose from basic"),
    (["--modes", ","], "--modes: no mode given"),
    (["--modes", "strided,basic"], "--modes: the first mode (strided)"),
    (["--budget-bytes", "-5"], "--budget-bytes must be positive, got -5"),
    (["--budget-flops", "0"], "--budget-flops must be positive"),
    (["--nproc", "0"], "--nproc must be positive, got 0"),
    (["--eval-bytes", "0"], "--eval-bytes must be positive"),
    (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["--lr-sweep", "fast"], "--lr-sweep: not a learning rate"),
    (["--budgets", "2y"], "--budgets: not a budget"),
])
def test_options_are_checked_before_anything_runs(options, message, capsys):
    """A bad option is one error line (exit 2) from the argument parser itself: before any data
    is prepared or any model trains, so no budget is spent on a command that cannot finish."""
    from pretrain.compare import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args(["--out", "/nonexistent/never-created", *options])
    assert stop.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert parse_args(["--modes", " sliding, strided "]).modes == ["sliding", "strided"]
