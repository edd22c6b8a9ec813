"""The comparison's sweeps and verdicts (pretrain.comparison.sweep / verdict / report), on
synthetic numbers: planning, the LR choice, the "still improving" rule, crossovers, the report."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretrain.comparison import report, sweep, verdict

BATCH = 4096  # the tiny size's global batch in bytes (8 x 512)
PLAIN = (16384, 2e-3)  # the plain comparison's budget and LR


def fake_make(calls):
    """A stand-in for the matched planner: records each (budget, lr, suffix) call and returns
    plans whose run directory is OUT/runs/<model><suffix>, as plan_models names them."""
    def make(budget, lr, suffix):
        calls.append((budget, lr, suffix))
        return [SimpleNamespace(name=m + suffix, cfg=SimpleNamespace(run_dir=f"runs/{m}{suffix}"))
                for m in ("megabyte", "transformer_bytes", "transformer_subword")]
    return make


def test_lr_grid_values_default_and_bad_input():
    assert sweep.lr_grid("4e-3, 1e-3,2e-3,1e-3", 2e-3) == [1e-3, 2e-3, 4e-3]
    assert sweep.lr_grid("default", 2e-3) == pytest.approx([1e-3, 2e-3, 4e-3])
    assert sweep.lr_grid(None, 1e-3) == pytest.approx([5e-4, 1e-3, 2e-3])
    for bad, message in (("1e-3,fast", "not a learning rate: 'fast'"),
                         ("0,1e-3", "must be positive: '0'"), ("-1e-3", "must be positive")):
        with pytest.raises(ValueError, match=message):
            sweep.lr_grid(bad, 2e-3)


def test_budgets_are_multiples_or_sizes_in_whole_batches():
    assert sweep.parse_budgets("0.25x,0.5x,1x,2x", 16384, BATCH) == [4096, 8192, 16384, 32768]
    # Sizes are powers of 1024, rounded up to whole global batches; duplicates collapse.
    assert sweep.parse_budgets("8K, 5000, 1x, 16384", 16384, BATCH) == [8192, 16384]
    assert sweep.parse_budgets("0.01x", 16384, BATCH) == [BATCH]  # at least one batch
    for bad in ("2y", "x", "-1x", "0x", "lots", ""):
        with pytest.raises(ValueError, match="--budgets"):
            sweep.parse_budgets(bad, 16384, BATCH)


def test_run_names_plain_run_and_one_call_per_budget_and_lr():
    calls = []
    points = sweep.lr_sweep_points(fake_make(calls), ["megabyte", "transformer_bytes"],
                                   [1e-3, 2e-3], 4096, *PLAIN)
    assert [(p.model, p.budget, p.lr) for p in points] == [
        ("megabyte", 4096, 1e-3), ("megabyte", 4096, 2e-3),
        ("transformer_bytes", 4096, 1e-3), ("transformer_bytes", 4096, 2e-3)]
    assert [c[:2] for c in calls] == [(4096, 1e-3), (4096, 2e-3)]  # one plan call per (budget, lr)
    assert points[0].plan.name == "megabyte-4096B-lr0.001"
    assert points[0].plan.cfg.run_dir == "runs/megabyte-4096B-lr0.001"
    # The plain comparison's budget at the size class's LR is the plain run's directory.
    assert sweep.run_suffix(16384, 2e-3, *PLAIN) == ""
    assert sweep.run_suffix(16384, 4e-3, *PLAIN) == "-16384B-lr0.004"
    assert sweep.run_suffix(32768, 2e-3, *PLAIN) == "-32768B-lr0.002"
    assert sweep.model_of("transformer_bytes-4096B-lr0.001") == "transformer_bytes"


def test_budget_runs_each_budget_its_own_run_and_identical_triples_shared():
    calls = []
    chosen = {"megabyte": 4e-3, "transformer_subword": 2e-3}
    points = sweep.budget_points(fake_make(calls), list(chosen), [4096, 16384], chosen, *PLAIN)
    names = [p.plan.name for p in points]
    assert names == ["megabyte-4096B-lr0.004", "transformer_subword-4096B-lr0.002",
                     "megabyte-16384B-lr0.004", "transformer_subword"]
    assert len(set(names)) == len(names)  # never one run for two budgets (cosine: no prefix)
    # The LR sweep at 1/4 of the largest budget used the same names: the chosen point is reused.
    sweep_names = {p.plan.name for p in sweep.lr_sweep_points(
        fake_make([]), list(chosen), [2e-3, 4e-3], 4096, *PLAIN)}
    assert {"megabyte-4096B-lr0.004", "transformer_subword-4096B-lr0.002"} <= sweep_names
    assert sweep.whole_batches(sweep.LR_SWEEP_FRACTION * 16384, BATCH) == 4096


def test_choose_lr_min_tie_and_failed_points():
    assert sweep.choose_lr("m", {1e-3: 3.2, 2e-3: 3.1, 4e-3: 3.3}) == 2e-3
    assert sweep.choose_lr("m", {4e-3: 3.1, 1e-3: 3.1, 2e-3: 3.5}) == 1e-3  # tie: smaller LR
    assert sweep.choose_lr("m", {1e-3: 3.4, 2e-3: float("nan"), 4e-3: None}) == 1e-3
    assert sweep.choose_lr("m", {1e-3: 3.4, 8e-3: float("-inf") * 0}) == 1e-3  # NaN again
    with pytest.raises(ValueError, match="transformer_bytes: every point of the LR sweep failed"):
        sweep.choose_lr("transformer_bytes", {1e-3: None, 2e-3: float("nan")})


def curve(bpb_at, steps=(100, 200, 300, 400, 500, 600, 700, 800), flops_per_step=1e9):
    return [{"step": s, "train_flops": s * flops_per_step, "val_bpb": bpb_at(s)} for s in steps]


def test_still_improving_rule_on_synthetic_curves():
    steep = curve(lambda s: 6.0 - 0.11 * math.log2(s))
    assert verdict.convergence_slope(steep) == pytest.approx(-0.11)
    assert verdict.trend(-0.11) == "still improving"
    # Steep early, flat over the last doubling (steps 400-800): flat.
    knee = curve(lambda s: 3.41 if s >= 400 else 3.41 + (400 - s) / 100)
    assert verdict.convergence_slope(knee) == pytest.approx(0.0)
    assert verdict.trend(verdict.convergence_slope(knee)) == "flat"
    assert verdict.trend(-0.019) == "flat" and verdict.trend(-0.021) == "still improving"
    assert verdict.trend(0.05) == "getting worse" and verdict.trend(None).startswith("unknown")
    # Few points: the last three; one point: no slope.
    assert verdict.convergence_slope(curve(lambda s: 4 - math.log2(s), steps=(1, 2, 3))) == \
        pytest.approx(-1.0)
    assert verdict.convergence_slope(curve(lambda s: 4.0, steps=(8,))) is None


def test_no_verdict_while_curves_still_cross_and_a_clear_winner():
    # The numbers: MEGABYTE 0.25 behind, still falling 0.11 per doubling: winner?
    # 0.25 > 0.11: the byte Transformer leads at this budget.
    slopes = {"megabyte": -0.11, "transformer_bytes": -0.001, "transformer_subword": -0.01}
    clear = verdict.pair_verdict({"megabyte": 3.66, "transformer_bytes": 3.41}, slopes,
                                 "transformer_bytes")
    assert clear.winner == "transformer_bytes" and clear.gap == pytest.approx(-0.25)
    assert clear.text.startswith("at this budget megabyte is 0.250 bits/byte behind "
                                 "transformer_bytes; megabyte still improving (-0.110 bpb per "
                                 "doubling), transformer_bytes flat (-0.001 bpb per doubling)")
    assert "transformer_bytes leads at this budget" in clear.text
    # 0.05 behind but gaining 0.11 per doubling: no verdict.
    close = verdict.pair_verdict({"megabyte": 3.46, "transformer_bytes": 3.41}, slopes,
                                 "transformer_bytes")
    assert close.winner is None and "no verdict: curves still crossing" in close.text
    # MEGABYTE ahead; the trailing subword model is flat: MEGABYTE leads.
    ahead = verdict.pair_verdict({"megabyte": 3.30, "transformer_subword": 3.32}, slopes,
                                 "transformer_subword")
    assert ahead.winner == "megabyte" and "0.020 bits/byte ahead of" in ahead.text
    both = verdict.verdicts({"megabyte": 3.46, "transformer_bytes": 3.41,
                             "transformer_subword": 3.32}, slopes)
    assert [v.baseline for v in both] == ["transformer_bytes", "transformer_subword"]
    assert verdict.verdicts({"transformer_bytes": 3.4}, slopes) == []


def test_crossover_by_log_flops_interpolation():
    flops = [1e12, 2e12, 4e12, 8e12]
    mega = [(f, b) for f, b in zip(flops, (4.0, 3.6, 3.3, 3.1))]
    byte = [(f * 1.02, b) for f, b in zip(flops, (3.8, 3.5, 3.4, 3.35))]
    (at, how), = verdict.crossover(mega, byte)
    # Between 2e12 (0.1 behind) and 4e12 (0.1 ahead): halfway in log FLOPs, ~2.83e12 x 1.01.
    assert how == "overtakes" and at == pytest.approx(math.sqrt(2e12 * 4e12) * 1.01, rel=1e-3)
    lines = verdict.crossover_lines({"megabyte": mega, "transformer_bytes": byte,
                                     "transformer_window": [(f, b - 0.5) for f, b in mega]})
    assert lines[0].startswith("megabyte vs transformer_bytes: megabyte overtakes "
                               "transformer_bytes at ~2.86e+12 training FLOPs")
    assert lines[1].startswith("megabyte vs transformer_window: no crossover in the measured range "
                               "(megabyte behind transformer_window at every budget")
    back = verdict.crossover(byte, mega)
    assert [h for _, h in back] == ["falls behind"]
    assert "one budget only" in verdict.crossover_lines({"megabyte": mega[:1], "x": byte[:1]})[0]


def test_report_sections_render_grid_verdicts_and_budgets(tmp_path: Path):
    grid = {"megabyte": {1e-3: 3.71, 2e-3: 3.62, 4e-3: None},
            "transformer_bytes": {1e-3: 3.55, 2e-3: 3.41, 4e-3: float("nan")}}
    text = report.lr_grid_section(grid, {"megabyte": 2e-3, "transformer_bytes": 2e-3}, 819200,
                                  65536)
    assert "| model | lr 0.001 | lr 0.002 | lr 0.004 |" in text
    assert "| megabyte | 3.7100 | **3.6200** | failed |" in text
    assert "| transformer_bytes | 3.5500 | **3.4100** | failed |" in text
    assert "819,200 bytes" in text and "not the bytes of the table above" in text
    assert "beyond the grid" not in text  # both chose the middle LR
    # A choice at the grid's edge is flagged with a wider grid to try; inside it is not.
    edge = report.lr_grid_section(grid, {"megabyte": 1e-3, "transformer_bytes": 2e-3}, 819200,
                                  65536)
    assert ("* megabyte: the choice is the grid's lowest LR (0.001), so its best LR may lie beyond "
            "the grid; extend it (e.g. --lr-sweep 0.0005,0.001,0.002,0.004)") in edge
    assert "transformer_bytes: the choice" not in edge
    assert "highest LR (0.004)" in report.grid_edge_note("m", {1e-3: 3.0, 4e-3: 2.9}, 4e-3)
    assert report.grid_edge_note("m", {1e-3: 3.0}, 1e-3) == ""
    conv = report.convergence_section({"megabyte": -0.11, "transformer_bytes": 0.0},
                                      ["at this budget megabyte is ...: no verdict: curves still "
                                       "crossing (x)"])
    assert "* megabyte still improving (-0.110 bpb per doubling)" in conv
    assert "* transformer_bytes flat (+0.000 bpb per doubling)" in conv
    assert "* At this budget megabyte is ...: no verdict: curves still crossing" in conv
    curves = {m: [{"bytes": b, "flops": b * 1e6, "bpb": 4 - i / 10 - (m == "megabyte") / 20,
                   "lr": 2e-3} for i, b in enumerate((819200, 3276800))]
              for m in ("megabyte", "transformer_bytes")}
    budgets = report.budget_section(curves, "basic", ["megabyte vs transformer_bytes: no crossover"])
    assert "a shorter budget is not a prefix of a longer run" in budgets
    assert "| model | lr | 819,200 bytes | 3,276,800 bytes |" in budgets
    assert "| megabyte | 0.002 | 3.9500 | 3.8500 |" in budgets
    assert budgets.endswith("* megabyte vs transformer_bytes: no crossover")
    png = Path(report.plot_budgets(tmp_path, curves, "basic"))
    assert png.name == "bpb_vs_budget.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
