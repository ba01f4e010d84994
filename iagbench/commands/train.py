"""`iagbench train`: its command-line arguments and the command (the trainer is `iagbench.training.train`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from iagbench.contract.plugins import Plugins

TRAIN_DIR_ENV = "IAGBENCH_TRAINED"


def add_train_parser(parser: argparse.ArgumentParser, commands: Any) -> argparse.ArgumentParser:
    """Add the `train` subcommand to the parser's subcommands."""
    from iagbench.commands.main import _data_arguments

    # the deepspeed launcher puts --local_rank=N before the arguments; the rank comes from the environment anyway
    parser.add_argument("--local_rank", "--local-rank", dest="launcher_local_rank", type=int, help=argparse.SUPPRESS)
    train = commands.add_parser(
        "train",
        help="train an imaginer + reader pair's trainable parts (resumable; torchrun, accelerate launch, deepspeed)",
    )
    train.add_argument("--dataset", default="sample", help="dataset name (default: sample)")
    train.add_argument("--split", default="train", help="training split (default: train)")
    train.add_argument("--limit", type=int, help="only the first N training examples")
    _data_arguments(train)
    train.add_argument("--imaginer", default="none", help="imaginer name (default: none)")
    train.add_argument("--reader", required=True, help="reader name")
    train.add_argument("--imaginer-args", default="", metavar="K=V,...", help="imaginer options")
    train.add_argument("--reader-args", default="", metavar="K=V,...", help="reader options")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default: one epoch)")
    length.add_argument("--epochs", type=float, help="epochs over the training split")
    train.add_argument("--batch-size", type=int, default=8, help="examples per process and micro-batch (default: 8)")
    train.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    train.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of AdamW (default: 1e-4)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay, not on biases/norms (default: 0)")
    train.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default: 0)")
    train.add_argument("--schedule", default="linear", choices=("linear", "cosine", "constant"), help="after warm-up (default: linear)")
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, 0 for none (default: 1.0)")
    train.add_argument("--eval-every", type=int, default=0, metavar="N", help="em on --eval-split every N steps (default: 0, never)")
    train.add_argument("--eval-split", default="dev", help="evaluation split (default: dev)")
    train.add_argument("--eval-limit", type=int, default=200, help="first N evaluation examples (default: 200)")
    train.add_argument("--eval-batch-size", type=int, help="examples per evaluation call (default: --batch-size)")
    train.add_argument("--save-every", type=int, default=500, metavar="N", help="checkpoint every N steps and at the end (default: 500)")
    train.add_argument("--keep", type=int, default=3, metavar="K", help="keep the newest K checkpoints, 0 all (default: 3)")
    train.add_argument("--log-every", type=int, default=10, metavar="N", help="log.jsonl line every N steps (default: 10)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"), help="auto: bf16 on CUDA, else no")
    train.add_argument(
        "--deepspeed", type=Path, metavar="CONFIG.json", help="DeepSpeed config: configs/deepspeed/zero2.json or zero3.json"
    )
    train.add_argument(
        "--gradient-checkpointing", action="store_true",
        help="recompute the transformers models' layer activations in backward (less memory, same results)",
    )
    distill = train.add_argument_group(
        "long-context distillation (ImcQA)",
        "a frozen teacher imaginer + reader (e.g. bm25 + a trained fid-t5) scores the gold answer; the student (--imaginer + "
        "--reader) learns alpha * KD(T) + (1 - alpha) * CE, T = T0 / (1 + ln(1 + step // 500)); both readers need "
        "answer_logits and one tokenizer",
    )
    distill.add_argument("--teacher-imaginer", help="the teacher's imaginer (default with --teacher-reader: none)")
    distill.add_argument("--teacher-imaginer-args", default="", metavar="K=V,...", help="teacher imaginer options")
    distill.add_argument("--teacher-reader", help="the teacher's reader: turns distillation on")
    distill.add_argument("--teacher-reader-args", default="", metavar="K=V,...", help="teacher reader options (checkpoint=DIR)")
    distill.add_argument("--alpha", type=float, default=0.5, help="weight of the KD loss, 1 - alpha on the CE (default: 0.5)")
    distill.add_argument("--temperature", type=float, default=1.0, metavar="T0", help="initial KD temperature (default: 1.0)")
    distill.add_argument("--hidden-weight", type=float, default=0.0, help="cosine loss of the last decoder hidden states (default: 0)")
    distill.add_argument("--attention-weight", type=float, default=0.0, help="MSE of the last decoder self-attention maps (default: 0)")
    train.add_argument("--output", type=Path, help="output folder (default: trained/<components>__<config hash>)")
    train.add_argument(
        "--train-dir", type=Path, default=Path(os.environ.get(TRAIN_DIR_ENV, "trained")), help="where default output folders go"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return train


def command_train(args: argparse.Namespace, plugins: Plugins, non_default: dict[str, Any]) -> int:
    from iagbench.commands.main import component_options
    from iagbench.contract.options import parse_options
    from iagbench.training.train import TrainSpec, train

    spec = TrainSpec(
        **component_options(args),
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        max_grad_norm=args.max_grad_norm,
        eval_every=args.eval_every,
        eval_split=args.eval_split,
        eval_limit=args.eval_limit,
        eval_batch_size=args.eval_batch_size,
        save_every=args.save_every,
        keep=args.keep,
        log_every=args.log_every,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        deepspeed=args.deepspeed,
        gradient_checkpointing=args.gradient_checkpointing,
        teacher_imaginer=args.teacher_imaginer,
        teacher_reader=args.teacher_reader,
        teacher_imaginer_args=parse_options(args.teacher_imaginer_args, flag="--teacher-imaginer-args"),
        teacher_reader_args=parse_options(args.teacher_reader_args, flag="--teacher-reader-args"),
        alpha=args.alpha,
        temperature=args.temperature,
        hidden_weight=args.hidden_weight,
        attention_weight=args.attention_weight,
        output=args.output,
        train_dir=args.train_dir,
    )
    non_default = {key: value for key, value in non_default.items() if key != "local_rank"}
    _, summary = train(spec, plugins, progress=not args.no_progress, log=_log, non_default=non_default)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary, from the main process
        print(json.dumps(summary, indent=2))
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

