#!/usr/bin/env bash
# Rebuilds the shipped model (fusion_jax/pretrained_models/ravdess: `predict.py --model
# ravdess`, the default without --run) from a RAVDESS folder, reproducibly:
#
#   bash scripts/build_shipped_model.sh path/to/ravdess16k [work_dir]
#
# The RAVDESS recipe (Whisper tiny.en + MiniLM features, 4 speaker-independent folds over
# the actors found: each fold tests on 4 actors, picks its checkpoint on 2 validation
# actors of the next block and trains on the other 10) trains the variant that validation
# selected in the recipe's full comparison (BUILD_NOTES, "RAVDESS recipe": weighted); the
# 4 fold models form the ensemble, packed in float16 with a card holding the held-out-actor
# test figures. About 15 minutes on 2 CPU cores (extraction ≈ 8, training ≈ 7).
set -euo pipefail
cd "$(dirname "$0")/.."
RAVDESS=${1:?usage: bash scripts/build_shipped_model.sh RAVDESS_DIR [WORK_DIR]}
WORK=${2:-runs/shipped_ravdess}
VARIANT=${VARIANT:-weighted}
bash scripts/setup.sh --features
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
.venv/bin/python experiments/recipe_ravdess.py --ravdess_dir "$RAVDESS" \
  --speech_extractor whisper --work_dir "$WORK" --variants "$VARIANT" --seeds 0 \
  --nobaseline --analyse_folds=
.venv/bin/python - "$WORK" "$VARIANT" <<'PY'
import json, os, sys
from fusion_jax import predict, pretrained
work, variant = sys.argv[1], sys.argv[2]
members = predict.Predictor.from_run(work, variant, log=lambda m: None).members
cv = json.load(open(os.path.join(work, "cv_summary.json")))
row = cv["variants"][variant]
card = dict(
    summary=f"{variant} fusion, {len(members)}-fold ensemble, RAVDESS actors 01-16",
    data="RAVDESS speech (Livingstone & Russo 2018), 16 kHz, actors 01-16, 8 classes",
    licence="trained on RAVDESS, CC BY-NC-SA 4.0: non-commercial use, attribution, share-alike",
    features=dict(speech="Whisper tiny.en encoder, last layer, 4 frames pooled (12.5/s)",
                  text="MiniLM (all-MiniLM-L6-v2) tokens; RAVDESS has two fixed sentences, "
                       "so the model relies on speech"),
    selection="each fold's checkpoint chosen on its 2 validation actors; the variant on "
              "validation in the recipe's full comparison",
    held_out=dict(protocol="4 speaker-independent folds; each fold's test actors are never "
                           "seen in its training or selection",
                  test={k: row[k] for k in ("accuracy", "uar", "macro_f1", "weighted_f1")},
                  validation_accuracy=row["val_acc"],
                  per_fold=[{k: r[k] for k in ("fold", "val_acc", "accuracy", "uar")}
                            for r in row["runs"]]))
spec = pretrained.pack(members, "fusion_jax/pretrained_models/ravdess", card)
size = os.path.getsize("fusion_jax/pretrained_models/ravdess/params.npz")
print(f"packed {len(members)} runs of {variant} into fusion_jax/pretrained_models/ravdess "
      f"({size / 2**20:.1f} MB)")
print(json.dumps(card["held_out"], indent=1))
PY
