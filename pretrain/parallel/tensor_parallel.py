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

MEGABYTE's local model is split over the TP group by *patch sequences* instead
(:func:`split_local_model`): its B*K independent patch sequences are cut into tp contiguous
shares, each TP rank runs the local stack on its share only (:class:`_ScatterRows`: own share
forward, all-gather of the gradient backward) and the outputs are all-gathered before the head
(:class:`_GatherRows`: all-gather forward, own share of the gradient backward), so the head, the
loss and everything outside the local stack see the whole batch on every TP rank, unchanged.
Each local-stack parameter then holds the gradient of its rank's share only; a hook sums it over
the TP group before DeepSpeed's own reduction sees it. Why this and not Megatron TP of the
local stack: its FLOPs split the same way, but it needs two all-reduces of (B*K, P, D_L)
activations per local layer, where this needs one all-gather of that size forward and backward
and one all-reduce of the local parameters' gradients per step; and the local stack's small
dimension (D_L, heads) need not be divisible by tp. Cross-patch local attention
(``model.cross_patch_window`` > 0) couples neighbouring patches, so there the local model stays
replicated.

Embeddings, pads and norms are replicated and stay identical on all TP ranks.
TP-sharded parameters carry ``tensor_model_parallel=True``, ``partition_dim`` and
``partition_stride`` so DeepSpeed counts them once per TP rank in the gradient norm.

The shards are built in place (the model's ``global_linear`` hook, :func:`tp_linear`): the full
matrices never exist on any rank. Weights come in one parameter at a time through a
:class:`WeightSource` (the seed's initial values, or ``train.init_from``), each rank reading
only its TP slice and, under ZeRO-3, writing only its own partition.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Protocol, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.config import Config
from pretrain.model import Model, build_model
from pretrain.model.init import init_rules, initial_value
from pretrain.model.layers import Attention, LinearFactory
from pretrain.parallel.grid import ParallelGrid
from pretrain.runtime.logs import get_logger
from pretrain.training.memory import apply_activation_checkpointing

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


class _ScatterRows(torch.autograd.Function):
    """This TP rank's contiguous share of dim 0 forward; all-gather of the shares' gradients
    backward (every rank gets the gradient of the whole input)."""

    @staticmethod
    def forward(ctx, x: Tensor, grid: ParallelGrid) -> Tensor:  # type: ignore[override]
        ctx.grid = grid
        n = x.shape[0] // grid.tp_size
        return x[grid.tp_rank * n:(grid.tp_rank + 1) * n]

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _all_gather_rows(grad, ctx.grid), None


class _GatherRows(torch.autograd.Function):
    """All-gather of the TP ranks' shares along dim 0 forward; this rank's share of the gradient
    backward (identical on every TP rank: what follows runs on the whole batch everywhere)."""

    @staticmethod
    def forward(ctx, y: Tensor, grid: ParallelGrid) -> Tensor:  # type: ignore[override]
        ctx.grid, ctx.n = grid, y.shape[0]
        return _all_gather_rows(y, grid)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        r, n = ctx.grid.tp_rank, ctx.n
        return grad[r * n:(r + 1) * n], None


def _all_gather_rows(x: Tensor, grid: ParallelGrid) -> Tensor:
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(grid.tp_size)]
    dist.all_gather(parts, x, group=grid.tp_group)
    return torch.cat(parts, 0)


def local_split_rows(cfg: Config, micro_batch: int) -> Optional[str]:
    """Why the local model cannot be split over the TP group for this config (None: it can)."""
    tp, m = cfg.parallel.tensor_parallel, cfg.model
    if tp == 1 or m.arch != "megabyte":
        return "no tensor parallelism" if tp == 1 else "not MEGABYTE"
    if m.cross_patch_window:
        return "cross-patch local attention couples neighbouring patches"
    rows = micro_batch * (m.seq_len // m.patch_size)
    if rows % tp:
        return (f"its {micro_batch} x {m.seq_len // m.patch_size} = {rows} patch sequences per "
                f"micro batch do not divide over tensor_parallel={tp}")
    return None


def split_local_model(model: nn.Module, grid: ParallelGrid) -> None:
    """Run MEGABYTE's local stack on this TP rank's share of the patch sequences (module
    docstring). Hooks only: parameter names, shapes and checkpoints are those of the plain model.
    """
    local = model.local_model  # type: ignore[attr-defined]
    split = [False]  # whether the call in flight was split (set forward-pre, read forward-post)

    def scatter(module: nn.Module, args: Tuple, kwargs: Dict) -> Tuple[Tuple, Dict]:
        x = args[0]  # (B*K, P, D_L)
        split[0] = x.shape[0] % grid.tp_size == 0
        if not split[0]:
            if torch.is_grad_enabled():  # training batches are checked by local_split_rows
                raise ValueError(f"{x.shape[0]} patch sequences do not divide over "
                                 f"tensor_parallel={grid.tp_size} (local model split)")
            return None  # scoring a short last batch: every TP rank runs all of it
        return (_ScatterRows.apply(x, grid), *args[1:]), kwargs

    def gather(module: nn.Module, args: Tuple, kwargs: Dict, y: Tensor) -> Optional[Tensor]:
        if not split[0]:
            return None
        return _GatherRows.apply(y, grid)  # (B*K/tp, P, D_L) -> (B*K, P, D_L)

    def sum_over_tp(grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=grid.tp_group)
        return grad

    local.register_forward_pre_hook(scatter, with_kwargs=True)
    local.register_forward_hook(gather, with_kwargs=True)
    for param in local.parameters():
        param.register_hook(sum_over_tp)


def _mark_tp(param: nn.Parameter, dim: int) -> None:
    param.tensor_model_parallel = True  # type: ignore[attr-defined]
    param.partition_dim = dim  # type: ignore[attr-defined]
    param.partition_stride = 1  # type: ignore[attr-defined]


class ColumnParallelLinear(nn.Module):
    """y[:, shard] = x W[shard]^T: the output features are split over TP ranks."""

    projection = True  # its weight is a projection matrix: decayed like nn.Linear's

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

    projection = True

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


def tp_linear(grid: ParallelGrid) -> LinearFactory:
    """The global stack's projections as TP shards, built at their sharded shapes (the model's
    ``global_linear`` hook): QKV and fc1 column-parallel, the attention output and fc2
    row-parallel."""
    def make(in_features: int, out_features: int, role: str) -> nn.Module:
        if role in ("qkv", "fc1"):
            return ColumnParallelLinear(in_features, out_features, grid)
        if role in ("proj", "fc2"):
            return RowParallelLinear(in_features, out_features, grid)
        raise ValueError(f"no tensor-parallel layout for a projection with role {role!r}")

    return make


def fork_attention_rng(model: Model, grid: ParallelGrid) -> None:
    """Attention dropout of the sharded heads under the model-parallel RNG stream."""
    if grid.tp_size > 1:
        for block in model.global_model.blocks:
            _fork_rng_forward(block.attn)


def apply_deepspeed_checkpointing(model: Model, cfg: Config) -> None:
    """Activation checkpointing of the chosen levels through DeepSpeed's checkpoint, which
    restores the default *and* the TP RNG streams on recompute."""
    import deepspeed

    ds_checkpoint = deepspeed.checkpointing.checkpoint

    def run(block: nn.Module, x: Tensor, **kw: Any) -> Tuple[Tensor, Any]:
        return ds_checkpoint(lambda inp: block(inp, **kw), x)

    apply_activation_checkpointing(model, cfg.parallel, run)


def tied_weights(model: Model) -> Iterator[nn.Parameter]:
    """Parameters used outside their own module's forward (the tied output embeddings)."""
    if hasattr(model, "local_embed"):
        yield model.local_embed.weight
    if hasattr(model, "embed"):
        yield model.embed.weight


# ------------------------------------------------------------------------------ full weights


class WeightSource(Protocol):
    """Full (single-process) weights, readable one slice at a time."""

    def names(self) -> List[str]: ...

    def read(self, name: str, dim: Optional[int] = None, start: int = 0,
             length: int = 0) -> Tensor: ...


class InitialWeights:
    """The initial weights of ``seed``, produced one parameter at a time (the values
    :func:`pretrain.model.build_model` gives a single process; see :mod:`pretrain.model.init`)."""

    def __init__(self, cfg: Config, vocab_size: int, pad_id: int, bos_id: int) -> None:
        with torch.device("meta"):  # names, shapes and rules only: no memory
            plain = build_model(cfg.model, vocab_size, pad_id, bos_id, seed=None)
        self.rules = init_rules(plain, cfg.model)
        self.shapes = {n: p.shape for n, p in plain.named_parameters()}
        self.seed = cfg.train.seed

    def names(self) -> List[str]:
        return list(self.shapes)

    def read(self, name: str, dim: Optional[int] = None, start: int = 0,
             length: int = 0) -> Tensor:
        # Only the requested slice is drawn (pretrain.model.init draws in row blocks).
        return initial_value(name, self.shapes[name], self.rules[name], self.seed, dim, start,
                             length)


def load_weights(model: nn.Module, source: WeightSource, grid: ParallelGrid, zero3: bool) -> None:
    """Write full weights into a TP-sharded, maybe ZeRO-3-partitioned model, one parameter at a
    time, each rank reading only its TP slice of the source. Under ZeRO-3 each rank writes its
    own partition (``ds_tensor``: elements ``[r * n, (r + 1) * n)`` of the flattened TP slice,
    ``n = ceil(numel / dp)``, zero-padded at the end) without gathering anything, so no rank ever
    holds the whole model or even a whole parameter beyond the one being read."""
    own = dict(model.named_parameters())
    names = set(source.names())
    missing, unexpected = sorted(set(own) - names), sorted(names - set(own))
    if missing or unexpected:
        raise KeyError(f"weights do not match the model: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    for name, param in own.items():
        shape = tuple(param.ds_shape) if zero3 else tuple(param.shape)  # this TP rank's shape
        dim, start, length = None, 0, 0
        if getattr(param, "tensor_model_parallel", False):
            dim = param.partition_dim
            length, start = shape[dim], grid.tp_rank * shape[dim]
        src = source.read(name, dim, start, length)
        if tuple(src.shape) != shape:
            raise ValueError(f"{name}: shape {tuple(src.shape)} does not fit {shape}")
        with torch.no_grad():
            if zero3:
                _write_partition(param, src, grid)
            else:
                param.data.copy_(src.to(param.dtype))
        del src


def _write_partition(param: nn.Parameter, full: Tensor, grid: ParallelGrid) -> None:
    """This DP rank's ZeRO-3 partition of ``full`` (and the whole tensor if DeepSpeed keeps the
    parameter resident: below ``stage3_param_persistence_threshold``)."""
    part = param.ds_tensor
    n = part.numel()
    flat = full.reshape(-1)
    piece = flat[grid.dp_rank * n: (grid.dp_rank + 1) * n]
    part.data.zero_()
    part.data[:piece.numel()].copy_(piece.to(part.dtype))
    if param.numel() == full.numel():  # resident: the full value lives in param.data too
        param.data.copy_(full.to(param.dtype))


def tp_partition_dims(model: nn.Module) -> Dict[str, int]:
    """{plain parameter name: the dimension its TP shards split} for the TP-sharded parameters."""
    return {name: int(p.partition_dim) for name, p in model.named_parameters()
            if getattr(p, "tensor_model_parallel", False)}


def _gathered(params, zero3: bool, modifier_rank: Optional[int]):
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


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
                         weights: Optional[WeightSource] = None) -> Model:
    """Build the model for this rank: the global stack's projections as TP shards, ZeRO-3
    partitioned when stage 3.

    Nothing is allocated for the whole model: the global stack is built at its TP shapes
    (:func:`tp_linear`), and under ZeRO-3 ``deepspeed.zero.Init`` partitions each module as it is
    built. The values are then written one parameter at a time (:func:`load_weights`) from
    ``weights`` (``train.init_from``) or the seed's initial weights (:class:`InitialWeights`), so
    every layout starts from exactly the weights a single process would.
    """
    import deepspeed

    zero3 = cfg.parallel.zero_stage == 3
    if cfg.model.global_model.heads % grid.tp_size:
        raise ValueError(f"tensor_parallel={grid.tp_size} does not divide the global heads "
                         f"({cfg.model.global_model.heads})")
    source = weights if weights is not None else InitialWeights(cfg, vocab_size, pad_id, bos_id)
    with deepspeed.zero.Init(data_parallel_group=grid.dp_group, mpu=grid,
                             config_dict_or_path=ds_config, enabled=zero3):
        model = build_model(cfg.model, vocab_size, pad_id, bos_id, seed=None,
                            global_linear=tp_linear(grid))
    fork_attention_rng(model, grid)
    load_weights(model, source, grid, zero3)
    why_not = local_split_rows(cfg, int(ds_config["train_micro_batch_size_per_gpu"]))
    if why_not is None:
        split_local_model(model, grid)
    elif grid.tp_size > 1 and cfg.model.arch == "megabyte":
        get_logger().info("local model replicated on the %d TP ranks: %s", grid.tp_size, why_not)
    if zero3:
        for weight in tied_weights(model):
            deepspeed.zero.register_external_parameter(model, weight)
    apply_deepspeed_checkpointing(model, cfg)
    return model
