#!/usr/bin/env bash
# The GPU checks of issues 7, 4 and 5 from one command, with random-initialised models of the real shapes
# (no weights, no data). Each check's table goes to $OUT/<check>.txt; $OUT/summary.md lists exit codes.
#
#   here, once:   bash scripts/gpu_wheels.sh                      (fills .whl/: iagbench, DeepSpeed and needs)
#   device tool:  run(command="bash scripts/gpu_checks.sh reader fid prefill", carry=[".whl"], timeout_s=540)
#                 run(command="bash scripts/gpu_checks.sh train", carry=[".whl"], timeout_s=420)
#   dry run here: bash scripts/gpu_checks.sh --tiny               (the same scripts at tiny shapes, on CPU)
#
# Checks (in the order given; default all):
#   reader   causal-lm reader vs a plain generate loop, Llama-2-13B shape, bf16, 256 questions of 256 tokens,
#            32 new tokens; generate batch 32 (H200 baseline seen: 20.7 q/s); goal >= 2x (issue 7)
#   fid      fid-t5 decoding vs transformers generate, T5-base shape, 16 x 100 passages, bf16 (issue 5: >= 3x)
#   prefill  per-example LoRA prefill overhead, Llama-2-13B shape, 32 x 256 tokens, bf16 (issue 4: <= +5%)
#   train    iagbench train plain vs DeepSpeed ZeRO-2 (+ gradient checkpointing), Llama-2-7B shape, peft
#            LoRA rank 8, bf16: examples/s and peak GPU memory (issue 7)
set -uo pipefail
cd "$(dirname "$0")/.."

tiny=false
checks=()
for arg in "$@"; do
    case "$arg" in
        --tiny) tiny=true ;;
        reader | fid | prefill | train) checks+=("$arg") ;;
        *) echo "gpu_checks.sh: unknown argument '$arg' (expected --tiny, reader, fid, prefill, train)" >&2; exit 2 ;;
    esac
done
[[ ${#checks[@]} -eq 0 ]] && checks=(reader fid prefill train)

OUT=${OUT:-$PWD/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if $tiny; then
    PY=${PYTHON:-.venv/bin/python}
    export PATH="$(dirname "$PY"):$PATH"
else
    PY=${PYTHON:-python3}
    export TORCH_CUDA_ARCH_LIST=9.0  # the image's 9.0a breaks DeepSpeed's op builder
    if [[ -d .whl ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
    fi
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
    "$PY" -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>/dev/null || echo "no deepspeed"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

run_check() {  # name, time limit (s), command...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee -a "$OUT/summary.md"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$OUT/summary.md"
}

for check in "${checks[@]}"; do
    case "$check" in
        reader)
            if $tiny; then
                run_check reader 300 "$PY" benchmarks/reader_speed.py --model tiny-llama --dtypes fp32 --prompt-tokens 64 \
                    --new-tokens 8 --limit 32 --baseline-batch 16 --batch-sizes 16,32 --decoding dynamic,static,compiled
            else
                run_check reader 300 "$PY" benchmarks/reader_speed.py --model llama-13b-random --dtypes bf16 --prompt-tokens 256 \
                    --new-tokens 32 --limit 256 --baseline-batch 32 --batch-sizes 32,128 --decoding dynamic,static,compiled
            fi ;;
        fid)
            if $tiny; then
                run_check fid 300 "$PY" benchmarks/fid_decoding.py --shape t5-small --batch 4 --passages 4 --tokens 40 \
                    --max-new-tokens 8 --repeats 1 --decoders own,generate,static
            else
                run_check fid 150 "$PY" benchmarks/fid_decoding.py --shape t5-base --batch 16 --passages 100 --device cuda --dtype bf16
            fi ;;
        prefill)
            if $tiny; then
                run_check prefill 120 "$PY" benchmarks/lora_prefill.py --shape smollm2-135m --batch 2 --tokens 32 --repeats 1
            else
                run_check prefill 120 "$PY" benchmarks/lora_prefill.py --shape llama-2-13b --batch 32 --tokens 256 --dtype bf16
            fi ;;
        train)
            if $tiny; then
                run_check train 300 "$PY" benchmarks/train_speed.py --steps 4 --batch-size 4 --setups plain,zero2,zero2-checkpointing
            else
                run_check train 400 "$PY" benchmarks/train_speed.py --reader-args model=llama-7b-random,dtype=bf16,lora_rank=8 \
                    --steps 20 --batch-size 8 --setups plain,zero2,zero2-checkpointing
            fi ;;
    esac
done
cat "$OUT/summary.md"
