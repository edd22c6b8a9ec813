"""MEGABYTE vs byte Transformers (full and windowed attention) vs a subword Transformer at
matched compute, on your data.

``python -m pretrain.compare [--stdlib | CORPUS ... | --data PREPARED] [--size tiny] [--budget-bytes N]``

1. Data: a raw corpus (default: Python's standard library source) is prepared once with
   ``python -m data_prep.prepare`` (byte shards, a SentencePiece model, token shards), or
   ``--data`` names an already prepared directory.
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
   the unfinished runs, which resume from their checkpoints. Ctrl-C (exit 130) stops only the
   waiting: the jobs keep running, and the same command, run again while they are queued or
   running, waits for them instead of submitting again. ``--no-wait`` submits and returns;
   ``--slurm-dry-run`` prints the job array script only.
4. Evaluation of all three on the *same* held-out bytes (``OUT/heldout.bin``) in basic, sliding
   and strided (MEGABYTE only) modes, exactly as ``python -m pretrain.evaluate --files
   OUT/heldout.bin`` reports them; gzip -9 and xz -6 on the same bytes as reference points.
5. ``OUT/report.md`` (table), ``OUT/val_bpb_vs_flops.png`` and ``OUT/loss_curves.png``, and one
   JSON object on stdout. Running the command again continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from pretrain.comparison import report, runs
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
                    help="share of documents held out (by a hash of their id)")
    ap.add_argument("--eval-bytes", type=int, default=65_536, help="held-out bytes to score")
    ap.add_argument("--modes", default="basic,sliding,strided")
    ap.add_argument("--nproc", type=int, default=1, help="processes per training run (torchrun)")
    ap.add_argument("--slurm", action="store_true",
                    help="train as one Slurm job array, wait for it, then evaluate and report")
    ap.add_argument("--no-wait", action="store_true",
                    help="with --slurm: submit and exit; run the same command again to wait for "
                         "the jobs (or find them finished) and report")
    ap.add_argument("--slurm-dry-run", action="store_true", help="print the job array script only")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (repeatable), e.g. --set train.dtype=bf16")
    args = ap.parse_args(argv)
    if args.no_wait and not args.slurm:
        ap.error("--no-wait goes with --slurm")
    return args


def matched_runs(args: argparse.Namespace, data_dir: Path, subword: bool) -> List[MatchedRun]:
    """The matched configs for the prepared data (the subword model only when ``subword``), each
    printed; a shape outside the FLOP tolerance is an error."""
    bpt, sp_vocab = 1.0, 0
    if subword:
        import sentencepiece as spm

        bpt = bytes_per_token(json.loads((data_dir / "tokens" / "manifest.json").read_text()))
        sp_vocab = spm.SentencePieceProcessor(model_file=str(data_dir / "tokenizer.model")).get_piece_size()
    slurm = args.slurm or args.slurm_dry_run
    plans = plan_models(args.size, data_dir, args.out, args.budget_bytes, args.budget_flops, bpt,
                        sp_vocab, list(args.overrides), None if slurm else args.nproc,
                        subword=subword)
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
        plans = [p for p in plans if p.name in wanted]
    for plan in plans:
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
        print(json.dumps(runs.submit_slurm(plans, out, True, slurm)))
        return False
    record = runs.job_active(out)
    if record is not None:
        log(f"Slurm job {record['job_id']} (submitted {record['submitted']}) is still queued or "
            "running: waiting for it instead of submitting again")
        submitted: Dict[str, Any] = {"submitted": False, "job": record}
    else:
        submitted = runs.submit_slurm(plans, out, False, slurm)
        record = submitted["job"]
    if args.no_wait:
        log(f"not waiting (--no-wait): run the same command again to wait for Slurm job "
            f"{record['job_id']} (or find it finished) and report")
        print(json.dumps(submitted))
        return False
    runs.wait_slurm(record, plans)
    missing = [p.name for p in plans if not runs.finished(p)]
    if missing:  # not in that submission (e.g. a run directory deleted meanwhile): never train here
        raise RuntimeError(f"{', '.join(missing)}: not trained by Slurm job {record['job_id']}; "
                           "run the same command again to submit them")
    return True


def run_comparison(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Prepare, plan, train (here or on Slurm), evaluate, report; None when the command ends
    before the report (``--slurm-dry-run``, ``--no-wait``)."""
    out, modes = args.out, [m.strip() for m in args.modes.split(",") if m.strip()]
    out.mkdir(parents=True, exist_ok=True)
    data_dir, kind, subword = runs.prepare_data(args, out)
    plans = matched_runs(args, data_dir, subword)
    heldout = out / "heldout.bin"
    text = runs.write_heldout(data_dir, heldout, args.eval_bytes)
    if (args.slurm or args.slurm_dry_run) and any(not runs.finished(p) for p in plans):
        if not train_on_slurm(args, plans, out):
            return None
    trained = {p.name: runs.train(p, out, args.nproc) for p in plans}
    evals = {p.name: runs.evaluate(p, heldout, modes, out) for p in plans}
    refs = {"byte unigram": report.unigram_entropy(text), **report.compressor_bpb(text)}
    bpw = report.bytes_per_word(text)
    notes = report.corpus_notes(kind, subword, data_dir / "bytes")
    table = report.write_report(out, plans, trained, evals, refs, bpw, len(text), modes, notes)
    plots = report.plot(out, plans)
    print("\n" + table + "\n", file=sys.stderr)
    return {"report": str(out / "report.md"), "plots": plots, "heldout_bytes": len(text),
            "references": refs, "bytes_per_word": bpw, "text_share": kind.text_share,
            "subword": subword,
            "models": {p.name: {"params": p.params, "train_flops_per_byte": p.train_flops_per_byte,
                                "run_dir": p.cfg.run_dir, "training": trained[p.name],
                                "eval": evals[p.name]["results"]} for p in plans}}


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
