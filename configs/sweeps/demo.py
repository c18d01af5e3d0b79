"""Search space for the README demo (configs/demo.py): the fusion head and its training.

  python experiments/sweep.py --config configs/demo.py \
    --sweep configs/sweeps/demo.py --study_dir sweeps/demo --data_dir demo_run/data \
    --workers 2 --trials 16

Each entry is a config field (fusion_jax/configs.py) with an Optuna distribution: float/int
ranges (low, high, optional log and step) or categorical choices. The objective is the
selection metric on validation (summary.json best_val_score_mean, mean over seeds).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.metric = ""            # "" = the run's selection metric (best_val_score_mean)
  c.direction = "maximize"
  c.params = ml_collections.ConfigDict()
  c.params.train = ml_collections.ConfigDict()
  c.params.train.variants = dict(
      type="categorical", choices=["cross_attention", "concatenation", "gated", "weighted",
                                   "mult", "bottleneck", "tensor", "low_rank", "late"])
  c.params.optim = ml_collections.ConfigDict()
  c.params.optim.learning_rate = dict(type="float", low=2e-4, high=3e-3, log=True)
  c.params.model = ml_collections.ConfigDict()
  c.params.model.dropout = dict(type="float", low=0.1, high=0.5)
  c.params.model.f_hidden = dict(type="int", low=32, high=128, step=32)
  return c
