"""Input errors found while a run is set up (before its first step), as one line naming the key
or file: a missing or unreadable corpus, tokenizer, ``train.init_from`` or run directory, and
weights (an export, a checkpoint) that do not fit the configured model.

Only the set-up phase converts errors this way; an error raised by a training step is never
caught here.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Type

import torch

from pretrain.config import Config, as_dict

# The model settings that decide parameter names and shapes (the others, such as dropout or the
# init recipe, may change between a checkpoint and the run that continues it).
_SHAPE_KEYS = ("arch", "vocab", "seq_len", "mlp_ratio", "global_model")
_MEGABYTE_SHAPE_KEYS = ("patch_size", "local_model", "conv_encoder", "conv_kernel_sizes")


class InputError(ValueError):
    """A bad input found while setting a run up; the message is one line naming the key or file."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


@contextmanager
def input_errors(key: str, kinds: Tuple[Type[BaseException], ...] = (OSError, ValueError)
                 ) -> Iterator[None]:
    """Turn ``kinds`` raised inside the block into an :class:`InputError` ``"key: message"``."""
    try:
        yield
    except InputError:
        raise
    except kinds as err:
        raise InputError(f"{key}: {first_line(err)}") from None


def architecture_difference(saved: Optional[Mapping[str, Any]], cfg: Config) -> List[str]:
    """``model.X=a there, b here`` for each shape-deciding model setting where the saved config
    (a checkpoint's or an export's ``model`` section) differs from ``cfg.model``; [] when none
    does or nothing was saved."""
    if not isinstance(saved, Mapping):
        return []
    here = as_dict(cfg)["model"]
    keys = list(_SHAPE_KEYS)
    if here.get("arch") == "megabyte" and saved.get("arch") == "megabyte":
        keys += _MEGABYTE_SHAPE_KEYS
    out = []
    for key in keys:
        there_flat, here_flat = _flatten(saved.get(key), key), _flatten(here.get(key), key)
        for name in sorted(set(there_flat) | set(here_flat)):
            a, b = there_flat.get(name), here_flat.get(name)
            if a != b and name in there_flat:
                out.append(f"model.{name}={a} there, {b} here")
    return out


def _flatten(value: Any, prefix: str) -> Dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, sub in value.items() for k, v in _flatten(sub, f"{prefix}.{key}").items()}
    return {prefix: list(value) if isinstance(value, (list, tuple)) else value}


def check_weights_fit(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: str,
                      saved_model: Optional[Mapping[str, Any]], cfg: Config, what: str) -> None:
    """Raise :class:`InputError` (one line) unless ``weights`` has exactly ``model``'s parameter
    names and shapes: the settings where the saved config differs from ``cfg.model`` when there
    are any, else the first missing, unexpected or mis-shaped parameter. ``what``: the key or action, for the
    message (``train.init_from``, ``resume``)."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in weights.items()}
    if expected == got:
        return
    missing = [n for n in expected if n not in got]
    unexpected = [n for n in got if n not in expected]
    shapes = [f"{n}: {got[n]} there, {expected[n]} here" for n in expected
              if n in got and got[n] != expected[n]]
    settings = architecture_difference(saved_model, cfg)
    if settings:
        detail = "; ".join(settings)
    else:
        parts = []
        if missing:
            parts.append(f"{len(missing)} parameter(s) missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        detail = "; ".join(parts)
    raise InputError(f"{what}: {source} does not fit this model: {detail}")

