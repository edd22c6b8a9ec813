"""Activation checkpointing: recompute a level's transformer blocks in backward instead of
storing their activations (``parallel.checkpoint_global`` / ``parallel.checkpoint_local``).

The one place that decides which stacks recompute; the single-process loop passes torch's
checkpoint, the DeepSpeed engine its own (which also restores the tensor-parallel RNG stream).
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

from torch import Tensor, nn

from pretrain.config import ParallelConfig

# (block, x, **block kwargs) -> the block's output (x, kv); recomputed in backward.
RunBlock = Callable[..., Tuple[Tensor, Any]]


def torch_checkpoint(block: nn.Module, x: Tensor, **kw: Any) -> Tuple[Tensor, Any]:
    """Run ``block`` under ``torch.utils.checkpoint`` (non-reentrant)."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(lambda inp: block(inp, **kw), x, use_reentrant=False)


def apply_activation_checkpointing(model: nn.Module, parallel: ParallelConfig,
                                   run: RunBlock = torch_checkpoint) -> None:
    """Make the chosen levels' stacks run each block through ``run`` while training. The
    Transformer baselines have one stack (``global_model``); ``checkpoint_local`` applies to
    MEGABYTE's local model."""
    if parallel.checkpoint_global:
        model.global_model.checkpoint_fn = run
    if parallel.checkpoint_local and hasattr(model, "local_model"):
        model.local_model.checkpoint_fn = run
