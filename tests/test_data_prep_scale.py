"""data_prep at cluster scale: job arrays and their merge, streamed formats, one-file corpora."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from data_prep.bytes import PrepError, PrepOptions, plan_job, prepare
from data_prep.merge import main as merge_main
from data_prep.merge import part_path, split_digests
from data_prep.plan import share
from data_prep.readers import Bad, Doc, ReadOptions, ReadStats, read_piece
from data_prep.shards import MANIFEST, iter_documents, read_manifest
from tests.data_corpus import make_corpus, real_text

# Small pieces, so large files are cut into several ranges shared between tasks.
OPTS = PrepOptions(shard_bytes=16_384, max_sample_bytes=8192, val_fraction=0.2, test_fraction=0.1,
                   piece_bytes=4096)


def write_parquet(path: Path, texts: list, binary: bool = False, row_group: int = 10, **extra: list) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = pa.array([t.encode() if binary and t is not None else t for t in texts],
                   pa.binary() if binary else pa.string())
    pq.write_table(pa.table({"text": col, **{k: pa.array(v) for k, v in extra.items()}}), path,
                   row_group_size=row_group)


def zst(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The mixed test corpus plus every new format: Parquet (several row groups), .jsonl.zst,
    compressed plain text (.gz, .zst)."""
    root = tmp_path_factory.mktemp("scale_corpus")
    make_corpus(root, n_text=24)
    text = real_text().decode("utf-8", "replace")
    rows = [f"row {i}: {text[i * 300:i * 300 + 200 + 7 * i]}" for i in range(60)]
    write_parquet(root / "rows.parquet", rows)
    lines = [json.dumps({"text": f"zst line {i} " + text[i * 50:i * 50 + 100]}) for i in range(40)]
    (root / "more.jsonl.zst").write_bytes(zst(("\n".join(lines) + "\n").encode()))
    (root / "notes.txt.gz").write_bytes(gzip.compress(real_text()[:20_000]))
    (root / "notes2.md.zst").write_bytes(zst(real_text()[20_000:30_000]))
    return root


def run_tasks(inputs: list, out: Path, opts: PrepOptions, tasks: int) -> list:
    """Every task of a job, in this process, one after the other (as an array would)."""
    return [prepare(inputs, out, opts, progress=False, tasks=tasks, task=t) for t in range(tasks)]


def test_four_tasks_merge_to_the_documents_of_one_and_rerun_is_a_noop(corpus, tmp_path):
    one, four = tmp_path / "one", tmp_path / "four"
    prepare([corpus], one, OPTS, progress=False)
    job = plan_job([corpus], OPTS, tasks=4)
    assert len(job.pieces) > len(job.files)  # large files were cut into ranges
    assert all(share(job.pieces, 4))  # every task has work
    results = run_tasks([corpus], four, OPTS, 4)
    assert [r["merged"] for r in results] == [False, False, False, True]  # the last one merges
    assert all(r["status"] == "written" for r in results)
    manifest = read_manifest(four)
    assert manifest["tasks"] == 4 and len(list((four / "parts").glob("part-*-of-00004.json"))) == 4
    assert {r["name"].split("-")[1] for r in manifest["shards"]} == {"t0000", "t0001", "t0002", "t0003"}
    digests = split_digests(one)
    assert split_digests(four) == digests
    assert all(digests[s]["docs"] for s in ("train", "val", "test"))
    assert {s: v["bytes"] for s, v in manifest["splits"].items()} == \
        {s: v["bytes"] for s, v in read_manifest(one)["splits"].items()}
    # The formats arrived whole: the Parquet rows, the decompressed text.
    docs = {k: v for s in ("train", "val", "test") for k, v in iter_documents(four, s)}
    assert docs["notes.txt.gz"] == real_text()[:20_000]
    assert docs["notes2.md.zst"] == real_text()[20_000:30_000]
    assert sum(1 for v in docs.values() if v.startswith(b"row ")) == 60
    # Running the array again: nothing is written; the merge command agrees.
    mtimes = {p.name: p.stat().st_mtime_ns for p in four.iterdir()}
    assert {r["status"] for r in run_tasks([corpus], four, OPTS, 4)} == {"unchanged"}
    assert {p.name: p.stat().st_mtime_ns for p in four.iterdir()} == mtimes
    before = (four / MANIFEST).read_bytes()
    assert merge_main([str(four)]) == 0
    assert (four / MANIFEST).read_bytes() == before  # merging is deterministic


def test_a_failed_task_is_the_only_one_the_rerun_redoes(corpus, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for p in corpus.iterdir():
        if p.is_file():
            (src / p.name).write_bytes(p.read_bytes())
    good = (src / "more.jsonl.gz").read_bytes()
    st = (src / "more.jsonl.gz").stat()
    # Damaged with the same size and mtime (the job's fingerprint does not see it): unreadable.
    (src / "more.jsonl.gz").write_bytes(b"\0" * len(good))
    os.utime(src / "more.jsonl.gz", ns=(st.st_atime_ns, st.st_mtime_ns))
    out = tmp_path / "out"
    failed = [t for t, pieces in enumerate(share(plan_job([src], OPTS, tasks=4).pieces, 4))
              if any(p.path.endswith("more.jsonl.gz") for p in pieces)]
    assert len(failed) == 1
    for t in range(4):
        if t == failed[0]:
            with pytest.raises(PrepError, match=r"more\.jsonl\.gz:1: cannot read"):
                prepare([src], out, OPTS, progress=False, tasks=4, task=t)
        else:
            assert not prepare([src], out, OPTS, progress=False, tasks=4, task=t)["merged"]
    assert not (out / MANIFEST).exists() and not part_path(out, failed[0], 4).exists()
    assert merge_main([str(out)]) == 2  # the merge names the missing part
    assert f"tasks {failed[0]}" in capsys.readouterr().err
    (src / "more.jsonl.gz").write_bytes(good)
    os.utime(src / "more.jsonl.gz", ns=(st.st_atime_ns, st.st_mtime_ns))
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    statuses = [r["status"] for r in run_tasks([src], out, OPTS, 4)]
    assert statuses == ["written" if t == failed[0] else "unchanged" for t in range(4)]
    assert all(p.stat().st_mtime_ns == done[p.name] for p in out.glob("*.tar") if p.name in done)
    one = tmp_path / "one"
    prepare([src], one, OPTS, progress=False)
    assert split_digests(out) == split_digests(one)


def test_one_text_file_cut_into_documents_with_a_contiguous_split(tmp_path):
    text = (real_text() * 2)[:200_000]
    src = tmp_path / "enwik.txt"
    src.write_bytes(text)
    opts = PrepOptions(shard_bytes=64 << 10, val_fraction=0.1, doc_bytes=16 << 10, split="contiguous")
    prepare([src], tmp_path / "out", opts, workers=2, progress=False)
    split_of = {}
    docs = {}
    for s in ("train", "val", "test"):
        for doc_id, payload in iter_documents(tmp_path / "out", s):
            name, offset = doc_id.rsplit("@", 1)
            assert name == "enwik.txt" and len(payload) <= 16 << 10
            docs[int(offset)] = payload
            split_of[int(offset)] = s
    order = sorted(docs)
    assert b"".join(docs[o] for o in order) == text  # nothing lost, nothing repeated
    splits = [split_of[o] for o in order]
    assert splits.count("train") >= 5 and splits.count("val") >= 1
    assert splits == sorted(splits, key=["train", "val"].index)  # train first, then val, in order
    val_start = next(o for o in order if split_of[o] == "val")
    assert val_start == round(len(text) * 0.9)  # cut exactly at 90% of the bytes
    # Documents end at a newline (the text has many), except where the split boundary cut one.
    assert all(docs[a].endswith(b"\n") for a, b in zip(order, order[1:]) if b != val_start)


def test_doc_bytes_cuts_after_the_last_newline_and_long_lines_at_the_limit():
    from data_prep.readers import cut_documents

    stream = [b"ab\ncd\n", b"x" * 40 + b"\nend"]
    docs = list(cut_documents(iter(stream), 16, 0, "f", False))
    assert [(d.doc_id, d.data) for d in docs] == [
        ("f@0", b"ab\ncd\n"), ("f@6", b"x" * 16), ("f@22", b"x" * 16), ("f@38", b"x" * 8 + b"\nend")]
    assert [d.doc_id for d in cut_documents(iter([b"short\n"]), 16, 0, "f", False)] == ["f"]


def test_content_hash_ids_give_a_split_independent_of_order_and_file(tmp_path):
    texts = [f"record {i}: " + "x" * (i % 17) for i in range(80)]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "dump.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (b / "first.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n"
                                                             for t in reversed(texts[:40])).encode()))
    write_parquet(b / "rest.parquet", texts[40:][::-1], binary=True)
    where = []
    for d in (a, b):
        out = tmp_path / f"out_{d.name}"
        prepare([d], out, PrepOptions(val_fraction=0.3, test_fraction=0.2), progress=False)
        where.append({p: s for s in ("train", "val", "test") for _, p in iter_documents(out, s)})
    assert len(where[0]) == 80 and where[0] == where[1]
    assert set(where[0].values()) == {"train", "val", "test"}


def test_parquet_bad_rows_name_the_row_and_id_columns_are_used(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_parquet(src / "t.parquet", ["a", "b", None, "d"], row_group=2, ident=["i1", "i2", "i3", "i4"])
    with pytest.raises(PrepError, match=r"t\.parquet:row 3: no field 'text'.*--skip missing_field"):
        prepare([src], tmp_path / "o1", PrepOptions(), progress=False)
    opts = PrepOptions(skip=("missing_field",), id_field="ident")
    prepare([src], tmp_path / "o2", opts, progress=False)
    docs = {k: v for s in ("train", "val", "test") for k, v in iter_documents(tmp_path / "o2", s)}
    assert docs == {"i1": b"a", "i2": b"b", "i4": b"d"}
    assert read_manifest(tmp_path / "o2")["bad_input"]["counts"]["missing_field"] == 1
    with pytest.raises(PrepError, match=r"t\.parquet: no column 'body'"):
        prepare([src], tmp_path / "o3", PrepOptions(text_field="body"), progress=False)


def test_readers_stream_in_bounded_memory(tmp_path):
    """A 6 MB raw file and a jsonl.gz of 6 MB of lines are read with little Python memory."""
    raw = tmp_path / "big.bin"
    raw.write_bytes(os.urandom(1 << 16) * 96)  # 6 MiB
    line = json.dumps({"text": "y" * 500}) + "\n"
    gz = tmp_path / "big.jsonl.gz"
    gz.write_bytes(gzip.compress(line.encode() * 12_000, compresslevel=1))  # 6 MB of lines
    opts = PrepOptions(max_sample_bytes=1 << 20)
    for path, want in ((raw, 6 << 20), (gz, 12_000 * 501)):
        job = plan_job([path], opts)
        ropts = ReadOptions(max_sample_bytes=opts.max_sample_bytes)
        tracemalloc.start()
        n_bytes = n_docs = 0
        for piece in job.pieces:
            for rec in read_piece(piece, ropts, ReadStats()):
                assert isinstance(rec, Doc), rec
                n_bytes += len(rec.data)
                n_docs += rec.offset + len(rec.data) >= rec.total
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n_bytes in (want, 12_000 * 500)  # every byte (JSONL: the text of every line)
        assert peak < 3 << 20, f"{path.name}: peak {peak / 1e6:.1f} MB of Python memory"
    assert n_docs == 12_000


def test_jsonl_ranges_own_whole_lines_and_report_file_lines(tmp_path):
    lines = [json.dumps({"text": f"line {i} " + "z" * (i % 50)}) for i in range(400)]
    lines[300] = '{"text": oops}'
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    job = plan_job([path], PrepOptions(piece_bytes=1000, skip=("malformed_json",)))
    assert len(job.pieces) > 10
    texts, bad, blank = [], [], 0
    for piece in job.pieces:
        stats = ReadStats()
        for rec in read_piece(piece, ReadOptions(), stats):
            (bad if isinstance(rec, Bad) else texts).append(rec)
        blank += stats.blank_lines
    assert blank == 0  # ranges meet at line starts: no line is split in two
    want = [json.loads(x)["text"].encode() for i, x in enumerate(lines) if i != 300]
    assert [d.data for d in texts] == want
    assert [(b.kind, b.where) for b in bad] == [("malformed_json", f"{path}:301")]


def test_cli_task_from_slurm_env_and_bad_task(tmp_path, monkeypatch, capsys):
    from data_prep.bytes import main

    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.txt").write_bytes(f"document {i}\n".encode() * (i + 1))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    args = [str(src), "--output", str(tmp_path / "o"), "--tasks", "2", "--no-progress", "--workers", "1"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["task"], out["tasks"], out["merged"]) == (1, 2, False)
    assert part_path(tmp_path / "o", 1, 2).is_file()
    assert main(args + ["--task", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["merged"] is True
    assert main(args + ["--task", "2"]) == 2
    assert "task 2 is not in 0..1" in capsys.readouterr().err
    digest = hashlib.sha256(b"".join(sorted(p.read_bytes() for p in src.iterdir()))).hexdigest()
    docs = [v for s in ("train", "val", "test") for _, v in iter_documents(tmp_path / "o", s)]
    assert hashlib.sha256(b"".join(sorted(docs))).hexdigest() == digest
