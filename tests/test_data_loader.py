"""The shard loader: packing with EOS, DP x TP splitting, exact resume (workers, DP-size change),
weighted mixing, corrupt shards, and the build_data contract."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from data_prep.bytes import PrepOptions, prepare
from data_prep.shards import ShardError, iter_documents, iter_shard_documents, read_manifest
from data_prep.vocab import ByteVocab
from pretrain.config import CONFIG_DIR, ConfigError, load_config
from pretrain.data import build_data
from pretrain.data.shard_loader import ShardLoader, open_dataset
from tests.data_corpus import make_corpus

EOS, PAD = 258, 256
T, B = 128, 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """~8 train shards of unequal sizes from a real-text corpus."""
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, n_text=60)
    out = tmp_path_factory.mktemp("ds")
    prepare([root], out, PrepOptions(shard_bytes=24_000, max_sample_bytes=8192, val_fraction=0.1),
            progress=False)
    return out


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory) -> Path:
    """A second dataset whose every document starts with a marker, for mixing."""
    root = tmp_path_factory.mktemp("other")
    for i in range(30):
        (root / f"o{i:02d}.txt").write_bytes(b"@@OTHER@@ " + bytes([65 + i % 26]) * (500 + 37 * i))
    out = tmp_path_factory.mktemp("ds2")
    prepare([root], out, PrepOptions(shard_bytes=4000, val_fraction=0.1), progress=False)
    return out


def loader(path: Path, **kw) -> ShardLoader:
    args = dict(seq_len=T, micro_batch=B, seed=7, eos=EOS, pad=PAD, vocab_size=259)
    args.update(kw)
    datasets = kw.pop("datasets", None) or [open_dataset(path)]
    args.pop("datasets", None)
    weights = args.pop("weights", None) or [1.0] * len(datasets)
    return ShardLoader(datasets, weights, **args)


def take(ld: ShardLoader, n: int) -> List[torch.Tensor]:
    return [ld.next_batch() for _ in range(n)]


def split_docs(ids: np.ndarray) -> List[bytes]:
    """Documents of an id stream (EOS-terminated), dropping the unfinished tail."""
    out, start = [], 0
    for pos in np.flatnonzero(ids == EOS):
        out.append(bytes(ids[start:pos].astype(np.uint8)))
        start = pos + 1
    return out


def test_batches_pack_documents_with_eos_in_shard_order(dataset):
    ld = loader(dataset, lanes=1)
    batches = take(ld, 150)
    x = batches[0]
    assert x.shape == (B, T) and x.dtype == torch.int64
    stream = torch.cat([b.flatten() for b in batches]).numpy()
    assert stream.max() == EOS and not (stream == PAD).any()
    # Expected: epoch 0 of the single stream = shards in the plan's order, documents in stored
    # order, each followed by EOS (never a byte value).
    order, _ = ld.plan.epoch_order(0, 0, 0)
    expected = []
    for k in order:
        shard = ld.plan.datasets[0].shards[int(k)]
        expected += [p for _, p, _ in iter_shard_documents(Path(shard.path))]
    got = split_docs(stream)
    assert got == expected[:len(got)] and len(got) > 10


def test_dp2_tp2_peers_identical_ranks_disjoint_union_covers_epoch(dataset, monkeypatch):
    """4 simulated ranks: (dp, tp) = (r // 2, r % 2). Data keys on dp only, never on RANK."""
    cfg = load_config(CONFIG_DIR / "debug.yaml", ["data.source=shards", f"data.datasets=[{dataset}]",
                                                 f"model.seq_len={T}"])
    plan = loader(dataset, dp_size=2).plan  # lanes = 2: DP rank r reads stream r
    assert plan.lanes == 2 and plan.n_streams == [2]
    n = max(plan.stream_units[0]) // (B * T) + 2  # enough batches to finish epoch 0 on each rank
    batches = {}
    for rank in range(4):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "4")
        data = build_data(cfg, ByteVocab(), B, dp_rank=rank // 2, dp_size=2)
        batches[rank] = torch.cat(take(data.train, n)).numpy()
    assert np.array_equal(batches[0], batches[1]) and np.array_equal(batches[2], batches[3])
    ds = open_dataset(dataset)
    all_docs = [p for _, p in iter_documents(dataset, "train")]
    seen = collections.Counter()
    for r in (0, 1):
        n_docs = sum(sum(1 for _ in iter_shard_documents(Path(ds.shards[i].path)))
                     for i in plan.streams[0][r])
        docs = split_docs(batches[2 * r].flatten())
        assert len(docs) >= n_docs
        seen.update(docs[:n_docs])  # this rank's share of epoch 0
    assert seen == collections.Counter(all_docs)  # disjoint (no doc twice), union = the epoch


def test_unequal_shards_never_give_ranks_unequal_batches(dataset):
    ranks = [loader(dataset, dp_rank=r, dp_size=3, lanes=3) for r in range(3)]
    epoch_batches = ranks[0].plan.datasets[0].units // (B * T * 3)
    for _ in range(3 * epoch_batches + 5):  # several epochs; every rank always has a batch
        for ld in ranks:
            assert ld.next_batch().shape == (B, T)
    assert len({ld.state_dict()["global_index"] for ld in ranks}) == 1


def test_stream_does_not_depend_on_workers_and_resumes_exactly_with_workers(dataset):
    full = torch.cat(take(loader(dataset, lanes=2), 30))
    with_workers = loader(dataset, lanes=2, num_workers=2)
    first = take(with_workers, 12)
    state = with_workers.state_dict()
    with_workers.close()
    assert torch.equal(torch.cat(first), full[:12 * B])
    resumed = loader(dataset, num_workers=2)  # lanes=0: taken from the state
    resumed.load_state_dict(state)
    rest = take(resumed, 18)
    resumed.close()
    assert torch.equal(torch.cat(rest), full[12 * B:])  # no repeat, no skip
    again = loader(dataset, lanes=2)
    again.load_state_dict(state)  # and without workers
    assert torch.equal(again.next_batch(), full[12 * B:13 * B])


def test_resume_after_a_data_parallel_size_change_continues_the_global_stream(dataset):
    reference = torch.cat(take(loader(dataset, lanes=4), 40)).numpy()  # dp=1: global order
    dp2 = [loader(dataset, dp_rank=r, dp_size=2, lanes=4) for r in (0, 1)]
    got = np.empty_like(reference)
    for step in range(5):
        for r, ld in enumerate(dp2):
            x = ld.next_batch().numpy()
            got[step * 2 * B + r:(step + 1) * 2 * B:2] = x  # rank r holds global i = r (mod 2)
    state = dp2[0].state_dict()
    assert state == dp2[1].state_dict() and state["global_index"] == 5 * 2 * B
    dp4 = [loader(dataset, dp_rank=r, dp_size=4) for r in range(4)]
    for ld in dp4:
        ld.load_state_dict(state)
    pos = state["global_index"]
    for _ in range(4):
        for r, ld in enumerate(dp4):
            got[pos + r:pos + 4 * B:4] = ld.next_batch().numpy()
        pos += 4 * B
    assert np.array_equal(got[:pos], reference[:pos])


def test_weighted_mixing_is_deterministic_and_resumable(dataset, other_dataset):
    datasets = [open_dataset(dataset), open_dataset(other_dataset)]
    a = loader(dataset, datasets=datasets, weights=[3.0, 1.0], lanes=2)
    xs = take(a, 150)
    other_ids = np.array(sorted(set(b"@OTHER ") | set(range(65, 91)) | {EOS}))
    frac = np.mean([np.isin(row, other_ids).all() for x in xs for row in x.numpy()])
    assert 0.15 < frac < 0.35, frac  # about 1 in 4 sequences from the second dataset
    b = loader(dataset, datasets=datasets, weights=[3.0, 1.0], lanes=2)
    assert all(torch.equal(x, y) for x, y in zip(xs[:50], take(b, 50)))
    c = loader(dataset, datasets=datasets, weights=[3.0, 1.0])
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(xs[50:80], take(c, 30)))
    with pytest.raises(ValueError, match="weights was"):
        loader(dataset, datasets=datasets, weights=[1.0, 1.0]).load_state_dict(b.state_dict())


def test_corrupt_shard_names_shard_and_sample_or_is_skipped_and_counted(dataset, tmp_path):
    import shutil

    work = tmp_path / "ds"
    shutil.copytree(dataset, work)
    manifest = read_manifest(work)
    victim = work / manifest["shards"][0]["name"]
    data = bytearray(victim.read_bytes())
    data[1200] ^= 0xFF  # inside the first sample's payload
    victim.write_bytes(bytes(data))
    ld = loader(work, lanes=1)
    with pytest.raises(ShardError, match=rf"shard .*{victim.name}: sample 0 \(\w+\): crc32 mismatch"):
        take(ld, 200)
    # Truncated while training (the size check at start-up passed).
    victim.write_bytes(dataset.joinpath(victim.name).read_bytes())
    ld = loader(work, lanes=1)
    ld_skip = loader(work, lanes=1, skip_bad=True)
    size = victim.stat().st_size
    victim.write_bytes(victim.read_bytes()[:size // 2])
    truncated = rf"shard .*{victim.name}: (corrupt or truncated at sample \d+|ends after)"
    with pytest.raises(ShardError, match=truncated):
        take(ld, 200)
    n = sum(s.units for s in ld.plan.datasets[0].shards) // (B * T) + 2
    out = take(ld_skip, n)  # one epoch and more: the stream goes on, positions unchanged
    assert ld_skip.counters["bad_shards"] >= 1 and ld_skip.counters["padded_ids"] > 0
    assert sum(int((x == PAD).sum()) for x in out) >= ld_skip.counters["padded_ids"] > 0
    # At start-up a truncated shard is refused by size, naming it.
    cfg = load_config(CONFIG_DIR / "debug.yaml", ["data.source=shards", f"data.datasets=[{work}]"])
    with pytest.raises(ConfigError, match=rf"data.datasets\[0\]: shard .*{victim.name}: .*truncated"):
        build_data(cfg, ByteVocab(), B)


def test_build_data_contract_and_val_text(dataset):
    cfg = load_config(CONFIG_DIR / "debug.yaml", ["data.source=shards", f"data.datasets=[{dataset}]",
                                                 "data.val_bytes=5000"])
    data = build_data(cfg, ByteVocab(), B)
    x = data.train.next_batch()
    assert x.shape == (B, cfg.model.seq_len) and x.dtype == torch.int64
    val = b"".join(p for _, p in iter_documents(dataset, "val"))
    assert data.val_text == val[:5000]
    ds = open_dataset(dataset)
    assert data.bytes_per_unit == pytest.approx(ds.bytes / ds.units) and data.bytes_per_unit < 1.0
    state = data.train.state_dict()
    assert state["global_index"] == B and isinstance(state, dict)
    with pytest.raises(ValueError, match="seq_len was"):
        loader(dataset, seq_len=32, seed=cfg.train.seed).load_state_dict(state)


@pytest.mark.parametrize("overrides,expected", [
    (["data.source=shards"], "data.datasets: required when data.source=shards"),
    (["data.source=shards", "data.datasets=[/nonexistent]"], "data.datasets[0]: no manifest.json"),
    (["data.source=shards", "data.datasets=[DS]", "data.weights=[1,2]"], "data.weights: 2 weights for 1"),
    (["data.source=shards", "data.datasets=[DS]", "data.weights=[-1]"], "data.weights: must be positive"),
    (["data.num_workers=-1"], "data.num_workers: must be >= 0"),
    (["data.lanes=-2"], "data.lanes: must be >= 0"),
    (["data.source=tars"], "data.source: must be 'stdlib', 'files' or 'shards'"),
])
def test_config_errors_name_the_key(overrides, expected, dataset):
    overrides = [o.replace("DS", str(dataset)) for o in overrides]
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "debug.yaml", overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_byte_dataset_refused_for_the_subword_vocab(dataset, sp_model):
    from data_prep.vocab import SentencePieceVocab

    cfg = load_config(CONFIG_DIR / "debug_subword.yaml", [
        "data.source=shards", f"data.datasets=[{dataset}]", f"model.tokenizer={sp_model}"])
    with pytest.raises(ConfigError, match=r"data.datasets\[0\]: .* holds byte shards .* needs token shards"):
        build_data(cfg, SentencePieceVocab(sp_model), B)


def test_trainer_resumes_bit_for_bit_from_a_checkpoint_on_shards(dataset, tmp_path):
    import json
    import shutil

    from pretrain.config import derive
    from pretrain.training.trainer import Trainer

    common = ["data.source=shards", f"data.datasets=[{dataset}]", "data.num_workers=2", "train.max_steps=6",
              "checkpoint.interval=3", "checkpoint.keep_last=5", "logging.log_interval=1",
              "logging.tensorboard=false"]

    def run(name: str) -> list:
        cfg = load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={tmp_path / name}", *common])
        trainer = Trainer(cfg, derive(cfg))
        trainer.train()
        trainer.train_data.close()
        return json.loads((tmp_path / name / "history.json").read_text())

    full = run("full")
    part = tmp_path / "part" / "checkpoints"
    part.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000003", part / "step_00000003")
    (part / "latest").write_text("step_00000003\n")
    resumed = run("part")
    assert [h["step"] for h in resumed] == [4, 5, 6]
    assert [h["loss"] for h in resumed] == [h["loss"] for h in full[3:]]


def _counting(log: Path, tag: str, fn):
    """``fn`` that first appends ``<pid> <tag> <location>`` to ``log`` (shared by forked workers)."""
    import os

    def wrapper(location, *args, **kw):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {tag} {location}\n")
        return fn(location, *args, **kw)
    return wrapper


def _count_reads(monkeypatch, log: Path) -> None:
    import data_prep.shards
    import pretrain.data.shard_loader

    monkeypatch.setattr(data_prep.shards, "open_stream", _counting(log, "open", data_prep.shards.open_stream))
    monkeypatch.setattr(pretrain.data.shard_loader, "size_of",
                        _counting(log, "size", pretrain.data.shard_loader.size_of))


def test_workers_get_dataset_metadata_from_the_parent_never_rereading(dataset, tmp_path, monkeypatch):
    import os

    log = tmp_path / "reads.log"
    _count_reads(monkeypatch, log)
    ld = loader(dataset, lanes=2, num_workers=2)
    take(ld, 6)
    ld.close()
    lines = [line.split(" ", 2) for line in log.read_text().splitlines()]
    manifests = [pid for pid, tag, where in lines if where.endswith("manifest.json")]
    sizes = [pid for pid, tag, where in lines if tag == "size"]
    shard_reads = {pid for pid, tag, where in lines if tag == "open" and where.endswith(".tar")}
    assert manifests == [str(os.getpid())]  # the parent's one read
    assert len(sizes) == len(read_manifest(dataset)["shards"]) - 1  # train shards, once (one is val)
    assert len(shard_reads) == 2 and str(os.getpid()) not in shard_reads  # the workers did read shards


def _rank_main(rank: int, tmp: str, dataset: str) -> None:
    """One of two gloo ranks: build the data, count what this rank read, write it down."""
    import json

    import pytest
    import torch.distributed as dist

    from pretrain.data.shard_loader import once_per_job

    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    log = Path(tmp) / f"reads{rank}.log"
    log.touch()
    with pytest.MonkeyPatch.context() as mp:
        _count_reads(mp, log)
        cfg = load_config(CONFIG_DIR / "debug.yaml", ["data.source=shards", f"data.datasets=[{dataset}]",
                                                     f"model.seq_len={T}", "data.val_bytes=2000"])
        data = build_data(cfg, ByteVocab(), B, dp_rank=rank, dp_size=2)
        reads_at_start = log.read_text().splitlines()
        batch = data.train.next_batch()

    def fail() -> None:
        raise ValueError("rank 0 could not read")
    try:
        once_per_job(fail)
        error = ""
    except ValueError as err:
        error = str(err)
    dist.destroy_process_group()
    (Path(tmp) / f"rank{rank}.json").write_text(json.dumps({
        "reads": reads_at_start, "batch": batch.tolist(), "val": data.val_text.hex(), "error": error}))


def test_rank0_reads_manifests_and_val_text_other_ranks_get_them(dataset, tmp_path):
    import json

    import torch.multiprocessing as mp

    # fork: the ranks inherit the imports (spawn would import torch twice more, seconds each)
    mp.start_processes(_rank_main, args=(str(tmp_path), str(dataset)), nprocs=2, join=True,
                       start_method="fork")
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    manifest_reads = [[line for line in g["reads"] if line.endswith("manifest.json")] for g in got]
    assert len(manifest_reads[0]) == 1 and got[1]["reads"] == []  # rank 1 read nothing at start-up
    assert got[0]["val"] == got[1]["val"] != ""
    assert got[0]["error"] == got[1]["error"] == "rank 0 could not read"
    for r in (0, 1):  # the batches of a single-process loader at the same DP coordinates
        assert got[r]["batch"] == loader(dataset, dp_rank=r, dp_size=2, seed=1234).next_batch().tolist()


@pytest.mark.parametrize("damage,field", [(lambda m: m.pop("shards"), "shards"),
                                          (lambda m: m["shards"][0].pop("sha256"), "sha256")])
def test_a_malformed_manifest_is_one_error_naming_the_field(dataset, tmp_path, damage, field):
    """The loader reads manifests through the same structure check as data_prep's readers: a
    damaged one is a ManifestError naming the field, not a KeyError traceback."""
    import json
    import shutil

    from data_prep.shards import ManifestError

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    damage(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=field):
        open_dataset(copy)
