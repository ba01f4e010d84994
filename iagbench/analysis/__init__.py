"""Analysis of finished runs: statistics, compare, report, plots, regression baselines, pytest plugin."""
