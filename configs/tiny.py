"""A tiny model for tests and smoke runs: seconds per variant on a CPU.

Use: ``--config=configs/tiny.py`` and override any field, e.g.
``--config.train.epochs=5``. The tree is defined in ``fusion_jax/configs.py``.
"""

from fusion_jax import configs


def get_config():
  return configs.tiny()
