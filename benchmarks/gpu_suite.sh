#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one go: every step writes its JSON (and log) under $OUT
# (default: gpu_results/), so a run cut short keeps what it finished. Steps run in the order given:
#
#   bash benchmarks/gpu_suite.sh                    # all steps (not yet timed on a GPU)
#   bash benchmarks/gpu_suite.sh tests amg_b amg_h  # a subset
#   STEP_TIMEOUT=600 OUT=/tmp/r bash benchmarks/gpu_suite.sh encoder_b
#
# Steps: tests (the CUDA-only same-mask tests), amg_b / amg_h (all thresholds 0, 1500 x 2250, the reference
# setting of the >= 5x target), amg_h_default (SAM's default thresholds), amg_h_crops (crop_n_layers 1 and
# min_mask_region_area 100), amg_h_bf16 (our encoder under bf16), sam2 (sam2_fast vs the official SAM 2
# generator), encoder_b / encoder_h (fp32, bf16, batched; FLOPs and share of peak).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
STEP_TIMEOUT=${STEP_TIMEOUT:-1800}
mkdir -p "$OUT"
ALL=(tests amg_b amg_h amg_h_default amg_h_crops amg_h_bf16 sam2 encoder_b encoder_h)
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=("${ALL[@]}")
python - <<'EOF' || { echo "no CUDA device visible: these benchmarks are for a GPU machine" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/device.csv" 2>/dev/null || true

AMG="python benchmarks/amg_speed.py --device cuda --size 1500x2250 --repeats 3 --json"
status=0
for step in "${STEPS[@]}"; do
  case $step in
    tests)         cmd="python -m pytest -q tests/test_fast_amg.py" ;;
    amg_b)         cmd="$AMG --model vit_b --thresholds zero" ;;
    amg_h)         cmd="$AMG --model vit_h --thresholds zero" ;;
    amg_h_default) cmd="$AMG --model vit_h" ;;
    amg_h_crops)   cmd="$AMG --model vit_h --crop-n-layers 1 --min-mask-region-area 100" ;;
    amg_h_bf16)    cmd="$AMG --model vit_h --thresholds zero --bf16" ;;
    sam2)          cmd="python benchmarks/amg_speed.py --model sam2_tiny_random --device cuda --thresholds zero --box-nms-thresh 1.0 --repeats 3 --json" ;;
    encoder_b)     cmd="python benchmarks/encoder_speed.py --model vit_b --device cuda --batch 8 --repeats 10 --json" ;;
    encoder_h)     cmd="python benchmarks/encoder_speed.py --model vit_h --device cuda --batch 8 --repeats 10 --json" ;;
    *) echo "unknown step '$step'; valid: ${ALL[*]}" >&2; exit 2 ;;
  esac
  echo "== $step: $cmd"
  echo "$cmd" >"$OUT/$step.cmd"
  result="$OUT/$step.json"
  [ "$step" = tests ] && result="$OUT/$step.txt"
  if timeout "$STEP_TIMEOUT" $cmd >"$result" 2>"$OUT/$step.log"; then
    echo "   ok -> $result"
  else
    rc=$?
    status=1
    echo "   FAILED (exit $rc$([ $rc = 124 ] && echo ': timed out'); see $OUT/$step.log)"
  fi
done
exit $status
