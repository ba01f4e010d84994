"""`iagbench train --no-decay`: which trainable parameters AdamW leaves out of weight decay. ``norms`` (the default):
those of fewer than 2 dimensions (biases, norm gains); ``reference``: names holding 'bias', 'LayerNorm.bias' or
'LayerNorm.weight', as the ImcQA reference (model/Imagemodel.py:513-526), so T5's ``layer_norm`` gains are decayed.
The default leaves a run's identity (and hash) as it was; ``reference`` is another run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iagbench.contract.errors import ConfigurationError
from iagbench.runs.folder import config_hash
from iagbench.training.objective import _optimizer
from iagbench.training.spec import TrainSpec, validate
from iagbench_plugins.readers.fid import FiDReader

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARTS = "norms,embeddings"


def hypernetwork() -> torch.nn.Module:
    """Names as hyperlora's (a Linear with its bias, then an indexed LayerNorm), as BERT's ``LayerNorm`` and lower-case."""
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    module.add_module("LayerNorm", torch.nn.LayerNorm(8))
    module.add_module("layernorm", torch.nn.LayerNorm(8))
    return module


def groups(parts: torch.nn.Module, no_decay: str) -> dict[float, list[str]]:
    """The names of ``parts``' parameters in each weight-decay group of the optimizer ``no_decay`` builds."""
    names = {id(p): name for name, p in parts.named_parameters()}
    optimizer = _optimizer(parts, 1e-3, 0.01, no_decay)
    return {group["weight_decay"]: [names[id(p)] for p in group["params"]] for group in optimizer.param_groups}


def test_the_reference_rule_decays_t5_layer_norms_and_exempts_names_with_bias():
    reader = FiDReader(model="fid-tiny", train_parts=PARTS).trainable_module()
    parts = torch.nn.ModuleDict({"imaginer": hypernetwork(), "reader": reader})
    names = [name for name, _ in parts.named_parameters()]
    layer_norms = [name for name in names if name.endswith("layer_norm.weight")]
    assert len(layer_norms) == 12 and "reader.shared.weight" in names  # fid-tiny's 5 + 7 layer norms, embedding

    norms = groups(parts, "norms")
    # as before the option: every parameter of 2 or more dimensions decayed, in parameters() order
    assert norms[0.01] == [n for n, p in parts.named_parameters() if p.ndim >= 2]
    assert norms[0.01] == ["imaginer.0.weight", "reader.shared.weight"]
    assert norms[0.0] == [n for n, p in parts.named_parameters() if p.ndim < 2]

    reference = groups(parts, "reference")
    exempt = ["imaginer.0.bias", "imaginer.1.bias", "imaginer.LayerNorm.weight", "imaginer.LayerNorm.bias",
              "imaginer.layernorm.bias"]  # fmt: skip
    assert reference[0.0] == exempt  # 'bias' anywhere, and BERT's LayerNorm spelling (case-sensitive)
    assert reference[0.01] == [name for name in names if name not in exempt]
    assert set(layer_norms) <= set(reference[0.01]) and not set(layer_norms) & set(norms[0.01])
    assert {"imaginer.1.weight", "imaginer.layernorm.weight"} <= set(reference[0.01])  # no name match: decayed
    assert not any("bias" in name for name in reference[0.01] + norms[0.01])  # a bias is never decayed

    # the reference's rule finds no name with 'bias' in the T5's parts: one group, the empty one left out
    alone = torch.nn.ModuleDict({"reader": reader})
    assert [g["weight_decay"] for g in _optimizer(alone, 1e-3, 0.01, "reference").param_groups] == [0.01]
    with pytest.raises(ConfigurationError, match="--no-decay"):
        _optimizer(alone, 1e-3, 0.01, "bogus")


def cli_train(invoke_cli, output: Path, *options: str) -> dict:
    """One step of fid-tiny's layer norms and embedding (closed-book); its train_config.json."""
    code, _, err = invoke_cli(
        "train", "--dataset", "sample", "--imaginer", "none", "--reader", "fid-tiny", "--reader-args",
        f'train_parts="{PARTS}",train_answer=first', "--limit", "2",
        "--batch-size", "2", "--steps", "1", "--lr", "1e-3", "--weight-decay", "0.01", "--save-every", "1",
        "--no-progress", "--output", str(output), *options,
    )  # fmt: skip
    assert code == 0, err
    return json.loads((output / "train_config.json").read_text())


def saved_groups(output: Path) -> list[tuple[float, int]]:
    """(weight decay, number of parameters) of each group of the optimizer the checkpoint saved."""
    resume = json.loads((output / "checkpoints" / "step-000001" / "state" / "resume.json").read_text())
    return [(group["weight_decay"], len(group["params"])) for group in resume["optimizer"]["param_groups"]]


def test_no_decay_reference_reaches_the_optimizer_and_only_it_changes_the_identity(tmp_path, invoke_cli):
    default = cli_train(invoke_cli, tmp_path / "default")
    reference = cli_train(invoke_cli, tmp_path / "reference", "--no-decay", "reference")
    # the 12 layer norms exempt by default; under the reference's rule decayed with the embedding
    assert saved_groups(tmp_path / "default") == [(0.01, 1), (0.0, 12)]
    assert saved_groups(tmp_path / "reference") == [(0.01, 13)]
    assert "no_decay" not in default["identity"]["training"]  # the identity (and hash) of earlier runs
    assert reference["identity"]["training"].pop("no_decay") == "reference"
    assert reference["identity"] == default["identity"] and reference["hash"] != default["hash"]
    assert default["hash"] == config_hash(default["identity"])


def test_the_default_adds_nothing_to_the_identity_and_a_bad_value_is_refused(tmp_path, invoke_cli):
    from iagbench.training.folder import _changed
    from iagbench.training.spec import REFERENCE_OPTIMIZER_OPTIONS

    spec = TrainSpec(dataset="sample", imaginer="none", reader="fid-tiny")
    assert spec.no_decay == "norms" and _changed(spec, REFERENCE_OPTIMIZER_OPTIONS) == {}
    reference = TrainSpec(dataset="sample", imaginer="none", reader="fid-tiny", no_decay="reference")
    assert _changed(reference, REFERENCE_OPTIMIZER_OPTIONS)
    with pytest.raises(ConfigurationError, match=r"^--no-decay Norms: expected one of norms, reference$"):
        validate(TrainSpec(dataset="sample", imaginer="none", reader="fid-tiny", no_decay="Norms"))
    output = tmp_path / "out"
    code, _, err = invoke_cli(
        "train", "--imaginer", "none", "--reader", "fid-tiny", "--steps", "1", "--no-decay", "bogus", "--no-progress",
        "--output", str(output),
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert err == "iagbench: error: --no-decay bogus: expected one of norms, reference\n"
    assert not output.exists()
