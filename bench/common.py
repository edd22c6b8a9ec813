"""Shared pieces of the benchmark scripts: model pairs, timing, memory, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pretrain.config import ModelConfig, OptimConfig, StackConfig  # noqa: E402
from pretrain.model import build_model, count_params  # noqa: E402
from pretrain.model.losses import lm_loss  # noqa: E402
from pretrain.runtime.compile import compile_model  # noqa: E402
from pretrain.training.optim import build_optimizer  # noqa: E402
from pretrain.runtime.host_memory import reuse_freed_host_memory  # noqa: E402
from data_prep.vocab import ByteVocab  # noqa: E402

# Benchmarks measure what the trainer does: on CPU it keeps freed activation memory for reuse
# (train.host_memory_reuse=true). BENCH_HOST_MEMORY_REUSE=0 measures glibc's defaults instead
# (bench/bench_host_memory.py runs both).
HOST_MEMORY_REUSE = (os.environ.get("BENCH_HOST_MEMORY_REUSE", "1") != "0"
                     and reuse_freed_host_memory())

VOCAB = ByteVocab()

# Size classes: MEGABYTE and a byte Transformer with about the same number of non-embedding
# (transformer block) parameters: tiny ~2.0M, small ~15.7M, large ~1.35B (global model 1.0B).
SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": {"megabyte": dict(global_model=StackConfig(256, 2, 4), local_model=StackConfig(128, 2, 4)),
             "transformer": dict(global_model=StackConfig(288, 2, 4))},
    "small": {"megabyte": dict(global_model=StackConfig(512, 4, 8), local_model=StackConfig(256, 4, 4)),
              "transformer": dict(global_model=StackConfig(512, 5, 8))},
    # GPU: a ~1B-parameter global model (the MFU target's size) with a 350M local model.
    "large": {"megabyte": dict(global_model=StackConfig(2048, 20, 16),
                               local_model=StackConfig(1536, 12, 12)),
              "transformer": dict(global_model=StackConfig(2048, 27, 16))},
}


def model_config(arch: str, size: str, seq_len: int, patch: int = 8) -> ModelConfig:
    """The benchmark model of ``arch`` in size class ``size`` at context ``seq_len``."""
    return ModelConfig(arch=arch, seq_len=seq_len, patch_size=patch, dropout=0.0,
                       **SIZES[size][arch])


def make_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB.vocab_size, VOCAB.pad_id, VOCAB.bos_id)
    return model.to(device=device, dtype=dtype)


def training_step(model: torch.nn.Module, ids: torch.Tensor, compile_backend: Optional[str] = None
                  ) -> Callable[[], None]:
    """One training step as the trainer takes it (forward, loss, backward, the trainer's AdamW:
    fused on GPU, multi-tensor on CPU), with the model's forward compiled first when
    ``compile_backend`` is given (compilation then happens in the first, warm-up call)."""
    if compile_backend:
        compile_model(model, ids.device, compile_backend)
    opt = build_optimizer(model, OptimConfig(lr=1e-4))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        lm_loss(model(ids), ids).backward()
        opt.step()

    return step


# How :func:`training_step`'s AdamW runs (reported in the JSON): build_optimizer makes it fused
# on every device.
OPTIMIZER = "AdamW fused"


def params(model: torch.nn.Module) -> int:
    return count_params(model)


def block_params(model: torch.nn.Module) -> int:
    """Parameters of the transformer stacks (embeddings, positions and pads excluded)."""
    stacks = [model.global_model] + ([model.local_model] if hasattr(model, "local_model") else [])
    return sum(count_params(s) for s in stacks)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int,
          budget_s: float) -> Dict[str, Any]:
    """Median seconds of ``fn`` over up to ``repeats`` calls after ``warmup`` untimed calls,
    stopping early once ``budget_s`` is spent on timed calls (at least one is always made, so
    a slow warm-up, e.g. compilation, never becomes the reported time). ``first_seconds`` is the
    first call's time (with a compiled model: compilation included)."""
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync(device)
        first = time.perf_counter() - t0 if first is None else first
    t_start = time.perf_counter()
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > budget_s:
            break
    first = times[0] if first is None else first
    times.sort()
    return {"seconds": times[len(times) // 2], "repeats": len(times), "first_seconds": first}


def peak_memory_gb(device: torch.device) -> Optional[float]:
    """Peak GPU memory allocated, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def machine() -> Dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "host_memory_reuse": HOST_MEMORY_REUSE}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def emit(result: Dict[str, Any], output: Optional[str]) -> None:
    """Print the JSON on stdout and optionally write it to a file."""
    text = json.dumps(result, indent=None)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
    print(text)


def table(rows, headers) -> str:
    """A small markdown table for stderr."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
