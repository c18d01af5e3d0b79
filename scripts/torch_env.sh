#!/usr/bin/env bash
# Creates .torchenv/ (torch 2.13.0, CPU, and numpy) for the reference tests only: PyTorch
# loading the written best_{variant}_model.pt, PyTorch's ReduceLROnPlateau on a sequence
# inside its threshold. torch never enters .venv or the library. Prints the Python to set
# as FUSION_JAX_TORCH_PYTHON. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! .torchenv/bin/python -c "import torch, numpy; assert torch.__version__.startswith('2.13.0')" \
    2>/dev/null; then
  "$PY" -m venv .torchenv
  .torchenv/bin/python -m pip install --quiet --upgrade pip
  .torchenv/bin/python -m pip install --quiet torch==2.13.0 numpy
fi
echo "$PWD/.torchenv/bin/python"
