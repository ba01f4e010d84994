"""HyperLoRA: batched per-example LoRA equals each example's LoRA merged into the weights; training moves the loss."""

from __future__ import annotations

import copy

import pytest
import torch
from lora_adapters import random_lora_adapter
from trends import assert_falls

from iagbench import ConfigurationError, Context, Example
from iagbench.lm.lora import LoRAAdapter, target_modules
from iagbench_plugins.hyperlora.hypernetwork import Whitening
from iagbench_plugins.hyperlora.imaginer import HyperLoRAImaginer
from iagbench_plugins.readers.causal_lm import CausalLMReader

QUESTIONS = ["who wrote the iliad", "where is lake titicaca", "how many legs does a spider have"]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def reader() -> CausalLMReader:
    return CausalLMReader(model="tiny-llama", max_new_tokens=5)


def random_adapter(reader: CausalLMReader, seed: int) -> LoRAAdapter:
    return random_lora_adapter(reader.model, TARGETS, seed)


def merged_logits(reader: CausalLMReader, adapter: LoRAAdapter, text: str) -> torch.Tensor:
    """Reference: a copy of the model with W + (A @ B)^T merged in, no hooks involved."""
    model = copy.deepcopy(reader.model)
    for (kind, layer), linear in target_modules(model, TARGETS).items():
        linear.weight.data += (adapter.a[kind][layer] @ adapter.b[kind][layer]).T * adapter.scale
    ids = reader.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_batched_lora_equals_each_lora_merged_into_the_weights(reader: CausalLMReader) -> None:
    adapters = [random_adapter(reader, seed) for seed in range(len(QUESTIONS))]
    reader.adapters_of([Context(adapter=a) for a in adapters])  # builds the hooks
    encoded = reader.tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    with torch.no_grad(), reader._lora.active(adapters, dtype=torch.float32, device="cpu"):
        batched = reader.model(**encoded).logits
    for row, (question, adapter) in enumerate(zip(QUESTIONS, adapters)):
        reference = merged_logits(reader, adapter, question)
        length = reference.shape[1]
        torch.testing.assert_close(batched[row, -length:], reference[0], rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # outside the block the model is the plain model again
        plain = reader.model(**encoded).logits
    assert not torch.allclose(plain, batched)


def test_generation_with_adapters_is_batch_independent(reader: CausalLMReader) -> None:
    examples = [Example(str(i), q, ("x",)) for i, q in enumerate(QUESTIONS)]
    contexts = [Context(adapter=random_adapter(reader, seed)) for seed in range(len(QUESTIONS))]
    together = [a.raw for a in reader.answer(examples, contexts)]
    alone = [reader.answer([e], [c])[0].raw for e, c in zip(examples, contexts)]
    assert together == alone
    assert together != [a.raw for a in reader.answer(examples, [Context()] * len(examples))]


def test_adapters_for_another_model_are_refused(reader: CausalLMReader) -> None:
    adapter = random_adapter(reader, 0)
    adapter.a["q_proj"] = adapter.a["q_proj"][:1]
    with pytest.raises(ConfigurationError, match="another model"):
        reader.answer([Example("1", "q", ("x",))], [Context(adapter=adapter)])


def test_whitening_gives_unit_covariance() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(500, 12, generator=generator) @ torch.randn(12, 12, generator=generator) + 3.0
    whitening = Whitening(12, 6)
    whitening.fit(features)
    projected = (features - whitening.mean) @ whitening.projection
    torch.testing.assert_close(torch.cov(projected.T), torch.eye(6), rtol=1e-3, atol=1e-3)
    assert torch.allclose(whitening(features).norm(dim=-1), torch.ones(500))
    with pytest.raises(ValueError, match="more than 6 examples"):
        Whitening(12, 6).fit(features[:6])


@pytest.fixture(scope="module")
def imaginer() -> HyperLoRAImaginer:
    torch.manual_seed(0)  # the hypernetwork's initial weights: the same whichever tests ran before
    imaginer = HyperLoRAImaginer(model="tiny-llama", rank=4, hidden=32, feature_dims=8, encoder="hashing", device="cpu")
    imaginer.prepare([Example(str(i), f"question number {i} about topic {i % 7}", ("x",)) for i in range(40)])
    return imaginer


def test_untrained_hypernetwork_leaves_the_reader_unchanged(
    reader: CausalLMReader, imaginer: HyperLoRAImaginer
) -> None:
    examples = [Example(str(i), q, ("x",)) for i, q in enumerate(QUESTIONS)]
    with_adapters = reader.answer(examples, imaginer.imagine(examples))
    without = reader.answer(examples, [Context()] * len(examples))
    assert [a.raw for a in with_adapters] == [a.raw for a in without]


def test_training_the_hypernetwork_lowers_the_answer_loss(reader: CausalLMReader, imaginer: HyperLoRAImaginer) -> None:
    examples = [Example(str(i), q, ("Paris",)) for i, q in enumerate(QUESTIONS)]
    network = imaginer.trainable_module()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)  # 1e-2 oscillates: its loss after 8 steps was luck
    network.train()
    losses = []
    for _ in range(12):
        loss = reader.loss(examples, imaginer.imagine(examples))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    network.eval()
    # A frozen random tiny model bounds its logits (log 259 = 5.56 is chance): a drop of 0.5 is a real one.
    assert_falls(losses, by=0.5)
    assert all(p.grad is None for p in reader.model.parameters())  # the reader stays frozen


def test_imagine_before_fitting_is_a_clear_error() -> None:
    fresh = HyperLoRAImaginer(model="tiny-llama", rank=2, hidden=8, feature_dims=4, encoder="hashing", device="cpu")
    with pytest.raises(ConfigurationError, match="whitening is not fitted"):
        fresh.imagine([Example("1", "q", ("x",))])


def test_peft_lora_baseline_starts_unchanged_trains_only_lora_weights() -> None:
    plain = CausalLMReader(model="tiny-llama", max_new_tokens=4)
    lora = CausalLMReader(model="tiny-llama", max_new_tokens=4, lora_rank=2)
    examples = [Example(str(i), q, ("Paris",)) for i, q in enumerate(QUESTIONS)]
    contexts = [Context()] * len(examples)
    assert [a.raw for a in lora.answer(examples, contexts)] == [a.raw for a in plain.answer(examples, contexts)]
    weights = lora.trainable_module()
    names = [name for name, _ in weights.named_parameters()]
    assert names and all("lora_" in name or ".A." in name or ".B." in name for name in names)
    assert sum(p.numel() for p in weights.parameters()) < 0.2 * sum(p.numel() for p in lora.model.parameters())
    optimizer = torch.optim.Adam(weights.parameters(), lr=1e-2)
    first = lora.loss(examples, contexts)
    for _ in range(5):
        loss = lora.loss(examples, contexts)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert lora.loss(examples, contexts).item() < first.item() - 0.1
