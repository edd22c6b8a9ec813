"""How a CPU process gets memory for its large tensors.

PyTorch has no caching allocator on CPU: every activation of a training step is a fresh
``malloc``. glibc serves blocks above its mmap threshold (at most 32 MiB by default) with a new
``mmap`` and gives them back with ``munmap`` on ``free``, so each step of a long-context model
page-faults (and the kernel zeroes) hundreds of MB of activations again; elementwise ops
(ReLU, layer norm, ``fill_``) then run at page-fault speed. Raising the thresholds keeps freed
blocks in the process for the next step. Measured on this project's 2-core CI machine, one
thread, 64 KiB steps, each setting in its own process, alternated (``bench/bench_host_memory.py``,
``bench/results/cpu_host_memory.json``): the tiny MEGABYTE step is 1.22x faster at 1K bytes of
context, 1.34x at 16K and 1.26x at 64K, the tiny byte Transformer's 1.22x at 1K (the median of
three rounds; single rounds ranged 0.80-1.45 as the machine's speed drifted). The price: the heap
fragments, so the peak resident set grows (1.73 -> 2.47 GB for MEGABYTE at 1K, 2.80 -> 4.31 GB
for the Transformer), and it stays at that peak between steps. ``train.host_memory_reuse=false``
keeps glibc's defaults. GPU runs are left alone (their activations are not host memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Optional

import torch

from pretrain.runtime.logs import get_logger

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap and are reused after free (no mmap per tensor).
MMAP_THRESHOLD_BYTES = 1 << 30
# Free memory at the top of the heap is handed back to the kernel only above this much (mallopt
# takes a C int: 2 GiB - 1 is the most it can say).
TRIM_THRESHOLD_BYTES = (1 << 31) - 1

_applied: Optional[bool] = None


def _glibc() -> Optional[ctypes.CDLL]:
    """The C library when it is glibc (mallopt's parameters are glibc's), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def reuse_freed_host_memory() -> bool:
    """Keep freed large host blocks in this process for reuse (glibc ``mallopt``); returns
    whether the setting is in effect. Idempotent; a no-op (False) on a C library other than
    glibc (macOS, musl), where the process runs with its allocator's defaults. It affects the
    whole process and processes forked from it afterwards (data-loader workers)."""
    global _applied
    if _applied is None:
        libc = _glibc()
        _applied = bool(libc is not None
                        and _mallopt(libc, _M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                        and _mallopt(libc, _M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _applied


def apply_host_memory_setting(device: torch.device, enabled: bool) -> bool:
    """``train.host_memory_reuse`` for a process computing on ``device``: on CPU and enabled,
    :func:`reuse_freed_host_memory` (a log line where the C library is not glibc); elsewhere
    nothing. Returns whether the setting is in effect."""
    if device.type != "cpu" or not enabled:
        return False
    if not reuse_freed_host_memory():
        get_logger().info("train.host_memory_reuse: the C library is not glibc; its defaults stay")
        return False
    return True


def _mallopt(libc: ctypes.CDLL, param: int, value: int) -> bool:
    """glibc ``mallopt(param, value)``; ``value`` must fit a C int (ctypes would wrap it)."""
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"mallopt value {value} does not fit a C int")
    return libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
