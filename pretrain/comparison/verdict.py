"""Honest verdicts: whether each model's validation curve had flattened, whether a ranking at one
budget can be trusted, and where (if anywhere) MEGABYTE's bits-per-byte curve crosses a baseline's.

**Still improving.** The slope of a run's validation bits per byte against log2(training FLOPs),
least-squares over the validation points of its *last doubling* of training (step >= half the
final step; at least the last :data:`MIN_FIT_POINTS` points), in bits per byte per doubling of
compute. A model is *still improving* when the slope is below :data:`IMPROVING_SLOPE`
(-0.02 bits per byte per doubling), *getting worse* above +0.02 and *flat* in between.

**No verdict while the curves may still cross.** At one budget the leader of a pair (lower
held-out bits per byte) is declared ahead only when its advantage is at least what the trailing
model would gain in one more doubling of compute at its measured slope; otherwise the report says
"no verdict: curves still crossing".

**Crossovers** across budgets: the held-out bits per byte of the two models at each budget, the
difference's sign changes located by linear interpolation in log(FLOPs) between neighbouring
budgets ("no crossover in the measured range" when the sign never changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

IMPROVING_SLOPE = -0.02
"""Bits per byte per doubling of compute below which a curve counts as still improving."""
MIN_FIT_POINTS = 3
LEAD = "megabyte"


def convergence_slope(validations: Sequence[Dict[str, Any]]) -> Optional[float]:
    """Least-squares slope of ``val_bpb`` against log2(``train_flops``) (bits per byte per doubling)
    over the last doubling of training (at least :data:`MIN_FIT_POINTS` points when there are);
    None with fewer than two usable points."""
    pts = sorted((float(v["train_flops"]), float(v["val_bpb"])) for v in validations
                 if v.get("train_flops", 0) > 0 and math.isfinite(float(v["val_bpb"])))
    if len(pts) < 2:
        return None
    last = pts[-1][0]
    window = [p for p in pts if p[0] >= last / 2]
    if len(window) < MIN_FIT_POINTS:
        window = pts[-MIN_FIT_POINTS:]
    xs = [math.log2(f) for f, _ in window]
    ys = [b for _, b in window]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def trend(slope: Optional[float]) -> str:
    """``still improving`` / ``flat`` / ``getting worse`` / ``unknown`` for a slope."""
    if slope is None:
        return "unknown (too few validation points)"
    if slope < IMPROVING_SLOPE:
        return "still improving"
    return "getting worse" if slope > -IMPROVING_SLOPE else "flat"


def describe_trend(name: str, slope: Optional[float]) -> str:
    """``megabyte still improving (-0.110 bpb per doubling)``."""
    if slope is None:
        return f"{name} {trend(slope)}"
    return f"{name} {trend(slope)} ({slope:+.3f} bpb per doubling)"


@dataclass(frozen=True)
class PairVerdict:
    """MEGABYTE against one baseline at one budget."""

    baseline: str
    gap: float  # baseline bpb - MEGABYTE bpb: positive when MEGABYTE is ahead
    winner: Optional[str]  # None: no verdict, the curves may still cross
    text: str


def pair_verdict(bpb: Dict[str, float], slopes: Dict[str, Optional[float]], baseline: str,
                 lead: str = LEAD) -> PairVerdict:
    """The rule of the module docstring for ``lead`` vs ``baseline`` (held-out ``bpb`` and
    convergence ``slopes`` per model), worded for the report."""
    gap = bpb[baseline] - bpb[lead]
    leader, trailing = (lead, baseline) if gap > 0 else (baseline, lead)
    slope = slopes.get(trailing)
    gain = -slope if slope is not None and slope < IMPROVING_SLOPE else 0.0
    where = "ahead of" if gap > 0 else "behind"
    head = (f"at this budget {lead} is {abs(gap):.3f} bits/byte {where} {baseline}; "
            f"{describe_trend(lead, slopes.get(lead))}, "
            f"{describe_trend(baseline, slopes.get(baseline))}")
    if gap == 0:
        return PairVerdict(baseline, gap, None, head + ": no verdict: a tie")
    if abs(gap) < gain:
        return PairVerdict(baseline, gap, None, head + ": no verdict: curves still crossing "
                           f"({trailing} would gain {gain:.3f} bpb in one doubling, more than "
                           f"the {abs(gap):.3f} gap)")
    why = (f"{trailing} gains only {gain:.3f} bpb per doubling" if gain else f"{trailing} is not "
           "improving any more")
    return PairVerdict(baseline, gap, leader, head + f": {leader} leads at this budget ({why}, "
                       f"less than the {abs(gap):.3f} gap)")


def verdicts(bpb: Dict[str, float], slopes: Dict[str, Optional[float]],
             lead: str = LEAD) -> List[PairVerdict]:
    """:func:`pair_verdict` for every baseline in ``bpb`` (none when ``lead`` is absent)."""
    if lead not in bpb:
        return []
    return [pair_verdict(bpb, slopes, name, lead) for name in bpb if name != lead]


def crossover(curve: Sequence[Tuple[float, float]], other: Sequence[Tuple[float, float]]
              ) -> List[Tuple[float, str]]:
    """Where ``curve`` (lead) crosses ``other``: both are (training FLOPs, bpb) at the same
    budgets in increasing order. Each sign change of (lead - other) between neighbouring budgets,
    located by linear interpolation in log(FLOPs): (FLOPs, ``overtakes`` | ``falls behind``)."""
    if len(curve) != len(other):
        raise ValueError(f"crossover: {len(curve)} vs {len(other)} budgets")
    xs = [(math.log(a[0]) + math.log(b[0])) / 2 for a, b in zip(curve, other)]
    ds = [a[1] - b[1] for a, b in zip(curve, other)]
    found = []
    for i in range(len(ds) - 1):
        if (ds[i] > 0) != (ds[i + 1] > 0):
            t = ds[i] / (ds[i] - ds[i + 1]) if ds[i] != ds[i + 1] else 0.0
            found.append((math.exp(xs[i] + t * (xs[i + 1] - xs[i])),
                          "overtakes" if ds[i] > 0 else "falls behind"))
    return found


def crossover_lines(curves: Dict[str, Sequence[Tuple[float, float]]], lead: str = LEAD
                    ) -> List[str]:
    """One sentence per baseline on where ``lead`` overtakes or falls behind it."""
    if lead not in curves:
        return []
    lines = []
    for name, other in curves.items():
        if name == lead:
            continue
        if len(other) < 2:
            lines.append(f"{lead} vs {name}: one budget only, no crossover can be measured.")
            continue
        found = crossover(curves[lead], other)
        if found:
            lines.append(f"{lead} vs {name}: " + "; ".join(
                f"{lead} {how} {name} at ~{flops:.3g} training FLOPs" for flops, how in found)
                + " (linear interpolation in log FLOPs between budgets).")
        else:
            side = "ahead of" if curves[lead][0][1] < other[0][1] else "behind"
            lines.append(f"{lead} vs {name}: no crossover in the measured range ({lead} {side} "
                         f"{name} at every budget, {other[0][0]:.3g} to {other[-1][0]:.3g} FLOPs).")
    return lines
