"""Architecture only: MEGABYTE and the Transformer baselines. No torch.distributed in here."""

from __future__ import annotations

from typing import Union

from pretrain.config import ModelConfig
from pretrain.model.flops import flops_per_byte, flops_per_token
from pretrain.model.layers import count_params, decayed_parameter_names
from pretrain.model.megabyte import Megabyte
from pretrain.model.transformer import TransformerLM

Model = Union[Megabyte, TransformerLM]

__all__ = ["Megabyte", "TransformerLM", "Model", "build_model", "count_params",
           "flops_per_byte", "flops_per_token"]


def build_model(cfg: ModelConfig, vocab_size: int, pad_id: int, bos_id: int) -> Model:
    """The model named by ``cfg.arch`` for a vocabulary of ``vocab_size`` ids."""
    model: Model
    if cfg.arch == "megabyte":
        model = Megabyte(cfg, vocab_size=vocab_size, pad_id=pad_id)
    elif cfg.arch == "transformer":
        model = TransformerLM(cfg, vocab_size=vocab_size, bos_id=bos_id)
    else:
        raise ValueError(f"unknown model.arch {cfg.arch!r}")
    # The weight-decay role of every parameter, tagged once on the plain architecture (see
    # decayed_parameter_names): the optimizer reads this set in every layout.
    model.decayed_names = decayed_parameter_names(model)
    return model
