#!/usr/bin/env bash
# One run on a lent GPU machine: what only a GPU can show for the performance work.
# Writes every figure under $OUT (default ./gpu-figures); each step is bounded in time
# so that the whole script fits a 10-minute device call.
#
#   bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-figures}"
mkdir -p "$OUT"
python -m pip install --quiet --disable-pip-version-check -e ".[test]" >"$OUT/install.txt" 2>&1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...: stdout+stderr to $OUT/NAME.txt, never stops the script
    local name=$1 seconds=$2
    shift 2
    echo "== $name" && timeout "$seconds" "$@" >"$OUT/$name.txt" 2>&1
    echo "rc=$?" >>"$OUT/$name.txt"
    tail -n 3 "$OUT/$name.txt"
}
# The GPU tests the CPU suite skips, and the overlapped pipeline's records on a real
# device (late outputs, staging reuse).
step gpu-tests 150 python -m pytest -q -x tests/benchmark/test_api.py tests/benchmark/test_transfer.py tests/benchmark/test_engine.py
# BlurPool's forms against the baseline, bf16, channels-last, batch 256, with F.
step blurpool-forms 150 python tools/blurpool_forms.py --device cuda --amp bf16 --batch-size 256 \
    --seconds 2 --rounds 3 --layouts channels-last --json "$OUT/blurpool-forms.json"
# Shift suite end to end against forward-only, each form (the sample set, cycled).
for form in reference cascade; do
    step "bench-shift-$form" 60 python -m aabench bench --model resnet50_aa --weights none \
        --suite shift --amp bf16 --batch-size 256 --seconds 40 --images 4000 \
        --blurpool "$form" --json
done
# ImageNet-C generated on the fly (the released set is not on the machine).
step bench-imagenet-c 60 python -m aabench bench --model resnet50_aa --weights none \
    --suite imagenet-c --set generate=true --amp bf16 --batch-size 256 --seconds 40 --json
# ImageNet-C's released decode path: nvJPEG against PIL (the CUDA test, then a
# make-imagenet-c tree of the sample images, cycled: each decoder's rate, their top-1
# agreement, compare's refusal, and nvJPEG's pixel difference from PIL).
step gpu-decode-tests 60 python -m pytest -q -x -s tests/benchmark/test_device_decode.py -k gpu
step imagenet-c-decoders 150 python tools/imagenet_c_decoders.py --copies 100 \
    --json "$OUT/imagenet-c-decoders.json"
ls -l "$OUT"
