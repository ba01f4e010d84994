"""Compare two finished runs example by example: paired bootstrap per metric, McNemar on em, flips."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iagbench.analysis.cost import cost_ratios
from iagbench.analysis.rows import metric_columns
from iagbench.analysis.stats import LEVEL, SAMPLES, SEED, McNemar, mcnemar, paired_bootstrap
from iagbench.contract.errors import ConfigurationError
from iagbench.runs.folder import RunFolder

FORMATS = ("text", "json")
FLIP_METRIC = "em"


@dataclass
class Side:
    """One run of a comparison: its folder, results and records by example id (in file order)."""

    folder: RunFolder
    results: dict[str, Any]
    records: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path) -> Side:
        folder = RunFolder(path)
        results = folder.results()
        return cls(folder, results, {record["id"]: record for record in folder.records()})


def check_versions(a: Side, b: Side) -> None:
    """Refuse two runs scored by different versions of one metric."""
    va, vb = a.results.get("metric_versions", {}), b.results.get("metric_versions", {})
    for name in sorted(set(va) & set(vb)):
        if va[name] != vb[name]:
            raise ConfigurationError(
                f"metric '{name}' is version {va[name]} in {a.folder.path} but {vb[name]} in {b.folder.path}; "
                "re-score with `iagbench score RUN --write` before comparing"
            )


def common_ids(a: Side, b: Side) -> list[str]:
    """Ids of both runs, in run A's order; refuse runs that share none, or whose shared ids ask other questions."""
    ids = [i for i in a.records if i in b.records]
    if not ids:
        raise ConfigurationError(
            f"{a.folder.path} ({len(a.records)} examples) and {b.folder.path} ({len(b.records)} examples) share no "
            "example ids: nothing to compare"
        )
    for i in ids:
        ra, rb = a.records[i], b.records[i]
        if (ra.get("question"), ra.get("answers")) != (rb.get("question"), rb.get("answers")):
            raise ConfigurationError(
                f"example '{i}' has another question or other answers in {b.folder.path} than in {a.folder.path}: "
                "these runs are over different data"
            )
    return ids


def compare(
    path_a: str | Path,
    path_b: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    samples: int = SAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Per metric, B - A over the shared examples with a paired bootstrap interval; McNemar and flips on em."""
    a, b = Side.load(path_a), Side.load(path_b)
    check_versions(a, b)
    ids = common_ids(a, b)
    keys = _chosen_metrics([a.results, b.results], metrics)
    report: dict[str, Any] = {
        "a": _describe(a),
        "b": _describe(b),
        "n_common": len(ids),
        "left_out": {"a": len(a.records) - len(ids), "b": len(b.records) - len(ids)},
        "bootstrap": {"samples": samples, "seed": seed, "level": level},
        "metrics": _metric_rows(a, b, ids, keys, samples=samples, seed=seed, level=level),
        "cost": cost_ratios(a.results, b.results),  # per question, over each whole run (docs/cost.md)
        "mcnemar": None,
        "flips": None,
    }
    flip_ids = [i for i in ids if FLIP_METRIC in a.records[i]["scores"] and FLIP_METRIC in b.records[i]["scores"]]
    if flip_ids:
        report["mcnemar"], report["flips"] = _mcnemar_and_flips(a, b, flip_ids)
    return report


def _chosen_metrics(results: Sequence[dict[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    """The score keys to compare: ``metrics`` if given (each must be in the runs), else all of them."""
    keys = metric_columns(results)
    if metrics:
        unknown = [m for m in metrics if m not in keys]
        if unknown:
            raise ConfigurationError(f"no scores '{', '.join(unknown)}' in these runs; scores: {', '.join(keys)}")
        keys = list(metrics)
    return keys


def _metric_rows(
    a: Side, b: Side, ids: Sequence[str], keys: Sequence[str], *, samples: int, seed: int, level: float
) -> list[dict[str, Any]]:
    """Per score key that both runs have on some shared example: the means of A and B and B - A with its interval."""
    rows = []
    for key in keys:
        pairs = [
            (a.records[i]["scores"][key], b.records[i]["scores"][key])
            for i in ids
            if key in a.records[i].get("scores", {}) and key in b.records[i].get("scores", {})
        ]
        if not pairs:
            continue
        sa, sb = [x for x, _ in pairs], [y for _, y in pairs]
        diff = paired_bootstrap(sa, sb, samples=samples, seed=seed, level=level).scaled(100)
        rows.append(
            {
                "metric": key,
                "n": len(pairs),
                "a": 100 * sum(sa) / len(sa),
                "b": 100 * sum(sb) / len(sb),
                "diff": diff.estimate,
                "low": diff.low,
                "high": diff.high,
            }
        )
    return rows


def _mcnemar_and_flips(a: Side, b: Side, flip_ids: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """McNemar's test on ``FLIP_METRIC`` over ``flip_ids``, and the examples it flips each way."""
    sa = [a.records[i]["scores"][FLIP_METRIC] for i in flip_ids]
    sb = [b.records[i]["scores"][FLIP_METRIC] for i in flip_ids]
    test: McNemar = mcnemar(sa, sb)
    result = {
        "metric": FLIP_METRIC,
        "n": len(flip_ids),
        "only_a": test.only_a,
        "only_b": test.only_b,
        "p_value": test.p_value,
    }
    flips = {
        "gained": [_flip(a, b, i) for i, x, y in zip(flip_ids, sa, sb) if x == 0 and y == 1],
        "lost": [_flip(a, b, i) for i, x, y in zip(flip_ids, sa, sb) if x == 1 and y == 0],
    }
    return result, flips


def _describe(side: Side) -> dict[str, Any]:
    r = side.results
    return {
        "path": str(side.folder.path),
        "run": r.get("run"),
        "dataset": r.get("dataset"),
        "split": r.get("split"),
        "imaginer": r.get("imaginer"),
        "reader": r.get("reader"),
        "n": len(side.records),
    }


def _flip(a: Side, b: Side, i: str) -> dict[str, Any]:
    return {
        "id": i,
        "question": a.records[i].get("question"),
        "answers": a.records[i].get("answers"),
        "a": a.records[i].get("prediction"),
        "b": b.records[i].get("prediction"),
    }


def _cost_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The cost table of a comparison: per question in A and B, and B / A."""
    if not rows:
        return []
    from tabulate import tabulate

    table = [[r["measure"], r["a"], r["b"], "" if r["ratio"] is None else f"{r['ratio']:.3g}x"] for r in rows]
    text = tabulate(table, headers=["cost per question", "A", "B", "B / A"], tablefmt="github", floatfmt=".4g")
    return ["", text, "cost: each run's mean per question over all its examples (docs/cost.md)"]


def render(report: dict[str, Any], fmt: str = "text", *, show: int = 10) -> str:
    """The comparison as text (a table, the test, up to ``show`` flipped examples each way) or JSON."""
    if fmt not in FORMATS:
        raise ConfigurationError(f"unknown compare format '{fmt}'; formats: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False)
    from tabulate import tabulate

    level = report["bootstrap"]["level"]
    lines = [
        f"A: {report['a']['path']}  ({report['a']['n']} examples)",
        f"B: {report['b']['path']}  ({report['b']['n']} examples)",
        f"compared over the {report['n_common']} examples both runs have"
        + (
            f" (left out: {report['left_out']['a']} of A, {report['left_out']['b']} of B)"
            if any(report["left_out"].values())
            else ""
        ),
        "",
    ]
    ci = f"{100 * level:g}% CI"
    table = [
        [row["metric"], row["n"], row["a"], row["b"], row["diff"], f"[{row['low']:+.2f}, {row['high']:+.2f}]"]
        for row in report["metrics"]
    ]
    lines.append(tabulate(table, headers=["metric", "n", "A", "B", "B - A", ci], tablefmt="github", floatfmt=".2f"))
    boot = report["bootstrap"]
    lines.append(
        f"\n{ci}: paired bootstrap over examples, percentile interval, {boot['samples']} resamples, seed {boot['seed']}"
    )
    lines += _cost_lines(report.get("cost") or [])
    test = report["mcnemar"]
    if test is None:
        lines.append(f"\nno '{FLIP_METRIC}' scores: no McNemar test, no flips")
        return "\n".join(lines)
    lines.append(
        f"McNemar exact test on {test['metric']} ({test['n']} examples): right only in A {test['only_a']}, "
        f"right only in B {test['only_b']}, p = {test['p_value']:.4g}"
    )
    for label, flips in (
        ("right in B, wrong in A", report["flips"]["gained"]),
        ("right in A, wrong in B", report["flips"]["lost"]),
    ):
        lines.append(f"\n{label}: {len(flips)}")
        for flip in flips[:show]:
            lines.append(
                f"  {flip['id']}: {flip['question']!r}  gold {flip['answers'][:3]!r}  A {flip['a']!r}  B {flip['b']!r}"
            )
        if len(flips) > show:
            lines.append(f"  ... {len(flips) - show} more (--show N, or --format json for all)")
    return "\n".join(lines)
