"""Load a trained model for evaluation or generation from a run directory, a checkpoint of any
engine and layout, or an export file."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

from data_prep.vocab import Vocab, build_vocab
from pretrain.checkpoints.consolidate import read_any
from pretrain.config import Config, config_from_dict
from pretrain.model import Model, build_model
from pretrain.runtime.device import pick_device
from pretrain.runtime.host_memory import apply_host_memory_setting


def load_for_inference(path: Path, overrides: Sequence[str] = ()) -> Tuple[Config, Model, Vocab]:
    """(config, model in eval mode on its device, vocabulary) from a run directory, a
    single-process or DeepSpeed checkpoint (consolidated offline and cached beside it, see
    :func:`pretrain.checkpoints.consolidate.read_any`) or a ``pretrain.export`` file."""
    state = read_any(Path(path))
    source = state["meta"].get("source", str(path))
    cfg = config_from_dict(state["config"], overrides, origin=f"config saved in {source}")
    vocab = build_vocab(cfg.model.vocab, cfg.model.tokenizer)
    model = build_model(cfg.model, vocab.vocab_size, vocab.pad_id, vocab.bos_id)
    model.load_state_dict(state["model"])
    device = pick_device(cfg.train.device)
    apply_host_memory_setting(device, cfg.train.host_memory_reuse)
    model.to(device).eval()
    for p in model.parameters():  # inference only (no global grad switch: callers may train)
        p.requires_grad_(False)
    return cfg, model, vocab
