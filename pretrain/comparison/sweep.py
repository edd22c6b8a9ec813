"""Sweeps of the comparison: a learning rate chosen per model, and several training budgets.

**Learning rates** (``--lr-sweep``): every model trains at every LR of the grid for a short
budget, :data:`LR_SWEEP_FRACTION` (1/4) of the largest training budget (the same warmup + cosine
schedule shape, over that short budget); each is scored on *selection bytes*, a slice of the
validation split right after the held-out bytes of the final table (never the same bytes); each
model's LR is the grid value with the lowest selection bits per byte (a tie goes to the smaller
LR; a failed or non-finite point is never chosen). That LR then serves every budget.

**Budgets** (``--budgets``): multiples of the comparison's budget (``0.5x,1x,2x``) or byte counts
(``800K``, ``3MiB``, ``3276800``; powers of 1024), each rounded up to whole global batches.
A cosine schedule decays to the end of training, so a shorter budget is *not* a prefix of a
longer run: every budget is its own run.

**Run directories and reuse.** A run is identified by (model, training bytes, LR):
``runs/NAME`` at the comparison's own budget and the size class's LR (the run of a plain
``pretrain.compare``), ``runs/NAME-<bytes>B-lr<lr>`` otherwise. Any phase needing the same triple
uses the same directory, so e.g. the LR-sweep point of the chosen LR is also the run of the
budget of 1/4 of the largest; finished runs are skipped and interrupted ones resume.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pretrain.comparison.matching import MatchedRun

LR_SWEEP_FRACTION = 0.25
"""The LR sweep's budget as a share of the largest training budget."""
DEFAULT_LR_FACTORS = (0.5, 1.0, 2.0)
"""``--lr-sweep`` without values: these multiples of the size class's LR."""

# (training bytes, LR, run-name suffix) -> the matched runs of every model at that budget and LR.
MakePlans = Callable[[int, float, str], List[MatchedRun]]


@dataclass(frozen=True)
class Point:
    """One training run of a sweep."""

    model: str
    budget: int  # training bytes (whole global batches)
    lr: float
    plan: MatchedRun


def model_of(run_name: str) -> str:
    """The model of a run name (``megabyte-819200B-lr0.004`` -> ``megabyte``; model names hold
    no ``-``)."""
    return run_name.split("-", 1)[0]


def lr_grid(text: Optional[str], size_lr: float) -> List[float]:
    """``--lr-sweep``'s values (comma-separated, positive, sorted, unique); ``"default"``: the
    size class's LR times :data:`DEFAULT_LR_FACTORS`."""
    if text is None or text.strip() == "default":
        return [size_lr * f for f in DEFAULT_LR_FACTORS]
    grid = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--lr-sweep: not a learning rate: {part!r} (e.g. 1e-3,2e-3,4e-3)") \
                from None
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"--lr-sweep: a learning rate must be positive: {part!r}")
        grid.append(value)
    if not grid:
        raise ValueError("--lr-sweep: no values")
    return sorted(set(grid))


def whole_batches(n_bytes: float, batch_bytes: int) -> int:
    """``n_bytes`` rounded up to whole global batches (at least one)."""
    return max(1, math.ceil(n_bytes / batch_bytes - 1e-9)) * batch_bytes


def parse_budgets(text: str, base_bytes: int, batch_bytes: int) -> List[int]:
    """``--budgets``: ``0.5x,1x,2x`` (multiples of ``base_bytes``) or sizes (``800K``, ``3MiB``,
    ``3276800``), in whole global batches, sorted, unique."""
    from data_prep.bytes import parse_size

    budgets = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            if part.lower().endswith("x"):
                factor = float(part[:-1])
                if not (factor > 0 and math.isfinite(factor)):
                    raise ValueError
                n = factor * base_bytes
            else:
                n = parse_size(part)
        except (ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"--budgets: not a budget: {part!r} (multiples like 0.5x,1x,2x or "
                             "bytes like 800K,3MiB,3276800)") from None
        budgets.add(whole_batches(n, batch_bytes))
    if not budgets:
        raise ValueError("--budgets: no values")
    return sorted(budgets)


def run_suffix(budget: int, lr: float, plain_budget: int, plain_lr: float) -> str:
    """The run-name suffix of (training bytes, LR): empty for the plain comparison's run."""
    if budget == plain_budget and math.isclose(lr, plain_lr, rel_tol=1e-12):
        return ""
    return f"-{budget}B-lr{lr:g}"


def plan_points(make: MakePlans, wanted: Sequence[Tuple[str, int, float]], plain_budget: int,
                plain_lr: float) -> List[Point]:
    """The runs for (model, budget, LR) triples, one plan call per (budget, LR), each triple once
    (in the order given)."""
    groups: Dict[Tuple[int, float], List[MatchedRun]] = {}
    points: Dict[Tuple[str, int, float], Point] = {}
    for model, budget, lr in wanted:
        if (model, budget, lr) in points:
            continue
        if (budget, lr) not in groups:
            groups[(budget, lr)] = make(budget, lr, run_suffix(budget, lr, plain_budget, plain_lr))
        by_model = {model_of(p.name): p for p in groups[(budget, lr)]}
        points[(model, budget, lr)] = Point(model, budget, lr, by_model[model])
    return list(points.values())


def lr_sweep_points(make: MakePlans, models: Sequence[str], grid: Sequence[float],
                    sweep_budget: int, plain_budget: int, plain_lr: float) -> List[Point]:
    """Every model at every LR of ``grid`` for ``sweep_budget`` bytes."""
    return plan_points(make, [(m, sweep_budget, lr) for m in models for lr in grid],
                       plain_budget, plain_lr)


def budget_points(make: MakePlans, models: Sequence[str], budgets: Sequence[int],
                  lrs: Dict[str, float], plain_budget: int, plain_lr: float) -> List[Point]:
    """Every model at every budget with its LR (``lrs``: chosen, or the size class's)."""
    return plan_points(make, [(m, b, lrs[m]) for b in budgets for m in models],
                       plain_budget, plain_lr)


def choose_lr(model: str, results: Dict[float, Optional[float]]) -> float:
    """The LR with the lowest selection bits per byte (a tie: the smaller LR); failed (None) and
    non-finite points never win; ValueError naming the model when every point failed."""
    good = [(bpb, lr) for lr, bpb in results.items() if bpb is not None and math.isfinite(bpb)]
    if not good:
        raise ValueError(f"{model}: every point of the LR sweep failed or diverged "
                         f"({', '.join(f'{lr:g}' for lr in sorted(results))}); try smaller "
                         "learning rates")
    return min(good)[1]
