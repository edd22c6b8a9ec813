"""Architecture only: MEGABYTE and the Transformer baselines. No torch.distributed in here."""

from __future__ import annotations

from typing import Optional, Union

import torch

from pretrain.config import ModelConfig
from pretrain.model.flops import flops_per_byte, flops_per_token
from pretrain.model.init import initialize_
from pretrain.model.layers import LinearFactory, count_params, decayed_parameter_names, plain_linear
from pretrain.model.megabyte import Megabyte
from pretrain.model.transformer import TransformerLM

Model = Union[Megabyte, TransformerLM]

__all__ = ["Megabyte", "TransformerLM", "Model", "build_model", "count_params",
           "flops_per_byte", "flops_per_token"]


def build_model(cfg: ModelConfig, vocab_size: int, pad_id: int, bos_id: int,
                seed: Optional[int] = 0, global_linear: Optional[LinearFactory] = None) -> Model:
    """The model named by ``cfg.arch`` for a vocabulary of ``vocab_size`` ids, on the CPU, with
    the initial weights of ``seed`` (:mod:`pretrain.model.init`: a function of seed and
    parameter name only; no global RNG is used).

    ``seed=None`` builds in the caller's context (a meta device, ``deepspeed.zero.Init``) and
    leaves the values to the caller; ``global_linear`` builds the global stack's projections
    (the parallel build's tensor-parallel shards, which carry ``projection = True`` and so keep
    their decay role)."""
    if seed is None:
        return _construct(cfg, vocab_size, pad_id, bos_id, global_linear or plain_linear)
    if global_linear is not None:
        raise ValueError("global_linear needs seed=None: the caller writes the values")
    with torch.device("meta"):  # shapes only; memory is allocated once, below
        model = _construct(cfg, vocab_size, pad_id, bos_id, plain_linear)
    model.to_empty(device="cpu")
    initialize_(model, cfg, seed)
    return model


def _construct(cfg: ModelConfig, vocab_size: int, pad_id: int, bos_id: int,
               global_linear: LinearFactory) -> Model:
    model: Model
    if cfg.arch == "megabyte":
        model = Megabyte(cfg, vocab_size=vocab_size, pad_id=pad_id, global_linear=global_linear)
    elif cfg.arch == "transformer":
        model = TransformerLM(cfg, vocab_size=vocab_size, bos_id=bos_id, global_linear=global_linear)
    else:
        raise ValueError(f"unknown model.arch {cfg.arch!r}")
    # The weight-decay role of every parameter, tagged once on the plain architecture (see
    # decayed_parameter_names): the optimizer reads this set in every layout.
    model.decayed_names = decayed_parameter_names(model)
    return model
