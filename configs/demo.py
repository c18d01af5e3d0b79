"""The README's demo on the embedded synthetic data (64-d features).

Use: ``--config=configs/demo.py`` and override any field, e.g.
``--config.train.epochs=5``. The tree is defined in ``fusion_jax/configs.py``.
"""

from fusion_jax import configs


def get_config():
  return configs.demo()
