"""One validated config tree for every command.

Loading follows ``merge(structured(Config), yaml, dotlist overrides)`` so omegaconf rejects
unknown keys and wrong types; :func:`validate` then checks the values against each other.
Every failure is a :class:`ConfigError` whose message is one line naming the key.

Derived values (data-parallel size, gradient accumulation, global batch in bytes) are
computed once by :func:`derive` and asserted there, never recomputed elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "quickstart.yaml"


class ConfigError(ValueError):
    """A config problem, reported as one line that names the offending key."""


# --------------------------------------------------------------------------------------
# Schema. Every field has a docstring-style comment right under it.
# --------------------------------------------------------------------------------------


@dataclass
class StackConfig:
    """One transformer stack (the global model, the local model, or a baseline's only stack)."""

    dim: int = 256
    """Model width D. For MEGABYTE's global model this is P * D_G (the patch vector width)."""
    layers: int = 2
    """Number of transformer blocks."""
    heads: int = 4
    """Attention heads; must divide ``dim``."""


@dataclass
class ModelConfig:
    """Architecture. ``arch=megabyte`` uses both stacks; ``arch=transformer`` only ``global_model``."""

    arch: str = "megabyte"
    """``megabyte`` (multiscale byte model) or ``transformer`` (the baselines)."""
    vocab: str = "bytes"
    """``bytes`` (256 byte values + pad/bos/eos) or ``sentencepiece`` (subword baseline)."""
    tokenizer: Optional[str] = None
    """Path of a SentencePiece ``.model`` file; required when ``vocab=sentencepiece``."""
    seq_len: int = 512
    """Context length T: bytes for byte models, tokens for the subword baseline."""
    patch_size: int = 8
    """Patch size P (MEGABYTE only); must divide ``seq_len``."""
    global_model: StackConfig = field(default_factory=lambda: StackConfig(256, 2, 4))
    """MEGABYTE's global model (width P*D_G), or the baseline Transformer's stack."""
    local_model: StackConfig = field(default_factory=lambda: StackConfig(128, 2, 4))
    """MEGABYTE's local model (width D_L). Ignored by ``arch=transformer``."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of the model width (the paper's FLOP formula assumes 4)."""
    activation: str = "relu"
    """MLP activation: ``relu`` (the paper) or ``gelu``."""
    dropout: float = 0.1
    """Dropout on attention weights and residual branches (never on embeddings), as in the paper."""
    init_std: float = 0.006
    """Std of the truncated-normal init (truncated at +-2 std); the paper reports it matters."""
    cross_patch_window: int = 0
    """Paper option (a): local attention also sees the last r positions of the previous patch,
    with rotary positions. 0 disables it."""
    conv_encoder: bool = False
    """Paper option (b): causal convolutions over the byte embeddings before patching."""
    conv_kernel_sizes: List[int] = field(default_factory=lambda: [3, 5, 7])
    """Filter sizes of the causal patch-encoder convolutions (the paper uses 3, 5, 7)."""


@dataclass
class DataConfig:
    """Where training and validation bytes come from."""

    source: str = "stdlib"
    """``stdlib``: Python's standard library source on this machine (always present);
    ``files``: every file under ``path`` (recursively), both read into memory;
    ``shards``: prepared datasets (``datasets``), streamed by the deterministic shard loader."""
    path: Optional[str] = None
    """Root directory for ``source=files``; defaults to the stdlib directory for ``stdlib``."""
    max_bytes: int = 16_000_000
    """Cap on corpus bytes read (files taken in sorted order until the cap); stdlib/files only."""
    val_fraction: float = 0.05
    """Fraction of documents held out for validation (chosen by a hash of the file path);
    stdlib/files only (prepared datasets were split by ``python -m data_prep.bytes``)."""
    val_bytes: int = 65_536
    """How many held-out bytes the periodic validation scores."""
    datasets: List[str] = field(default_factory=list)
    """``source=shards``: dataset directories made by ``python -m data_prep.bytes`` (byte models) or
    ``python -m data_prep.tokenizer --tokens-output`` (subword baseline), mixed by ``weights``."""
    weights: List[float] = field(default_factory=list)
    """``source=shards``: sampling weight of each dataset (share of sequences); empty = equal."""
    lanes: int = 0
    """``source=shards``: parallel streams the global sequence order is built from; 0 = DP size x
    max(num_workers, 1) at the first start, then kept in the loader state so a resume at another
    DP size continues the same global stream. Reading is cheapest when DP x workers divides it."""
    num_workers: int = 0
    """``source=shards``: DataLoader worker processes per rank (0 = read in the training process);
    batches do not depend on it."""
    skip_bad_shards: bool = False
    """``source=shards``: on a corrupt or truncated shard, warn, count and replace the rest of the
    shard by pad ids instead of failing (the failure names the shard and sample)."""


@dataclass
class OptimConfig:
    """AdamW and the LR schedule; defaults are the paper's recipe (A.1)."""

    lr: float = 3e-4
    """Peak learning rate (paper: 2e-4 to 3e-4)."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam betas (paper: 0.9, 0.98)."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (not on norms, biases or embeddings)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    warmup_steps: int = 500
    """Linear warmup updates (paper: 500)."""
    decay_power: float = 1.0
    """Polynomial decay exponent after warmup, down to ``min_lr`` at ``train.max_steps``."""
    min_lr: float = 0.0
    """Final learning rate."""


@dataclass
class TrainConfig:
    """The training loop."""

    max_steps: int = 1000
    """Optimizer updates to run."""
    max_minutes: float = 0.0
    """Stop (with a checkpoint and a final evaluation) after this wall time; 0 = no limit."""
    micro_batch_size: int = 8
    """Sequences per rank per forward/backward."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer update (derived when ``global_batch_bytes`` is set)."""
    global_batch_bytes: int = 0
    """If > 0: bytes per update across all ranks; ``grad_accum_steps`` is derived from it."""
    seed: int = 1234
    """Seed for init, data order and dropout."""
    device: str = "auto"
    """``auto`` (cuda if available), ``cpu`` or ``cuda``."""
    dtype: str = "fp32"
    """``fp32`` or ``bf16`` (autocast)."""
    eval_interval: int = 200
    """Validate every this many updates (and at the end); 0 = only at the end."""
    sample_bytes: int = 0
    """If > 0, generate this many bytes at every evaluation and log them."""
    max_skipped_in_a_row: int = 5
    """Abort (exit code 3, last good checkpoint kept) after this many non-finite steps in a row."""
    init_from: Optional[str] = None
    """Start from the weights of a ``pretrain.export`` safetensors file, at any TP/DP layout
    (the optimizer starts fresh). Ignored when resuming from a checkpoint."""
    init_continue: bool = False
    """With ``init_from``: also continue the export's step, LR schedule, bytes seen and data
    position (a reshard to another layout) instead of starting at step 0 (a new run)."""


@dataclass
class ParallelConfig:
    """Distributed layout (used by the DeepSpeed engine; single-process runs need TP=1)."""

    engine: str = "auto"
    """``simple`` (single-process PyTorch loop), ``deepspeed`` (ZeRO + TP engine, any number of
    processes) or ``auto`` (deepspeed when started by torchrun / a launcher, else simple)."""
    tensor_parallel: int = 1
    """TP degree of the global model; must divide its heads and MLP width."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage 0-3."""
    zero3_persistence_threshold: int = 100_000
    """ZeRO-3 keeps parameters smaller than this many elements unpartitioned (DeepSpeed's default;
    0 partitions everything)."""
    checkpoint_global: bool = False
    """Activation checkpointing of the global model's blocks."""
    checkpoint_local: bool = False
    """Activation checkpointing of the local model's blocks."""


@dataclass
class LoggingConfig:
    """Console and TensorBoard logging."""

    log_interval: int = 10
    """Log training metrics every this many updates."""
    tensorboard: bool = True
    """Write TensorBoard event files into the run directory."""
    progress_bar: bool = True
    """Show a tqdm progress bar on stderr."""


@dataclass
class CheckpointConfig:
    """Checkpointing and resumption."""

    interval: int = 500
    """Save every this many updates (and at the end); 0 = only at the end."""
    keep_last: int = 2
    """How many checkpoints to keep."""
    resume: bool = True
    """Resume automatically from ``<run_dir>/checkpoints/latest`` when it exists."""


@dataclass
class SlurmConfig:
    """Cluster launch by ``python -m launch.slurm`` (training itself ignores this section).

    Every value reaches the job script validated or shell-quoted (see ``launch/slurm.py``).
    """

    nodes: int = 1
    """Nodes; each runs one task (torchrun) with ``procs_per_node`` training processes."""
    gpus_per_node: int = 0
    """GPUs per node (``--gpus-per-node``); 0 = a CPU job."""
    procs_per_node: int = 0
    """Training processes per node; 0 = ``gpus_per_node`` (1 for a CPU job)."""
    cpus_per_task: int = 0
    """CPUs of each node's task, shared by its processes (``--cpus-per-task``); 0 = site default."""
    mem: str = ""
    """Memory per node (``--mem``), e.g. ``480G``; empty = site default, ``0`` = all of it."""
    time: str = ""
    """Time limit (``--time``): ``minutes``, ``HH:MM:SS`` or ``D-HH:MM:SS``; empty = partition
    default."""
    partition: str = ""
    """Partition (``--partition``); empty = the cluster's default."""
    account: str = ""
    """Account to charge (``--account``); empty = your default."""
    qos: str = ""
    """Quality of service (``--qos``); empty = the default."""
    job_name: str = "megabyte"
    """Job name (``--job-name``); any printable text (it is quoted), no newlines."""
    output_dir: str = ""
    """Directory of the job log ``slurm-<job id>.out`` (appended to across requeues); empty =
    ``<run_dir>/launch``."""
    signal_seconds: int = 300
    """Ask for SIGUSR1 this many seconds before the time limit (``--signal=USR1@N``): training
    checkpoints and the job requeues itself. Leave time for one step plus a checkpoint (Slurm
    may signal up to a minute early); 0 = no warning signal."""
    max_requeues: int = 20
    """Most self-requeues of one job after a stop signal; the job then ends (exit 75) and a
    resubmission continues from the checkpoint."""
    env: Dict[str, str] = field(default_factory=dict)
    """Environment variables exported in the job script, e.g. ``{NCCL_DEBUG: WARN}``."""
    modules: List[str] = field(default_factory=list)
    """Environment modules to ``module load`` before training (the script then runs as a login
    shell so that ``module`` exists)."""
    activate: str = ""
    """Script to ``source`` before training, e.g. ``/shared/venv/bin/activate``; empty = none."""
    python: str = ""
    """Python on the compute nodes; empty = the interpreter running the launcher (``python``
    inside a container)."""
    container_image: str = ""
    """Run each node's task in this container (pyxis/enroot ``srun --container-image``)."""
    container_mounts: List[str] = field(default_factory=list)
    """``SRC:DST`` mounts for the container (``--container-mounts``); the repository and run
    directory must be visible at the same paths inside."""
    extra_directives: List[str] = field(default_factory=list)
    """More ``#SBATCH`` options, each ``--name`` or ``--name=value`` (e.g. ``--exclusive``,
    ``--constraint=h100``); options this section sets are refused."""
    master_port: int = 0
    """Rendezvous port on the first node; 0 = ``15000 + job id % 15000`` (differs between jobs)."""
    allow_loopback_master: bool = False
    """Let a multi-node job rendezvous on a loopback address. Only for test clusters whose nodes
    all run on one host (``scripts/slurm_cluster.sh``); on a real cluster it means broken name
    resolution, and the job fails loudly instead of hanging."""


@dataclass
class Config:
    """The whole config tree."""

    run_dir: str = "runs/quickstart"
    """Output directory: resolved config, checkpoints, TensorBoard events, results."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _omegaconf_error(err: OmegaConfBaseException, origin: str) -> ConfigError:
    """Turn an omegaconf exception into one line naming the key."""
    key = getattr(err, "full_key", None) or ""
    msg = str(getattr(err, "msg", None) or err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return ConfigError(f"config error ({origin}): {key}: unknown key")
    if "Value '" in msg or "could not be converted" in msg or "Invalid type" in msg:
        value = msg.split("Value '", 1)[1].split("'", 1)[0] if "Value '" in msg else None
        want = ""
        if " to " in msg:
            want = " (expected " + msg.rsplit(" to ", 1)[1].strip().rstrip(".") + ")"
        shown = f" {value!r}" if value is not None else ""
        return ConfigError(f"config error ({origin}): {key}: wrong type{shown}{want}")
    return ConfigError(f"config error ({origin}): {key or '<root>'}: {msg}")


def load_config(path: Optional[os.PathLike | str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (default: the quick-start preset), apply ``key=value`` overrides, validate.

    Raises :class:`ConfigError` with a one-line message on any problem.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"config error: cannot read {path}: {err.strerror or err}") from None
    try:
        from_file = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except Exception as err:  # yaml parse errors come in several types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"config error: {path} is not valid YAML: {first}") from None
    if not isinstance(from_file, DictConfig):
        raise ConfigError(f"config error: {path} must hold a mapping at the top level")
    return _build(from_file, str(path), overrides)


def config_from_dict(values: dict, overrides: Sequence[str] = (), origin: str = "saved config"
                     ) -> Config:
    """Validate a plain dict (e.g. the config stored in a checkpoint), with overrides."""
    return _build(OmegaConf.create(values), origin, overrides)


def _build(from_file: DictConfig, origin: str, overrides: Sequence[str]) -> Config:
    schema = OmegaConf.structured(Config)
    path = origin
    try:
        merged = OmegaConf.merge(schema, from_file)
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err, str(path)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error: override {item!r} is not of the form key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _omegaconf_error(err, f"override {item!r}") from None
        except Exception as err:  # YAML errors in the value (e.g. a NUL byte, a bad flow list)
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"config error: override {item!r} is not valid YAML: {first}") from None
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err, str(path)) from None
    validate(cfg)
    return cfg


def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"config error: {key}: {problem}")


def validate(cfg: Config) -> None:
    """Check values against each other; raise :class:`ConfigError` naming the first bad key."""
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
    for key, s in stacks:
        _check(s.dim > 0, f"{key}.dim", f"must be positive, got {s.dim}")
        _check(s.layers > 0, f"{key}.layers", f"must be positive, got {s.layers}")
        _check(s.heads > 0, f"{key}.heads", f"must be positive, got {s.heads}")
        _check(s.dim % s.heads == 0, f"{key}.heads",
               f"{s.heads} heads do not divide {key}.dim={s.dim}")
    _check(m.mlp_ratio > 0, "model.mlp_ratio", f"must be positive, got {m.mlp_ratio}")
    _check(m.activation in ("relu", "gelu"), "model.activation",
           f"must be 'relu' or 'gelu', got {m.activation!r}")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    _check(m.init_std > 0, "model.init_std", f"must be positive, got {m.init_std}")

    d = cfg.data
    _check(d.source in ("stdlib", "files", "shards"), "data.source",
           f"must be 'stdlib', 'files' or 'shards', got {d.source!r}")
    if d.source == "files":
        _check(bool(d.path), "data.path", "required when data.source=files")
        _check(Path(str(d.path)).is_dir(), "data.path", f"not a directory: {d.path}")
    if d.source == "shards":
        _check(len(d.datasets) > 0, "data.datasets", "required when data.source=shards "
               "(directories made by python -m data_prep.bytes)")
        for i, ds in enumerate(d.datasets):
            _check(Path(str(ds), "manifest.json").is_file(), f"data.datasets[{i}]",
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

    o = cfg.optim
    _check(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           f"must be two numbers in [0, 1), got {list(o.betas)}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {o.grad_clip}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _check(0 <= o.min_lr <= o.lr, "optim.min_lr", f"must be in [0, optim.lr], got {o.min_lr}")

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

    p = cfg.parallel
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
    _check(t.max_skipped_in_a_row >= 0, "train.max_skipped_in_a_row",
           f"must be >= 0, got {t.max_skipped_in_a_row}")
    if t.init_from:
        _check(Path(t.init_from).is_file(), "train.init_from", f"file not found: {t.init_from}")

    _check(cfg.logging.log_interval > 0, "logging.log_interval",
           f"must be positive, got {cfg.logging.log_interval}")
    c = cfg.checkpoint
    _check(c.interval >= 0, "checkpoint.interval", f"must be >= 0, got {c.interval}")
    _check(c.keep_last > 0, "checkpoint.keep_last", f"must be positive, got {c.keep_last}")
    _check(bool(cfg.run_dir), "run_dir", "must not be empty")
    validate_slurm(cfg)


# Options that ``python -m launch.slurm`` writes itself; ``slurm.extra_directives`` may not repeat them.
SLURM_OWNED_OPTIONS = frozenset({
    "nodes", "ntasks", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "mem", "time",
    "partition", "account", "qos", "job-name", "output", "error", "open-mode", "signal",
    "requeue", "no-requeue", "array", "chdir", "dependency"})
_SLURM_NAME = re.compile(r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*")
_SLURM_TIME = re.compile(r"(\d+-\d{1,2}(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE)")
_SLURM_DIRECTIVE = re.compile(r"--([a-z][a-z0-9-]*)(=.+)?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE = re.compile(r"[A-Za-z0-9_.+/@:=-]+")


def _printable(text: str) -> bool:
    """No control characters (a newline would end an ``#SBATCH`` line or a comment)."""
    return not any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def slurm_time_seconds(text: str) -> Optional[int]:
    """Seconds in a Slurm time limit (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``)."""
    if not text or text in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        parts += [0] * (3 - len(parts))  # D-H, D-H:M, D-H:M:S
        return int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    if len(parts) == 1:
        return parts[0] * 60  # minutes
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]  # minutes:seconds
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def validate_slurm(cfg: Config) -> None:
    """Check the ``slurm`` section: values that reach ``#SBATCH`` lines are validated, the rest
    is shell-quoted by the launcher; nothing may contain a newline or other control character."""
    s = cfg.slurm
    _check(s.nodes > 0, "slurm.nodes", f"must be positive, got {s.nodes}")
    _check(s.gpus_per_node >= 0, "slurm.gpus_per_node", f"must be >= 0, got {s.gpus_per_node}")
    _check(s.procs_per_node >= 0, "slurm.procs_per_node", f"must be >= 0, got {s.procs_per_node}")
    if s.gpus_per_node and s.procs_per_node:
        _check(s.procs_per_node <= s.gpus_per_node, "slurm.procs_per_node",
               f"{s.procs_per_node} processes for {s.gpus_per_node} GPUs per node")
    _check(s.cpus_per_task >= 0, "slurm.cpus_per_task", f"must be >= 0, got {s.cpus_per_task}")
    _check(not s.mem or re.fullmatch(r"\d+[KMGT]?", s.mem) is not None, "slurm.mem",
           f"must be a size like 480G or 0, got {s.mem!r}")
    _check(not s.time or _SLURM_TIME.fullmatch(s.time) is not None, "slurm.time",
           f"must be minutes, HH:MM:SS or D-HH:MM:SS, got {s.time!r}")
    for key in ("partition", "account", "qos"):
        value = getattr(s, key)
        _check(not value or _SLURM_NAME.fullmatch(value) is not None, f"slurm.{key}",
               f"must be a name (letters, digits, _ . + -; comma-separated), got {value!r}")
    _check(bool(s.job_name) and len(s.job_name) <= 200 and _printable(s.job_name), "slurm.job_name",
           f"must be 1-200 printable characters without newlines, got {s.job_name!r}")
    for key in ("output_dir", "activate", "python", "container_image"):
        value = getattr(s, key)
        _check(_printable(value), f"slurm.{key}", f"must not contain newlines or control "
               f"characters, got {value!r}")
    _check("\\" not in s.output_dir, "slurm.output_dir",
           "must not contain a backslash (sbatch reads it as an escape)")
    _check(0 <= s.signal_seconds <= 65535, "slurm.signal_seconds",
           f"must be in [0, 65535], got {s.signal_seconds}")
    limit = slurm_time_seconds(s.time)
    if limit is not None and s.signal_seconds:
        _check(s.signal_seconds < limit, "slurm.signal_seconds",
               f"{s.signal_seconds} s is not shorter than slurm.time={s.time}")
    _check(s.max_requeues >= 0, "slurm.max_requeues", f"must be >= 0, got {s.max_requeues}")
    for name, value in s.env.items():
        _check(_ENV_NAME.fullmatch(str(name)) is not None, f"slurm.env.{name}",
               "not a valid environment variable name")
        _check("\0" not in str(value), f"slurm.env.{name}", "must not contain a NUL byte")
    for i, module in enumerate(s.modules):
        _check(_MODULE.fullmatch(module) is not None, f"slurm.modules[{i}]",
               f"not a module name, got {module!r}")
    for i, mount in enumerate(s.container_mounts):
        _check(bool(mount) and _printable(mount) and "," not in mount, f"slurm.container_mounts[{i}]",
               f"must be SRC[:DST[:FLAGS]] without commas or newlines, got {mount!r}")
    for i, line in enumerate(s.extra_directives):
        match = _SLURM_DIRECTIVE.fullmatch(line) if _printable(line) else None
        _check(match is not None, f"slurm.extra_directives[{i}]",
               f"must be one sbatch option like --constraint=h100, got {line!r}")
        assert match is not None
        _check(match.group(1) not in SLURM_OWNED_OPTIONS, f"slurm.extra_directives[{i}]",
               f"--{match.group(1)} is set by the launcher; use the slurm section's own field")
    _check(s.master_port == 0 or 1024 <= s.master_port <= 65535, "slurm.master_port",
           f"must be 0 or in [1024, 65535], got {s.master_port}")


# --------------------------------------------------------------------------------------
# Derived values
# --------------------------------------------------------------------------------------


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


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what every run saves next to its outputs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_resolved(cfg: Config, run_dir: os.PathLike | str, derived: Optional[Derived] = None) -> Path:
    """Atomically write ``config.yaml`` (and the derived values as comments) into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = to_yaml(cfg)
    if derived is not None:
        text += "# derived:\n" + "".join(
            f"#   {k}: {v}\n" for k, v in dataclasses.asdict(derived).items())
    return atomic_write_text(run_dir / "config.yaml", text)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``
    (readers never see half a file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def as_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of the config (for checkpoints and JSON output)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def add_config_args(parser: Any) -> None:
    """Add the shared ``--config`` option and ``key=value`` overrides to an argparse parser."""
    parser.add_argument("--config", default=None,
                        help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides in dotted form, e.g. model.seq_len=1024")

