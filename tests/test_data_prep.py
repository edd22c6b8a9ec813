"""data_prep.bytes: round trip, deterministic splits, no-op re-runs, kill-safety, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from data_prep.bytes import PrepError, PrepOptions, prepare
from data_prep.merge import split_digests
from data_prep.shards import (
    MANIFEST,
    iter_documents,
    iter_shard,
    read_manifest,
    sha256_file,
)
from data_prep.sources import collect_inputs, split_of
from tests.conftest import ROOT
from tests.data_corpus import make_corpus

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
OPTS = PrepOptions(shard_bytes=16_384, max_sample_bytes=8192, val_fraction=0.2, test_fraction=0.1)


def content_ids(expected: dict) -> dict:
    """make_corpus names JSONL records file:line; data_prep.bytes names them by the sha256 of their
    text (so a record's split does not depend on where it sits in a dump)."""
    return {(hashlib.sha256(v).hexdigest() if ".jsonl" in k else k): v for k, v in expected.items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, content_ids(make_corpus(root))


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    root, expected = corpus
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare([root], out, OPTS, workers=1, progress=False)
    return out, summary, expected


def all_documents(out: Path) -> dict:
    docs = {}
    for split in ("train", "val", "test"):
        for doc_id, payload in iter_documents(out, split):
            # Identical JSONL records share their content-hash id (and so their split).
            assert docs.get(doc_id, (split, payload)) == (split, payload), f"{doc_id} in two places"
            docs[doc_id] = (split, payload)
    return docs


def test_round_trip_every_byte_and_manifest_matches_files(prepared):
    out, summary, expected = prepared
    docs = all_documents(out)
    assert {k: v[1] for k, v in docs.items()} == expected  # every byte of every document
    manifest = read_manifest(out)
    assert summary["status"] == "written"
    n_chunked = 0
    for rec in manifest["shards"]:
        path = out / rec["name"]
        assert sha256_file(path) == rec["sha256"] and path.stat().st_size == rec["file_bytes"]
        samples = list(iter_shard(path))
        assert len(samples) == rec["samples"]
        assert sum(len(s.payload) for s in samples) == rec["bytes"]
        assert sum(1 for s in samples if s.meta["chunk"] == s.meta["chunks"] - 1) == rec["docs"]
        n_chunked += sum(1 for s in samples if s.meta["chunks"] > 1)
        with tarfile.open(path) as tf:  # a plain tar: stdlib tarfile (like `tar -tf`) lists it
            assert len(tf.getnames()) == 2 * rec["samples"]
    assert n_chunked >= 4  # big.txt (27 KB) is stored as chunks of 8 KB and rebuilt above
    for split, counts in manifest["splits"].items():
        mine = {k: v[1] for k, v in docs.items() if v[0] == split}
        assert counts["docs"] == len(mine) and counts["bytes"] == sum(map(len, mine.values()))
    assert manifest["blank_lines"] == 1
    assert manifest["bad_input"]["counts"] == {k: 0 for k in manifest["bad_input"]["counts"]}


def test_stock_tar_and_stock_webdataset_read_the_shards(prepared):
    import webdataset as wds

    out, _, _ = prepared
    manifest = read_manifest(out)
    rec = manifest["shards"][0]
    listing = subprocess.run(["tar", "-tf", str(out / rec["name"])], capture_output=True, text=True,
                             check=True).stdout.split()
    assert len(listing) == 2 * rec["samples"] and listing[0].endswith(".bin")
    urls = [str(out / r["name"]) for r in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == sum(r["samples"] for r in manifest["shards"])
    assert sum(len(s["bin"]) for s in samples) == sum(r["bytes"] for r in manifest["shards"])


def test_splits_are_deterministic_disjoint_and_independent_of_workers(prepared, corpus, tmp_path):
    out, _, expected = prepared
    docs = all_documents(out)
    by_split = {s: {k for k, v in docs.items() if v[0] == s} for s in ("train", "val", "test")}
    assert all(by_split.values())  # all three splits are used at these fractions
    assert set().union(*by_split.values()) == set(expected)
    for doc_id, (split, _) in docs.items():
        assert split == split_of(doc_id, OPTS.val_fraction, OPTS.test_fraction)
    # Parallel workers (each writing its own shards) give the same documents per split.
    root, _ = corpus
    prepare([root], tmp_path, OPTS, workers=2, progress=False)
    assert split_digests(tmp_path) == split_digests(out)
    counts = [{s: (v["docs"], v["bytes"], v["samples"]) for s, v in read_manifest(d)["splits"].items()}
              for d in (tmp_path, out)]
    assert counts[0] == counts[1]  # (shard counts may differ: each worker fills its own)
    # With the same worker count, the shards are byte-identical (each worker has a fixed share).
    prepare([root], tmp_path / "again", OPTS, workers=2, progress=False)
    a, b = read_manifest(tmp_path), read_manifest(tmp_path / "again")
    assert [(r["name"], r["sha256"]) for r in a["shards"]] == [(r["name"], r["sha256"]) for r in b["shards"]]


def test_rerun_is_a_noop_and_a_changed_input_rewrites(corpus, tmp_path):
    root, _ = corpus
    src = tmp_path / "src"
    src.mkdir()
    for name in ("docs", "data.jsonl"):
        os.system(f"cp -r {root / name} {src / name}")
    out = tmp_path / "out"
    first = prepare([src], out, OPTS, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = prepare([src], out, OPTS, progress=False)
    assert second["status"] == "unchanged" and second["splits"] == first["splits"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    (src / "docs" / "doc001.py").write_bytes(b"changed\n")
    third = prepare([src], out, OPTS, progress=False)
    assert third["status"] == "written"
    assert dict(iter_documents(out, split_of("docs/doc001.py", 0.2, 0.1)))["docs/doc001.py"] == b"changed\n"


def test_kill_midway_then_rerun_gives_identical_shards(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    args = [sys.executable, "-m", "data_prep.bytes", "--stdlib", "--skip", "empty", "--max-bytes", "12M",
            "--shard-bytes", "128K", "--workers", "1", "--no-progress"]
    subprocess.run(args + ["--output", str(clean)], env=ENV, cwd=ROOT, check=True, capture_output=True,
                   timeout=300)
    proc = subprocess.Popen(args + ["--output", str(killed)], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed.is_dir() and len(list(killed.glob("train-*.tar"))) >= 3):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = list(killed.glob("*.tar"))
    n_clean = len(read_manifest(clean)["shards"])
    assert 3 <= len(written) < n_clean, "the kill did not land mid-way"
    assert not (killed / MANIFEST).exists()  # no manifest names a missing or partial shard
    done = subprocess.run(args + ["--output", str(killed)], env=ENV, cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=300)
    assert json.loads(done.stdout)["status"] == "written"
    a, b = read_manifest(clean), read_manifest(killed)
    assert [(r["name"], r["sha256"]) for r in a["shards"]] == [(r["name"], r["sha256"]) for r in b["shards"]]
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in clean.iterdir())


# ------------------------------------------------------------------ bad input


def _jsonl(tmp_path: Path, body: bytes, name: str = "bad.jsonl") -> Path:
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    (d / "good.txt").write_bytes(b"good document\n")
    (d / name).write_bytes(body)
    return d


GOOD = b'{"text": "fine"}\n'
BAD_CASES = {
    "malformed_json": (b'{"text": "fine"}\n{"text": oops}\n', "bad.jsonl:2: malformed JSON"),
    "missing_field": (GOOD + GOOD + b'{"body": "no text"}\n', "bad.jsonl:3: no field 'text'"),
    "missing_field_type": (b'{"text": 42}\n', "bad.jsonl:1: field 'text' is int, not a string"),
    "invalid_utf8_raw": (GOOD + b'{"text": "caf\xe9"}\n', "bad.jsonl:2: invalid UTF-8 at byte"),
    "invalid_utf8_escape": (b'{"text": "lone \\ud800 surrogate"}\n',
                            "bad.jsonl:1: field 'text' is not valid UTF-8"),
    "empty_text": (GOOD + b'{"text": ""}\n', "bad.jsonl:2: empty document"),
    "empty_file": (b"", "bad.jsonl: empty file"),
}
KIND = {"missing_field_type": "missing_field", "invalid_utf8_raw": "invalid_utf8",
        "invalid_utf8_escape": "invalid_utf8", "empty_text": "empty", "empty_file": "empty"}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_fatal_with_file_and_line_or_skipped_and_counted(case, tmp_path):
    body, message = BAD_CASES[case]
    kind = KIND.get(case, case)
    src = _jsonl(tmp_path, body)
    with pytest.raises(PrepError) as info:
        prepare([src], tmp_path / "fatal", OPTS, progress=False)
    text = str(info.value)
    assert "\n" not in text and message in text and f"--skip {kind}" in text, text
    assert not (tmp_path / "fatal" / MANIFEST).exists()
    out = tmp_path / "skipped"
    prepare([src], out, PrepOptions(**{**OPTS.__dict__, "skip": (kind,)}), progress=False)
    manifest = read_manifest(out)
    assert manifest["bad_input"]["counts"][kind] == 1
    assert message in manifest["bad_input"]["examples"][0]
    docs = all_documents(out)
    assert docs["good.txt"][1] == b"good document\n"


def test_vanished_and_unreadable_files_are_reported(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_bytes(b"stays")
    (src / "b.txt").write_bytes(b"vanishes")
    (src / "c.jsonl.gz").write_bytes(b"not gzip data")  # unreadable as gzip
    opts = PrepOptions(**{**OPTS.__dict__, "order": "sorted"})
    files = collect_inputs([src])
    (src / "b.txt").unlink()  # listed, then gone before it is read
    with pytest.raises(PrepError, match=r"b\.txt: cannot read: .*--skip unreadable"):
        prepare([src], tmp_path / "o1", opts, progress=False, files=files)
    out = tmp_path / "o2"
    prepare([src], out, PrepOptions(**{**opts.__dict__, "skip": ("unreadable",)}), progress=False,
            files=files)
    manifest = read_manifest(out)
    assert manifest["bad_input"]["counts"]["unreadable"] == 2  # the vanished file, the broken gzip
    assert any("c.jsonl.gz:1: cannot read" in e for e in manifest["bad_input"]["examples"])
    assert {k for k, _ in all_documents(out).items()} == {"a.txt"}


def test_cli_help_json_result_and_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_prep.bytes", "--help"], env=ENV, cwd=ROOT,
                       capture_output=True, text=True, check=True)
    assert "--skip" in r.stdout and "manifest" in r.stdout
    src = _jsonl(tmp_path, b'{"text": oops}\n')
    r = subprocess.run([sys.executable, "-m", "data_prep.bytes", str(src), "--output", str(tmp_path / "o"),
                        "--no-progress"], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "bad.jsonl:1: malformed JSON" in r.stderr
    r = subprocess.run([sys.executable, "-m", "data_prep.bytes", str(src), "--output", str(tmp_path / "o"),
                        "--skip", "all", "--no-progress", "--include", "*.jsonl", "--include", "*.txt"],
                       env=ENV, cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(r.stdout)
    assert result["status"] == "written" and result["bad_input"]["malformed_json"] == 1


def test_include_exclude_globs(corpus):
    root, expected = corpus
    only_py = collect_inputs([root], include=("*.py",), exclude=("sub",))
    ids = {f.doc_id for f in only_py}
    assert ids == {k for k in expected if k.endswith(".py") and "/sub/" not in k}


def test_one_command_gives_shards_tokenizer_and_token_shards_that_train_reads(corpus, tmp_path):
    root, _ = corpus
    cmd = [sys.executable, "-m", "data_prep.prepare", str(root), "--output", str(tmp_path / "d"),
           "--vocab-size", "400", "--skip", "invalid_utf8", "--shard-bytes", "16K", "--workers", "1",
           "--no-progress"]
    first = json.loads(subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, check=True,
                                      timeout=300).stdout)
    assert {first[k]["status"] for k in ("bytes", "tokenizer", "tokens")} == {"written"}
    assert (tmp_path / "d" / "tokenizer.model").is_file()
    # What it wrote is what training reads: the shard loader opens both datasets.
    from pretrain.data.shard_loader import open_dataset
    assert open_dataset(tmp_path / "d" / "bytes").kind == "bytes"
    assert open_dataset(tmp_path / "d" / "tokens").kind == "tokens"
    assert read_manifest(tmp_path / "d" / "tokens")["kind"] == "tokens"
    # bin/blob.bin is not text: kept, its bytes encoded as byte-fallback pieces (the byte and
    # token datasets hold the same documents, so the subword model sees what the others see).
    assert first["tokens"]["bad_input"]["invalid_utf8"] == 0
    assert first["tokens"]["non_utf8_documents"] == 1
    again = json.loads(subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, check=True,
                                      timeout=300).stdout)
    assert {again[k]["status"] for k in ("bytes", "tokenizer", "tokens")} == {"unchanged"}
