"""The one peak FLOP/s every MFU is computed against, and memory readings.

:func:`shared_peak` measures it: the best of several square matmuls (1024, 2048 and, on GPU,
4096) in the run's dtype, once per process (cached) and once per process group (rank 0 measures
and broadcasts, so every rank divides by the same number and a busy rank cannot skew it). The
trainer and the benchmarks both call it. :class:`MFUMeter` then keeps MFU <= 1 by construction.
Vendors' data-sheet numbers (:data:`GPU_BF16_PEAK`) are reported beside it on GPU, never used
for MFU: a probe measures what this device, dtype and library actually reach.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

# Dense bf16 peak FLOP/s (no sparsity), by substring of torch.cuda.get_device_name(): reference only.
GPU_BF16_PEAK = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; PCIe parts are lower (756e12)
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "V100": 125e12,  # fp16 tensor cores (no bf16)
    "B200": 2250e12,
    "MI300X": 1307e12,
}

_PEAK_CACHE: Dict[Tuple[str, torch.dtype], float] = {}


def gpu_peak_flops(name: str) -> Optional[float]:
    """The data-sheet peak for a device name, or None when unknown (reference, not for MFU)."""
    for key, value in GPU_BF16_PEAK.items():
        if key in name:
            return value
    return None


def probe_sizes(device: torch.device) -> Tuple[int, ...]:
    """Square matmul sizes of the probe: 4096 only on GPU (seconds on a CPU)."""
    return (1024, 2048, 4096) if device.type == "cuda" else (1024, 2048)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                sizes: Optional[Sequence[int]] = None, repeats: int = 2) -> float:
    """Best FLOP/s (2 n^3 per product) over square matmuls of each size in ``sizes`` (default
    :func:`probe_sizes`), ``repeats`` timed calls each, after one warm-up call at the first size
    (thread pool, kernel selection), with torch's current threads. About 0.5 s on 2 CPU cores;
    every training process runs it once. Uses its own generator: the global RNG (exact resume)
    is never touched."""
    best = 0.0
    for i, n in enumerate(sizes or probe_sizes(device)):
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
        b = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
        if i == 0:
            torch.mm(a, b)  # warm up
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def shared_peak(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The peak FLOP/s of one device for MFU: :func:`matmul_peak`, measured once per process
    (cached by device type and dtype) and, in an initialized process group, measured by rank 0
    only and broadcast (a collective: every rank must call it)."""
    key = (device.type, dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = matmul_peak(device, dtype) if dist.get_rank() == 0 else 0.0
        box = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(box, src=0)
        value = float(box.item())
    else:
        value = matmul_peak(device, dtype)
    _PEAK_CACHE[key] = value
    return value


def dtype_name(dtype: torch.dtype) -> str:
    """``fp32``, ``bf16``, ``fp16`` or torch's own name."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        dtype, str(dtype).replace("torch.", ""))


@dataclass
class MFUMeter:
    """MFU against a peak that can never be exceeded: the peak is the maximum of the matmul probe
    (``probe``, from :func:`shared_peak`, times the devices counted) and the best FLOP/s achieved
    so far. If a step outruns the probe (the probe ran under load, or the model's kernels beat a
    plain matmul) the peak rises to that step, so MFU <= 1 always holds without a clamp, and the
    log line says which source the peak came from."""

    probe: float
    dtype: torch.dtype = torch.float32
    best_achieved: float = 0.0

    @property
    def peak(self) -> float:
        return max(self.probe, self.best_achieved)

    def observe(self, achieved_flops: float) -> None:
        """Record an achieved FLOP/s (raises the peak if it is higher than both sources)."""
        self.best_achieved = max(self.best_achieved, achieved_flops)

    def mfu(self, achieved_flops: float) -> float:
        """``achieved_flops`` (FLOP/s of useful work) over the peak, after :meth:`observe`."""
        self.observe(achieved_flops)
        return achieved_flops / self.peak

    def describe(self) -> str:
        """e.g. ``peak 152 GFLOP/s (fp32 matmul, measured)``."""
        source = (f"{dtype_name(self.dtype)} matmul, measured" if self.best_achieved <= self.probe
                  else "best step so far, above the matmul probe")
        return f"peak {format_flops(self.peak)} ({source})"


def format_flops(flops: float) -> str:
    """FLOP/s with a unit: ``152 GFLOP/s``, ``3.1 TFLOP/s``."""
    for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
        if flops >= scale:
            value = flops / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    return f"{flops / 1e6:.3g} MFLOP/s"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's resident memory on CPU, in GB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / 1e9
    except ImportError:  # psutil comes with deepspeed; be robust anyway
        return 0.0
