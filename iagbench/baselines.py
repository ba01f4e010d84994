"""Old import path, kept for code written against it: the module is now `iagbench.analysis.baselines`."""

from iagbench.analysis.baselines import Regression, assert_no_regression

__all__ = ["Regression", "assert_no_regression"]
