#!/usr/bin/env bash
# One-time setup of a fresh machine: a virtual environment in .venv with the project installed.
# Safe to re-run; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and exact: on these CPU machines 2.13.0 is a local CPU wheel; letting pip resolve a bare
# "torch" pulls the newest CUDA build (several GB). Override with TORCH_SPEC on a GPU host.
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -e ".[cpu,test]"
echo "setup: ok ($(python -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)'))"
