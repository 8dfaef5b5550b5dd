#!/usr/bin/env bash
# One run on a lent GPU machine: what only a GPU can show for the performance work.
# Writes under $OUT (default ./gpu-figures) three files, few enough for a device call to
# bring back: steps.log (every step's output, JSON reports included, and its exit code),
# blurpool-forms.json and imagenet-c-decoders.json. Each step is bounded in time so that
# the whole script fits a 10-minute device call.
#
#   bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-figures}"
mkdir -p "$OUT"
LOG="$OUT/steps.log"
step() {  # step NAME SECONDS COMMAND...: output appended to $LOG; never stops the script
    local name=$1 seconds=$2
    shift 2
    echo "== $name" | tee -a "$LOG"
    timeout "$seconds" "$@" >>"$LOG" 2>&1
    echo "rc=$? ($name)" | tee -a "$LOG"
}
step nvidia-smi 10 nvidia-smi
# The machine may have no package index: the dependencies already there, else none.
step install 60 sh -c 'python -m pip install --quiet --disable-pip-version-check -e ".[test]" ||
    python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .'
# Step limits add up to 540 s, install included: one 10-minute device call.
# The GPU tests the CPU suite skips, and the overlapped pipeline's records on a real
# device (late outputs, staging reuse).
step gpu-tests 100 python -m pytest -q -x tests/benchmark/test_api.py tests/benchmark/test_transfer.py tests/benchmark/test_engine.py
# BlurPool's forms (and the shifted max pool, and BatchNorms folded) against the
# baseline, bf16, channels-last, batch 256, with F: the winners belong in FASTEST /
# SHIFTED_MAX_FASTER / FOLDING_FASTER for CUDA.
step blurpool-forms 90 python tools/blurpool_forms.py --device cuda --amp bf16 --batch-size 256 \
    --seconds 1 --rounds 3 --layouts channels-last \
    --variants reference,fused,separable,cascade,reference:shifted,reference:folded,fused:folded \
    --json "$OUT/blurpool-forms.json"
# The shift suite end to end against forward-only, resnet50_aa against resnet50 beside
# F, and where the end-to-end time goes; each form (the sample set, cycled).
for form in reference fused; do
    step "bench-shift-$form" 55 python -m aabench bench --model resnet50_aa --weights none \
        --suite shift --amp bf16 --batch-size 256 --seconds 40 --images 4000 \
        --blurpool "$form" --json
done
# ImageNet-C's released decode path: nvJPEG against PIL (the CUDA test, then a
# make-imagenet-c tree of the sample images, cycled: each decoder's rate, their top-1
# agreement, compare's refusal, and nvJPEG's pixel difference from PIL).
step gpu-decode-tests 50 python -m pytest -q -x -s tests/benchmark/test_device_decode.py -k gpu
step imagenet-c-decoders 120 python tools/imagenet_c_decoders.py --copies 100 \
    --json "$OUT/imagenet-c-decoders.json"
ls -l "$OUT" | tee -a "$LOG"
