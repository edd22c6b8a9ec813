"""Bits per byte of a checkpoint on held-out data or on any files, in the paper's modes.

``python -m pretrain.evaluate --checkpoint RUN_DIR [--files F ...] [--modes basic,sliding,strided]
[--compile]``

Modes: basic, sliding (stride T/2 unless --stride), strided (MEGABYTE only: two passes offset by
P/2) and sliding_strided (both; the paper's best). Every byte is scored exactly once in each
mode; the subword baseline is divided by the exact byte count of the same text. Prints one JSON
object on stdout; progress goes to stderr. ``--compile`` scores with the model's forward
torch.compile'd (inductor unless a backend is named; full windows share one graph): the same bits
per byte as eager, faster on long evaluations once the first window has paid for compilation.

Scoring is always in fp32, whatever ``train.dtype`` the run trained in, so that every model and
``pretrain.compare`` are scored alike. A bf16 run's logged validation (``validation.json``,
TensorBoard ``val/bpb``) was computed under bf16 autocast and differs from this in about the 4th
decimal (e.g. 6.1272 logged, 6.1268 here); the JSON says ``"dtype": "fp32"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from pretrain.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m pretrain.evaluate",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="run directory (uses checkpoints/latest) or checkpoint directory")
    parser.add_argument("--files", type=Path, nargs="+",
                        help="evaluate these files (concatenated) instead of the run's held-out "
                             "split")
    parser.add_argument("--modes", default="basic",
                        help="comma-separated: basic, sliding, strided, sliding_strided")
    parser.add_argument("--stride", type=int, default=None,
                        help="sliding-window stride, in (0, seq_len] and on MEGABYTE a multiple "
                             "of the patch size (default seq_len / 2; the JSON gives the stride "
                             "of each mode)")
    parser.add_argument("--max-bytes", type=int, default=None,
                        help="evaluate only the first N bytes (default: data.val_bytes for the "
                             "held-out split, everything for --files)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile the model first (backend: inductor unless named)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def read_files(files: List[Path]) -> bytes:
    """The files' bytes, concatenated; an unreadable file is an error naming it."""
    text = b""
    for f in files:
        try:
            text += f.read_bytes()
        except OSError as err:
            raise OSError(f"cannot read {f}: {err.strerror or err}") from None
    return text


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> List[str]:
    """The modes to score; a bad option exits with one ``error:`` line naming it (exit 2)."""
    from pretrain.inference.evaluation import MODES

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        what = f"unknown mode(s) {', '.join(unknown)}" if unknown else "no mode given"
        parser.error(f"--modes: {what}; choose from {', '.join(MODES)}")
    for option in ("stride", "max_bytes", "batch_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be a positive integer, got {value}")
    return modes


def main(argv: Optional[List[str]] = None) -> int:
    """The command: 0 with the JSON on stdout; 2 with one ``error:`` line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = check_args(parser, args)

    from data_prep.shards import ShardError
    from pretrain.data import validation_text
    from pretrain.inference.evaluation import evaluate_bytes
    from pretrain.inference.loading import load_for_inference
    from pretrain.runtime.compile import CompileUnavailable

    try:
        cfg, model, vocab = load_for_inference(args.checkpoint, args.overrides)
        if args.files:
            text = read_files(args.files)[:args.max_bytes]
            source = [str(f) for f in args.files]
        else:
            text = validation_text(cfg, vocab, args.max_bytes or cfg.data.val_bytes)
            source = f"held-out split of data.source={cfg.data.source}"
        if not text:
            raise ValueError("nothing to evaluate: the text is empty")
        patch = cfg.model.patch_size if cfg.model.arch == "megabyte" else None
        results = {}
        for mode in modes:
            t0 = time.perf_counter()
            out = evaluate_bytes(model, text, vocab, cfg.model.seq_len, mode, patch, args.stride,
                                 args.batch_size, progress=True, compile_backend=args.compile)
            out["seconds"] = time.perf_counter() - t0
            results[mode] = out
            print(f"{mode}: {out['bpb']:.4f} bits per byte over {out['bytes']} bytes",
                  file=sys.stderr)
    except (ConfigError, OSError, ValueError, CompileUnavailable, ShardError) as err:
        print(f"error: {err}", file=sys.stderr)  # ShardError: e.g. a dataset with no val split
        return 2
    print(json.dumps({"checkpoint": str(args.checkpoint), "arch": cfg.model.arch,
                      "source": source, "compile": args.compile, "dtype": "fp32",
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
