"""python -m data_prep.verify: a good dataset passes; each kind of damage names the first bad shard."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from data_prep.bytes import PrepOptions, prepare
from data_prep.verify import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (root / f"d{i:02d}.txt").write_bytes(f"document {i}\n".encode() * (40 + 9 * i))
    out = tmp_path_factory.mktemp("verify") / "ds"
    prepare([root], out, PrepOptions(shard_bytes=1500, val_fraction=0.2), progress=False)
    return out


@pytest.fixture()
def work(dataset, tmp_path) -> Path:
    shutil.copytree(dataset, tmp_path / "ds")
    return tmp_path / "ds"


def records(d: Path) -> list:
    return json.loads((d / "manifest.json").read_text())["shards"]


def run(d: Path, capsys, *extra: str) -> tuple:
    code = main([str(d), "--no-progress", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_good_dataset_passes_with_one_summary_line(dataset, capsys):
    code, out, err = run(dataset, capsys, "--workers", "3")
    n = len(records(dataset))
    assert code == 0 and err == "" and out.startswith(f"ok: {dataset}: {n} shards (") and out.count("\n") == 1


def _damage(d: Path, how: str) -> str:
    """Damage the third shard in manifest order (earlier ones stay good); return its name."""
    recs = records(d)
    victim = recs[2]["name"]
    path = d / victim
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[:len(data) // 2]))
    elif how == "flipped":
        data[-1] ^= 0x01  # in the end-of-archive blocks: the tar still reads, only sha256 tells
        path.write_bytes(bytes(data))
    elif how == "missing":
        path.unlink()
    elif how == "samples":
        recs[2]["samples"] += 1
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["shards"] = recs
        (d / "manifest.json").write_text(json.dumps(manifest))
    return victim


@pytest.mark.parametrize("how,problem", [
    ("truncated", r"\d+ bytes but the manifest says \d+ \(truncated or replaced\)"),
    ("flipped", r"sha256 \w+\.\.\. but the manifest says \w+\.\.\. \(content changed\)"),
    ("missing", r"missing \(listed in the manifest\)"),
    ("samples", r"(\d+) samples but the manifest says (\d+)"),
])
def test_first_bad_shard_is_named_with_what_is_wrong(work, capsys, how, problem):
    victim = _damage(work, how)
    code, out, err = run(work, capsys)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert re.fullmatch(rf"error: shard {victim} \({work / victim}\): {problem}\n", err), err


def test_bad_manifest_exits_2(work, capsys):
    (work / "manifest.json").write_text("{not json")
    code, _, err = run(work, capsys)
    assert code == 2 and "manifest.json: not valid JSON" in err
    (work / "manifest.json").unlink()
    code, _, err = run(work, capsys)
    assert code == 2 and "no manifest.json" in err


def test_a_pipe_location_names_the_bad_shard_with_a_progress_bar(work, capsys):
    victim = _damage(work, "flipped")
    assert main([f"pipe:cat {work}"]) == 1
    err = capsys.readouterr().err
    assert f"error: shard {victim} (pipe:cat {work}/{victim}): sha256" in err
    assert f"verify pipe:cat {work}" in err  # the progress bar


def test_help_documents_exit_statuses_and_locations(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "Exit status: 0" in out and "pipe:COMMAND" in out and "--workers" in out



# --------------------------------------------------------------------------------------
# Malformed manifests and parts: one line naming the file and the field, the documented exit code
# --------------------------------------------------------------------------------------


def _edit_manifest(d: Path, edit) -> Path:
    path = d / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


SHARD = r"\([\w-]+\.tar\)"  # a shard's name after its index
MALFORMED = [
    (lambda m: m["shards"][0].update(name="../x.tar"), r"shards\[0\]: field 'name' is '\.\./x\.tar', not a"),
    (lambda m: m.pop("shards"), "missing field 'shards'"),
    (lambda m: m["shards"][1].pop("sha256"), rf"shards\[1\] {SHARD}: missing field 'sha256'"),
    (lambda m: m["shards"][1].update(sha256="00"), rf"shards\[1\] {SHARD}: field 'sha256' is '00'"),
    (lambda m: m["shards"][0].update(samples="3"), rf"shards\[0\] {SHARD}: field 'samples' is '3', not a"),
    (lambda m: m["shards"][0].update(split="test"), rf"shards\[0\] {SHARD}: field 'split' is 'test' but"),
    (lambda m: m["shards"].append(m["shards"][0]), rf"shards\[\d+\] {SHARD}: named twice"),
    (lambda m: m.update(kind="pixels"), "field 'kind' is 'pixels', not one of bytes, tokens"),
    (lambda m: m.pop("fingerprint"), "missing field 'fingerprint'"),
]


@pytest.mark.parametrize("edit,problem", MALFORMED)
def test_a_malformed_manifest_is_one_line_naming_the_field_exit_2(work, capsys, edit, problem):
    path = _edit_manifest(work, edit)
    code, out, err = run(work, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert re.match(rf"error: {re.escape(str(path))}: {problem}", err), err


def test_a_bad_shard_name_is_a_problem_of_that_shard_not_a_traceback(work):
    from data_prep.verify import check_shard

    check = check_shard(work, dict(records(work)[0], name="../x.tar"), "bytes")
    assert check.problems == ["cannot open: file name '../x.tar' is not a plain file name (letters, "
                              "digits, ._-)"]


def test_summary_lists_splits_in_train_val_test_order(tmp_path, capsys):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(20):
        (root / f"d{i:02d}.txt").write_bytes(f"document {i}\n".encode() * 30)
    out = tmp_path / "ds"
    prepare([root], out, PrepOptions(shard_bytes=1500, val_fraction=0.25, test_fraction=0.25),
            progress=False)
    assert {r["split"] for r in records(out)} == {"train", "val", "test"}
    code, text, _ = run(out, capsys)
    assert code == 0 and re.search(r" shards \(train \d+, val \d+, test \d+\), ", text), text


def test_a_file_url_verifies_like_the_local_path(work, capsys):
    url = f"file://{work}"
    code, out, err = run(url, capsys)
    assert code == 0 and out.startswith(f"ok: {url}: {len(records(work))} shards ("), err
    victim = _damage(work, "truncated")
    code, out, err = run(url, capsys)
    assert code == 1 and err.startswith(f"error: shard {victim} ({url}/{victim}): "), err
    assert "(truncated or replaced)" in err
    code, _, err = run(f"file://{work}/nowhere", capsys)
    assert code == 2 and "no manifest.json" in err and "not a directory" not in err


def _flip_payload(path: Path) -> None:
    """Flip the first payload byte of the shard at ``path`` (same size: only crc32 tells)."""
    import tarfile

    with tarfile.open(path) as tar:
        first = next(m for m in tar.getmembers() if m.name.endswith(".bin"))
    data = bytearray(path.read_bytes())
    data[first.offset_data] ^= 0xFF
    path.write_bytes(bytes(data))


def test_merge_digest_of_a_corrupt_shard_is_one_line_and_writes_no_manifest(work, capsys):
    from data_prep.merge import main as merge_main

    (work / "manifest.json").unlink()
    assert merge_main([str(work), "--digest"]) == 0  # the part of the one-task run merges
    out = json.loads(capsys.readouterr().out)
    assert list(out["splits"]) == ["train", "val", "test"] and set(out["digests"]) == set(out["splits"])
    victim = records(work)[1]["name"]
    (work / "manifest.json").unlink()
    _flip_payload(work / victim)
    code = merge_main([str(work), "--digest"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: shard {work / victim}: sample 0 (") and "crc32 mismatch" in err, err
    assert not (work / "manifest.json").exists()


def test_merge_names_the_missing_field_of_a_damaged_part(work, capsys):
    from data_prep.merge import finished_part, part_path
    from data_prep.merge import main as merge_main

    path = part_path(work, 0, 1)
    part = json.loads(path.read_text())
    path.write_text(json.dumps({"format": "megabyte-shards-part"}))
    assert merge_main([str(work)]) == 2
    assert capsys.readouterr().err == (f"error: {path}: missing field 'fingerprint' (a damaged part: run "
                                       "task 0 again)\n")
    part["shards"][0]["name"] = "../x.tar"
    path.write_text(json.dumps(part))
    assert merge_main([str(work)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: shards[0]: field 'name' is '../x.tar'") and err.count("\n") == 1
    assert finished_part(work, part["fingerprint"], 0, 1) is None  # the task must run again
