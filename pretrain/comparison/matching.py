"""Matched configs: MEGABYTE of a size class, then a byte, a sliding-window byte and a subword
Transformer whose *training FLOPs per byte* (the paper's formulas, :mod:`pretrain.model.flops`)
are within :data:`MATCH_TOLERANCE` of MEGABYTE's; every model gets the same global batch in bytes
and the same training bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pretrain.config import Config, ModelConfig, StackConfig, load_config, slurm_procs_per_node
from pretrain.model.flops import flops_per_byte

MATCH_TOLERANCE = 0.05
MODEL_NAMES = ("megabyte", "transformer_bytes", "transformer_window", "transformer_subword")
"""The matched models, in plan order (MEGABYTE first: the others are matched to it)."""
# Interleaved streams of the shard loader: consecutive sequences of a batch come from different
# parts of the corpus (with one stream a micro-batch would be one stretch of one file).
LANES = 16

# MEGABYTE per size class: (context T, patch P, global (D, L, H), local (D, L, H), micro-batch).
SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(T=512, P=8, g=(256, 4, 4), l=(128, 2, 4), micro=8, lr=2e-3, budget=3_276_800),
    "small": dict(T=2048, P=8, g=(512, 6, 8), l=(256, 4, 4), micro=8, lr=1e-3, budget=200_000_000),
    "base": dict(T=8192, P=8, g=(1024, 12, 16), l=(512, 8, 8), micro=8, lr=6e-4,
                 budget=5_000_000_000),
    "arxiv": dict(T=8192, P=8, g=(2048, 14, 16), l=(1024, 18, 16), micro=1, lr=2e-4,
                  budget=80_000_000_000),
}


@dataclass
class MatchedRun:
    """One model of the comparison."""

    name: str
    cfg: Config
    train_flops_per_byte: float
    params: int


def megabyte_model(size: str) -> ModelConfig:
    s = SIZES[size]
    return ModelConfig(arch="megabyte", seq_len=s["T"], patch_size=s["P"],
                       global_model=StackConfig(*s["g"]), local_model=StackConfig(*s["l"]),
                       dropout=0.0)


def transformer_context(size: str) -> int:
    """Byte context of the Transformers: T/8 as in the paper's pairing, at least 512 bytes."""
    T = SIZES[size]["T"]
    return min(T, max(T // 8, 512))


def window_size(size: str) -> int:
    """Attention window W of the sliding-window byte Transformer (``transformer_window``).

    The rule: W is the full byte Transformer's context (:func:`transformer_context`, T/8 but at
    least 512), capped at T/2 so the window is a real restriction of MEGABYTE's context T (the
    tiny size, where that context is already T). The windowed model keeps the full model's
    per-query attention span, so at the same width/depth rule (:func:`match_transformer`, with
    the attention term counted over min(W, T) keys) it lands at the same FLOPs per byte while
    its learned positions and receptive field (layers x W) cover all T bytes.
    """
    return min(transformer_context(size), SIZES[size]["T"] // 2)


def match_transformer(target: float, seq_len: int, vocab: str, tokenizer: Optional[str],
                      vocab_size: int, bytes_per_token: float, max_dim: int,
                      window: int = 0) -> ModelConfig:
    """The Transformer shape whose training FLOPs per byte are closest to ``target``.

    Candidates have widths in steps of 32 (head size 32 below 512, 64 from 512) and a usual
    aspect ratio (32 <= width / layers <= 128) when one of those is within tolerance.
    ``window`` > 0 gives every candidate that sliding attention window (FLOPs counted with it).
    """
    best: List[Tuple[int, float, int, ModelConfig]] = []
    for dim in range(64, max_dim + 1, 32):
        head = 32 if dim < 512 else 64
        if dim % head:
            continue
        for layers in range(1, 65):
            cfg = ModelConfig(arch="transformer", vocab=vocab, tokenizer=tokenizer, seq_len=seq_len,
                              global_model=StackConfig(dim, layers, dim // head), dropout=0.0,
                              attention_window=window)
            f = flops_per_byte(cfg, vocab_size, bytes_per_token, training=True)
            rel = abs(f - target) / target
            usual = 32 <= dim / layers <= 128
            rank = 0 if rel <= MATCH_TOLERANCE and usual else 1 if rel <= MATCH_TOLERANCE else 2
            best.append((rank, rel, -dim * dim * layers, cfg))
    best.sort(key=lambda x: x[:3])
    return best[0][3]


def plan_models(size: str, data_dir: Path, out: Path, budget_bytes: Optional[int],
                budget_flops: Optional[float], bytes_per_token: float, sp_vocab: int,
                extra: List[str], world_size: Optional[int] = 1, subword: bool = True,
                lr: Optional[float] = None, suffix: str = "") -> List[MatchedRun]:
    """Configs for the four models at matched training FLOPs per byte and equal budgets:
    ``megabyte``, ``transformer_bytes`` (full attention over :func:`transformer_context`),
    ``transformer_window`` (MEGABYTE's context T, sliding window :func:`window_size`) and
    ``transformer_subword`` (only when ``subword``: the corpus is text,
    :mod:`pretrain.comparison.corpus`).

    The global batch (sequences per update) is fixed by the size class, whatever the layout:
    on ``world_size`` processes (None: the plan's Slurm job, nodes x processes per node) each
    data-parallel rank gets its share as micro-batch, so 1 and N processes train on the same
    batches and budgets. ``lr`` replaces the size class's learning rate; each run is named (and
    its directory under ``OUT/runs`` is) the model's name + ``suffix``
    (:mod:`pretrain.comparison.sweep`)."""
    s = SIZES[size]
    mb = megabyte_model(size)
    target = flops_per_byte(mb, 259, training=True)
    ctx = transformer_context(size)
    tok_ctx = max(8, int(round(ctx / bytes_per_token / 8)) * 8)
    models = {
        "megabyte": mb,
        "transformer_bytes": match_transformer(target, ctx, "bytes", None, 259, 1.0,
                                               2 * mb.global_model.dim),
        "transformer_window": match_transformer(target, s["T"], "bytes", None, 259, 1.0,
                                                2 * mb.global_model.dim, window_size(size)),
    }
    if subword:
        models["transformer_subword"] = match_transformer(
            target, tok_ctx, "sentencepiece", str(data_dir / "tokenizer.model"), sp_vocab + 3,
            bytes_per_token, 2 * mb.global_model.dim)
    batch_bytes = s["micro"] * s["T"]
    budget = budget_bytes or (int(budget_flops / target) if budget_flops else s["budget"])
    steps = max(1, math.ceil(budget / batch_bytes))
    plans = []
    for name, model in models.items():
        seq_bytes = model.seq_len * (bytes_per_token if model.vocab == "sentencepiece" else 1.0)
        micro = max(1, int(round(batch_bytes / seq_bytes)))
        datasets = data_dir / ("tokens" if model.vocab == "sentencepiece" else "bytes")
        overrides = [
            f"run_dir={out / 'runs' / (name + suffix)}", f"model.arch={model.arch}",
            f"model.vocab={model.vocab}", f"model.seq_len={model.seq_len}",
            f"model.patch_size={model.patch_size}", "model.dropout=0.0",
            f"model.global_model.dim={model.global_model.dim}",
            f"model.global_model.layers={model.global_model.layers}",
            f"model.global_model.heads={model.global_model.heads}",
            f"model.local_model.dim={model.local_model.dim}",
            f"model.local_model.layers={model.local_model.layers}",
            f"model.local_model.heads={model.local_model.heads}",
            "data.source=shards", f"data.datasets=[{datasets}]", "data.val_bytes=65536",
            f"data.lanes={LANES}",
            f"optim.lr={s['lr'] if lr is None else lr}",
            f"optim.warmup_steps={min(500, max(10, steps // 10))}",
            # The budget is steps, never wall-clock time (a time limit only pauses a run).
            f"train.max_steps={steps}", "train.max_minutes=0", f"train.micro_batch_size={micro}",
            f"train.eval_interval={max(1, steps // 8)}", "train.sample_bytes=0",
            f"checkpoint.interval={max(1, steps // 8)}", "checkpoint.keep_last=1",
            f"logging.log_interval={max(1, steps // 50)}", "logging.progress_bar=true",
        ]
        if model.tokenizer:
            overrides.append(f"model.tokenizer={model.tokenizer}")
        if model.attention_window:
            overrides.append(f"model.attention_window={model.attention_window}")
        cfg = _split_batch(name, load_config(None, overrides + list(extra)), overrides + list(extra),
                           micro, world_size)
        f = flops_per_byte(cfg.model, 259 if model.vocab == "bytes" else sp_vocab + 3,
                           bytes_per_token if model.vocab == "sentencepiece" else 1.0, training=True)
        plans.append(MatchedRun(name + suffix, cfg, f, _count_params(cfg)))
    return plans


def _split_batch(name: str, cfg: Config, overrides: List[str], micro: int,
                 world_size: Optional[int]) -> Config:
    """``cfg`` with ``micro`` global sequences split over its data-parallel ranks."""
    world = world_size or cfg.slurm.nodes * slurm_procs_per_node(cfg)
    dp = max(1, world // cfg.parallel.tensor_parallel)
    if dp == 1:
        return cfg
    if micro % dp:
        raise ValueError(f"{name}: its global batch of {micro} sequences does not split over "
                         f"{dp} data-parallel ranks; choose a process count that divides it")
    return load_config(None, overrides + [f"train.micro_batch_size={micro // dp}"])


_PARAMS: Dict[str, int] = {}  # model config (YAML) -> parameters: sweeps plan the same shapes often


def _count_params(cfg: Config) -> int:
    from omegaconf import OmegaConf

    from data_prep.vocab import build_vocab
    from pretrain.model import build_model, count_params

    key = OmegaConf.to_yaml(OmegaConf.structured(cfg.model))
    if key not in _PARAMS:
        vocab = build_vocab(cfg.model.vocab, cfg.model.tokenizer)
        _PARAMS[key] = count_params(build_model(cfg.model, vocab.vocab_size, vocab.pad_id,
                                                vocab.bos_id))
    return _PARAMS[key]


def bytes_per_token(manifest: Dict[str, Any]) -> float:
    """Bytes per token of the train split from the token manifest."""
    for key in ("bytes_per_token", "splits"):
        if key in manifest:
            value = manifest[key]
            if isinstance(value, dict) and "train" in value:
                value = value["train"]
            if isinstance(value, dict):
                value = value.get("bytes_per_token", value.get("bytes", 0) / max(value.get("tokens", 1), 1))
            return float(value)
    raise KeyError("the token manifest has no bytes-per-token figure")
