"""Old import path, kept for code written against it: the module is now `iagbench.runs.runner`."""

from iagbench.runs.runner import RunSpec, check_compatible, run

__all__ = ["RunSpec", "check_compatible", "run"]
