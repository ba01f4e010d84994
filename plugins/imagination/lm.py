"""A causal LM for the imagination plugins: loaded as the causal-lm reader loads its model, decoded greedily
with the reader's batched decoder, and scored (log-likelihood of a continuation) for compression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from iagbench import ConfigurationError
from iagbench.lm.decoding import greedy_decode
from iagbench.lm.devices import pick_device
from iagbench.lm.flops import causal_passes, decoder_only_shape, forward_flops
from iagbench.lm.models import end_token_ids, load_model, pick_dtype, resolve_model


def check_positive(value: Any, name: str, component: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{component} option {name}={value!r}: expected a positive integer")
    return value


class CausalLM:
    """A model, its tokenizer (left padding, a pad token) and its end-of-sequence ids."""

    def __init__(self, model: str, *, dtype: str = "auto", device: str = "auto", seed: int = 0):
        self.source = resolve_model(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model, self.tokenizer, self.info = load_model(self.source, dtype=self.dtype, device=self.device, seed=seed)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.end_ids = end_token_ids(self.model, self.tokenizer)

    @property
    def base_model(self) -> Any:
        """The transformers model itself (inside a peft wrapper, with its LoRA layers in place)."""
        get_base_model = getattr(self.model, "get_base_model", None)
        return get_base_model() if callable(get_base_model) else self.model

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, content: str) -> str:
        """One user turn in the model's chat template, ready for the assistant's reply."""
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def count(self, text: str) -> int:
        return len(self.encode(text, special=False))

    def generation_cost(self, prompt: int, generated: int, beams: int = 1) -> dict[str, Any]:
        """``Context.cost`` of generating ``generated`` tokens after a ``prompt``-token prompt, on ``beams`` beams
        (docs/cost.md): each beam processes P + G - 1 tokens, token t attending to t positions."""
        if not hasattr(self, "_shape"):
            self._shape = decoder_only_shape(self.base_model)
        passes = causal_passes(prompt + max(generated - 1, 0), rows=beams)
        tokens = {"prompt": prompt, "generated": generated * beams}
        return {"flops": forward_flops(self._shape, passes), "tokens": tokens}

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int) -> list[str]:
        """Greedy continuations of token-id prompts, up to an end token (`generate_counted` without the counts)."""
        return self.generate_counted(prompts, max_new_tokens)[0]

    def generate_counted(self, prompts: Sequence[list[int]], max_new_tokens: int) -> tuple[list[str], list[int]]:
        """Greedy continuations of token-id prompts (left-padded into one batch), up to an end token; and the
        tokens each generated (the end token included)."""
        pad = self.tokenizer.pad_token_id
        width = max(map(len, prompts))
        input_ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in prompts], device=self.device)
        with torch.inference_mode():
            new_tokens = greedy_decode(
                self.base_model, input_ids, mask, max_new_tokens=max_new_tokens, end_ids=self.end_ids
            )
        texts = [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return texts, [len(row) for row in new_tokens]

    def beam_generate(self, prompts: Sequence[list[int]], max_new_tokens: int, n: int) -> list[list[str]]:
        """Per prompt, the ``n`` best continuations of a beam search with ``n`` beams (deterministic: no sampling),
        best first; each ends at an end token or after ``max_new_tokens``."""
        return self.beam_generate_counted(prompts, max_new_tokens, n)[0]

    def beam_generate_counted(
        self, prompts: Sequence[list[int]], max_new_tokens: int, n: int
    ) -> tuple[list[list[str]], list[int]]:
        """`beam_generate`, and per prompt the decoding steps: the longest of its ``n`` sequences (end included)."""
        pad = self.tokenizer.pad_token_id
        width = max(map(len, prompts))
        input_ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in prompts], device=self.device)
        with torch.inference_mode():
            sequences = self.base_model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                num_beams=n,
                num_return_sequences=n,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(self.end_ids),
                pad_token_id=pad,
                early_stopping=True,
                length_penalty=1.0,
            )
        new = sequences[:, width:].tolist()
        texts = [t.strip() for t in self.tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)]
        lengths = [next((i + 1 for i, t in enumerate(row) if t in self.end_ids), len(row)) for row in new]
        steps = [max(lengths[i * n : (i + 1) * n]) for i in range(len(prompts))]
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))], steps

    def continuation_logprob(
        self, conditions: Sequence[str], continuation: str, *, max_condition_tokens: int = 512, batch_size: int = 32
    ) -> list[float]:
        """Per condition, the mean log-probability of the continuation's tokens after it.

        The continuation is tokenised once and appended to each condition's tokens (its last
        ``max_condition_tokens``), so every condition is scored on the same tokens. Rows are left-padded
        with positions from the attention mask; only the continuation's logits are computed.
        """
        target = self.encode(continuation, special=False)
        if not target:
            raise ConfigurationError("cannot score an empty continuation")
        scores: list[float] = []
        for start in range(0, len(conditions), batch_size):
            rows = [self.encode(c)[-max_condition_tokens:] + target for c in conditions[start : start + batch_size]]
            width = max(map(len, rows))
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            # the last len(target) + 1 columns, by index: a contiguous gather (the integer len(target) + 1 slices a
            # strided view, which torch's CPU matmul multiplies row by row; iagbench.lm.decoding.last_logit)
            columns = torch.arange(width - len(target) - 1, width, device=self.device)
            with torch.inference_mode():
                logits = (
                    self.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=columns)
                    .logits[:, :-1]
                    .float()
                )
            logprobs = torch.log_softmax(logits, dim=-1)
            gold = torch.tensor(target, device=self.device).expand(len(rows), -1)
            scores += logprobs.gather(-1, gold[..., None])[..., 0].mean(-1).tolist()
        return scores

    def token_logprobs(self, rows: Sequence[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Per (prefix, tokens) row, log p(tokens[i] | prefix + tokens[:i]) for every i (prefixes must not be
        empty); the rows are left-padded into one batch with positions from the attention mask."""
        if any(not prefix for prefix, _ in rows):
            raise ConfigurationError("cannot score tokens after an empty prefix")
        full = [list(prefix) + list(tokens) for prefix, tokens in rows]
        width, pad = max(map(len, full)), self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in full], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in full], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.base_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        return [logprobs[row, width - 1 - len(tokens) :].tolist() for row, (_, tokens) in enumerate(rows)]
