"""Old import path, kept for code written against it: the module is now `iagbench.contract.components`."""

from iagbench.contract.components import Dataset, Imaginer, Metric, Reader, Trainable

__all__ = ["Dataset", "Imaginer", "Metric", "Reader", "Trainable"]
