"""Deterministic, resumable training batches from prepared shards (``data.source=shards``).

The batch stream is a pure function of (seed, datasets, weights, seq_len, lanes) and a **global
sequence index** ``i = 0, 1, 2, ...``; ranks, workers and resumption only decide who computes
which ``i``:

* **Streams.** Each dataset's train shards are split into ``N`` streams (``N`` = the largest
  divisor of ``lanes`` not above the shard count; shards balanced by size). A stream is an
  endless sequence of ids: epoch after epoch, its shards in an order drawn from
  (seed, dataset, stream, epoch), each shard's documents in stored order, every document
  followed by the vocabulary's EOS id (never a byte value). Sequence ``q`` of a stream is ids
  ``[q*T, (q+1)*T)``. Because the manifest gives every shard's id count, any position can be
  found without reading the shards before it.
* **Lanes and rows.** Global sequence ``i`` lies in row ``p = i // lanes``, lane ``l = i % lanes``.
  With several datasets each row belongs to one dataset, drawn by the weights in blocks of
  ``MIX_BLOCK`` rows (exact quotas per block, seeded order). Within its dataset the row is the
  ``k``-th; lane ``l`` reads stream ``l % N`` at position ``k * (lanes // N) + l // N``.
* **Data-parallel split.** DP rank ``r`` of ``dp`` takes global sequences ``i = g + r + j*dp``
  (``j = 0, 1, ...``) from the position ``g`` where the run (re)started, ``micro_batch`` at a
  time; each micro-step consumes ``micro_batch * dp`` consecutive global sequences. The
  split is keyed only on the ``dp_rank``/``dp_size`` passed in (never RANK/WORLD_SIZE), so
  tensor-parallel peers get identical batches. The stream is endless, so every rank always
  has a next batch, whatever the shard counts.
* **Workers.** With ``num_workers = W`` DataLoader workers, worker ``w`` computes the rank's
  sequences ``j = w (mod W)`` and the main process interleaves them back in order, so the
  batches do not depend on ``W``.
* **Resume.** The state is ``{global_index: g, ...}``: the same on every rank. A resumed loader
  (any ``dp``, any ``W``, any rank) continues at ``g``: no repeat, no skip. Prefetched but unused
  sequences are simply dropped.

When ``dp * max(W, 1)`` divides ``lanes`` and every dataset has at least ``lanes`` shards, each
rank and worker reads only its own streams. Otherwise the stream is still exact, but a reader
also reads (and drops) sequences meant for others; a warning says so. ``data.lanes=0`` picks
``dp * max(W, 1)`` at the first start; the state keeps it, so later resumes at another DP size
continue the same global stream.

**Where shards live.** A dataset is a local directory or a remote prefix (``http(s)://``,
``pipe:COMMAND``, ``s3://``/``gs://`` through fsspec): shard locations are the manifest's names
appended to it, and everything is read through :func:`data_prep.remote.open_stream`, with the same
crc32 checks and the same exact resume (in a stream, a resume inside a shard reads and drops the
ids before its position). **Start-up.** Manifests are read (and local shards stat'ed) once per
job: by global rank 0, then sent to the other ranks (:func:`once_per_job`); DataLoader workers
get the :class:`Dataset` objects, metadata included, inside the pickled worker dataset.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import json
import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

from data_prep.remote import is_remote, join, size_of
from data_prep.shards import ShardError, read_manifest, shard_records

log = logging.getLogger("pretrain")

STATE_VERSION = 1
MIX_BLOCK = 4096  # rows per block of the weighted dataset schedule
SEQS_PER_ITEM_BYTES = 1 << 20  # a worker sends about this many ids per item
PAYLOAD_DTYPES = {"uint8": np.uint8, "uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


# --------------------------------------------------------------------------------------
# Datasets and the plan (pure functions of the configuration)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    path: str
    units: int  # ids in the stream: tokens (bytes for byte data) + one EOS per document
    samples: int
    bytes: int


@dataclass(frozen=True)
class Dataset:
    """The train split of one prepared dataset, as the loader needs it."""

    path: str
    kind: str  # 'bytes' or 'tokens'
    payload_dtype: Any
    shards: Tuple[Shard, ...]
    fingerprint: str
    manifest: Dict[str, Any]

    @property
    def units(self) -> int:
        return sum(s.units for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)


def open_dataset(path: str | Path, split: str = "train") -> Dataset:
    """Read a dataset's manifest; every local shard of ``split`` must exist with its recorded size.

    ``path`` may be remote (a URL or ``pipe:`` command, see :mod:`data_prep.remote`): shard
    locations are then the manifest's names appended to it, and their sizes are not asked for
    (one request per shard); a missing or damaged remote shard is named when it is read
    (``python -m data_prep.verify`` checks them all up front).
    """
    path = str(path) if is_remote(path) else str(Path(path))
    manifest = read_manifest(path)
    kind = manifest["kind"]
    dtype = PAYLOAD_DTYPES["uint8"] if kind == "bytes" else PAYLOAD_DTYPES[manifest["dtype"]]
    shards = []
    for rec in shard_records(manifest, split):
        p = join(path, rec["name"])
        try:
            size = size_of(p)
        except OSError:
            raise ShardError(f"shard {p}: listed in the manifest but missing") from None
        if size is not None and size != rec["file_bytes"]:
            raise ShardError(f"shard {p}: {size} bytes on disk but the manifest says "
                             f"{rec['file_bytes']} (truncated or replaced)")
        if rec["tokens"] + rec["docs"] > 0:
            shards.append(Shard(str(p), rec["tokens"] + rec["docs"], rec["samples"], rec["bytes"]))
    if not shards:
        raise ShardError(f"{path}: no {split} shards with data")
    ident = json.dumps([kind, [(r["name"], r["sha256"]) for r in shard_records(manifest, split)]])
    return Dataset(path, kind, dtype, tuple(shards), hashlib.sha256(ident.encode()).hexdigest()[:16],
                   manifest)


T = TypeVar("T")


def once_per_job(read: Callable[[], T]) -> T:
    """``read()`` run by global rank 0 only, its result (or its exception) sent to every rank.

    Without an initialized process group (one process, or before the launcher set one up) this
    is just ``read()``. Every rank must call it at the same point, as with any collective. So a
    job of N ranks reads each manifest and stats each shard once, not N times; DataLoader workers
    get the result inside the pickled dataset object (see :class:`_WorkerSequences`).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return read()
    box: List[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", read())
        except Exception as err:  # sent on, so the other ranks raise it too instead of hanging
            try:
                pickle.dumps(err)
            except Exception:  # an error that cannot travel goes as its message
                err = RuntimeError(f"{type(err).__name__}: {err}")
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0)


def balance(shards: Sequence[Shard], n: int) -> List[List[int]]:
    """Assign shard indices to ``n`` streams, largest first to the lightest stream (deterministic)."""
    heap = [(0, k) for k in range(n)]  # (load, stream); ties go to the lower stream index
    out: List[List[int]] = [[] for _ in range(n)]
    for idx in sorted(range(len(shards)), key=lambda i: (-shards[i].units, i)):
        load, s = heapq.heappop(heap)
        out[s].append(idx)
        heapq.heappush(heap, (load + shards[idx].units, s))
    return [sorted(o) for o in out]


class MixSchedule:
    """Which dataset each row belongs to: exact quotas per block of rows, in a seeded order."""

    def __init__(self, weights: Sequence[float], seed: int, block: int = MIX_BLOCK) -> None:
        total = float(sum(weights))
        raw = [w / total * block for w in weights]
        quotas = [math.floor(x) for x in raw]
        for i in sorted(range(len(raw)), key=lambda i: (quotas[i] - raw[i], i))[:block - sum(quotas)]:
            quotas[i] += 1
        if any(q == 0 for q in quotas):
            i = quotas.index(0)
            raise ValueError(f"data.weights: weight {weights[i]} of dataset {i} is below 1/{block} "
                             "of the total; raise it or drop the dataset")
        self.quotas, self.seed, self.block = quotas, seed, block
        self._base = np.repeat(np.arange(len(quotas)), quotas)
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def _block(self, b: int) -> Tuple[np.ndarray, np.ndarray]:
        got = self._cache.get(b)
        if got is None:
            order = np.random.default_rng([self.seed, 0x6D6978, b]).permutation(self._base)
            onehot = np.zeros((self.block + 1, len(self.quotas)), dtype=np.int64)
            onehot[np.arange(1, self.block + 1), order] = 1
            got = (order, np.cumsum(onehot, axis=0))
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[b] = got
        return got

    def locate(self, row: int) -> Tuple[int, int]:
        """(dataset, row index within that dataset) of global row ``row``."""
        b, o = divmod(row, self.block)
        order, counts = self._block(b)
        d = int(order[o])
        return d, b * self.quotas[d] + int(counts[o, d])


class StreamLayout:
    """Maps a global sequence index to (dataset, stream, sequence position in the stream)."""

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float], lanes: int,
                 seq_len: int, seed: int) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.datasets, self.weights = list(datasets), list(weights)
        self.lanes, self.seq_len, self.seed = lanes, seq_len, seed
        self.n_streams = [largest_divisor_at_most(lanes, len(d.shards)) for d in datasets]
        self.streams: List[List[List[int]]] = [balance(d.shards, n) for d, n in
                                                zip(datasets, self.n_streams)]
        self.stream_units = [[sum(d.shards[i].units for i in s) for s in ss]
                             for d, ss in zip(datasets, self.streams)]
        self.mix = MixSchedule(weights, seed) if len(datasets) > 1 else None
        self._orders: Dict[Tuple[int, int, int], Tuple[np.ndarray, np.ndarray]] = {}

    @property
    def full_width(self) -> bool:
        """True when every lane has a stream of its own (no shared reading)."""
        return all(n == self.lanes for n in self.n_streams)

    def locate(self, i: int) -> Tuple[int, int, int]:
        row, lane = divmod(i, self.lanes)
        d, k = self.mix.locate(row) if self.mix is not None else (0, row)
        n = self.n_streams[d]
        return d, lane % n, k * (self.lanes // n) + lane // n

    def epoch_order(self, d: int, s: int, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """(shard indices in reading order, cumulative unit counts) of a stream's epoch."""
        key = (d, s, epoch)
        got = self._orders.get(key)
        if got is None:
            members = np.asarray(self.streams[d][s])
            order = members[np.random.default_rng([self.seed, 0x736864, d, s, epoch]).permutation(
                len(members))]
            cum = np.cumsum([0] + [self.datasets[d].shards[i].units for i in order])
            got = (order, cum)
            if len(self._orders) > 256:
                self._orders.clear()
            self._orders[key] = got
        return got

    def find(self, d: int, s: int, unit: int) -> Tuple[int, int, int]:
        """(epoch, position in that epoch's shard order, unit at which that shard starts)."""
        z = self.stream_units[d][s]
        epoch, r = divmod(unit, z)
        _, cum = self.epoch_order(d, s, epoch)
        k = bisect.bisect_right(cum, r) - 1
        return epoch, k, epoch * z + int(cum[k])


# --------------------------------------------------------------------------------------
# Reading one stream
# --------------------------------------------------------------------------------------


class StreamReader:
    """Sequences of one (dataset, stream) at increasing positions, read shard by shard."""

    def __init__(self, plan: StreamLayout, d: int, s: int, eos: int, pad: int, skip_bad: bool,
                 counters: Dict[str, int]) -> None:
        self.plan, self.d, self.s = plan, d, s
        self.dataset = plan.datasets[d]
        self.eos, self.pad, self.skip_bad, self.counters = eos, pad, skip_bad, counters
        self.pos = -1  # unit position of the next unread unit (-1: nothing open)
        self.shard_end = -1
        self.epoch = self.k = 0
        self.pieces: Optional[Iterator[Tuple[np.ndarray, bool]]] = None
        self.piece: np.ndarray = np.empty(0, np.uint8)
        self.off = 0
        self.eos_pending = False  # an EOS follows the current piece

    def close(self) -> None:
        if self.pieces is not None:
            self.pieces.close()  # type: ignore[attr-defined]
            self.pieces = None

    def _open(self, epoch: int, k: int, start: int) -> None:
        self.close()
        order, _ = self.plan.epoch_order(self.d, self.s, epoch)
        shard = self.dataset.shards[int(order[k])]
        self.epoch, self.k, self.pos, self.shard_end = epoch, k, start, start + shard.units
        self.pieces = self._shard_pieces(shard)
        self.piece, self.off, self.eos_pending = self.piece[:0], 0, False

    def _next_shard(self) -> None:
        order, _ = self.plan.epoch_order(self.d, self.s, self.epoch)
        if self.k + 1 < len(order):
            self._open(self.epoch, self.k + 1, self.shard_end)
        else:
            self._open(self.epoch + 1, 0, self.shard_end)

    def _shard_pieces(self, shard: Shard) -> Iterator[Tuple[np.ndarray, bool]]:
        """(payload ids, whether a document ends after them) for every sample of the shard.

        Gives exactly ``shard.units`` ids (EOS included) or raises :class:`ShardError` naming the
        shard and sample; with ``skip_bad`` it warns, counts, and pads the rest of the shard with
        the pad id instead.
        """
        from data_prep.shards import iter_shard_raw

        dtype, done, samples = self.dataset.payload_dtype, 0, 0
        try:  # a remote shard is a stream: a resume inside it reads and drops what comes before
            for index, key, payload, _ in iter_shard_raw(shard.path, self.dataset.kind,
                                                         payload_only=True):
                arr = np.frombuffer(payload, dtype=dtype)
                _, chunk, chunks, _ = key.split("_")
                last = int(chunk) + 1 == int(chunks)
                if done + len(arr) + last > shard.units:
                    raise ShardError(f"shard {shard.path}: sample {index} ({key}): more ids than the "
                                     f"manifest's {shard.units}")
                done += len(arr) + last
                samples += 1
                yield arr, last
            if done != shard.units or samples != shard.samples:
                raise ShardError(f"shard {shard.path}: ends after {samples} samples / {done} ids but the "
                                 f"manifest lists {shard.samples} / {shard.units} (truncated)")
        except ShardError as err:
            if not self.skip_bad:
                raise
            missing = shard.units - done
            self.counters["bad_shards"] = self.counters.get("bad_shards", 0) + 1
            self.counters["padded_ids"] = self.counters.get("padded_ids", 0) + missing
            log.warning("%s; skipping the rest of the shard (%d ids replaced by the pad id; "
                        "data.skip_bad_shards=true)", err, missing)
            while missing > 0:
                n = min(missing, 1 << 20)
                yield np.full(n, self.pad, dtype=np.uint32), False
                missing -= n

    def _advance(self, n: int, out: Optional[np.ndarray]) -> None:
        """Consume ``n`` ids, copying them into ``out`` when given."""
        filled = 0
        while filled < n:
            if self.off >= len(self.piece):
                if self.eos_pending:
                    if out is not None:
                        out[filled] = self.eos
                    self.eos_pending = False
                    filled += 1
                    self.pos += 1
                    continue
                assert self.pieces is not None
                nxt = next(self.pieces, None)
                if nxt is None:
                    self._next_shard()
                    continue
                (self.piece, self.eos_pending), self.off = nxt, 0
                continue
            take = min(n - filled, len(self.piece) - self.off)
            if out is not None:
                out[filled:filled + take] = self.piece[self.off:self.off + take]
            self.off += take
            self.pos += take
            filled += take

    def read(self, q: int, out: np.ndarray) -> None:
        """Write sequence ``q`` (ids ``[q*T, (q+1)*T)`` of the stream) into ``out``."""
        start = q * len(out)
        if not (0 <= self.pos <= start < self.shard_end):
            epoch, k, shard_start = self.plan.find(self.d, self.s, start)
            self._open(epoch, k, shard_start)
        self._advance(start - self.pos, None)
        self._advance(len(out), out)


# --------------------------------------------------------------------------------------
# Sequences of one rank (and one worker)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker process needs to produce its part of a rank's sequences (the datasets
    travel with it, metadata included, so a worker never reads a manifest or stats a shard)."""

    datasets: Tuple[Dataset, ...]
    weights: Tuple[float, ...]
    lanes: int
    seq_len: int
    seed: int
    eos: int
    pad: int
    dtype: str
    skip_bad: bool


class RankCursor:
    """Produces a rank's sequences by rank-local index ``j`` (global ``start + dp_rank + j*dp_size``)."""

    def __init__(self, plan: StreamLayout, spec: StreamSpec, start: int, dp_rank: int, dp_size: int) -> None:
        self.plan, self.spec = plan, spec
        self.start, self.dp_rank, self.dp_size = start, dp_rank, dp_size
        self.readers: Dict[Tuple[int, int], StreamReader] = {}
        self.counters: Dict[str, int] = {}

    def fill(self, out: np.ndarray, js: Sequence[int]) -> None:
        """Write the sequences with rank-local indices ``js`` (increasing) into the rows of ``out``."""
        for row, j in zip(out, js):
            d, s, q = self.plan.locate(self.start + self.dp_rank + j * self.dp_size)
            reader = self.readers.get((d, s))
            if reader is None:
                reader = self.readers[(d, s)] = StreamReader(self.plan, d, s, self.spec.eos, self.spec.pad,
                                                             self.spec.skip_bad, self.counters)
            reader.read(q, row)

    def take_counters(self) -> Dict[str, int]:
        delta = dict(self.counters)
        self.counters.clear()
        return delta

    def close(self) -> None:
        for r in self.readers.values():
            r.close()
        self.readers.clear()


class _WorkerSequences(torch.utils.data.IterableDataset):
    """The rank's sequence stream split over DataLoader workers (worker w: j = w mod W)."""

    def __init__(self, spec: StreamSpec, start: int, dp_rank: int, dp_size: int, per_item: int) -> None:
        super().__init__()
        self.spec, self.start, self.dp_rank, self.dp_size, self.per_item = (
            spec, start, dp_rank, dp_size, per_item)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, Dict]]:
        info = torch.utils.data.get_worker_info()
        worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
        cursor = RankCursor(build_plan(self.spec), self.spec, self.start, self.dp_rank, self.dp_size)
        c, t = self.per_item, 0
        try:
            while True:  # item t holds j = worker + (t*c + u)*n for u < c
                out = np.empty((c, self.spec.seq_len), dtype=self.spec.dtype)
                cursor.fill(out, range(worker + t * c * n, worker + (t + 1) * c * n, n))
                t += 1
                yield out, cursor.take_counters()
        finally:
            cursor.close()


def build_plan(spec: StreamSpec) -> StreamLayout:
    """The layout of ``spec``'s stream (pure computation on metadata the spec carries)."""
    return StreamLayout(list(spec.datasets), spec.weights, spec.lanes, spec.seq_len, spec.seed)


# --------------------------------------------------------------------------------------
# The batch source
# --------------------------------------------------------------------------------------


class ShardLoader:
    """Batch source over prepared shards: ``next_batch()``, ``state_dict()``, ``load_state_dict()``.

    ``next_batch()`` returns ``(micro_batch, seq_len)`` int64 ids. See the module docstring for
    how the stream is defined and split.
    """

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float], seq_len: int,
                 micro_batch: int, seed: int, eos: int, pad: int, vocab_size: int, dp_rank: int = 0,
                 dp_size: int = 1, lanes: int = 0, num_workers: int = 0, skip_bad: bool = False) -> None:
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, dp_size={dp_size})")
        if len(weights) != len(datasets) or any(w <= 0 for w in weights):
            raise ValueError(f"need one positive weight per dataset, got {list(weights)}")
        self.datasets, self.weights = list(datasets), [float(w) for w in weights]
        self.seq_len, self.micro_batch, self.seed = seq_len, micro_batch, seed
        self.eos, self.pad = eos, pad
        self.dtype = "uint16" if vocab_size <= 1 << 16 else "int32"
        self.dp_rank, self.dp_size, self.num_workers, self.skip_bad = dp_rank, dp_size, num_workers, skip_bad
        self.lanes_requested = lanes
        self.global_index = 0
        self.counters: Dict[str, int] = {"bad_shards": 0, "padded_ids": 0}
        self._set_lanes(lanes or dp_size * max(num_workers, 1))
        self._iter: Optional[Iterator[np.ndarray]] = None  # with workers
        self._cursor: Optional[RankCursor] = None  # without workers
        self._j = 0

    # ------------------------------------------------------------------ setup

    def _set_lanes(self, lanes: int) -> None:
        self.lanes = lanes
        self.spec = StreamSpec(tuple(self.datasets), tuple(self.weights), lanes,
                               self.seq_len, self.seed, self.eos, self.pad, self.dtype, self.skip_bad)
        self.plan = StreamLayout(self.datasets, self.weights, lanes, self.seq_len, self.seed)
        width = self.dp_size * max(self.num_workers, 1)
        if lanes % width or not self.plan.full_width:
            log.warning("data: lanes=%d with dp=%d x workers=%d and %s shards: readers also read "
                        "sequences of other ranks/workers (exact, but more reading); best when "
                        "dp*workers divides lanes and every dataset has >= lanes train shards",
                        lanes, self.dp_size, max(self.num_workers, 1),
                        "/".join(str(len(d.shards)) for d in self.datasets))

    def fingerprint(self) -> List[str]:
        return [d.fingerprint for d in self.datasets]

    @property
    def bytes_per_unit(self) -> float:
        """Expected bytes per id of the training stream (EOS ids count as units, not bytes)."""
        total = sum(self.weights)
        return sum(w / total * d.bytes / d.units for w, d in zip(self.weights, self.datasets))

    def describe(self) -> str:
        parts = [f"{d.path} ({d.kind}, {len(d.shards)} train shards, {d.bytes / 1e6:.1f} MB, "
                 f"weight {w:g})" for d, w in zip(self.datasets, self.weights)]
        return (f"shards: {'; '.join(parts)}; seq_len {self.seq_len}, lanes {self.lanes}, "
                f"dp rank {self.dp_rank}/{self.dp_size}, workers {self.num_workers}")

    # ------------------------------------------------------------------ iteration

    def _worker_sequences(self) -> Iterator[np.ndarray]:
        """The rank's sequences from ``self.global_index`` on (views into worker items), computed
        by DataLoader workers: item t of worker w holds sequences j = w + (t*c + u)*W, u < c."""
        per_item = max(1, min(64, SEQS_PER_ITEM_BYTES // self.seq_len))
        ds = _WorkerSequences(self.spec, self.global_index, self.dp_rank, self.dp_size, per_item)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                                             prefetch_factor=2, persistent_workers=False)
        W = self.num_workers
        it = iter(loader)
        while True:
            items = []
            for _ in range(W):  # the DataLoader returns items from workers 0, 1, ..., W-1 in turn
                item, delta = next(it)
                self._count(delta)
                items.append(item.numpy() if isinstance(item, torch.Tensor) else item)
            for u in range(per_item):
                for w in range(W):
                    yield items[w][u]

    def _count(self, delta: Dict[str, Any]) -> None:
        for k, v in delta.items():
            self.counters[k] = self.counters.get(k, 0) + int(v)

    def next_batch(self) -> torch.Tensor:
        """(micro_batch, seq_len) int64 ids: this rank's next micro-batch."""
        B = self.micro_batch
        if self.num_workers == 0:  # read straight into the int64 batch (one copy)
            if self._cursor is None:
                self._cursor = RankCursor(self.plan, self.spec, self.global_index, self.dp_rank, self.dp_size)
                self._j = 0
            out = np.empty((B, self.seq_len), dtype=np.int64)
            self._cursor.fill(out, range(self._j, self._j + B))
            self._count(self._cursor.take_counters())
            self._j += B
        else:
            if self._iter is None:
                self._iter = self._worker_sequences()
            out = np.empty((B, self.seq_len), dtype=np.int64)
            for row in out:
                row[:] = next(self._iter)
        self.global_index += B * self.dp_size
        return torch.from_numpy(out)

    def close(self) -> None:
        """Close open shards and stop worker processes (a later ``next_batch`` starts again)."""
        if self._iter is not None:
            self._iter.close()  # type: ignore[attr-defined]
        if self._cursor is not None:
            self._cursor.close()
        self._iter, self._cursor = None, None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ state

    def state_dict(self) -> Dict[str, Any]:
        """Where the global stream stands: small, picklable and JSON-able, identical on every rank
        (load any rank's state at any DP size). ``counters`` (bad shards) are per process, not saved."""
        return {"kind": "shards", "version": STATE_VERSION, "global_index": self.global_index,
                "lanes": self.lanes, "seq_len": self.seq_len, "seed": self.seed,
                "datasets": self.fingerprint(), "weights": self._shares()}

    def _shares(self) -> List[float]:
        total = sum(self.weights)
        return [w / total for w in self.weights]

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue exactly after the last sequence consumed when ``state`` was taken."""
        if state.get("kind") != "shards":
            raise ValueError(f"data state: saved by a {state.get('kind', 'different')!r} batch source, "
                             "not by data.source=shards")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state: version {state.get('version')} is not supported")
        for key, mine in (("seq_len", self.seq_len), ("seed", self.seed), ("datasets", self.fingerprint()),
                          ("weights", self._shares())):
            same = (len(state[key]) == len(mine) and all(math.isclose(a, b, rel_tol=1e-9)
                                                          for a, b in zip(state[key], mine))
                    if key == "weights" else state[key] == mine)
            if not same:
                raise ValueError(f"data state: {key} was {state[key]} when saved but is {mine} now; the "
                                 "saved position does not apply to this data stream")
        if self.lanes_requested and self.lanes_requested != state["lanes"]:
            raise ValueError(f"data state: data.lanes={self.lanes_requested} but the saved stream used "
                             f"lanes={state['lanes']} (set data.lanes=0 to keep the saved value)")
        self.close()
        if state["lanes"] != self.lanes:
            self._set_lanes(int(state["lanes"]))
        self.global_index = int(state["global_index"])


def read_val_text(datasets: Sequence[Dataset], weights: Sequence[float], n_bytes: int, vocab: Any,
                  split: str = "val") -> bytes:
    """Held-out raw bytes: from each dataset's ``split`` in stored order, shares by weight."""
    from data_prep.shards import iter_documents

    total = float(sum(weights))
    out = bytearray()
    for i, (d, w) in enumerate(zip(datasets, weights)):
        want = n_bytes - len(out) if i == len(datasets) - 1 else round(n_bytes * w / total)
        got = bytearray()
        for _, payload in iter_documents(d.path, split, d.manifest):
            if d.kind == "tokens":
                ids = np.frombuffer(payload, dtype=d.payload_dtype)
                got += vocab.decode(ids.tolist())
            else:
                got += payload
            if len(got) >= want:
                break
        if not got:
            raise ShardError(f"{d.path}: no {split} documents to validate on (prepare it with a "
                             "larger --val-fraction)")
        out += got[:want]
    return bytes(out)

