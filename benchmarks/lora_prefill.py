"""Prefill cost of per-example LoRA (HyperLoRA's adapters) against the plain model, same batch.

    python benchmarks/lora_prefill.py --shape smollm2-135m --batch 8 --tokens 128          # CPU sanity check
    python benchmarks/lora_prefill.py --shape llama-2-13b --batch 32 --tokens 256 --dtype bf16   # the GPU check

Random-initialised Llama weights of the named shape (no download). Rows: the plain model; every
example's own rank-r LoRA on all seven projections applied with batched matrix products (what the
`causal-lm` reader does); and a per-example loop (one forward per example, as a naive
implementation would). Prints milliseconds per batch and the overhead over the plain model.
"""

from __future__ import annotations

import argparse
import time

import torch
from tabulate import tabulate
from transformers import LlamaConfig, LlamaForCausalLM

from iagbench.lm.lora import LLAMA_TARGETS, BatchedLoRA, LoRAAdapter
from iagbench.lm.models import LLAMA_2_SHAPES

SHAPES = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
    "llama-2-7b": LLAMA_2_SHAPES["llama-7b"],
    "llama-2-13b": LLAMA_2_SHAPES["llama-13b"],
}


def timed(run, repeats: int, device: str) -> float:
    run()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-loop", action="store_true", help="skip the per-example loop row")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[args.shape])).to(dtype).eval()
    lora = BatchedLoRA(model, LLAMA_TARGETS)
    adapters = [
        LoRAAdapter(
            {
                k: torch.randn(layers, d_in, args.rank, device=device, dtype=dtype) * 0.01
                for k, (layers, d_in, _) in lora.shapes.items()
            },
            {
                k: torch.randn(layers, args.rank, d_out, device=device, dtype=dtype) * 0.01
                for k, (layers, _, d_out) in lora.shapes.items()
            },
        )
        for _ in range(args.batch)
    ]
    ids = torch.randint(0, 32000, (args.batch, args.tokens), device=device)

    def plain() -> None:
        with torch.inference_mode():
            model(input_ids=ids, logits_to_keep=1)

    def batched() -> None:
        with torch.inference_mode(), lora.active(adapters, dtype=dtype, device=device):
            model(input_ids=ids, logits_to_keep=1)

    def loop() -> None:
        with torch.inference_mode():
            for row, adapter in enumerate(adapters):
                with lora.active([adapter], dtype=dtype, device=device):
                    model(input_ids=ids[row : row + 1], logits_to_keep=1)

    rows = [["plain model", timed(plain, args.repeats, device)]]
    rows.append(["per-example LoRA, batched (iagbench)", timed(batched, args.repeats, device)])
    if not args.no_loop:
        rows.append(["per-example LoRA, loop over examples", timed(loop, args.repeats, device)])
    base = rows[0][1]
    table = [[name, round(ms, 1), f"{100 * (ms / base - 1):+.1f}%"] for name, ms in rows]
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(
        f"{args.shape} random init, {args.dtype}, batch {args.batch} x {args.tokens} tokens, rank {args.rank}, on {name}"
    )
    print(tabulate(table, headers=["prefill", "ms/batch", "overhead"], tablefmt="github"))


if __name__ == "__main__":
    main()
