"""Stored baselines of benchmark runs (`benchmarks/baselines/<name>.json`), and the regression check against them.

Design notes: docs/internals.md#iagbenchanalysisbaselinespy
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from iagbench.analysis.stats import LEVEL, SAMPLES, SEED, Interval, bootstrap_interval
from iagbench.contract.errors import IagbenchError
from iagbench.runs.folder import diff_paths, write_json_atomic

FORMAT = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
UPDATE_HINT = "pytest --iagbench-update-baselines"


class BaselineError(IagbenchError):
    """A baseline that cannot be compared with: missing, malformed, other data or other metric versions."""


class Regression(AssertionError):
    """A metric fell below its baseline by more than the tolerance."""


@dataclass(frozen=True)
class MetricCheck:
    """One metric of a benchmark against its baseline (all values in percent)."""

    metric: str
    baseline: float
    current: Interval  # the current mean and its bootstrap interval

    @property
    def difference(self) -> float:
        return self.current.estimate - self.baseline

    @property
    def tolerance(self) -> float:
        return self.current.half_width

    @property
    def regressed(self) -> bool:
        return self.baseline - self.current.estimate > self.tolerance

    @property
    def improved(self) -> bool:
        return self.current.estimate - self.baseline > self.tolerance

    def describe(self) -> str:
        c = self.current
        verdict = "REGRESSED" if self.regressed else ("improved" if self.improved else "ok")
        return (
            f"{self.metric}: {c.estimate:.2f} now vs {self.baseline:.2f} baseline ({self.difference:+.2f}); "
            f"tolerance {self.tolerance:.2f} = half-width of the current {100 * c.level:g}% bootstrap CI "
            f"[{c.low:.2f}, {c.high:.2f}]: {verdict}"
        )


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BaselineError(f"baseline name {name!r}: use letters, digits and . _ + - (it names a file)")
    return name


def per_example(records: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """The per-example scores of one key, over the records that have it."""
    return [float(record["scores"][key]) for record in records if key in record.get("scores", {})]


def make_baseline(
    name: str,
    results: Mapping[str, Any],
    config: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    *,
    command: str,
    metrics: Sequence[str] | None = None,
    benchmark: str | None = None,
    samples: int = SAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Any]:
    """A baseline from a finished run: aggregate numbers and configuration only."""
    keys = list(metrics) if metrics else list(results["metrics"])
    missing = [key for key in keys if key not in results["metrics"]]
    if missing:
        raise BaselineError(f"the run has no scores {', '.join(missing)}; it has {', '.join(results['metrics'])}")
    intervals = {
        key: bootstrap_interval(per_example(records, key), samples=samples, seed=seed, level=level).scaled(100)
        for key in keys
    }
    identity = config["identity"]
    return {
        "format": FORMAT,
        "name": check_name(name),
        "benchmark": benchmark,
        "metrics": {key: results["metrics"][key] for key in keys},
        "intervals": {key: [iv.low, iv.high] for key, iv in intervals.items()},
        "n": results["n"],
        "config_hash": results["config_hash"],
        "dataset": {k: identity["dataset"][k] for k in ("name", "split", "fingerprint", "n")},
        "imaginer": identity["imaginer"],
        "reader": identity["reader"],
        "limit": identity.get("limit"),
        "seed": identity.get("seed"),
        "metric_versions": dict(results["metric_versions"]),
        "bootstrap": {"samples": samples, "seed": seed, "level": level},
        "date": date.today().isoformat(),
        "command": command,
    }


def load_baseline(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BaselineError(f"no baseline {path}: record one with `{UPDATE_HINT}`")
    try:
        baseline = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BaselineError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    for field in ("metrics", "n", "metric_versions", "dataset"):
        if field not in baseline:
            raise BaselineError(f"{path}: no field '{field}'; record it again with `{UPDATE_HINT}`")
    return baseline


def same_measurement(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether two baselines record the same numbers of the same configuration (the date aside)."""
    keys = ("metrics", "n", "config_hash", "metric_versions", "dataset", "imaginer", "reader", "bootstrap", "command")
    return all(old.get(key) == new.get(key) for key in keys)


def write_baseline(path: Path, baseline: Mapping[str, Any]) -> bool:
    """Write a baseline; an existing file recording the same measurement is left alone. True when written."""
    if path.is_file():
        try:
            if same_measurement(json.loads(path.read_text(encoding="utf-8")), baseline):
                return False
        except json.JSONDecodeError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, dict(baseline))
    return True


def check_against(
    baseline: Mapping[str, Any],
    results: Mapping[str, Any],
    config: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    *,
    source: str = "baseline",
) -> list[MetricCheck]:
    """Each baseline metric against the current run; refuse other data or other metric versions."""
    current_dataset = {k: config["identity"]["dataset"][k] for k in ("name", "split", "fingerprint", "n")}
    differs = diff_paths(baseline["dataset"], current_dataset)
    if differs:
        raise BaselineError(
            f"{source}: recorded over other questions (dataset differs in: {', '.join(differs)}); "
            f"record it again with `{UPDATE_HINT}` if that is intended"
        )
    versions = results.get("metric_versions", {})
    for metric in sorted(baseline["metric_versions"]):
        if metric in versions and versions[metric] != baseline["metric_versions"][metric]:
            raise BaselineError(
                f"{source}: metric '{metric}' is version {versions[metric]} now but version "
                f"{baseline['metric_versions'][metric]} in the baseline: not comparable; record it again with "
                f"`{UPDATE_HINT}`"
            )
    boot = baseline.get("bootstrap", {})
    checks = []
    for metric, value in baseline["metrics"].items():
        scores = per_example(records, metric)
        if not scores:
            raise BaselineError(f"{source}: the current run has no '{metric}' scores")
        interval = bootstrap_interval(
            scores,
            samples=boot.get("samples", SAMPLES),
            seed=boot.get("seed", SEED),
            level=boot.get("level", LEVEL),
        ).scaled(100)
        checks.append(MetricCheck(metric, float(value), interval))
    return checks


def regression_message(
    name: str, source: str, checks: Sequence[MetricCheck], baseline: Mapping[str, Any], n: int, config_hash: str | None
) -> str:
    boot = baseline.get("bootstrap", {})
    lines = [
        f"benchmark '{name}' regressed against {source} (recorded {baseline.get('date', '?')}, n={baseline['n']}; "
        f"now n={n}):"
    ]
    lines += [f"  {check.describe()}" for check in checks]
    lines.append(
        "A metric regresses when (baseline - current) exceeds the half-width of the percentile bootstrap CI of "
        f"the current mean ({boot.get('samples', SAMPLES)} resamples of the {n} examples, seed {boot.get('seed', SEED)})."
    )
    if baseline.get("config_hash") not in (None, config_hash):
        lines.append(
            f"The configuration differs from the baseline's (hash {config_hash} now, {baseline['config_hash']} then); "
            f"baseline command: {baseline.get('command', '?')}"
        )
    lines.append(f"If the change is intended, record the new scores: {UPDATE_HINT}")
    return "\n".join(lines)


def assert_no_regression(
    results: Mapping[str, Any],
    config: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    baseline_path: str | Path,
    *,
    name: str | None = None,
) -> list[MetricCheck]:
    """Raise ``Regression`` (an AssertionError) when a metric fell below the baseline at ``baseline_path``."""
    path = Path(baseline_path)
    baseline = load_baseline(path)
    checks = check_against(baseline, results, config, records, source=str(path))
    if any(check.regressed for check in checks):
        raise Regression(
            regression_message(name or path.stem, str(path), checks, baseline, len(records), results.get("config_hash"))
        )
    return checks
