"""FLOPs per byte (2 FLOPs per multiply-add), counted two ways side by side.

**The paper's count** (§1; :func:`flops_per_byte`, :func:`flops_per_token`), used for compute
matching (``pretrain.comparison.matching``, ``pretrain.compare``) and left exactly as published:

Transformer, per token:  2*L*(12*D^2 + 2*D*T) + 2*D*V
MEGABYTE, per byte:      2*L_G*(12*D^2 + 2*D*K)/P + 2*D_G*D_L + 2*L_L*(12*D_L^2 + 2*D_L*P) + 2*D_L*V

``12*D^2`` is 4*D^2 for the attention projections plus 2*mlp_ratio*D^2 for the MLP (mlp_ratio=4).
The paper options add their own terms: cross-patch attention lengthens the local context from P
to P + r; the conv encoder costs 2*D_G^2*k per byte per filter of size k. Training is 3x forward.
A sliding-window Transformer (``model.attention_window=W``) attends to min(W, T) keys per query,
so its attention term is 2*D*min(W, T) instead of 2*D*T (W = 0: the full context T).

**The work actually done** (:func:`executed_flops_per_byte`), used for MFU: the same terms, but the
attention term counts the keys a query really attends to. Under causal attention (SDPA with
``is_causal``, whose kernels skip the masked half) query i of n sees i + 1 keys, (n + 1) / 2 on
average, so the paper's count overstates attention by about 2x; MEGABYTE's local model attends
over its P positions (plus the r cross-patch keys, absent in a sequence's first patch); a
sliding window W caps each query at min(i + 1, W) keys. Masked keys a kernel may still compute
(the explicit-mask path) are not counted: MFU measures useful work.
"""

from __future__ import annotations

from typing import Dict

from pretrain.config import ModelConfig

TRAIN_MULTIPLIER = 3  # forward + backward (2x forward)
COUNTS = ("paper", "executed")


def _layer_flops(dim: int, keys: float, mlp_ratio: int) -> float:
    """Forward FLOPs of one block for one position attending to ``keys`` positions."""
    return 2 * ((4 + 2 * mlp_ratio) * dim * dim + 2 * dim * keys)


def attention_context(cfg: ModelConfig) -> int:
    """Keys per query the Transformer's FLOPs count: T, or min(W, T) with a sliding window W."""
    W = cfg.attention_window
    return min(W, cfg.seq_len) if W > 0 else cfg.seq_len


def mean_causal_keys(n: int, window: int = 0) -> float:
    """Mean keys per query of causal attention over ``n`` positions: query i sees i + 1 keys,
    or min(i + 1, window) under a sliding ``window`` (0 = none)."""
    if window <= 0 or window >= n:
        return (n + 1) / 2
    # Queries 0..W-1 see 1..W keys; the remaining n - W queries see W each.
    return (window * (window + 1) / 2 + (n - window) * window) / n


def flops_per_token(cfg: ModelConfig, vocab_size: int = 256) -> int:
    """Forward FLOPs per *token* of the Transformer baseline (the paper's count)."""
    s = cfg.global_model
    return s.layers * _layer_flops(s.dim, attention_context(cfg), cfg.mlp_ratio) + 2 * s.dim * vocab_size


def flops_breakdown(cfg: ModelConfig, vocab_size: int = 256, bytes_per_token: float = 1.0,
                    training: bool = False, count: str = "paper") -> Dict[str, float]:
    """FLOPs per byte by part: ``global`` (the global stack, or the baseline's only stack),
    ``local`` (MEGABYTE's local stack; 0 for the baseline) and ``rest`` (w_GL projection, output
    head, conv encoder). ``count``: ``paper`` or ``executed`` (see the module docstring)."""
    if count not in COUNTS:
        raise ValueError(f"unknown FLOP count {count!r}; choose from {', '.join(COUNTS)}")
    paper = count == "paper"
    mult = TRAIN_MULTIPLIER if training else 1
    if cfg.arch == "transformer":
        s = cfg.global_model
        keys = attention_context(cfg) if paper else mean_causal_keys(cfg.seq_len, cfg.attention_window)
        stack = s.layers * _layer_flops(s.dim, keys, cfg.mlp_ratio)
        return {"global": mult * stack / bytes_per_token, "local": 0.0,
                "rest": mult * 2 * s.dim * vocab_size / bytes_per_token}
    P = cfg.patch_size
    K = cfg.seq_len // P
    D, D_L, r = cfg.global_model.dim, cfg.local_model.dim, cfg.cross_patch_window
    D_G = D // P
    global_keys = K if paper else mean_causal_keys(K)
    local_keys = P + r if paper else mean_causal_keys(P) + r * (K - 1) / K
    global_part = cfg.global_model.layers * _layer_flops(D, global_keys, cfg.mlp_ratio) / P
    local_part = cfg.local_model.layers * _layer_flops(D_L, local_keys, cfg.mlp_ratio)
    conv = 2 * D_G * D_G * sum(cfg.conv_kernel_sizes) if cfg.conv_encoder else 0
    rest = 2 * D_G * D_L + 2 * D_L * vocab_size + conv  # projection, head, conv encoder
    return {"global": mult * global_part, "local": mult * local_part, "rest": mult * rest}


def flops_per_byte(cfg: ModelConfig, vocab_size: int = 256, bytes_per_token: float = 1.0,
                   training: bool = False) -> float:
    """The paper's forward (or, with ``training``, 3x forward) FLOPs per byte of any model; the
    count compute matching uses. ``bytes_per_token`` converts the subword baseline's per-token
    cost into a per-byte cost."""
    return sum(flops_breakdown(cfg, vocab_size, bytes_per_token, training, "paper").values())


def executed_flops_per_byte(cfg: ModelConfig, vocab_size: int = 256, bytes_per_token: float = 1.0,
                            training: bool = False) -> float:
    """FLOPs per byte of the work actually done (causal attention at its real key counts); the
    count MFU uses."""
    return sum(flops_breakdown(cfg, vocab_size, bytes_per_token, training, "executed").values())
