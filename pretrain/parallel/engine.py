"""The distributed engine: DeepSpeed ZeRO (stages 0-3) with a tensor-parallel global model.

Same loop as the single-process :class:`~pretrain.training.trainer.Trainer` (it subclasses it); what
changes is how the model is built (:func:`pretrain.parallel.build_parallel_model`), how a step is
taken (``engine.backward`` / ``engine.step``), how checkpoints are written, and that every
decision that must be collective (skip, stop) is agreed by all ranks.

Checkpoint layout (``<run_dir>/checkpoints``): one directory per step written by DeepSpeed's
``save_checkpoint`` (model/optimizer shards, ``client_state`` with step, bytes seen, config),
plus ``rank_XXXXX.pt`` per rank with its RNG states (Python, numpy, torch, the TP tracker) and
data-loader state. ``latest`` is replaced atomically by rank 0 only after a barrier, i.e. after
every rank has finished writing.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from pretrain.checkpoints import store
from pretrain.checkpoints.consolidate import OpenWeights
from pretrain.config import Config, Derived, as_dict, derive
from pretrain.model import build_model
from pretrain.model.losses import bits_per_byte, lm_loss, targets_for
from pretrain.parallel.grid import ParallelGrid, all_ranks_max, init_distributed, mean_over
from pretrain.parallel.tensor_parallel import (
    build_parallel_model,
    gather_full_state,
    rng_tracker,
    tp_partition_dims,
)
from pretrain.runtime.compile import check_compile
from pretrain.runtime.device import pick_device
from pretrain.runtime.logs import get_logger
from pretrain.runtime.rng import rng_state, set_rng_state
from pretrain.training.inputs import architecture_difference
from pretrain.training.optim import decay_split, lr_at, param_groups
from pretrain.training.trainer import ResumeError, Trainer

log = get_logger()
# torch's gloo path inside DeepSpeed ZeRO warns on every step; the call is DeepSpeed's, not ours.
warnings.filterwarnings("ignore", message=".*(reduce_scatter_tensor|all_gather_into_tensor).*is "
                                           "deprecated")



def deepspeed_config(cfg: Config, derived: Derived, device: torch.device) -> Dict[str, Any]:
    """The DeepSpeed config, generated from the validated config (never written by hand)."""
    o = cfg.optim
    zero: Dict[str, Any] = {"stage": cfg.parallel.zero_stage}
    if cfg.parallel.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = cfg.parallel.zero3_persistence_threshold
    if device.type == "cpu":
        zero["overlap_comm"] = False  # gloo: keep communication simple and deterministic
    return {
        "train_micro_batch_size_per_gpu": derived.micro_batch_size,
        "gradient_accumulation_steps": derived.grad_accum_steps,
        "train_batch_size": derived.micro_batch_size * derived.grad_accum_steps
        * derived.data_parallel,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.train.dtype == "bf16"},
        "optimizer": {"type": "AdamW", "params": {
            "lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay,
            "adam_w_mode": True, **_adam_implementation(cfg, device)}},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _adam_implementation(cfg: Config, device: torch.device) -> Dict[str, Any]:
    """torch.optim.AdamW with ``fused`` updates (one kernel over all of a rank's partitions; torch
    ships it for CPU and CUDA, so a fresh GPU node without a CUDA compiler trains); DeepSpeed's
    FusedAdam (built just in time) only when asked for (``parallel.deepspeed_fused_adam``, GPU
    only). DeepSpeed passes ``fused`` through to ``torch.optim.AdamW``."""
    if cfg.parallel.deepspeed_fused_adam and device.type == "cuda":
        return {"torch_adam": False}
    return {"torch_adam": True, "fused": True}


class LossModule(nn.Module):
    """What DeepSpeed runs: ids (B, T) -> mean next-id cross-entropy (nats)."""

    def __init__(self, model: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.model, self.pad_id = model, pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.model(ids), targets_for(ids, self.pad_id))


class DeepSpeedTrainer(Trainer):
    """ZeRO + TP training on any number of processes (gloo on CPU, nccl on GPU)."""

    def __init__(self, cfg: Config) -> None:
        device = pick_device(cfg.train.device)  # DeviceUnavailable: one line, before any work
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        init_distributed(device.type)
        self.grid = grid = ParallelGrid(cfg.parallel.tensor_parallel)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        if grid.rank != 0:
            log.setLevel(logging.WARNING)
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self._sampler_model: Optional[nn.Module] = None
        self._stage0_applied, self._undo_scheduler = True, 0
        # The single-process construction, with the steps below swapped in.
        super().__init__(cfg, derive(cfg, grid.world_size), device, grid.rank)
        if cfg.parallel.zero_stage == 0:
            self._guard_stage0_optimizer()

    # ------------------------------------------------------------------ construction steps

    def autocast_dtype(self) -> Optional[torch.dtype]:
        return None  # DeepSpeed casts the model itself when bf16 is on

    def has_checkpoint(self) -> bool:
        return (self.ckpt_dir / store.LATEST).is_file()

    def build_model(self, weights: Optional[OpenWeights]) -> None:
        """The TP x ZeRO model (:func:`build_parallel_model`) inside ``deepspeed.initialize``."""
        import deepspeed

        cfg, grid = self.cfg, self.grid
        deepspeed.checkpointing.configure(grid, partition_activations=False)
        self.ds_config = deepspeed_config(cfg, self.derived, self.device)
        model = build_parallel_model(cfg, self.vocab.vocab_size, self.vocab.pad_id,
                                     self.vocab.bos_id, grid, self.ds_config, weights)
        # Default RNG stream: same on TP peers; TP stream: seed + 2718 + tp_rank (Megatron's).
        deepspeed.checkpointing.model_parallel_cuda_manual_seed(cfg.train.seed)
        o, max_steps = cfg.optim, cfg.train.max_steps

        def schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: lr_at(s, o, max_steps) / o.lr)

        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=LossModule(model, self.vocab.pad_id), model_parameters=param_groups(model, o.weight_decay),
            config=self.ds_config, mpu=grid, lr_scheduler=schedule)
        self.model = model

    def compile_model(self) -> None:
        """``train.compile``: DeepSpeed's own ``engine.compile`` (it knows ZeRO-3's parameter
        gathering hooks), after the same availability check as the single-process loop."""
        backend = self.cfg.train.compile_backend
        check_compile(self.device, backend)
        if self.cfg.parallel.zero_stage == 3 or self.grid.tp_size > 1:
            # Measured on configs/debug.yaml, 2 CPU ranks: ZeRO-2 compiles to one graph; ZeRO-3
            # with TP=2 to 39 (breaks at parameter gathering and TP collectives).
            log.warning("train.compile with ZeRO-3 or tensor parallelism: graphs break at ZeRO-3's "
                        "parameter gathering and the TP collectives (many small graphs); ZeRO-0/1/2 "
                        "with tensor_parallel=1 compiles the model as one graph")
        self.engine.compile(backend=backend, compile_kwargs={"dynamic": False})

    def initial_weights(self) -> Optional[OpenWeights]:
        """As in one process, but rank 0 opens first (a DeepSpeed run named by ``init_from`` is
        consolidated once, into the cache beside it), then the others read that cache."""
        if self.grid.rank == 0:
            weights = super().initial_weights()
        dist.barrier()
        if self.grid.rank != 0:
            weights = super().initial_weights()
        return weights

    def data_coordinates(self) -> tuple:
        return self.grid.dp_rank, self.grid.dp_size

    def parameter_count(self) -> int:
        """The full model's parameters (what one process and the export count): TP shards summed
        over the TP group, replicated parameters once (collective over the TP group)."""
        sharded = replicated = 0
        for p in {id(p): p for p in self.model.parameters()}.values():
            n = int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3: the TP shard's size, unpartitioned
            if getattr(p, "tensor_model_parallel", False):
                sharded += n
            else:
                replicated += n
        total = torch.tensor([float(sharded)], dtype=torch.float64, device=self.device)
        if self.grid.tp_size > 1:
            dist.all_reduce(total, group=self.grid.tp_group)
        return replicated + int(round(float(total)))

    def layout(self) -> str:
        return f" | {self.grid} | ZeRO-{self.cfg.parallel.zero_stage}"

    def continue_from_export(self, meta: Dict[str, Any]) -> None:
        """Take over the export's step, bytes seen and data position; move the LR schedule there."""
        super().continue_from_export(meta)
        self._rewind_scheduler(self.step)

    def _rewind_scheduler(self, last_epoch: int) -> None:
        scheduler = self.engine.lr_scheduler
        scheduler.last_epoch = last_epoch - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler.step()

    # ------------------------------------------------------------------ components

    def train_step(self) -> Dict[str, Any]:
        """One update: ``grad_accum_steps`` micro-batches through engine.backward/step."""
        accum = self.derived.grad_accum_steps
        lr = self.engine.get_lr()[0]
        loss_sum = 0.0
        self.engine.train()
        stage0_norm: Optional[float] = None
        for micro in range(accum):
            x = self.train_data.next_batch().to(self.device)  # (micro, T)
            loss = self.engine(x)
            if self.inject_nan_now():
                loss = loss * float("nan")
            self.engine.backward(loss)  # at the boundary this also reduces gradients over DP
            if micro == accum - 1 and self.cfg.parallel.zero_stage == 0:
                stage0_norm = self._stage0_grad_norm()
            self.engine.step()  # updates only at the accumulation boundary
            loss_sum += loss.item()
        loss = mean_over(loss_sum / accum, self.grid.dp_group, self.grid.dp_size, self.device)
        if stage0_norm is not None:
            grad_norm = stage0_norm
            applied = self._stage0_applied
        else:  # ZeRO 1-3 compute the norm and skip non-finite updates themselves
            norm = self.engine.get_global_grad_norm()
            grad_norm = float(norm) if norm is not None else float("nan")
            applied = self.engine.was_step_applied()
        applied = applied and bool(torch.isfinite(torch.tensor(loss)))
        if not all_ranks_max(0.0 if applied else 1.0, self.device) == 0.0:
            if stage0_norm is not None and not self._stage0_applied:
                self._rewind_scheduler(self._undo_scheduler)  # DeepSpeed stepped it regardless
            return {"loss": loss, "grad_norm": grad_norm, "skipped": True}
        self.step += 1
        self.bytes_seen += self.derived.global_batch_units * self.bytes_per_unit
        return {"loss": loss, "bpb": bits_per_byte(loss, self.bytes_per_unit), "lr": lr,
                "grad_norm": grad_norm}

    def _stage0_grad_norm(self) -> float:
        """Without ZeRO DeepSpeed neither reports the norm nor skips non-finite updates: compute
        the norm (TP shards summed over the TP group, replicated parameters counted once); a
        non-finite one vetoes the optimizer step (see :meth:`_guard_stage0_optimizer`)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        sharded = sum((p.grad.float().pow(2).sum() for p in params
                       if getattr(p, "tensor_model_parallel", False)),
                      torch.zeros((), device=self.device))
        replicated = sum((p.grad.float().pow(2).sum() for p in params
                          if not getattr(p, "tensor_model_parallel", False)),
                         torch.zeros((), device=self.device))
        if self.grid.tp_size > 1:
            dist.all_reduce(sharded, group=self.grid.tp_group)
        norm = float((sharded + replicated).sqrt())
        self._stage0_applied = all_ranks_max(0.0 if norm == norm and norm != float("inf")
                                             else 1.0, self.device) == 0.0
        if not self._stage0_applied:
            self._undo_scheduler = self.engine.lr_scheduler.last_epoch
        return norm

    def _guard_stage0_optimizer(self) -> None:
        """Let :meth:`_stage0_grad_norm` veto the optimizer step (DeepSpeed zeroes grads after)."""
        optimizer = self.engine.optimizer
        plain_step = optimizer.step

        def step(*args: Any, **kwargs: Any):
            if not self._stage0_applied:
                return None
            return plain_step(*args, **kwargs)

        optimizer.step = step  # type: ignore[method-assign]

    def evaluation_share(self) -> Dict[str, Any]:
        """Each data-parallel rank scores its share of the validation windows (TP peers the same
        share); the NLL sums are added over the DP group."""
        grid = self.grid

        def reduce(out: Dict[str, float]) -> Dict[str, float]:
            t = torch.tensor([out["nats"], float(out["positions"])], dtype=torch.float64,
                             device=self.device)
            dist.all_reduce(t, group=grid.dp_group)
            return {"nats": float(t[0]), "positions": int(round(float(t[1])))}

        return {"share": (grid.dp_rank, grid.dp_size), "reduce": reduce}

    def agree_stop(self, signalled: bool, timed_out: bool) -> Optional[str]:
        """One answer on every rank: "signal" if any rank got SIGTERM/SIGUSR1, else "max_minutes"
        if any rank's clock passed ``train.max_minutes``, else None."""
        flags = torch.tensor([float(signalled), float(timed_out)],
                             dtype=torch.float64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] > 0:
            return "signal"
        return "max_minutes" if flags[1] > 0 else None

    def sample(self) -> Optional[str]:
        """Generate from a plain single-process copy on rank 0 (decoding calls submodules outside
        ``forward``, which ZeRO-3's gather hooks do not cover, and needs no collectives)."""
        if not self.cfg.train.sample_bytes:
            return None
        weights = gather_full_state(self.model, self.grid, self.cfg.parallel.zero_stage == 3,
                                    keep=self.is_main)
        if not self.is_main:
            return None
        if self._sampler_model is None:
            self._sampler_model = build_model(self.cfg.model, self.vocab.vocab_size,
                                              self.vocab.pad_id, self.vocab.bos_id)
        plain = self._sampler_model
        plain.load_state_dict(weights)
        plain.to(self.device)
        distributed, self.model = self.model, plain
        try:
            return super().sample()
        finally:
            self.model = distributed

    def save(self) -> Path:
        """DeepSpeed checkpoint + per-rank RNG/data state; ``latest`` moves after a barrier."""
        tag = store.step_name(self.step)
        client = {"step": self.step, "bytes_seen": self.bytes_seen,
                  "skipped_total": self.skipped_total, "world_size": self.world_size,
                  "tensor_parallel": self.grid.tp_size, "config": as_dict(self.cfg),
                  # What offline consolidation needs to undo TP (pretrain.checkpoints.consolidate).
                  "tp_partition": tp_partition_dims(self.model), "param_prefix": "model.",
                  "param_group_names": [list(names) for names in decay_split(self.model)]}
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=client,
                                    save_latest=False)
        rank_state = {"rng": rng_state(), "tp_rng": rng_tracker().get_states(),
                      "data": self.train_data.state_dict()}
        target = self.ckpt_dir / tag / f"rank_{self.grid.rank:05d}.pt"
        tmp = target.with_suffix(".pt.tmp")
        torch.save(rank_state, tmp)
        os.replace(tmp, target)
        dist.barrier()
        if self.is_main:
            store.point_latest(self.ckpt_dir, tag)
            store.prune(self.ckpt_dir, self.cfg.checkpoint.keep_last, tag)
            log.info("saved checkpoint %s", self.ckpt_dir / tag)
        dist.barrier()
        return self.ckpt_dir / tag

    def _agreed_resume_tag(self) -> Optional[str]:
        """The checkpoint tag every rank sees in ``checkpoints/latest`` (None: no checkpoint).

        Ranks that disagree (one sees a checkpoint, another none or another one: a run directory
        that is not on a file system every node shares) stop the run with one message naming
        the ranks, hosts and paths, instead of resuming some ranks and starting others fresh."""
        pointer = self.ckpt_dir / store.LATEST
        tag = pointer.read_text().strip() if pointer.is_file() else None
        views: List[Any] = [None] * self.world_size
        dist.all_gather_object(views, (tag, socket.gethostname(), str(pointer.resolve())))
        if len({v[0] for v in views}) > 1:
            seen = "; ".join(f"rank {r} on {host}: {path} -> {t or 'no checkpoint'}"
                             for r, (t, host, path) in enumerate(views))
            raise ResumeError(f"ranks disagree on what to resume from ({seen}); the run directory "
                              "must be on a file system that every node shares")
        return tag

    def maybe_resume(self) -> None:
        if not self.cfg.checkpoint.resume:
            return
        tag = self._agreed_resume_tag()
        if tag is None:
            return
        rank_file = self.ckpt_dir / tag / f"rank_{self.grid.rank:05d}.pt"
        writers = store.rank_file_count(self.ckpt_dir / tag)
        bad = writers != self.world_size or not rank_file.is_file()
        if all_ranks_max(float(bad), self.device) > 0:  # agreed by all
            raise ResumeError(store.resume_layout_error(self.ckpt_dir / tag, writers, self.world_size))
        self._check_architecture(self.ckpt_dir / tag)
        path, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag,
                                                   load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.ckpt_dir / tag}")
        if client.get("tensor_parallel") != self.grid.tp_size:
            raise ResumeError(f"checkpoint {tag} has tensor_parallel={client.get('tensor_parallel')}"
                              f", this run {self.grid.tp_size}; export and use train.init_from")
        self.step, self.bytes_seen = client["step"], client["bytes_seen"]
        self.skipped_total = client.get("skipped_total", 0)
        state = torch.load(rank_file, map_location="cpu", weights_only=False)
        set_rng_state(state["rng"])
        rng_tracker().set_states(state["tp_rng"])
        self.train_data.load_state_dict(state["data"])
        log.info("resumed from %s at step %d", self.ckpt_dir / tag, self.step)

    def _check_architecture(self, ckpt: Path) -> None:
        """A checkpoint of another model shape stops the run with one line naming the settings
        (read from the client state; every rank reads the same file, so all agree)."""
        files = sorted(ckpt.glob("*mp_rank_00_model_states.pt"))
        if not files:
            return
        client = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)
        diff = architecture_difference((client.get("config") or {}).get("model"), self.cfg)
        if diff:
            raise ResumeError(f"cannot resume: checkpoint {ckpt} does not fit this model: "
                              + "; ".join(diff))

    def full_state(self) -> Dict[str, torch.Tensor]:
        """Full fp32 weights (collective: every rank must call it)."""
        return gather_full_state(self.model, self.grid, self.cfg.parallel.zero_stage == 3)


def run_distributed(cfg: Config) -> Dict[str, Any]:
    """Build the engine, train, and tear the process group down."""
    trainer = DeepSpeedTrainer(cfg)
    result = trainer.train()
    # Leave together on success only: after an exception on one rank its peers may sit in another
    # collective, and a barrier here would pair with it (or hang) instead of letting torchrun end
    # the job.
    dist.barrier()
    return result

