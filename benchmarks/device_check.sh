#!/usr/bin/env bash
# The GPU checks of the speed benchmark, as one script for a session that is lent a GPU for a few minutes: ResNet-18
# at 64x64 with the face DCGAN prior (case resnet18-rgb64 of benchmarks/cases.py).
#   1. equal steps (--quick: 60 per stage, 2 repeats): per-step wall time of both implementations, the full
#      protocol's per-image time extrapolated from it, peak GPU memory;
#   2. time-to-quality at B=1 and at B=4 on the evaluation split (wall clock, peak GPU memory per method).
# About 8 minutes on one H200 at the default steps (estimated from the step times of the 2026-11-26 H200 record,
# not yet run on a GPU). Usage, from the repository root:
#   bash benchmarks/device_check.sh OUT_FOLDER
# Environment: DEVICE (default cuda), EQUAL_STEPS (default 60), B1_STEPS (default 200), B4_STEPS (default 100),
# B1_IMAGES (default 1), B4_IMAGES (default 4); the records land in OUT_FOLDER, each with its command and commit.
set -euo pipefail
out=${1:?usage: bash benchmarks/device_check.sh OUT_FOLDER}
device=${DEVICE:-cuda}
mkdir -p "$out"
python=${PYTHON:-python}
"$python" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), file=sys.stderr)'
"$python" benchmarks/speed.py --device "$device" --model resnet18 --image-size 64 --quick \
    --steps-per-stage "${EQUAL_STEPS:-60}" --out "$out/speed_${device%%:*}_resnet18_64.json"
"$python" benchmarks/speed.py --mode quality --case resnet18-rgb64 --device "$device" --batch-size 1 \
    --images "${B1_IMAGES:-1}" --seeds 0 --steps-per-stage "${B1_STEPS:-200}" \
    --out "$out/quality_${device%%:*}_resnet18-rgb64_b1.json"
"$python" benchmarks/speed.py --mode quality --case resnet18-rgb64 --device "$device" --batch-size 4 \
    --images "${B4_IMAGES:-4}" --seeds 0 --steps-per-stage "${B4_STEPS:-100}" \
    --out "$out/quality_${device%%:*}_resnet18-rgb64_b4.json"
