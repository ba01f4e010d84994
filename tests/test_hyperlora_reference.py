"""HyperLoRA's options that reproduce the ImcQA reference's hypernetwork (model/model.py:288-372, 394-405, 615-626):
parameter counts and initialisation for each option; the defaults keep the network they had."""

from __future__ import annotations

import pytest
import torch

from iagbench import ConfigurationError, Context
from iagbench.lm.lora import BatchedLoRA, LoRAAdapter
from iagbench_plugins.hyperlora.imaginer import HyperLoRAImaginer

BASE = {"model": "fid-tiny", "rank": 4, "hidden": 8, "feature_dims": 8, "encoder": "hashing", "device": "cpu"}
REFERENCE = {"activation": "relu", "norm": "none", "layer_input": "index", "share": "stack", "body": "separate",
             "init": "reference", "base_dropout": 0.1}  # fmt: skip
RANK, HIDDEN, FEATURES, EMBED = 4, 8, 8, 16


def build(**options) -> HyperLoRAImaginer:
    torch.manual_seed(0)
    return HyperLoRAImaginer(**{**BASE, **options})


def count(imaginer: HyperLoRAImaginer) -> int:
    return sum(p.numel() for p in imaginer.network.parameters())


def expected(shapes, *, groups, index=False, norm=True, separate=False) -> int:
    """Parameters of the heads computed from the shapes: embedding, hidden layer(s), A and B projections."""
    total = 0
    for kinds in groups:
        layers, d_in, d_out = shapes[kinds[0]]
        width = FEATURES + (1 if index else EMBED)
        body = width * HIDDEN + HIDDEN + (2 * HIDDEN if norm else 0)
        total += (0 if index else layers * len(kinds) * EMBED) + body * (2 if separate else 1)
        total += HIDDEN * d_in * RANK + d_in * RANK + HIDDEN * RANK * d_out + RANK * d_out
    return total


def test_parameter_count_of_each_option():
    default = build()
    shapes = default.shapes
    assert set(shapes) == {"enc_q", "enc_v", "dec_q", "dec_v", "cross_q", "cross_v"}
    per_target = [[kind] for kind in shapes]
    stacks = [["enc_q", "enc_v"], ["dec_q", "dec_v"], ["cross_q", "cross_v"]]
    assert count(default) == expected(shapes, groups=per_target)
    assert count(build(norm="none")) == expected(shapes, groups=per_target, norm=False)
    assert count(build(activation="relu")) == count(default)
    assert count(build(layer_input="index")) == expected(shapes, groups=per_target, index=True)
    assert count(build(body="separate")) == expected(shapes, groups=per_target, separate=True)
    shared = build(share="stack")
    assert set(shared.network.heads) == {"enc", "dec", "cross"}
    assert count(shared) == expected(shapes, groups=stacks)
    reference = build(**REFERENCE)
    assert count(reference) == expected(shapes, groups=stacks, index=True, norm=False, separate=True)
    assert not any(isinstance(m, torch.nn.LayerNorm | torch.nn.GELU) for m in reference.network.modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in reference.network.modules())
    described = reference.describe()
    assert {k: described[k] for k in REFERENCE} == REFERENCE
    assert not {"activation", "share", "base_dropout"} & set(default.describe())  # defaults: the record as it was


def test_initialisation_of_each_option():
    """init=reference: every weight N(0, 1e-7), every bias 0; the default: B = 0, A ~ N(0, 1/(hidden*d_in))."""
    reference = build(**REFERENCE).network
    linears = [m for m in reference.modules() if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(1e-7, rel=0.05) and abs(weights.mean().item()) < 1e-8
    assert all(not m.bias.any() for m in linears)
    default = build().network
    for kind, head in default.heads.items():
        assert not head.to_b.weight.any() and not head.to_b.bias.any(), kind
        assert head.to_a.weight.std().item() == pytest.approx((HIDDEN * head.d_in) ** -0.5, rel=0.1)
    torch.manual_seed(0)  # the default network is drawn as before the options existed (same draws, same order)
    from iagbench_plugins.hyperlora.hypernetwork import HyperNetwork

    assert list(default.state_dict()) == list(HyperNetwork(default.whitening.mean.numel(), FEATURES,
                                                           build().shapes, rank=RANK, hidden=HIDDEN).state_dict())  # fmt: skip


def test_layer_index_input_is_the_reference_slot():
    """layer_input=index, share=stack: layer i's q sees 2i, its v 2i+1 appended to the features."""
    imaginer = build(layer_input="index", share="stack")
    seen = []
    head = imaginer.network.heads["enc"]
    head.body[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0][0, :, -1].tolist()))
    imaginer.network(torch.randn(2, imaginer.encoder.dims))
    layers = imaginer.shapes["enc_q"][0]
    assert [[2.0 * i for i in range(layers)], [2.0 * i + 1 for i in range(layers)]] in (seen[:2], seen[2:4])


def test_base_dropout_drops_the_frozen_output_while_training():
    """base_dropout=0.1: the adapters carry it while training only; BatchedLoRA drops 10% of the base output."""
    imaginer = build(base_dropout=0.1, feature_dims=2)
    examples = [type("E", (), {"question": q})() for q in ("a b c", "d e f", "g h i")]
    imaginer.network.whitening.fit(torch.randn(20, imaginer.encoder.dims))
    imaginer.network.train()
    assert {c.adapter.base_dropout for c in imaginer.imagine(examples)} == {0.1}
    imaginer.network.eval()
    assert {c.adapter.base_dropout for c in imaginer.imagine(examples)} == {0.0}
    layer = torch.nn.Sequential(torch.nn.Linear(64, 64))
    lora = BatchedLoRA.__new__(BatchedLoRA)
    lora._a, lora._b, lora._rows, lora._scale, lora._dropout, lora.stacks = {}, {}, {}, 1.0, 0.1, {"x": "decoder"}
    lora._a["x"], lora._b["x"] = torch.zeros(1, 1, 64, 1), torch.zeros(1, 1, 1, 64)
    hook = lora._hook("x", 0)
    x = torch.randn(1, 4096, 64)
    out = hook(layer[0], (x,), layer[0](x))
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ConfigurationError, match="base_dropout"):
        build(base_dropout=1.5)
    with pytest.raises(ConfigurationError, match="share"):
        build(share="everything")
    assert LoRAAdapter({}, {}).base_dropout == 0.0 and Context().adapter is None
