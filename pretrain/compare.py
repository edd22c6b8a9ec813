"""MEGABYTE vs a byte Transformer vs a subword Transformer at matched compute, on your data.

``python -m pretrain.compare [--stdlib | CORPUS ... | --data PREPARED] [--size tiny] [--budget-bytes N]``

1. Data: a raw corpus (default: Python's standard library source) is prepared once with
   ``python -m data_prep.prepare`` (byte shards, a SentencePiece model, token shards), or
   ``--data`` names an already prepared directory.
2. Configs: MEGABYTE of the size class, then a byte Transformer and a subword Transformer whose
   *training FLOPs per byte* match MEGABYTE's within 5% (the paper's formulas,
   ``pretrain.model.flops``); every model gets the same global batch in bytes and the same
   training bytes (``--budget-bytes``, or ``--budget-flops`` / FLOPs per byte).
3. Training through the engine (``pretrain.train``; ``--nproc N`` runs it under torchrun), each in
   its own run directory; finished runs are skipped and interrupted ones resume. ``--slurm``
   submits them as one job array instead (``launch.slurm --sweep``); the same command run again
   after the jobs finished evaluates and reports.
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
from pretrain.comparison.matching import MATCH_TOLERANCE, SIZES, MatchedRun, bytes_per_token, plan_models
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
                    help="submit the training runs as one Slurm job array and exit; run the same "
                         "command again once they finished to evaluate and report")
    ap.add_argument("--slurm-dry-run", action="store_true", help="print the job array script only")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (repeatable), e.g. --set train.dtype=bf16")
    return ap.parse_args(argv)


def matched_runs(args: argparse.Namespace, data_dir: Path) -> List[MatchedRun]:
    """The three matched configs for the prepared data, each printed; a shape outside the FLOP
    tolerance is an error."""
    import sentencepiece as spm

    bpt = bytes_per_token(json.loads((data_dir / "tokens" / "manifest.json").read_text()))
    sp_vocab = spm.SentencePieceProcessor(model_file=str(data_dir / "tokenizer.model")).get_piece_size()
    plans = plan_models(args.size, data_dir, args.out, args.budget_bytes, args.budget_flops, bpt,
                        sp_vocab, list(args.overrides))
    base = plans[0].train_flops_per_byte
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


def run_comparison(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Prepare, plan, train, evaluate, report; None when the runs were handed to Slurm."""
    out, modes = args.out, [m.strip() for m in args.modes.split(",") if m.strip()]
    out.mkdir(parents=True, exist_ok=True)
    data_dir = runs.prepare_data(args, out)
    plans = matched_runs(args, data_dir)
    heldout = out / "heldout.bin"
    text = runs.write_heldout(data_dir, heldout, args.eval_bytes)
    if (args.slurm or args.slurm_dry_run) and any(not runs.finished(p) for p in plans):
        slurm = [o for o in args.overrides if o.startswith("slurm.")]
        print(json.dumps(runs.submit_slurm(plans, out, args.slurm_dry_run, slurm)))
        return None
    trained = {p.name: runs.train(p, out, args.nproc) for p in plans}
    evals = {p.name: runs.evaluate(p, heldout, modes, out) for p in plans}
    refs = {"byte unigram": report.unigram_entropy(text), **report.compressor_bpb(text)}
    bpw = report.bytes_per_word(text)
    table = report.write_report(out, plans, trained, evals, refs, bpw, len(text), modes)
    plots = report.plot(out, plans)
    print("\n" + table + "\n", file=sys.stderr)
    return {"report": str(out / "report.md"), "plots": plots, "heldout_bytes": len(text),
            "references": refs, "bytes_per_word": bpw,
            "models": {p.name: {"params": p.params, "train_flops_per_byte": p.train_flops_per_byte,
                                "run_dir": p.cfg.run_dir, "training": trained[p.name],
                                "eval": evals[p.name]["results"]} for p in plans}}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        summary = run_comparison(args)
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
