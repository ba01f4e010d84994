"""The `imagine` imaginer: a causal LM fine-tuned to write a question's compressed context (explicit imagination).

Trained with ``iagbench train --imaginer imagine --imaginer-args pairs=PAIRS.jsonl`` on the pairs
``iagbench compress`` writes: the training questions come from the dataset split, their targets from
the pairs file, matched by example id. The loss is the cross-entropy of the target (then the end
token) after the question prompt, the prompt masked out. At test time it generates greedily.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from iagbench import ConfigurationError, Context, DataError, Example, Imaginer, Passage
from iagbench.contract.components import Trainable
from iagbench.files.cache import file_sha256
from iagbench.files.jsonl import json_objects

from .lm import CausalLM, check_positive

PROMPT = "Write a short background document that answers the question.\nQuestion: {question}\nDocument:"
PROMPT_VERSION = "1"


def read_pairs(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{id: record}`` of a pairs file (JSON lines with id, question, compressed); errors name the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"imagine option pairs={path}: no such file (write it with iagbench compress)")
    pairs: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, record in json_objects(handle, path):
            for field in ("id", "question", "compressed"):
                if not isinstance(record.get(field), str):
                    raise DataError(path, number, field, "expected a string")
            if record["id"] in pairs:
                raise DataError(path, number, "id", f"'{record['id']}' appears twice")
            pairs[record["id"]] = record
    return pairs


class ImagineImaginer(Imaginer, Trainable):
    """Question -> generated compressed context, one passage titled "imagined".

    ``lora_rank=0`` fine-tunes every weight (the model is the trainable module, kept in fp32 so that
    mixed precision has fp32 master weights); ``lora_rank=R`` trains a peft LoRA as the causal-lm
    reader's option does. ``checkpoint=DIR`` loads trained weights. ``n=K`` returns K imagined documents per
    question: the K best sequences of a beam search with K beams (deterministic), best first. ``train=false``
    freezes it (nothing to train: e.g. the explicit part of ``imagine+hyperlora`` while the hypernetwork trains);
    a frozen imagine writes each question's documents once and reuses them (its decoding is deterministic and
    batch-independent), so a student trained for several epochs does not regenerate them every epoch.
    """

    provides = frozenset({"passages"})

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        pairs: str | None = None,
        lora_rank: int = 0,
        n: int = 1,
        train: bool = True,
        max_new_tokens: int = 64,
        max_target_tokens: int = 128,
        dtype: str = "auto",
        device: str = "auto",
        checkpoint: str | None = None,
        seed: int = 0,
    ):
        self.max_new_tokens = check_positive(max_new_tokens, "max_new_tokens", "imagine")
        self.max_target_tokens = check_positive(max_target_tokens, "max_target_tokens", "imagine")
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
            raise ConfigurationError(
                f"imagine option lora_rank={lora_rank!r}: expected 0 (full fine-tune) or a positive integer"
            )
        self.n = check_positive(n, "n", "imagine")
        if not isinstance(train, bool):
            raise ConfigurationError(f"imagine option train={train!r}: expected true or false")
        self.lora_rank, self.trains = lora_rank, train
        full = dtype == "auto" and not lora_rank and train  # fp32 master weights for full fine-tuning
        self.lm = CausalLM(model, dtype="fp32" if full else dtype, device=device, seed=seed)
        if lora_rank:
            from iagbench.lm.peft_lora import add_peft_lora

            self.lm.model.requires_grad_(False)
            self.module = add_peft_lora(self.lm, lora_rank)  # wraps self.lm.model; returns the LoRA weights
        else:
            self.lm.model.requires_grad_(train)
            self.module = self.lm.model
        self.pairs_path = str(Path(pairs).expanduser()) if pairs else None
        self.pairs = read_pairs(pairs) if pairs else None
        self.checkpoint = checkpoint
        if checkpoint:
            from iagbench.lm.checkpoints import load_trainable

            self.checkpoint = str(load_trainable(_Weights(self.module), checkpoint, "imaginer"))
        if not train:  # frozen: e.g. the explicit part of imagine+hyperlora while the hypernetwork trains
            self.module.requires_grad_(False)
        self.written: dict[str, Context] | None = None if train else {}  # frozen: question -> its documents
        self.module.eval()
        self.lm.model.eval()

    @property
    def model(self) -> torch.nn.Module:
        """The transformers model (what `iagbench train --gradient-checkpointing` looks for)."""
        return self.lm.model

    def trainable_module(self) -> torch.nn.Module | None:
        return self.module if self.trains else None

    def train(self, mode: bool = True) -> None:
        self.lm.model.train(mode)

    def prompt_ids(self, question: str) -> list[int]:
        return self.lm.encode(PROMPT.format(question=question))

    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        if self.written is None:
            return self.write([e.question for e in examples])
        new = list(dict.fromkeys(e.question for e in examples if e.question not in self.written))
        self.written.update(zip(new, self.write(new)))
        return [self.written[e.question] for e in examples]

    def write(self, questions: Sequence[str]) -> list[Context]:
        """The imagined documents of ``questions``, generated now."""
        if not questions:
            return []
        prompts = [self.prompt_ids(question) for question in questions]
        if self.n == 1:
            texts, counts = self.lm.generate_counted(prompts, self.max_new_tokens)
            beams = [[text] for text in texts]
        else:
            beams, counts = self.lm.beam_generate_counted(prompts, self.max_new_tokens, self.n)
        return [
            Context(
                passages=tuple(Passage(text, title="imagined") for text in texts),
                cost=self.lm.generation_cost(len(prompt), count, beams=self.n),  # what writing it cost (docs/cost.md)
            )
            for texts, prompt, count in zip(beams, prompts, counts)
        ]

    def targets(self, examples: Sequence[Example]) -> list[str]:
        """Each example's compressed context from the pairs file (by id; the question must match)."""
        if self.pairs is None:
            raise ConfigurationError(
                "imagine: training needs its targets: --imaginer-args pairs=PAIRS.jsonl (from iagbench compress)"
            )
        missing = [e.id for e in examples if e.id not in self.pairs]
        if missing:
            raise ConfigurationError(
                f"{self.pairs_path}: no pair for {len(missing)} training example(s) (first: id '{missing[0]}'); "
                "write them with iagbench compress over the same dataset split (or train with --limit)"
            )
        for example in examples:
            if self.pairs[example.id]["question"] != example.question:
                raise ConfigurationError(
                    f"{self.pairs_path}: id '{example.id}' has the question {self.pairs[example.id]['question']!r}, "
                    f"the dataset {example.question!r}: the pairs come from another dataset"
                )
        return [self.pairs[e.id]["compressed"] for e in examples]

    def prepare(self, examples: Sequence[Example]) -> None:
        """Check before the first step that every training example has its target."""
        self.targets(examples)

    def loss(self, examples: Sequence[Example], contexts: Sequence[Context]) -> Any:
        """Mean cross-entropy of each target (cut to max_target_tokens, then the end token) after its prompt."""
        rows, labels = [], []
        eos = self.lm.tokenizer.eos_token_id
        for example, target in zip(examples, self.targets(examples)):
            prompt = self.prompt_ids(example.question)
            target_ids = self.lm.encode(" " + target, special=False)[: self.max_target_tokens] + [eos]
            rows.append(prompt + target_ids)
            labels.append([-100] * len(prompt) + target_ids)
        width = max(map(len, rows))
        pad = self.lm.tokenizer.pad_token_id
        device = self.lm.device
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
        label_ids = torch.tensor([row + [-100] * (width - len(row)) for row in labels], device=device)
        logits = self.lm.model(input_ids=input_ids, attention_mask=mask).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), label_ids[:, 1:].reshape(-1), ignore_index=-100
        )

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.lm.info,
            "prompt": {"version": PROMPT_VERSION, "text": PROMPT},
            "lora_rank": self.lora_rank,
            "max_new_tokens": self.max_new_tokens,
            "n": self.n,
            "decoding": "greedy" if self.n == 1 else f"beam search (num_beams={self.n}, the {self.n} best returned)",
            "train": self.trains,
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "device": self.lm.device,
            "pairs": {"path": self.pairs_path, "sha256": file_sha256(self.pairs_path), "n": len(self.pairs or {})}
            if self.pairs_path
            else None,
            "checkpoint": self.checkpoint,
        }


class _Weights:
    """What ``load_trainable`` loads a checkpoint into: the trained weights, frozen (``train=false``) or not."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def trainable_module(self) -> torch.nn.Module:
        return self.module


_Weights.__name__ = _Weights.__qualname__ = "ImagineImaginer"  # error messages name the imaginer
