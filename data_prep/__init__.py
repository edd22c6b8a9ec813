"""Data preparation: corpus sources, byte WebDataset shards, SentencePiece tokenizer and token shards."""
