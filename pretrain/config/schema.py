"""The config schema: one dataclass per section, a docstring under every field.

Loading and validation are in :mod:`pretrain.config.loading` and :mod:`pretrain.config.validation`;
derived values (batch algebra) in :mod:`pretrain.config.derived`. The ``slurm`` section is read
here but checked by the launcher (:mod:`launch.slurm_config`): training ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "quickstart.yaml"
# Values of ``model.init`` (MEGABYTE only; applied in ``pretrain.model.megabyte``).
INIT_RECIPES = ("paper", "scaled", "zero_gl", "ln_gain")


class ConfigError(ValueError):
    """A config problem, reported as one line that names the offending key."""


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
    init: str = "ln_gain"
    """MEGABYTE init recipe (``INIT_RECIPES``): ``paper`` = every weight ~ N(0, init_std), norms 1
    (its local model sits at the byte-unigram entropy for hundreds of steps, issue 12);
    ``ln_gain`` = the paper's but the global stack's output LayerNorm gain starts at 0.05, so the
    global->local term starts well below the previous-byte embedding instead of drowning it;
    ``zero_gl`` (``w_GL`` = 0) and ``scaled`` (``w_GL`` std / sqrt(D_G)) are the ablated
    alternatives (``Megabyte.init_overrides``, ``python -m bench.init_ablation``).
    Ignored by ``arch=transformer``."""
    cross_patch_window: int = 0
    """Paper option (a): local attention also sees the last r positions of the previous patch,
    with rotary positions. 0 disables it."""
    conv_encoder: bool = False
    """Paper option (b): causal convolutions over the byte embeddings before patching."""
    conv_kernel_sizes: List[int] = field(default_factory=lambda: [3, 5, 7])
    """Filter sizes of the causal patch-encoder convolutions (the paper uses 3, 5, 7)."""
    attention_window: int = 0
    """Sliding-window attention for ``arch=transformer``: position i attends to positions j with
    i - W < j <= i (itself and the W - 1 before it); 0 = full causal attention. A window of at
    least ``seq_len`` covers every key, so it is full attention (the model takes the full path).
    FLOPs per token count min(W, seq_len) keys per query; the KV cache keeps only W - 1 positions.
    ``pretrain.compare`` trains one as ``transformer_window`` (the SpaceByte-style baseline)."""


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
    compile: bool = False
    """torch.compile the model's forward (training, evaluation; cached generation stays eager),
    in the single-process loop and under DeepSpeed. The compilation time is logged once; a
    machine where it cannot work (CPU inductor without a C compiler) fails with a one-line error."""
    compile_backend: str = "inductor"
    """torch.compile backend with ``compile=true``: ``inductor`` (generated kernels) or
    ``aot_eager`` (traces and runs eager kernels: for debugging, no compiler needed)."""
    host_memory_reuse: bool = True
    """On CPU, keep freed activation memory in the process for the next step (glibc
    ``mallopt``) instead of page-faulting fresh pages every step: 1.2-1.3x faster CPU steps
    measured, for 40-55% more peak resident memory (``pretrain/runtime/host_memory.py``)."""


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
    deepspeed_fused_adam: bool = False
    """Use DeepSpeed's FusedAdam on GPU (compiled just in time on every node: needs nvcc and
    ninja there). Default: torch's fused AdamW, which needs no compiler."""


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

