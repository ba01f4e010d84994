"""The interfaces a plugin implements: Dataset, Imaginer, Reader, Metric (and Trainable, Distillable, Exportable).

Factories registered through the hooks build these from keyword options. An imaginer
factory declares ``provides`` and a reader factory ``accepts`` as attributes (class
attributes on a class), so that incompatible pairs are rejected before a model loads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from iagbench.contract.types import Context, Example, Passage

CONTEXT_KINDS = frozenset({"passages", "adapter"})


class Dataset(ABC):
    """Questions with gold answers, in named splits."""

    splits: ClassVar[tuple[str, ...]] = ("train", "dev", "test")

    @abstractmethod
    def load(self, split: str) -> Iterable[Example]:
        """Yield the examples of one split, in a stable order with stable ids."""

    def describe(self, split: str) -> dict[str, Any]:
        """Where the split comes from (files, hub ids), recorded in every run's config."""
        return {}


class Imaginer(ABC):
    """Gives the reader extra knowledge for each question."""

    provides: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        """Return one context per example, in order."""

    def describe(self) -> dict[str, Any]:
        """Resolved settings worth recording (model ids, k, prompt versions)."""
        return {}


class Reader(ABC):
    """Answers questions, optionally reading the contexts an imaginer made."""

    accepts: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def answer(self, examples: Sequence[Example], contexts: Sequence[Context]) -> list[str]:
        """Return one answer per example, in order (an ``iagbench.Answer`` keeps the raw text too)."""

    def describe(self) -> dict[str, Any]:
        """Resolved settings worth recording (model source, dtype, prompt version)."""
        return {}

    def prompt_tokens(self, examples: Sequence[Example], contexts: Sequence[Context]) -> list[int] | None:
        """Optional: the tokens of each example's prompt, for batches by token budget (None: not counted)."""
        return None


class Distillable(ABC):
    """A reader that long-context distillation (``iagbench train --teacher-reader``) can train, or learn from.

    Teacher and student score the same answer tokens with teacher forcing: the student's
    ``training_targets``, tokenized by ``target_ids``, through ``answer_logits``; the KD loss
    (`iagbench.lm.distill`) compares the two distributions token by token, so both must share a tokenizer.
    """

    @abstractmethod
    def training_targets(self, examples: Sequence[Example]) -> list[str]:
        """The gold answer each example is trained on, one per example, in order."""

    @abstractmethod
    def target_ids(self, targets: Sequence[str | Sequence[int]]) -> tuple[Any, Any]:
        """``(ids, mask)``, both (examples, target tokens), right-padded: strings tokenized with an end token, id lists as they are."""

    @abstractmethod
    def answer_logits(
        self, examples: Sequence[Example], contexts: Sequence[Context], targets: Sequence[str | Sequence[int]]
    ) -> tuple[Any, Any]:
        """``(logits, mask)``: teacher-forced logits (examples, target tokens, vocabulary) over ``target_ids(targets)``, and its mask."""


class Metric(ABC):
    """Scores one prediction; the run reports the mean over examples, in percent."""

    name: ClassVar[str]
    version: ClassVar[str]

    @abstractmethod
    def score(self, prediction: str, answers: Sequence[str], passages: Sequence[Passage]) -> dict[str, float]:
        """Return named per-example scores in [0, 1]; an empty dict where the metric does not apply."""


class Trainable:
    """Mixin for components with parts that `iagbench train` can train.

    ``trainable_module()`` returns the ``torch.nn.Module`` holding the trainable parameters (the
    rest stays frozen) or None; the trainer optimises it, saves only its ``state_dict()``, and
    restores it with ``load_state_dict``. A trainable reader also implements ``loss`` (a scalar
    tensor: the cross-entropy of the gold answers given the contexts, differentiable through
    them); a trainable imaginer's ``imagine`` keeps gradients unless called under ``torch.no_grad``.
    A trainable imaginer that implements ``loss`` itself is trained on its own objective alone
    (called with one empty context per example; the reader then only serves evaluation).
    """

    def trainable_module(self) -> Any:
        return None

    def train(self, mode: bool = True) -> None:
        """Switch dropout and similar layers to training (``mode``) or evaluation behaviour."""
        module = self.trainable_module()
        if module is not None:
            module.train(mode)

    def prepare(self, examples: Sequence[Example]) -> None:
        """Fit whatever needs the whole training set before the first step (e.g. HyperLoRA's whitening).

        Called by `iagbench train` on a fresh start; on a resume only if ``prepare_on_resume()`` (what it fits into
        the trainable module's buffers comes back with the checkpoint, whose weights load after it).
        """

    def prepare_on_resume(self) -> bool:
        """Whether a resumed training calls ``prepare`` again: it computes something no checkpoint holds (e.g.
        HyperLoRA's training features whitened per chunk). Default: no."""
        return False

    def has_loss(self) -> bool:
        """Whether this component computes a training loss (implements ``loss``); wrappers override it."""
        return type(self).loss is not Trainable.loss

    def loss(self, examples: Sequence[Example], contexts: Sequence[Context]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} cannot compute a training loss")


class Exportable(ABC):
    """A trainable component whose trained state `iagbench export` writes in its own library's format.

    `iagbench export CHECKPOINT --output DIR` builds the component from the checkpoint's ``config.json``
    (name and options, plus ``checkpoint=CHECKPOINT``) through the plugin registry and calls ``export``:
    e.g. a peft adapter folder (``PeftModel.from_pretrained(base, DIR)``), a ``save_pretrained`` model folder,
    or a safetensors file with a JSON config.
    """

    @abstractmethod
    def export(self, folder: Path) -> dict[str, Any]:
        """Write the trained state into the (new, empty) ``folder``; return what was written (``format``, files)."""
