"""Where training batches come from: the batch-source interface and the sources behind
``data.source``.

* :mod:`~pretrain.data.build`: the :class:`BatchSource` interface and :func:`build_data`;
* :mod:`~pretrain.data.memory`: ``stdlib`` / ``files`` read into memory (the quick start),
  sampled in windows by :class:`WindowSampler`;
* :mod:`~pretrain.data.shard_loader`: ``shards``, prepared datasets (``python -m data_prep.bytes``,
  or token shards from ``python -m data_prep.tokenizer``) streamed by the deterministic shard
  loader: documents packed into sequences with EOS separators, split by data-parallel rank and
  DataLoader worker, resumable at the exact next sequence (also at another data-parallel size).

Vocabularies (the ids the streams hold) are part of the data format: :mod:`data_prep.vocab`.
"""

from pretrain.data.build import BatchSource, TrainData, build_data, validation_text
from pretrain.data.memory import Corpus, WindowSampler, load_corpus

__all__ = ["BatchSource", "Corpus", "TrainData", "WindowSampler", "build_data", "load_corpus",
           "validation_text"]
