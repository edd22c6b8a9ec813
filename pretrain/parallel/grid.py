"""Process groups: starting torch.distributed and the tensor-parallel x data-parallel grid.

Rank layout: tensor-parallel peers are adjacent (``tp_rank = rank % tp``,
``dp_rank = rank // tp``), so a TP group stays inside a node when TP <= GPUs per node.
:class:`ParallelGrid` is also the ``mpu`` object DeepSpeed expects.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import List, Optional

import torch
import torch.distributed as dist


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_distributed() -> bool:
    """True when started by torchrun / the deepspeed launcher / Slurm glue (WORLD_SIZE set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(device_type: str, timeout_minutes: float = 30.0) -> None:
    """Start the default process group: gloo on CPU, nccl on GPU.

    Run as a plain single process (no launcher), it makes a world of one on a free local port.
    """
    if dist.is_initialized():
        return
    if not launched_distributed():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        # The deepspeed launcher sets LOCAL_SIZE, which turns on DeepSpeed's shared-memory
        # all-reduce on CPU; with it ranks were measured to abort intermittently at exit and to
        # leave segments in /dev/shm. Training does not need it: keep gloo only.
        os.environ.pop("LOCAL_SIZE", None)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device_type == "cuda" else "gloo",
                               timeout=datetime.timedelta(minutes=timeout_minutes))


class ParallelGrid:
    """The TP x DP grid and DeepSpeed's ``mpu`` interface (model parallel = tensor parallel)."""

    def __init__(self, tensor_parallel: int) -> None:
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % tensor_parallel:
            raise ValueError(f"parallel.tensor_parallel={tensor_parallel} does not divide the world "
                             f"size {world}")
        self.world_size, self.rank = world, rank
        self.tp_size, self.dp_size = tensor_parallel, world // tensor_parallel
        self.tp_rank, self.dp_rank = rank % tensor_parallel, rank // tensor_parallel
        self.tp_group: Optional[dist.ProcessGroup] = None
        self.dp_group: Optional[dist.ProcessGroup] = None
        # Every rank must create every group, in the same order.
        for d in range(self.dp_size):
            ranks = [d * self.tp_size + t for t in range(self.tp_size)]
            group = dist.new_group(ranks)
            if rank in ranks:
                self.tp_group, self.tp_ranks = group, ranks
        for t in range(self.tp_size):
            ranks = [d * self.tp_size + t for d in range(self.dp_size)]
            group = dist.new_group(ranks)
            if rank in ranks:
                self.dp_group, self.dp_ranks = group, ranks

    # --- DeepSpeed mpu interface -------------------------------------------------------
    def get_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tp_size

    def get_model_parallel_group(self):
        return self.tp_group

    def get_tensor_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self.tp_size

    def get_tensor_model_parallel_group(self):
        return self.tp_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self.tp_ranks[0]

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.dp_size

    def get_data_parallel_group(self):
        return self.dp_group

    def get_data_parallel_group_ranks(self) -> List[int]:
        return list(self.dp_ranks)

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0

    def __repr__(self) -> str:
        return (f"ParallelGrid(rank={self.rank}/{self.world_size}, tp={self.tp_rank}/{self.tp_size}, "
                f"dp={self.dp_rank}/{self.dp_size})")


def all_ranks_max(value: float, device: torch.device) -> float:
    """Max of ``value`` over every rank (used so all ranks agree on stop / skip decisions)."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def mean_over(value: float, group, size: int, device: torch.device) -> float:
    """Average of ``value`` over a process group."""
    if size == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return float(t.item()) / size
