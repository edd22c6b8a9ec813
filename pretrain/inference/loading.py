"""Load a trained model for evaluation or generation from a run directory or checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

from data_prep.vocab import Vocab, build_vocab
from pretrain.checkpoints import store
from pretrain.config import Config, config_from_dict
from pretrain.model import Model, build_model
from pretrain.runtime.device import pick_device


def resolve_checkpoint(path: Path) -> Path:
    """A run directory, a ``checkpoints`` directory or a checkpoint directory -> checkpoint dir."""
    path = Path(path)
    if (path / "state.pt").is_file():
        return path
    if list(path.glob("rank_*.pt")) or ((path / "checkpoints").is_dir() and not list(
            (path / "checkpoints").glob("*/state.pt"))):
        raise FileNotFoundError(f"{path} holds a DeepSpeed (distributed) checkpoint: export it "
                                "first with python -m pretrain.export --checkpoint ...")
    for candidate in (path / "checkpoints", path):
        if (candidate / store.LATEST).is_file():
            found = store.latest(candidate)
            if found is not None:
                return found
    raise FileNotFoundError(f"no checkpoint found at {path} (expected a run directory with "
                            "checkpoints/latest, or a checkpoint directory with state.pt)")


def load_for_inference(path: Path, overrides: Sequence[str] = ()) -> Tuple[Config, Model, Vocab]:
    """(config, model in eval mode on its device, vocabulary) from a single-process checkpoint
    or a ``pretrain.export`` safetensors file (the way to use a distributed run's weights)."""
    path = Path(path)
    if path.suffix == ".safetensors" or (path / "export" / "model.safetensors").is_file() and not (
            path / "checkpoints" / store.LATEST).is_file():
        from pretrain.checkpoints.exports import read_export

        file = path if path.suffix == ".safetensors" else path / "export" / "model.safetensors"
        state = read_export(file)
        ckpt = file
    else:
        ckpt = resolve_checkpoint(path)
        state = store.load(ckpt)
    cfg = config_from_dict(state["config"], overrides, origin=f"config saved in {ckpt}")
    vocab = build_vocab(cfg.model.vocab, cfg.model.tokenizer)
    model = build_model(cfg.model, vocab.vocab_size, vocab.pad_id, vocab.bos_id)
    model.load_state_dict(state["model"])
    model.to(pick_device(cfg.train.device)).eval()
    for p in model.parameters():  # inference only (no global grad switch: callers may train)
        p.requires_grad_(False)
    return cfg, model, vocab
