"""Derived values (data-parallel size, gradient accumulation, global batch), computed once by
:func:`derive` and asserted there, never recomputed elsewhere."""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.config.schema import Config, ConfigError


@dataclass(frozen=True)
class Derived:
    """Values computed once from the config and the world size."""

    world_size: int
    data_parallel: int
    tensor_parallel: int
    micro_batch_size: int
    grad_accum_steps: int
    seq_len: int
    global_batch_sequences: int
    global_batch_units: int
    """Tokens per update: bytes for byte models, subword tokens for the subword baseline."""


def slurm_procs_per_node(cfg: Config) -> int:
    """Training processes per node of a Slurm job (``slurm.procs_per_node``, else one per GPU,
    else one)."""
    s = cfg.slurm
    return s.procs_per_node or s.gpus_per_node or 1


def derive(cfg: Config, world_size: int = 1) -> Derived:
    """Compute the batch algebra once: ``global = micro * accum * dp`` (sequences, then units)."""
    tp = cfg.parallel.tensor_parallel
    if world_size % tp:
        raise ConfigError(f"config error: parallel.tensor_parallel: {tp} does not divide the "
                          f"world size {world_size}")
    dp = world_size // tp
    t = cfg.train
    per_step = t.micro_batch_size * dp * cfg.model.seq_len
    accum = t.grad_accum_steps
    if t.global_batch_bytes:
        if t.global_batch_bytes % per_step:
            raise ConfigError(
                f"config error: train.global_batch_bytes: {t.global_batch_bytes} is not a multiple "
                f"of micro_batch_size * data_parallel * seq_len = {per_step}")
        accum = t.global_batch_bytes // per_step
    sequences = t.micro_batch_size * accum * dp
    units = sequences * cfg.model.seq_len
    assert units == per_step * accum, (units, per_step, accum)
    if t.global_batch_bytes:
        assert units == t.global_batch_bytes
    return Derived(world_size=world_size, data_parallel=dp, tensor_parallel=tp,
                   micro_batch_size=t.micro_batch_size, grad_accum_steps=accum,
                   seq_len=cfg.model.seq_len, global_batch_sequences=sequences,
                   global_batch_units=units)

