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

Without weights or data (the GPU check of issue 7, Llama-2-13B's shape, random weights):

    python benchmarks/reader_speed.py --model llama-13b-random --dtypes bf16 --prompt-tokens 256 \
        --new-tokens 32 --limit 256 --baseline-batch 32 --batch-sizes 32,128

`--prompt-tokens N` makes `--limit` synthetic questions of N tokens (random words) instead of reading
a dataset; both sides then use the bare `Question: q\nAnswer:` prompt (the reader's `plain` template)
and decode `--new-tokens` greedily, so they do the same work: "same as baseline" is the share of
answers equal to the baseline's text. On CUDA, "peak GiB" is the most memory allocated in that row.

`--batch-tokens N,...` adds reader rows batched as `iagbench run` batches by default (a token budget:
examples x longest prompt within N). `--whole-run` adds rows of a whole `iagbench run` process (imports,
model load and all) with default batching, and with `--batch-size 16`, and a row of the plain loop as a
process of its own (benchmarks/plain_generate_loop.py): "speed-up" compares with the in-process plain loop,
"whole-process speed-up" process with process. `--repeats N` times every row N times and reports the
median (this 2-core machine varies by +-30% from run to run):

    python benchmarks/reader_speed.py --data-dir ../shared/data --limit 200 --decoding dynamic \
        --batch-sizes 16,64 --batch-tokens 4096,8192,16384 --whole-run --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from iagbench import Context, Example
from iagbench.contract.plugins import load_plugins
from iagbench.runs.batching import BatchSizer
from iagbench.runs.prediction import prompt_lengths
from iagbench.runs.runner import batches, ordered_examples
from iagbench.text.normalize import exact_match, subspan_em
from iagbench_plugins.readers.causal_lm import CausalLMReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_generate_loop import plain_generate  # noqa: E402


def baseline(reader: CausalLMReader, questions: list[str], batch_size: int, new_tokens: int) -> list[str]:
    return plain_generate(reader.model, reader.tokenizer, questions, batch_size, new_tokens)


SYNTHETIC_WORDS = (
    "river north city album season war king film song team world first water island actor born "
    "league series state county music church party army school station bridge valley mountain"
).split()


def synthetic_examples(tokenizer, count: int, tokens: int, seed: int = 0) -> list[Example]:
    """``count`` questions of ``tokens`` tokens of random words (for speed at a fixed prompt length)."""
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        text = " ".join(rng.choice(SYNTHETIC_WORDS) for _ in range(tokens))  # at least one token a word
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
        examples.append(Example(f"synthetic-{index}", tokenizer.decode(ids).strip(), ("-",)))
    return examples


def ours(reader: CausalLMReader, examples: list, batch_size: int) -> list[str]:
    """The reader fed as `iagbench run` feeds it (batches of similar length), answers back in dataset order."""
    answers: dict[str, str] = {}
    for batch in batches(examples, batch_size):
        answers.update(zip((e.id for e in batch), reader.answer(batch, [Context()] * len(batch))))
    return [answers[e.id] for e in examples]


def ours_by_tokens(reader: CausalLMReader, examples: list, budget: int) -> list[str]:
    """The reader fed in `iagbench run`'s token-budget batches (``--batch-tokens budget``), answers in dataset order."""
    ordered = ordered_examples(examples)
    lengths, sizer = prompt_lengths(reader, ordered), BatchSizer.for_setting(None, False, budget)
    answers: dict[str, str] = {}
    start = 0
    while start < len(ordered):
        batch = ordered[start : start + sizer.take(lengths, start)]
        answers.update(zip((e.id for e in batch), reader.answer(batch, [Context()] * len(batch))))
        start += len(batch)
    return [answers[e.id] for e in examples]


def whole_run(args: argparse.Namespace, extra: list[str]) -> tuple[float, list[str], list]:
    """Seconds of one whole `iagbench run` process (a fresh run folder), its predictions in dataset order
    and the largest batch it used."""
    iagbench = Path(sys.executable).with_name("iagbench")
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(iagbench), "run", "--reader", args.model.replace("_", "-"), "--imaginer", "none", "--dataset",
                   args.dataset, "--split", args.split, "--limit", str(args.limit), "--no-progress", "-q",
                   "--output", f"{tmp}/run", *(["--data-dir", args.data_dir] if args.data_dir else []), *extra]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started

        records = [json.loads(line) for line in Path(f"{tmp}/run/predictions.jsonl").read_text().splitlines()]
        results = json.loads(Path(f"{tmp}/run/results.json").read_text())
    by_id = {r["id"]: r["prediction"] for r in records}
    return seconds, by_id, results["predicted_by"][0]["batch_size"]


def plain_process(args: argparse.Namespace, questions: list[str]) -> list[str]:
    """The plain loop as a whole process of its own (benchmarks/plain_generate_loop.py), its answers in order."""
    script = Path(__file__).resolve().with_name("plain_generate_loop.py")
    with tempfile.TemporaryDirectory() as tmp:
        Path(f"{tmp}/questions.json").write_text(json.dumps(questions))
        command = [sys.executable, str(script), f"{tmp}/questions.json", f"{tmp}/answers.json", "--model", args.model,
                   "--batch-size", str(args.baseline_batch), "--new-tokens", str(args.new_tokens)]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(Path(f"{tmp}/answers.json").read_text())


def _whole(args: argparse.Namespace, extra: list[str], examples: list, used: list) -> list[str]:
    _, by_id, largest = whole_run(args, extra)
    used.append(largest)
    return [by_id[e.id] for e in examples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="nq")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-sizes", default="16,64", help="batch sizes to try for the iagbench reader")
    parser.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16 (bf16 is fast on CPUs with AMX)")
    parser.add_argument(
        "--decoding", default="dynamic,static,compiled", help="comma-separated: dynamic, static, compiled"
    )
    parser.add_argument(
        "--prompt-tokens", type=int, default=0, help="synthetic questions of this many tokens, no dataset"
    )
    parser.add_argument("--new-tokens", type=int, default=16, help="new tokens per answer, both sides")
    parser.add_argument("--baseline-batch", type=int, default=16, help="batch size of the plain generate loop")
    parser.add_argument("--batch-tokens", default="", help="token budgets to try for the reader (as iagbench run)")
    parser.add_argument("--whole-run", action="store_true", help="rows of whole `iagbench run` processes (fp32)")
    parser.add_argument("--repeats", type=int, default=1, help="time each row this many times; report the median")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected a positive integer")

    modes = {"dynamic": {}, "static": {"cache": "static"}, "compiled": {"cache": "static", "compile": True}}
    decoding = args.decoding.split(",")
    if set(decoding) - set(modes):
        parser.error(f"--decoding: unknown {sorted(set(decoding) - set(modes))}; expected some of {', '.join(modes)}")
    synthetic = args.prompt_tokens > 0
    reader_options = {"max_new_tokens": args.new_tokens, **({"prompt": "plain"} if synthetic else {})}
    cuda = torch.cuda.is_available()
    examples: list[Example] = []
    if not synthetic:
        plugins = load_plugins(builtins_only=True)
        dataset = plugins["datasets"].get(args.dataset).build(**({"data_dir": args.data_dir} if args.data_dir else {}))
        examples = list(dataset.load(args.split))[: args.limit]
    rows: list[list] = []
    reference: list[str] = []

    def measure(name: str, run, warm_up: bool = False) -> None:
        first_pass = ""
        if warm_up:
            started = time.perf_counter()
            run()
            first_pass = round(time.perf_counter() - started, 1)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            predictions = run()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        spread = [f"{min(times):.2f}-{max(times):.2f}"] if args.repeats > 1 else []
        if synthetic:
            texts = [getattr(p, "raw", p).strip() for p in predictions]
            reference[:] = reference or texts
            quality = [round(100 * sum(a == b for a, b in zip(texts, reference)) / len(texts), 1)]
        else:
            em = 100 * sum(exact_match(p, e.answers) for p, e in zip(predictions, examples)) / len(examples)
            sub = 100 * sum(subspan_em(p, e.answers) for p, e in zip(predictions, examples)) / len(examples)
            quality = [round(em, 1), round(sub, 1)]
        peak = [round(torch.cuda.max_memory_allocated() / 2**30, 1)] if cuda else []
        rows.append([name, round(seconds, 2), *spread, round(len(examples) / seconds, 2), *quality, *peak, first_pass])
        print(rows[-1], flush=True)

    plain_row: int | None = None  # the whole-process plain loop's row, with --whole-run
    rate = 3 if args.repeats > 1 else 2  # the questions/s column
    for dtype in args.dtypes.split(","):
        first = len(rows)
        reference.clear()
        for mode in decoding:
            reader = CausalLMReader(model=args.model, dtype=dtype, **reader_options, **modes[mode])
            if not examples:
                examples = synthetic_examples(reader.tokenizer, args.limit, args.prompt_tokens)
            if len(rows) == first:
                if first == 0:
                    where = torch.cuda.get_device_name() if cuda else f"CPU, torch threads {torch.get_num_threads()}"
                    what = (
                        f"synthetic questions of {args.prompt_tokens} tokens"
                        if synthetic
                        else f"questions of {args.dataset}/{args.split}"
                    )
                    print(f"{len(examples)} {what}; model {args.model}; {where}")
                questions = [e.question for e in examples]
                measure(f"{dtype}: plain generate loop (batch {args.baseline_batch}, {args.new_tokens} new tokens)",
                        lambda reader=reader, questions=questions: baseline(reader, questions, args.baseline_batch, args.new_tokens))  # fmt: skip
            for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
                measure(f"{dtype}: iagbench causal-lm reader, {mode} (batch {batch_size})",
                        lambda reader=reader, examples=examples, batch_size=batch_size: ours(reader, examples, batch_size), warm_up=mode != "dynamic")  # fmt: skip
            for budget in [int(b) for b in args.batch_tokens.split(",") if b]:
                measure(f"{dtype}: iagbench causal-lm reader, {mode} (batch tokens {budget})",
                        lambda reader=reader, examples=examples, budget=budget: ours_by_tokens(reader, examples, budget), warm_up=mode != "dynamic")  # fmt: skip
            if args.whole_run and dtype == "fp32" and mode == "dynamic" and not synthetic:
                plain_row = len(rows)
                measure(f"fp32: whole process: plain generate loop script (batch {args.baseline_batch})",
                        lambda questions=[e.question for e in examples]: plain_process(args, questions))  # fmt: skip
                for label, extra in (("default options", []), ("--batch-size 16", ["--batch-size", "16"])):
                    used: list = []
                    measure(f"fp32: whole `iagbench run` process, {label}", lambda extra=extra, used=used, examples=examples: _whole(args, extra, examples, used))  # fmt: skip
                    rows[-1][0] += f" (largest batch {used[0]})"
            del reader
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        for row in rows[first + 1 :]:
            row.append(f"{row[rate] / rows[first][rate]:.2f}x")
            if plain_row is not None:  # whole process against whole process
                whole = row[0].startswith("fp32: whole ") and row is not rows[plain_row]
                row.append(f"{row[rate] / rows[plain_row][rate]:.2f}x" if whole else "")
    quality_headers = ["same as baseline %"] if synthetic else ["em", "subspan_em"]
    headers = [
        "method",
        "seconds" if args.repeats == 1 else f"median s of {args.repeats}",
        *(["range s"] if args.repeats > 1 else []),
        "questions/s",
        *quality_headers,
        *(["peak GiB"] if cuda else []),
        "first pass s",
        "speed-up",
        *(["whole-process speed-up"] if plain_row is not None else []),
    ]
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
