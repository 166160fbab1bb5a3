#!/bin/sh
# Prepare docker/challenge/build/ (volsam's wheel + every dependency as wheels, CPU torch) and build the CVPR 2025
# challenge image offline from it. The wheel download is the only step that needs the network.
#
#   scripts/build_challenge_image.sh [--weights FILE] [--no-build]
#
# --weights FILE  bake a checkpoint into the image (VOLSAM_MODEL=/workspace/weights/<name>)
# --no-build      prepare the context only (e.g. to build on another machine with `docker build --network none`)
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
ctx="$root/docker/challenge/build"
weights=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --weights) weights="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "build_challenge_image.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
rm -rf "$ctx"
mkdir -p "$ctx/wheels" "$ctx/weights"
cp "$root/docker/challenge/Dockerfile" "$root/docker/challenge/predict.sh" "$ctx/"
python3 -m pip wheel --no-deps -w "$ctx/wheels" "$root"
# CPU torch from the PyTorch CPU index (the default PyPI torch pulls CUDA libraries the CPU run never uses).
python3 -m pip download -d "$ctx/wheels" --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --extra-index-url https://download.pytorch.org/whl/cpu \
    "$ctx"/wheels/volsam-*.whl
model_arg=""
if [ -n "$weights" ]; then
    cp "$weights" "$ctx/weights/"
    model_arg="--build-arg VOLSAM_MODEL=/workspace/weights/$(basename "$weights")"
fi
if [ "$build" = 1 ]; then
    # shellcheck disable=SC2086
    docker build --network none $model_arg -t volsam_cvpr25 "$ctx"
    echo "built volsam_cvpr25; save it with: docker save volsam_cvpr25:latest | gzip > volsam_cvpr25.tar.gz"
fi
