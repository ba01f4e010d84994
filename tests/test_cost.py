"""Cost in every run (docs/cost.md): reader tokens against a hand count, FLOPs against the hand formula, results
totals, report and compare columns, and the Pareto plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from iagbench.analysis.compare import compare
from iagbench.analysis.compare import render as render_compare
from iagbench.analysis.pareto import front, pareto_png
from iagbench.analysis.report import render
from iagbench.contract.plugins import load_plugins
from iagbench.contract.types import Context, Passage
from iagbench.lm.models import TINY_LLAMA_CONFIG
from iagbench.runs.cost import COST_VERSION, forward_flops, run_cost
from iagbench.runs.folder import RunFolder
from iagbench.runs.runner import RunSpec, run
from iagbench_plugins.datasets.sample import Sample

PLAIN = {"prompt": "plain", "max_new_tokens": 4}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(builtins_only=True)


@pytest.fixture(scope="module")
def reader(plugins):
    return plugins["readers"].get("tiny-llama").build(**PLAIN)


@pytest.fixture(scope="module")
def runs(plugins, tmp_path_factory) -> dict[str, RunFolder]:
    """Closed-book and two-passage tiny-llama runs, and a fid-tiny run, of 4 examples each."""
    root = tmp_path_factory.mktemp("cost") / "runs"
    made = {}
    for name, imaginer, reader_name, reader_args in (
        ("closed", "none", "tiny-llama", PLAIN),
        ("given", "given", "tiny-llama", PLAIN),
        ("fid", "given", "fid-tiny", {"max_new_tokens": 4}),
    ):
        spec = RunSpec("sample", "test", imaginer, reader_name, reader_args=dict(reader_args), limit=4, batch_size=2,
                       imaginer_args={"k": 2} if imaginer == "given" else {}, runs_dir=root)  # fmt: skip
        made[name], _ = run(spec, plugins, progress=False, log=lambda message: None)
    return made


def test_tiny_llama_tokens_equal_a_hand_count_from_the_tokenizer(runs, reader):
    questions = {example.id: example for example in Sample().load("test")}
    for kind in ("closed", "given"):
        for record in lines(runs[kind].predictions_path):
            example = questions[record["id"]]
            tokens = record["cost"]["tokens"]
            passages = [Passage(**p) for p in record["context"]["passages"]]
            assert bool(passages) == (kind == "given")
            prompt = reader.render(example.question, list(passages))
            bare = reader.render(example.question, [])
            assert tokens["input"] == len(reader.tokenizer(prompt)["input_ids"])
            assert tokens["question"] == len(reader.tokenizer(example.question, add_special_tokens=False)["input_ids"])
            assert tokens["context"] == (
                len(reader.tokenizer(prompt)["input_ids"]) - len(reader.tokenizer(bare)["input_ids"])
            )
            assert (tokens["context"] > 0) == (kind == "given")
            assert 1 <= tokens["generated"] <= PLAIN["max_new_tokens"]
            assert "cost" not in record.get("details", {})  # moved into the record's cost


def test_flops_equal_the_hand_formula(runs, reader):
    c = TINY_LLAMA_CONFIG
    d, ff, layers, heads, kv = (
        c["hidden_size"],
        c["intermediate_size"],
        c["num_hidden_layers"],
        c["num_attention_heads"],
        c["num_key_value_heads"],
    )
    kv_width = kv * d // heads
    per_layer = 2 * d * d + 2 * d * kv_width + 3 * d * ff + 2 * d  # q, o; k, v; gate, up, down; two norms
    vocab = reader.model.config.vocab_size
    hand = layers * per_layer + d + d * vocab  # the final norm and the untied head; the input embedding left out
    assert reader.cost_model() == {"decoder": {"parameters": hand, "layers": layers, "d_model": d}}
    for record in lines(runs["given"].predictions_path):
        tokens = record["cost"]["tokens"]
        t = tokens["input"] + tokens["generated"] - 1
        assert record["cost"]["reader_flops"] == 2 * hand * t + 2 * layers * d * (t * (t + 1) // 2)


def test_fid_counts_its_encoder_rows(runs, plugins):
    fid = plugins["readers"].get("fid-tiny").build(max_new_tokens=4)
    examples = {example.id: example for example in Sample().load("test")}
    shape = fid.cost_model()
    assert set(shape) == {"encoder", "decoder"}
    assert sum(part["parameters"] for part in shape.values()) + fid.model.get_input_embeddings().weight.numel() == sum(
        p.numel() for p in fid.model.parameters()
    )
    for record in lines(runs["fid"].predictions_path):
        example = examples[record["id"]]
        given = Context(passages=[Passage(**p) for p in record["context"]["passages"]])
        ids, _, _ = fid.encoder_inputs([example], [given])
        tokens, (e, g) = record["cost"]["tokens"], (sum(map(len, ids)), record["cost"]["tokens"]["generated"])
        assert tokens["input"] == e and tokens["question"] + tokens["context"] == e
        passes = {"encoder": {"tokens": e, "attended": sum(len(r) ** 2 for r in ids)},
                  "decoder": {"tokens": g, "attended": g * (g + 1) // 2 + g * e}}  # fmt: skip
        assert record["cost"]["reader_flops"] == forward_flops(shape, passes)


def test_results_hold_totals_peak_memory_and_a_version(runs):
    for folder in runs.values():
        results, records = folder.results(), folder.records()
        cost = results["cost"]
        assert results["cost_version"] == COST_VERSION and cost["n"] == 4
        assert cost["total"]["tokens"]["input"] == sum(r["cost"]["tokens"]["input"] for r in records)
        assert cost["total"]["reader_flops"] == sum(r["cost"]["reader_flops"] for r in records)
        assert cost["peak_memory"]["bytes"] > 0 and cost["peak_memory"]["kind"] == "rss"
        assert "cost" not in json.dumps(folder.config()["identity"])


def test_a_measure_one_example_lacks_is_absent_not_zero():
    records = [{"cost": {"seconds": {"read": 1.0}, "tokens": {"input": 3}}}, {"cost": {"seconds": {"read": 3.0}}}]
    cost = run_cost(records, [])
    assert cost["total"] == {"seconds": {"read": 4.0}} and cost["per_example"] == {"seconds": {"read": 2.0}}
    assert run_cost([{"id": "x"}], []) is None


def test_report_shows_cost_columns_unless_no_cost(runs, tmp_path):
    folders = [runs["closed"], runs["given"]]
    table = render(folders, "csv").splitlines()
    header = table[0].split(",")
    assert header[-3:] == ["s/q", "input tok/q", "GFLOP/q"]
    given = dict(zip(header, table[2].split(",")))
    assert float(given["input tok/q"]) == pytest.approx(
        runs["given"].results()["cost"]["per_example"]["tokens"]["input"], abs=0.05
    )
    assert "GFLOP/q" not in render(folders, "csv", cost=False)
    old = tmp_path / "old"  # a run from before costs were recorded: no columns of its own, empty cells
    shutil.copytree(runs["closed"].path, old)
    results = json.loads((old / "results.json").read_text())
    del results["cost"]
    (old / "results.json").write_text(json.dumps(results))
    assert "s/q" not in render([RunFolder(old)], "csv")
    mixed = render([RunFolder(old), runs["given"]], "csv").splitlines()
    assert mixed[1].endswith(",,,")


def test_compare_shows_cost_ratios(runs):
    report = compare(runs["closed"].path, runs["given"].path)
    ratios = {row["measure"]: row for row in report["cost"]}
    assert set(ratios) == {"seconds", "input_tokens", "gflop"}
    a, b = (runs[k].results()["cost"]["per_example"]["tokens"]["input"] for k in ("closed", "given"))
    assert ratios["input_tokens"]["ratio"] == pytest.approx(b / a) and ratios["input_tokens"]["ratio"] > 1
    assert "B / A" in render_compare(report)


def test_pareto_plot_is_a_png(runs, tmp_path):
    png = pareto_png(list(runs.values()), metric="has_answer@1", cost="gflop")
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert front([(1, 10), (2, 5), (3, 20), (0.5, 1)]) == [3, 0, 2]  # (2, 5) is beaten by (1, 10)
