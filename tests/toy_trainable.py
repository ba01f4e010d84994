"""Toy trainable components for the trainer's tests (load with IAGBENCH_PLUGINS=tests/toy_trainable.py).

`toy-imaginer` is a "hypernetwork": a hashed bag of the question's words -> Linear+tanh -> an adapter
vector. `toy-reader` reads the adapter with a linear head over a fixed answer vocabulary (the first
gold answer of every `sample` question); its loss is the cross-entropy of the gold answer, so
training both learns to answer the `sample` train questions and em on them rises. Each takes
``trainable=false`` (nothing to train) and ``checkpoint=DIR`` (load trained weights).
"""

import os
import threading
import zlib

import torch

from iagbench import ConfigurationError, Context, Imaginer, Reader, hookimpl
from iagbench.contract.components import Trainable
from iagbench.lm.checkpoints import load_trainable

FEATURES = 64
HIDDEN = 16
STALL_ENV = "TOY_STALL_AFTER_LOSS_CALLS"  # block in loss() after this many calls, until killed


def features(question: str) -> torch.Tensor:
    x = torch.zeros(FEATURES)
    for word in question.lower().split():
        x[zlib.crc32(word.encode()) % FEATURES] += 1.0
    return x


def vocabulary() -> list[str]:
    from iagbench_plugins.datasets.sample import Sample

    sample = Sample()
    return sorted({example.answers[0] for split in sample.splits for example in sample.load(split)})


class ToyImaginer(Trainable, Imaginer):
    provides = frozenset({"adapter"})

    def __init__(self, trainable=True, checkpoint=None):
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Tanh())
        self.net.register_buffer("prepared_on", torch.zeros(()))  # set by prepare(), saved with the weights
        self.trainable = bool(trainable)
        self.net.requires_grad_(self.trainable)
        self.checkpoint = str(load_trainable(self, checkpoint, "imaginer")) if checkpoint else None

    def trainable_module(self):
        return self.net if self.trainable else None

    def prepare(self, examples):
        self.net.prepared_on.fill_(len(examples))

    def imagine(self, examples):
        weight = self.net[0].weight
        x = torch.stack([features(e.question) for e in examples]).to(weight.device, weight.dtype)
        return [Context(adapter=row) for row in self.net(x)]

    def describe(self):
        return {"checkpoint": self.checkpoint}


class ToyReader(Trainable, Reader):
    accepts = frozenset({"adapter"})

    def __init__(self, trainable=True, checkpoint=None, hidden=HIDDEN, uneven_answer=False):
        if not isinstance(hidden, int) or hidden < 1:
            raise ConfigurationError(f"reader option hidden={hidden!r}: expected a positive integer")
        self.labels = vocabulary()
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.head = torch.nn.Linear(hidden, len(self.labels))
        self.trainable = bool(trainable)
        self.head.requires_grad_(self.trainable)
        self.calls = 0
        self.uneven_answer = bool(uneven_answer)  # answer() calls the head 1-4 times, by question length
        self.checkpoint = str(load_trainable(self, checkpoint, "reader")) if checkpoint else None

    def trainable_module(self):
        return self.head if self.trainable else None

    def _logits(self, contexts):
        return self.head(torch.stack([c.adapter for c in contexts]).to(self.head.weight.dtype))

    def loss(self, examples, contexts):
        self.calls += 1
        stall_after = int(os.environ.get(STALL_ENV) or 0)
        if stall_after and self.calls > stall_after:
            threading.Event().wait(120)  # hold still until the test kills this process
        target = torch.tensor([self.index[e.answers[0]] for e in examples], device=self.head.weight.device)
        return torch.nn.functional.cross_entropy(self._logits(contexts).float(), target)

    def answer(self, examples, contexts):
        with torch.no_grad():
            # uneven_answer: as generation calls its model until the batch's last row ends, a number of times
            # that depends on the examples (so differs between processes), with the same answers
            for _ in range(sum(len(e.question) for e in examples) % 4 if self.uneven_answer else 0):
                self._logits(contexts)
            return [self.labels[i] for i in self._logits(contexts).argmax(-1).tolist()]

    def describe(self):
        return {"checkpoint": self.checkpoint}


class FrozenReader(Reader):
    """Reads adapters but cannot compute a loss: training with it must be refused."""

    accepts = frozenset({"adapter"})

    def answer(self, examples, contexts):
        return ["" for _ in examples]


@hookimpl
def register_imaginers(register):
    register("toy-imaginer", ToyImaginer, description="TEST: trainable hashed-words hypernetwork -> adapter vector")


@hookimpl
def register_readers(register):
    register("toy-reader", ToyReader, description="TEST: trainable linear head over the sample answers")
    register("toy-frozen-reader", FrozenReader, description="TEST: reads adapters, no loss")
