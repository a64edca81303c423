#!/usr/bin/env bash
# Regenerates requirements/setup.lock: exact versions and sha256 hashes of everything scripts/setup.sh
# installs (pyproject.toml's dependencies with the `cpu` and `test` extras, the build backend of the editable
# install, under requirements/constraints.txt). Run it on one of our CPU machines (Python 3.11, Linux x86_64:
# the lock's environment markers are resolved for the interpreter that runs it, and the torch pin is the CPU
# wheel pip finds there), after changing a dependency in pyproject.toml; commit the lock with that change.
#
#   scripts/lock.sh                           # keep the pins that still fit, resolve what changed
#   scripts/lock.sh --upgrade                 # everything to the newest allowed versions
#   scripts/lock.sh --upgrade-package onnx    # one package
#
# pip-tools runs from its own throwaway virtual environment, never the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP_TOOLS=pip-tools==7.6.2
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PY" -m venv "$tools"
"$tools/bin/python" -m pip install -q "$PIP_TOOLS"
# --allow-unsafe: setuptools (the editable install's build backend) is pinned and hashed like the rest.
# --no-emit-*: the lock names no index or local folder; pip's own configuration says where files come from.
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$tools/bin/pip-compile" --quiet \
  --generate-hashes --allow-unsafe --strip-extras \
  --extra cpu --extra test --build-deps-for editable \
  --constraint requirements/constraints.txt \
  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
  --output-file requirements/setup.lock "$@" pyproject.toml
echo "lock: requirements/setup.lock ($(grep -c '^[A-Za-z0-9].*==' requirements/setup.lock) packages)"
