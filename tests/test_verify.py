"""python -m data_prep.verify: a good dataset passes; each kind of damage names the first bad shard."""

from __future__ import annotations

import json
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
    import re

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
