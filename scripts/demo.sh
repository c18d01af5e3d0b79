#!/usr/bin/env bash
# Sets up .venv/ and runs the whole pipeline on the embedded synthetic demo data:
# demo data (original .pt/.csv layout) -> train the variants -> evaluate on test (with the
# embedding analysis, as the original's test.py).
# Output: demo_run/{data,models,results}. A few minutes on 2 CPU cores; reruns reuse checkpoints.
# The original's four fusion heads and both unimodal baselines by default (7–12 min cold on
# 2 cores, BUILD_NOTES "Demo"); DEMO_VARIANTS=all adds the five other heads (the README's
# full table).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
OUT=${DEMO_DIR:-demo_run}
VARIANTS=${DEMO_VARIANTS:-cross_attention,concatenation,gated,weighted,speech_only,text_only}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
$PY experiments/make_demo_data.py --out_dir "$OUT/data" --signal both
$PY experiments/train.py --config configs/demo.py --data_dir "$OUT/data" \
    --model_dir "$OUT/models" --results_dir "$OUT/results" --variants "$VARIANTS"
$PY experiments/evaluate.py --config configs/demo.py --data_dir "$OUT/data" \
    --model_dir "$OUT/models" --results_dir "$OUT/results" --variants "$VARIANTS"
echo "Done. Reports and plots: $OUT/results"
