"""Offline consolidation: the files of any checkpoint -> full fp32 weights with plain names.

One process on any machine, no process group, no training data. A single-process checkpoint is
read as it is. A DeepSpeed checkpoint (``pretrain.parallel.engine``) is read from the files every
rank wrote, for any TP x DP layout and ZeRO stage:

* ZeRO-3: ``zero_pp_rank_{dp}_mp_rank_{tp:02d}_optim_states.pt`` holds, per parameter group,
  one flat fp32 vector: each parameter of the group in turn, ``ceil(numel / dp)`` elements of
  it (the last rank's share zero-padded). Parameter ``k`` of TP rank ``t`` is the concatenation
  over DP ranks of their ``k``-th piece, cut to ``numel``.
* ZeRO-1/2: per group one fp32 partition per DP rank (``single_partition_of_fp32_groups``);
  the DP ranks' partitions concatenated are the group's parameters back to back (padding only
  at the end). Under bf16 the optimizer files are named ``bf16_zero_pp_rank_*``.
* ZeRO-0: ``mp_rank_{tp:02d}_model_states.pt`` holds this TP rank's module weights (fp32) or,
  under bf16, the optimizer's fp32 masters per group (``fp32_groups``, names from the
  ``param_group_names`` the engine records).

The order and shapes come from ``param_shapes`` in the model-states file (DeepSpeed's record of
its parameter groups); which parameters are tensor-parallel, and along which dimension, from the
``tp_partition`` map the engine writes into its client state. Files are read one at a time,
memory-mapped (the Adam moments are never touched), and every piece is written straight into
its place in the full tensor (TP shards along their dimension), so the peak is about one fp32
copy of the model plus one file's fp32 share (measured 1.23x the model at TP2xDP2).
DeepSpeed's ``zero_to_fp32`` is not used: it refuses ZeRO-3 with manual TP.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from pretrain.checkpoints import store
from pretrain.checkpoints.exports import read_export, read_export_meta, write_export
from pretrain.runtime.logs import get_logger

log = get_logger()
Weights = Dict[str, torch.Tensor]


def is_deepspeed_checkpoint(path: Path) -> bool:
    """True for a step directory written by the DeepSpeed engine."""
    return (path / "rank_00000.pt").is_file() or bool(list(path.glob("*mp_rank_*model_states.pt")))


def resolve(path: Path) -> Path:
    """A run directory, its ``checkpoints`` directory or a step directory -> the step directory
    (single-process or DeepSpeed); one clear error otherwise."""
    path = Path(path)
    if (path / "state.pt").is_file() or is_deepspeed_checkpoint(path):
        return path
    for candidate in (path / "checkpoints", path):
        pointer = candidate / store.LATEST
        if pointer.is_file():
            target = candidate / pointer.read_text().strip()
            if (target / "state.pt").is_file() or is_deepspeed_checkpoint(target):
                return target
            raise FileNotFoundError(f"{pointer} points at {target}, which holds no checkpoint")
    raise FileNotFoundError(f"no checkpoint found at {path} (expected a run directory with "
                            "checkpoints/latest, or a checkpoint directory)")


def read_checkpoint(ckpt: Path) -> Dict[str, Any]:
    """``{"model": weights, "config": dict, "meta": dict}`` of a resolved step directory."""
    ckpt = Path(ckpt)
    if (ckpt / "state.pt").is_file():
        state = store.load(ckpt)
        return {"model": state["model"], "config": state["config"],
                "meta": {"step": state["step"], "bytes_seen": state["bytes_seen"],
                         "data": state.get("data", {}), "source": str(ckpt), "world_size": 1,
                         "tensor_parallel": 1, "zero_stage": None}}
    return read_deepspeed(ckpt)


def _load(file: Path) -> Dict[str, Any]:
    try:  # memory-mapped: the Adam moments beside the weights are never read
        return torch.load(file, map_location="cpu", weights_only=False, mmap=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise RuntimeError(f"cannot read checkpoint file {file}: {err}") from None


def _layout(ckpt: Path) -> Tuple[Dict[str, Any], int, int, int]:
    """(client state of TP rank 0, TP size, DP size, ZeRO stage), checked against the files."""
    files = sorted(ckpt.glob("*mp_rank_00_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{ckpt} has no DeepSpeed model states (mp_rank_00_model_states.pt)")
    client = _load(files[0])
    tp, world = int(client["tensor_parallel"]), int(client["world_size"])
    stage = int(client["ds_config"]["zero_optimization"]["stage"])
    if "tp_partition" not in client:
        raise ValueError(f"{ckpt} was written without the tensor-parallel map (tp_partition); "
                         "export it with the version that wrote it")
    return client, tp, world // tp, stage


def read_deepspeed(ckpt: Path) -> Dict[str, Any]:
    """Consolidate a DeepSpeed checkpoint directory offline (see the module docstring)."""
    ckpt = Path(ckpt)
    client, tp, dp, stage = _layout(ckpt)
    out = _Assembler(tp, client["tp_partition"], client.get("param_prefix", ""))
    for t in range(tp):
        _read_tp_rank(ckpt, t, dp, stage, out)
    weights = out.finished()
    rank0 = ckpt / "rank_00000.pt"
    data = torch.load(rank0, map_location="cpu", weights_only=False)["data"] if rank0.is_file() \
        else {}
    meta = {"step": client["step"], "bytes_seen": client["bytes_seen"], "data": data,
            "source": str(ckpt), "world_size": tp * dp, "tensor_parallel": tp, "zero_stage": stage}
    return {"model": weights, "config": client["config"], "meta": meta}


class _Assembler:
    """The full fp32 tensors, filled piece by piece: each piece is a flat range of one TP rank's
    slice of one parameter, written straight into its place (no per-rank copies are kept)."""

    def __init__(self, tp: int, dims: Dict[str, int], prefix: str) -> None:
        self.tp, self.dims, self.prefix = tp, dims, prefix
        self.full: Weights = {}
        self.written: Dict[str, int] = {}

    def put(self, name: str, t: int, shape: torch.Size, start: int, values: torch.Tensor) -> None:
        """Elements ``[start, start + len(values))`` of TP rank ``t``'s slice (``shape``)."""
        name = name[len(self.prefix):] if self.prefix and name.startswith(self.prefix) else name
        dim = self.dims.get(name) if self.tp > 1 else None
        if dim is None and t > 0:
            return  # replicated over TP: TP rank 0's copy is the value
        if name not in self.full:
            whole = list(shape)
            if dim is not None:
                whole[dim] *= self.tp
            self.full[name], self.written[name] = torch.empty(whole, dtype=torch.float32), 0
        self.written[name] += values.numel()
        # detach: DeepSpeed stores its fp32 partitions as tensors that require grad, and an
        # autograd edge to them would keep every file's memory map (and its pages) alive.
        _write_flat(self.full[name], dim, t, shape, start, values.detach().float())

    def finished(self) -> Weights:
        for name, tensor in self.full.items():
            if self.written[name] != tensor.numel():
                raise ValueError(f"checkpoint files hold {self.written[name]} of the "
                                 f"{tensor.numel()} elements of {name}")
        return self.full


def _write_flat(full: torch.Tensor, dim: Optional[int], t: int, shape: torch.Size, start: int,
                values: torch.Tensor) -> None:
    """Write a flat range of TP slice ``t`` (split along ``dim``) into ``full``."""
    n = values.numel()
    if dim is None or dim == 0:  # the slice is a contiguous block of the full tensor
        base = t * math.prod(shape) if dim == 0 else 0
        full.view(-1)[base + start: base + start + n] = values
        return
    if full.dim() != 2 or dim != 1:
        raise ValueError(f"cannot join TP shards along dim {dim} of a {full.dim()}-d tensor")
    cols = shape[1]
    view = full.narrow(1, t * cols, cols)  # (rows, cols), strided
    i, k = start, 0
    while k < n:  # a partial first row, whole rows, a partial last row
        row, col = divmod(i, cols)
        if col == 0 and n - k >= cols:
            rows = (n - k) // cols
            view[row:row + rows] = values[k:k + rows * cols].view(rows, cols)
            step = rows * cols
        else:
            step = min(cols - col, n - k)
            view[row, col:col + step] = values[k:k + step]
        i, k = i + step, k + step


def _read_tp_rank(ckpt: Path, t: int, dp: int, stage: int, out: _Assembler) -> None:
    """Feed TP rank ``t``'s parameters to ``out``, one DP rank's file at a time."""
    if stage == 3:
        shapes = _load(ckpt / f"zero_pp_rank_0_mp_rank_{t:02d}_model_states.pt")["param_shapes"]
        for d in range(dp):
            flats = _fp32_groups(_optim_file(ckpt, d, t), "fp32_flat_groups")
            _put_zero3(shapes, flats, d, dp, t, out)
            del flats
        return
    model_states = _load(ckpt / f"mp_rank_{t:02d}_model_states.pt")
    optim = [ckpt / f"{pre}zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt"
             for pre in ("", "bf16_") for d in range(dp)]
    present = [f for f in optim if f.is_file()]
    if stage == 0 and not present:
        _put_zero0(model_states, t, out)
        return
    if len(present) != dp:
        raise FileNotFoundError(f"{ckpt}: expected {dp} optimizer partitions of TP rank {t}, "
                                f"found {len(present)}")
    for d, file in enumerate(present):
        flats = _fp32_groups(file, "single_partition_of_fp32_groups")
        _put_zero12(model_states["param_shapes"], flats, d, dp, t, out)
        del flats


def _optim_file(ckpt: Path, d: int, t: int) -> Path:
    """DP rank ``d``, TP rank ``t``'s optimizer partition (``bf16_`` prefix under bf16)."""
    name = f"zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt"
    return ckpt / name if (ckpt / name).is_file() or not (ckpt / f"bf16_{name}").is_file() \
        else ckpt / f"bf16_{name}"


def _put_zero0(model_states: Dict[str, Any], t: int, out: _Assembler) -> None:
    """Without ZeRO: the fp32 master copies held by the (bf16) optimizer, per group in the
    order the engine recorded (``param_group_names``); in fp32 the module weights are the
    master."""
    masters = (model_states.get("optimizer") or {}).get("fp32_groups")
    module = model_states["module"]
    if masters is None:
        for name, value in module.items():
            out.put(name, t, value.shape, 0, value.reshape(-1))
        return
    groups = model_states.get("param_group_names")
    if groups is None or [len(g) for g in groups] != [len(m) for m in masters]:
        raise ValueError("checkpoint has fp32 master groups but no matching param_group_names")
    for names, tensors in zip(groups, masters):
        for name, value in zip(names, tensors):
            out.put(out.prefix + name, t, value.shape, 0, value.reshape(-1))


def _fp32_groups(file: Path, key: str) -> List[torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"missing checkpoint file {file}")
    groups = _load(file)["optimizer_state_dict"].get(key)
    if groups is None:
        raise ValueError(f"{file} has no {key} (not the ZeRO stage its model states say)")
    return list(groups)


def _put_zero3(shapes: List[Dict[str, torch.Size]], flats: List[torch.Tensor], d: int, dp: int,
               t: int, out: _Assembler) -> None:
    """DP rank ``d``'s ZeRO-3 pieces: per group, piece k (ceil(numel/dp) elements, the last
    rank's zero-padded) is elements [d * piece, ...) of parameter k."""
    for g, group in enumerate(shapes):
        offset = 0
        for name, shape in group.items():
            numel = math.prod(shape)
            piece = -(-numel // dp)
            used = max(0, min(piece, numel - d * piece))
            out.put(name, t, shape, d * piece, flats[g].narrow(0, offset, used))
            offset += piece
        _check_used(g, offset, flats[g].numel(), padding=0)


def _put_zero12(shapes: List[Dict[str, torch.Size]], flats: List[torch.Tensor], d: int, dp: int,
                t: int, out: _Assembler) -> None:
    """DP rank ``d``'s ZeRO-1/2 partition: elements [d * P, (d + 1) * P) of each group's
    parameters laid back to back (padded at the group's end to a multiple of 2 x DP)."""
    for g, group in enumerate(shapes):
        size = flats[g].numel()
        lo_part, offset = d * size, 0
        for name, shape in group.items():
            numel = math.prod(shape)
            lo, hi = max(offset, lo_part), min(offset + numel, lo_part + size)
            if hi > lo:
                out.put(name, t, shape, lo - offset, flats[g].narrow(0, lo - lo_part, hi - lo))
            offset += numel
        if d == dp - 1:
            _check_used(g, offset, size * dp, padding=2 * dp)


def _check_used(group: int, used: int, available: int, padding: int) -> None:
    """The recorded shapes must account for the stored vector, up to its end padding."""
    if not 0 <= available - used <= padding:
        raise ValueError(f"checkpoint shapes of parameter group {group} do not fit the stored "
                         f"fp32 vector ({used} elements described, {available} stored)")


# ------------------------------------------------------------------------------ exports and cache

CACHE_NAME = "consolidated.safetensors"


def export_checkpoint(path: Path, output: Path) -> Dict[str, Any]:
    """Write the export file of any checkpoint (``python -m pretrain.export``); a summary."""
    ckpt = resolve(path)
    state = read_checkpoint(ckpt)
    write_export(output, state["model"], state["config"], state["meta"])
    return _summary(output, state)


def _summary(output: Path, state: Dict[str, Any]) -> Dict[str, Any]:
    meta = state["meta"]
    return {"output": str(output), "step": meta["step"], "tensors": len(state["model"]),
            "parameters": sum(v.numel() for v in state["model"].values()),
            "source_layout": {k: meta[k] for k in ("world_size", "tensor_parallel", "zero_stage")}}


def fingerprint(ckpt: Path) -> List[List[Any]]:
    """Name, size and modification time of every file of a step directory but the cache."""
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(ckpt.iterdir())
            if f.is_file() and not f.name.startswith((CACHE_NAME, "."))]


def cached_export(ckpt: Path) -> Optional[Path]:
    """The consolidated export beside a DeepSpeed checkpoint, written (atomically) on first use
    and reused while the checkpoint's files are unchanged; None when the directory is not
    writable (the caller consolidates in memory)."""
    file = ckpt / CACHE_NAME
    want = fingerprint(ckpt)
    if file.is_file() and read_export_meta(file).get("fingerprint") == want:
        return file
    state = read_deepspeed(ckpt)
    try:
        write_export(file, state["model"], state["config"], {**state["meta"], "fingerprint": want})
    except PermissionError:
        return None
    log.info("consolidated %s into %s", ckpt, file)
    return file


class OpenWeights:
    """Full weights (plain names) of an export file, run or checkpoint, read lazily: from an
    export file only the requested slice of a tensor is read (``safe_open(...).get_slice``), so
    a rank that needs one TP slice never holds the whole model."""

    def __init__(self, config: Dict[str, Any], meta: Dict[str, Any],
                 tensors: Optional[Weights] = None, file: Optional[Path] = None) -> None:
        self.config, self.meta, self._tensors, self.file = config, meta, tensors, file
        self._handle = None
        if file is not None:
            from safetensors import safe_open

            self._handle = safe_open(str(file), framework="pt")
        self._names = list(self._handle.keys()) if self._handle is not None else list(tensors)
        self._known = set(self._names)

    def names(self) -> List[str]:
        """The parameter names held."""
        return list(self._names)

    def read(self, name: str, dim: Optional[int] = None, start: int = 0,
             length: int = 0) -> torch.Tensor:
        """Tensor ``name`` (fp32), or its ``[start, start + length)`` slice along ``dim``."""
        if name not in self._known:
            raise KeyError(f"{self.file or self.meta.get('source')} has no parameter {name}")
        if self._handle is None:
            full = self._tensors[name]
            return full.float() if dim is None else full.narrow(dim, start, length).float()
        if dim is None:
            return self._handle.get_tensor(name).float()
        index = (slice(None),) * dim + (slice(start, start + length),)
        return self._handle.get_slice(name)[index].float()

    def all(self) -> Weights:
        """Every tensor, in full."""
        return {name: self.read(name) for name in self.names()}


def open_any(path: Path) -> OpenWeights:
    """The weights of an export file, a run directory or any checkpoint (single-process, or
    DeepSpeed at any layout: consolidated once into the cache beside it, then read lazily)."""
    path = Path(path)
    exported = path / "export" / "model.safetensors"
    if path.is_dir() and exported.is_file() and not (path / "checkpoints" / store.LATEST).is_file():
        path = exported
    if path.is_file():
        return _open_export(path)
    ckpt = resolve(path)
    file = None if (ckpt / "state.pt").is_file() else cached_export(ckpt)
    if file is not None:
        return _open_export(file)
    state = read_checkpoint(ckpt)  # single-process, or DeepSpeed in a read-only directory
    return OpenWeights(state["config"], state["meta"], tensors=state["model"])


def _open_export(file: Path) -> OpenWeights:
    head = read_export(file, tensors=False)
    return OpenWeights(head["config"], head["meta"], file=file)


def read_any(path: Path) -> Dict[str, Any]:
    """``{"model", "config", "meta"}`` of :func:`open_any`, every tensor read in full."""
    weights = open_any(path)
    return {"model": weights.all(), "config": weights.config, "meta": weights.meta}
