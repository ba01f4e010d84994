"""Faults at the plugin contract: the documented minimum of a component is enough, checks before anything loads,
one-line errors for hyperlora's feature_dims and for folders given where files are expected."""

from __future__ import annotations

import functools
import json
import textwrap
import time
from pathlib import Path

import pytest

from iagbench import ConfigurationError, Example
from iagbench.contract.plugins import load_plugins

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "toy_trainable.py"

BARE_PLUGIN = textwrap.dedent(
    '''
    """Components written against the documented contract only: no iagbench base class."""

    import zlib

    from iagbench import Context, Example, Passage, hookimpl
    from iagbench.contract.components import Trainable


    class BareData:
        def load(self, split):
            for i in range(5):
                yield Example(f"q{i}", f"what is word{i} here", (f"word{i}",))


    class BareImaginer:
        provides = frozenset({"passages"})

        def __init__(self, k=1):
            self.k = k

        def imagine(self, examples):
            return [Context(passages=(Passage(e.question, title=e.question.split()[2]),) * self.k) for e in examples]


    class BareReader:
        accepts = frozenset({"passages"})

        def answer(self, examples, contexts):
            return [c.passages[0].title if c.passages else "" for c in contexts]


    class BareMetric:
        name, version = "bare_em", "1"

        def score(self, prediction, answers, passages):
            return {"bare_em": float(prediction in answers)}


    class NoAnswer:
        accepts = frozenset({"passages"})

        def reply(self, examples, contexts):
            return []


    def no_imagine(**options):
        return object()


    no_imagine.provides = frozenset()


    class HashedAdapter(Trainable):
        """A trainable imaginer that subclasses Trainable but not Imaginer: trains through toy-reader."""

        provides = frozenset({"adapter"})

        def __init__(self):
            import torch

            self.net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh())

        def trainable_module(self):
            return self.net

        def imagine(self, examples):
            import torch

            x = torch.zeros(len(examples), 64)
            for row, e in enumerate(examples):
                for word in e.question.lower().split():
                    x[row, zlib.crc32(word.encode()) % 64] += 1.0
            return [Context(adapter=a) for a in self.net(x)]


    @hookimpl
    def register_datasets(register):
        register("bare-data", BareData)


    @hookimpl
    def register_imaginers(register):
        register("bare-imaginer", BareImaginer)
        register("no-imagine", no_imagine)
        register("hashed-adapter", HashedAdapter)


    @hookimpl
    def register_readers(register):
        register("bare-reader", BareReader)
        register("no-answer", NoAnswer)


    @hookimpl
    def register_metrics(register):
        register("bare_em", BareMetric)
    '''
)


@pytest.fixture(scope="module")
def bare_plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bare") / "bare_plugin.py"
    path.write_text(BARE_PLUGIN, encoding="utf-8")
    return path


def error_line(err: str) -> str:
    """The CLI's one error line (and nothing else: no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("iagbench: error: "), err
    return lines[0]


# ---- 1. the documented minimum is enough ----


def test_components_that_subclass_nothing_run_end_to_end(tmp_path, invoke_cli, bare_plugin):
    run = tmp_path / "run"
    code, out, err = invoke_cli(
        "run", "--dataset", "bare-data", "--split", "test", "--imaginer", "bare-imaginer", "--imaginer-args", "k=2",
        "--reader", "bare-reader", "--metrics", "em,bare_em", "--output", str(run), "--no-progress",
        plugin_files=(bare_plugin,),
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((run / "results.json").read_text())
    assert results["n"] == 5 and results["metrics"]["em"] == 100.0 and results["metrics"]["bare_em"] == 100.0
    assert json.loads((run / "components.json").read_text()) == {"imaginer": {}, "reader": {}}
    assert json.loads((run / "config.json").read_text())["dataset_source"] == {}
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 5 and len(records[0]["context"]["passages"]) == 2


def test_a_product_keeps_its_own_members_and_gets_the_base_defaults(bare_plugin):
    from iagbench import Dataset, Imaginer, Reader

    plugins = load_plugins(builtins_only=True, plugin_files=(str(bare_plugin),))
    imaginer = plugins["imaginers"].get("bare-imaginer").build(k=3)
    assert isinstance(imaginer, Imaginer) and type(imaginer).__name__ == "BareImaginer"
    assert imaginer.k == 3 and imaginer.provides == frozenset({"passages"}) and imaginer.describe() == {}
    reader = plugins["readers"].get("bare-reader").build()
    assert isinstance(reader, Reader) and reader.accepts == frozenset({"passages"})
    data = plugins["datasets"].get("bare-data").build()
    assert isinstance(data, Dataset) and data.splits == ("train", "dev", "test") and data.describe("test") == {}
    assert len(list(data.load("test"))) == 5


def test_a_reader_without_answer_is_one_line_naming_plugin_component_and_method(tmp_path, invoke_cli, bare_plugin):
    started = time.perf_counter()
    code, _, err = invoke_cli(
        "run", "--dataset", "sample", "--split", "test", "--imaginer", "bare-imaginer", "--reader", "no-answer",
        "--runs-dir", str(tmp_path / "runs"), "--no-progress", plugin_files=(bare_plugin,),
    )  # fmt: skip
    line = error_line(err)
    assert code == 2 and time.perf_counter() - started < 10
    assert f"reader 'no-answer' of plugin 'file:{bare_plugin}'" in line and "'answer'" in line, line
    assert not (tmp_path / "runs").exists()


def test_a_function_factory_whose_product_cannot_imagine_is_refused_at_build(bare_plugin):
    plugins = load_plugins(builtins_only=True, plugin_files=(str(bare_plugin),))
    with pytest.raises(ConfigurationError, match=r"imaginer 'no-imagine' of plugin 'file:.*': .*'imagine'"):
        plugins["imaginers"].get("no-imagine").build()


def test_an_abstract_subclass_is_refused_in_one_line_before_it_is_called():
    from iagbench import Reader
    from iagbench.contract.registry import Entry

    class Lazy(Reader):
        def anwser(self, examples, contexts):  # misspelt
            return []

    with pytest.raises(ConfigurationError, match=r"reader 'lazy' of plugin 'p': Lazy does not implement 'answer'"):
        Entry("readers", "lazy", Lazy, plugin="p").build()


def test_an_imaginer_that_subclasses_only_trainable_trains(tmp_path, bare_plugin, one_torch_thread):
    from iagbench.training.spec import TrainSpec
    from iagbench.training.train import train

    plugins = load_plugins(builtins_only=True, plugin_files=(str(TOY), str(bare_plugin)))
    spec = TrainSpec(
        dataset="sample", imaginer="hashed-adapter", reader="toy-reader", reader_args={"trainable": False},
        steps=2, batch_size=4, lr=0.05, log_every=1, save_every=2, eval_every=2, eval_split="train",
        eval_limit=4, output=tmp_path / "out",
    )  # fmt: skip
    train(spec, plugins, progress=False, log=lambda message: None)
    final = tmp_path / "out" / "checkpoints" / "step-000002"
    assert (final / "imaginer.safetensors").is_file() and not (final / "reader.safetensors").exists()


# ---- 2. checks before any model loads or any run folder is created ----

TINY_HYPER = "encoder=hashing,rank=2,hidden=8,feature_dims=2"


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if the hyperlora imaginer or a reader model is ever constructed."""
    from iagbench_plugins.hyperlora.imaginer import HyperLoRAImaginer
    from iagbench_plugins.readers.causal_lm import CausalLMReader

    for cls in (HyperLoRAImaginer, CausalLMReader):

        @functools.wraps(cls.__init__)  # keeps the signature that options are checked against
        def explode(self, *args, **kwargs):
            raise AssertionError(f"{type(self).__name__} was built")

        monkeypatch.setattr(cls, "__init__", explode)


def run_hyperlora(invoke_cli, tmp_path, imaginer_args: str, reader: str = "tiny-llama") -> tuple[int, str, float]:
    started = time.perf_counter()
    code, _, err = invoke_cli(
        "run", "--dataset", "sample", "--split", "test", "--limit", "2", "--imaginer", "hyperlora",
        "--imaginer-args", imaginer_args, "--reader", reader, "--runs-dir", str(tmp_path / "runs"), "--no-progress",
    )  # fmt: skip
    return code, err, time.perf_counter() - started


def test_hyperlora_run_without_checkpoint_stops_before_anything_loads(tmp_path, invoke_cli, nothing_built):
    code, err, seconds = run_hyperlora(invoke_cli, tmp_path, f"model=tiny-llama,{TINY_HYPER}")
    line = error_line(err)
    assert code == 2 and "checkpoint=" in line and "iagbench train" in line, line
    assert not (tmp_path / "runs").exists() and seconds < 10


def test_hyperlora_for_another_model_than_the_reader_stops_before_anything_loads(tmp_path, invoke_cli, nothing_built):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "imaginer.safetensors").write_bytes(b"")  # never read: the check stops first
    code, err, seconds = run_hyperlora(invoke_cli, tmp_path, f"model=fid-tiny,{TINY_HYPER},checkpoint={checkpoint}")
    line = error_line(err)
    assert code == 2 and "model='fid-tiny'" in line and "reader 'tiny-llama'" in line, line
    assert not (tmp_path / "runs").exists() and seconds < 15


def test_hyperlora_checkpoint_trained_for_another_model_or_settings_stops_early(tmp_path, invoke_cli, nothing_built):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "imaginer.safetensors").write_bytes(b"")
    trained = {"model": "fid-tiny", "encoder": "hashing", "rank": 2, "hidden": 8, "feature_dims": 2}
    config = {"imaginer": {"name": "hyperlora", "options": trained}, "reader": {"name": "fid-tiny", "options": {}}}
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, err, seconds = run_hyperlora(invoke_cli, tmp_path, f"model=tiny-llama,{TINY_HYPER},checkpoint={checkpoint}")
    line = error_line(err)
    assert code == 2 and f"checkpoint {checkpoint}" in line and "model='fid-tiny'" in line, line
    assert not (tmp_path / "runs").exists() and seconds < 15
    # a composite's training: the hyperlora part's options are the shared ones it takes and its prefixed ones
    composite = {"model": "fid-tiny", "hyperlora.rank": 4, "encoder": "hashing", "hidden": 8, "feature_dims": 2}
    config["imaginer"] = {"name": "given+hyperlora", "options": composite}
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, err, _ = run_hyperlora(
        invoke_cli, tmp_path, f"model=fid-tiny,{TINY_HYPER},checkpoint={checkpoint}", "fid-tiny"
    )
    line = error_line(err)
    assert code == 2 and "rank=4" in line and "rank=2" in line, line


def test_the_preflight_of_a_composite_reaches_its_hyperlora_part(tmp_path, invoke_cli, nothing_built):
    started = time.perf_counter()
    code, _, err = invoke_cli(
        "run", "--dataset", "sample", "--split", "test", "--imaginer", "given+hyperlora",
        "--imaginer-args", f"hyperlora.model=tiny-llama,{TINY_HYPER}", "--reader", "tiny-llama",
        "--runs-dir", str(tmp_path / "runs"), "--no-progress",
    )  # fmt: skip
    line = error_line(err)
    assert code == 2 and "part 'hyperlora'" in line and "checkpoint=" in line, line
    assert not (tmp_path / "runs").exists() and time.perf_counter() - started < 10


def test_hyperlora_preflight_for_training_needs_no_checkpoint_but_checks_the_model(plugins):
    from iagbench.contract.preflight import preflight

    imaginer, reader = plugins["imaginers"].get("hyperlora"), plugins["readers"].get("tiny-llama")
    options = {"model": "tiny-llama", "encoder": "hashing", "feature_dims": 2}
    preflight(imaginer, options, reader, {}, purpose="train")
    with pytest.raises(ConfigurationError, match="hyperlora model='fid-tiny' does not fit reader 'tiny-llama'"):
        preflight(imaginer, {**options, "model": "fid-tiny"}, reader, {}, purpose="train")
    with pytest.raises(ConfigurationError, match="hyperlora option rank=0: expected a positive integer"):
        preflight(imaginer, {**options, "rank": 0}, reader, {}, purpose="train")
    with pytest.raises(ConfigurationError, match="imaginer 'hyperlora': got an unexpected keyword argument 'rnak'"):
        preflight(imaginer, {**options, "rnak": 2}, reader, {}, purpose="train")


# ---- 3. feature_dims above the number of training questions ----


def test_feature_dims_above_the_training_questions_is_one_line_naming_the_option():
    from iagbench_plugins.hyperlora.imaginer import HyperLoRAImaginer

    imaginer = HyperLoRAImaginer("tiny-llama", encoder="hashing", rank=2, hidden=8, feature_dims=8)
    examples = [Example(f"q{i}", f"question {i}", ("a",)) for i in range(5)]
    with pytest.raises(ConfigurationError) as error:
        imaginer.prepare(examples)
    message = str(error.value)
    assert "feature_dims=8" in message and "5 training questions" in message and "\n" not in message
    with pytest.raises(ConfigurationError, match="hyperlora option feature_dims=600: above the 512 dimensions"):
        HyperLoRAImaginer("tiny-llama", encoder="hashing", feature_dims=600)


# ---- 4. a folder where a file is expected ----


def test_a_folder_given_as_the_question_file_or_the_corpus_says_so(tmp_path, invoke_cli):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    common = ("--split", "test", "--reader", "tiny-llama", "--runs-dir", str(tmp_path / "runs"), "--no-progress")
    code, _, err = invoke_cli("run", "--dataset", "fid-json", "--dataset-args", f"path={folder}", *common)
    line = error_line(err)
    assert code == 2 and f"{folder} is a folder, not a file" in line, line
    code, _, err = invoke_cli(
        "run", "--dataset", "sample", "--imaginer", "bm25", "--imaginer-args", f"corpus={folder}", *common
    )
    line = error_line(err)
    assert code == 2 and f"corpus file {folder} is a folder, not a file" in line, line
    assert not (tmp_path / "runs").exists()
    from iagbench_plugins.retrieval.corpus import open_corpus

    with pytest.raises(ConfigurationError, match="missing.jsonl does not exist"):
        open_corpus(tmp_path / "missing.jsonl")


def test_feature_dims_above_the_training_questions_on_the_command_line(tmp_path, invoke_cli):
    code, _, err = invoke_cli(
        "train", "--dataset", "sample", "--limit", "4", "--imaginer", "hyperlora",
        "--imaginer-args", "model=tiny-llama,encoder=hashing,rank=2,hidden=8,feature_dims=8", "--reader", "tiny-llama",
        "--steps", "1", "--batch-size", "4", "--output", str(tmp_path / "trained"), "--no-progress",
    )  # fmt: skip
    line = error_line(err)
    assert code == 2 and "hyperlora option feature_dims=8" in line and "got 4 training questions" in line, line
