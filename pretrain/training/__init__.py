"""The single-process training loop (:mod:`~pretrain.training.trainer`) and what it calls:
AdamW parameter groups and the LR schedule (:mod:`~pretrain.training.optim`). Loss and bits per
byte live beside the model (:mod:`pretrain.model.losses`); logging and metrics files in
:mod:`pretrain.runtime.logs`."""
