"""Device peak FLOP/s for MFU, and memory readings.

GPU peaks are dense bf16 numbers from the vendors' data sheets; on CPU the peak is measured by a
short fp32 matmul probe at start (there is no meaningful data-sheet number for a shared VM).
"""

from __future__ import annotations

import os
import time
from typing import Optional

import torch

# Dense bf16 peak FLOP/s (no sparsity), by substring of torch.cuda.get_device_name().
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


def gpu_peak_flops(name: str) -> Optional[float]:
    """The table's peak for a device name, or None when unknown."""
    for key, value in GPU_BF16_PEAK.items():
        if key in name:
            return value
    return None


def cpu_matmul_peak(size: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of a square matmul over a few repeats, with torch's current thread count."""
    gen = torch.Generator().manual_seed(0)  # never touch the global RNG (exact resume)
    a = torch.randn(size, size, dtype=dtype, generator=gen)
    b = torch.randn(size, size, dtype=dtype, generator=gen)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def device_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Peak FLOP/s of one device: the table on GPU, a matmul probe on CPU."""
    if device.type == "cuda":
        peak = gpu_peak_flops(torch.cuda.get_device_name(device))
        if peak is not None:
            return peak
        return _cuda_probe(device)
    return cpu_matmul_peak(dtype=dtype)


def _cuda_probe(device: torch.device) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device, generator=gen)
    torch.mm(a, a)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(5):
        torch.mm(a, a)
    torch.cuda.synchronize(device)
    return 5 * 2 * 8192**3 / (time.perf_counter() - t0)


def memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's resident memory on CPU, in GB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / 1e9
    except ImportError:  # psutil comes with deepspeed; be robust anyway
        return 0.0
