#!/usr/bin/env bash
# Train several variants of volsam's default model at once on one GPU, each in its own process (one
# process leaves the GPU idle while Python prepares the next batch; several fill those gaps), then pick
# one here on validation. Same preparation as scripts/train_default_gpu.sh (.gpu/pack.npz, .whl/).
#
#   OUT=/some/dir MINUTES=8 bash scripts/train_default_gpu_sweep.sh "NAME:OPTIONS" ["NAME:OPTIONS" ...]
#
# e.g. "base:--lr 5e-4" "synth:--lr 5e-4 --p-synth 0.8": OPTIONS go to `train_default_gpu.py train` after
# --pack/--init/--minutes/--out and one batch size (BATCH, default 64, no probe: the probe's timings would
# depend on what the other variants are doing). Each variant writes $OUT/NAME/ as the single-run script
# does; $OUT/sweep.log has their last lines. Exits non-zero if any variant failed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/sweep}
MINUTES=${MINUTES:-8}
BATCH=${BATCH:-64}
INIT=${INIT:-src/volsam/weights/volsam_fusion.safetensors}
[ $# -ge 1 ] || { echo "usage: OUT=DIR MINUTES=M $0 NAME:OPTIONS [NAME:OPTIONS ...]" >&2; exit 2; }
for spec in "$@"; do
    [[ "$spec" =~ ^[A-Za-z0-9_-]+: ]] || { echo "$0: expected NAME:OPTIONS, got '$spec'" >&2; exit 2; }
done
mkdir -p "$OUT"
source scripts/gpu_env.sh
pids=()
for spec in "$@"; do
    name=${spec%%:*}
    mkdir -p "$OUT/$name"
    # shellcheck disable=SC2086  # OPTIONS are meant to split into words
    python3 scripts/train_default_gpu.py train --pack .gpu/pack.npz --init "$INIT" --minutes "$MINUTES" \
        --out "$OUT/$name" --batch-sizes "$BATCH" --probe-s 10 ${spec#*:} > "$OUT/$name/stdout.log" 2>&1 &
    pids+=($!)
done
rc=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || rc=1
done
for spec in "$@"; do
    name=${spec%%:*}
    { echo "== $name: ${spec#*:}"; tail -n 25 "$OUT/$name/stdout.log"; } >> "$OUT/sweep.log"
done
nvidia-smi --query-gpu=memory.used --format=csv 2>/dev/null || true
cat "$OUT/sweep.log"
exit $rc
