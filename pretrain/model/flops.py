"""Forward and training FLOPs per byte (2 FLOPs per multiply-add), as in the paper (§1).

Transformer, per token:  2*L*(12*D^2 + 2*D*T) + 2*D*V
MEGABYTE, per byte:      2*L_G*(12*D^2 + 2*D*K)/P + 2*D_G*D_L + 2*L_L*(12*D_L^2 + 2*D_L*P) + 2*D_L*V

``12*D^2`` is 4*D^2 for the attention projections plus 2*mlp_ratio*D^2 for the MLP (mlp_ratio=4).
The paper options add their own terms: cross-patch attention lengthens the local context from P
to P + r; the conv encoder costs 2*D_G^2*k per byte per filter of size k. Training is 3x forward.
A sliding-window Transformer (``model.attention_window=W``) attends to min(W, T) keys per query,
so its attention term is 2*D*min(W, T) instead of 2*D*T (W = 0: the full context T).
"""

from __future__ import annotations

from pretrain.config import ModelConfig

TRAIN_MULTIPLIER = 3  # forward + backward (2x forward)


def _layer_flops(dim: int, context: int, mlp_ratio: int) -> int:
    """Forward FLOPs of one block for one position attending to ``context`` positions."""
    return 2 * ((4 + 2 * mlp_ratio) * dim * dim + 2 * dim * context)


def flops_per_token(cfg: ModelConfig, vocab_size: int = 256) -> int:
    """Forward FLOPs per *token* of the Transformer baseline (a byte, for the byte baseline)."""
    s = cfg.global_model
    context = attention_context(cfg)
    return s.layers * _layer_flops(s.dim, context, cfg.mlp_ratio) + 2 * s.dim * vocab_size


def attention_context(cfg: ModelConfig) -> int:
    """Keys per query the Transformer's FLOPs count: T, or min(W, T) with a sliding window W."""
    W = cfg.attention_window
    return min(W, cfg.seq_len) if W > 0 else cfg.seq_len


def flops_per_byte(cfg: ModelConfig, vocab_size: int = 256, bytes_per_token: float = 1.0,
                   training: bool = False) -> float:
    """Forward (or, with ``training``, 3x forward) FLOPs per byte of text for any of the models.

    ``bytes_per_token`` converts the subword baseline's per-token cost into a per-byte cost.
    """
    if cfg.arch == "transformer":
        fwd = flops_per_token(cfg, vocab_size) / bytes_per_token
    else:
        P = cfg.patch_size
        K = cfg.seq_len // P
        D, D_L = cfg.global_model.dim, cfg.local_model.dim
        D_G = D // P
        global_part = cfg.global_model.layers * _layer_flops(D, K, cfg.mlp_ratio) / P
        projection = 2 * D_G * D_L
        local_part = cfg.local_model.layers * _layer_flops(D_L, P + cfg.cross_patch_window,
                                                           cfg.mlp_ratio)
        head = 2 * D_L * vocab_size
        conv = 2 * D_G * D_G * sum(cfg.conv_kernel_sizes) if cfg.conv_encoder else 0
        fwd = global_part + projection + local_part + head + conv
    return fwd * (TRAIN_MULTIPLIER if training else 1)
