"""The plain `generate` loop a user writes first, as a process of its own (reader_speed.py's baseline).

    python benchmarks/plain_generate_loop.py QUESTIONS.json ANSWERS.json --model smollm2-135m

QUESTIONS.json holds a list of question strings; ANSWERS.json receives the generated texts in the same order.
Prompts are "Question: q\\nAnswer:", batches of `--batch-size`, `--new-tokens` greedy new tokens, no answer
extraction. `benchmarks/reader_speed.py --whole-run` times this process whole (imports, model load, loop,
exit) next to a whole `iagbench run` process; in-process, it calls `plain_generate` on the reader's model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def plain_generate(model: Any, tokenizer: Any, questions: list[str], batch_size: int, new_tokens: int) -> list[str]:
    """Greedy continuations of "Question: q\\nAnswer:" prompts, ``batch_size`` at a time (left padding)."""
    import torch

    outputs: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [f"Question: {q}\nAnswer:" for q in questions[start : start + batch_size]]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            generated = model.generate(
                **encoded, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        outputs += tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("questions", type=Path, help="JSON list of questions")
    parser.add_argument("answers", type=Path, help="where to write the JSON list of generated texts")
    parser.add_argument("--model", default="smollm2-135m", help="an iagbench model name, folder or .gguf file")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()

    import torch

    from iagbench.lm.models import load_model, resolve_model

    model, tokenizer, _ = load_model(resolve_model(args.model), dtype=torch.float32, device="cpu")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    questions = json.loads(args.questions.read_text())
    answers = plain_generate(model, tokenizer, questions, args.batch_size, args.new_tokens)
    args.answers.write_text(json.dumps(answers))


if __name__ == "__main__":
    main()
