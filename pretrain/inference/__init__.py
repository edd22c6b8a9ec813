"""Using a trained model: loading any run's weights (:mod:`~pretrain.inference.loading`), bits
per byte in the paper's inference modes (:mod:`~pretrain.inference.evaluation`) and cached
sampling (:mod:`~pretrain.inference.generation`)."""
