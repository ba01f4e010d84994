"""`iagbench train`: train an imaginer + reader pair's trainable parts (the engine is `iagbench.training`)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from iagbench.commands.arguments import (
    CommandOptions,
    Invocation,
    add_batch_size,
    add_component_options,
    add_data_options,  # fmt: skip
    add_progress,
)
from iagbench.commands.logs import info
from iagbench.commands.recipes import add_recipe_arguments
from iagbench.training.spec import KD_POSITIONS, KD_SCALES, MIXED_PRECISION, NO_DECAY, REPORT_TO, SCHEDULES, TrainSpec

NAME = "train"
HELP = "train an imaginer + reader pair's trainable parts (resumable; torchrun, accelerate launch, deepspeed)"
TRAIN_DIR_ENV = "IAGBENCH_TRAINED"
DEFAULTS = {f.name: f.default for f in fields(TrainSpec)}
DISTILLATION_HELP = (
    "a frozen teacher imaginer + reader (e.g. bm25 + a trained fid-t5) scores the gold answer; the student (--imaginer + "
    "--reader) learns alpha * KD(T) + (1 - alpha) * CE, T = T0 / (1 + ln(1 + step // 500)); both readers need "
    "answer_logits and one tokenizer"
)


def configure(options: CommandOptions) -> None:
    add_data_options(options, split=DEFAULTS["split"], limit_help="only the first N training examples")
    add_component_options(options)
    _optimization_options(options)
    _evaluation_and_checkpoint_options(options)
    _distillation_options(options)
    options.add("--output", type=Path, help="output folder (default: trained/<components>__<config hash>)")
    train_dir = Path(os.environ.get(TRAIN_DIR_ENV, "trained"))
    options.add("--train-dir", type=Path, default=train_dir, help="where default output folders go")
    add_progress(options)
    _tracking_options(options)
    add_recipe_arguments(options.parser)
    # the deepspeed launcher may put --local_rank=N after the command too; the rank comes from the environment
    options.parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def _optimization_options(options: CommandOptions) -> None:
    add = options.add
    options.add_exclusive(
        (("--steps",), {"type": int, "help": "optimizer steps (default: one epoch)"}),
        (("--epochs",), {"type": float, "help": "epochs over the training split"}),
    )
    add_batch_size(options, DEFAULTS["batch_size"], help="examples per process and micro-batch (default: 8)")
    add("--grad-accum", type=int, default=DEFAULTS["grad_accum"], help="micro-batches per optimizer step (default: 1)")
    add("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate of AdamW (default: 1e-4)")
    decay_help = "AdamW weight decay, not on biases/norms (see --no-decay) (default: 0)"
    add("--weight-decay", type=float, default=DEFAULTS["weight_decay"], help=decay_help)
    no_decay_help = (
        "parameters without weight decay: norms, those of fewer than 2 dimensions (biases, norms); reference, names "
        "holding 'bias' or 'LayerNorm', as the ImcQA reference (T5's layer norms decayed) (default: norms)"
    )
    # validate() refuses another value in one line (argparse's choices would print the usage too)
    add("--no-decay", default=DEFAULTS["no_decay"], metavar="{" + ",".join(NO_DECAY) + "}", help=no_decay_help)
    add("--warmup-steps", type=int, default=DEFAULTS["warmup_steps"], help="linear warm-up steps (default: 0)")
    add("--schedule", default=DEFAULTS["schedule"], choices=SCHEDULES, help="after warm-up (default: linear)")
    clip_help = "gradient clipping, 0 for none (default: 1.0)"
    add("--max-grad-norm", type=float, default=DEFAULTS["max_grad_norm"], help=clip_help)
    add("--seed", type=int, default=DEFAULTS["seed"], help="random seed (default: 0)")
    precision = DEFAULTS["mixed_precision"]
    add("--mixed-precision", default=precision, choices=MIXED_PRECISION, help="auto: bf16 on CUDA, else no")
    deepspeed_help = "DeepSpeed config: configs/deepspeed/zero2.json or zero3.json"
    add("--deepspeed", type=Path, metavar="CONFIG.json", help=deepspeed_help)
    checkpointing_help = "recompute the transformers models' layer activations in backward (less memory, same results)"
    add("--gradient-checkpointing", action="store_true", help=checkpointing_help)


def _evaluation_and_checkpoint_options(options: CommandOptions) -> None:
    add = options.add
    every_help = "em on --eval-split every N steps (default: 0, never)"
    add("--eval-every", type=int, default=DEFAULTS["eval_every"], metavar="N", help=every_help)
    add("--eval-split", default=DEFAULTS["eval_split"], help="evaluation split (default: dev)")
    add("--eval-limit", type=int, default=DEFAULTS["eval_limit"], help="first N evaluation examples (default: 200)")
    add("--eval-batch-size", type=int, help="examples per evaluation call (default: --batch-size)")
    save_help = "checkpoint every N steps and at the end (default: 500)"
    add("--save-every", type=int, default=DEFAULTS["save_every"], metavar="N", help=save_help)
    keep_help = "keep the newest K checkpoints, 0 all (default: 3)"
    add("--keep", type=int, default=DEFAULTS["keep"], metavar="K", help=keep_help)
    log_help = "log.jsonl line every N steps (default: 10)"
    add("--log-every", type=int, default=DEFAULTS["log_every"], metavar="N", help=log_help)


def _distillation_options(options: CommandOptions) -> None:
    group = options.parser.add_argument_group("long-context distillation (ImcQA)", DISTILLATION_HELP)
    add = options.add
    add("--teacher-imaginer", group=group, help="the teacher's imaginer (default with --teacher-reader: none)")
    add("--teacher-imaginer-args", group=group, default="", metavar="K=V,...", help="teacher imaginer options")
    add("--teacher-reader", group=group, help="the teacher's reader: turns distillation on")
    add(
        "--teacher-reader-args",
        group=group,
        default="",
        metavar="K=V,...",
        help="teacher reader options (checkpoint=DIR)",
    )
    add(
        "--alpha",
        group=group,
        type=float,
        default=DEFAULTS["alpha"],
        help="weight of the KD loss, 1 - alpha on the CE (default: 0.5)",
    )
    add(
        "--temperature",
        group=group,
        type=float,
        default=DEFAULTS["temperature"],
        metavar="T0",
        help="initial KD temperature (default: 1.0)",
    )
    add(
        "--hidden-weight",
        group=group,
        type=float,
        default=DEFAULTS["hidden_weight"],
        help="cosine loss of the last decoder hidden states (default: 0)",
    )
    add(
        "--attention-weight",
        group=group,
        type=float,
        default=DEFAULTS["attention_weight"],
        help="MSE of the last decoder self-attention maps (default: 0)",
    )
    _reference_kd_options(options, group)


def _reference_kd_options(options: CommandOptions, group: Any) -> None:
    """The ImcQA reference's KD loss (docs/fidelity.md): --kd-scale none --kd-positions all --kl-term."""
    add = options.add
    scale_help = "t2: KD times T^2 (Hinton et al.); none: without, as the ImcQA reference (default: t2)"
    add("--kd-scale", group=group, default=DEFAULTS["kd_scale"], choices=KD_SCALES, help=scale_help)
    positions_help = (
        "answer: KD averaged over real answer tokens; all: over every target position, padding included, as the "
        "reference (with fid-t5 answer_positions=256) (default: answer)"
    )
    add("--kd-positions", group=group, default=DEFAULTS["kd_positions"], choices=KD_POSITIONS, help=positions_help)
    kl_help = "add the reference's use_kl term sigmoid(k) * k, k = KL at T=4 / 100 (logged as kl_term)"
    add("--kl-term", group=group, action="store_true", help=kl_help)


def _tracking_options(options: CommandOptions) -> None:
    """Trackers and the best checkpoint (issue 16): how a session reports, not part of the run's identity."""
    report_help = "also log to accelerate's tracker, under the output folder (tensorboard/, wandb/) (default: none)"
    options.add("--report-to", default=DEFAULTS["report_to"], choices=REPORT_TO, help=report_help)
    best_help = "keep the best dev checkpoint by METRIC (em) as checkpoints/best, never pruned; needs --eval-every"
    options.add("--keep-best", metavar="METRIC", help=best_help)


def run(invocation: Invocation) -> int:
    from iagbench.training.train import train

    job = invocation.job()
    spec = TrainSpec(**job.components(), output=job.output, **job.settings)
    _, summary = train(spec, invocation.plugins, progress=job.progress, log=info, non_default=job.non_default)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary, from the main process
        print(json.dumps(summary, indent=2))
    return 0
