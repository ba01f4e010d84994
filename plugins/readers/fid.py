"""The `fid-t5` reader: T5 Fusion-in-Decoder (Izacard & Grave, EACL 2021, facebookresearch/FiD).
Its greedy decoding loops live in `fid_decoding`, its encoder inputs in `fid_inputs`.

Design notes: docs/internals.md#pluginsreadersfidpy"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Any

from iagbench import Answer, ConfigurationError, Context, Distillable, Example, Reader
from iagbench.contract.components import Exportable, Trainable
from iagbench.lm.adapter_host import AdapterHost
from iagbench.lm.decoding import cache_keyword
from iagbench.lm.devices import pick_device
from iagbench.lm.models import pick_dtype
from iagbench.lm.peft_lora import check_lora_options
from iagbench.lm.t5_models import load_t5, resolve_t5

from .fid_decoding import StaticSeq2SeqDecoder, greedy_decode_seq2seq
from .fid_inputs import FID_FORMAT, Encoded, input_format, pack_rows  # noqa: F401 (FID_FORMAT: importable from here)
from .fid_options import check_fid_options, check_positive
from .fid_training import load_reader_checkpoint, parse_train_parts, set_up_lora, set_up_parts
from .question_cut import cut_question
from .reader_cost import encoder_decoder_shape, fid_cost


class FiDReader(AdapterHost, Reader, Trainable, Distillable, Exportable):
    """T5 Fusion-in-Decoder: passages encoded one by one, read together by the decoder."""

    accepts = frozenset({"passages", "adapter"})

    def __init__(
        self,
        model: str = "fid-t5-base",
        *,
        text_maxlength: int = 250,
        max_new_tokens: int = 49,
        num_beams: int = 1,
        dtype: str = "auto",
        device: str = "auto",
        encoder_batch_size: int | None = None,
        train: str | None = None,
        lora_rank: int = 0,
        train_answer: str = "random",
        gradient_checkpointing: bool = False,
        tokenizer: str | None = None,
        checkpoint: str | None = None,
        cache: str = "dynamic",
        compile: bool = False,
        seed: int = 0,
        answer_positions: int | None = None,
        train_parts: str | None = None,
        input: str = "fid",
        lora_alpha: float | None = None,
        lora_dropout: float | None = None,
    ):
        self.train_parts, train = parse_train_parts(train_parts, train, lora_rank)
        train = check_fid_options(
            text_maxlength=text_maxlength, max_new_tokens=max_new_tokens, num_beams=num_beams,
            encoder_batch_size=encoder_batch_size, train=train, lora_rank=lora_rank, train_answer=train_answer,
            cache=cache, compile=compile,
        )  # fmt: skip
        self._lora_options = check_lora_options(lora_rank, lora_alpha, lora_dropout)  # recorded only when set
        self.format = input_format(input)  # single-row: the ImcQA reference's student input
        self.text_maxlength, self.max_new_tokens, self.num_beams = text_maxlength, max_new_tokens, num_beams
        self.encoder_batch_size = encoder_batch_size
        # the reference pads its labels to --answer_maxlength 256 (scripts/image.sh:168)
        if answer_positions is not None:
            check_positive("answer_positions", answer_positions)
        self.answer_positions = answer_positions
        self.train_mode, self.train_answer = train, train_answer
        self._load_model(model, dtype=dtype, device=device, seed=seed, tokenizer=tokenizer)
        self._set_up_training(train, lora_rank, gradient_checkpointing)
        self._cache_key = cache_keyword(self.model)
        self.checkpoint = None
        if checkpoint:
            self.checkpoint = self._load_checkpoint(checkpoint)
        self.cache = cache
        self._static = StaticSeq2SeqDecoder(self.model, compile=compile) if cache == "static" else None

    def _load_model(self, model: str, *, dtype: str, device: str, seed: int, tokenizer: str | None) -> None:
        """Load the T5 and its tokenizer onto the device; find its decoder start, pad and end tokens."""
        self.source = resolve_t5(model)
        self.device = pick_device(device)
        # fp32 unless asked: T5 overflows in fp16, FiD ran it in fp32, and full fine-tuning needs fp32
        # weights (the trainer's bf16 autocast gives the speed). dtype=bf16 for faster inference.
        self.dtype = _torch_float32() if dtype == "auto" else pick_dtype(dtype, self.device)
        self.model, self.tokenizer, self.model_info = load_t5(
            self.source, dtype=self.dtype, device=self.device, seed=seed, tokenizer=tokenizer
        )
        config = self.model.config
        self.start_id = (
            config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
        )
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else config.pad_token_id
        self.eos_id = self.tokenizer.eos_token_id
        if self.eos_id is None or self.start_id is None or self.pad_id is None:
            raise ConfigurationError(f"model '{model}': its tokenizer/config lacks an end, pad or decoder start token")

    def _set_up_training(self, train: str, lora_rank: int, gradient_checkpointing: bool) -> None:
        """What trains (the whole T5, a peft LoRA on it, or nothing), and activation checkpointing."""
        self.model.requires_grad_(train == "full")
        self._parts = set_up_parts(self.model, self.train_parts, train == "parts")  # the reference's hyperlora_ffn
        self.lora_rank = lora_rank
        # the LoRA baseline: a peft LoRA (and the train_parts next to it); the rest of the T5 stays frozen
        self._peft: Any = set_up_lora(self, lora_rank, train) if lora_rank else None
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.gradient_checkpointing:  # FiD's --use_checkpoint (activation checkpointing while training)
            enable = (
                getattr(self.model, "activation_checkpointing_enable", None) or self.model.gradient_checkpointing_enable
            )
            enable()

    def _load_checkpoint(self, checkpoint: str) -> str:
        """Load a trained checkpoint (the whole T5, the LoRA or the train_parts) into the reader; return its folder."""
        return load_reader_checkpoint(self, checkpoint)

    def export(self, folder: Any) -> dict[str, Any]:
        """`iagbench export`: the peft LoRA (lora_rank=R; with train_parts, the parts as its ``modules_to_save``) as a
        peft adapter folder, else the T5 (train=full, train_parts) as a ``save_pretrained`` folder with its tokenizer."""
        from iagbench.lm.export import export_peft_adapter, export_pretrained

        if self._peft is not None:
            parts = [name for name, _ in self._parts.named_parameters()] if self._parts is not None else []
            return export_peft_adapter(self, folder, trained=parts)
        return export_pretrained(self.model, self.tokenizer, folder)

    # ---- Reader ----

    def describe(self) -> dict[str, Any]:
        info = {
            "model": self.model_info,
            "input_format": self.format.describe(),
            "text_maxlength": self.text_maxlength,
            "max_new_tokens": self.max_new_tokens,
            "decoding": "greedy" if self.num_beams == 1 else f"beam search (num_beams={self.num_beams})",
            "num_beams": self.num_beams,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
            "encoder_batch_size": self.encoder_batch_size,
            "train": self.train_mode,
            "lora_rank": self.lora_rank,
            "train_answer": self.train_answer,
            "gradient_checkpointing": self.gradient_checkpointing,
            "checkpoint": self.checkpoint,
        }
        if (
            self._static is not None
        ):  # the default (dynamic cache) keeps its old record, so old runs keep their identity
            info.update(self._static.describe())
        if self.answer_positions is not None:  # recorded only when set: earlier runs keep their identity
            info["answer_positions"] = self.answer_positions
        if self.train_parts:
            info["train_parts"] = list(self.train_parts)
        info.update(self._lora_options)
        return info

    def answer(self, examples: Sequence[Example], contexts: Sequence[Context]) -> list[str]:
        import torch

        if not examples:
            return []
        adapters = self.adapters_of(contexts)
        if self._static is not None:
            self._static.check_adapters(adapters)
        with torch.inference_mode(), self.lora_active(adapters) as lora:
            encoded = self.encode(examples, contexts, lora)
            if self._static is not None:
                tokens = self._static.decode_seq2seq(
                    encoded.hidden, encoded.mask, start_id=self.start_id, end_id=self.eos_id, max_new_tokens=self.max_new_tokens
                )  # fmt: skip
            elif self.num_beams == 1:
                tokens = greedy_decode_seq2seq(
                    self.model, encoded.hidden, encoded.mask, start_id=self.start_id, end_id=self.eos_id,
                    max_new_tokens=self.max_new_tokens, on_select=lora.select if lora is not None else None,
                )  # fmt: skip
            else:
                if lora is not None:  # generate expands each example into num_beams rows, example-major
                    lora.route("decoder", torch.arange(len(examples)).repeat_interleave(self.num_beams))
                tokens = self._beam_search(encoded)
        answers = []
        for index, (ids, info) in enumerate(zip(tokens, encoded.info)):
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            raw = self.tokenizer.decode(ids, skip_special_tokens=False)
            cost = self._cost(examples[index], info, [n for row, n in self.last_rows if row == index], len(ids))
            answers.append(Answer(text, raw=raw, details={**info, "cost": cost}))
        return answers

    def cost_model(self) -> dict[str, dict[str, int]]:
        """Shapes for the runner's FLOPs estimate (docs/cost.md)."""
        return encoder_decoder_shape(self.model)

    def _cost(self, example: Example, info: dict[str, Any], rows: list[int], generated: int) -> dict[str, Any]:
        """``details["cost"]``: question tokens (once per encoder row), context and input tokens, tokens generated."""
        cut = info.get("question_cut")
        question = self.tokenizer(example.question, add_special_tokens=False)["input_ids"] if cut is None else None
        asked = cut["kept"] if cut is not None else len(question)
        return fid_cost(asked, rows, info.get("passages", 0), generated)

    # ---- the encoder side ----

    def encoder_inputs(
        self, examples: Sequence[Example], contexts: Sequence[Context]
    ) -> tuple[list[list[int]], list[int], list[dict[str, Any]]]:
        """Token ids of every encoder row (text_maxlength at most, end token last), the example of each row, and per-example info.

        A question longer than its row is cut first (only its head is tokenized), recorded as ``question_cut``.
        """
        if len(examples) != len(contexts):
            raise ValueError(f"{len(examples)} examples but {len(contexts)} contexts")
        texts, rows, counts, question_cuts = [], [], [], []
        question_room = self.question_room()
        for index, (example, context) in enumerate(zip(examples, contexts)):
            question, question_cut = cut_question(self.tokenizer, example.question, question_room)
            own = self.format.texts(question, context.passages)
            texts.extend(own)
            rows.extend([index] * len(own))
            counts.append(len(context.passages))
            question_cuts.append(question_cut)
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        room = self.text_maxlength - 1
        cut = [len(row) > room for row in ids]
        ids = [row[:room] + [self.eos_id] for row in ids]
        info: list[dict[str, Any]] = [{"passages": n, "passages_cut": 0, "input_tokens": 0} for n in counts]
        for row, example_index in enumerate(rows):
            info[example_index]["input_tokens"] += len(ids[row])
            if cut[row] and counts[example_index]:  # a closed-book row holds no passage to count as cut
                info[example_index]["passages_cut"] += 1
        for entry, question_cut in zip(info, question_cuts):
            if question_cut is not None:
                entry["question_cut"] = question_cut
        return ids, rows, info

    def question_room(self) -> int:
        """Tokens a question may take: its encoder row (``text_maxlength``, end token aside) less the question prefix."""
        prefix = self.tokenizer(self.format.question.format(question=""), add_special_tokens=False)["input_ids"]
        return max(self.text_maxlength - 1 - len(prefix), 1)

    def encode(self, examples: Sequence[Example], contexts: Sequence[Context], lora: Any = None) -> Encoded:
        """Every passage of the batch through the encoder (one call, or ``encoder_batch_size`` rows at a time), packed per example.

        ``lora``: the active ``BatchedLoRA`` of the batch's adapters (``_lora_active``), if any; each
        encoder row then gets its example's LoRA.
        """
        import torch

        ids, rows, info = self.encoder_inputs(examples, contexts)
        self.last_rows = [(row, len(tokens)) for row, tokens in zip(rows, ids)]  # (example, tokens): for the cost
        width = max(map(len, ids))
        input_ids = torch.tensor([row + [self.pad_id] * (width - len(row)) for row in ids], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=self.device)
        row_examples = torch.tensor(rows, device=self.device)
        step = self.encoder_batch_size or len(ids)
        chunks = []
        for start in range(0, len(ids), step):
            if lora is not None:
                lora.route("encoder", row_examples[start : start + step])
            chunks.append(
                self.model.encoder(
                    input_ids=input_ids[start : start + step], attention_mask=mask[start : start + step]
                ).last_hidden_state
            )
        hidden = torch.cat(chunks)
        packed, packed_mask = pack_rows(hidden, mask, row_examples, len(examples))
        return Encoded(packed, packed_mask, row_examples, info)

    # ---- adapters ----

    def lora_active(self, adapters: list[Any] | None) -> Any:
        import torch

        if adapters is not None and self.gradient_checkpointing and self.model.training and torch.is_grad_enabled():
            # Checkpointed layers run again during backward, after the adapters' block has ended.
            raise ConfigurationError(
                "reader option gradient_checkpointing=true cannot train through adapters: turn it off"
            )
        return super().lora_active(adapters)

    # ---- decoding ----

    def _beam_search(self, encoded: Encoded) -> list[list[int]]:
        from transformers.modeling_outputs import BaseModelOutput

        sequences = self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded.hidden),
            attention_mask=encoded.mask,
            num_beams=self.num_beams,
            num_return_sequences=1,
            do_sample=False,
            max_new_tokens=self.max_new_tokens,
            decoder_start_token_id=self.start_id,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        out = []
        for row in sequences[:, 1:].tolist():  # drop the decoder start token
            out.append(row[: row.index(self.eos_id) + 1] if self.eos_id in row else row)
        return out

    # ---- training ----

    def trainable_module(self) -> Any:
        return {"full": self.model, "lora": self._peft, "parts": self._parts}.get(self.train_mode)

    def train(self, mode: bool = True) -> None:
        if self.train_mode in ("full", "lora", "parts"):
            self.model.train(mode)

    def target_ids(self, targets: Sequence[str | Sequence[int]]) -> tuple[Any, Any]:
        """(ids, mask) of answer targets, right-padded: a string is tokenized and ends with the end token; a list of ids is used as it is.

        With ``answer_positions=N`` every row is padded (or cut, keeping a string's end token) to N positions.
        """
        import torch

        rows, limit = [], self.answer_positions
        for target in targets:
            if isinstance(target, str):
                ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
                rows.append((ids[: limit - 1] if limit else ids) + [self.eos_id])
            else:
                rows.append([int(token) for token in target][:limit])
        if any(not row for row in rows):
            raise ValueError("an empty target (no token ids)")
        width = limit or max(map(len, rows))
        ids = torch.tensor([row + [self.pad_id] * (width - len(row)) for row in rows], device=self.device)
        mask = torch.tensor(
            [[1] * len(row) + [0] * (width - len(row)) for row in rows], device=self.device, dtype=torch.bool
        )
        return ids, mask

    def answer_logits(
        self, examples: Sequence[Example], contexts: Sequence[Context], targets: Sequence[str | Sequence[int]]
    ) -> tuple[Any, Any]:
        """Decoder logits (examples, target tokens, vocabulary) with teacher forcing, and the mask of real target tokens.

        ``logits[b, t]`` is the distribution over target token ``t`` of example ``b`` given its
        passages and the target's tokens before ``t``. Targets are strings (an end token is
        appended) or token id lists (see ``target_ids``). Differentiable unless called without grad.
        """
        ids, mask = self.target_ids(targets)
        return self._teacher_forced(examples, contexts, ids, mask), mask

    def _teacher_forced(self, examples: Sequence[Example], contexts: Sequence[Context], ids: Any, mask: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        decoder_input = ids.new_full(ids.shape, self.pad_id)
        decoder_input[:, 0] = self.start_id
        decoder_input[:, 1:] = ids[:, :-1].masked_fill(~mask[:, :-1], self.pad_id)
        with self.lora_active(self.adapters_of(contexts)) as lora:
            encoded = self.encode(examples, contexts, lora)
            output = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded.hidden),
                attention_mask=encoded.mask,
                decoder_input_ids=decoder_input,
                # answer_positions: as HF T5 given labels padded with -100 (the reference): no decoder mask
                decoder_attention_mask=None if self.answer_positions else mask.long(),
                use_cache=False,
            )
        return output.logits

    def training_targets(self, examples: Sequence[Example]) -> list[str]:
        """The answer each example is trained on: ``random.choice`` (FiD) or the first."""
        targets = []
        for example in examples:
            if not example.answers:
                raise ConfigurationError(f"example {example.id!r} has no gold answer to train on")
            targets.append(random.choice(example.answers) if self.train_answer == "random" else example.answers[0])
        return targets

    def loss(self, examples: Sequence[Example], contexts: Sequence[Context]) -> Any:
        """Mean cross-entropy over the answer tokens of the batch (end token included), as FiD's T5 loss."""
        import torch

        ids, mask = self.target_ids(self.training_targets(examples))
        logits = self._teacher_forced(examples, contexts, ids, mask)
        labels = ids.masked_fill(~mask, -100)
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
        )


def _torch_float32() -> Any:
    import torch

    return torch.float32


fid_t5_base = functools.partial(FiDReader, model="fid-t5-base")
fid_t5_large = functools.partial(FiDReader, model="fid-t5-large")
fid_t5_3b = functools.partial(FiDReader, model="fid-t5-3b")
fid_tiny = functools.partial(FiDReader, model="fid-tiny")
