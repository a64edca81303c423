#!/usr/bin/env bash
# Build a gpu-tensorrt model repository (TensorRT plans) inside NVIDIA's TensorRT container of the
# SAME release as the server image, so the plans load in the server's TensorRT.
#
#   deploy/build_plans.sh OUTPUT [export.build options ...]
#
#   deploy/build_plans.sh /srv/phoenix/repo
#   deploy/build_plans.sh /srv/phoenix/repo-mini --preset mini --precision bf16
#   deploy/build_plans.sh /srv/phoenix/repo --trt-version-compatible   # then serve with
#       TRITON_EXTRA_ARGS="--backend-config=tensorrt,version-compatible=true"
#
# Runs, in nvcr.io/nvidia/tensorrt:<release>-py3 (release = ARG TRITON_RELEASE of deploy/Dockerfile,
# the one place it is written):
#
#   python -m export.build --target gpu-tensorrt --engines tensorrt --output /models/<name of OUTPUT> ...
#
# with OUTPUT's parent folder mounted at /models (export.build stages next to its output) and a copy
# of this checkout installed there with its `gpu` extra (tensorrt==<pin>, onnxruntime-gpu for the
# parity checks) and the server image's torch. deploy/trt_version.py checks the container's TensorRT
# library before, and the tensorrt Python package export.build will use after, that install against
# the pin, and stops on a mismatch.
#
# Build on the GPU model that will serve: a plan is tuned for one GPU architecture unless built with
# --trt-hardware-compatible. Files given to export.build (--checkpoint, --tables, ...) must be inside
# this checkout (as ./relative/paths) or inside OUTPUT's parent folder (as /models/...).
#
# Environment: GPUS (docker --gpus value, default "all"), DOCKER (default "docker"),
# DRY_RUN=1 (print the docker command and exit).
# Needs Docker with the NVIDIA Container Toolkit and access to nvcr.io.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/deploy/Dockerfile"

if [ $# -lt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi

# The pins, read from the Dockerfile's ARG defaults (never repeated here).
pin() { sed -n "s/^ARG $1=//p" "$DOCKERFILE" | head -n 1 | tr -d "\"'"; }
TRITON_RELEASE="$(pin TRITON_RELEASE)"
TENSORRT_VERSION="$(pin TENSORRT_VERSION)"
TORCH_SPEC="$(pin TORCH_SPEC)"
if [ -z "$TRITON_RELEASE" ] || [ -z "$TENSORRT_VERSION" ] || [ -z "$TORCH_SPEC" ]; then
  echo "error: ARG TRITON_RELEASE / TENSORRT_VERSION / TORCH_SPEC defaults not found in $DOCKERFILE" >&2
  exit 1
fi
IMAGE="nvcr.io/nvidia/tensorrt:${TRITON_RELEASE}-py3"

OUTPUT="$1"
shift
case "$OUTPUT" in /*) ;; *) OUTPUT="$PWD/$OUTPUT" ;; esac
OUTPUT="${OUTPUT%/}"
NAME="$(basename "$OUTPUT")"
PARENT="$(dirname "$OUTPUT")"
if [ "$NAME" = "." ] || [ "$NAME" = ".." ] || [ "$PARENT" = "$OUTPUT" ]; then
  echo "error: OUTPUT must name a folder to write the model repository into, got '$OUTPUT'" >&2
  exit 2
fi

# What runs inside the container. The checkout is mounted read-only at /src and copied (pip needs a
# writable tree; .venv and .git stay behind). Single quotes: it expands inside the container.
# shellcheck disable=SC2016
INNER='set -euo pipefail
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python3 /src/deploy/trt_version.py check --expect "$TENSORRT_VERSION"
mkdir -p /tmp/phoenix
tar -C /src --exclude=./.venv --exclude=./.git --exclude="__pycache__" -cf - . | tar -C /tmp/phoenix -xf -
cd /tmp/phoenix
python3 -m pip install -q "$TORCH_SPEC" ".[gpu]"
python3 /src/deploy/trt_version.py check --python --strict --expect "$TENSORRT_VERSION"
status=0
python3 -m export.build --target gpu-tensorrt --engines tensorrt --output "/models/$NAME" "$@" || status=$?
if [ -n "${HOST_UID:-}" ]; then chown -R "$HOST_UID:$HOST_GID" "/models/$NAME" 2>/dev/null || true; fi
exit $status'

cmd=("${DOCKER:-docker}" run --rm --gpus "${GPUS:-all}"
     -v "$ROOT:/src:ro"
     -v "$PARENT:/models"
     -e "TENSORRT_VERSION=$TENSORRT_VERSION" -e "TORCH_SPEC=$TORCH_SPEC" -e "NAME=$NAME"
     -e "HOST_UID=$(id -u)" -e "HOST_GID=$(id -g)"
     -w /src
     "$IMAGE" bash -c "$INNER" build_plans "$@")

if [ "${DRY_RUN:-0}" = "1" ]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi

mkdir -p "$PARENT"
echo "build_plans: $IMAGE (TensorRT $TENSORRT_VERSION) -> $OUTPUT" >&2
"${cmd[@]}"
echo "build_plans: done; serve $OUTPUT with the image of deploy/Dockerfile (same release: $TRITON_RELEASE)" >&2
