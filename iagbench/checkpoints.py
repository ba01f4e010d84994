"""Old import path, kept for code written against it: the module is now `iagbench.training.checkpoints`."""

from iagbench.training.checkpoints import load_trainable, resolve_checkpoint

__all__ = ["load_trainable", "resolve_checkpoint"]
