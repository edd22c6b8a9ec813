"""Next-id cross-entropy and bits per byte. Bits per byte = total NLL (nats) / (bytes * ln 2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean NLL in nats. logits (B, L, V), targets (B, L); ``IGNORE`` targets are skipped."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def targets_for(ids: Tensor, pad_id: int) -> Tensor:
    """Training targets: the ids themselves (the models shift internally), pads ignored."""
    return ids.masked_fill(ids == pad_id, IGNORE)


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-position NLL in nats, (B, L), computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def bits_per_byte(total_nats: float, n_bytes: float) -> float:
    """NLL in nats over ``n_bytes`` bytes, as bits per byte: ``total_nats / (n_bytes * ln 2)``.

    The one definition: a whole text (total NLL, exact byte count) or one id on average (mean
    loss per id, bytes per id: 1.0 for byte models)."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte")
    return total_nats / (n_bytes * math.log(2))


def word_perplexity(bpb: float, bytes_per_word: float) -> float:
    """Word-level perplexity from bits per byte: 2 ** (bpb * bytes per word)."""
    return 2.0 ** (bpb * bytes_per_word)
