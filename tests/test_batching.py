"""Batch sizes: ``--batch-size auto`` backs off on CUDA out-of-memory without losing or repeating an
example (a fake reader raises the real torch exception), and greedy answers do not depend on the size."""

from __future__ import annotations

import itertools
import json
import textwrap

import pytest
import torch

from iagbench import Imaginer, Reader
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.plugins import load_plugins
from iagbench.runs.batching import AUTO_CPU, AUTO_START, DEFAULT_BATCH_TOKENS, TOKEN_BATCH_MAX, BatchSizer
from iagbench.runs.processes import Processes
from iagbench.runs.runner import RunSpec, ordered_examples, predict, run
from iagbench_plugins.datasets.sample import Sample
from iagbench_plugins.imaginers import NoImagination

SAMPLE_TEST = Sample().load("test")

OOM_PLUGIN = textwrap.dedent(
    '''
    """A model-free reader that runs out of CUDA memory above a batch of ``max_batch`` examples."""

    import torch

    from iagbench import Reader, hookimpl


    class OutOfMemoryReader(Reader):
        def __init__(self, max_batch=5):
            self.max_batch = int(max_batch)

        def answer(self, examples, contexts):
            if len(examples) > self.max_batch:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return [example.question.split()[0] for example in examples]


    @hookimpl
    def register_readers(register):
        register("oom", OutOfMemoryReader, description="test reader: out of memory above max_batch")
    '''
)


class BudgetReader(Reader):
    """Runs out of memory when a batch holds more than ``budget`` question characters; logs every call."""

    def __init__(self, budget: int):
        self.budget = budget
        self.calls: list[tuple[list[str], bool]] = []

    def answer(self, examples, contexts):
        fits = sum(len(e.question) for e in examples) <= self.budget
        self.calls.append(([e.id for e in examples], fits))
        if not fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return [e.question.upper() for e in examples]


def collect(todo, reader: Reader, sizer: BatchSizer, imaginer: Imaginer | None = None):
    """Run the runner's batch loop; return the written (records, status) pairs and the final status."""
    written: list[tuple[list[dict], dict]] = []
    status = predict(
        todo, imaginer or NoImagination(), reader, [], lambda records, status: written.append((records, status)),
        sizer, "length", {"rank": 0},
    )  # fmt: skip
    return written, status


def test_auto_probes_on_cuda_only():
    assert BatchSizer.for_setting("auto", cuda=True) == BatchSizer(AUTO_START, probe=True)
    cpu = BatchSizer.for_setting("auto", cuda=False)
    assert (cpu.size, cpu.probe, AUTO_CPU) == (16, False, 16)
    assert BatchSizer.for_setting(3, cuda=True) == BatchSizer(3)
    with pytest.raises(ConfigurationError, match="expected a positive integer or 'auto'"):
        BatchSizer.for_setting(0, cuda=False)


def test_probing_doubles_then_halves_on_out_of_memory_and_writes_every_example_once():
    todo = SAMPLE_TEST[:60]
    ordered = [e.id for e in ordered_examples(todo)]
    lengths = sorted(len(e.question) for e in todo)
    reader = BudgetReader(sum(lengths[:5]) + 1)  # five of the shortest questions fit, fewer of the longer ones
    written, status = collect(todo, reader, BatchSizer(2, probe=True))

    assert [r["id"] for records, _ in written for r in records] == ordered  # each once, in order, despite retries
    sizes = [len(batch) for batch, _ in reader.calls]
    assert sizes[:4] == [2, 4, 8, 4]  # doubled while batches fit, then halved
    failed = [i for i, (_, fits) in enumerate(reader.calls) if not fits]
    assert len(failed) == status["out_of_memory_backoffs"] >= 2  # the longer questions later ran out again
    for i in failed:  # each failure is retried at once with the first half of the same examples
        assert reader.calls[i + 1][0] == reader.calls[i][0][: sizes[i] // 2]
    after = sizes[failed[0] + 1 :]
    assert after == sorted(after, reverse=True)  # no growing again once memory ran out
    assert status["batch_size"] == sizes[failed[-1]] // 2 and status["batch_size_auto"] is True
    fitted = [len(batch) for batch, fits in reader.calls if fits]
    assert [s["examples"] for _, s in written] == list(itertools.accumulate(fitted)) and status["examples"] == 60


def test_out_of_memory_at_a_fixed_size_or_at_one_example_is_a_one_line_error():
    todo = SAMPLE_TEST[:10]
    with pytest.raises(
        ConfigurationError,
        match="CUDA out of memory with a batch of 8 examples; use a smaller --batch-size or --batch-size auto",
    ):
        collect(todo, BudgetReader(0), BatchSizer(8))
    written = []
    with pytest.raises(ConfigurationError, match="with a batch of one example .*the model does not fit"):
        written, _ = collect(todo, BudgetReader(0), BatchSizer(4, probe=True))
    assert written == []


def test_run_with_auto_on_cuda_backs_off_and_records_the_size_used(tmp_path, monkeypatch):
    plugin = tmp_path / "oom_reader.py"
    plugin.write_text(OOM_PLUGIN, encoding="utf-8")
    plugins = load_plugins(builtins_only=True, plugin_files=(str(plugin),))
    monkeypatch.setattr(Processes, "use_device", lambda self: "cuda:0")  # probe as on a GPU; the reader fakes the OOM
    spec = RunSpec("sample", "test", "none", "oom", reader_args={"max_batch": 5}, limit=30, batch_size="auto",
                   runs_dir=tmp_path / "runs")  # fmt: skip
    folder, results = run(spec, plugins, progress=False, log=lambda message: None)

    records = [json.loads(line) for line in folder.predictions_path.read_text().splitlines()]
    assert [r["id"] for r in records] == [e.id for e in ordered_examples(SAMPLE_TEST[:30])]
    assert all(r["prediction"] == r["question"].split()[0] for r in records)
    # 16 (too many) -> 8 (too many) -> 4, which it keeps
    assert results["predicted_by"][0].pop("peak_memory")["kind"] == "cuda_max_allocated"
    assert results["predicted_by"] == [
        {"file": "predictions.jsonl", "rank": 0, "world_size": 1, "device": "cuda:0", "batch_size": 4,
         "batch_size_auto": True, "out_of_memory_backoffs": 2, "examples": 30}
    ]  # fmt: skip
    assert results["n"] == 30 and json.loads((folder.path / "config.json").read_text())["batch_size"] == "auto"


def test_cli_batch_size_auto_without_cuda_is_16(invoke_cli, echo_plugin_file, tmp_path):
    output = tmp_path / "run"
    code, _, err = invoke_cli(
        "run", "--reader", "echo", "--limit", "20", "--batch-size", "auto", "--no-progress", "--output", str(output),
        plugin_files=(echo_plugin_file,),
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((output / "results.json").read_text())
    assert (
        results["predicted_by"][0]["batch_size"] == AUTO_CPU and results["predicted_by"][0]["batch_size_auto"] is False
    )
    assert json.loads((output / "config.json").read_text())["non_default_options"]["batch_size"] == "auto"
    code, _, err = invoke_cli("run", "--reader", "echo", "--batch-size", "0", "--output", str(tmp_path / "other"),
                              plugin_files=(echo_plugin_file,))  # fmt: skip
    assert code == 2 and "--batch-size 0: expected a positive integer or auto" in err


def test_greedy_predictions_do_not_depend_on_the_batch_size():
    from iagbench_plugins.imaginers.given import GivenPassages
    from iagbench_plugins.readers.causal_lm import CausalLMReader

    # The bare prompt: with the few-shot one the random model answers every question alike, which
    # would prove nothing. Gold passages make prompts of very different lengths (much padding).
    reader = CausalLMReader(model="tiny-llama", prompt="plain", max_new_tokens=8)
    todo = SAMPLE_TEST[:20]
    for imaginer in (NoImagination(), GivenPassages(k=1)):
        raw = {}
        for size in (1, 3, 16):
            written, _ = collect(todo, reader, BatchSizer(size), imaginer)
            raw[size] = [(r["id"], r["raw"]) for records, _ in written for r in records]
        assert raw[1] == raw[3] == raw[16]
        assert len({text for _, text in raw[1]}) >= 8  # the answers differ between questions


def test_token_budget_takes_examples_while_count_times_longest_fits():
    sizer = BatchSizer.for_setting(None, cuda=False, batch_tokens=100)
    assert (sizer.size, sizer.tokens) == (TOKEN_BATCH_MAX, 100)
    lengths = [10, 20, 20, 30, 40, 200, 5]
    # 3 x 20 = 60 (4 x 30 is over); 2 x 40; 200 alone (over the budget, still one example); 5
    assert [sizer.take(lengths, 0), sizer.take(lengths, 3), sizer.take(lengths, 5), sizer.take(lengths, 6)] == [
        3,
        2,
        1,
        1,
    ]
    assert BatchSizer.for_setting(3, cuda=False, batch_tokens=1000).take(lengths, 0) == 3  # --batch-size caps
    assert BatchSizer.for_setting(3, cuda=False).take(lengths, 0) == 3  # --batch-size alone: as before
    default = BatchSizer.for_setting(None, cuda=True)
    assert (default.tokens, default.probe) == (DEFAULT_BATCH_TOKENS, False)
    with pytest.raises(ConfigurationError, match="--batch-tokens 0: expected a positive integer"):
        BatchSizer.for_setting(None, cuda=False, batch_tokens=0)
    with pytest.raises(ConfigurationError, match="--batch-tokens: not with --batch-size auto"):
        BatchSizer.for_setting("auto", cuda=False, batch_tokens=10)


class CountingReader(Reader):
    """Answers with the question's first word; its prompt is one token a character of the question."""

    def answer(self, examples, contexts):
        return [e.question.split()[0] for e in examples]

    def prompt_tokens(self, examples, contexts):
        return [len(e.question) for e in examples]


def test_run_batches_by_tokens_and_readers_that_cannot_count_get_16(tmp_path):
    todo = SAMPLE_TEST[:40]
    written, status = collect(todo, CountingReader(), BatchSizer.for_setting(None, cuda=False, batch_tokens=300))
    sizes = [len(records) for records, _ in written]
    lengths = [len(e.question) for e in ordered_examples(todo)]
    start = 0
    for size in sizes:  # each batch is the most that fits (or one example)
        batch = lengths[start : start + size]
        assert size == 1 or size * max(batch) <= 300
        assert start + size == len(lengths) or (size + 1) * max(lengths[start : start + size + 1]) > 300
        start += size
    assert len(set(sizes)) > 1 and status["batch_tokens"] == 300 and status["batch_size"] == max(sizes)
    written, status = collect(todo, BudgetReader(10**6), BatchSizer.for_setting(None, cuda=False))
    assert [len(records) for records, _ in written] == [16, 16, 8] and "batch_tokens" not in status
    counting = BudgetReader(0)
    counting.prompt_tokens = CountingReader().prompt_tokens
    with pytest.raises(ConfigurationError, match=r"batch of 4 examples; use a smaller --batch-tokens \(now 1000\)"):
        collect(todo[:4], counting, BatchSizer.for_setting(None, cuda=False, batch_tokens=1000))


def test_cli_batch_tokens_is_checked_and_recorded(invoke_cli, echo_plugin_file, tmp_path):
    for words, error in (
        (["--batch-tokens", "0"], "--batch-tokens 0: expected a positive integer"),
        (["--batch-size", "auto", "--batch-tokens", "64"], "--batch-tokens: not with --batch-size auto"),
    ):
        code, _, err = invoke_cli("run", "--reader", "echo", *words, "--output", str(tmp_path / "bad"),
                                  plugin_files=(echo_plugin_file,))  # fmt: skip
        assert code == 2 and error in err
    output = tmp_path / "run"
    code, _, err = invoke_cli("run", "--reader", "echo", "--limit", "5", "--batch-tokens", "64", "--no-progress",
                              "--output", str(output), plugin_files=(echo_plugin_file,))  # fmt: skip
    assert code == 0, err
    config = json.loads((output / "config.json").read_text())
    assert (config["batch_size"], config["batch_tokens"], config["non_default_options"]["batch_tokens"]) == (
        None,
        64,
        64,
    )


def test_greedy_predictions_are_the_same_for_token_budgets_and_batch_size_one():
    from iagbench_plugins.readers.causal_lm import CausalLMReader

    reader = CausalLMReader(model="tiny-llama", prompt="plain", max_new_tokens=8)
    todo = SAMPLE_TEST[:24]
    raw, sizes = {}, {}
    for name, sizer in (
        ("one", BatchSizer(1)),
        *((n, BatchSizer.for_setting(None, False, n)) for n in (40, 120, 4096)),
    ):
        written, _ = collect(todo, reader, sizer)
        raw[name] = [(r["id"], r["raw"]) for records, _ in written for r in records]
        sizes[name] = [len(records) for records, _ in written]
    assert raw["one"] == raw[40] == raw[120] == raw[4096]
    assert len({text for _, text in raw["one"]}) >= 8  # the answers differ between questions
    assert max(sizes[40]) < max(sizes[120]) < max(sizes[4096]) == 24  # the budgets made different batches
