"""Metrics per run as a bar chart with bootstrap confidence intervals (matplotlib, Agg), and an HTML report.

Each bar is a run's mean of one metric (percent); its error bar is the percentile bootstrap
interval of that mean over the run's examples (``iagbench.analysis.stats.bootstrap_interval``:
1000 resamples, seed 0, 95%), computed from the per-example scores in predictions.jsonl.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iagbench.analysis.rows import rows
from iagbench.analysis.stats import LEVEL, SAMPLES, SEED, Interval, bootstrap_interval
from iagbench.runs.folder import RunFolder


def run_intervals(
    folder: RunFolder, keys: Sequence[str], *, samples: int = SAMPLES, seed: int = SEED, level: float = LEVEL
) -> dict[str, Interval]:
    """Per score key, the run's mean and bootstrap interval in percent (keys no example has are left out)."""
    records = folder.records()
    intervals = {}
    for key in keys:
        values = [record["scores"][key] for record in records if key in record.get("scores", {})]
        if values:
            intervals[key] = bootstrap_interval(values, samples=samples, seed=seed, level=level).scaled(100)
    return intervals


def labels(results: Sequence[dict[str, Any]]) -> list[str]:
    """Short run labels (dataset-split imaginer+reader, n), with the config hash where two would be equal."""
    short = [f"{r['dataset']}-{r['split']} {r['imaginer']}+{r['reader']}" for r in results]
    return [
        (f"{label} ({r.get('config_hash', '')[:6]})" if short.count(label) > 1 else label) + f", n={r['n']}"
        for label, r in zip(short, results)
    ]


def figure_png(
    folders: Sequence[RunFolder], *, samples: int = SAMPLES, seed: int = SEED, level: float = LEVEL
) -> bytes:
    """A grouped bar chart (a group per metric, a bar per run, error bars = bootstrap intervals) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    header, _, _ = rows(folders)  # validates: finished runs, one version per metric
    keys = header[6:]
    results = [folder.results() for folder in folders]
    intervals = [run_intervals(folder, keys, samples=samples, seed=seed, level=level) for folder in folders]
    width = 0.8 / len(folders)
    figure = Figure(figsize=(max(6.0, 1.2 + len(keys) * (0.6 + 0.35 * len(folders))), 4.5), layout="constrained")
    axes = figure.add_subplot()
    for index, (label, found) in enumerate(zip(labels(results), intervals)):
        positions = [k + (index - (len(folders) - 1) / 2) * width for k in range(len(keys))]
        nan = float("nan")  # a metric the run has no scores for: no bar
        means = [found[key].estimate if key in found else nan for key in keys]
        errors = [
            [found[key].estimate - found[key].low if key in found else nan for key in keys],
            [found[key].high - found[key].estimate if key in found else nan for key in keys],
        ]
        axes.bar(positions, means, width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(range(len(keys)), keys)
    axes.set_ylabel("score (%)")
    axes.set_ylim(bottom=0)
    axes.set_title(f"error bars: {100 * level:g}% bootstrap CI over examples ({samples} resamples)", fontsize=9)
    axes.legend(fontsize=8, loc="best")
    axes.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_plot(folders: Sequence[RunFolder], path: str | Path, **kwargs: Any) -> Path:
    path = Path(path)
    path.write_bytes(figure_png(folders, **kwargs))
    return path


def html_report(folders: Sequence[RunFolder], png: bytes | None = None) -> str:
    """A self-contained HTML page: the report table (with each metric's interval under it) and the plot inline."""
    header, table, versions = rows(folders)
    keys = header[6:]
    intervals = [run_intervals(folder, keys) for folder in folders]
    png = figure_png(folders) if png is None else png
    cells = []
    for row, found in zip(table, intervals):
        out = [f"<td>{html.escape(str(value))}</td>" for value in row[:6]]
        for key, value in zip(keys, row[6:]):
            ci = found.get(key)
            extra = f"<br><small>[{ci.low:.2f}, {ci.high:.2f}]</small>" if ci else ""
            out.append(f'<td class="num">{"" if value == "" else f"{value:.2f}"}{extra}</td>')
        cells.append("<tr>" + "".join(out) + "</tr>")
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    note = ", ".join(f"{html.escape(name)} v{html.escape(str(version))}" for name, version in sorted(versions.items()))
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>iagbench report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; }}
td.num {{ text-align: right; }}
small {{ color: #555; }}
</style>
</head>
<body>
<h1>iagbench report</h1>
<table>
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(cells)}
</tbody>
</table>
<p>Scores in percent. Under each score: its {100 * LEVEL:g}% percentile bootstrap interval over the run's examples
({SAMPLES} resamples, seed {SEED}). Metric versions: {note}.</p>
<img alt="metrics per run with {100 * LEVEL:g}% bootstrap intervals" src="data:image/png;base64,{image}">
</body>
</html>
"""
