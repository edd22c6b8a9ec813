"""Decoder-only Transformer baselines: byte-level (the paper's comparator) and subword.

Both use the same :class:`~pretrain.model.layers.TransformerStack` as MEGABYTE, learned absolute
positions and an output head tied to the input embedding. The vocabulary decides which baseline
it is: 259 ids for bytes (256 values + pad/bos/eos), or a SentencePiece vocabulary + 3 specials.

Like MEGABYTE, ``forward(ids)`` returns logits where ``logits[:, t]`` predicts ``ids[:, t]``: the
input is shifted right internally with a BOS id at position 0, so all L ids of a window are scored.
``model.attention_window=W`` restricts every layer's attention to the last W positions (a
sliding-window byte Transformer, the SpaceByte-style baseline of ``pretrain.compare``).
Dimension names: B batch, L length <= T, D width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import torch
from torch import Tensor, nn

from pretrain.config import ModelConfig
from pretrain.model.layers import KVCache, LinearFactory, TransformerStack, plain_linear


@dataclass
class TransformerDecodeState:
    """A plain KV cache plus the ids seen so far."""

    ids: Tensor  # (B, n)
    cache: KVCache
    done: int = 0  # positions whose keys are cached
    stats: Dict[str, int] = field(default_factory=lambda: {"steps": 0})


class TransformerLM(nn.Module):
    """Token embedding + learned positions -> transformer stack -> tied output head."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, bos_id: int,
                 global_linear: LinearFactory = plain_linear) -> None:
        super().__init__()
        D = cfg.global_model.dim
        self.T, self.D, self.vocab_size, self.bos_id = cfg.seq_len, D, vocab_size, bos_id
        self.embed = nn.Embedding(vocab_size, D)
        self.pos = nn.Embedding(cfg.seq_len, D)
        # Named like MEGABYTE's global model: the parallel wrapper splits this stack.
        self.global_model = TransformerStack(
            D, cfg.global_model.layers, cfg.global_model.heads,
            mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, activation=cfg.activation,
            linear=global_linear, window=cfg.attention_window)
        self.window = cfg.attention_window  # 0 = full causal attention
        # Initial values: the paper's rules (pretrain.model.init), applied by build_model.

    def forward(self, ids: Tensor) -> Tensor:
        """ids: (B, L), L <= T -> logits (B, L, V); logits[:, t] predicts ids[:, t]."""
        B, L = ids.shape
        if L > self.T:
            raise ValueError(f"sequence of {L} tokens exceeds the model context {self.T}")
        bos = torch.full((B, 1), self.bos_id, dtype=ids.dtype, device=ids.device)
        inputs = torch.cat([bos, ids[:, :-1]], 1)  # (B, L): position t sees ids[:, :t]
        h = self.embed(inputs) + self.pos(torch.arange(L, device=ids.device))
        y = self.global_model(h)  # (B, L, D)
        return y @ self.embed.weight.t()

    def new_decode_state(self, batch: int, device: torch.device) -> TransformerDecodeState:
        """An empty KV cache for ``batch`` sequences.

        With a sliding window W the cache keeps only the last W - 1 positions of every layer:
        the next query and those fill its window, so decoding memory is bounded by W, not by
        the position (positions stay absolute: learned embeddings up to ``seq_len``)."""
        keep = self.window - 1 if 0 < self.window < self.T else None
        return TransformerDecodeState(ids=torch.empty(batch, 0, dtype=torch.long, device=device),
                                      cache=KVCache(len(self.global_model.blocks), keep=keep))

    @torch.no_grad()
    def next_logits(self, state: TransformerDecodeState, new_ids: Tensor) -> Tensor:
        """Append ``new_ids`` (B, m), m >= 0; return logits (B, V) for the next position."""
        ids = torch.cat([state.ids, new_ids.to(state.ids.device)], 1)
        state.ids = ids
        B, t = ids.shape
        if t >= self.T:
            raise ValueError(f"context full: position {t} is beyond the model context {self.T}")
        # Inputs for positions done..t: BOS at position 0, else the previous id.
        full = torch.cat([torch.full((B, 1), self.bos_id, dtype=ids.dtype, device=ids.device), ids], 1)
        inputs = full[:, state.done:t + 1]
        h = self.embed(inputs) + self.pos(torch.arange(state.done, t + 1, device=ids.device))
        y = self.global_model(h, cache=state.cache)
        state.stats["steps"] += t + 1 - state.done
        state.done = t + 1
        return y[:, -1] @ self.embed.weight.t()
