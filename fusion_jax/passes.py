"""Host loops over placed batches: evaluation statistics and predictions of one model."""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import numpy as np

from fusion_jax import metrics as metrics_lib
from fusion_jax.ledger import CompileLedger
from fusion_jax.steps import Steps


def evaluate_batches(ledger: CompileLedger, steps: Steps, params,
                     batches: Iterable[dict], num_examples: int) -> dict:
  """Loss and confusion matrix over already-placed batches (one host sync at the end)."""
  return summarise_eval(jax.device_get([ledger(steps.eval, params, b) for b in batches]),
                        num_examples)


def summarise_eval(stats: Sequence[dict], num_examples: int) -> dict:
  """Loss, confusion matrix and summary metrics from per-batch ``eval_step`` outputs."""
  confusion = np.rint(sum(s["confusion"] for s in stats)).astype(np.int64)
  loss = float(sum(s["loss_sum"] for s in stats)) / max(num_examples, 1)
  out = dict(loss=loss, confusion=confusion, **metrics_lib.summary(confusion))
  # a floor's candidate blends per pattern (models/floor.py), each summarised
  for key in [k for k in (stats[0] if stats else {}) if k.startswith("blend_confusion/")]:
    pattern = key.split("/", 1)[1]
    blends = np.rint(sum(s[key] for s in stats)).astype(np.int64)
    losses = sum(np.asarray(s[f"blend_loss_sum/{pattern}"], np.float64) for s in stats)
    out.setdefault("blends", {})[pattern] = [
        dict(loss=float(l) / max(num_examples, 1), confusion=c, **metrics_lib.summary(c))
        for c, l in zip(blends, losses)]
  return out


def predict_batches(ledger: CompileLedger, steps: Steps, params, batches: Iterable[tuple],
                    num_examples: int, num_classes: int, aux_keys: Sequence[str] = ()):
  """Softmax probabilities ``[N, K]`` and requested ``aux`` arrays, in split order.

  ``batches`` yields ``(placed_batch, index)`` with ``index [B]`` the split rows
  (-1 for padding rows). An ``aux`` entry with time axes (attention maps, sequences)
  is zero-padded to the longest bucket's length: row ``i`` is valid up to its own
  lengths.
  """
  probs = np.zeros((num_examples, num_classes), np.float32)
  parts: dict = {}
  fn = steps.predict(aux_keys)
  for batch, index in batches:
    logits, aux = jax.device_get(ledger(fn, params, batch))
    rows = index >= 0
    idx = index[rows]
    probs[idx] = jax.nn.softmax(logits[rows], axis=-1)
    for k, v in aux.items():
      parts.setdefault(k, []).append((idx, np.asarray(v[rows], np.float32)))
  aux_out = {}
  for k, pieces in parts.items():
    shape = tuple(max(v.shape[d] for _, v in pieces) for d in range(1, pieces[0][1].ndim))
    out = aux_out[k] = np.zeros((num_examples,) + shape, np.float32)
    for idx, v in pieces:
      out[(idx,) + tuple(slice(0, n) for n in v.shape[1:])] = v
  return probs, aux_out
