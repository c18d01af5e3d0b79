#!/usr/bin/env bash
# Sets up .venv/ and runs the whole pipeline on the embedded synthetic demo data:
# demo data (original .pt/.csv layout) -> train every variant -> evaluate on test (with the
# embedding analysis, as the original's test.py).
# Output: demo_run/{data,models,results}. A few minutes on 2 CPU cores; reruns reuse checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
OUT=${DEMO_DIR:-demo_run}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
$PY experiments/make_demo_data.py --out_dir "$OUT/data" --signal both
$PY experiments/train.py --config configs/demo.py --data_dir "$OUT/data" \
    --model_dir "$OUT/models" --results_dir "$OUT/results"
$PY experiments/evaluate.py --config configs/demo.py --data_dir "$OUT/data" \
    --model_dir "$OUT/models" --results_dir "$OUT/results"
echo "Done. Reports and plots: $OUT/results"
