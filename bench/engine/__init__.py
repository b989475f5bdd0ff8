"""The engine: one run executed (data, the training loop, optimizers, checkpoints, evaluation),
on one device or with DDP."""
