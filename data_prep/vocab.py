"""Vocabularies: raw bytes, or a SentencePiece model for the subword baseline.

Special ids lie *outside* the content ids, so every byte value (NUL included) is modeled and
scored: bytes use ids 0..255 and pad/bos/eos = 256/257/258; a SentencePiece vocabulary of n
pieces uses 0..n-1 and pad/bos/eos = n/n+1/n+2.
"""

from __future__ import annotations

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
        self._space_symbol_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in SPACE_SYMBOL.encode()]
        if self.sp.unk_id() in self._space_symbol_ids:
            raise ValueError(f"{path} has no byte-fallback pieces: train it with byte_fallback=True "
                             "(python -m data_prep.tokenizer) so that every text round-trips")

    def encode(self, data: bytes) -> List[int]:
        """UTF-8 bytes -> piece ids. Encoded line by line (much faster on long texts); with
        byte_fallback and identity normalization the round trip is lossless. SentencePiece
        decodes its whitespace symbol U+2581 as a space, so a literal U+2581 in the text is
        encoded as its three byte-fallback pieces, which decode back to U+2581."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"the subword baseline needs valid UTF-8 text: {err}") from None
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
        """Piece ids -> UTF-8 bytes; special ids are dropped."""
        n = self.sp.get_piece_size()
        return self.sp.decode([int(i) for i in ids if 0 <= i < n]).encode("utf-8")


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
