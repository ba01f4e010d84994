"""HyperLoRA's ``features=question+context`` and ``whitening=chunk``: the ImcQA reference's features
(data/get_features.py:55-70, 104-128)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iagbench import ConfigurationError, Context, Example, Imaginer, Passage
from iagbench.contract.compose import CompositeImaginer
from iagbench_plugins.hyperlora.features import feature_text, whiten_chunk
from iagbench_plugins.hyperlora.imaginer import HyperLoRAImaginer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = {"model": "fid-tiny", "encoder": "hashing", "rank": 2, "hidden": 8, "feature_dims": 8}


def reference_whitening(vecs: np.ndarray, n_components: int) -> np.ndarray:
    """The reference's compute_kernel_bias + transform_and_normalize, copied."""
    mu = vecs.mean(axis=0, keepdims=True)
    cov = np.cov(vecs.T)
    u, s, vh = np.linalg.svd(cov)
    kernel = np.dot(u, np.diag(1 / np.sqrt(s)))[:, :n_components]
    vecs = (vecs - mu).dot(kernel)
    return vecs / (vecs**2).sum(axis=1, keepdims=True) ** 0.5


def test_whiten_chunk_is_the_references_whitening():
    vecs = np.random.default_rng(0).normal(size=(40, 12)) @ np.random.default_rng(1).normal(size=(12, 12))
    ours, theirs = whiten_chunk(torch.tensor(vecs), 6).double().numpy(), reference_whitening(vecs, 6)
    # the same up to each column's sign (an SVD's): equal magnitudes and equal inner products
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-5)
    np.testing.assert_allclose(ours @ ours.T, theirs @ theirs.T, atol=1e-5)
    small = whiten_chunk(torch.tensor(vecs[:4]), 6)  # 4 examples: 3 directions of variance, the rest zeroed
    assert torch.isfinite(small).all() and torch.allclose(small.norm(dim=-1), torch.ones(4), atol=1e-5)


def examples(n: int, offset: int = 0) -> list[Example]:
    words = ["mars", "moon", "lake", "iliad", "homer", "iron", "peru", "poem", "war", "sea", "sun", "king"]
    return [
        Example(str(i), f"{words[i % 12]} {words[i * 7 % 11]} {words[i * 5 % 7]} q{i}", ("x",))
        for i in range(offset, offset + n)
    ]


def test_chunk_whitening_fits_each_256_example_chunk_of_the_training_set():
    imaginer = HyperLoRAImaginer(**OPTIONS, whitening="chunk")
    assert imaginer.describe()["whitening"] == "chunk" and "whitening" not in HyperLoRAImaginer(**OPTIONS).describe()
    train = examples(300)
    imaginer.prepare(train)
    encoded = imaginer.encoder([e.question for e in train])
    got = imaginer._features([train[3], train[290]], None)["whitened"]
    assert torch.allclose(got[0], whiten_chunk(encoded[:256], 8)[3], atol=1e-6)
    assert torch.allclose(got[1], whiten_chunk(encoded[256:], 8)[290 - 256], atol=1e-6)
    unseen = examples(20, offset=1000)  # not in the training set: whitened as a chunk of this call
    got = imaginer._features(unseen, None)["whitened"]
    assert torch.allclose(got, whiten_chunk(imaginer.encoder([e.question for e in unseen]), 8), atol=1e-6)
    assert len(imaginer.imagine(unseen[:2])) == 2  # no global fit needed


class _Passages(Imaginer):
    provides = frozenset({"passages"})

    def imagine(self, batch):
        return [Context((Passage(f"text of {e.id}", "t"), Passage("more", "u"))) for e in batch]


class _Recording:
    dims = 512  # as the hashing encoder the network was built for

    def __init__(self):
        self.texts: list[str] = []

    def __call__(self, texts):
        self.texts.extend(texts)
        return torch.randn(len(texts), self.dims, generator=torch.Generator().manual_seed(len(self.texts)))


def test_question_and_context_features_read_the_earlier_parts_passages():
    hyperlora = HyperLoRAImaginer(**OPTIONS, features="question+context")
    hyperlora.encoder = _Recording()
    composite = CompositeImaginer("given+hyperlora", [("given", _Passages()), ("hyperlora", hyperlora)])
    train = examples(20)
    composite.prepare(train)  # the whitening fits on the questions with their passages
    assert hyperlora.encoder.texts[0] == "Question: " + train[0].question + " text of 0 more\nAnswer:"
    hyperlora.encoder.texts.clear()
    contexts = composite.imagine(train[:2])
    assert hyperlora.encoder.texts == [
        feature_text(e.question, _Passages().imagine([e])[0].passages) for e in train[:2]
    ]
    assert all(c.adapter is not None and len(c.passages) == 2 for c in contexts)
    assert feature_text("q", ()) == "Question: q\nAnswer:"


def test_bad_feature_options_are_one_line_errors():
    for option, value in (("features", "context"), ("whitening", "batch")):
        with pytest.raises(ConfigurationError, match=f"hyperlora option {option}='{value}'"):
            HyperLoRAImaginer(**OPTIONS, **{option: value})


def chunk_training(output):
    """4 steps of a whitening=chunk hypernetwork through the frozen fid-tiny, in batches of 4 of 12 examples (one
    chunk), checkpoints at steps 2 and 4."""
    from test_faults_training import spec

    from iagbench.contract.plugins import load_plugins
    from iagbench.training.train import train

    options = {**OPTIONS, "whitening": "chunk"}
    reader = {"train": "none", "train_answer": "first"}
    train(
        spec(output, imaginer="hyperlora", imaginer_args=options, reader="fid-tiny", reader_args=reader, limit=12,
             steps=4, grad_accum=1, batch_size=4, lr=0.05, warmup_steps=0),
        load_plugins(builtins_only=True),
        progress=False,
        log=lambda message: None,
    )  # fmt: skip


def test_a_resumed_chunk_whitened_training_ends_as_an_uninterrupted_one(tmp_path):
    """The features whitened per chunk are not in checkpoints: a resume whitens the training set again (prepare),
    not each batch on its own, so the resumed training's losses and weights are the uninterrupted one's."""
    from test_faults_training import cut_back
    from test_train import assert_same_weights

    from iagbench.training.folder import read_log

    uninterrupted = tmp_path / "uninterrupted"
    chunk_training(uninterrupted)
    resumed = cut_back(uninterrupted, tmp_path / "resumed", 2)
    chunk_training(resumed)
    losses = [r["loss"] for r in read_log(uninterrupted)]
    assert len(losses) == 4 and [r["loss"] for r in read_log(resumed)] == pytest.approx(losses, rel=1e-6)
    assert_same_weights(resumed, uninterrupted, atol=1e-7, roles=("imaginer",))


def test_only_chunk_whitening_prepares_again_on_resume():
    """A global whitening is in the checkpoint's buffers; the per-chunk features are not."""
    chunked, fitted = HyperLoRAImaginer(**OPTIONS, whitening="chunk"), HyperLoRAImaginer(**OPTIONS)
    assert chunked.prepare_on_resume() and not fitted.prepare_on_resume()
    composite = CompositeImaginer("given+hyperlora", [("given", _Passages()), ("hyperlora", chunked)])
    assert composite.prepare_on_resume()
    assert not CompositeImaginer("given+hyperlora", [("given", _Passages()), ("hyperlora", fitted)]).prepare_on_resume()
