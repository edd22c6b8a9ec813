"""The transformer block shared by MEGABYTE's global and local models and both baselines.

Pure architecture: no ``torch.distributed`` here. The linear layers are laid out so that a
tensor-parallel wrapper (applied elsewhere) can split them Megatron-style:

* ``attn.qkv``  (D -> 3D): column-parallel. Output features are ordered (head, {q,k,v}, head_dim),
  so a contiguous split of the output dimension gives each rank whole heads with their q, k, v.
* ``attn.proj`` (D -> D): row-parallel (split by input features).
* ``mlp.fc1``   (D -> r*D): column-parallel.   ``mlp.fc2`` (r*D -> D): row-parallel.

Attention therefore infers its head count from the ``qkv`` output at run time, so the same code
runs with all heads or with a TP shard of them.

Dimension names: N = batch of sequences, L = query length, S = key length, D = width,
H = heads, hd = head size.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, FrozenSet, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = Tuple[Tensor, Tensor]
# Given one layer's fresh (k, v), each (N, H, L, hd), return keys/values to prepend: (N, H, r, hd).
PrefixFn = Callable[[Tensor, Tensor], KV]


class Rotary:
    """Rotary position embedding tables (rotate-half form) for a head size ``hd``."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        self.head_dim = head_dim
        # A plain CPU tensor, not a parameter or buffer: explicit device, also under a meta build.
        steps = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu")
        self.inv_freq = 1.0 / (base ** (steps / head_dim))

    def tables(self, positions: Tensor) -> Tuple[Tensor, Tensor]:
        """cos/sin tables, each (len(positions), hd), in float32."""
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    @staticmethod
    def apply(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate x (..., S, hd) by tables (S, hd)."""
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return (x.float() * cos + rotated.float() * sin).to(x.dtype)


LinearFactory = Callable[[int, int, str], nn.Module]
"""``(in_features, out_features, role) -> module`` for a stack's projections; ``role`` is
``qkv``, ``proj``, ``fc1`` or ``fc2``. The default is a bias-free ``nn.Linear``; the parallel
build (``pretrain.parallel``) passes one that makes tensor-parallel shards, so the global stack
is built at its sharded shapes and the full matrices never exist. A module it returns that is not
an ``nn.Linear`` sets ``projection = True`` (its weight is a projection matrix: decayed)."""


def plain_linear(in_features: int, out_features: int, role: str) -> nn.Module:
    """The default :data:`LinearFactory`: ``nn.Linear`` without bias."""
    return nn.Linear(in_features, out_features, bias=False)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    Supports four extras without distributed code: a KV cache (``past``), keys/values of a
    previous patch (``prefix_fn``, MEGABYTE's cross-patch attention), rotary positions and a
    sliding window (``window`` > 0: a query sees itself and the ``window - 1`` keys before it).
    The window lives here, so the single-process model and the tensor-parallel stack (which
    only swaps the linear layers) apply it the same way.
    """

    def __init__(self, dim: int, heads: int, dropout: float,
                 linear: LinearFactory = plain_linear, window: int = 0) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.qkv = linear(dim, 3 * dim, "qkv")
        self.proj = linear(dim, dim, "proj")
        self.dropout = dropout
        self.window = window

    def forward(
        self,
        x: Tensor,
        *,
        past: Optional[KV] = None,
        prefix_fn: Optional[PrefixFn] = None,
        mask: Optional[Tensor] = None,
        rope: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]] = None,
    ) -> Tuple[Tensor, KV]:
        """x: (N, L, D) -> (N, L, D), plus this call's unrotated (k, v), each (N, H, L, hd).

        ``mask``: boolean, broadcastable to (N, H, L, S_total), True = may attend. When None,
        attention is causal if there are no extra keys, and unrestricted for a single query
        (cached decoding of the newest position). The queries are the last L of the S_total
        key positions. With ``self.window`` smaller than S_total the window mask
        (:func:`window_mask`) is used (and-ed with ``mask`` if one is given), or, for plain
        self-attention over at least three windows, the block-by-block
        :func:`banded_window_attention`; otherwise the window covers every key and the paths
        above run unchanged (bit-identical to W = 0).
        ``rope``: (cos_q, sin_q, cos_k, sin_k) tables for the queries and for *all* keys.
        Plain causal self-attention of short sequences on CPU (L * H <= 32, MEGABYTE's local
        model) runs with the heads folded into one sequence (:func:`folded_causal_attention`).
        """
        N, L, _ = x.shape
        hd = self.head_dim
        qkv = self.qkv(x).view(N, L, -1, 3, hd)  # (N, L, H, 3, hd); H = local heads under TP
        # unbind, not three indexings: its backward stacks the three gradients into one tensor,
        # where each index's backward zero-fills a full (N, L, H, 3, hd) tensor and adds them up.
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(3))  # each (N, H, L, hd)
        fresh = (k, v)
        keys, values = k, v
        if prefix_fn is not None:
            pk, pv = prefix_fn(k, v)  # (N, H, r, hd)
            keys, values = torch.cat([pk, keys], dim=2), torch.cat([pv, values], dim=2)
        if past is not None:
            keys, values = torch.cat([past[0], keys], dim=2), torch.cat([past[1], values], dim=2)
        if rope is not None:
            cos_q, sin_q, cos_k, sin_k = rope
            q = Rotary.apply(q, cos_q, sin_q)
            keys = Rotary.apply(keys, cos_k, sin_k)
        S = keys.shape[2]
        extra = S - L
        drop = self.dropout if self.training else 0.0
        if 0 < self.window < S:  # some query has keys outside its window
            if mask is None and extra == 0 and banded_window(L, self.window):
                y = banded_window_attention(q, keys, values, self.window, drop)  # (N, H, L, hd)
                return self.proj(y.transpose(1, 2).reshape(N, L, -1)), fresh
            win = window_mask(L, S, self.window, x.device)  # (L, S), cached per shape
            mask = win if mask is None else mask & win
        if mask is None and extra == 0 and rope is None and fold_heads(x.device, L, qkv.shape[2]):
            return self.proj(folded_causal_attention(qkv, drop)), fresh  # short, e.g. P = 8
        if mask is None and extra == 0:
            y = F.scaled_dot_product_attention(q, keys, values, dropout_p=drop, is_causal=True)
        elif mask is None and L == 1:
            y = F.scaled_dot_product_attention(q, keys, values, dropout_p=drop)
        else:
            if mask is None:
                mask = causal_mask(L, keys.shape[2], x.device)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).reshape(N, L, -1)  # (N, L, H*hd)
        return self.proj(y), fresh


def banded_window(seq_len: int, window: int) -> bool:
    """Whether sliding-window self-attention over ``seq_len`` positions runs block by block
    (:func:`banded_window_attention`): when it spans at least three windows. Measured on CPU,
    one thread, a training step of the tiny windowed Transformer (``bench/bench_window.py``,
    W = 256, masked / banded): L = 2W 0.95-0.97x, 3W 1.05x, 4W 1.10-1.13x, 8W 1.54x, 16W 2.43x,
    32W 4.33x."""
    return seq_len >= 3 * window


def banded_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, dropout: float) -> Tensor:
    """Causal sliding-window self-attention (query i sees keys i - window < j <= i) that skips
    the keys outside every window instead of masking them.

    q, k, v: (N, H, L, hd) -> (N, H, L, hd). Cut into blocks of W = ``window`` positions
    (L padded at the end to whole blocks: causal, so the padding changes no earlier output), the
    queries of block b can only see keys of blocks b - 1 and b: each block attends to those 2W
    keys under one (W, 2W) band mask, and block 0 (which has no earlier block, and whose window
    holds every earlier position) is plain causal attention. Scores computed: L * 2W instead of
    the L * L of a masked full attention (4096 positions, W = 512: a quarter). Same softmax over
    the same keys as :func:`window_mask`.
    """
    N, H, L, hd = q.shape
    W = window
    n_blocks = -(-L // W)
    pad = n_blocks * W - L
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    first = F.scaled_dot_product_attention(q[:, :, :W], k[:, :, :W], v[:, :, :W],
                                           dropout_p=dropout, is_causal=True)  # (N, H, W, hd)
    rest = n_blocks - 1  # >= 1 for any L > W
    qb = q[:, :, W:].reshape(N, H * rest, W, hd)
    # unfold: the 2W keys of blocks b-1 and b for every b >= 1, (N, H, rest, hd, 2W) -> rows
    kb, vb = (t.unfold(2, 2 * W, W).transpose(-1, -2).reshape(N, H * rest, 2 * W, hd)
              for t in (k, v))
    r = torch.arange(W, device=q.device)[:, None]  # query offset in its block
    j = torch.arange(2 * W, device=q.device)[None, :]  # key offset from the previous block's start
    band = (j > r) & (j <= r + W)  # (W, 2W): key position in (query - W, query]
    y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=band, dropout_p=dropout)
    y = torch.cat([first, y.view(N, H, rest * W, hd)], dim=2)  # (N, H, n_blocks * W, hd)
    return y[:, :, :L]


# Longest folded sequence (L * H) for which :func:`folded_causal_attention` beats the per-head
# flash kernel on CPU, measured one thread, fwd + bwd (torch 2.13): L*H = 16 (L 4, H 4, hd 32)
# 2.03x, 32 (L 8, H 4: tiny's local model) 1.47x with hd 32 and 1.10x with hd 64; L*H = 64
# 0.73-0.98x, 128 0.51x. GPUs keep the flash kernel (not measured there).
FOLD_MAX_LEN = 32


def fold_heads(device: torch.device, seq_len: int, heads: int) -> bool:
    """Whether causal self-attention of ``seq_len`` positions and ``heads`` heads on ``device``
    runs folded (:func:`folded_causal_attention`): CPU only, ``seq_len * heads <= 32``."""
    return device.type == "cpu" and seq_len * heads <= FOLD_MAX_LEN


def folded_causal_attention(qkv: Tensor, dropout: float) -> Tensor:
    """Causal self-attention of many short sequences with their heads folded into one sequence.

    qkv: (N, L, H, 3, hd) -> (N, L, H*hd). Each sequence's L*H (position, head) rows become one
    attention of length L*H under :func:`folded_causal_mask` (a row sees its own head's rows at
    the same or earlier positions): the same softmax over the same keys, exact zeros elsewhere.
    Why: the CPU flash kernel's per-(sequence, head) overhead dominates at MEGABYTE's local
    lengths (P = 8), and one block of 32 rows replaces 4 blocks of 8. No copies: (L, H) merge
    into one strided dimension of the qkv projection, and the output is already (N, L, H*hd).
    """
    N, L, H, _, hd = qkv.shape
    q, k, v = (t.reshape(N, 1, L * H, hd) for t in qkv.unbind(3))  # (N, 1, L*H, hd), views
    mask = folded_causal_mask(L, H, qkv.device)  # (L*H, L*H)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return y.reshape(N, L, H * hd)


def folded_causal_mask(seq_len: int, heads: int, device: torch.device) -> Tensor:
    """(L*H, L*H) boolean mask over rows ordered (position, head), True = may attend: same head,
    key position <= query position. Built per call, not cached: at most 32 x 32, a few
    microseconds against milliseconds of attention, and under torch.compile it is traced into
    the graph (integer compares: inductor writes these bools fast, unlike :func:`relu`'s)."""
    pos = torch.arange(seq_len, device=device).repeat_interleave(heads)  # (L*H,)
    head = torch.arange(heads, device=device).repeat(seq_len)  # (L*H,)
    return (head[:, None] == head[None, :]) & (pos[None, :] <= pos[:, None])


def causal_mask(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """(q_len, k_len) boolean mask for the *last* q_len positions of a k_len sequence."""
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset
    return torch.arange(k_len, device=device)[None, :] <= q_pos


@lru_cache(maxsize=8)
def window_mask(q_len: int, k_len: int, window: int, device: torch.device) -> Tensor:
    """(q_len, k_len) boolean mask, True = may attend, for the *last* q_len positions of a k_len
    sequence under a sliding window: query position i sees key positions j, i - window < j <= i.

    Built once per (q_len, k_len, window, device) and cached (at most 8 shapes: training uses one
    per sequence length, cached decoding needs none once its cache holds window - 1 positions).
    Memory: q_len * k_len bytes per cached shape, broadcast over batch and heads; 256 KiB at
    T = 512, 4 MiB at 2048, 64 MiB at 8192 (the compare's base/arxiv context). Do not modify the
    returned tensor: it is shared.
    """
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset  # (L, 1): absolute positions
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, S)
    return (k_pos <= q_pos) & (k_pos > q_pos - window)


class _ReluGradFromOutput(torch.autograd.Function):
    """ReLU whose backward multiplies by ``sign(y)`` of its saved output: no boolean tensor
    anywhere. Same values and gradients as ``F.relu`` (``y > 0`` exactly where ``x > 0``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = torch.relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad * y.sign()


def relu(x: Tensor) -> Tensor:
    """ReLU of a layer's fresh output: ``F.relu(x, inplace=True)`` in eager mode; under
    torch.compile :class:`_ReluGradFromOutput`.

    ``x`` must be an intermediate nothing else reads (the output of ``fc1`` or of a convolution,
    whose backward keeps their inputs, not their outputs): eager mode overwrites it, which saves
    allocating and writing a second tensor of the hidden layer's size: MEGABYTE's training step
    1.013x (tiny) and 1.020x (small) as fast, one thread, T=4096 (``bench/compare_trees.py``,
    6 alternated rounds; ``bench/results/cpu_inplace_relu_trees.json``).
    The backward is ``F.relu``'s (from the saved output), so values and gradients are unchanged.

    Under torch.compile, why not ``F.relu``: inductor saves its backward mask as a bool tensor,
    and its CPU kernels write bools from float comparisons at ~20 ns per element (torch 2.13,
    AVX-512 and scalar code alike; integer comparisons ~0.5 ns): 37 ms for the tiny local MLP's
    (4096, 512) hidden layer, where the ReLU itself takes 0.8 ms, which made the compiled tiny
    MEGABYTE step 0.72x as fast as eager. Multiplying by the sign of the saved
    output (which the next matmul's backward keeps anyway) stores no mask.
    """
    if torch.compiler.is_compiling():
        return _ReluGradFromOutput.apply(x)
    return F.relu(x, inplace=True)


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """The activation named by ``model.activation``: ``relu`` (:func:`relu`) or ``gelu``."""
    return relu if name == "relu" else F.gelu


class MLP(nn.Module):
    """Two linear layers with an activation (ReLU in the paper)."""

    def __init__(self, dim: int, hidden: int, activation: str,
                 linear: LinearFactory = plain_linear) -> None:
        super().__init__()
        self.fc1 = linear(dim, hidden, "fc1")
        self.fc2 = linear(hidden, dim, "fc2")
        self.act = activation_fn(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + drop(attn(ln(x))), then x + drop(mlp(ln(x)))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float, activation: str,
                 linear: LinearFactory = plain_linear, window: int = 0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, linear, window)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim, activation, linear)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, **attn_kwargs) -> Tuple[Tensor, KV]:
        a, kv = self.attn(self.ln1(x), **attn_kwargs)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, kv


class KVCache:
    """Per-layer keys and values (unrotated), each (N, H, S, hd), grown by ``append``.

    ``keep`` bounds it to the last ``keep`` positions (a sliding-window model needs only
    window - 1 of them: the newest query plus those fill its window); None keeps everything.
    """

    def __init__(self, n_layers: int, keep: Optional[int] = None) -> None:
        self.layers: List[Optional[KV]] = [None] * n_layers
        self.keep = keep

    def __len__(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].shape[2]

    def append(self, i: int, kv: KV) -> None:
        old = self.layers[i]
        self.layers[i] = kv if old is None else (torch.cat([old[0], kv[0]], 2), torch.cat([old[1], kv[1]], 2))
        if self.keep is not None:
            k, v = self.layers[i]  # (N, H, S, hd)
            cut = max(0, k.shape[2] - self.keep)
            if cut:
                self.layers[i] = (k[:, :, cut:], v[:, :, cut:])  # (N, H, keep, hd)

    def tail(self, r: int) -> List[Optional[KV]]:
        """The last r positions of every layer (for MEGABYTE's cross-patch prefix)."""
        return [None if kv is None else (kv[0][:, :, -r:], kv[1][:, :, -r:]) for kv in self.layers]


class TransformerStack(nn.Module):
    """``layers`` pre-norm blocks followed by a final LayerNorm."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: int, dropout: float,
                 activation: str, linear: LinearFactory = plain_linear, window: int = 0) -> None:
        super().__init__()
        self.window = window  # sliding attention window of every block; 0 = full causal
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dropout, activation, linear, window)
            for _ in range(layers))
        self.ln_out = nn.LayerNorm(dim)
        # Set by the parallel wrapper to wrap blocks with activation checkpointing.
        self.checkpoint_fn: Optional[Callable[..., Tuple[Tensor, KV]]] = None

    def forward(
        self,
        x: Tensor,
        *,
        cache: Optional[KVCache] = None,
        prefix_fn: Optional[PrefixFn] = None,
        mask: Optional[Tensor] = None,
        rope: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]] = None,
        capture: Optional[List[KV]] = None,
    ) -> Tensor:
        """x: (N, L, D) -> (N, L, D).

        With ``cache``, each layer attends to its cached keys first and appends its new ones.
        With ``capture`` (a list), every layer's fresh (k, v) is appended to it.
        """
        for i, block in enumerate(self.blocks):
            past = cache.layers[i] if cache is not None else None
            kwargs = dict(past=past, prefix_fn=prefix_fn, mask=mask, rope=rope)
            if self.checkpoint_fn is not None and self.training and cache is None:
                x, kv = self.checkpoint_fn(block, x, **kwargs)
            else:
                x, kv = block(x, **kwargs)
            if cache is not None:
                cache.append(i, kv)
            if capture is not None:
                capture.append(kv)
        return self.ln_out(x)


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def decayed_parameter_names(module: nn.Module) -> FrozenSet[str]:
    """The parameters that get weight decay, by role: the weight matrices of projections and
    convolutions (attention, MLP, global-to-local, the patch encoder); never embeddings, pads,
    norms or biases. Decided once by :func:`pretrain.model.build_model` (which stores it as
    ``model.decayed_names``); a tensor-parallel shard built in a projection's place declares
    ``projection = True``, so it keeps the name and the decay of the layer it stands for."""
    return frozenset(f"{prefix}.weight" if prefix else "weight"
                     for prefix, m in module.named_modules()
                     if (isinstance(m, (nn.Linear, nn.Conv1d)) or getattr(m, "projection", False))
                     and m.weight is not None)
