"""fid-t5's options for the ImcQA reference's student: ``train_parts`` (hyperlora_ffn, model/model.py:451-476) and
``input=single-row`` (data/data_interface.py:57, 180)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from iagbench import ConfigurationError, Context, Example, Passage
from iagbench_plugins.readers.fid import FiDReader

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARTS = "norms,embeddings,ffn"
# fid-tiny: d_model 32, d_ff 64, vocabulary 259 (tied LM head), 2 encoder and 2 decoder blocks.
# shared 1; encoder: per block 2 norms + wi + wo, and its final norm: 9; decoder: per block 3 norms + wi + wo, and
# its final norm: 11.
PART_TENSORS = 1 + 9 + 11
PART_ELEMENTS = 259 * 32 + (5 + 7) * 32 + 4 * 2 * 32 * 64


def test_train_parts_trains_the_norms_embeddings_and_ffns_only():
    reader = FiDReader(model="fid-tiny", train_parts=PARTS)
    grad = {name: p for name, p in reader.model.named_parameters() if p.requires_grad}
    assert len(grad) == PART_TENSORS and sum(p.numel() for p in grad.values()) == PART_ELEMENTS
    assert all(any(k in n for k in ("layer_norm", "shared", ".wi.", ".wo.")) for n in grad)
    module = reader.trainable_module()
    assert set(module.state_dict()) == set(grad) and reader.train_mode == "parts"
    assert reader.describe()["train_parts"] == ["norms", "embeddings", "ffn"]
    assert "train_parts" not in FiDReader(model="fid-tiny").describe()  # identity of earlier runs kept
    norms = FiDReader(model="fid-tiny", train_parts="norms").trainable_module()
    assert len(norms.state_dict()) == 5 + 7
    frozen = FiDReader(model="fid-tiny", train_parts=PARTS, train="none")
    assert not any(p.requires_grad for p in frozen.model.parameters())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"train_parts": "norms,attention"}, "train_parts='norms,attention'"),
        ({"train_parts": PARTS, "train": "full"}, "train_parts=norms,embeddings,ffn"),
        ({"train_parts": PARTS, "lora_rank": 4, "train": "parts"}, "not with train=parts and lora_rank=4$"),
        ({"train": "parts"}, "train=parts"),
        ({"input": "rows"}, "input='rows'"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigurationError, match=message) as error:
        FiDReader(model="fid-tiny", **options)
    assert "\n" not in str(error.value)


def test_training_with_adapters_changes_exactly_the_parts_and_the_checkpoint_holds_them(tmp_path, invoke_cli):
    options = "model=fid-tiny,encoder=hashing,rank=4,hidden=8,feature_dims=8"
    output = tmp_path / "trained"
    code, _, err = invoke_cli(
        "train", "--dataset", "sample", "--imaginer", "hyperlora", "--imaginer-args", options, "--reader", "fid-tiny",
        "--reader-args", f'train_parts="{PARTS}",train_answer=first', "--limit", "12", "--steps", "2",
        "--batch-size", "4", "--lr", "0.01", "--schedule", "constant", "--save-every", "2", "--output", str(output),
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    final = output / "checkpoints" / "step-000002"
    saved = load_file(str(final / "reader.safetensors"))
    before = dict(FiDReader(model="fid-tiny").model.named_parameters())
    assert set(saved) == {n for n, p in FiDReader(model="fid-tiny", train_parts=PARTS).model.named_parameters()
                          if p.requires_grad}  # fmt: skip
    assert all(not torch.equal(saved[name], before[name].detach()) for name in saved)
    loaded = FiDReader(model="fid-tiny", train_parts=PARTS, checkpoint=str(final))
    for name, param in loaded.model.named_parameters():
        expected = saved[name] if name in saved else before[name].detach()
        assert torch.equal(param.detach(), expected), name
    whole = tmp_path / "whole"
    code, _, err = invoke_cli(
        "train", "--dataset", "sample", "--imaginer", "none", "--reader", "fid-tiny", "--limit", "4", "--steps", "1",
        "--batch-size", "4", "--save-every", "1", "--output", str(whole), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    FiDReader(model="fid-tiny", train_parts=PARTS, checkpoint=str(whole))  # a whole T5 still loads


def byte_ids(text: str) -> list[int]:
    """fid-tiny's token ids by hand: one per UTF-8 byte, its GPT-2 byte symbol's place in the sorted alphabet + 3."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    symbol = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    alphabet = sorted(symbol.values())
    return [alphabet.index(symbol[b]) + 3 for b in text.encode()]


def test_single_row_puts_the_question_and_every_text_in_one_row():
    reader = FiDReader(model="fid-tiny", input="single-row", text_maxlength=512)
    passages = (Passage("Homer wrote it.", "Iliad"), Passage("An epic poem.", "Poem"))
    ids, rows, info = reader.encoder_inputs([Example("0", "who wrote the iliad", ("Homer",))], [Context(passages)])
    expected = reader.tokenizer(
        "question: who wrote the iliad\nHomer wrote it. An epic poem.", add_special_tokens=False
    )
    assert ids == [expected["input_ids"] + [reader.eos_id]] and rows == [0]
    assert ids[0][:-1] == byte_ids("question: who wrote the iliad\nHomer wrote it. An epic poem.")
    assert info == [{"passages": 2, "passages_cut": 0, "input_tokens": len(ids[0])}]
    assert reader.describe()["input_format"]["name"] == "single-row"
    short = FiDReader(model="fid-tiny", input="single-row", text_maxlength=40)
    ids, _, info = short.encoder_inputs([Example("0", "who wrote the iliad", ())], [Context(passages)])
    assert len(ids[0]) == 40 and ids[0][-1] == short.eos_id and info[0]["passages_cut"] == 1
    closed, _, _ = reader.encoder_inputs([Example("0", "who", ())], [Context()])
    assert closed == [byte_ids("question: who") + [reader.eos_id]]
    assert FiDReader(model="fid-tiny").describe()["input_format"]["name"] == "fid"
