"""HyperLoRA on the T5 FiD reader: per-example LoRA on encoder rows (one per passage) and decoder rows
equals each example's LoRA merged into the weights; the imaginer finds T5's targets; training and runs."""

from __future__ import annotations

import json

import pytest
import torch
from lora_adapters import random_lora_adapter
from trends import assert_falls

from iagbench import ConfigurationError, Context, Example, Passage
from iagbench.lm.lora import T5_DEFAULT_TARGETS, T5_TARGETS, LoRAAdapter, target_modules
from iagbench.lm.skeletons import model_shapes
from iagbench.training.folder import read_log
from iagbench_plugins.hyperlora.imaginer import HyperLoRAImaginer
from iagbench_plugins.readers.fid import FiDReader

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_NEW = 6
MAXLEN = 96
PASSAGES = (
    Passage("The Iliad is an ancient Greek epic poem attributed to Homer, set during the Trojan War.", "Iliad"),
    Passage("Lake Titicaca lies on the border of Peru and Bolivia.", "Lake Titicaca"),
    Passage("Mars has two moons, Phobos and Deimos.", "Mars"),
)
EXAMPLES = [
    Example("0", "who wrote the iliad", ("Homer",)),
    Example("1", "where is lake titicaca", ("Peru", "Bolivia")),
    Example("2", "how many moons does mars have", ("two", "2")),
    Example("3", "which element has the symbol fe", ("iron",)),
]
PASSAGE_SETS = [PASSAGES, (), PASSAGES[1:2], PASSAGES[::-1][:2]]  # 3, 0 (closed book), 1 and 2 passages
TARGETS = ["Homer", "Peru", "two", "iron"]


def make_reader(double: bool = False, **options) -> FiDReader:
    reader = FiDReader(model="fid-tiny", text_maxlength=MAXLEN, max_new_tokens=MAX_NEW, train="none", **options)
    if double:  # float64: a LoRA added on the side and one merged into the weights agree to rounding
        reader.model.double()
        reader.dtype = torch.float64
    return reader


@pytest.fixture(scope="module")
def reader() -> FiDReader:
    return make_reader()


def random_adapter(model: torch.nn.Module, targets, seed: int) -> LoRAAdapter:
    return random_lora_adapter(model, targets, seed, rank=3, weight_scale=0.5, scale=0.7)


def merged_reader(adapter: LoRAAdapter, **options) -> FiDReader:
    """Reference: a fresh reader (the same seeded weights) with W + (A @ B)^T * scale merged in, no hooks."""
    merged = make_reader(**options)
    with torch.no_grad():
        for (kind, layer), linear in target_modules(merged.model, sorted(adapter.a)).items():
            delta = adapter.a[kind][layer].to(linear.weight.dtype) @ adapter.b[kind][layer].to(linear.weight.dtype)
            linear.weight += delta.T * adapter.scale
    return merged


def contexts_with(adapters) -> list[Context]:
    return [Context(passages, adapter=adapter) for passages, adapter in zip(PASSAGE_SETS, adapters)]


def test_t5_targets_are_found_in_the_encoder_decoder_and_cross_attention(reader):
    modules = target_modules(reader.model, T5_TARGETS)
    assert {kind for kind, _ in modules} == set(T5_TARGETS) and {layer for _, layer in modules} == {0, 1}
    assert modules[("enc_q", 1)] is reader.model.encoder.block[1].layer[0].SelfAttention.q
    assert modules[("dec_v", 0)] is reader.model.decoder.block[0].layer[0].SelfAttention.v
    assert modules[("cross_q", 1)] is reader.model.decoder.block[1].layer[1].EncDecAttention.q
    assert modules[("enc_wo", 0)] is reader.model.encoder.block[0].layer[1].DenseReluDense.wo
    assert modules[("dec_wi", 1)] is reader.model.decoder.block[1].layer[2].DenseReluDense.wi
    with pytest.raises(ConfigurationError, match="target 'q_proj'.*t5 targets: enc_q"):
        target_modules(reader.model, ["q_proj"])


@pytest.mark.parametrize("targets", [T5_DEFAULT_TARGETS, T5_TARGETS], ids=["attention", "all"])
def test_batched_lora_equals_each_example_merged_with_mixed_passage_counts(targets):
    reader = make_reader(double=True)
    adapters = [random_adapter(reader.model, targets, seed) for seed in range(len(EXAMPLES))]
    contexts = contexts_with(adapters)
    with torch.no_grad():
        logits, mask = reader.answer_logits(EXAMPLES, contexts, TARGETS)
        plain, _ = reader.answer_logits(EXAMPLES, [Context(p) for p in PASSAGE_SETS], TARGETS)
    together = reader.answer(EXAMPLES, contexts)
    for index, (example, passages, adapter, target) in enumerate(zip(EXAMPLES, PASSAGE_SETS, adapters, TARGETS)):
        merged = merged_reader(adapter, double=True)
        with torch.no_grad():
            reference, reference_mask = merged.answer_logits([example], [Context(passages)], [target])
        length = int(reference_mask.sum())
        assert int(mask[index].sum()) == length
        torch.testing.assert_close(logits[index, :length], reference[0, :length], atol=1e-9, rtol=1e-9)
        assert together[index].raw == merged.answer([example], [Context(passages)])[0].raw
    assert not torch.allclose(logits[mask], plain[mask], atol=1e-2)  # the adapters do change the reader


def test_adapters_follow_rows_through_encoder_chunks_greedy_stops_and_beams(reader, monkeypatch):
    adapters = [random_adapter(reader.model, T5_DEFAULT_TARGETS, seed) for seed in range(len(EXAMPLES))]
    contexts = contexts_with(adapters)
    reader.adapters_of(contexts)  # builds the hooks
    kept: list[list[int]] = []
    select = reader._lora.select
    monkeypatch.setattr(reader._lora, "select", lambda rows, **kw: (kept.append(rows.tolist()), select(rows, **kw)))
    together = [a.raw for a in reader.answer(EXAMPLES, contexts)]
    assert kept  # rows that ended left the batch, and their LoRA with them
    monkeypatch.undo()
    assert together == [reader.answer([e], [c])[0].raw for e, c in zip(EXAMPLES, contexts)]
    assert together != [a.raw for a in reader.answer(EXAMPLES, [Context(p) for p in PASSAGE_SETS])]
    reader.encoder_batch_size = 2  # 7 encoder rows in 4 calls, each with its own row map
    try:
        assert [a.raw for a in reader.answer(EXAMPLES, contexts)] == together
    finally:
        reader.encoder_batch_size = None
    beams = make_reader(num_beams=3)
    with_beams = [a.raw for a in beams.answer(EXAMPLES, contexts)]
    for example, context, adapter, raw in zip(EXAMPLES, contexts, adapters, with_beams):
        assert raw == merged_reader(adapter, num_beams=3).answer([example], [Context(context.passages)])[0].raw


def test_a_batch_mixing_adapters_and_none_or_foreign_adapters_is_refused(reader):
    adapter = random_adapter(reader.model, T5_DEFAULT_TARGETS, 0)
    with pytest.raises(ConfigurationError, match="mixes examples with and without adapters"):
        reader.answer(EXAMPLES[:2], [Context(adapter=adapter), Context()])
    with pytest.raises(ConfigurationError, match="LoRAAdapter weights only"):
        reader.answer(EXAMPLES[:1], [Context(adapter=object())])
    short = LoRAAdapter({k: v[:1] for k, v in adapter.a.items()}, adapter.b)
    with pytest.raises(ConfigurationError, match="another model"):
        reader.answer(EXAMPLES[:1], [Context(adapter=short)])


def test_the_imaginer_reads_t5_shapes_from_the_reader_model_name():
    shapes = model_shapes("fid-tiny")
    assert list(shapes) == list(T5_DEFAULT_TARGETS)
    assert shapes["enc_q"] == (2, 32, 32) and shapes["cross_v"] == (2, 32, 32)
    assert model_shapes("fid-tiny", ["enc_wi", "dec_wo"]) == {"enc_wi": (2, 32, 64), "dec_wo": (2, 64, 32)}
    assert list(model_shapes("tiny-llama")) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    with pytest.raises(ConfigurationError, match="target 'gate_proj'"):
        HyperLoRAImaginer(model="fid-tiny", targets="gate_proj", encoder="hashing", device="cpu")


@pytest.fixture(scope="module")
def imaginer() -> HyperLoRAImaginer:
    imaginer = HyperLoRAImaginer(model="fid-tiny", rank=4, hidden=32, feature_dims=8, encoder="hashing", device="cpu")
    imaginer.prepare([Example(str(i), f"question number {i} about topic {i % 7}", ("x",)) for i in range(40)])
    return imaginer


def test_untrained_hypernetwork_leaves_fid_unchanged_and_gradients_reach_it(reader, imaginer):
    assert imaginer.describe()["architecture"] == "t5" and imaginer.describe()["targets"] == list(T5_DEFAULT_TARGETS)
    contexts = [Context(p, adapter=c.adapter) for p, c in zip(PASSAGE_SETS, imaginer.imagine(EXAMPLES))]
    assert [a.raw for a in reader.answer(EXAMPLES, contexts)] == [
        a.raw for a in reader.answer(EXAMPLES, [Context(p) for p in PASSAGE_SETS])
    ]
    network = imaginer.trainable_module()
    network.train()
    try:
        contexts = [Context(p, adapter=c.adapter) for p, c in zip(PASSAGE_SETS, imaginer.imagine(EXAMPLES))]
        reader.loss(EXAMPLES, contexts).backward()
    finally:
        network.eval()
    for kind in T5_DEFAULT_TARGETS:  # B starts at zero: its gradient is what moves the LoRA first
        grad = network.heads[kind].to_b.weight.grad
        assert grad is not None and grad.abs().sum() > 0, kind
    assert all(p.grad is None for p in reader.model.parameters())  # the reader stays frozen
    network.zero_grad()


def test_gradient_checkpointing_while_training_through_adapters_is_refused():
    checkpointed = FiDReader(model="fid-tiny", gradient_checkpointing=True)
    checkpointed.train(True)
    adapter = random_adapter(checkpointed.model, T5_DEFAULT_TARGETS, 0)
    with pytest.raises(ConfigurationError, match="gradient_checkpointing=true cannot train through adapters"):
        checkpointed.loss(EXAMPLES[:1], [Context(adapter=adapter)])


def test_hyperlora_trains_through_frozen_fid_tiny_and_a_run_uses_it(tmp_path, invoke_cli):
    """`iagbench train` of the hypernetwork through the frozen fid-tiny's answer loss, then `iagbench run` with it."""
    options = "model=fid-tiny,encoder=hashing,rank=4,hidden=32,feature_dims=8"
    output = tmp_path / "trained"
    code, _, err = invoke_cli(
        "train", "--dataset", "sample", "--imaginer", "hyperlora", "--imaginer-args", options, "--reader", "fid-tiny",
        "--reader-args", "train=none,train_answer=first", "--limit", "12", "--steps", "8", "--batch-size", "12",
        "--lr", "0.01", "--schedule", "constant", "--log-every", "1", "--save-every", "8", "--output", str(output),
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    losses = [r["loss"] for r in read_log(output)]
    # one fixed batch of 12 every step, so the loss falls steadily (5.89 -> 5.10 over the first and last two
    # steps on an AMD EPYC); 16 examples in batches of 4 made each step's loss a different batch's
    assert len(losses) == 8
    assert_falls(losses, by=0.3)
    final = output / "checkpoints" / "step-000008"
    assert (final / "imaginer.safetensors").is_file() and not (final / "reader.safetensors").exists()

    run = tmp_path / "run"
    code, _, err = invoke_cli(
        "run", "--dataset", "sample", "--imaginer", "hyperlora", "--imaginer-args", f"{options},checkpoint={final}",
        "--reader", "fid-tiny", "--reader-args", "max_new_tokens=4", "--limit", "4", "--output", str(run), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and json.loads((run / "results.json").read_text())["n"] == 4
    described = json.loads((run / "components.json").read_text())["imaginer"]
    assert described["whitening_fitted"] is True and described["architecture"] == "t5"
