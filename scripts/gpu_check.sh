#!/usr/bin/env bash
# The GPU check in one command (scripts/gpu_check.py says what it runs and prints):
#   bash scripts/setup.sh gpu && bash scripts/gpu_check.sh        # a CUDA machine, < 8 min
#   bash scripts/gpu_check.sh --cpu-dry-run                       # the same pipeline on CPU
# Not run on a GPU yet: docs/benchmarks.md gets its table from the first GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" scripts/gpu_check.py "$@"
