"""The original pipeline's hyperparameters (docs/original.md): 768-d wav2vec2 / RoBERTa features.

Use: ``--config=configs/default.py`` and override any field, e.g.
``--config.train.epochs=5``. The tree is defined in ``fusion_jax/configs.py``.
"""

from fusion_jax import configs


def get_config():
  return configs.default()
