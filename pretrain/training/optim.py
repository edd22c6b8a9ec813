"""AdamW with the paper's settings and the warmup + polynomial-decay schedule."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from pretrain.config import OptimConfig


def decay_split(model: nn.Module) -> Tuple[List[str], List[str]]:
    """(names with weight decay, names without), by the role tag ``model.decayed_names`` that
    :func:`pretrain.model.build_model` sets; tied (shared) parameters are listed once."""
    tagged = getattr(model, "decayed_names", None)
    if tagged is None:
        raise ValueError("the model has no decayed_names tag: build it with pretrain.model.build_model")
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # yields a shared (tied) parameter once
        if p.requires_grad:
            (decay if name in tagged else no_decay).append(name)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """Two AdamW groups, decay by role (:func:`decay_split`): the same parameters in the
    single-process loop and under DeepSpeed at every TP and ZeRO layout."""
    decay, no_decay = decay_split(model)
    params = dict(model.named_parameters())
    return [{"params": [params[n] for n in decay], "weight_decay": weight_decay},
            {"params": [params[n] for n in no_decay], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` (betas 0.9/0.98 and decay 0.1 by default, as in A.1),
    ``fused`` on CPU and GPU alike: the same update rule as the per-parameter loop (to ~1e-9), and
    on CPU one kernel per parameter instead of ~7 multi-tensor passes (quick start model, one
    thread: 0.021 s per update fused vs 0.111 s ``foreach`` vs 0.058 s loop)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, fused=True)


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate for update ``step`` (0-based): linear warmup, then polynomial decay to min_lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(max_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - progress) ** cfg.decay_power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
