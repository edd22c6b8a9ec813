"""Parallelism is applied here and only here: tensor parallelism of the global model, activation
checkpointing, ZeRO-3 construction, and moving full (unsharded) weights in and out.

Megatron-style TP of every block of ``model.global_model`` (MEGABYTE's global model, or the whole
stack of a Transformer baseline):

* ``attn.qkv`` and ``mlp.fc1`` become column-parallel (rank r keeps rows r*out/tp .. of W); the
  input passes through :class:`_CopyToTP` (identity forward, all-reduce of the gradient);
* ``attn.proj`` and ``mlp.fc2`` become row-parallel (rank r keeps columns r*in/tp .. of W); the
  output passes through :class:`_ReduceFromTP` (all-reduce forward, identity backward);
* attention dropout runs under the model-parallel RNG stream (different on every TP rank),
  everything else under the default stream (identical on TP peers), as in Megatron.

The local model, embeddings, pads and norms are replicated and stay identical on all TP ranks.
TP-sharded parameters carry ``tensor_model_parallel=True``, ``partition_dim`` and
``partition_stride`` so DeepSpeed counts them once per TP rank in the gradient norm.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.config import Config
from pretrain.model import Model, build_model
from pretrain.model.layers import Attention, TransformerStack
from pretrain.parallel.grid import ParallelGrid

# ------------------------------------------------------------------------------ TP primitives


class _CopyToTP(torch.autograd.Function):
    """Identity forward; all-reduce of the gradient over the TP group backward."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:  # type: ignore[override]
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward over the TP group; identity backward."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None


def _mark_tp(param: nn.Parameter, dim: int) -> None:
    param.tensor_model_parallel = True  # type: ignore[attr-defined]
    param.partition_dim = dim  # type: ignore[attr-defined]
    param.partition_stride = 1  # type: ignore[attr-defined]


class ColumnParallelLinear(nn.Module):
    """y[:, shard] = x W[shard]^T: the output features are split over TP ranks."""

    def __init__(self, in_features: int, out_features: int, grid: ParallelGrid) -> None:
        super().__init__()
        assert out_features % grid.tp_size == 0, (out_features, grid.tp_size)
        self.group, self.tp_size = grid.tp_group, grid.tp_size
        self.weight = nn.Parameter(torch.empty(out_features // grid.tp_size, in_features))
        _mark_tp(self.weight, 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.tp_size > 1:
            x = _CopyToTP.apply(x, self.group)
        return F.linear(x, self.weight)


class RowParallelLinear(nn.Module):
    """y = sum over ranks of x[:, shard] W[:, shard]^T: the input features are split."""

    def __init__(self, in_features: int, out_features: int, grid: ParallelGrid) -> None:
        super().__init__()
        assert in_features % grid.tp_size == 0, (in_features, grid.tp_size)
        self.group, self.tp_size = grid.tp_group, grid.tp_size
        self.weight = nn.Parameter(torch.empty(out_features, in_features // grid.tp_size))
        _mark_tp(self.weight, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight)
        if self.tp_size > 1:
            y = _ReduceFromTP.apply(y, self.group)
        return y


# ------------------------------------------------------------------------------ applying TP


def rng_tracker():
    """DeepSpeed's model-parallel RNG tracker (CPU generator on CPU, CUDA generator on GPU)."""
    from deepspeed.runtime.activation_checkpointing import checkpointing

    return checkpointing.get_cuda_rng_tracker()


def _fork_rng_forward(attn: Attention) -> None:
    """Run this attention's forward (its dropout) under the model-parallel RNG stream."""
    plain = attn.forward

    def forward(*args: Any, **kwargs: Any):
        with rng_tracker().fork():
            return plain(*args, **kwargs)

    attn.forward = forward  # type: ignore[method-assign]


def apply_tensor_parallel(model: Model, grid: ParallelGrid) -> None:
    """Swap the global stack's linear layers for TP shards (fresh parameters; load weights after)."""
    stack: TransformerStack = model.global_model
    for block in stack.blocks:
        attn, mlp = block.attn, block.mlp
        d_model = attn.proj.out_features
        hidden = mlp.fc1.out_features
        if attn.qkv.out_features // 3 // attn.head_dim % grid.tp_size:
            raise ValueError(f"tensor_parallel={grid.tp_size} does not divide the global heads")
        attn.qkv = ColumnParallelLinear(d_model, 3 * d_model, grid)
        attn.proj = RowParallelLinear(d_model, d_model, grid)
        mlp.fc1 = ColumnParallelLinear(d_model, hidden, grid)
        mlp.fc2 = RowParallelLinear(hidden, d_model, grid)
        if grid.tp_size > 1:
            _fork_rng_forward(attn)


def apply_activation_checkpointing(model: Model, cfg: Config, use_deepspeed: bool) -> None:
    """Recompute the blocks of the chosen levels in backward instead of storing activations."""
    if use_deepspeed:
        import deepspeed

        ds_checkpoint = deepspeed.checkpointing.checkpoint

        def run(block: nn.Module, x: Tensor, **kw: Any) -> Tuple[Tensor, Any]:
            # DeepSpeed's checkpoint restores the default *and* the TP RNG streams on recompute.
            return ds_checkpoint(lambda inp: block(inp, **kw), x)
    else:
        from torch.utils.checkpoint import checkpoint

        def run(block: nn.Module, x: Tensor, **kw: Any) -> Tuple[Tensor, Any]:
            return checkpoint(lambda inp: block(inp, **kw), x, use_reentrant=False)

    fn: Callable[..., Tuple[Tensor, Any]] = run
    if cfg.parallel.checkpoint_global:
        model.global_model.checkpoint_fn = fn
    if cfg.parallel.checkpoint_local and hasattr(model, "local_model"):
        model.local_model.checkpoint_fn = fn


def tied_weights(model: Model) -> Iterator[nn.Parameter]:
    """Parameters used outside their own module's forward (the tied output embeddings)."""
    if hasattr(model, "local_embed"):
        yield model.local_embed.weight
    if hasattr(model, "embed"):
        yield model.embed.weight


# ------------------------------------------------------------------------------ full weights


def tp_slice(name: str, full: Tensor, param: nn.Parameter, grid: ParallelGrid) -> Tensor:
    """This TP rank's slice of a full tensor for ``param`` (the full tensor if replicated)."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    size = full.shape[dim] // grid.tp_size
    return full.narrow(dim, grid.tp_rank * size, size)


def tp_partition_dims(model: nn.Module) -> Dict[str, int]:
    """{plain parameter name: the dimension its TP shards split} for the TP-sharded parameters."""
    return {name: int(p.partition_dim) for name, p in model.named_parameters()
            if getattr(p, "tensor_model_parallel", False)}


def _gathered(params, zero3: bool, modifier_rank: Optional[int]):
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def load_full_state(model: nn.Module, state: Dict[str, Tensor], grid: ParallelGrid,
                    zero3: bool) -> None:
    """Write full (single-process) weights into a TP-sharded, maybe ZeRO-3-partitioned model."""
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"weights do not match the model: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    for name, param in own.items():
        # modifier_rank=0 broadcasts DP-rank 0's write; None would throw the write away.
        with _gathered([param], zero3, modifier_rank=0):
            src = tp_slice(name, state[name], param, grid)
            if tuple(src.shape) != tuple(param.shape):
                raise ValueError(f"{name}: shape {tuple(src.shape)} does not fit {tuple(param.shape)}")
            with torch.no_grad():
                param.data.copy_(src.to(param.dtype))


def gather_full_state(model: nn.Module, grid: ParallelGrid, zero3: bool,
                      keep: bool = True) -> Dict[str, Tensor]:
    """Full fp32 weights (collective): un-partition ZeRO-3, then concatenate TP shards.

    Every rank must call it; ranks with ``keep=False`` drop each tensor right away (so only the
    rank that writes or samples holds the whole model in memory).
    """
    out: Dict[str, Tensor] = {}
    for name, param in model.named_parameters():
        with _gathered([param], zero3, modifier_rank=None):
            local = param.data.detach().float().clone()
        if getattr(param, "tensor_model_parallel", False) and grid.tp_size > 1:
            parts = [torch.empty_like(local) for _ in range(grid.tp_size)]
            dist.all_gather(parts, local, group=grid.tp_group)
            local = torch.cat(parts, dim=param.partition_dim)
        if keep:
            out[name] = local.cpu()
    return out


def build_parallel_model(cfg: Config, vocab_size: int, pad_id: int, bos_id: int,
                         grid: ParallelGrid, ds_config: Dict[str, Any],
                         full_state: Optional[Dict[str, Tensor]] = None) -> Model:
    """Build the model for this rank: TP layers swapped in, ZeRO-3-partitioned when stage 3.

    The initial weights are the single-process model's (same seed, same init order), or
    ``full_state`` (an export); either way they are sliced per TP rank, so every layout starts
    from exactly the weights a single process would.
    """
    import deepspeed

    zero3 = cfg.parallel.zero_stage == 3
    if full_state is None:
        torch.manual_seed(cfg.train.seed)
        reference = build_model(cfg.model, vocab_size, pad_id, bos_id)
        full_state = {k: v.detach().clone() for k, v in reference.named_parameters()}
        del reference
    with deepspeed.zero.Init(data_parallel_group=grid.dp_group, mpu=grid,
                             config_dict_or_path=ds_config, enabled=zero3):
        model = build_model(cfg.model, vocab_size, pad_id, bos_id)
        apply_tensor_parallel(model, grid)
    load_full_state(model, full_state, grid, zero3)
    if zero3:
        for weight in tied_weights(model):
            deepspeed.zero.register_external_parameter(model, weight)
    apply_activation_checkpointing(model, cfg, use_deepspeed=True)
    return model
