"""Reader speed: the causal-lm reader against a plain transformers `generate` loop, same questions.

    python benchmarks/reader_speed.py --data-dir ../shared/data --limit 200

The baseline is what a user would write first: a "Question: q\\nAnswer:" prompt, batches of 16,
16 new tokens, no answer extraction. Both use the same model weights on the same machine in the
same process; the table shows seconds, questions/s and the scores of each.

`--decoding` picks the reader's decoding modes, each a row per batch size: `dynamic` (the default:
a dynamic cache, finished rows leave the batch), `static` (`cache=static`) and `compiled`
(`cache=static,compile=true`: torch.compile, mode reduce-overhead on CUDA, i.e. CUDA graphs). Rows of
the static modes are timed on a second pass over the questions; the first pass (compilation of
every new shape included) is shown as "first pass s".
"""

from __future__ import annotations

import argparse
import time

import torch
from tabulate import tabulate

from iagbench import Context
from iagbench.plugins import load_plugins
from iagbench.runner import batches
from iagbench_plugins.metrics.normalize import exact_match, subspan_em
from iagbench_plugins.readers.causal_lm import CausalLMReader


def baseline(reader: CausalLMReader, questions: list[str], batch_size: int, new_tokens: int) -> list[str]:
    tokenizer, model = reader.tokenizer, reader.model
    outputs: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [f"Question: {q}\nAnswer:" for q in questions[start : start + batch_size]]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            generated = model.generate(**encoded, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        outputs += tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    return outputs


def ours(reader: CausalLMReader, examples: list, batch_size: int) -> list[str]:
    """The reader fed as `iagbench run` feeds it (batches of similar length), answers back in dataset order."""
    answers: dict[str, str] = {}
    for batch in batches(examples, batch_size):
        answers.update(zip((e.id for e in batch), reader.answer(batch, [Context()] * len(batch))))
    return [answers[e.id] for e in examples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="nq")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-sizes", default="16,64", help="batch sizes to try for the iagbench reader")
    parser.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16 (bf16 is fast on CPUs with AMX)")
    parser.add_argument("--decoding", default="dynamic,static,compiled", help="comma-separated: dynamic, static, compiled")
    args = parser.parse_args()

    plugins = load_plugins(builtins_only=True)
    options = {"data_dir": args.data_dir} if args.data_dir else {}
    dataset = plugins["datasets"].get(args.dataset).build(**options)
    examples = list(dataset.load(args.split))[: args.limit]
    print(f"{len(examples)} questions of {args.dataset}/{args.split}; model {args.model}; torch threads {torch.get_num_threads()}")

    rows = []

    modes = {"dynamic": {}, "static": {"cache": "static"}, "compiled": {"cache": "static", "compile": True}}
    decoding = args.decoding.split(",")
    if set(decoding) - set(modes):
        parser.error(f"--decoding: unknown {sorted(set(decoding) - set(modes))}; expected some of {', '.join(modes)}")

    def measure(name: str, run, warm_up: bool = False) -> None:
        first_pass = ""
        if warm_up:
            started = time.perf_counter()
            run()
            first_pass = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        predictions = run()
        seconds = time.perf_counter() - started
        em = 100 * sum(exact_match(p, e.answers) for p, e in zip(predictions, examples)) / len(examples)
        sub = 100 * sum(subspan_em(p, e.answers) for p, e in zip(predictions, examples)) / len(examples)
        rows.append([name, round(seconds, 1), round(len(examples) / seconds, 2), round(em, 1), round(sub, 1), first_pass])
        print(rows[-1], flush=True)

    for dtype in args.dtypes.split(","):
        first = len(rows)
        questions = [e.question for e in examples]
        for mode in decoding:
            reader = CausalLMReader(model=args.model, dtype=dtype, **modes[mode])
            if len(rows) == first:
                measure(f"{dtype}: plain generate loop (batch 16, 16 new tokens)", lambda: baseline(reader, questions, 16, 16))
            for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
                measure(f"{dtype}: iagbench causal-lm reader, {mode} (batch {batch_size})",
                        lambda: ours(reader, examples, batch_size), warm_up=mode != "dynamic")  # fmt: skip
            del reader
        for row in rows[first + 1 :]:
            row.append(f"{rows[first][1] / row[1]:.2f}x")
    headers = ["method", "seconds", "questions/s", "em", "subspan_em", "first pass s", "speed-up"]
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
