"""`iagbench export` (issue 16): peft adapters (causal-lm and fid-t5 with lora_rank), a fully fine-tuned fid-t5 as a
save_pretrained folder, a hyperlora hypernetwork as safetensors + JSON; each loaded by its library, same outputs."""

from __future__ import annotations

import json

import pytest
import torch

from iagbench.commands.export import export
from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.training.spec import TrainSpec
from iagbench.training.train import train

IDS = torch.tensor([[5, 17, 42, 8, 3]])


def trained(tmp_path, plugins, reader: str, reader_args: dict, imaginer: str = "none", imaginer_args=None, steps=2):
    output = tmp_path / "trained"
    spec = TrainSpec(dataset="sample", imaginer=imaginer, reader=reader, reader_args=reader_args,
                     imaginer_args=imaginer_args or {}, limit=16, steps=steps, batch_size=4, lr=0.05, save_every=steps,
                     output=output)  # fmt: skip
    train(spec, plugins, progress=False, log=lambda message: None)
    return output


def test_causal_lm_lora_exports_a_peft_adapter(tmp_path, plugins, invoke_cli):
    from peft import PeftModel

    output = trained(tmp_path, plugins, "tiny-llama", {"lora_rank": 2})
    code, out, err = invoke_cli("export", str(output / "checkpoints" / "latest"), "--output", str(tmp_path / "x"))
    assert code == 0, err
    assert json.loads(out)["exported"]["reader"]["format"] == "peft-adapter"
    assert (tmp_path / "x" / "adapter_config.json").is_file()
    readers = plugins["readers"].get("tiny-llama")
    mine = readers.build(lora_rank=2, checkpoint=str(output))
    exported = PeftModel.from_pretrained(readers.build().model, str(tmp_path / "x")).eval()
    mine.model.eval()
    with torch.no_grad():
        a, b = mine.model(input_ids=IDS).logits, exported(input_ids=IDS).logits
        base = readers.build().model(input_ids=IDS).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, base)  # the LoRA changed something


def test_fid_lora_exports_a_peft_adapter(tmp_path, plugins):
    from peft import PeftModel

    output = trained(tmp_path, plugins, "fid-tiny", {"lora_rank": 2})
    summary = export(output, tmp_path / "x", plugins)
    assert summary["exported"]["reader"]["format"] == "peft-adapter"
    readers = plugins["readers"].get("fid-tiny")
    mine = readers.build(lora_rank=2, checkpoint=str(output))
    exported = PeftModel.from_pretrained(readers.build().model, str(tmp_path / "x")).eval()
    mine.model.eval()
    with torch.no_grad():
        a = mine.model(input_ids=IDS, decoder_input_ids=IDS).logits
        b = exported(input_ids=IDS, decoder_input_ids=IDS).logits
    torch.testing.assert_close(a, b)


def test_fid_lora_with_alpha_and_dropout_exports_a_peft_adapter(tmp_path, plugins):
    """The reference's LoRA settings (alpha, dropout; model/Imagemodel.py:37-44) travel into adapter_config.json."""
    from peft import PeftModel

    options = {"lora_rank": 2, "lora_alpha": 3, "lora_dropout": 0.05}
    output = trained(tmp_path, plugins, "fid-tiny", options)
    export(output, tmp_path / "x", plugins)
    config = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (2, 3, 0.05)
    readers = plugins["readers"].get("fid-tiny")
    mine = readers.build(**options, checkpoint=str(output))
    exported = PeftModel.from_pretrained(readers.build().model, str(tmp_path / "x")).eval()
    mine.model.eval()
    with torch.no_grad():
        a = mine.model(input_ids=IDS, decoder_input_ids=IDS).logits
        b = exported(input_ids=IDS, decoder_input_ids=IDS).logits
        other = readers.build(lora_rank=2, checkpoint=str(output)).model.eval()  # alpha 2r: another scale
        c = other(input_ids=IDS, decoder_input_ids=IDS).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_fid_full_exports_a_save_pretrained_folder(tmp_path, plugins):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    output = trained(tmp_path, plugins, "fid-tiny", {"train": "full"})
    summary = export(output, tmp_path / "x", plugins)
    assert summary["exported"]["reader"]["format"] == "transformers"
    mine = plugins["readers"].get("fid-tiny").build(checkpoint=str(output))
    loaded = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "x")).eval()
    assert AutoTokenizer.from_pretrained(str(tmp_path / "x")) is not None
    mine.model.eval()
    with torch.no_grad():
        a = mine.model(input_ids=IDS, decoder_input_ids=IDS).logits
        b = loaded(input_ids=IDS, decoder_input_ids=IDS).logits
    torch.testing.assert_close(a, b)


def test_hyperlora_exports_safetensors_and_json(tmp_path, plugins):
    from safetensors.torch import load_file

    args = {"model": "tiny-llama", "encoder": "hashing", "rank": 2, "hidden": 16, "feature_dims": 8}
    output = trained(tmp_path, plugins, "tiny-llama", {}, imaginer="hyperlora", imaginer_args=args)
    export(output, tmp_path / "x", plugins)
    config = json.loads((tmp_path / "x" / "hypernetwork.json").read_text())
    assert config["rank"] == 2 and config["feature_dims"] == 8
    weights = load_file(str(tmp_path / "x" / "hypernetwork.safetensors"))
    mine = plugins["imaginers"].get("hyperlora").build(**args, checkpoint=str(output))
    state = mine.network.state_dict()
    assert sorted(weights) == sorted(state) and all(torch.equal(weights[k], state[k].cpu()) for k in state)


def test_export_refusals_are_one_line(tmp_path, plugins):
    output = trained(tmp_path, plugins, "fid-tiny", {"lora_rank": 2}, steps=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(RunFolderError, match=r"^--output .*: exists and is not empty"):
        export(output, tmp_path / "full", plugins)
    with pytest.raises(ConfigurationError, match=r"^--role imaginer: checkpoint .* holds no trained imaginer"):
        export(output, tmp_path / "y", plugins, role="imaginer")
