"""Initial weights as a pure function of (seed, parameter name): one parameter at a time.

Every parameter has a *rule* (the paper's: weights ~ N(0, ``init_std``) truncated at +-2 std,
biases 0, norm gains 1; plus each architecture's own, see ``init_overrides``) and its values are
drawn from a generator seeded by ``(seed, name)`` alone. So any process can produce any
parameter, or only the ones it needs, without building the model or drawing the others first:
the distributed build (``pretrain.parallel``) materializes one parameter at a time and keeps
only its TP slice and ZeRO partition, and gets exactly the values a single process gets.
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from pretrain.config import ModelConfig

Rule = Tuple[str, float]
"""``("normal", std)`` (truncated at +-2 std) or ``("const", value)``."""


def parameter_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one parameter, independent of every other parameter."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def init_rules(model: nn.Module, cfg: ModelConfig) -> Dict[str, Rule]:
    """The rule of every parameter of ``model`` (works on a meta-device model: names only)."""
    std = cfg.init_std
    rules: Dict[str, Rule] = {}
    for prefix, m in model.named_modules():
        at = f"{prefix}." if prefix else ""
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv1d)):
            rules[at + "weight"] = ("normal", std)
            if getattr(m, "bias", None) is not None:
                rules[at + "bias"] = ("const", 0.0)
        elif isinstance(m, nn.LayerNorm):
            rules[at + "weight"], rules[at + "bias"] = ("const", 1.0), ("const", 0.0)
    overrides = getattr(model, "init_overrides", None)
    if overrides is not None:
        rules.update(overrides(cfg))
    missing = [n for n, _ in model.named_parameters() if n not in rules]
    if missing:
        raise ValueError(f"no initialization rule for parameters {missing[:5]}")
    return rules


BLOCK_ELEMENTS = 1 << 20
"""Values are drawn in blocks of whole rows (dim 0) of about this many elements, each block
from its own generator: a slice is produced without drawing the whole parameter, and the
temporary memory of the draw (``trunc_normal_`` needs a few times its tensor) stays small."""


def initial_value(name: str, shape: torch.Size, rule: Rule, seed: int, dim: Optional[int] = None,
                  start: int = 0, length: int = 0) -> Tensor:
    """The initial fp32 value of one parameter (CPU), or only its ``[start, start + length)``
    slice along ``dim``; the same numbers either way."""
    kind, arg = rule
    out_shape = list(shape)
    if dim is not None:
        out_shape[dim] = length
    out = torch.empty(out_shape, dtype=torch.float32, device="cpu")
    if kind == "const":
        return out.fill_(arg)
    if kind != "normal":
        raise ValueError(f"{name}: unknown initialization rule {rule}")
    rows = shape[0] if len(shape) else 1
    per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, BLOCK_ELEMENTS // per_row)
    for b, r0 in enumerate(range(0, rows, step)):
        r1 = min(r0 + step, rows)
        if dim == 0 and (r1 <= start or r0 >= start + length):
            continue  # a block outside the requested rows is never drawn
        g = torch.Generator(device="cpu").manual_seed(parameter_seed(seed, f"{name}#{b}"))
        block = torch.empty((r1 - r0, *shape[1:]), dtype=torch.float32)
        nn.init.trunc_normal_(block, mean=0.0, std=arg, a=-2 * arg, b=2 * arg, generator=g)
        if dim is None:
            out[r0:r1] = block
        elif dim == 0:
            lo, hi = max(r0, start), min(r1, start + length)
            out[lo - start:hi - start] = block[lo - r0:hi - r0]
        else:
            out[r0:r1] = block.narrow(dim, start, length)
    return out


def initial_values(model: nn.Module, cfg: ModelConfig, seed: int) -> Iterator[Tuple[str, Tensor]]:
    """(name, full initial value) for every parameter, one at a time (``model`` may be meta)."""
    rules = init_rules(model, cfg)
    for name, p in model.named_parameters():
        yield name, initial_value(name, p.shape, rules[name], seed)


@torch.no_grad()
def initialize_(model: nn.Module, cfg: ModelConfig, seed: int) -> None:
    """Write the initial values into a materialized model, in place."""
    params = dict(model.named_parameters())
    for name, value in initial_values(model, cfg, seed):
        params[name].copy_(value)
