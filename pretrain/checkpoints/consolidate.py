"""Offline consolidation: the files of any checkpoint -> full fp32 weights with plain names.

One process on any machine, no process group, no training data. A single-process checkpoint is
read as it is. A DeepSpeed checkpoint (``pretrain.parallel.engine``) is read from the files every
rank wrote, for any TP x DP layout and ZeRO stage:

* ZeRO-3: ``zero_pp_rank_{dp}_mp_rank_{tp:02d}_optim_states.pt`` holds, per parameter group,
  one flat fp32 vector: each parameter of the group in turn, ``ceil(numel / dp)`` elements of
  it (the last rank's share zero-padded). Parameter ``k`` of TP rank ``t`` is the concatenation
  over DP ranks of their ``k``-th piece, cut to ``numel``.
* ZeRO-1/2 (and the bf16 optimizer of stage 0): per group one fp32 partition per DP rank
  (``single_partition_of_fp32_groups``); the DP ranks' partitions concatenated are the group's
  parameters back to back (padding only at the end).
* ZeRO-0 in fp32: ``mp_rank_{tp:02d}_model_states.pt`` holds this TP rank's module weights.

The order and shapes come from ``param_shapes`` in the model-states file (DeepSpeed's record of
its parameter groups); which parameters are tensor-parallel, and along which dimension, from the
``tp_partition`` map the engine writes into its client state. TP shards are concatenated along
that dimension. The fp32 vectors are memory-mapped and parameters are assembled one TP rank at a
time, so the peak is about one fp32 copy of the model (plus one TP rank's share while it is
read). DeepSpeed's ``zero_to_fp32`` is not used: it refuses ZeRO-3 with manual TP.
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
    prefix, dims = client.get("param_prefix", ""), client["tp_partition"]
    shards: List[Weights] = [_tp_rank_weights(ckpt, t, dp, stage, prefix) for t in range(tp)]
    weights: Weights = {}
    for name in list(shards[0]):
        parts = [s.pop(name) for s in shards]
        dim: Optional[int] = dims.get(name)
        weights[name] = torch.cat(parts, dim=dim) if dim is not None and tp > 1 else parts[0]
    rank0 = ckpt / "rank_00000.pt"
    data = torch.load(rank0, map_location="cpu", weights_only=False)["data"] if rank0.is_file() \
        else {}
    meta = {"step": client["step"], "bytes_seen": client["bytes_seen"], "data": data,
            "source": str(ckpt), "world_size": tp * dp, "tensor_parallel": tp, "zero_stage": stage}
    return {"model": weights, "config": client["config"], "meta": meta}


def _tp_rank_weights(ckpt: Path, t: int, dp: int, stage: int, prefix: str) -> Weights:
    """TP rank ``t``'s parameters (full over DP), fp32, in DeepSpeed's group order."""
    if stage == 3:
        states = [_load(ckpt / f"zero_pp_rank_{d}_mp_rank_{t:02d}_model_states.pt")
                  for d in range(dp)]
        shapes = states[0]["param_shapes"]
        flats = [_fp32_groups(ckpt / f"zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt",
                              "fp32_flat_groups") for d in range(dp)]
        out = _merge_zero3(shapes, flats, dp)
    else:
        model_states = _load(ckpt / f"mp_rank_{t:02d}_model_states.pt")
        optim = [ckpt / f"{pre}zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt"
                 for pre in ("", "bf16_") for d in range(dp)]
        present = [f for f in optim if f.is_file()]
        if stage == 0 and not present:  # fp32 without ZeRO: the module weights are the master
            return {_strip(k, prefix): v.float().clone()
                    for k, v in model_states["module"].items()}
        if len(present) != dp:
            raise FileNotFoundError(f"{ckpt}: expected {dp} optimizer partitions of TP rank {t}, "
                                    f"found {len(present)}")
        flats = [_fp32_groups(f, "single_partition_of_fp32_groups") for f in present]
        out = _merge_zero12(model_states["param_shapes"], flats)
    return {_strip(k, prefix): v for k, v in out.items()}


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def _fp32_groups(file: Path, key: str) -> List[torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"missing checkpoint file {file}")
    groups = _load(file)["optimizer_state_dict"].get(key)
    if groups is None:
        raise ValueError(f"{file} has no {key} (not the ZeRO stage its model states say)")
    return list(groups)


def _merge_zero3(shapes: List[Dict[str, torch.Size]], flats: List[List[torch.Tensor]],
                 dp: int) -> Weights:
    """Per group: parameter k = cat over DP ranks of piece k (ceil(numel/dp) each), cut."""
    out: Weights = {}
    for g, group in enumerate(shapes):
        offset = 0
        for name, shape in group.items():
            numel = math.prod(shape)
            piece = -(-numel // dp)
            full = torch.cat([flats[d][g].narrow(0, offset, piece) for d in range(dp)])
            out[name] = full[:numel].view(shape).clone()
            offset += piece
        _check_used(g, offset, flats[0][g].numel(), padding=0)
    return out


def _merge_zero12(shapes: List[Dict[str, torch.Size]], flats: List[List[torch.Tensor]]) -> Weights:
    """Per group: the DP partitions back to back are the parameters back to back."""
    out: Weights = {}
    for g, group in enumerate(shapes):
        vector = torch.cat([f[g] for f in flats])
        offset = 0
        for name, shape in group.items():
            numel = math.prod(shape)
            out[name] = vector.narrow(0, offset, numel).view(shape).clone()
            offset += numel
        # The group is padded at its end to a multiple of 2 x DP (DeepSpeed's NCCL alignment).
        _check_used(g, offset, vector.numel(), padding=2 * len(flats))
        del vector
    return out


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

    def names(self) -> List[str]:
        """The parameter names held."""
        return list(self._handle.keys()) if self._handle is not None else list(self._tensors)

    def read(self, name: str, dim: Optional[int] = None, start: int = 0,
             length: int = 0) -> torch.Tensor:
        """Tensor ``name`` (fp32), or its ``[start, start + length)`` slice along ``dim``."""
        if name not in self.names():
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
    if (ckpt / "state.pt").is_file():
        state = read_checkpoint(ckpt)
        return OpenWeights(state["config"], state["meta"], tensors=state["model"])
    file = cached_export(ckpt)
    if file is not None:
        return _open_export(file)
    state = read_deepspeed(ckpt)
    return OpenWeights(state["config"], state["meta"], tensors=state["model"])


def _open_export(file: Path) -> OpenWeights:
    head = read_export(file, tensors=False)
    return OpenWeights(head["config"], head["meta"], file=file)


def read_any(path: Path) -> Dict[str, Any]:
    """``{"model", "config", "meta"}`` of :func:`open_any`, every tensor read in full."""
    weights = open_any(path)
    return {"model": weights.all(), "config": weights.config, "meta": weights.meta}
