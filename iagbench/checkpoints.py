"""Old import path, kept for code written against it: the module is now `iagbench.lm.checkpoints`."""

from iagbench.lm.checkpoints import load_trainable, resolve_checkpoint

__all__ = ["load_trainable", "resolve_checkpoint"]
