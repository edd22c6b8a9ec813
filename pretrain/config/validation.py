"""Checks of config values against each other; each failure names the first bad key."""

from __future__ import annotations

from pathlib import Path

from data_prep.remote import is_remote
from pretrain.config.schema import INIT_RECIPES, Config, ConfigError


def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"config error: {key}: {problem}")


def validate(cfg: Config) -> None:
    """Check values against each other; raise :class:`ConfigError` naming the first bad key.

    The ``slurm`` section is the launcher's (``launch.slurm_config.validate_slurm``)."""
    _validate_model(cfg)
    _validate_data(cfg)
    _validate_optim(cfg)
    _validate_train(cfg)
    _validate_parallel(cfg)
    _check(cfg.logging.log_interval > 0, "logging.log_interval",
           f"must be positive, got {cfg.logging.log_interval}")
    c = cfg.checkpoint
    _check(c.interval >= 0, "checkpoint.interval", f"must be >= 0, got {c.interval}")
    _check(c.keep_last > 0, "checkpoint.keep_last", f"must be positive, got {c.keep_last}")
    _check(bool(cfg.run_dir), "run_dir", "must not be empty")
    _check(not Path(cfg.run_dir).exists() or Path(cfg.run_dir).is_dir(), "run_dir",
           f"{cfg.run_dir} exists and is not a directory")


def _validate_model(cfg: Config) -> None:
    m = cfg.model
    _check(m.arch in ("megabyte", "transformer"), "model.arch",
           f"must be 'megabyte' or 'transformer', got {m.arch!r}")
    _check(m.vocab in ("bytes", "sentencepiece"), "model.vocab",
           f"must be 'bytes' or 'sentencepiece', got {m.vocab!r}")
    if m.vocab == "sentencepiece":
        _check(m.arch == "transformer", "model.vocab",
               "sentencepiece vocabularies are for arch=transformer (MEGABYTE models bytes)")
        _check(bool(m.tokenizer), "model.tokenizer", "required when model.vocab=sentencepiece")
        _check(Path(str(m.tokenizer)).is_file(), "model.tokenizer",
               f"file not found: {m.tokenizer}")
    _check(m.seq_len > 0, "model.seq_len", f"must be positive, got {m.seq_len}")
    stacks = [("model.global_model", m.global_model)]
    if m.arch == "megabyte":
        stacks.append(("model.local_model", m.local_model))
        _check(m.patch_size > 0, "model.patch_size", f"must be positive, got {m.patch_size}")
        _check(m.seq_len % m.patch_size == 0, "model.seq_len",
               f"{m.seq_len} is not a multiple of model.patch_size={m.patch_size}")
        _check(m.global_model.dim % m.patch_size == 0, "model.global_model.dim",
               f"{m.global_model.dim} is not a multiple of model.patch_size={m.patch_size} "
               "(global width = patch_size * D_G)")
        _check(0 <= m.cross_patch_window <= m.patch_size, "model.cross_patch_window",
               f"must be in [0, patch_size={m.patch_size}], got {m.cross_patch_window}")
        if m.cross_patch_window:
            head_dim = m.local_model.dim // max(m.local_model.heads, 1)
            _check(head_dim % 2 == 0, "model.local_model.heads",
                   "rotary positions (cross_patch_window > 0) need an even local head size")
        _check(all(k > 0 for k in m.conv_kernel_sizes), "model.conv_kernel_sizes",
               f"kernel sizes must be positive, got {list(m.conv_kernel_sizes)}")
        _check(not m.conv_encoder or len(m.conv_kernel_sizes) > 0, "model.conv_kernel_sizes",
               "model.conv_encoder=true needs at least one kernel size, got []")
    for key, s in stacks:
        _check(s.dim > 0, f"{key}.dim", f"must be positive, got {s.dim}")
        _check(s.layers > 0, f"{key}.layers", f"must be positive, got {s.layers}")
        _check(s.heads > 0, f"{key}.heads", f"must be positive, got {s.heads}")
        _check(s.dim % s.heads == 0, f"{key}.heads",
               f"{s.heads} heads do not divide {key}.dim={s.dim}")
    _check(m.attention_window >= 0, "model.attention_window",
           f"must be >= 0 (0 = full attention), got {m.attention_window}")
    _check(m.attention_window == 0 or m.arch == "transformer", "model.attention_window",
           f"sliding-window attention is for model.arch=transformer, not {m.arch!r} (set it to 0)")
    _check(m.mlp_ratio > 0, "model.mlp_ratio", f"must be positive, got {m.mlp_ratio}")
    _check(m.activation in ("relu", "gelu"), "model.activation",
           f"must be 'relu' or 'gelu', got {m.activation!r}")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    _check(m.init_std > 0, "model.init_std", f"must be positive, got {m.init_std}")
    _check(m.init in INIT_RECIPES, "model.init",
           f"must be one of {', '.join(INIT_RECIPES)}, got {m.init!r}")


def _validate_data(cfg: Config) -> None:
    d = cfg.data
    _check(d.source in ("stdlib", "files", "shards"), "data.source",
           f"must be 'stdlib', 'files' or 'shards', got {d.source!r}")
    if d.source == "files":
        _check(bool(d.path), "data.path", "required when data.source=files")
        _check(Path(str(d.path)).is_dir(), "data.path", f"not a directory: {d.path}")
    # Datasets named with another source would be ignored: the run would train on something else.
    _check(d.source == "shards" or not d.datasets, "data.datasets",
           f"set, but data.source={d.source} does not read them: add data.source=shards (or "
           "clear data.datasets)")
    if d.source == "shards":
        _check(len(d.datasets) > 0, "data.datasets", "required when data.source=shards "
               "(directories made by python -m data_prep.bytes)")
        for i, ds in enumerate(d.datasets):
            # A URL or pipe: command is checked when the loader reads its manifest.
            _check(is_remote(str(ds)) or Path(str(ds), "manifest.json").is_file(), f"data.datasets[{i}]",
                   f"no manifest.json in {ds} (prepare it with python -m data_prep.bytes)")
        _check(not d.weights or len(d.weights) == len(d.datasets), "data.weights",
               f"{len(d.weights)} weights for {len(d.datasets)} datasets")
        _check(all(w > 0 for w in d.weights), "data.weights", f"must be positive, got {list(d.weights)}")
    _check(d.lanes >= 0, "data.lanes", f"must be >= 0, got {d.lanes}")
    _check(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    _check(d.max_bytes > 0, "data.max_bytes", f"must be positive, got {d.max_bytes}")
    _check(0.0 < d.val_fraction < 1.0, "data.val_fraction",
           f"must be in (0, 1), got {d.val_fraction}")
    _check(d.val_bytes > 0, "data.val_bytes", f"must be positive, got {d.val_bytes}")


def _validate_optim(cfg: Config) -> None:
    o = cfg.optim
    _check(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           f"must be two numbers in [0, 1), got {list(o.betas)}")
    _check(o.eps > 0, "optim.eps", f"must be positive, got {o.eps}")
    _check(o.decay_power >= 0, "optim.decay_power",
           f"must be >= 0 (0 = constant LR after warmup), got {o.decay_power}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {o.grad_clip}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _check(0 <= o.min_lr <= o.lr, "optim.min_lr", f"must be in [0, optim.lr], got {o.min_lr}")


def _validate_train(cfg: Config) -> None:
    t = cfg.train
    _check(t.max_steps > 0, "train.max_steps", f"must be positive, got {t.max_steps}")
    _check(t.max_minutes >= 0, "train.max_minutes", f"must be >= 0, got {t.max_minutes}")
    _check(t.micro_batch_size > 0, "train.micro_batch_size",
           f"must be positive, got {t.micro_batch_size}")
    _check(t.grad_accum_steps > 0, "train.grad_accum_steps",
           f"must be positive, got {t.grad_accum_steps}")
    _check(t.global_batch_bytes >= 0, "train.global_batch_bytes",
           f"must be >= 0, got {t.global_batch_bytes}")
    _check(t.device in ("auto", "cpu", "cuda"), "train.device",
           f"must be 'auto', 'cpu' or 'cuda', got {t.device!r}")
    _check(t.dtype in ("fp32", "bf16"), "train.dtype", f"must be 'fp32' or 'bf16', got {t.dtype!r}")
    _check(t.eval_interval >= 0, "train.eval_interval", f"must be >= 0, got {t.eval_interval}")
    _check(t.sample_bytes >= 0, "train.sample_bytes", f"must be >= 0, got {t.sample_bytes}")
    _check(t.max_skipped_in_a_row >= 0, "train.max_skipped_in_a_row",
           f"must be >= 0, got {t.max_skipped_in_a_row}")
    if t.compile:
        backends = compile_backends()
        _check(t.compile_backend in backends, "train.compile_backend",
               f"unknown torch.compile backend {t.compile_backend!r}: use inductor or aot_eager "
               "(or a name in torch._dynamo.list_backends(exclude_tags=()))")
    if t.init_from:
        _check(Path(t.init_from).exists(), "train.init_from",
               f"not found: {t.init_from} (an export file, a run directory or a checkpoint)")


DOCUMENTED_BACKENDS = ("inductor", "aot_eager")
"""The ``train.compile_backend`` values the schema documents (``aot_eager`` is one that
``torch._dynamo.list_backends()`` leaves out by default, as a debugging backend)."""


def compile_backends() -> list:
    """Every torch.compile backend name this torch knows (debugging ones included), documented
    ones first. Imports ``torch._dynamo``: called only when ``train.compile`` is on."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    return list(DOCUMENTED_BACKENDS) + sorted(b for b in known if b not in DOCUMENTED_BACKENDS)


def _validate_parallel(cfg: Config) -> None:
    p, m = cfg.parallel, cfg.model
    _check(p.tensor_parallel > 0, "parallel.tensor_parallel",
           f"must be positive, got {p.tensor_parallel}")
    _check(m.global_model.heads % p.tensor_parallel == 0, "parallel.tensor_parallel",
           f"{p.tensor_parallel} does not divide model.global_model.heads={m.global_model.heads}")
    _check(p.zero_stage in (0, 1, 2, 3), "parallel.zero_stage",
           f"must be 0, 1, 2 or 3, got {p.zero_stage}")
    _check(p.engine in ("auto", "simple", "deepspeed"), "parallel.engine",
           f"must be 'auto', 'simple' or 'deepspeed', got {p.engine!r}")
    _check(p.zero3_persistence_threshold >= 0, "parallel.zero3_persistence_threshold",
           f"must be >= 0, got {p.zero3_persistence_threshold}")

