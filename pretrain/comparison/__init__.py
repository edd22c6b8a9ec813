"""The compute-matched comparison behind ``python -m pretrain.compare``.

* :mod:`~pretrain.comparison.matching`: size classes, the Transformer shapes whose training FLOPs
  per byte match MEGABYTE's, one :class:`MatchedRun` per model;
* :mod:`~pretrain.comparison.runs`: preparing the data, training each run (resumable, or as a
  Slurm job array) and scoring it on the shared held-out bytes;
* :mod:`~pretrain.comparison.report`: reference compressors, the table and the plots.
"""
