"""MEGABYTE vs byte Transformers (full and windowed attention) vs a subword Transformer at
matched compute, on your data.

``python -m pretrain.compare [--stdlib | CORPUS ... | --data PREPARED] [--size tiny] [--budget-bytes N]``

1. Data: a raw corpus (default: Python's standard library source) is prepared once with
   ``python -m data_prep.prepare`` (byte shards, a SentencePiece model, token shards), or
   ``--data`` names an already prepared directory. A corpus that is one file (a book, an
   enwik8-style dump) is cut into ~64 KiB documents at line ends and split contiguously: its
   last ``--val-fraction`` of bytes are held out (the enwik8 convention).
2. Configs: MEGABYTE of the size class, then a byte Transformer (full attention), a byte
   Transformer with sliding-window attention over MEGABYTE's context (the strong byte baseline
   of later work) and a subword Transformer whose
   *training FLOPs per byte* match MEGABYTE's within 5% (the paper's formulas,
   ``pretrain.model.flops``); every model gets the same global batch in bytes and the same
   training bytes (``--budget-bytes``, or ``--budget-flops`` / FLOPs per byte). The subword model
   runs only on text: when less than 90% of the corpus's bytes are printable UTF-8 (audio,
   images, binary data) it is left out with one line saying why, before any training; a text
   corpus with a few non-UTF-8 bytes keeps it (those bytes become byte-fallback pieces, exactly).
3. Training through the engine (``pretrain.train``; ``--nproc N`` runs it under torchrun), each in
   its own run directory; finished runs are skipped and interrupted ones resume. ``--slurm``
   submits the unfinished ones as one Slurm job array instead (``launch.slurm --sweep``; the job
   ids go to ``OUT/slurm_job.json``), waits for it (a line on stderr whenever a task's state
   changes) and then goes on below. A task that failed, was cancelled or timed out ends the
   command with exit 2 naming the run and its Slurm log; running the command again resubmits
   the unfinished runs, which resume from their checkpoints. A run that diverged (too many
   non-finite steps in a row: resuming would replay the same batches) is not trained or
   submitted again unless ``--retry-diverged``; an LR-sweep point that diverged is left out of
   the choice. Ctrl-C (exit 130) stops only the waiting: the jobs keep running, and the same
   command, run again while they are queued or running, waits for them instead of submitting
   again. ``--no-wait`` submits and returns; ``--slurm-dry-run`` prints the job array script
   only.
4. Evaluation of all three on the *same* held-out bytes (``OUT/heldout.bin``) in basic, sliding
   and strided (MEGABYTE only) modes, exactly as ``python -m pretrain.evaluate --files
   OUT/heldout.bin`` reports them; gzip -9 and xz -6 on the same bytes as reference points.
5. ``OUT/report.md`` (table; per model whether its validation curve was still improving at the
   end, and MEGABYTE against each baseline, with no winner declared while the curves may still
   cross: :mod:`pretrain.comparison.verdict`), ``OUT/val_bpb_vs_flops.png`` and
   ``OUT/loss_curves.png``, and one JSON object on stdout. Running the command again continues
   where it stopped.

Sweeps (:mod:`pretrain.comparison.sweep`; neither runs by default):

* ``--lr-sweep [1e-3,2e-3,4e-3]`` (no values: 0.5x, 1x, 2x the size class's LR) trains every model
  at every LR for 1/4 of the largest budget, scores each on selection bytes of the validation split
  that follow the held-out bytes, and trains the full budget(s) with each model's best LR; the
  report shows the grid.
* ``--budgets 0.25x,0.5x,1x`` (multiples of the budget, or bytes: ``800K,3MiB``) trains every model
  at every budget, each its own run (a cosine schedule is not a prefix of a longer one); the report
  gives held-out bits per byte per budget and where MEGABYTE overtakes or falls behind each
  baseline, and ``OUT/bpb_vs_budget.png``; the main table is the largest budget's.

With ``--slurm`` the LR sweep is one job array (bookkeeping in ``OUT/lr_sweep/``), waited for
before the runs at the chosen LRs are planned, which are a second array (``OUT/slurm_job.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pretrain.comparison import report, runs, sweep, verdict
from pretrain.comparison.matching import (
    MATCH_TOLERANCE,
    MODEL_NAMES,
    SIZES,
    MatchedRun,
    bytes_per_token,
    plan_models,
)
from pretrain.comparison.runs import log
from pretrain.config import ConfigError


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    ap = argparse.ArgumentParser(prog="python -m pretrain.compare",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("corpus", nargs="*", type=Path, help="raw corpus files or directories")
    ap.add_argument("--stdlib", action="store_true", help="use Python's standard library (default)")
    ap.add_argument("--data", default=None, help="an already prepared data directory")
    ap.add_argument("--out", type=Path, default=Path("runs/compare"), help="output directory")
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    ap.add_argument("--models", default=None, metavar="NAMES",
                    help="train and report only these of the matched models, comma-separated "
                         f"(default: all of {', '.join(MODEL_NAMES)}; the subword model only "
                         "on text)")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--budget-bytes", type=int, default=None, help="training bytes per model")
    budget.add_argument("--budget-flops", type=float, default=None, help="training FLOPs per model")
    ap.add_argument("--vocab-size", type=int, default=4000, help="SentencePiece vocabulary")
    ap.add_argument("--max-corpus-bytes", type=int, default=16_000_000)
    ap.add_argument("--val-fraction", type=float, default=0.05,
                    help="share of documents held out (by a hash of their id); a corpus that "
                         "is one file is cut into ~64 KiB documents and its last bytes held out")
    ap.add_argument("--eval-bytes", type=int, default=65_536, help="held-out bytes to score")
    ap.add_argument("--modes", default="basic,sliding,strided")
    ap.add_argument("--nproc", type=int, default=1, help="processes per training run (torchrun)")
    ap.add_argument("--slurm", action="store_true",
                    help="train as one Slurm job array, wait for it, then evaluate and report")
    ap.add_argument("--no-wait", action="store_true",
                    help="with --slurm: submit and exit; run the same command again to wait for "
                         "the jobs (or find them finished) and report")
    ap.add_argument("--slurm-dry-run", action="store_true", help="print the job array script only")
    ap.add_argument("--lr-sweep", nargs="?", const="default", default=None, metavar="LRS",
                    help="choose each model's learning rate from these values (comma-separated; "
                         f"alone: {', '.join(f'{f:g}' for f in sweep.DEFAULT_LR_FACTORS)} x the "
                         "size class's LR) on a quarter of the largest budget, scored on "
                         "validation bytes that are not the held-out bytes")
    ap.add_argument("--budgets", default=None, metavar="LIST",
                    help="train every model at each of these budgets: multiples of the budget "
                         "(0.25x,0.5x,1x) or bytes (800K,3MiB); the report states crossovers")
    ap.add_argument("--retry-diverged", action="store_true",
                    help="train again the runs whose last attempt diverged (too many non-finite "
                         "steps in a row; by default they are reported as failed and not retried, "
                         "since resuming replays the same batches)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (repeatable), e.g. --set train.dtype=bf16")
    args = ap.parse_args(argv)
    if args.no_wait and not args.slurm:
        ap.error("--no-wait goes with --slurm")
    if args.lr_sweep and any(o.startswith("optim.lr=") for o in args.overrides):
        ap.error("--lr-sweep chooses the learning rate: drop --set optim.lr=...")
    try:
        check_args(args)
    except ValueError as err:
        ap.error(str(err))
    return args


def parse_modes(text: str) -> List[str]:
    """The evaluation modes of ``--modes``: known names, at least one, the first one (the mode of
    the convergence verdicts) one that every model has. ValueError naming the option."""
    from pretrain.inference.evaluation import MODES

    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        what = f"unknown mode(s) {', '.join(unknown)}" if unknown else "no mode given"
        raise ValueError(f"--modes: {what}; choose from {', '.join(MODES)}")
    if "strided" in modes[0]:
        raise ValueError(f"--modes: the first mode ({modes[0]}) decides the verdicts and must "
                         "apply to every model: start with basic or sliding (strided is "
                         "MEGABYTE's only)")
    return modes


def check_args(args: argparse.Namespace) -> None:
    """Every option checked before any data is prepared or any model trains (ValueError, one
    line naming the option); ``args.modes`` becomes the list of modes."""
    args.modes = parse_modes(args.modes)
    for name in ("budget_bytes", "budget_flops", "nproc", "eval_bytes", "vocab_size",
                 "max_corpus_bytes"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value:g}")
    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {args.val_fraction:g}")
    if args.lr_sweep:
        sweep.lr_grid(args.lr_sweep, SIZES[args.size]["lr"])
    if args.budgets:
        sweep.parse_budgets(args.budgets, 1, 1)  # the syntax only: the budget is known later


def matched_runs(args: argparse.Namespace, data_dir: Path, subword: bool,
                 budget_bytes: Optional[int] = None, lr: Optional[float] = None,
                 suffix: str = "", quiet: bool = False) -> List[MatchedRun]:
    """The matched configs for the prepared data (the subword model only when ``subword``), each
    printed (unless ``quiet``); a shape outside the FLOP tolerance is an error. ``budget_bytes``,
    ``lr`` and ``suffix`` (a sweep's run): that budget instead of the command's, that learning
    rate, runs named model + suffix."""
    bpt, sp_vocab = 1.0, 0
    if subword:
        import sentencepiece as spm

        bpt = bytes_per_token(json.loads((data_dir / "tokens" / "manifest.json").read_text()))
        sp_vocab = spm.SentencePieceProcessor(model_file=str(data_dir / "tokenizer.model")).get_piece_size()
    slurm = args.slurm or args.slurm_dry_run
    budget = (budget_bytes, None) if budget_bytes else (args.budget_bytes, args.budget_flops)
    plans = plan_models(args.size, data_dir, args.out, *budget, bpt, sp_vocab,
                        list(args.overrides), None if slurm else args.nproc, subword=subword,
                        lr=lr, suffix=suffix)
    base = plans[0].train_flops_per_byte
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(wanted) - set(MODEL_NAMES))
        if unknown:
            raise ValueError(f"--models: unknown model(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(MODEL_NAMES)}")
        if "transformer_subword" in wanted and not subword:
            raise ValueError("--models: transformer_subword cannot run on this corpus (see the "
                             "corpus line above)")
        plans = [p for p in plans if sweep.model_of(p.name) in wanted]
    for plan in [] if quiet else plans:
        m = plan.cfg.model
        log(f"{plan.name}: {plan.params / 1e6:.2f}M parameters, "
            f"{plan.train_flops_per_byte / 1e6:.3f} MFLOP/byte training "
            f"({plan.train_flops_per_byte / base - 1:+.1%} vs MEGABYTE), width "
            f"{m.global_model.dim} x {m.global_model.layers} layers, context {m.seq_len}")
        if abs(plan.train_flops_per_byte / base - 1) > MATCH_TOLERANCE:
            raise RuntimeError(f"{plan.name}: no shape within {MATCH_TOLERANCE:.0%} of "
                               "MEGABYTE's FLOPs per byte")
    return plans


def train_on_slurm(args: argparse.Namespace, plans: List[MatchedRun], out: Path) -> bool:
    """Submit the unfinished runs to Slurm, or find the submission of an earlier invocation still
    queued or running (``OUT/slurm_job.json``), and wait for it; False when the command ends
    here (``--slurm-dry-run``, ``--no-wait``) after printing what it did as JSON."""
    slurm = [o for o in args.overrides if o.startswith("slurm.")]
    if args.slurm_dry_run:
        print(json.dumps(runs.submit_slurm(plans, out, True, slurm, args.retry_diverged)))
        return False
    record = runs.job_active(out)
    if record is not None:
        log(f"Slurm job {record['job_id']} (submitted {record['submitted']}) is still queued or "
            "running: waiting for it instead of submitting again")
        submitted: Dict[str, Any] = {"submitted": False, "job": record}
    else:
        submitted = runs.submit_slurm(plans, out, False, slurm, args.retry_diverged)
        record = submitted["job"]
    if args.no_wait:
        log(f"not waiting (--no-wait): run the same command again to wait for Slurm job "
            f"{record['job_id']} (or find it finished) and report")
        print(json.dumps(submitted))
        return False
    runs.wait_slurm(record, plans)
    # Not in that submission (e.g. a run directory deleted meanwhile): never train here. (A run
    # that diverged in it made wait_slurm raise; one left out as diverged earlier is not missing.)
    missing = [p.name for p in plans if runs.to_train(p, retry_diverged=False)]
    if missing:
        raise RuntimeError(f"{', '.join(missing)}: not trained by Slurm job {record['job_id']}; "
                           "run the same command again to submit them")
    return True


def train_here_or_on_slurm(args: argparse.Namespace, plans: List[MatchedRun], book: Path) -> bool:
    """Train the unfinished runs as one Slurm job array (bookkeeping in ``book``) when asked and
    wait for it; False when the command ends here (``--slurm-dry-run``, ``--no-wait``). Runs
    not trained on Slurm train here afterwards (:func:`runs.train` skips finished ones)."""
    if (args.slurm or args.slurm_dry_run) and any(runs.to_train(p, args.retry_diverged)
                                                   for p in plans):
        return train_on_slurm(args, plans, book)
    return True


@dataclass
class Sweeps:
    """What the sweeps measured: the LR grid (empty without ``--lr-sweep``) and the budget runs."""

    grid: Dict[str, Dict[float, Optional[float]]]
    chosen: Dict[str, float]
    sweep_bytes: int
    points: List[sweep.Point]


def select_lrs(args: argparse.Namespace, make: sweep.MakePlans, models: List[str],
               budgets: List[int], plain: Tuple[int, float], data_dir: Path
               ) -> Optional[Tuple[Dict[str, Dict[float, Optional[float]]], int]]:
    """The LR sweep (one Slurm array, bookkeeping in ``OUT/lr_sweep``): every model at every
    grid LR for :data:`sweep.LR_SWEEP_FRACTION` of the largest budget, scored on the selection
    bytes; (model -> LR -> selection bits per byte, None for a failed point; the sweep's bytes),
    or None when the command ends before the choice (``--no-wait``, ``--slurm-dry-run``)."""
    s = SIZES[args.size]
    grid = sweep.lr_grid(args.lr_sweep, s["lr"])
    sweep_bytes = sweep.whole_batches(sweep.LR_SWEEP_FRACTION * budgets[-1], s["micro"] * s["T"])
    points = sweep.lr_sweep_points(make, models, grid, sweep_bytes, *plain)
    selection = args.out / "selection.bin"
    runs.write_heldout(data_dir, selection, args.eval_bytes, start=args.eval_bytes)
    book = args.out / "lr_sweep"
    log(f"LR sweep: {len(points)} runs of {sweep_bytes:,} bytes, learning rates "
        f"{', '.join(f'{lr:g}' for lr in grid)}")
    try:
        if not train_here_or_on_slurm(args, [p.plan for p in points], book):
            return None
        slurm_failed = False
    except RuntimeError as err:  # a failed task: its point is out of the choice, the rest count
        log(f"LR sweep: {err}")
        slurm_failed = True
    results: Dict[str, Dict[float, Optional[float]]] = {m: {} for m in models}
    for p in points:
        bpb = None
        # After a failed Slurm array its unfinished points are out (never trained here instead).
        # (finished() outside the try: a directory holding another config is an error, not a
        # failed point.)
        if runs.finished(p.plan) or not slurm_failed:
            try:
                runs.train(p.plan, book, args.nproc, args.retry_diverged)
                scored = runs.evaluate(p.plan, selection, ["basic"], args.out, "eval_selection")
                bpb = scored["results"]["basic"]["bpb"]
            except RuntimeError as err:  # diverged or crashed: it cannot be chosen
                log(f"LR sweep: {p.plan.name} failed, left out of the choice ({err})")
        results[p.model][p.lr] = bpb
    return results, sweep_bytes


def run_sweeps(args: argparse.Namespace, plans: List[MatchedRun], data_dir: Path,
               subword: bool) -> Optional[Sweeps]:
    """``--lr-sweep`` then ``--budgets``: the runs at every budget with each model's LR, trained
    (a second Slurm array); None when the command ends early (``--no-wait``, dry run)."""
    s = SIZES[args.size]
    batch = s["micro"] * s["T"]
    plain = (plans[0].cfg.train.max_steps * batch, s["lr"])  # the plain comparison's run
    models = [p.name for p in plans]
    budgets = (sweep.parse_budgets(args.budgets, plain[0], batch) if args.budgets
               else [plain[0]])

    def make(budget: int, lr: float, suffix: str) -> List[MatchedRun]:
        return matched_runs(args, data_dir, subword, budget, lr, suffix, quiet=True)

    grid: Dict[str, Dict[float, Optional[float]]] = {}
    chosen, sweep_bytes = {m: float(s["lr"]) for m in models}, 0
    if args.lr_sweep:
        selected = select_lrs(args, make, models, budgets, plain, data_dir)
        if selected is None:
            return None
        grid, sweep_bytes = selected
        chosen = {m: sweep.choose_lr(m, grid[m]) for m in models}
        log("LR sweep: chosen " + ", ".join(f"{m} {lr:g}" for m, lr in chosen.items()))
    points = sweep.budget_points(make, models, budgets, chosen, *plain)
    if not train_here_or_on_slurm(args, [p.plan for p in points], args.out):
        return None
    return Sweeps(grid, chosen, sweep_bytes, points)


def sweep_sections(args: argparse.Namespace, found: Sweeps, mode: str
                   ) -> Tuple[List[str], Dict[str, Any]]:
    """Train and score every budget run (the largest budget's in every mode elsewhere); the
    report sections (LR grid, budgets and crossovers) and their JSON; ``OUT/bpb_vs_budget.png``."""
    sections, summary = [], {}
    if found.grid:
        sections.append(report.lr_grid_section(found.grid, found.chosen, found.sweep_bytes,
                                               args.eval_bytes))
        summary["lr_sweep"] = {"sweep_bytes": found.sweep_bytes, "chosen": found.chosen,
                               "grid": {m: {f"{lr:g}": v for lr, v in row.items()}
                                        for m, row in found.grid.items()}}
    if args.budgets:
        curves: Dict[str, List[Dict[str, Any]]] = {}
        for p in sorted(found.points, key=lambda p: p.budget):
            done = runs.train(p.plan, args.out, args.nproc, args.retry_diverged)
            bpb = runs.evaluate(p.plan, args.out / "heldout.bin", [mode], args.out,
                                "eval_budgets")["results"][mode]["bpb"]
            curves.setdefault(p.model, []).append(
                {"bytes": p.budget, "bytes_seen": done["bytes_seen"],
                 "flops": done["bytes_seen"] * p.plan.train_flops_per_byte,
                 "bpb": bpb, "lr": p.lr, "run": p.plan.name})
        lines = verdict.crossover_lines({m: [(c["flops"], c["bpb"]) for c in curve]
                                         for m, curve in curves.items()})
        sections.append(report.budget_section(curves, mode, lines))
        summary.update(budgets=curves, crossovers=lines,
                       budget_plot=report.plot_budgets(args.out, curves, mode))
    return sections, summary


def run_comparison(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Prepare, plan, train (here or on Slurm; sweeps first when asked), evaluate, report; None
    when the command ends before the report (``--slurm-dry-run``, ``--no-wait``)."""
    out, modes = args.out, args.modes
    out.mkdir(parents=True, exist_ok=True)
    data_dir, kind, subword = runs.prepare_data(args, out)
    plans = matched_runs(args, data_dir, subword)
    heldout = out / "heldout.bin"
    text = runs.write_heldout(data_dir, heldout, args.eval_bytes)
    sections: List[str] = []
    extra: Dict[str, Any] = {}
    if args.lr_sweep or args.budgets:
        found = run_sweeps(args, plans, data_dir, subword)
        if found is None:
            return None
        top = max(p.budget for p in found.points)
        plans = [p.plan for p in found.points if p.budget == top]  # the table: the largest budget
        sections, extra = sweep_sections(args, found, modes[0])
    elif not train_here_or_on_slurm(args, plans, out):
        return None
    trained = {p.name: runs.train(p, out, args.nproc, args.retry_diverged) for p in plans}
    evals = {p.name: runs.evaluate(p, heldout, modes, out) for p in plans}
    convergence = converged(plans, evals, modes[0])
    sections.insert(0, report.convergence_section(convergence["slopes"], convergence["verdicts"]))
    refs = {"byte unigram": report.unigram_entropy(text), **report.compressor_bpb(text)}
    bpw = report.bytes_per_word(text)
    notes = report.corpus_notes(kind, subword, data_dir / "bytes")
    images = ["bpb_vs_budget.png"] if "budget_plot" in extra else []
    table = report.write_report(out, plans, trained, evals, refs, bpw, len(text), modes, notes,
                                sections, images)
    plots = report.plot(out, plans) + ([extra.pop("budget_plot")] if images else [])
    print("\n" + table + "\n\n" + "\n\n".join(sections) + "\n", file=sys.stderr)
    return {"report": str(out / "report.md"), "plots": plots, "heldout_bytes": len(text),
            "references": refs, "bytes_per_word": bpw, "text_share": kind.text_share,
            "subword": subword, "convergence": convergence, **extra,
            "models": {sweep.model_of(p.name): {
                "run": p.name, "params": p.params, "train_flops_per_byte": p.train_flops_per_byte,
                "lr": p.cfg.optim.lr, "run_dir": p.cfg.run_dir, "training": trained[p.name],
                "eval": evals[p.name]["results"]} for p in plans}}


def converged(plans: List[MatchedRun], evals: Dict[str, Dict[str, Any]], mode: str
              ) -> Dict[str, Any]:
    """Each model's convergence slope (its run's validation curve) and MEGABYTE's verdict
    against each baseline on the held-out bits per byte of ``mode``."""
    slopes = {sweep.model_of(p.name): verdict.convergence_slope(
        json.loads((Path(p.cfg.run_dir) / "validation.json").read_text())) for p in plans}
    bpb = {sweep.model_of(p.name): evals[p.name]["results"][mode]["bpb"] for p in plans}
    found = verdict.verdicts(bpb, slopes)
    return {"mode": mode, "slopes": slopes,
            "trends": {m: verdict.trend(v) for m, v in slopes.items()},
            "verdicts": [v.text for v in found],
            "winners": {v.baseline: v.winner for v in found}}


def main(argv: Optional[List[str]] = None) -> int:
    """The command: 0 with the report; 2 on an error (a failed Slurm job included); 130 when
    Ctrl-C stopped the waiting for Slurm."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        summary = run_comparison(args)
    except runs.WaitInterrupted as stop:
        print(stop, file=sys.stderr)
        return 130
    except (ConfigError, OSError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary is None:
        return 0
    print(f"report: {summary['report']}; plots: {', '.join(summary['plots'])}; "
          f"{(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
