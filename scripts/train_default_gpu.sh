#!/usr/bin/env bash
# Train volsam's default model (volsam_fusion) on one GPU in one call: ~9 minutes on an H200.
#
# Prepare here (CPU, once; both folders are git-ignored and travel with the call, 39 MiB together):
#   python scripts/build_default_data.py /tmp/defdata3 --val-targets 24
#   python scripts/train_default_gpu.py pack /tmp/defdata3 .gpu/pack.npz        # 37 MiB, ~3.5 min
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl monai==1.6.1                   # the Dice + CE loss
# Run there, from the repository root (OUT: where weights and logs go; MINUTES: training time):
#   OUT=/some/dir MINUTES=8 bash scripts/train_default_gpu.sh [more train_default_gpu.py train options]
# It writes $OUT/final.safetensors (fp32 state dict, 10 MB; every minute, so a killed run leaves weights),
# $OUT/train_log.jsonl, $OUT/summary.json and $OUT/stdout.log. Then here:
#   python scripts/ship_default_model.py OUT/final.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
MINUTES=${MINUTES:-8}
INIT=${INIT:-src/volsam/weights/volsam_fusion.safetensors}
mkdir -p "$OUT"
source scripts/gpu_env.sh
python3 scripts/train_default_gpu.py train --pack .gpu/pack.npz --init "$INIT" --minutes "$MINUTES" --out "$OUT" "$@" \
    2>&1 | tee "$OUT/stdout.log"
