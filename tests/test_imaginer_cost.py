"""Imaginers' cost in the run's cost (docs/cost.md): `Context.cost` from generate/imagine (prompt and generated
tokens, FLOPs by the readers' formula) and hyperlora (encoder tokens, the hypernetwork's MACs), composites adding
their parts' costs, and the runner recording them; all on the random tiny-llama."""

from __future__ import annotations

import json

import pytest
import torch

from iagbench.contract.components import Imaginer
from iagbench.contract.compose import CompositeImaginer
from iagbench.contract.types import Context, Example
from iagbench.lm.flops import causal_passes, decoder_only_shape, forward_flops
from iagbench.runs.cost import run_cost, summary
from iagbench.runs.runner import RunSpec, run
from iagbench_plugins.imagination.generate import GenerateImaginer
from iagbench_plugins.imagination.imagine import ImagineImaginer

QUESTIONS = [Example("a", "who wrote the iliad", ("Homer",)), Example("b", "capital of peru", ("Lima",))]
HYPER = {"model": "tiny-llama", "encoder": "hashing", "rank": 2, "hidden": 16, "feature_dims": 8}


def test_generate_reports_its_prompt_generated_tokens_and_flops():
    imaginer = GenerateImaginer("tiny-llama", max_new_tokens=5)
    shape = decoder_only_shape(imaginer.lm.base_model)
    for example, context in zip(QUESTIONS, imaginer.imagine(QUESTIONS)):
        tokens = context.cost["tokens"]
        assert tokens["prompt"] == len(imaginer.prompt(example.question)) and 1 <= tokens["generated"] <= 5
        t = tokens["prompt"] + tokens["generated"] - 1
        assert context.cost["flops"] == forward_flops(shape, causal_passes(t))
        d, layers = shape["decoder"]["d_model"], shape["decoder"]["layers"]
        assert context.cost["flops"] == 2 * shape["decoder"]["parameters"] * t + 2 * layers * d * t * (t + 1) // 2


def test_imagine_counts_every_beam():
    one, three = ImagineImaginer("tiny-llama", max_new_tokens=4), ImagineImaginer("tiny-llama", max_new_tokens=4, n=3)
    shape = decoder_only_shape(one.lm.base_model)
    for imaginer, beams in ((one, 1), (three, 3)):
        for example, context in zip(QUESTIONS, imaginer.imagine(QUESTIONS)):
            prompt, generated = context.cost["tokens"]["prompt"], context.cost["tokens"]["generated"]
            assert prompt == len(imaginer.prompt_ids(example.question)) and generated % beams == 0
            steps = generated // beams
            assert 1 <= steps <= 4
            assert context.cost["flops"] == forward_flops(shape, causal_passes(prompt + steps - 1, rows=beams))


def linear_macs(network, features):
    """The hypernetwork's Linear layers' multiply-accumulates for one example, measured with forward hooks."""
    counted = []
    hooks = [
        module.register_forward_hook(lambda m, inputs, _: counted.append(inputs[0][..., 0].numel() * m.weight.numel()))
        for module in network.modules()
        if isinstance(module, torch.nn.Linear)
    ]
    with torch.no_grad():
        network(features)
    for hook in hooks:
        hook.remove()
    return sum(counted)


def test_hyperlora_reports_encoder_tokens_and_the_hypernetworks_macs(plugins):
    imaginer = plugins["imaginers"].get("hyperlora").build(**HYPER)
    network = imaginer.network
    network.whitening.fitted.fill_(True)
    measured = linear_macs(network, torch.randn(1, imaginer.encoder.dims))
    whitening = imaginer.encoder.dims * HYPER["feature_dims"]
    assert network.macs() == measured + whitening
    contexts = imaginer.imagine(QUESTIONS)
    for example, context in zip(QUESTIONS, contexts):
        assert context.cost == {"flops": 2 * network.macs(), "tokens": {"encoder": len(example.question.split())}}
    assert contexts[0] == Context(adapter=contexts[0].adapter)  # the cost takes no part in comparing contexts


def test_sentence_encoder_flops_follow_the_formula(plugins):
    from iagbench_plugins.hyperlora.features import build_encoder

    try:
        encoder = build_encoder("minilm", "cpu")
    except Exception as error:  # noqa: BLE001 (the MiniLM wheel is optional)
        pytest.skip(f"no MiniLM encoder here: {error}")
    from iagbench.lm.flops import encoder_only_shape

    shape = encoder_only_shape(encoder.model[0].auto_model)["encoder"]
    ((n, flops),) = encoder.cost(["who wrote the iliad"])
    assert n == len(encoder.model.tokenizer("who wrote the iliad")["input_ids"])
    assert flops == 2 * shape["parameters"] * n + 2 * shape["layers"] * shape["d_model"] * n * n


class Costly(Imaginer):
    provides = frozenset({"passages"})

    def __init__(self, cost):
        self.cost = cost

    def imagine(self, examples):
        return [Context(cost=self.cost) for _ in examples]


def test_a_composite_adds_its_parts_costs():
    composite = CompositeImaginer("a+b+c", [("a", Costly({"flops": 5, "tokens": {"prompt": 2}})),
                                             ("b", Costly({"flops": 7, "tokens": {"prompt": 1, "encoder": 3}})),
                                             ("c", Costly(None))])  # fmt: skip
    (context,) = composite.imagine(QUESTIONS[:1])
    assert context.cost == {"flops": 12, "tokens": {"prompt": 3, "encoder": 3}}
    assert CompositeImaginer("c", [("c", Costly(None))]).imagine(QUESTIONS[:1])[0].cost is None


def test_a_run_records_the_imaginers_cost_and_adds_it_to_gflop(plugins, tmp_path):
    spec = RunSpec("sample", "test", "generate", "tiny-llama", reader_args={"prompt": "plain", "max_new_tokens": 2},
                   imaginer_args={"model": "tiny-llama", "max_new_tokens": 3}, limit=3, batch_size=2,
                   runs_dir=tmp_path)  # fmt: skip
    folder, _ = run(spec, plugins, progress=False, log=lambda message: None)
    records = folder.records()
    assert all(r["cost"]["imaginer_flops"] > 0 and r["cost"]["imaginer_tokens"]["generated"] >= 1 for r in records)
    assert all("cost" not in r["context"] for r in records)
    cost = folder.results()["cost"]
    assert cost["total"]["imaginer_flops"] == sum(r["cost"]["imaginer_flops"] for r in records)
    mean = cost["per_example"]
    assert summary(cost)["gflop"] == pytest.approx((mean["reader_flops"] + mean["imaginer_flops"]) / 1e9)
    assert "cost" not in json.dumps(folder.config()["identity"])


def test_imaginer_measures_one_example_lacks_are_absent():
    records = [{"cost": {"imaginer_flops": 4, "imaginer_tokens": {"prompt": 2, "encoder": 1}}},
               {"cost": {"imaginer_flops": 6, "imaginer_tokens": {"prompt": 3}}}]  # fmt: skip
    assert run_cost(records, [])["total"] == {"imaginer_flops": 10, "imaginer_tokens": {"prompt": 5}}
