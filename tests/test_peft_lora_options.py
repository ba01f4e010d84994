"""The peft LoRA baseline's `lora_alpha` and `lora_dropout` reader options (the reference's alpha 32, dropout 0.05:
model/Imagemodel.py:37-44): recorded only when set, scale alpha / r, dropout active only in training."""

from __future__ import annotations

import pytest
import torch

from iagbench.contract.errors import ConfigurationError
from iagbench.lm.peft_lora import check_lora_options


def lora_layers(model):
    return [module for module in model.modules() if hasattr(module, "lora_A") and len(module.lora_A)]


@pytest.mark.parametrize("reader", ["tiny-llama", "fid-tiny"])
def test_defaults_are_unchanged_and_not_recorded(plugins, reader):
    built = plugins["readers"].get(reader).build(lora_rank=4)
    described = built.describe()
    assert "lora_alpha" not in described and "lora_dropout" not in described  # earlier runs keep their identity
    layer = lora_layers(built.model)[0]
    assert layer.scaling["default"] == 2.0 and isinstance(layer.lora_dropout["default"], torch.nn.Identity)


@pytest.mark.parametrize("reader", ["tiny-llama", "fid-tiny"])
def test_alpha_and_dropout_are_applied_and_recorded(plugins, reader):
    built = plugins["readers"].get(reader).build(lora_rank=4, lora_alpha=32, lora_dropout=0.05)
    described = built.describe()
    assert (described["lora_alpha"], described["lora_dropout"]) == (32, 0.05)
    layers = lora_layers(built.model)
    assert layers and all(layer.scaling["default"] == 8.0 for layer in layers)
    dropout = layers[0].lora_dropout["default"]
    assert isinstance(dropout, torch.nn.Dropout) and dropout.p == 0.05
    assert not any(module.training for module in built.model.modules())  # built for runs: no dropout
    assert sorted(built.trainable_module().state_dict()) == sorted(
        plugins["readers"].get(reader).build(lora_rank=4).trainable_module().state_dict()
    )  # the dropout layers hold no tensors: checkpoints have the same keys
    built.train(True)
    assert dropout.training  # the trainer's train() reaches the LoRA dropout
    built.train(False)
    assert not dropout.training


def test_refusals_are_one_line():
    assert check_lora_options(0, None, None) == {}
    with pytest.raises(ConfigurationError, match=r"^reader option lora_alpha needs lora_rank=R"):
        check_lora_options(0, 32, None)
    with pytest.raises(ConfigurationError, match=r"^reader option lora_dropout needs lora_rank=R"):
        check_lora_options(0, None, 0.1)
    with pytest.raises(ConfigurationError, match=r"^reader option lora_alpha=0: expected a positive number"):
        check_lora_options(4, 0, None)
    with pytest.raises(ConfigurationError, match=r"^reader option lora_dropout=1.0: expected a number in \[0, 1\)"):
        check_lora_options(4, None, 1.0)
