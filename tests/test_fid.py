"""The fid-t5 reader (random tiny T5): FiD's encoding and decoding, mixed passage counts, beams,
training and checkpoints, FiD checkpoint folders, and runs through the command line."""

from __future__ import annotations

import json

import pytest
import torch
from trends import assert_falls

from iagbench import ConfigurationError, Context, Example, Passage
from iagbench.lm.t5_models import fid_to_t5_key
from iagbench.training.folder import read_log
from iagbench.training.spec import TrainSpec
from iagbench.training.train import train
from iagbench_plugins.datasets.sample import Sample
from iagbench_plugins.readers.fid import FID_FORMAT, FiDReader, greedy_decode_seq2seq

MAX_NEW = 6
MAXLEN = 128  # text_maxlength (byte tokens): the long passage below is cut, the others are not
LONG = "The Iliad is an ancient Greek epic poem attributed to Homer, set during the Trojan War. " * 2
PASSAGES = (
    Passage(LONG, "Iliad"),
    Passage("Lake Titicaca lies on the border of Peru and Bolivia.", "Lake Titicaca"),
    Passage("Mars has two moons, Phobos and Deimos.", "Mars"),
)
EXAMPLES = [
    Example("0", "who wrote the iliad", ("Homer",)),
    Example("1", "where is lake titicaca", ("Peru", "Bolivia")),
    Example("2", "how many moons does mars have", ("two", "2")),
    Example("3", "which element has the symbol fe", ("iron",)),
]
# Mixed passage counts in one batch: 3, 0 (closed book), 1 and 2 passages.
CONTEXTS = [Context(PASSAGES), Context(), Context(PASSAGES[1:2]), Context(PASSAGES[::-1][:2])]


@pytest.fixture(scope="module")
def reader() -> FiDReader:
    return FiDReader(model="fid-tiny", text_maxlength=MAXLEN, max_new_tokens=MAX_NEW)


def fid_reference(
    reader: FiDReader, example: Example, context: Context
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """FiD's own layout, one example: every passage padded to text_maxlength, the encoder states of the
    (passages x text_maxlength) batch reshaped to one row with the padding kept (masked), decoded by
    transformers' generate. Returns (states of the real tokens, each passage encoded alone and
    concatenated; the greedy tokens up to the end token)."""
    from transformers.modeling_outputs import BaseModelOutput

    tokenizer, model, eos = reader.tokenizer, reader.model, reader.eos_id
    texts = FID_FORMAT.texts(example.question, context.passages)
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"][: MAXLEN - 1] + [eos] for text in texts]
    with torch.inference_mode():
        alone = torch.cat([model.encoder(input_ids=torch.tensor([row])).last_hidden_state[0] for row in rows])
        ids = torch.tensor([row + [reader.pad_id] * (MAXLEN - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (MAXLEN - len(row)) for row in rows])
        padded = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        sequences = model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=padded.reshape(1, -1, padded.shape[-1])),
            attention_mask=mask.reshape(1, -1), max_new_tokens=MAX_NEW, do_sample=False, num_beams=1,
            eos_token_id=eos, pad_token_id=reader.pad_id, decoder_start_token_id=reader.start_id,
        )  # fmt: skip
    tokens = sequences[0, 1:].tolist()
    return alone, mask.sum(), tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def test_encoder_inputs_are_fids_format_cut_to_text_maxlength(reader):
    ids, rows, info = reader.encoder_inputs(EXAMPLES, CONTEXTS)
    assert rows == [0, 0, 0, 1, 2, 3, 3]  # one encoder row per passage; the closed-book example has its question
    texts = [reader.tokenizer.decode(row[:-1]) for row in ids]
    assert texts[1] == "question: who wrote the iliad title: Lake Titicaca context: " + PASSAGES[1].text
    assert texts[3] == "question: where is lake titicaca"
    assert all(row[-1] == reader.eos_id and len(row) <= MAXLEN for row in ids)
    assert len(ids[0]) == MAXLEN and texts[0].startswith(
        "question: who wrote the iliad title: Iliad context: The Iliad"
    )
    assert info[0] == {"passages": 3, "passages_cut": 1, "input_tokens": sum(len(r) for r in ids[:3])}
    assert info[1]["passages"] == 0 and info[1]["passages_cut"] == 0
    assert reader.describe()["input_format"]["name"] == "fid" and reader.describe()["input_format"]["version"] == 1


def test_encoder_states_equal_each_passage_encoded_alone_and_concatenated(reader):
    with torch.inference_mode():
        encoded = reader.encode(EXAMPLES, CONTEXTS)
    for index, (example, context) in enumerate(zip(EXAMPLES, CONTEXTS)):
        alone, _, _ = fid_reference(reader, example, context)
        length = alone.shape[0]
        assert encoded.mask[index].tolist() == [1] * length + [0] * (encoded.mask.shape[1] - length)
        torch.testing.assert_close(
            encoded.hidden[index, :length], alone, atol=2e-4, rtol=1e-4
        )  # float noise of batched matmuls


def test_greedy_answers_equal_fids_padded_layout_decoded_by_generate(reader):
    answers = reader.answer(EXAMPLES, CONTEXTS)
    for answer, example, context in zip(answers, EXAMPLES, CONTEXTS):
        _, _, tokens = fid_reference(reader, example, context)
        assert answer.raw == reader.tokenizer.decode(tokens, skip_special_tokens=False)
        assert str(answer) == reader.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert len({a.raw for a in answers}) > 1  # the tiny model's answers depend on the input


def test_greedy_loop_stops_rows_independently(reader):
    with torch.inference_mode():
        encoded = reader.encode(EXAMPLES, CONTEXTS)
        free = greedy_decode_seq2seq(reader.model, encoded.hidden, encoded.mask, start_id=reader.start_id,
                                     end_id=-1, max_new_tokens=MAX_NEW)  # fmt: skip
        end = free[2][1]  # row 2's second token ends every row where it first occurs
        kept: list[torch.Tensor] = []
        stopped = greedy_decode_seq2seq(reader.model, encoded.hidden, encoded.mask, start_id=reader.start_id,
                                        end_id=end, max_new_tokens=MAX_NEW, on_select=kept.append)  # fmt: skip
    for full, cut in zip(free, stopped):
        assert cut == (full[: full.index(end) + 1] if end in full else full)
    assert kept  # rows left the batch


def test_mixed_passage_counts_give_each_example_its_answer_alone(reader):
    together = reader.answer(EXAMPLES, CONTEXTS)
    alone = [reader.answer([e], [c])[0] for e, c in zip(EXAMPLES, CONTEXTS)]
    assert [a.raw for a in together] == [a.raw for a in alone]
    assert [a.details for a in together] == [a.details for a in alone]
    targets = ["Homer", "Peru", "two", "iron"]
    with torch.inference_mode():
        logits, mask = reader.answer_logits(EXAMPLES, CONTEXTS, targets)
        for index, (example, context, target) in enumerate(zip(EXAMPLES, CONTEXTS, targets)):
            own, own_mask = reader.answer_logits([example], [context], [target])
            length = int(own_mask.sum())
            assert int(mask[index].sum()) == length
            torch.testing.assert_close(logits[index, :length], own[0, :length], atol=1e-4, rtol=1e-4)


def test_encoder_batch_size_changes_nothing(reader):
    whole = [a.raw for a in reader.answer(EXAMPLES, CONTEXTS)]
    reader.encoder_batch_size = 2  # 7 encoder rows in 4 calls
    try:
        assert [a.raw for a in reader.answer(EXAMPLES, CONTEXTS)] == whole
    finally:
        reader.encoder_batch_size = None


def test_closed_book_batch(reader):
    answers = reader.answer(EXAMPLES, [Context()] * len(EXAMPLES))
    assert all(a.details["passages"] == 0 for a in answers)
    assert [a.raw for a in answers] == [reader.answer([e], [Context()])[0].raw for e in EXAMPLES]


def test_static_cache_decoding_equals_the_default(reader):
    static = FiDReader(model="fid-tiny", text_maxlength=MAXLEN, max_new_tokens=MAX_NEW, cache="static")
    assert [a.raw for a in static.answer(EXAMPLES, CONTEXTS)] == [a.raw for a in reader.answer(EXAMPLES, CONTEXTS)]
    with torch.inference_mode():
        encoded = reader.encode(EXAMPLES, CONTEXTS)
        free = greedy_decode_seq2seq(reader.model, encoded.hidden, encoded.mask, start_id=reader.start_id,
                                     end_id=-1, max_new_tokens=MAX_NEW)  # fmt: skip
        end = free[2][1]  # rows end at different steps; finished rows stay in the static batch
        stopped = greedy_decode_seq2seq(reader.model, encoded.hidden, encoded.mask, start_id=reader.start_id,
                                        end_id=end, max_new_tokens=MAX_NEW)  # fmt: skip
        assert static._static.decode_seq2seq(encoded.hidden, encoded.mask, start_id=reader.start_id, end_id=end,
                                             max_new_tokens=MAX_NEW) == stopped  # fmt: skip
    assert len({len(row) for row in stopped}) > 1
    # Another batch size (new caches), then closed book (narrower encoder states: the kept caches are reused).
    assert [a.raw for a in static.answer(EXAMPLES[:2], CONTEXTS[:2])] == [
        a.raw for a in reader.answer(EXAMPLES[:2], CONTEXTS[:2])
    ]
    closed = [Context()] * len(EXAMPLES)
    assert [a.raw for a in static.answer(EXAMPLES, closed)] == [a.raw for a in reader.answer(EXAMPLES, closed)]
    record = static.describe()
    assert record["decoding"] == "greedy (static cache)" and record["cache"] == "static" and record["compile"] is False
    assert (
        "cache" not in reader.describe() and reader.describe()["decoding"] == "greedy"
    )  # the default's record is unchanged


def test_static_cache_with_adapters_equals_the_default(reader):
    from iagbench.lm.lora import LoRAAdapter, target_modules

    targets = ("enc_q", "dec_v", "cross_q")
    modules = target_modules(reader.model, targets)
    contexts = []
    for seed in range(len(EXAMPLES)):
        generator = torch.Generator().manual_seed(seed)
        a, b = {}, {}
        for kind in targets:
            layers = sorted(layer for k, layer in modules if k == kind)
            linear = modules[(kind, layers[0])]
            a[kind] = torch.randn(len(layers), linear.in_features, 3, generator=generator) * 0.5
            b[kind] = torch.randn(len(layers), 3, linear.out_features, generator=generator) * 0.5
        contexts.append(Context(CONTEXTS[seed].passages, adapter=LoRAAdapter(a, b)))
    static = FiDReader(model="fid-tiny", text_maxlength=MAXLEN, max_new_tokens=MAX_NEW, cache="static")
    expected = [a.raw for a in reader.answer(EXAMPLES, contexts)]
    assert [a.raw for a in static.answer(EXAMPLES, contexts)] == expected
    assert expected != [a.raw for a in reader.answer(EXAMPLES, CONTEXTS)]  # the adapters matter


def test_beam_search_is_batch_independent_and_recorded():
    beams = FiDReader(model="fid-tiny", text_maxlength=MAXLEN, max_new_tokens=MAX_NEW, num_beams=3)
    together = [a.raw for a in beams.answer(EXAMPLES, CONTEXTS)]
    assert together == [beams.answer([e], [c])[0].raw for e, c in zip(EXAMPLES, CONTEXTS)]
    assert beams.describe()["decoding"] == "beam search (num_beams=3)"


def test_answer_logits_are_the_training_loss(reader):
    first = FiDReader(model="fid-tiny", text_maxlength=MAXLEN, train_answer="first")
    first.train(False)  # no dropout: the two computations must match exactly
    loss = first.loss(EXAMPLES, CONTEXTS)
    logits, mask = first.answer_logits(EXAMPLES, CONTEXTS, [e.answers[0] for e in EXAMPLES])
    ids, _ = first.target_ids([e.answers[0] for e in EXAMPLES])
    assert ids[mask].tolist()[-1] == first.eos_id and mask.sum(1).tolist() == [6, 5, 4, 5]  # bytes + end token
    expected = torch.nn.functional.cross_entropy(logits[mask], ids[mask])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert first.trainable_module() is first.model and first.model.shared.weight.grad is not None
    # token ids work as targets too
    same, _ = first.answer_logits(EXAMPLES, CONTEXTS, [row[: int(n)] for row, n in zip(ids.tolist(), mask.sum(1))])
    torch.testing.assert_close(same, logits)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    plain, checkpointed = (FiDReader(model="fid-tiny", text_maxlength=MAXLEN, train_answer="first", gradient_checkpointing=g)
                           for g in (False, True))  # fmt: skip
    grads = []
    for r in (plain, checkpointed):
        r.train(True)
        torch.manual_seed(0)  # the same dropout masks
        r.loss(EXAMPLES, CONTEXTS).backward()
        grads.append(r.model.encoder.block[0].layer[0].SelfAttention.q.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert checkpointed.model.encoder.gradient_checkpointing


def test_train_none_freezes_the_model_and_random_answers_are_seeded():
    frozen = FiDReader(model="fid-tiny", train="none")
    assert frozen.trainable_module() is None and not any(p.requires_grad for p in frozen.model.parameters())
    import random

    random.seed(1)
    a = frozen.training_targets(EXAMPLES * 5)
    random.seed(1)
    assert frozen.training_targets(EXAMPLES * 5) == a and {"Peru", "Bolivia"} <= set(a)


def test_fid_tiny_is_deterministic_from_the_seed():
    a, b, c = (FiDReader(model="fid-tiny", seed=s).model.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["shared.weight"], c["shared.weight"])


def test_model_folders_plain_and_fid_checkpoint_load_the_same_model(reader, tmp_path):
    plain = tmp_path / "plain"
    reader.model.save_pretrained(plain)
    reader.tokenizer.save_pretrained(plain)
    # What facebookresearch/FiD's FiDT5.save_pretrained writes: the wrapped encoder's keys, architecture FiDT5.
    fid = tmp_path / "fid"
    fid.mkdir()
    state = {}
    for key, value in reader.model.state_dict().items():
        key = key.replace("encoder.", "encoder.encoder.", 1) if key.startswith("encoder.") else key
        parts = key.split(".")
        if key.startswith("encoder.encoder.block."):
            parts.insert(4, "module")
        state[".".join(parts)] = value.clone()
    assert "encoder.encoder.block.0.module.layer.0.SelfAttention.q.weight" in state
    assert (
        fid_to_t5_key("encoder.encoder.block.0.module.layer.0.SelfAttention.q.weight")
        == "encoder.block.0.layer.0.SelfAttention.q.weight"
    )
    torch.save(state, fid / "pytorch_model.bin")
    config = reader.model.config.to_dict()
    config["architectures"] = ["FiDT5"]
    (fid / "config.json").write_text(json.dumps(config))
    reader.tokenizer.save_pretrained(fid)

    expected = [a.raw for a in reader.answer(EXAMPLES, CONTEXTS)]
    for folder in (plain, fid):
        loaded = FiDReader(model=str(folder), text_maxlength=MAXLEN, max_new_tokens=MAX_NEW)
        assert [a.raw for a in loaded.answer(EXAMPLES, CONTEXTS)] == expected
    assert FiDReader(model=str(fid)).describe()["model"]["fid_checkpoint"] is True

    del state["encoder.encoder.block.1.module.layer.1.DenseReluDense.wo.weight"]
    torch.save(state, fid / "pytorch_model.bin")
    with pytest.raises(
        ConfigurationError, match=r"missing 1 \(first: encoder.block.1.layer.1.DenseReluDense.wo.weight\)"
    ):
        FiDReader(model=str(fid))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"train": "partial"}, "train='partial'"),
        ({"train_answer": "all"}, "train_answer='all'"),
        ({"text_maxlength": 0}, "text_maxlength=0"),
        ({"max_new_tokens": True}, "max_new_tokens=True"),
        ({"num_beams": 0}, "num_beams=0"),
        ({"cache": "static", "num_beams": 2}, "cache=static decodes greedily: num_beams=2"),
        ({"cache": "dynamic", "compile": True}, "compile=true needs cache=static"),
        ({"cache": "static", "compile": True, "lora_rank": 2}, "compile=true with lora_rank"),
        ({"model": "./no/such/folder"}, "does not exist"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        FiDReader(**{"model": "fid-tiny", **options})


def test_hub_model_missing_offline_is_one_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ConfigurationError, match="cannot load model from Hugging Face hub id .*'iagbench-test/no-such-t5'"
    ):
        FiDReader(model="iagbench-test/no-such-t5")


def test_only_lora_adapters_are_accepted(reader):
    # per-example LoRA (hyperlora) on FiD rows: tests/test_hyperlora_fid.py
    assert "adapter" in FiDReader.accepts
    with pytest.raises(ConfigurationError, match="LoRAAdapter weights only"):
        reader.answer(EXAMPLES[:1], [Context(adapter=object())])


@pytest.mark.parametrize("imaginer", ["given", "none"])
def test_cli_run_with_fid_tiny(invoke_cli, tmp_path, imaginer):
    output = tmp_path / "run"
    code, _, err = invoke_cli(
        "run", "--dataset", "sample", "--imaginer", imaginer, "--reader", "fid-tiny", "--limit", "5",
        "--reader-args", "max_new_tokens=4", "--output", str(output), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 5 and json.loads((output / "results.json").read_text())["n"] == 5
    assert {r["details"]["passages"] for r in records} == ({1} if imaginer == "given" else {0})
    described = json.loads((output / "components.json").read_text())["reader"]
    assert described["input_format"]["version"] == 1 and described["model"]["random_init"] is True


def test_training_lowers_the_loss_and_checkpoint_loads_for_runs(tmp_path, plugins, invoke_cli):
    output = tmp_path / "trained"
    reader_args = {"train_answer": "first", "max_new_tokens": 4}
    train(
        TrainSpec(dataset="sample", imaginer="given", reader="fid-tiny", reader_args=reader_args, limit=8, steps=8,
                  batch_size=4, lr=3e-2, schedule="constant", log_every=1, save_every=8, output=output),
        plugins, progress=False, log=lambda message: None,
    )  # fmt: skip
    losses = [r["loss"] for r in read_log(output)]
    assert len(losses) == 8
    assert_falls(losses, by=0.5)  # about 6.1 -> 5.2
    final = output / "checkpoints" / "step-000008"
    assert (final / "reader.safetensors").is_file()

    examples = Sample().load("train")[:8]
    contexts = [Context(e.ctxs) for e in examples]
    untrained = FiDReader(model="fid-tiny", **reader_args)
    trained = FiDReader(model="fid-tiny", checkpoint=str(output), **reader_args)
    frozen = FiDReader(model="fid-tiny", checkpoint=str(final), train="none", **reader_args)
    assert trained.describe()["checkpoint"] == str(final)
    for r in (untrained, trained):
        r.train(False)
    with torch.no_grad():
        assert trained.loss(examples, contexts) < untrained.loss(examples, contexts)
    predictions = [a.raw for a in trained.answer(examples, contexts)]
    assert predictions == [a.raw for a in frozen.answer(examples, contexts)]
    assert predictions != [a.raw for a in untrained.answer(examples, contexts)]

    run_dir = tmp_path / "run"
    code, _, err = invoke_cli(
        "run", "--dataset", "sample", "--split", "train", "--limit", "8", "--imaginer", "given", "--reader", "fid-tiny",
        "--reader-args", f"checkpoint={final},train_answer=first,max_new_tokens=4", "--output", str(run_dir), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    by_id = {
        json.loads(line)["id"]: json.loads(line)["raw"]
        for line in (run_dir / "predictions.jsonl").read_text().splitlines()
    }
    assert [by_id[e.id] for e in examples] == predictions


def test_peft_lora_trains_only_q_v_lora_weights_and_its_checkpoint_reloads(tmp_path, plugins):
    output = tmp_path / "lora"
    reader_args = {"train_answer": "first", "max_new_tokens": 4, "lora_rank": 4}
    reader = FiDReader(model="fid-tiny", **reader_args)
    weights = reader.trainable_module()
    names = list(weights.keys())
    layers = (
        reader.model.config.num_layers + 2 * reader.model.config.num_decoder_layers
    )  # enc self, dec self, dec cross
    assert len(names) == 2 * layers and all(name.endswith(("__q", "__v")) for name in names), names
    assert any("EncDecAttention" in name for name in names) and reader.describe()["train"] == "lora"
    assert not any(p.requires_grad for name, p in reader.model.named_parameters() if "lora_" not in name)
    with pytest.raises(ConfigurationError, match="train=full with lora_rank=4"):
        FiDReader(model="fid-tiny", lora_rank=4, train="full")
    with pytest.raises(ConfigurationError, match="train=lora with lora_rank=0"):
        FiDReader(model="fid-tiny", train="lora")

    train(
        TrainSpec(dataset="sample", imaginer="given", reader="fid-tiny", reader_args=reader_args, limit=4, steps=8,
                  batch_size=4, lr=1e-1, schedule="constant", log_every=1, save_every=8, output=output),
        plugins, progress=False, log=lambda message: None,
    )  # fmt: skip
    losses = [r["loss"] for r in read_log(output)]
    assert len(losses) == 8
    assert_falls(losses, by=0.5)
    from safetensors.torch import load_file

    saved = load_file(str(output / "checkpoints" / "step-000008" / "reader.safetensors"))
    assert saved and all(key.endswith((".A.default.weight", ".B.default.weight")) for key in saved)  # the LoRA only

    examples = Sample().load("train")[:4]
    contexts = [Context(e.ctxs) for e in examples]
    untrained = FiDReader(model="fid-tiny", **reader_args)
    trained = FiDReader(model="fid-tiny", checkpoint=str(output), **reader_args)
    frozen = FiDReader(model="fid-tiny", checkpoint=str(output), train="none", **reader_args)
    assert frozen.trainable_module() is None
    for r in (untrained, trained):
        r.train(False)
    with torch.no_grad():
        assert trained.loss(examples, contexts) < untrained.loss(examples, contexts)
    predictions = [a.raw for a in trained.answer(examples, contexts)]
    assert predictions == [a.raw for a in frozen.answer(examples, contexts)]
    assert predictions != [a.raw for a in untrained.answer(examples, contexts)]
