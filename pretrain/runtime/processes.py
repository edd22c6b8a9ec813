"""How training processes start and end: the exit codes launchers read, and the one torchrun
command line every multi-process start (compare, export, the local launcher, benchmarks) uses."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Type

EXIT_REQUEUE = 75
"""Stopped by SIGTERM/SIGUSR1 after saving a checkpoint: requeue, and the run resumes."""
EXIT_ABORT = 3
"""Too many non-finite steps in a row: the last good checkpoint is kept."""
STOP_REASON = "stop_reason"
"""The file in the run directory that rank 0 writes when training ends: ``signal`` (checkpointed,
requeue me), ``max_steps`` or ``max_minutes`` (finished), :data:`DIVERGED`."""
DIVERGED = "diverged"
"""The ``<run_dir>/stop_reason`` of a run that ended with :data:`EXIT_ABORT`: resuming it replays
the same batches from the same checkpoint, so launchers do not requeue it and the comparison does
not retrain it unless asked (``--retry-diverged``)."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""The signals that ask a training run to checkpoint at the next step boundary and exit with
:data:`EXIT_REQUEUE` (Slurm sends SIGUSR1 before the time limit, SIGTERM on preemption)."""


class StopSignals:
    """While entered, :data:`STOP_SIGNALS` only set :attr:`received` (the signal number); the
    training loop reads it at each step boundary. The handlers in place before are restored on
    exit. Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], err: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only a flag: a handler that logs can run inside an interrupted write to the same stream
        # ("reentrant call inside BufferedWriter") and raise mid-step.
        self.received = signum


def read_stop_reason(run_dir: os.PathLike | str) -> Optional[str]:
    """``signal`` / ``max_steps`` / ``max_minutes`` / ``diverged``, or None when training wrote none
    (a crash)."""
    try:
        return (Path(run_dir) / STOP_REASON).read_text().strip() or None
    except OSError:
        return None


def torchrun_command(nproc: int, module: str, args: Sequence[str] = (), python: str = sys.executable,
                     extra: Sequence[str] = ()) -> List[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node=N [extra] -m MODULE ARGS``
    (a single-host rendezvous; ``extra`` are torchrun's own options)."""
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            *extra, "-m", module, *args]


def python_module_command(nproc: int, module: str, args: Sequence[str] = (),
                          python: str = sys.executable) -> List[str]:
    """``MODULE ARGS`` in one process, or under :func:`torchrun_command` when ``nproc > 1``."""
    if nproc > 1:
        return torchrun_command(nproc, module, args, python)
    return [python, "-m", module, *list(args)]
