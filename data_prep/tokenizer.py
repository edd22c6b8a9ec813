"""Train a SentencePiece model for the subword baseline, losslessly.

``python -m data_prep.tokenizer --output runs/tokenizer/stdlib [--input DIR] [--vocab-size N]``

Settings that make encode/decode an exact round trip of UTF-8 text: ``byte_fallback`` (any
character outside the vocabulary becomes byte pieces), identity normalization, no dummy prefix,
no whitespace removal. SentencePiece *silently skips* training lines longer than
``max_sentence_length``; here long lines are split into pieces of at most that many bytes (at
character boundaries) and counted, never dropped. Training reads a capped, shuffled sample
(``input_sentence_size``) so memory stays bounded on large corpora.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

MAX_SENTENCE_BYTES = 4192  # SentencePiece's default max_sentence_length


@dataclass
class TokenizerStats:
    """What went into training: lines seen, long lines split, lines sampled."""

    lines: int = 0
    long_lines_split: int = 0
    pieces_from_long_lines: int = 0
    sampled: int = 0
    invalid_utf8_documents: int = 0


def split_long_line(line: str, max_bytes: int) -> List[str]:
    """Cut ``line`` into pieces of at most ``max_bytes`` UTF-8 bytes at character boundaries."""
    out, cur, size = [], [], 0
    for ch in line:
        n = len(ch.encode("utf-8"))
        if size + n > max_bytes and cur:
            out.append("".join(cur))
            cur, size = [], 0
        cur.append(ch)
        size += n
    if cur:
        out.append("".join(cur))
    return out


def training_lines(documents: Iterable[bytes], stats: TokenizerStats,
                   max_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Lines of the documents, long ones split (and counted). Non-UTF-8 documents are counted
    and decoded with replacement (the tokenizer only needs statistics from them)."""
    for doc in documents:
        try:
            text = doc.decode("utf-8")
        except UnicodeDecodeError:
            stats.invalid_utf8_documents += 1
            text = doc.decode("utf-8", errors="replace")
        for line in text.splitlines():
            if not line:
                continue
            stats.lines += 1
            if len(line.encode("utf-8")) > max_bytes:
                parts = split_long_line(line, max_bytes)
                stats.long_lines_split += 1
                stats.pieces_from_long_lines += len(parts)
                yield from parts
            else:
                yield line


def train_sentencepiece(documents: Iterable[bytes], output_prefix: Path, vocab_size: int = 8000,
                        model_type: str = "bpe", sample_lines: int = 2_000_000,
                        seed: int = 0) -> TokenizerStats:
    """Train ``{output_prefix}.model`` / ``.vocab`` on a shuffled sample of the documents' lines."""
    import sentencepiece as spm

    stats = TokenizerStats()
    # Reservoir sample, so memory is bounded by sample_lines whatever the corpus size.
    rng = random.Random(seed)
    sample: List[str] = []
    for i, line in enumerate(training_lines(documents, stats)):
        if len(sample) < sample_lines:
            sample.append(line)
        else:
            j = rng.randint(0, i)
            if j < sample_lines:
                sample[j] = line
    stats.sampled = len(sample)
    if not sample:
        raise ValueError("no text lines to train the tokenizer on")
    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample), model_prefix=str(output_prefix), vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, max_sentence_length=MAX_SENTENCE_BYTES,
        input_sentence_size=sample_lines, shuffle_input_sentence=True, character_coverage=1.0,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, hard_vocab_limit=False, num_threads=2,
        minloglevel=2)
    return stats


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.tokenizer",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--output", type=Path, required=True,
                        help="output prefix: writes PREFIX.model, PREFIX.vocab, PREFIX.json")
    parser.add_argument("--input", type=Path, default=None,
                        help="directory of text files (default: Python's stdlib .py files)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    parser.add_argument("--max-bytes", type=int, default=20_000_000,
                        help="read at most this many corpus bytes")
    parser.add_argument("--sample-lines", type=int, default=2_000_000,
                        help="train on a random sample of at most this many lines")
    args = parser.parse_args(argv)

    from data_prep.sources import list_files, read_documents, stdlib_dir, stdlib_files

    try:
        root = args.input or stdlib_dir()
        files = list_files(root) if args.input else stdlib_files()
        docs = (data for _, data in read_documents(root, files, args.max_bytes))
        stats = train_sentencepiece(docs, args.output, args.vocab_size, args.model_type,
                                    args.sample_lines)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {"model": f"{args.output}.model", **asdict(stats)}
    Path(f"{args.output}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
