"""Greedy decoding for the `fid-t5` reader: its own loop against transformers' `generate`, same encoder states.

    python benchmarks/fid_decoding.py --shape t5-small --batch 16 --passages 5 --threads 1       # CPU sanity check
    python benchmarks/fid_decoding.py --shape t5-base --batch 16 --passages 100 --device cuda --dtype bf16   # the GPU check

Random-initialised T5 weights of the named shape (no download), the byte tokenizer of `fid-tiny`,
passages of about `--tokens` tokens. The encoder runs once; then each decoder is timed (best of
`--repeats`) in two cases: the random model's own end token (rows seldom end: most decode
`--max-new-tokens`), and rows end
at different steps (the end token is the most frequent of the first answer tokens, so some rows
stop after one or two tokens, as short answers do). All decoders must give the same tokens.

Columns: our loop (dynamic cache, finished rows leave the batch), transformers' `generate`, and
the reader's `cache=static` decoder without and with `compile=true` (torch.compile, mode
reduce-overhead on CUDA: CUDA graphs). The compiled decoder runs once untimed first (its compile
time, printed); `--decoders` picks the columns.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from tabulate import tabulate
from transformers.modeling_outputs import BaseModelOutput

from iagbench import Context, Example, Passage
from iagbench.lm import t5_models
from iagbench_plugins.readers.fid import FiDReader, StaticSeq2SeqDecoder, greedy_decode_seq2seq

SHAPES = {
    "t5-small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, num_decoder_layers=6),
    "t5-base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
    "t5-large": dict(d_model=1024, d_ff=4096, d_kv=64, num_heads=16, num_layers=24, num_decoder_layers=24),
}


def best(run, repeats: int, device: str) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="t5-small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--passages", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=180, help="about this many tokens per passage")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--decoders", default="own,generate,static,compiled", help="columns: own, generate, static, compiled"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t5_models.TINY_T5_CONFIG.update(SHAPES[args.shape])
    reader = FiDReader(model="fid-tiny", device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    text = ("The quick brown fox jumps over the lazy dog. " * (args.tokens // 40 + 1))[: args.tokens]
    examples = [Example(str(i), f"question number {i} about foxes", ("x",)) for i in range(args.batch)]
    contexts = [Context(tuple(Passage(text[j:] + text[:j], f"title {j}") for j in range(args.passages)))] * args.batch
    model, n = reader.model, args.max_new_tokens
    decoders = args.decoders.split(",")
    unknown = set(decoders) - {"own", "generate", "static", "compiled"}
    if unknown:
        parser.error(f"--decoders: unknown {sorted(unknown)}")
    static = StaticSeq2SeqDecoder(model)
    compiled = StaticSeq2SeqDecoder(model, compile=True)

    def run(decoder: str, end: int) -> list[list[int]]:
        if decoder == "own":
            return greedy_decode_seq2seq(model, hidden, mask, start_id=reader.start_id, end_id=end, max_new_tokens=n)
        if decoder == "generate":
            sequences = model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask, max_new_tokens=n,
                do_sample=False, num_beams=1, eos_token_id=end, pad_token_id=reader.pad_id,
                decoder_start_token_id=reader.start_id)  # fmt: skip
            return [
                full[: len(row)] for row, full in zip(reference, sequences[:, 1:].tolist())
            ]  # generate pads finished rows
        chosen = static if decoder == "static" else compiled
        return chosen.decode_seq2seq(hidden, mask, start_id=reader.start_id, end_id=end, max_new_tokens=n)

    with torch.inference_mode():
        encode_s, encoded = best(lambda: reader.encode(examples, contexts), 1, args.device)
        hidden, mask = encoded.hidden, encoded.mask
        free = greedy_decode_seq2seq(
            model, hidden, mask, start_id=reader.start_id, end_id=reader.eos_id, max_new_tokens=n
        )
        early = Counter(token for row in free for token in row[:3]).most_common(1)[0][0]
        compile_s = best(lambda: run("compiled", reader.eos_id), 1, args.device)[0] if "compiled" in decoders else None
        rows = []
        for case, end in (("random model's own ends", reader.eos_id), ("rows end early", early)):
            reference = greedy_decode_seq2seq(
                model, hidden, mask, start_id=reader.start_id, end_id=end, max_new_tokens=n
            )
            row = [case]
            lengths = sorted(len(tokens) for tokens in reference)
            row.append(f"{lengths[0]}..{lengths[-1]} (mean {sum(lengths) / len(lengths):.1f})")
            same = True
            for decoder in decoders:
                seconds, tokens = best(lambda decoder=decoder, end=end: run(decoder, end), args.repeats, args.device)
                row.append(f"{seconds * 1000:.0f}")
                same &= tokens == reference
            rows.append([*row, same])
    print(f"{args.shape}, {args.batch} questions x {args.passages} passages, encoder states {tuple(hidden.shape)}, "
          f"{args.device} {args.dtype}; encoder {encode_s * 1000:.0f} ms"
          + (f"; compiled decoder's first run (compile) {compile_s:.1f} s" if compile_s is not None else ""))  # fmt: skip
    names = {
        "own": "own loop ms",
        "generate": "generate ms",
        "static": "static cache ms",
        "compiled": "static+compiled ms",
    }
    print(tabulate(rows, headers=["case", "answer tokens", *(names[d] for d in decoders), "same tokens"]))


if __name__ == "__main__":
    main()
