"""fid-t5 ``lora_rank=R train_parts=norms,embeddings``: the ImcQA reference's LoRA baseline, whose layer norms and
embeddings train next to the peft LoRA (model/Imagemodel.py:37-50). Exactly those parameters train, the checkpoint
holds them (runs and resumes load them back), and `iagbench export` writes them as the adapter's modules_to_save."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_faults_training import cut_back
from test_faults_training import spec as toy_spec
from test_train import assert_same_weights

from iagbench import Context, Example
from iagbench.commands.export import export
from iagbench.contract.plugins import load_plugins
from iagbench.training.folder import read_log
from iagbench.training.train import train
from iagbench_plugins.readers.fid import FiDReader

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARTS = "norms,embeddings"
OPTIONS = {"lora_rank": 2, "lora_alpha": 2, "lora_dropout": 0.05, "train_parts": PARTS, "train_answer": "first"}
# fid-tiny (d_model 32, vocabulary 259, tied LM head): the shared embedding, and 2 x 2 + 1 encoder and 2 x 3 + 1
# decoder layer norms; the LoRA on q and v of its 2 x 1 + 2 x 2 attention blocks, each 2 x 32 (A) + 32 x 2 (B).
NORMS, EMBEDDING = 5 + 7, 259 * 32
LORA = 6 * 2 * (2 * 32 + 32 * 2)
IDS = torch.tensor([[5, 17, 42, 8, 3]])


def test_exactly_the_lora_norms_and_embeddings_train():
    reader = FiDReader(model="fid-tiny", **OPTIONS)
    grad = {name: p for name, p in reader.model.named_parameters() if p.requires_grad}
    lora = {name for name in grad if ".lora_" in name}
    assert set(grad) - lora == {"shared.weight"} | {n for n in grad if n.endswith("layer_norm.weight")}
    assert len(grad) - len(lora) == NORMS + 1 and len(lora) == 6 * 2 * 2
    assert sum(p.numel() for p in grad.values()) == LORA + NORMS * 32 + EMBEDDING
    module = reader.trainable_module()
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == LORA + NORMS * 32 + EMBEDDING
    alone = FiDReader(model="fid-tiny", lora_rank=2).trainable_module().state_dict()
    parts = FiDReader(model="fid-tiny", train_parts=PARTS).trainable_module().state_dict()
    assert set(module.state_dict()) == set(alone) | set(parts)  # the LoRA's names and the T5's
    assert reader.train_mode == "lora" and reader.describe()["train_parts"] == ["norms", "embeddings"]
    frozen = FiDReader(model="fid-tiny", **{**OPTIONS, "train": "none"})
    assert not any(p.requires_grad for p in frozen.model.parameters())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 steps of the closed-book LoRA + norms + embeddings on fid-tiny, checkpoints at steps 2 and 4."""
    output = tmp_path_factory.mktemp("lora-parts") / "out"
    train(spec(output), load_plugins(builtins_only=True), progress=False, log=lambda message: None)
    return output


def spec(output):
    return toy_spec(output, imaginer="none", reader="fid-tiny", reader_args=OPTIONS, limit=8, steps=4, grad_accum=1,
                    batch_size=4, lr=0.05, warmup_steps=0)  # fmt: skip


def test_the_checkpoint_holds_the_trained_lora_norms_and_embeddings_and_a_run_loads_them(trained, invoke_cli, tmp_path):
    saved = load_file(str(trained / "checkpoints" / "step-000004" / "reader.safetensors"))
    assert set(saved) == set(FiDReader(model="fid-tiny", **OPTIONS).trainable_module().state_dict())
    initial = {name: p.detach() for name, p in FiDReader(model="fid-tiny").model.named_parameters()}
    parts = [name for name in saved if "__" not in name]
    assert len(parts) == NORMS + 1 and all(not torch.equal(saved[n], initial[n]) for n in parts)  # every part trained
    assert all(saved[n].abs().sum() > 0 for n in saved if ".B." in n)  # and the LoRA (B starts at zero)

    loaded = FiDReader(model="fid-tiny", **OPTIONS, checkpoint=str(trained))
    state = loaded.trainable_module().state_dict()
    assert all(torch.equal(state[name], saved[name]) for name in saved)
    assert torch.equal(loaded.model.encoder.embed_tokens.weight, saved["shared.weight"])  # the tied copies too
    assert torch.equal(loaded.model.lm_head.weight, saved["shared.weight"])
    frozen = {n: p for n, p in loaded.model.named_parameters() if n not in saved and ".lora_" not in n}
    assert all(torch.equal(p.detach(), initial[n.replace(".base_layer", "")]) for n, p in frozen.items())  # the rest

    run = tmp_path / "run"
    args = ",".join(f"{k}={v}" for k, v in {**OPTIONS, "train_parts": f'"{PARTS}"', "checkpoint": trained}.items())
    code, _, err = invoke_cli("run", "--dataset", "sample", "--imaginer", "none", "--reader", "fid-tiny",
                              "--reader-args", f"{args},max_new_tokens=4", "--limit", "4", "--output", str(run),
                              "--no-progress")  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    again = FiDReader(model="fid-tiny", **OPTIONS, max_new_tokens=4, checkpoint=str(trained))
    examples = [Example(r["id"], r["question"], tuple(r["answers"])) for r in records]
    answers = again.answer(examples, [Context() for _ in examples])
    assert [r["prediction"] for r in records] == [str(a) for a in answers]
    assert json.loads((run / "components.json").read_text())["reader"]["train_parts"] == ["norms", "embeddings"]


def test_a_resumed_training_ends_with_the_same_lora_norms_and_embeddings(trained, tmp_path):
    output = cut_back(trained, tmp_path / "out", 2)
    train(spec(output), load_plugins(builtins_only=True), progress=False, log=lambda message: None)
    assert [r["loss"] for r in read_log(output)] == pytest.approx([r["loss"] for r in read_log(trained)], rel=1e-6)
    assert_same_weights(output, trained, atol=1e-6, roles=("reader",))


def test_export_writes_the_parts_as_modules_to_save_and_peft_loads_them(trained, tmp_path, plugins):
    from peft import PeftModel

    summary = export(trained, tmp_path / "x", plugins)
    assert summary["exported"]["reader"]["format"] == "peft-adapter"
    config = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["embed_tokens", "final_layer_norm", "layer_norm", "lm_head", "shared"]
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (2, 2, 0.05)
    mine = FiDReader(model="fid-tiny", **OPTIONS, checkpoint=str(trained)).model.eval()
    exported = PeftModel.from_pretrained(FiDReader(model="fid-tiny").model, str(tmp_path / "x")).eval()
    lora_only = FiDReader(model="fid-tiny", lora_rank=2, lora_alpha=2).model.eval()
    lora_only.load_state_dict({k: v for k, v in mine.state_dict().items() if ".lora_" in k}, strict=False)
    with torch.no_grad():
        a = mine(input_ids=IDS, decoder_input_ids=IDS).logits
        b = exported(input_ids=IDS, decoder_input_ids=IDS).logits
        c = lora_only(input_ids=IDS, decoder_input_ids=IDS).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)  # without the trained norms and embeddings the answers differ
