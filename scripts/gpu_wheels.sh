#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what scripts/gpu_checks.sh needs on the lent GPU machine and its image lacks:
# iagbench itself, DeepSpeed (the version of this checkout's .venv) and DeepSpeed's needs the image does not
# hold (hjson, pydantic and its needs), as Python 3.12 x86-64 wheels. Run here, once, before the device call;
# the device tool carries .whl with `carry: [".whl"]` (a few MiB of its 64).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
rm -rf .whl && mkdir -p .whl
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
"$PY" -m pip wheel -q --no-deps -w .whl "deepspeed==$(version deepspeed)"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "hjson==$(version hjson)" "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
    "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)"
ls -l .whl && du -sh .whl
