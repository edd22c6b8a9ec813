"""The compute-matched comparison behind ``python -m pretrain.compare``.

* :mod:`~pretrain.comparison.matching`: size classes, the Transformer shapes whose training FLOPs
  per byte match MEGABYTE's, one :class:`MatchedRun` per model;
* :mod:`~pretrain.comparison.runs`: preparing the data, training each run (resumable, or as a
  Slurm job array) and scoring it on the shared held-out bytes;
* :mod:`~pretrain.comparison.sweep`: ``--lr-sweep`` and ``--budgets``: run naming and reuse, the
  budgets, the LR grid and the choice of each model's LR;
* :mod:`~pretrain.comparison.verdict`: whether a curve was still improving, when a leader may be
  declared, where curves cross;
* :mod:`~pretrain.comparison.report`: reference compressors, the table, the report's sections and
  the plots.
"""
