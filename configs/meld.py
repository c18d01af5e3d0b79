"""The MELD recipe's config (experiments/recipe_meld.py uses it by default).

Override any field, e.g. ``--config.train.epochs=10``. Defined in ``fusion_jax/configs.py``.
"""

from fusion_jax import configs


def get_config():
  return configs.meld()
