"""From a corpus to training-ready data in one command.

    python -m data_prep.prepare --stdlib --skip empty --skip invalid_utf8 --output data/stdlib
    python -m data_prep.prepare corpus/ --exclude .git --vocab-size 8000 --output data/mine

Runs, each step skipped when its output is already up to date:

1. ``OUTPUT/bytes``: byte WebDataset shards and manifest (``python -m data_prep.bytes``; all of
   its input and sharding options apply), for MEGABYTE and the byte Transformer;
2. ``OUTPUT/tokenizer.model``: a lossless SentencePiece model trained on a capped, shuffled
   sample of the train split (``--vocab-size``, ``--model-type``; ``--vocab-size 0`` skips 2-3);
3. ``OUTPUT/tokens``: token shards for the subword baseline (bytes per token per split in the
   manifest; bytes that are not UTF-8 are encoded as byte-fallback pieces, exactly).

Train with ``data.source=shards data.datasets=[OUTPUT/bytes]`` (or ``[OUTPUT/tokens]`` with
``model.vocab=sentencepiece model.tokenizer=OUTPUT/tokenizer.model``). The result is one JSON
object on stdout; progress and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from data_prep.bytes import PrepError, add_prep_args, check_output, describe, inputs_and_options, prepare
from data_prep.shards import ManifestError, ShardError


def train_tokenizer(dataset: Path, prefix: Path, vocab_size: int, model_type: str, sample_lines: int,
                    max_bytes: Optional[int] = None, progress: bool = False) -> Dict[str, Any]:
    """Train ``prefix.model`` on about ``max_bytes`` (default ``TRAINING_SAMPLE_BYTES``) drawn across
    the whole train split (:func:`~data_prep.tokenizer.sample_train_documents`), unless one from
    the same data, options and trainer version exists (the fingerprint ``data_prep.tokenizer``
    uses: :func:`~data_prep.tokenizer.train_unless_unchanged`)."""
    from data_prep.shards import read_manifest
    from data_prep.tokenizer import (
        TRAINING_SAMPLE_BYTES,
        dataset_identity,
        sample_train_documents,
        train_unless_unchanged,
    )

    max_bytes = max_bytes or TRAINING_SAMPLE_BYTES
    manifest = read_manifest(dataset)
    source = {"trained_on": str(dataset), "source_fingerprint": manifest["fingerprint"]}
    docs = sample_train_documents(dataset, max_bytes, progress=progress)  # read only if trained
    return train_unless_unchanged(prefix, dataset_identity(manifest), source, docs, vocab_size,
                                  model_type, sample_lines, max_bytes)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.prepare", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="output directory")
    add_prep_args(p)
    p.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary (0: no tokenizer)")
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--sample-lines", type=int, default=2_000_000,
                   help="train the tokenizer on a random sample of at most this many lines")
    args = p.parse_args(argv)
    from data_prep.tokenizer import TokenizeError, tokenize_dataset

    out: Dict[str, Any] = {}
    try:
        inputs, opts = inputs_and_options(args)
        check_output(inputs, args.output)  # before anything is written (tokenizer, tokens too)
        args.output.mkdir(parents=True, exist_ok=True)
        bytes_dir = args.output / "bytes"
        out["bytes"] = prepare(inputs, bytes_dir, opts, workers=args.workers, progress=not args.no_progress)
        print(describe(out["bytes"]), file=sys.stderr)
        media = (out["bytes"].get("media") or {}).get("kind")
        if args.vocab_size > 0 and media:
            print(f"note: no tokenizer or token shards: the inputs are {media} data (a subword model "
                  "of samples or pixels means nothing)", file=sys.stderr)
        elif args.vocab_size > 0:
            prefix = args.output / "tokenizer"
            out["tokenizer"] = train_tokenizer(bytes_dir, prefix, args.vocab_size, args.model_type,
                                               args.sample_lines)
            out["tokens"] = tokenize_dataset(bytes_dir, Path(f"{prefix}.model"), args.output / "tokens",
                                             args.workers, False, not args.no_progress)
    except (PrepError, TokenizeError, ManifestError, ShardError, OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train = [f"python -m pretrain.train data.source=shards data.datasets=[{args.output / 'bytes'}]"]
    if "tokens" in out:
        train.append(f"python -m pretrain.train --config configs/debug_subword.yaml data.source=shards "
                     f"data.datasets=[{args.output / 'tokens'}] "
                     f"model.tokenizer={args.output / 'tokenizer.model'}")
    out["train_with"] = train
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
