"""torch training: the Trainer (epochs, monitor, early stop), data loaders, which
examples a run uses (plan), checkpoints, losses and metrics."""
