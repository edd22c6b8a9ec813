"""Load a trained model for evaluation or generation from a run directory, a checkpoint of any
engine and layout, or an export file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from data_prep.vocab import Vocab, build_vocab
from pretrain.checkpoints.consolidate import read_any
from pretrain.config import REPO_ROOT, Config, config_from_dict
from pretrain.model import Model, build_model
from pretrain.runtime.device import pick_device
from pretrain.runtime.host_memory import apply_host_memory_setting


def load_for_inference(path: Path, overrides: Sequence[str] = ()) -> Tuple[Config, Model, Vocab]:
    """(config, model in eval mode on its device, vocabulary) from a run directory, a
    single-process or DeepSpeed checkpoint (consolidated offline and cached beside it, see
    :func:`pretrain.checkpoints.consolidate.read_any`) or a ``pretrain.export`` file.

    A relative ``model.tokenizer`` is found wherever the run was started from
    (:func:`resolve_tokenizer`). A config that cannot hold the weights (a ``model.*`` override
    changing a shape), or a device that is not here, is a one-line ValueError."""
    state = read_any(Path(path))
    source = state["meta"].get("source", str(path))
    saved = state["config"]
    if not any(o.startswith("model.tokenizer=") for o in overrides):
        saved = resolve_tokenizer(saved, Path(path))
    cfg = config_from_dict(saved, overrides, origin=f"config saved in {source}")
    vocab = build_vocab(cfg.model.vocab, cfg.model.tokenizer)
    model = build_model(cfg.model, vocab.vocab_size, vocab.pad_id, vocab.bos_id)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise ValueError(weights_mismatch(model.state_dict(), state["model"], overrides)) from None
    try:
        device = pick_device(cfg.train.device)
    except RuntimeError as err:  # train.device=cuda without a GPU
        raise ValueError(f"{err}; set train.device=cpu (or auto)") from None
    apply_host_memory_setting(device, cfg.train.host_memory_reuse)
    model.to(device).eval()
    for p in model.parameters():  # inference only (no global grad switch: callers may train)
        p.requires_grad_(False)
    return cfg, model, vocab


def weights_mismatch(model: Mapping[str, Any], saved: Mapping[str, Any],
                     overrides: Sequence[str]) -> str:
    """One line saying why the checkpoint's weights ``saved`` do not fit the model built from
    the config (its state dict ``model``): the first differing shape or missing/extra names,
    and the ``model.*`` overrides given (a trained model's shape cannot be changed)."""
    shapes = [f"{name} is {tuple(saved[name].shape)} in the checkpoint but "
              f"{tuple(model[name].shape)} in the model" for name in model
              if name in saved and tuple(saved[name].shape) != tuple(model[name].shape)]
    missing = [n for n in model if n not in saved]
    extra = [n for n in saved if n not in model]
    if shapes:
        what = shapes[0] + (f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else "")
    else:
        what = ", ".join(f"{len(names)} parameter(s) {where} (e.g. {names[0]})" for names, where in
                         ((missing, "missing from the checkpoint"), (extra, "not in the model"))
                         if names)
    shaping = [o for o in overrides if o.startswith("model.")]
    cause = (f"the override(s) {' '.join(shaping)} change the model the checkpoint was trained as; "
             "drop them" if shaping else "the saved config does not match the saved weights")
    return f"the checkpoint's weights do not fit the model: {what}: {cause}"


def resolve_tokenizer(config: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """``config`` with a relative ``model.tokenizer`` made absolute where the file is: relative
    to the directory the run was started from (recovered from the saved, relative ``run_dir``
    and where the run directory is now: ``runs/x`` found at ``/work/runs/x`` was started in
    ``/work``), else to the working directory, else to the repository (the presets' tokenizer
    paths are relative to it). A ValueError naming the places tried when none holds it."""
    model = config.get("model") or {}
    tokenizer = model.get("tokenizer")
    if not tokenizer or Path(tokenizer).is_absolute():
        return config
    bases = list(dict.fromkeys((*started_in(config.get("run_dir"), path), Path.cwd(), REPO_ROOT)))
    for base in bases:
        if (base / tokenizer).is_file():
            found = str((base / tokenizer).resolve())
            return {**config, "model": {**model, "tokenizer": found}}
    raise ValueError(f"model.tokenizer: the run saved the relative path {tokenizer}, which is in "
                     f"none of {', '.join(str(b) for b in bases)}; pass "
                     "model.tokenizer=PATH (the SentencePiece model the run trained with)")


def started_in(run_dir: Optional[str], path: Path) -> Iterator[Path]:
    """The directory a run was started from: the ancestor of ``path`` (a run directory, or a
    checkpoint or export inside one) whose last parts are the saved relative ``run_dir``, that
    many levels up; nothing for an absolute ``run_dir`` or a path outside its run directory."""
    if not run_dir or Path(run_dir).is_absolute():
        return
    parts = Path(os.path.normpath(run_dir)).parts
    if ".." in parts:
        return
    here = Path(path).resolve()
    for candidate in (here, *here.parents):
        if candidate.parts[-len(parts):] == parts:
            yield Path(*candidate.parts[:-len(parts)])
            return
