"""fusion_jax: multimodal (speech + text) emotion recognition in JAX/Flax.

Submodules are imported lazily, so ``from fusion_jax import data`` does not
pay for JAX start-up::

  from fusion_jax import data, models, experiment, training, evaluation, analysis
"""

import importlib

__version__ = "0.1.0"
_SUBMODULES = ("analysis", "benchmark", "checkpoint", "cli", "configs", "data", "evaluation",
               "experiment", "features", "io_utils", "metrics", "models", "plots", "predict",
               "recipes",
               "reports", "runs", "sharding", "steps", "training")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"fusion_jax.{name}")
  raise AttributeError(f"module 'fusion_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_SUBMODULES))
