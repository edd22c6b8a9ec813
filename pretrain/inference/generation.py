"""Sampling with the models' KV caches (MEGABYTE: one global step per patch, P local steps).

Works for any model with ``new_decode_state(batch, device)`` and ``next_logits(state, new_ids)``.
Prompts of up to ``seq_len - 1`` ids (a longer one is a ValueError: the model has no position
left to predict from); a batch of prompts is decoded in groups of equal length (every sequence
of a group is at the same position, so MEGABYTE's global steps line up). Generation stops when
the context is full (prompt plus continuation = ``seq_len`` ids), even short of ``max_new``: the
result's ``limits`` say how many ids each prompt had room for. A sliding-window Transformer
(``model.attention_window=W``) keeps only W - 1 cached positions per layer, so its decoding
memory stays bounded; generation still stops at ``seq_len`` (learned absolute positions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor


@dataclass
class Sampling:
    """Sampling settings. temperature 0 means greedy."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next(logits: Tensor, sampling: Sampling, generator: Optional[torch.Generator] = None,
                banned: Sequence[int] = ()) -> Tensor:
    """Pick one id per row of ``logits`` (B, V) -> (B,)."""
    logits = logits.float().clone()
    if banned:
        logits[:, list(banned)] = float("-inf")
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, -1)
        # Drop a token when the mass *before* it already reaches top_p (always keep the first).
        drop = probs.cumsum(-1) - probs >= sampling.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new: int,
             sampling: Sampling = Sampling(), seed: int = 0, eos_id: Optional[int] = None,
             banned: Sequence[int] = ()) -> Dict[str, object]:
    """Continue each prompt by up to ``max_new`` (>= 1) ids (fewer if the context fills or EOS
    comes).

    Returns ``{"outputs": [[ids...], ...], "limits": [int, ...], "new_ids": int, "seconds":
    float}`` with outputs (prompt excluded) in the order of ``prompts``; ``limits[i]`` is
    ``min(max_new, seq_len - len(prompts[i]))``, what prompt i had room for.
    """
    if max_new < 1:
        raise ValueError(f"max_new must be at least 1 id, got {max_new}")
    model.eval()
    device = next(model.parameters()).device
    T = model.T
    for i, p in enumerate(prompts):
        if len(p) >= T:
            raise ValueError(f"prompt {i} has {len(p)} ids; the model context is {T}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    outputs: List[List[int]] = [[] for _ in prompts]
    groups: Dict[int, List[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    t0 = time.perf_counter()
    produced = 0
    for length, members in sorted(groups.items()):
        ids = torch.tensor([list(prompts[i]) for i in members], dtype=torch.long, device=device)
        ids = ids.view(len(members), length)
        state = model.new_decode_state(len(members), device)
        logits = model.next_logits(state, ids)
        done = torch.zeros(len(members), dtype=torch.bool)
        steps = min(max_new, T - length)
        for step in range(steps):
            nxt = sample_next(logits.cpu(), sampling, gen, banned)
            for row, i in enumerate(members):
                if not done[row]:
                    outputs[i].append(int(nxt[row]))
                    produced += 1
            if eos_id is not None:
                done |= nxt == eos_id
            if bool(done.all()) or step == steps - 1:
                break
            logits = model.next_logits(state, nxt.view(-1, 1).to(device))
    return {"outputs": outputs, "limits": [min(max_new, T - len(p)) for p in prompts],
            "new_ids": produced, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def uncached_next_logits(model: torch.nn.Module, ids: Tensor) -> Tensor:
    """Reference: logits (B, V) for the id after ``ids`` (B, n) from a full forward pass."""
    filler = torch.zeros(ids.shape[0], 1, dtype=ids.dtype, device=ids.device)
    return model(torch.cat([ids, filler], 1))[:, -1]
