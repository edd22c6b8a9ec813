"""Which device a run uses."""

from __future__ import annotations

import torch


class DeviceUnavailable(ValueError):
    """The configured device is not on this machine (one line naming ``train.device``)."""


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a
    :class:`DeviceUnavailable` error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("train.device=cuda but no CUDA device is available on this machine "
                                "(use train.device=cpu or auto)")
    return torch.device(name)
