"""What kind of bytes a corpus holds, decided before any training: text (the subword baseline
runs) or not (it is left out, with one line saying why).

**The rule.** The subword baseline runs when at least :data:`TEXT_SHARE_MIN` (90%) of the
corpus's bytes are *printable UTF-8 text*: bytes of valid UTF-8 sequences that are not control
characters (tab, newline, carriage return, vertical tab and form feed count as text). Measured on
about :data:`SAMPLE_BYTES` of the prepared byte dataset's train split, drawn across all of it by
the tokenizer's sample (:func:`data_prep.tokenizer.sample_train_documents`: every shard, first to
last, in proportion), so a corpus whose first files are text and later ones are not is not
mistaken for text; the val split only when the train split is empty. Prose and source code
score ~1.0; a UTF-8 corpus with a few Latin-1 files scores just below 1.0 and keeps the subword
baseline, which encodes the odd bytes as byte-fallback pieces (exact, same byte count);
random-looking bytes (audio samples, pixels, compressed data) score ~0.4 and leave it out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

TEXT_SHARE_MIN = 0.9
SAMPLE_BYTES = 8 << 20
# After decoding with surrogateescape: an invalid byte is one lone surrogate U+DC80..U+DCFF; the
# C0 controls other than \t \n \v \f \r and DEL are one byte each. Both count as "not text".
_NOT_TEXT = re.compile("[\\udc80-\\udcff\\x00-\\x08\\x0e-\\x1f\\x7f]")


def text_share(data: bytes) -> float:
    """Share of ``data``'s bytes that are printable UTF-8 text (1.0 for empty input)."""
    if not data:
        return 1.0
    bad = len(_NOT_TEXT.findall(data.decode("utf-8", errors="surrogateescape")))
    return 1.0 - bad / len(data)


@dataclass(frozen=True)
class CorpusKind:
    """The measured text share of a prepared byte dataset and the decision taken from it."""

    text_share: float
    sampled_bytes: int
    documents: int

    @property
    def is_text(self) -> bool:
        return self.text_share >= TEXT_SHARE_MIN

    def describe(self, has_tokens: bool = True) -> str:
        """One line for the log and the report. ``has_tokens``: whether the prepared data has
        token shards (a ``--data`` directory may not), so the line states the final decision."""
        if not self.is_text:
            verdict = ("not text: the subword baseline is left out (it needs a corpus that is at "
                       f"least {TEXT_SHARE_MIN:.0%} printable UTF-8)")
        elif has_tokens:
            verdict = "text: the subword baseline runs"
        else:
            verdict = ("text, but the subword baseline is left out: the prepared data has no "
                       "token shards")
        return (f"{self.text_share:.1%} of {self.sampled_bytes:,} sampled bytes "
                f"({self.documents} documents) are printable UTF-8 text; {verdict}")


def _sample(dataset: Path, limit: int) -> Iterator[bytes]:
    from data_prep.shards import iter_documents, read_manifest
    from data_prep.tokenizer import sample_train_documents

    any_train = False
    for payload in sample_train_documents(dataset, limit):
        any_train = True
        yield payload
    if any_train:
        return
    left = limit
    for _, payload in iter_documents(dataset, "val", read_manifest(dataset)):
        yield payload[:left]
        left -= min(left, len(payload))
        if not left:
            return


def corpus_kind(dataset: Path, limit: int = SAMPLE_BYTES) -> CorpusKind:
    """Measure a byte dataset prepared by ``data_prep.bytes`` (see the module's rule)."""
    total = text = docs = 0
    for payload in _sample(Path(dataset), limit):
        share = text_share(payload)
        total += len(payload)
        text += round(share * len(payload))
        docs += 1
    return CorpusKind(text / total if total else 1.0, total, docs)
