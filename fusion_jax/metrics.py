"""Metrics computed on the host from summed statistics (confusion matrices, probabilities).

Device steps return additive statistics only; everything here is NumPy and is
checked against scikit-learn in ``tests/metrics_test.py``.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
  """``[K, K]`` counts, rows = true class, columns = prediction."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
  return cm


def _safe_div(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def per_class(cm: np.ndarray) -> dict:
  """Precision, recall, F1 and support per class (0 where undefined, as sklearn)."""
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  precision = _safe_div(tp, cm.sum(0))
  recall = _safe_div(tp, cm.sum(1))
  f1 = _safe_div(2 * precision * recall, precision + recall)
  return dict(precision=precision, recall=recall, f1=f1, support=cm.sum(1).astype(np.int64))


# The summary metrics (keys of :func:`summary`) that can select checkpoints
# (``train.selection_metric``), with their (short, long) names in reports.
SELECTION_METRICS = {"accuracy": ("Acc", "accuracy"), "uar": ("UAR", "UAR"),
                     "macro_f1": ("Macro F1", "macro F1"),
                     "weighted_f1": ("Wtd F1", "weighted F1")}


def summary(cm: np.ndarray) -> dict:
  """Accuracy, unweighted average recall (UAR), macro and weighted F1 from a confusion matrix.

  UAR averages recall over the classes that occur (support > 0).
  """
  cm = np.asarray(cm)
  total = cm.sum()
  pc = per_class(cm)
  present = pc["support"] > 0
  return dict(
      accuracy=float(np.trace(cm) / total) if total else 0.0,
      uar=float(pc["recall"][present].mean()) if present.any() else 0.0,
      macro_f1=float(pc["f1"].mean()),
      weighted_f1=float((pc["f1"] * pc["support"]).sum() / max(pc["support"].sum(), 1)),
      count=int(total))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15):
  """ECE with equal-width confidence bins; also returns the reliability table.

  Returns:
    (ece, table) where table has per bin ``lower, upper, count, confidence, accuracy``.
  """
  probs = np.asarray(probs, np.float64)
  conf = probs.max(1)
  correct = (probs.argmax(1) == np.asarray(labels)).astype(np.float64)
  edges = np.linspace(0, 1, bins + 1)
  idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
  table, ece = [], 0.0
  for b in range(bins):
    sel = idx == b
    n = int(sel.sum())
    c = float(conf[sel].mean()) if n else 0.0
    a = float(correct[sel].mean()) if n else 0.0
    ece += n / max(len(conf), 1) * abs(a - c)
    table.append(dict(lower=float(edges[b]), upper=float(edges[b + 1]), count=n,
                      confidence=c, accuracy=a))
  return float(ece), table


def mean_std(values: Sequence[float]) -> tuple:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n: int = 10000,
                 seed: int = 0) -> tuple:
  """Percentile bootstrap interval of the mean."""
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float(v.mean()), float(v.mean())
  rng = np.random.default_rng(seed)
  means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(1)
  lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
  return float(lo), float(hi)


def paired_test(x: Sequence[float], y: Sequence[float], alpha: float = 0.05) -> dict:
  """Paired t-test of ``x`` against ``y`` (runs in the same order).

  Returns ``mean_diff`` (mean of x − y), ``p_value`` (None with fewer than 2 pairs or
  zero variance of the differences), ``significant`` and ``n``.
  """
  from scipy import stats  # pylint: disable=import-outside-toplevel
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n = min(len(x), len(y))
  diff = x[:n] - y[:n]
  p: Optional[float] = None
  if n >= 2 and diff.std() > 0:
    p = float(stats.ttest_rel(x[:n], y[:n]).pvalue)
  return dict(mean_diff=float(diff.mean()) if n else 0.0, p_value=p,
              significant=bool(p is not None and p < alpha), n=n)


def paired_comparisons(scores: dict, alpha: float = 0.05) -> list:
  """Paired t-tests over seeds between every two variants.

  Args:
    scores: ``{variant: [score per seed]}``, seeds in the same order.

  Returns:
    One dict per pair: ``a, b`` and :func:`paired_test` of a against b.
  """
  return [dict(a=a, b=b, **paired_test(scores[a], scores[b], alpha))
          for a, b in itertools.combinations(scores, 2)]


def against_reference(scores: dict, reference: str, alpha: float = 0.05) -> dict:
  """:func:`paired_test` of every other variant against ``reference`` (runs aligned)."""
  return {v: paired_test(x, scores[reference], alpha) for v, x in scores.items()
          if v != reference}
