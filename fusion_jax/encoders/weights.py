"""Hugging Face (PyTorch) tensors → Flax params, by one naming rule.

The encoders' Flax modules are named after the PyTorch modules they mirror, list entries as
``name_<i>``, so a Flax leaf's path names its tensor::

  ("encoder", "layers_3", "attention", "q_proj", "kernel")  ←  encoder.layers.3.attention.q_proj.weight

Leaves: ``kernel`` is ``weight`` transposed (Dense ``[in, out]`` ← ``[out, in]``; Conv
``[k, in, out]`` ← ``[out, in, k]``), ``scale`` and ``embedding`` are ``weight``,
BatchNorm's ``mean``/``var`` are ``running_mean``/``running_var``; any other leaf keeps its
name. Every tensor's shape is checked against the module's (that is, ``config.json``'s).
"""

from __future__ import annotations

import re
from typing import Callable, Optional

import jax
import numpy as np

from fusion_jax.errors import DataError

_INDEX = re.compile(r"^(.*)_(\d+)$")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias",
         "mean": "running_mean", "var": "running_var"}


def torch_name(path: tuple) -> str:
  """The PyTorch tensor name of a Flax leaf path (see the module docstring)."""
  parts = []
  for p in path[:-1]:
    m = _INDEX.match(p)
    parts.append(f"{m.group(1)}.{m.group(2)}" if m else p)
  parts.append(_LEAF.get(path[-1], path[-1]))
  return ".".join(parts)


def find_prefix(sd: dict, marker: str, source: str, what: str) -> str:
  """The prefix task-head checkpoints put before the base model's names (``wav2vec2.``,
  ``roberta.``, …): whatever precedes ``marker`` in the key that ends with it."""
  for k in sd:
    if k == marker or k.endswith("." + marker):
      return k[: len(k) - len(marker)]
  raise DataError(source, f"no tensor {marker!r}: not a {what} checkpoint",
                  hint="check that the snapshot is the model its config.json names")


def to_flax(template, sd: dict, prefix: str, source: str,
            special: Optional[Callable[[str, dict], Optional[np.ndarray]]] = None) -> dict:
  """Flax variables shaped like ``template`` (``jax.eval_shape`` of ``init``) from ``sd``.

  Args:
    template: a pytree of ``ShapeDtypeStruct`` leaves (``{"params": …, "batch_stats": …}``).
    sd: tensor name → array.
    prefix: put before every name (:func:`find_prefix`).
    source: the snapshot folder, for messages.
    special: ``(name, sd) → array or None`` for tensors stored in another form (weight norm).

  Raises:
    DataError: a tensor is missing, or its shape disagrees with ``config.json``.
  """
  def leaf(path, spec):
    keys = tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)[1:]
    name = prefix + torch_name(keys)
    value = special(name, sd) if special else None
    if value is None:
      if name not in sd:
        raise DataError(source, f"tensor {name!r} is missing from the weights", field=name,
                        hint="the weights do not belong to this config.json")
      value = np.asarray(sd[name], np.float32)
    if keys[-1] == "kernel":
      value = value.T if value.ndim == 2 else value.transpose(2, 1, 0)
    if tuple(value.shape) != tuple(spec.shape):
      raise DataError(source, f"tensor {name!r} has shape {list(value.shape)} where "
                      f"config.json gives {list(spec.shape)}", field=name,
                      hint="the weights do not belong to this config.json")
    return np.ascontiguousarray(value, np.float32)
  return jax.tree_util.tree_map_with_path(leaf, template)
