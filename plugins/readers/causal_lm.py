"""The `causal-lm` reader: any transformers causal LM, prompted for a short answer, decoded greedily."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

from iagbench import Answer, ConfigurationError, Context, Example, Reader
from iagbench.contract.components import Distillable, Exportable, Trainable
from iagbench.lm.adapter_host import AdapterHost
from iagbench.lm.decoding import (
    StaticDecoder,
    cache_keyword,
    check_decoding_options,
    greedy_decode,
    shared_prefix_length,
    stop_token_ids,
)
from iagbench.lm.devices import pick_device
from iagbench.lm.models import end_token_ids, load_model, pick_dtype, resolve_model
from iagbench.lm.peft_lora import add_peft_lora, check_lora_options

from .prompt_fit import PromptFitter
from .prompts import get_template
from .question_cut import cut_question
from .reader_cost import causal_cost, decoder_only_shape


class CausalLMReader(PromptFitter, AdapterHost, Reader, Trainable, Distillable, Exportable):
    """Reads the question (and passages, adapters, when the imaginer gives them) and generates a short answer.

    Adapters (per-example LoRA weights, e.g. from `hyperlora`) are applied to every row of a batch
    with batched matrix products. ``lora_rank > 0`` adds a trainable peft LoRA (the LoRA baseline).
    """

    accepts = frozenset({"passages", "adapter"})

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        prompt: str = "short-answer",
        max_new_tokens: int = 16,
        dtype: str = "auto",
        device: str = "auto",
        chat: bool | str = "auto",
        prefix_cache: bool = True,
        max_input_tokens: int | None = None,
        passage_tokens: int | None = None,
        lora_rank: int = 0,
        checkpoint: str | None = None,
        cache: str = "dynamic",
        compile: bool = False,
        seed: int = 0,
        lora_alpha: float | None = None,
        lora_dropout: float | None = None,
    ):
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigurationError(f"reader option max_new_tokens={max_new_tokens!r}: expected a positive integer")
        check_decoding_options(cache, compile, lora_rank)
        self._lora_options = check_lora_options(lora_rank, lora_alpha, lora_dropout)  # recorded only when set
        self.template = get_template(prompt)
        self.source = resolve_model(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model, self.tokenizer, self.model_info = load_model(
            self.source, dtype=self.dtype, device=self.device, seed=seed
        )
        self.model.requires_grad_(False)  # the reader stays frozen; only adapters or a peft LoRA train
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.chat = self.template.use_chat and has_chat_template if chat == "auto" else bool(chat)
        if self.chat and not has_chat_template:
            raise ConfigurationError(f"reader option chat=true, but model '{model}' has no chat template")
        self.max_new_tokens = max_new_tokens
        self.max_input_tokens = max_input_tokens or self._context_length() - max_new_tokens
        self.passage_tokens = passage_tokens
        for name, value in (("max_input_tokens", self.max_input_tokens), ("passage_tokens", passage_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"reader option {name}={value!r}: expected a positive integer")
        self.prefix_cache = bool(prefix_cache)
        self._cache_key = cache_keyword(self.model)
        self._prefix: tuple[tuple[int, ...], Any] | None = None
        self._set_up_lora(lora_rank, checkpoint)
        self.end_ids = end_token_ids(self.model, self.tokenizer) | stop_token_ids(self.tokenizer, self.template.stop)
        self.cache = cache
        self._static = StaticDecoder(self.model, compile=compile) if cache == "static" else None
        self.last_generated_tokens: list[int] = []  # per row of the last generate(): tokens up to the end token

    def _set_up_lora(self, lora_rank: int, checkpoint: str | None) -> None:
        """The peft LoRA baseline (``lora_rank``, ``lora_alpha``, ``lora_dropout``) and its trained ``checkpoint``."""
        self.lora_rank = lora_rank
        self._peft = None
        if lora_rank:
            self._peft = add_peft_lora(self, lora_rank, **self._lora_options)
        self.checkpoint = checkpoint
        if checkpoint:
            if self._peft is None:
                raise ConfigurationError(
                    "reader option checkpoint=... needs lora_rank=R (the rank it was trained with)"
                )
            from iagbench.lm.checkpoints import load_trainable

            load_trainable(self, checkpoint, "reader")

    def export(self, folder: Any) -> dict[str, Any]:
        """`iagbench export`: the peft LoRA baseline (lora_rank=R) as a peft adapter folder."""
        from iagbench.lm.export import export_peft_adapter

        return export_peft_adapter(self, folder)

    def describe(self) -> dict[str, Any]:
        info = {
            "model": self.model_info,
            "prompt": self.template.describe(),
            "chat_template": self.chat,
            "max_new_tokens": self.max_new_tokens,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
            "decoding": "greedy",
            "prefix_cache": self.prefix_cache,
            "max_input_tokens": self.max_input_tokens,
            "passage_tokens": self.passage_tokens,
            "lora_rank": self.lora_rank,
            "checkpoint": self.checkpoint,
            **self._lora_options,  # lora_alpha, lora_dropout: only when set, so earlier runs keep their identity
        }
        if (
            self._static is not None
        ):  # the default (dynamic cache) keeps its old record, so old runs keep their identity
            info.update(self._static.describe())
        return info

    def trainable_module(self) -> Any:
        return self._peft

    def _context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)

    def prompts(self, examples: Sequence[Example], contexts: Sequence[Context]) -> list[str]:
        return [prompt for prompt, _ in self.fitted_prompts(examples, contexts)]

    def fitted_prompts(
        self, examples: Sequence[Example], contexts: Sequence[Context]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Each prompt with a record of how its passages were fitted into ``max_input_tokens``."""
        return [self.fit(example.question, context.passages) for example, context in zip(examples, contexts)]

    def prompt_tokens(self, examples: Sequence[Example], contexts: Sequence[Context]) -> list[int]:
        return [info["prompt_tokens"] for _, info in self.fitted_prompts(examples, contexts)]  # for --batch-tokens

    def answer(self, examples: Sequence[Example], contexts: Sequence[Context]) -> list[str]:
        fitted = self.fitted_prompts(examples, contexts)
        self.last_generated_tokens = []
        generated = self.generate([prompt for prompt, _ in fitted], self.adapters_of(contexts))
        counts = self.last_generated_tokens  # [] when a subclass's generate() does not count: zeros then
        counts = counts if len(counts) == len(generated) else [0] * len(generated)
        return [
            Answer(self.template.answer(text), raw=text, details={**info, "cost": self._cost(example, info, count)})
            for text, (_, info), example, count in zip(generated, fitted, examples, counts)
        ]

    def cost_model(self) -> dict[str, dict[str, int]]:
        """Shapes for the runner's FLOPs estimate (docs/cost.md)."""
        return decoder_only_shape(self.model)

    def _cost(self, example: Example, info: dict[str, Any], generated: int) -> dict[str, Any]:
        """``details["cost"]``: the prompt's question, context and input tokens, and the tokens generated."""
        question, cut = example.question, info.get("question_cut")
        if cut is not None:
            question = cut_question(self.tokenizer, question, cut["kept"])[0]
        asked = cut["kept"] if cut is not None else len(self._tokens(question))
        context = info["prompt_tokens"] - self.count(self.render(question, [])) if info.get("passages_in_prompt") else 0
        return causal_cost(asked, info["prompt_tokens"], max(context, 0), generated)

    def generate(self, prompts: Sequence[str], adapters: list[Any] | None = None) -> list[str]:
        """Greedy continuations of ``prompts``, stopped at the template's stop strings or end of sequence.

        The token prefix that all prompts of the batch share (instruction, worked examples) is
        encoded once and its key/value cache reused: rows are laid out as prefix, padding, own
        suffix, with the padding masked, so positions and outputs equal those of plain left padding.
        """
        import torch

        ids = [self.tokenizer(p, add_special_tokens=not self.chat)["input_ids"] for p in prompts]
        # Adapters change every token's keys and values, the shared prefix's too: no prefix cache then.
        shared = shared_prefix_length(ids) if self.prefix_cache and adapters is None else 0
        pad = self.tokenizer.pad_token_id
        width = max(len(row) - shared for row in ids)
        input_ids = [row[:shared] + [pad] * (width - len(row) + shared) + row[shared:] for row in ids]
        mask = [[1] * shared + [0] * (width - len(row) + shared) + [1] * (len(row) - shared) for row in ids]
        inputs = {
            "input_ids": torch.tensor(input_ids, device=self.device),
            "attention_mask": torch.tensor(mask, device=self.device),
        }
        if self._static is not None:
            self._static.check_adapters(adapters)
            prefix = self._prefix_entry(tuple(ids[0][:shared])) if shared else None
            with torch.inference_mode(), self.lora_active(adapters):
                new_tokens = self._static.decode(
                    inputs["input_ids"], inputs["attention_mask"], max_new_tokens=self.max_new_tokens, end_ids=self.end_ids,
                    prefix=prefix,
                )  # fmt: skip
            self.last_generated_tokens = [len(row) for row in new_tokens]
            return [self.cut(text) for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        cache = self._prefix_cache(tuple(ids[0][:shared]), len(ids)) if shared else None
        with torch.inference_mode(), self.lora_active(adapters) as lora:
            new_tokens = greedy_decode(
                self.model,
                inputs["input_ids"],
                inputs["attention_mask"],
                max_new_tokens=self.max_new_tokens,
                end_ids=self.end_ids,
                cache=cache,
                on_select=lora.select if lora is not None else None,
            )
        self.last_generated_tokens = [len(row) for row in new_tokens]  # for details["cost"]
        return [self.cut(text) for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def cut(self, text: str) -> str:
        """The text up to the first stop string (the token that holds it may carry more)."""
        for stop in self.template.stop:
            index = text.find(stop)
            if index >= 0:
                text = text[:index]
        return text

    def loss(self, examples: Sequence[Example], contexts: Sequence[Context]) -> Any:
        """Mean cross-entropy of each example's first gold answer (then the stop string) after its prompt.

        Prompt tokens are masked out of the loss; gradients flow into adapters and peft LoRA weights.
        """
        import torch

        ids, mask = self.target_ids(self.training_targets(examples))
        logits = self._teacher_forced(examples, contexts, ids, mask)
        return torch.nn.functional.cross_entropy(logits[mask].float(), ids[mask])

    # ---- distillation (iagbench.Distillable) ----

    def training_targets(self, examples: Sequence[Example]) -> list[str]:
        """Each example's first gold answer."""
        for example in examples:
            if not example.answers:
                raise ConfigurationError(f"example {example.id!r} has no gold answer to train on")
        return [example.answers[0] for example in examples]

    def target_ids(self, targets: Sequence[str | Sequence[int]]) -> tuple[Any, Any]:
        """(ids, mask), right-padded: a string is " answer" then the template's stop string (or the end token),
        tokenized; a list of ids is used as it is."""
        import torch

        stop = self.template.stop[0] if self.template.stop else self.tokenizer.eos_token
        rows = [self._tokens(" " + t + stop) if isinstance(t, str) else [int(i) for i in t] for t in targets]
        if any(not row for row in rows):
            raise ValueError("an empty target (no token ids)")
        width, pad = max(map(len, rows)), self.tokenizer.pad_token_id
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=self.device)
        mask = torch.tensor([[True] * len(row) + [False] * (width - len(row)) for row in rows], device=self.device)
        return ids, mask

    def answer_logits(
        self, examples: Sequence[Example], contexts: Sequence[Context], targets: Sequence[str | Sequence[int]]
    ) -> tuple[Any, Any]:
        """Logits (examples, target tokens, vocabulary) of each target token after the example's prompt (passages,
        adapters) and the target's earlier tokens, and the mask of real target tokens."""
        ids, mask = self.target_ids(targets)
        return self._teacher_forced(examples, contexts, ids, mask), mask

    def _teacher_forced(self, examples: Sequence[Example], contexts: Sequence[Context], ids: Any, mask: Any) -> Any:
        """One forward of prompt + target rows; the logits that predict each target token.

        Rows are laid out as [shared prefix] left padding, own prompt, target, right padding (padding masked,
        positions counted over real tokens), so every row's targets sit in the same columns and the output
        embedding runs on those columns only. Without gradients and adapters (a distillation teacher), the token
        prefix all prompts share (instruction, worked examples) is encoded once and its key/value cache reused,
        as in ``generate``.
        """
        import torch

        prompts = [
            self.tokenizer(p, add_special_tokens=not self.chat)["input_ids"]
            for p, _ in self.fitted_prompts(examples, contexts)
        ]
        adapters = self.adapters_of(contexts)
        # Gradients and adapters reach the prefix's keys and values; hooks (hidden-state and attention
        # distillation) read whole sequences: the whole prompt is encoded then.
        hooked = bool(self.model._forward_hooks or self.model._forward_pre_hooks)
        cached = self.prefix_cache and adapters is None and not torch.is_grad_enabled() and not hooked
        shared = shared_prefix_length(prompts) if cached else 0
        targets = [row[: int(n)] for row, n in zip(ids.tolist(), mask.sum(1).tolist())]
        own = [prompt[shared:] for prompt in prompts]
        asked, answered, pad = max(map(len, own)), ids.shape[1], self.tokenizer.pad_token_id
        rows, real = [], []
        for prompt, target in zip(own, targets):
            left, right = asked - len(prompt), answered - len(target)
            rows.append([pad] * left + prompt + target + [pad] * right)
            real.append([1] * shared + [0] * left + [1] * (len(prompt) + len(target)) + [0] * right)
        attention = torch.tensor(real, device=self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        cache = self._prefix_cache(tuple(prompts[0][:shared]), len(rows)) if shared else None
        # target token t of every row is predicted at column asked - 1 + t (of the columns after the prefix)
        columns = torch.arange(asked - 1, asked - 1 + answered, device=self.device)
        with self.lora_active(adapters):
            return self.model(
                input_ids=torch.tensor(rows, device=self.device), attention_mask=attention, position_ids=positions,
                logits_to_keep=columns, **{cache_keyword(self.model): cache},
            ).logits  # fmt: skip

    def _prefix_cache(self, prefix: tuple[int, ...], batch: int) -> Any:
        """The key/value cache of ``prefix``, computed once and copied out for a batch."""
        cache = copy.deepcopy(self._prefix_entry(prefix))
        cache.batch_repeat_interleave(batch)
        return cache

    def _prefix_entry(self, prefix: tuple[int, ...]) -> Any:
        """The one-row (dynamic) key/value cache of ``prefix``, computed once while the prefix stays the same."""
        import torch

        if self._prefix is None or self._prefix[0] != prefix:
            with torch.inference_mode():
                output = self.model(torch.tensor([prefix], device=self.device), use_cache=True)
            self._prefix = (prefix, getattr(output, self._cache_key))
        return self._prefix[1]


smollm2_135m = functools.partial(CausalLMReader, model="smollm2-135m")
llama_7b = functools.partial(CausalLMReader, model="llama-7b")
llama_13b = functools.partial(CausalLMReader, model="llama-13b")
tiny_llama = functools.partial(CausalLMReader, model="tiny-llama")
