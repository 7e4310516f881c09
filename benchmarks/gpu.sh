#!/usr/bin/env bash
# The GPU figures in one call, on a machine with a CUDA GPU (from the repository root):
#
#   bash benchmarks/gpu.sh [--out DIR]         # IG-32 on timm resnet50 at 224² (fp32, bf16) against
#                                              # the bare batched forward+backward bound; every map
#                                              # metric against Quantus on the same GPU; the embedded
#                                              # default (`make run`'s config) end to end on the GPU
#   bash benchmarks/gpu.sh --toy [--out DIR]   # the same steps at toy sizes on the CPU (tests)
#
# Writes ig.md/ig.json, metrics.md, workflow.md (+ workflow/timing.json) and summary.md, the
# ratios against the goals (IG ≥ 0.9 of its bound; map metrics ≥ 3 × faster than Quantus), under
# DIR (default benchmarks/out/gpu, or benchmarks/out/gpu-toy with --toy). Python: $PYTHON, else
# .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."

toy=0
out=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --toy) toy=1 ;;
        --out) out=$2; shift ;;
        *) echo "usage: bash benchmarks/gpu.sh [--toy] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [[ $toy == 1 ]]; then
    out=${out:-benchmarks/out/gpu-toy}
    device=cpu
    ig=(--model embedded_cnn --images 2 --max-batch 8 --steps 4 --rounds 1 --threads 1)
    metrics=(--models embedded_cnn --images 2 --max-batch 8 --rounds 1 --sensn-subsets 2 --threads 1)
    workflow=(--config config/test.yaml --cores 2)
else
    out=${out:-benchmarks/out/gpu}
    device=cuda
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu.sh: no CUDA device visible to torch (use --toy for the CPU check)" >&2
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    ig=(--model resnet50 --images 64 --max-batch 128 --steps 32 --rounds 5)
    metrics=(--models resnet50 --images 32 --max-batch 128 --rounds 3)
    workflow=(--config config.yaml --cores "$(nproc)")
fi
mkdir -p "$out"

echo "::: IG-32 against the bare forward+backward bound ($device)"
"$PY" benchmarks/ig_bound.py "${ig[@]}" --dtypes fp32,bf16 --device "$device" --json "$out/ig.json" | tee "$out/ig.md"

echo "::: every map metric against Quantus ($device)"
"$PY" benchmarks/metrics_vs_quantus.py "${metrics[@]}" --device "$device" | tee "$out/metrics.md"

echo "::: the workflow end to end (config ${workflow[1]}, device: the config's, auto = the GPU when there is one)"
"$PY" benchmarks/workflow_timing.py "${workflow[@]}" --workdir "$out/workflow" | tee "$out/workflow.md"

"$PY" benchmarks/gpu_summary.py "$out" | tee "$out/summary.md"
