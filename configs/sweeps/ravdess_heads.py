"""Search space for RAVDESS features (configs/ravdess.py): head, learning rate, dropout,
widths and the robustness options, chosen on validation actors only.

  python experiments/sweep.py --config configs/ravdess.py \
    --sweep configs/sweeps/ravdess_heads.py --study_dir sweeps/ravdess \
    --data_dir RAVDESS_FEATURES --workers 2 --trials 40

RAVDESS_FEATURES is a folder in the original's layout ({train,val,test}_{speech,text}.pt and
the split CSVs) with validation actors apart from the training ones (written, e.g., with
fusion_jax.data.save_original_layout from a speaker-independent split). The sweep's objective
is validation only; the recipe's cross-validated folds are not yet an objective.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.metric = ""
  c.direction = "maximize"
  c.params = ml_collections.ConfigDict()
  c.params.train = ml_collections.ConfigDict()
  c.params.train.variants = dict(
      type="categorical", choices=["cross_attention", "concatenation", "gated", "weighted",
                                   "mult", "bottleneck", "tensor", "low_rank", "late",
                                   "speech_only"])
  c.params.optim = ml_collections.ConfigDict()
  c.params.optim.learning_rate = dict(type="float", low=1e-4, high=2e-3, log=True)
  c.params.optim.modality_dropout = dict(type="categorical", choices=[0.0, 0.15, 0.3])
  c.params.model = ml_collections.ConfigDict()
  c.params.model.dropout = dict(type="float", low=0.1, high=0.5)
  c.params.model.f_hidden = dict(type="categorical", choices=[128, 256, 512])
  return c
