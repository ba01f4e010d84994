"""Composite imaginers (`a+b[+c]`): the registry resolves them, provides is the union, contexts merge in
order, options route by prefix, what cannot merge is refused, and one trainable part trains and loads."""

from __future__ import annotations

import json

import pytest

from iagbench import ConfigurationError, Context, Example, Imaginer, Passage, Reader, UnknownNameError, hookimpl
from iagbench.contract.components import Trainable
from iagbench.contract.compose import CompositeImaginer
from iagbench.contract.plugins import load_plugins
from iagbench.runs.runner import Resolved, check_compatible, plugin_versions
from iagbench.training.folder import read_log
from iagbench.training.spec import TrainSpec
from iagbench.training.train import train

EXAMPLES = [Example("q1", "who wrote the iliad", ("Homer",)), Example("q2", "where is lima", ("Peru",))]


class Tagged(Imaginer):
    """n passages per question whose text names the tag, the question and the position."""

    provides = frozenset({"passages"})

    def __init__(self, tag="t", n=1, device="cpu"):
        self.tag, self.n, self.device = tag, n, device

    def imagine(self, examples):
        return [
            Context(passages=tuple(Passage(f"{self.tag}:{e.id}:{i}", title=self.tag) for i in range(self.n)))
            for e in examples
        ]

    def describe(self):
        return {"tag": self.tag, "n": self.n, "device": self.device}


class Adapter(Imaginer):
    provides = frozenset({"adapter"})

    def __init__(self, device="cpu"):
        self.device = device

    def imagine(self, examples):
        return [Context(adapter=("adapter", e.id)) for e in examples]


class PassagesOnly(Reader):
    accepts = frozenset({"passages"})

    def answer(self, examples, contexts):
        return ["" for _ in examples]


class Plugin:
    @hookimpl
    def register_imaginers(self, register):
        register("tagged", Tagged, aliases=("tags",))
        register("adapter-a", Adapter)
        register("adapter-b", Adapter)

    @hookimpl
    def register_readers(self, register):
        register("passages-only", PassagesOnly)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(builtins_only=True, extra=(Plugin(),), plugin_files=())


def test_registry_resolves_a_composite_with_the_union_of_provides(plugins):
    entry = plugins["imaginers"].get("tags+adapter-a")
    assert entry.name == "tagged+adapter-a"  # canonical names, aliases resolved
    assert entry.declared("provides") == frozenset({"passages", "adapter"})
    assert [part.name for part in entry.parts] == ["tagged", "adapter-a"]
    check_compatible(entry, plugins["readers"].get("tiny-llama"))  # accepts both
    with pytest.raises(ConfigurationError, match=r"reader 'passages-only' accepts only \['passages'\]: adapter"):
        check_compatible(entry, plugins["readers"].get("passages-only"))
    check_compatible(plugins["imaginers"].get("tagged+none"), plugins["readers"].get("passages-only"))


def test_a_run_records_every_part_s_plugin(plugins):
    resolved = Resolved(
        plugins["datasets"].get("sample"),
        plugins["imaginers"].get("bm25+hyperlora"),
        plugins["readers"].get("tiny-llama"),
        [],
    )
    assert set(plugin_versions(plugins, resolved)) == {
        "iagbench-datasets",
        "iagbench-retrieval",
        "iagbench-hyperlora",
        "iagbench-readers",
    }


def test_contexts_merge_passages_in_part_order_and_keep_the_adapter(plugins):
    imaginer = plugins["imaginers"].get("tagged+adapter-a").build(**{"tagged.tag": "x", "tagged.n": 2})
    assert imaginer.provides == frozenset({"passages", "adapter"})
    contexts = imaginer.imagine(EXAMPLES)
    assert [p.text for p in contexts[1].passages] == ["x:q2:0", "x:q2:1"]
    assert contexts[1].adapter == ("adapter", "q2")
    assert imaginer.describe() == {
        "composite": "tagged+adapter-a",
        "parts": [{"name": "tagged", "tag": "x", "n": 2, "device": "cpu"}, {"name": "adapter-a"}],
    }


def test_options_route_by_prefix_and_shared_options_reach_every_part_that_takes_them(plugins):
    imaginer = plugins["imaginers"].get("tagged+adapter-a").build(device="cuda:1", n=3, **{"tags.tag": "y"})
    tagged, adapter = (part for _, part in imaginer.parts)
    assert (tagged.tag, tagged.n, tagged.device, adapter.device) == ("y", 3, "cuda:1", "cuda:1")
    prefixed_wins = plugins["imaginers"].get("tagged+adapter-a").build(device="cpu", **{"adapter-a.device": "meta"})
    assert [part.device for _, part in prefixed_wins.parts] == ["cpu", "meta"]
    entry = plugins["imaginers"].get("tagged+none")
    with pytest.raises(
        ConfigurationError, match=r"no part takes option 'k' \(options: tagged: tag, n, device; none: \(none\)\)"
    ):
        entry.build(k=1)
    with pytest.raises(ConfigurationError, match=r"option 'bm25.k' names no part \(parts: tagged, none\)"):
        entry.build(**{"bm25.k": 1})
    with pytest.raises(
        ConfigurationError, match=r"imaginer 'tagged\+none', part 'tagged': .*unexpected keyword argument 'x'"
    ):
        entry.build(**{"tagged.x": 1})


@pytest.mark.parametrize(
    "name, error, needle",
    [
        ("adapter-a+tagged+adapter-b", ConfigurationError, "'adapter-a' and 'adapter-b' both provide adapters"),
        ("tagged+tags", ConfigurationError, "'tagged' appears twice (as 'tagged' and 'tags')"),
        ("tagged+", ConfigurationError, "an empty part"),
        ("tagged+bm26", UnknownNameError, "Did you mean 'bm25'?"),
    ],
)
def test_what_cannot_merge_is_refused_before_anything_is_built(plugins, name, error, needle):
    with pytest.raises(error) as raised:
        plugins["imaginers"].get(name)
    assert needle in str(raised.value) and "\n" not in str(raised.value)


def test_two_adapters_for_one_question_are_refused_at_merge():
    composite = CompositeImaginer("a+b", [("a", Adapter()), ("b", Adapter())])
    with pytest.raises(ConfigurationError, match="'a' and 'b' both gave an adapter for one question"):
        composite.imagine(EXAMPLES)


class TrainableTagged(Tagged, Trainable):
    def __init__(self):
        import torch

        super().__init__()
        self.module = torch.nn.Linear(1, 1)

    def trainable_module(self):
        return self.module


def test_the_composite_trains_through_its_one_trainable_part():
    part = TrainableTagged()
    composite = CompositeImaginer("given+t", [("given", Tagged()), ("t", part)])
    assert composite.trainable_module() is part.module and not composite.has_loss()
    composite.train(True)
    assert part.module.training
    two = CompositeImaginer("t1+t2", [("t1", TrainableTagged()), ("t2", TrainableTagged())])
    with pytest.raises(ConfigurationError, match="parts 't1' and 't2' are both trainable; iagbench train trains one"):
        two.trainable_module()
    assert CompositeImaginer("x", [("tagged", Tagged())]).trainable_module() is None


def test_given_plus_hyperlora_trains_and_a_run_loads_the_part_s_checkpoint(tmp_path, invoke_cli):
    """The real pair: the hyperlora part of `given+hyperlora` trains through tiny-llama's loss with the given passages."""
    plugins = load_plugins(builtins_only=True, plugin_files=())
    hyper = {"hyperlora.model": "tiny-llama", "encoder": "hashing", "rank": 2, "hidden": 16, "feature_dims": 4}
    options = {"given.k": 1, **hyper}
    output = tmp_path / "out"
    train(
        TrainSpec(
            dataset="sample",
            imaginer="given+hyperlora",
            reader="tiny-llama",
            imaginer_args=options,
            limit=8,
            steps=2,
            batch_size=4,
            lr=0.01,
            log_every=1,
            save_every=2,
            output=output,
        ),
        plugins,
        progress=False,
        log=lambda message: None,
    )
    assert [r["step"] for r in read_log(output)] == [1, 2]
    assert "given+hyperlora" in json.loads((output / "train_config.json").read_text())["identity"]["imaginer"]["name"]
    args = ",".join(f"{k}={v}" for k, v in {**options, "hyperlora.checkpoint": output}.items())
    code, _, err = invoke_cli(
        "run",
        "--split",
        "test",
        "--limit",
        "2",
        "--metrics",
        "em",
        "--no-progress",
        "--imaginer",
        "given+hyperlora",
        "--imaginer-args",
        args,
        "--reader",
        "tiny-llama",
        "--reader-args",
        "max_new_tokens=2",
        "--output",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    parts = json.loads((tmp_path / "run" / "components.json").read_text())["imaginer"]["parts"]
    assert [p["name"] for p in parts] == ["given", "hyperlora"] and parts[1]["whitening_fitted"] is True
    record = json.loads((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()[0])
    assert len(record["context"]["passages"]) == 1 and "adapter" in record["context"]
