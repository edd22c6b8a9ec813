"""Vocabularies: raw bytes, or a SentencePiece model for the subword baseline.

Special ids lie *outside* the content ids, so every byte value (NUL included) is modeled and
scored: bytes use ids 0..255 and pad/bos/eos = 256/257/258; a SentencePiece vocabulary of n
pieces uses 0..n-1 and pad/bos/eos = n/n+1/n+2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence, Union

BYTE_VOCAB = 256
SPACE_SYMBOL = "\u2581"  # SentencePiece's whitespace marker


class ByteVocab:
    """Identity mapping of bytes to ids 0..255 plus three special ids."""

    kind = "bytes"

    def __init__(self) -> None:
        self.pad_id, self.bos_id, self.eos_id = BYTE_VOCAB, BYTE_VOCAB + 1, BYTE_VOCAB + 2
        self.vocab_size = BYTE_VOCAB + 3

    def encode(self, data: bytes) -> List[int]:
        """Bytes -> ids (one id per byte)."""
        return list(data)

    def decode(self, ids: Sequence[int]) -> bytes:
        """Ids -> bytes; special ids are dropped."""
        return bytes(i for i in ids if 0 <= i < BYTE_VOCAB)


class SentencePieceVocab:
    """A SentencePiece model (trained with byte_fallback) plus three special ids after its pieces."""

    kind = "sentencepiece"

    def __init__(self, model_path: Union[str, Path]) -> None:
        import sentencepiece as spm

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        n = self.sp.get_piece_size()
        self.pad_id, self.bos_id, self.eos_id = n, n + 1, n + 2
        self.vocab_size = n + 3
        self._byte_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        self._space_symbol_ids = [self._byte_ids[b] for b in SPACE_SYMBOL.encode()]
        # Bytes of every piece id: <0xNN> -> that byte, U+2581 -> space, control pieces (unk,
        # which byte fallback never produces) -> nothing. Decoding joins these.
        self._piece_bytes: List[bytes] = [
            bytes([int(self.sp.id_to_piece(i)[3:5], 16)]) if self.sp.is_byte(i)
            else b"" if self.sp.is_control(i) or self.sp.is_unknown(i) or self.sp.is_unused(i)
            else self.sp.id_to_piece(i).replace(SPACE_SYMBOL, " ").encode("utf-8")
            for i in range(n)]
        if self.sp.unk_id() in self._byte_ids:
            raise ValueError(f"{path} has no byte-fallback pieces: train it with byte_fallback=True "
                             "(python -m data_prep.tokenizer) so that every text round-trips")

    def encode(self, data: bytes) -> List[int]:
        """Any bytes -> piece ids, losslessly. Valid UTF-8 is encoded line by line (much faster
        on long texts; with byte_fallback and identity normalization the round trip is exact).
        A byte that is not part of valid UTF-8 (a Latin-1 letter in a UTF-8 corpus, binary data)
        becomes its byte-fallback piece ``<0xNN>``, so the byte count never changes. SentencePiece
        decodes its whitespace symbol U+2581 as a space, so a literal U+2581 in the text is
        encoded as its three byte-fallback pieces, which decode back to U+2581."""
        # surrogateescape maps each invalid byte to one lone surrogate U+DC80..U+DCFF; valid
        # UTF-8 never decodes to a surrogate, so the surrogates are exactly the invalid bytes.
        text = data.decode("utf-8", errors="surrogateescape")
        ids: List[int] = []
        for i, part in enumerate(_INVALID_RUN.split(text)):
            if i % 2:  # a run of invalid bytes (the split keeps the separators at odd positions)
                ids.extend(self._byte_ids[ord(c) - 0xDC00] for c in part)
            elif part:
                ids.extend(self._encode_text(part))
        return ids

    def _encode_text(self, text: str) -> List[int]:
        ids: List[int] = []
        lines = text.splitlines(keepends=True)
        if SPACE_SYMBOL not in text:
            for piece_ids in self.sp.encode(lines):
                ids.extend(piece_ids)
            return ids
        for line in lines:
            parts = line.split(SPACE_SYMBOL)
            for i, piece_ids in enumerate(self.sp.encode(parts)):
                if i:
                    ids.extend(self._space_symbol_ids)
                ids.extend(piece_ids)
        return ids

    def decode(self, ids: Sequence[int]) -> bytes:
        """Piece ids -> the exact bytes they stand for (byte pieces are raw bytes, so bytes that
        are not UTF-8 come back unchanged); special ids are dropped."""
        table = self._piece_bytes
        return b"".join([table[i] for i in ids if 0 <= i < len(table)])

    def round_trip_problem(self, data: bytes, decoded: bytes) -> str:
        """Why ``data`` decoded as ``decoded`` (they differ): the model's cause when it can be
        told (no whitespace marker in the vocabulary; text rewritten before encoding), then
        where the bytes first differ."""
        i = next((k for k, (a, b) in enumerate(zip(data, decoded)) if a != b), min(len(data), len(decoded)))
        where = f"byte {i} is {data[i:i + 12]!r} but decodes as {decoded[i:i + 12]!r}"
        probe = "  a\u00a0b \ufb01  "  # runs of spaces, NBSP, a ligature: identity keeps all
        normalize = getattr(self.sp, "normalize", None)
        if b" " in data and self.sp.piece_to_id(SPACE_SYMBOL) == self.sp.unk_id():
            cause = (f"the model has no {SPACE_SYMBOL!r} piece (U+2581, the whitespace marker: its "
                     f"training sample had no space), so a space is encoded as the byte pieces of a "
                     f"literal {SPACE_SYMBOL!r} and decodes as one; train it again with python -m "
                     "data_prep.tokenizer or data_prep.prepare, which always keep it (delete the "
                     "model and its .json first)")
        elif normalize is not None and normalize(probe) != probe.replace(" ", SPACE_SYMBOL):
            cause = ("the model rewrites text before encoding (a normalization rule other than "
                     "identity, a dummy prefix or whitespace removal); train it with python -m "
                     "data_prep.tokenizer")
        else:
            cause = ("the model's settings look right (byte fallback, identity normalization, no "
                     f"dummy prefix, {SPACE_SYMBOL!r} in the vocabulary): a bug to report")
        return f"{cause}; {where}"


_INVALID_RUN = re.compile("([\udc80-\udcff]+)")

Vocab = Union[ByteVocab, SentencePieceVocab]


def build_vocab(kind: str, tokenizer: Union[str, Path, None] = None) -> Vocab:
    """The vocabulary named by ``model.vocab`` (and ``model.tokenizer``)."""
    if kind == "bytes":
        return ByteVocab()
    if kind == "sentencepiece":
        if tokenizer is None:
            raise ValueError("model.tokenizer is required for the sentencepiece vocabulary")
        return SentencePieceVocab(tokenizer)
    raise ValueError(f"unknown vocabulary kind {kind!r}")
