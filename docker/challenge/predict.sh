#!/bin/sh
# CVPR 2025 interactive 3D challenge entry point. The evaluator (CVPR25_iter_eval.py) runs
#   docker container run -m 32G --rm -v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/ \
#     IMAGE:latest /bin/bash -c "sh predict.sh"
# once per interaction step; each run reads every inputs/*.npz and must write outputs/<same name>.npz with `segs`.
# VOLSAM_MODEL: weights baked into the image (a path or a registered/official name); unset = the shipped model.
# VOLSAM_WORKSPACE: where inputs/ and outputs/ are (the challenge mounts them under /workspace).
set -eu
ws="${VOLSAM_WORKSPACE:-/workspace}"
if [ -n "${VOLSAM_MODEL:-}" ]; then
    exec python3 -m volsam challenge-predict --input "$ws/inputs" --output "$ws/outputs" --no-progress --model "$VOLSAM_MODEL"
fi
exec python3 -m volsam challenge-predict --input "$ws/inputs" --output "$ws/outputs" --no-progress
