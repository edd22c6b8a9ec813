"""The export file: one fp32 safetensors file with plain single-process parameter names and the
resolved config in its metadata (and as ``FILE.yaml`` beside it).

It loads into the single-process model (``pretrain.inference.loading``) and starts a run at any
layout (``train.init_from``). Writing it from a checkpoint is :mod:`pretrain.checkpoints.consolidate`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from pretrain.config import atomic_write_text, config_from_dict, to_yaml


def check_export_path(path: Path) -> Path:
    """``path`` unchanged, or IsADirectoryError (one line) when it names a directory."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory: name the export file, e.g. "
                                f"{path / 'model.safetensors'}")
    return path


def write_export(path: Path, weights: Dict[str, torch.Tensor], config: Dict[str, Any],
                 meta: Optional[Dict[str, Any]] = None) -> Path:
    """Atomically write fp32 ``weights`` + config metadata to ``path`` (and ``path``.yaml).
    ``path`` naming a directory is an IsADirectoryError (one line); a failed write leaves no
    temporary file behind."""
    from safetensors.torch import save_file

    path = check_export_path(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in weights.items()}
    metadata = {"format": "pretrain-export-v1", "config": json.dumps(config),
                "meta": json.dumps(meta or {})}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # several writers never share it
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; a failed write's leftover otherwise
    atomic_write_text(path.with_name(path.name + ".yaml"), to_yaml(config_from_dict(config)))
    return path


def read_export_meta(path: Path) -> Dict[str, Any]:
    """The ``meta`` record of an export file, without reading its tensors ({} if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("meta", "{}"))
    except Exception:  # a broken cache file is rewritten, not an error
        return {}


def read_export(path: Path, tensors: bool = True) -> Dict[str, Any]:
    """``{"model": {name: tensor}, "config": dict, "meta": dict}`` from an export file
    (``tensors=False``: only its config and meta, ``model`` empty)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"export file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors export: {err}") from None
    if metadata.get("format") != "pretrain-export-v1":
        raise ValueError(f"{path} is not an export of this project (no pretrain-export-v1 metadata)")
    return {"model": weights, "config": json.loads(metadata["config"]),
            "meta": json.loads(metadata.get("meta", "{}"))}
