"""Files on disk that hold a run's state: single-process checkpoints with an atomic ``latest``
pointer and pruning (:mod:`~pretrain.checkpoints.store`), and the one-file safetensors export
(:mod:`~pretrain.checkpoints.exports`). File work only: no running job is needed to read them."""
