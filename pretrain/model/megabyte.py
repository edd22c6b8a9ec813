"""MEGABYTE (Yu et al., 2023, arXiv 2305.07185) exactly as the paper defines it.

Dimension names used throughout: B batch, T context in bytes, L a sequence length <= T,
P patch size, K = L / P patches, D_G per-byte global width, D = P * D_G global width,
D_L local width, V vocabulary (256 byte values + pad/bos/eos), H heads, hd head size.

``forward(ids)`` returns logits where ``logits[:, t]`` predicts ``ids[:, t]`` from ``ids[:, :t]``:
the one-patch shift of the global input and the one-byte shift inside each patch happen here,
so all T bytes of a window are scored, the first from the pads alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.config import ModelConfig
from pretrain.model.layers import (
    KV,
    KVCache,
    LinearFactory,
    Rotary,
    TransformerStack,
    activation_fn,
    plain_linear,
)


class CausalConvEncoder(nn.Module):
    """Paper option (b): residual causal 1-D convolutions over byte embeddings (filters 3, 5, 7).

    Causal (left-padded) so a patch embedding never sees bytes after the patch; combined with the
    one-patch shift the global model still only sees earlier patches.
    """

    def __init__(self, dim: int, kernel_sizes: List[int], activation: str) -> None:
        super().__init__()
        self.kernel_sizes = list(kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, k) for k in self.kernel_sizes)
        self.act = activation_fn(activation)
        # Output at position i depends on inputs i - receptive_field .. i.
        self.receptive_field = sum(k - 1 for k in self.kernel_sizes)

    def forward(self, h: Tensor) -> Tensor:
        """h: (B, L, D_G) -> (B, L, D_G)."""
        x = h.transpose(1, 2)  # (B, D_G, L)
        for k, conv in zip(self.kernel_sizes, self.convs):
            x = x + self.act(conv(F.pad(x, (k - 1, 0))))
        return x.transpose(1, 2)


@dataclass
class MegabyteDecodeState:
    """Hierarchical KV cache: one global cache for the whole sequence, a local one per patch."""

    ids: Tensor  # (B, n) every id known so far
    global_cache: KVCache
    global_done: int = 0  # global positions already in the cache
    patch: int = -1  # patch whose local cache is live
    slices: Optional[Tensor] = None  # (B, P, D_L) w_GL-projected global output of `patch`
    local_cache: Optional[KVCache] = None
    local_done: int = 0  # local positions of `patch` already in the local cache
    prefix_len: int = 0  # cross-patch keys at the front of the local cache
    stats: Dict[str, int] = field(default_factory=lambda: {"global_steps": 0, "local_steps": 0})


class Megabyte(nn.Module):
    """Patch embedder -> global transformer over patches -> local transformer within patches."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int,
                 global_linear: LinearFactory = plain_linear) -> None:
        super().__init__()
        P, T = cfg.patch_size, cfg.seq_len
        D, D_L = cfg.global_model.dim, cfg.local_model.dim
        self.P, self.T, self.D, self.D_G, self.D_L = P, T, D, D // P, D_L
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.r = cfg.cross_patch_window
        stack = dict(mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, activation=cfg.activation)
        # Patch embedder: E_global[x_t] + E_pos[t], one learned position per *byte*.
        self.global_embed = nn.Embedding(vocab_size, self.D_G)
        self.global_pos = nn.Embedding(T, self.D_G)
        self.conv = (CausalConvEncoder(self.D_G, cfg.conv_kernel_sizes, cfg.activation)
                     if cfg.conv_encoder else None)
        self.global_pad = nn.Parameter(torch.empty(D))  # trainable pad patch (P x D_G)
        self.global_model = TransformerStack(D, cfg.global_model.layers, cfg.global_model.heads,
                                             **stack, linear=global_linear)
        # One shared w_GL (D_G x D_L) projects each of the P slices of a global output.
        self.global_to_local = nn.Linear(self.D_G, D_L, bias=False)
        # Local input embedding; also the (tied) output head.
        self.local_embed = nn.Embedding(vocab_size, D_L)
        self.local_pad = nn.Parameter(torch.empty(D_L))  # stands in for "previous byte" at p = 0
        self.local_model = TransformerStack(D_L, cfg.local_model.layers, cfg.local_model.heads, **stack)
        self.rotary = Rotary(D_L // cfg.local_model.heads) if self.r else None
        # Initial values: pretrain.model.init (the rules below), applied by build_model.

    def init_overrides(self, cfg: ModelConfig) -> Dict[str, Tuple[str, float]]:
        """This architecture's initialization rules beyond the paper's defaults
        (:mod:`pretrain.model.init`): the pads are drawn like weights, and ``model.init``
        rescales the global->local path.

        The global stack ends in a LayerNorm, so its output is ~1 per dimension and
        ``w_GL`` (D_G -> D_L, std ``std``) adds ~sqrt(D_G) * std per dimension to the local
        input, while the previous-byte embedding it is summed with adds ~std (tiny: 0.030 vs
        0.0053): the byte signal is drowned and the local model sits at the unigram entropy.
        ``ln_gain`` (default) starts the global output LayerNorm gain at 0.05: the global->local
        term starts at ~0.28x the byte embedding and, being a product (gain x w_GL), grows
        multiplicatively. Shrinking ``w_GL`` itself (``scaled``, ``zero_gl``) helps less: Adam
        moves each of its entries by ~lr per step whatever their size, so after warmup the term
        is back near the paper's scale. FLOPs and shapes are unchanged.
        """
        std = cfg.init_std
        rules: Dict[str, Tuple[str, float]] = {"global_pad": ("normal", std),
                                               "local_pad": ("normal", std)}
        if cfg.init == "scaled":  # w_GL output per dimension ~ std, like the byte embedding
            rules["global_to_local.weight"] = ("normal", std / math.sqrt(self.D_G))
        elif cfg.init == "zero_gl":  # the local model starts as a bigram model of the previous byte
            rules["global_to_local.weight"] = ("const", 0.0)
        elif cfg.init == "ln_gain":  # the global output LayerNorm gain starts at 0.05
            rules["global_model.ln_out.weight"] = ("const", 0.05)
        elif cfg.init != "paper":
            raise ValueError(f"unknown model.init {cfg.init!r}")
        return rules

    # ---------------------------------------------------------------- training / scoring

    def forward(self, ids: Tensor) -> Tensor:
        """ids: (B, L), L <= T, any length -> logits (B, L, V); logits[:, t] predicts ids[:, t]."""
        B, L = ids.shape
        if L > self.T:
            raise ValueError(f"sequence of {L} bytes exceeds the model context {self.T}")
        Lp = math.ceil(L / self.P) * self.P
        if Lp != L:  # causal, so padding at the end changes no logit before it
            ids = F.pad(ids, (0, Lp - L), value=self.pad_id)
        logits = self._logits(ids)
        return logits[:, :L]

    def _logits(self, ids: Tensor, capture: Optional[List[KV]] = None) -> Tensor:
        B, Lp = ids.shape
        K, P = Lp // self.P, self.P
        patches = self._embed_patches(ids, 0, K)  # (B, K, D)
        # Global input k = embedding of patch k-1; k = 0 gets the pad patch. Last patch dropped.
        g_in = torch.cat([self.global_pad.view(1, 1, -1).expand(B, 1, -1), patches[:, :-1]], 1)
        g_out = self.global_model(g_in)  # (B, K, D); output k has seen patches 0..k-1
        local_in = self.global_to_local(g_out.view(B, K, P, self.D_G))  # (B, K, P, D_L)
        emb = self.local_embed(ids).view(B, K, P, self.D_L)
        # Local position p adds the embedding of byte p-1 of the same patch; p = 0 the local pad.
        prev = torch.cat([self.local_pad.view(1, 1, 1, -1).expand(B, K, 1, -1), emb[:, :, :-1]], 2)
        x = (local_in + prev).reshape(B * K, P, self.D_L)  # all patches at once
        kwargs = self._cross_patch_kwargs(B, K, ids.device) if self.r else {}
        y = self.local_model(x, capture=capture, **kwargs)  # (B*K, P, D_L)
        logits = y @ self.local_embed.weight.t()  # tied to the local input embedding
        return logits.view(B, K * P, self.vocab_size)

    def _embed_patches(self, ids: Tensor, first: int, last: int) -> Tensor:
        """Patch vectors for patches [first, last) of ``ids``: (B, last - first, P * D_G)."""
        B, P = ids.shape[0], self.P
        start = first * P
        if self.conv is not None:  # include enough earlier bytes for the causal convolutions
            start = max(0, start - self.conv.receptive_field)
        window = ids[:, start:last * P]
        pos = torch.arange(start, last * P, device=ids.device)
        h = self.global_embed(window) + self.global_pos(pos)  # (B, n, D_G)
        if self.conv is not None:
            h = self.conv(h)
        h = h[:, h.shape[1] - (last - first) * P:]
        return h.reshape(B, last - first, P * self.D_G)  # concatenate the P byte embeddings

    def _cross_patch_kwargs(self, B: int, K: int, device: torch.device) -> dict:
        """Prefix function, mask and rotary tables for cross-patch local attention."""
        r, P = self.r, self.P

        def shift(t: Tensor) -> Tensor:  # (B*K, H, P, hd) -> last r of the previous patch
            t = t.view(B, K, *t.shape[1:])[:, :, :, P - r:]  # (B, K, H, r, hd)
            t = torch.cat([torch.zeros_like(t[:, :1]), t[:, :-1]], 1)
            return t.reshape(B * K, *t.shape[2:])

        has_prev = (torch.arange(K, device=device) > 0).repeat(B)  # (B*K,)
        prefix_mask = has_prev.view(B * K, 1, 1, 1).expand(B * K, 1, P, r)
        local_mask = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        mask = torch.cat([prefix_mask, local_mask.expand(B * K, 1, P, P)], -1)  # (B*K,1,P,r+P)
        assert self.rotary is not None
        cos_k, sin_k = self.rotary.tables(torch.arange(r + P, device=device))
        rope = (cos_k[r:], sin_k[r:], cos_k, sin_k)  # queries sit at r..r+P-1
        return dict(prefix_fn=lambda k, v: (shift(k), shift(v)), mask=mask, rope=rope)

    # ---------------------------------------------------------------- cached generation

    def new_decode_state(self, batch: int, device: torch.device) -> MegabyteDecodeState:
        """An empty hierarchical cache for ``batch`` sequences."""
        return MegabyteDecodeState(ids=torch.empty(batch, 0, dtype=torch.long, device=device),
                                   global_cache=KVCache(len(self.global_model.blocks)))

    @torch.no_grad()
    def next_logits(self, state: MegabyteDecodeState, new_ids: Tensor) -> Tensor:
        """Append ``new_ids`` (B, m), m >= 0, to the known bytes; return logits (B, V) for the next.

        At most one global step per new patch plus one local step per byte; a prompt of any
        length is absorbed in one chunked call of each model.
        """
        ids = torch.cat([state.ids, new_ids.to(state.ids.device)], 1)
        state.ids = ids
        B, t = ids.shape
        if t >= self.T:
            raise ValueError(f"context full: position {t} is beyond the model context {self.T}")
        k, p = divmod(t, self.P)
        if k != state.patch:
            self._advance_global(state, k)
        q0 = state.local_done
        x = state.slices[:, q0:p + 1]  # (B, p+1-q0, D_L)
        base = k * self.P
        prev_ids = ids[:, base + max(q0, 1) - 1: base + p]  # byte q-1 for local positions q >= 1
        prev = self.local_embed(prev_ids)
        if q0 == 0:
            prev = torch.cat([self.local_pad.view(1, 1, -1).expand(B, 1, -1), prev], 1)
        x = x + prev
        rope = None
        if self.rotary is not None:
            total = state.prefix_len + p + 1
            key_pos = torch.cat([torch.arange(state.prefix_len), self.r + torch.arange(p + 1)])
            cos_k, sin_k = self.rotary.tables(key_pos.to(ids.device))
            rope = (cos_k[total - (p + 1 - q0):], sin_k[total - (p + 1 - q0):], cos_k, sin_k)
        y = self.local_model(x, cache=state.local_cache, rope=rope)
        state.local_done = p + 1
        state.stats["local_steps"] += p + 1 - q0
        return y[:, -1] @ self.local_embed.weight.t()

    def _advance_global(self, state: MegabyteDecodeState, k: int) -> None:
        """Run the global model up to position k and open a fresh local cache for patch k."""
        ids, B = state.ids, state.ids.shape[0]
        j0 = state.global_done
        parts = []
        if j0 == 0:
            parts.append(self.global_pad.view(1, 1, -1).expand(B, 1, -1))
        first = max(j0 - 1, 0)
        if k > first:  # patches first..k-1 are complete
            parts.append(self._embed_patches(ids, first, k))
        g = self.global_model(torch.cat(parts, 1), cache=state.global_cache)  # (B, k-j0+1, D)
        state.stats["global_steps"] += k + 1 - j0
        state.global_done = k + 1
        state.slices = self.global_to_local(g[:, -1].view(B, self.P, self.D_G))  # (B, P, D_L)
        cache = KVCache(len(self.local_model.blocks))
        state.prefix_len = 0
        if self.r and k > 0:
            if state.patch == k - 1 and state.local_done == self.P and state.local_cache is not None:
                prefix = state.local_cache.tail(self.r)
            else:  # jumped over patches (a long prompt): recompute the local pass once
                prefix = self._local_prefix(ids[:, :k * self.P])
            cache.layers = list(prefix)
            state.prefix_len = self.r
        state.local_cache, state.patch, state.local_done = cache, k, 0

    def _local_prefix(self, ids: Tensor) -> List[Optional[KV]]:
        """Last r local keys/values of the final patch of ``ids`` (B, k*P), for every layer."""
        capture: List[KV] = []
        B, K = ids.shape[0], ids.shape[1] // self.P
        self._logits(ids, capture=capture)
        out: List[Optional[KV]] = []
        for kk, vv in capture:  # each (B*K, H, P, hd)
            kk = kk.view(B, K, *kk.shape[1:])[:, -1, :, self.P - self.r:]
            vv = vv.view(B, K, *vv.shape[1:])[:, -1, :, self.P - self.r:]
            out.append((kk, vv))
        return out
