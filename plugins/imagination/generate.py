"""The `generate` imaginer: GenRead-style zero-shot explicit imagination (a prompted LM writes a background document)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iagbench import ConfigurationError, Context, Example, Imaginer, Passage

from .lm import CausalLM, check_positive

# GenRead (Yu et al., 2023), step 1 of "generate then read": name -> (version, instruction)
PROMPTS: dict[str, tuple[str, str]] = {
    "genread": ("1", "Generate a background document from Wikipedia to answer the given question."),
}


class GenerateImaginer(Imaginer):
    """Per question, a greedy background document from a causal LM: one passage titled "generated".

    ``chat="auto"`` wraps the prompt in the model's chat template when it has one (instruction-tuned
    models); otherwise the prompt is the instruction, the question and a blank line, as in GenRead.
    """

    provides = frozenset({"passages"})

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        max_new_tokens: int = 128,
        prompt: str = "genread",
        chat: bool | str = "auto",
        dtype: str = "auto",
        device: str = "auto",
        seed: int = 0,
    ):
        self.max_new_tokens = check_positive(max_new_tokens, "max_new_tokens", "generate")
        if prompt not in PROMPTS:
            raise ConfigurationError(f"generate option prompt={prompt!r}: expected one of {', '.join(PROMPTS)}")
        if chat not in (True, False, "auto"):
            raise ConfigurationError(f"generate option chat={chat!r}: expected auto, true or false")
        self.prompt_name = prompt
        self.prompt_version, self.instruction = PROMPTS[prompt]
        self.lm = CausalLM(model, dtype=dtype, device=device, seed=seed)
        if chat is True and not self.lm.has_chat_template:
            raise ConfigurationError(f"generate option chat=true, but model '{model}' has no chat template")
        self.chat = self.lm.has_chat_template if chat == "auto" else chat

    def prompt(self, question: str) -> list[int]:
        if self.chat:
            return self.lm.encode(self.lm.chat_prompt(f"{self.instruction}\n\n{question}"), special=False)
        return self.lm.encode(f"{self.instruction}\n\n{question}\n\n")

    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        if not examples:
            return []
        prompts = [self.prompt(e.question) for e in examples]
        texts, counts = self.lm.generate_counted(prompts, self.max_new_tokens)
        return [
            Context(passages=(Passage(text, title="generated"),), cost=self.lm.generation_cost(len(prompt), count))
            for text, prompt, count in zip(texts, prompts, counts)
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.lm.info,
            "prompt": {"name": self.prompt_name, "version": self.prompt_version, "instruction": self.instruction},
            "chat_template": self.chat,
            "max_new_tokens": self.max_new_tokens,
            "decoding": "greedy",
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "device": self.lm.device,
        }
