"""Old import path, kept for code written against it: the module is now `iagbench.contract.compose`."""

from iagbench.contract.compose import CompositeImaginer, composite_entry

__all__ = ["CompositeImaginer", "composite_entry"]
