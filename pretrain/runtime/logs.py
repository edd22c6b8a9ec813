"""Console and TensorBoard logging for training runs. Logs go to stderr; results to stdout."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, Optional

_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def get_logger(name: str = "pretrain") -> logging.Logger:
    """A logger writing one-line records to stderr (configured once)."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class MetricsWriter:
    """Scalars and text to TensorBoard event files in ``run_dir/tensorboard`` (if enabled).

    ``purge_step``: a run resumed from the checkpoint of step N passes N + 1, and TensorBoard
    drops the points an earlier attempt logged at steps >= N + 1 (otherwise the curve would hold
    them twice: the lost attempt's and the resumed run's)."""

    def __init__(self, run_dir: Path, enabled: bool, purge_step: Optional[int] = None) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"),
                                        purge_step=purge_step)

    def scalars(self, step: int, values: Dict[str, float], prefix: str = "") -> None:
        """Log every value as ``prefix + key`` at ``step``."""
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(prefix + key, float(value), step)

    def text(self, step: int, tag: str, text: str) -> None:
        """Log a text sample (shown in TensorBoard's text tab)."""
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def format_metrics(step: int, max_steps: int, values: Dict[str, float],
                   extra: Optional[str] = None) -> str:
    """One readable console line: ``step 10/100 | loss 2.31 | bpb 3.33 | ...``."""
    parts = [f"step {step}/{max_steps}"]
    for key, value in values.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    if extra:
        parts.append(extra)
    return " | ".join(parts)
