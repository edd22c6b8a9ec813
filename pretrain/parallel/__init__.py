"""Everything distributed, applied in one place: the TP x DP process grid
(:mod:`~pretrain.parallel.grid`), Megatron-style tensor-parallel layers and the ZeRO model build
(:mod:`~pretrain.parallel.tensor_parallel`), the DeepSpeed training engine
(:mod:`~pretrain.parallel.engine`); its checkpoints are consolidated offline, in one process, by
:mod:`pretrain.checkpoints.consolidate`. The model code in :mod:`pretrain.model` knows nothing
of it."""
