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
    out = tmp_path / "skipped"  # (all to train: good.txt may be the only document left)
    prepare([src], out, PrepOptions(**{**OPTS.__dict__, "skip": (kind,), "val_fraction": 0.0,
                                       "test_fraction": 0.0}), progress=False)
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
    # All to train: a.txt is the only document left (a dataset without train documents is an error).
    opts = PrepOptions(**{**OPTS.__dict__, "order": "sorted", "val_fraction": 0.0, "test_fraction": 0.0})
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
    # One fingerprint for both commands: the tokenizer CLI with the same options reuses the model.
    from data_prep.tokenizer import TRAINING_SAMPLE_BYTES
    cli = [sys.executable, "-m", "data_prep.tokenizer", "--dataset", str(tmp_path / "d" / "bytes"),
           "--output", str(tmp_path / "d" / "tokenizer"), "--vocab-size", "400", "--sample-lines",
           "2000000", "--max-bytes", str(TRAINING_SAMPLE_BYTES), "--no-progress"]
    reused = subprocess.run(cli, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert reused.returncode == 0 and json.loads(reused.stdout)["status"] == "unchanged", reused.stderr
    # A model trained by an older trainer (no whitespace marker) is not reused: retrained.
    record = tmp_path / "d" / "tokenizer.json"
    record.write_text(record.read_text().replace('"fingerprint": "', '"fingerprint": "old'))
    third = json.loads(subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True,
                                      check=True, timeout=300).stdout)
    assert third["tokenizer"]["status"] == "written"


# ------------------------------------------------------------------ audit findings (one test each)


def _names_in(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_output_inside_or_equal_to_an_input_is_an_error_before_anything_is_written(tmp_path, capsys):
    from data_prep.prepare import main as prepare_main

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.txt").write_bytes(b"".join(b"%d\n" % n for n in range(500)))
    before = _names_in(src)
    for out in (src / "prepared", src, src / "deep" / "er"):
        with pytest.raises(PrepError, match=r"^--output .* the input directory .*in: .*outside the inputs$"
                           ) as e:
            prepare([src], out, OPTS, progress=False)
        assert str(out) in str(e.value) and "\n" not in str(e.value)
        assert _names_in(src) == before  # nothing written, nothing deleted
    # data_prep.prepare: refused before it creates OUTPUT (its tokenizer and tokens go there too).
    assert prepare_main([str(src), "--output", str(src / "prepared"), "--vocab-size", "300",
                         "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output ") and str(src) in err and "\n" not in err
    assert _names_in(src) == before
    # Beside the input, or with the input inside the output, is fine.
    assert prepare([src], tmp_path / "out", OPTS, progress=False)["status"] == "written"
    (tmp_path / "outer" / "raw").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "outer" / "raw" / f"f{i}.txt").write_bytes(b"a\n" * 100)
    inner = prepare([tmp_path / "outer" / "raw"], tmp_path / "outer", OPTS, progress=False)
    assert inner["status"] == "written"


def _zst_frames(data: bytes, **kw) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(**kw).compress(data)


def test_truncated_or_garbage_zst_is_unreadable_like_truncated_gz(tmp_path):
    import gzip
    import io

    import zstandard

    from data_prep.readers import check_zstd_frames

    text = b"".join(b"%d\n" % n for n in range(60_000))
    noise = os.urandom(3000)
    frames = [_zst_frames(text[:100]),  # single segment, 1-byte content size
              _zst_frames(text[:1000], write_checksum=True),  # 2-byte content size, checksum
              _zst_frames(text, write_content_size=False),  # window descriptor, no content size
              b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"skip!",  # a skippable frame
              _zst_frames(bytes(300_000)),  # RLE blocks, 4-byte content size
              _zst_frames(noise)]  # a raw (stored) block
    samples = [text[i:i + 200] for i in range(0, 200_000, 200)]
    with_dict = _zst_frames(text[:5000], dict_data=zstandard.train_dictionary(2048, samples))
    for frame in frames[:3] + frames[4:] + [with_dict]:  # the header sizes agree with zstd's own
        assert zstandard.frame_header_size(frame) in range(6, 19)
    walked = frames + [with_dict]
    whole = b"".join(walked)
    check_zstd_frames(io.BufferedReader(io.FileIO(_write(tmp_path / "ok.zst", whole))))
    bounds = [sum(map(len, walked[:i])) for i in range(len(walked) + 1)]
    cuts = {c for b in bounds for c in range(b - 24, b + 24)} | {len(whole) // 2}
    for cut in sorted(c for c in cuts if 0 < c < len(whole) and c not in bounds):
        # (a cut where a frame ends leaves a complete, shorter file: nothing can tell)
        with open(_write(tmp_path / "cut.zst", whole[:cut]), "rb") as f, pytest.raises(Exception) as e:
            check_zstd_frames(f)
        assert "zstd" in str(e.value), cut
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.txt").write_bytes(b"good\n")
    (src / "cut.txt.zst").write_bytes(_zst_frames(text)[: len(_zst_frames(text)) // 2])
    with pytest.raises(PrepError, match=r"cut\.txt\.zst: cannot read: compressed file ended inside a zstd "
                                        r"frame .*--skip unreadable"):
        prepare([src], tmp_path / "o1", OPTS, progress=False)
    (src / "cut.txt.zst").write_bytes(b"not zstd data")  # was an uncaught ZstdError traceback
    with pytest.raises(PrepError, match=r"cut\.txt\.zst: cannot read: not zstd data at byte 0"):
        prepare([src], tmp_path / "o2", OPTS, progress=False)
    (src / "cut.txt.zst").unlink()
    (src / "cut.jsonl.zst").write_bytes(_zst_frames(b'{"text": "a"}\n' * 5000)[:-3])
    with pytest.raises(PrepError, match=r"cut\.jsonl\.zst: cannot read: compressed file ended inside"):
        prepare([src], tmp_path / "o3", OPTS, progress=False)
    (src / "cut.jsonl.zst").unlink()  # a truncated .gz, for comparison: the same kind of error
    (src / "cut.txt.gz").write_bytes(gzip.compress(text)[:-9])
    with pytest.raises(PrepError, match=r"cut\.txt\.gz: cannot read: Compressed file ended"):
        prepare([src], tmp_path / "o4", OPTS, progress=False)
    (src / "cut.txt.gz").unlink()
    (src / "whole.txt.zst").write_bytes(b"".join(frames))  # every kind of frame, read across frames
    prepare([src], tmp_path / "o5", OPTS, progress=False)
    assert all_documents(tmp_path / "o5")["whole.txt.zst"][1] == \
        text[:100] + text[:1000] + text + bytes(300_000) + noise


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_non_utf8_file_names_and_ids_are_stored_as_valid_utf8_with_the_same_split(tmp_path):
    import webdataset as wds

    src = tmp_path / "in"
    src.mkdir()
    bad = os.fsdecode(b"bad\xff\xfename.txt")  # as os.walk gives it: lone surrogates
    with open(os.fsencode(src) + b"/bad\xff\xfename.txt", "wb") as f:
        f.write(b"x\n")
    (src / "ok.txt").write_bytes(b"ok\n")
    (src / "ids.jsonl").write_bytes(b'{"text": "lone", "id": "\\ud800x"}\n{"text": "fine", "id": "n"}\n')
    out = tmp_path / "out"
    prepare([src], out, PrepOptions(**{**OPTS.__dict__, "id_field": "id"}), workers=2, progress=False)
    docs = all_documents(out)
    assert docs["bad\\xff\\xfename.txt"][1] == b"x\n" and docs["\\xed\\xa0\\x80x"][1] == b"lone"
    # The split is the one the original id hashes to (as before: no document moves; the escaped
    # ids would hash to the other split here).
    assert docs["bad\\xff\\xfename.txt"][0] == split_of(bad, 0.2, 0.1) == "val"
    assert docs["\\xed\\xa0\\x80x"][0] == split_of("\ud800x", 0.2, 0.1) == "train"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    metas = [s["json"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert len(metas) == 4 and all(json.loads(m.decode("utf-8")) for m in metas)  # strict UTF-8


def test_overlapping_inputs_are_an_error_and_dot_gets_its_directory_name(tmp_path, monkeypatch):
    d = tmp_path / "tiny"
    (d / "sub").mkdir(parents=True)
    for rel in ("a.txt", "sub/b.txt"):
        (d / rel).write_bytes(rel.encode())
    with pytest.raises(ValueError, match=r"inputs overlap: .*tiny/a\.txt is reached through input "
                                         r"'.*tiny/a\.txt' \(argument 2\) and input '.*tiny' \(argument 1"):
        collect_inputs([d, d / "a.txt"])
    monkeypatch.chdir(d / "sub")
    with pytest.raises(ValueError, match=r"inputs overlap: .*b\.txt is reached through input '\.\.' "
                                         r"\(argument 2\) and input '\.' \(argument 1"):
        collect_inputs([Path("."), Path("..")])
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.txt").write_bytes(b"c")
    ids = [f.doc_id for f in collect_inputs([Path("./"), other])]
    assert ids == ["other/c.txt", "sub/b.txt"]  # '.' is named after the directory, not ''
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="inputs overlap"):  # and through prepare (exit 2 in the CLI)
        prepare([d, d / "sub"], tmp_path / "o", OPTS, progress=False)
    assert not (tmp_path / "o").exists()


def test_symlinked_files_are_followed_and_links_left_out_are_warned_about(tmp_path):
    src, ext = tmp_path / "in", tmp_path / "elsewhere"
    (src / "real").mkdir(parents=True)
    ext.mkdir()
    (src / "real" / "r.txt").write_bytes(b"real\n")
    (ext / "target.txt").write_bytes(b"linked in\n")
    os.symlink(ext / "target.txt", src / "linked.txt")
    os.symlink(src / "real", src / "dirlink")  # not followed (a loop-safe walk)
    os.symlink(src, src / "real" / "loop")  # would loop if followed
    os.symlink(tmp_path / "missing", src / "dangling.txt")
    os.symlink(src / "cycle_a", src / "cycle_b")
    os.symlink(src / "cycle_b", src / "cycle_a")
    warnings: list = []
    files = collect_inputs([src], warn=warnings.append)
    assert [f.doc_id for f in files] == ["linked.txt", "real/r.txt"]
    assert warnings == [
        f"warning: left out dangling symbolic links (missing target, or a loop): 3 (e.g. {src / 'cycle_a'})",
        f"warning: left out symbolic links to directories (not followed): 2 (e.g. {src / 'dirlink'})"]
    out = tmp_path / "out"
    prepare([src], out, OPTS, progress=False)
    assert {k: v[1] for k, v in all_documents(out).items()} == {"linked.txt": b"linked in\n",
                                                                 "real/r.txt": b"real\n"}
    r = subprocess.run([sys.executable, "-m", "data_prep.bytes", "--help"], env=ENV, cwd=ROOT,
                       capture_output=True, text=True, check=True)
    assert "Symbolic links to files are followed" in " ".join(r.stdout.split())


def test_max_bytes_help_says_it_takes_whole_files(tmp_path, capsys):
    from data_prep.bytes import main as bytes_main
    from data_prep.bytes import select_files

    with pytest.raises(SystemExit):
        bytes_main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "stop after this many input bytes" not in help_text
    assert "--max-bytes N prepare only whole files" in help_text and "never cut" in help_text
    (tmp_path / "big.txt").write_bytes(b"x\n" * 5000)
    (tmp_path / "small.txt").write_bytes(b"y\n")
    files = collect_inputs([tmp_path])
    picked = select_files(files, PrepOptions(max_bytes=100, order="sorted"))
    assert [f.doc_id for f in picked] == ["big.txt"]  # one file, whole, though it is 10,000 bytes


def _val_name(fraction: float) -> str:
    """A file name that --split hash sends to val at this val fraction."""
    return next(n for n in (f"doc{i}.txt" for i in range(1000)) if split_of(n, fraction) == "val")


def test_no_train_documents_is_an_error_before_a_manifest(tmp_path):
    src = tmp_path / "one"
    src.mkdir()
    (src / _val_name(0.5)).write_bytes(b"the only document\n")
    opts = PrepOptions(**{**OPTS.__dict__, "val_fraction": 0.5, "test_fraction": 0.0})
    for tasks in (1, 2):
        out = tmp_path / f"o{tasks}"
        with pytest.raises(PrepError, match=r"^no train documents: all 1 documents went to val/test "
                                            r"\(--split hash, --val-fraction 0\.5.*use --split contiguous$"):
            for t in range(tasks):
                prepare([src], out, opts, progress=False, tasks=tasks, task=t)
        assert not (out / MANIFEST).exists()
    assert _names_in(tmp_path / "o1") == []  # a one-task job keeps nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "e1.txt").write_bytes(b"")
    (empty / "e2.txt").write_bytes(b"")
    with pytest.raises(PrepError, match=r"^no train documents: the inputs gave no documents at all "
                                        r"\(skipped as bad input: 2 empty\)$"):
        prepare([empty], tmp_path / "oe", PrepOptions(**{**OPTS.__dict__, "skip": ("empty",)}),
                progress=False)
    assert not (tmp_path / "oe" / MANIFEST).exists()
    # --split contiguous keeps the first bytes for train.
    prepare([src], tmp_path / "oc", PrepOptions(**{**opts.__dict__, "split": "contiguous"}), progress=False)
    assert read_manifest(tmp_path / "oc")["splits"]["train"]["docs"] == 1


def test_too_small_max_sample_bytes_names_the_document_and_leaves_no_output(tmp_path):
    import gzip

    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        (src / f"a{i}.txt").write_bytes(b"small document %d\n" % i)
    big = b"".join(b"%d\n" % n for n in range(120_000))  # 728,890 bytes: 104,128 chunks of 7
    opts = PrepOptions(**{**OPTS.__dict__, "max_sample_bytes": 7, "shard_bytes": 16, "order": "sorted",
                          "val_fraction": 0.0, "test_fraction": 0.0})
    # A raw file: its size is known from the plan, so the error comes before anything is written.
    (src / "zz.txt").write_bytes(big)
    with pytest.raises(PrepError, match=r"zz\.txt: document 'zz\.txt' of 728890 bytes needs 104128 chunks "
                                        r"of --max-sample-bytes 7, more than the 99999 .* at least 8$"):
        prepare([src], tmp_path / "o1", opts, progress=False)
    assert not (tmp_path / "o1").exists()
    # A compressed file: known when read, after other documents filled shards; none is left.
    (src / "zz.txt").unlink()
    (src / "zz.txt.gz").write_bytes(gzip.compress(big))
    for workers in (1, 2):
        out = tmp_path / f"o_w{workers}"
        with pytest.raises(PrepError, match=r"zz\.txt\.gz: document 'zz\.txt\.gz' of 728890 bytes needs "
                                            r"104128 chunks"):
            prepare([src], out, opts, workers=workers, progress=False)
        assert _names_in(out) == [], workers  # no shard, no temporary file, no part, no manifest


def test_an_unexpected_error_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import data_prep.bytes as prep_bytes

    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}.txt").write_bytes(b"document %d\n" % i)
    real_split_of = prep_bytes.split_of

    def failing_split_of(doc_id: str, *args: float) -> str:  # the old crash on non-UTF-8 names, say
        if doc_id == "f5.txt":
            raise UnicodeEncodeError("utf-8", doc_id, 0, 1, "surrogates not allowed")
        return real_split_of(doc_id, *args)

    monkeypatch.setattr(prep_bytes, "split_of", failing_split_of)  # forked workers inherit it
    opts = PrepOptions(**{**OPTS.__dict__, "shard_bytes": 8, "val_fraction": 0.0, "test_fraction": 0.0,
                          "order": "sorted"})  # f0..f4 fill shards before f5 fails
    for workers in (1, 2):
        out = tmp_path / f"o{workers}"
        with pytest.raises(PrepError, match=r"^while preparing .*in/f5\.txt: UnicodeEncodeError: "
                                            r".*surrogates"):
            prepare([src], out, opts, workers=workers, progress=False)
        assert _names_in(out) == [], workers  # no shard and no .tmp file left behind
